#!/bin/bash
# test_partner_crl.sh - revocation for another organisation's PKI, made
# here with openssl (tests/integration/partner_pki.sh: a root, two
# intermediates, one of them with a CA two levels down, users under each),
# checked through `kmsd -t`:
# - a user revoked by the intermediate's CRL is revoked, with date and
#   reason, also when the message leaves the intermediate out and
#   --intermediates gives it; the same CRL fetched from the certificate's distribution point
#   (--fetch, served by a local HTTP server);
# - an intermediate revoked by the root's CRL revokes its users, two
#   levels down as well;
# - a CRL with a bad signature, of the wrong issuer, signed by a key
#   without cRLSign, expired, not yet valid, with an unknown critical
#   extension, or whose issuing distribution point excludes user
#   certificates is not used: stderr says why, the run goes on, and the
#   status is "revocation unknown" with [policy] on_revocation_unknown;
# - a delta CRL on its base, with removeFromCRL;
# - a distribution point that never answers or serves more than
#   fetch_max_size: the check still ends, in time, and says why.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_cmd openssl python3 timeout
setup

WEB_PORT=$(free_port)
P="$T/pki"
W="$T/www"
mkdir -p "$W"
pki_make "$P" "http://127.0.0.1:$WEB_PORT" || { fail "the test PKI is made"; done_testing; }
printf '[kmsd]\nstate_dir = %s\nauthserv_id = mx.test.example\n[crl]\nfetch_timeout = 2\nfetch_max_size = 64K\n' \
	"$STATE" > "$CONF"
sed 's/^\[crl\]$/[policy]\non_revocation_unknown = warn\n[crl]/' "$CONF" > "$T/warn.conf"

# Good CRLs of every CA: nothing revoked.
for ca in root issuing policy dept; do
	pki_crl "$P" "$ca" "$T/$ca-empty.crl" -n 1 || fail "an empty CRL of $ca is made"
done
ALL_EMPTY="--crl $T/root-empty.crl --crl $T/issuing-empty.crl --crl $T/policy-empty.crl --crl $T/dept-empty.crl"

# kt OUT [args...]: kmsd -t with the partner root as the only anchor; stdout to OUT, stderr to OUT.err.
kt() {
	out=$1
	shift
	timeout 60 "$KMSD" -t -c "$CONF" --trust "$P/root.crt" "$@" > "$out" 2> "$out.err"
}

# ------------------------------------------------- revoked by the intermediate
pki_crl "$P" issuing "$T/issuing.crl" -n 2 -r 4096,keyCompromise
kt "$T/r1" --crl "$T/issuing.crl" --crl "$T/root-empty.crl" "$P/alice.eml" "$P/bob.eml"
check_grep "a user revoked by the intermediate's CRL is revoked, with date and reason" \
	"alice.eml: smime=fail \(revoked: certificate of alice@partner.example \(serial 1000\) revoked on 20[0-9-]+T[0-9:]+Z, reason keyCompromise" "$T/r1"
check_grep "the recipient gets the warning header" "^X-KMS-Warning: signer certificate of alice@partner.example" "$T/r1"
check_grep "another user of that CA passes, status known" "bob.eml: smime=pass \(pass: signed by bob@partner.example\)$" "$T/r1"
check_nogrep "no CRL is refused" "ignored" "$T/r1.err"

# A message that carries only the signer's certificate: the chain comes from --intermediates.
openssl smime -sign -in "$P/alice.txt" -signer "$P/alice.crt" -inkey "$P/alice.key" -from alice@partner.example \
	-to rcpt@example.org -subject "from alice" -out "$P/alice-bare.eml" 2>/dev/null || fail "alice-bare.eml is made"
kt "$T/r1b" --crl "$T/issuing.crl" --crl "$T/root-empty.crl" "$P/alice-bare.eml"
check_grep "without its intermediate the chain is not trusted" "alice-bare.eml: smime=neutral \(untrusted:" "$T/r1b"
kt "$T/r1c" --intermediates "$P/intermediates.pem" --crl "$T/issuing.crl" --crl "$T/root-empty.crl" "$P/alice-bare.eml"
check_grep "--intermediates builds the chain: revoked, with date and reason" \
	"alice-bare.eml: smime=fail \(revoked: certificate of alice@partner.example \(serial 1000\) revoked on 20[0-9-]+T[0-9:]+Z, reason keyCompromise" "$T/r1c"

# ------------------------------------------------- revoked intermediate
pki_crl "$P" root "$T/root-revokes-issuing.crl" -n 2 -r 2,cACompromise
kt "$T/r2" --crl "$T/issuing-empty.crl" --crl "$T/root-revokes-issuing.crl" "$P/bob.eml"
check_grep "an intermediate revoked by the root's CRL revokes its user's message" \
	"bob.eml: smime=fail \(revoked: a CA certificate in the chain of the certificate of bob@partner.example .*reason cACompromise" "$T/r2"
pki_crl "$P" root "$T/root-revokes-policy.crl" -n 2 -r 3,superseded
kt "$T/r3" --crl "$T/root-revokes-policy.crl" --crl "$T/policy-empty.crl" --crl "$T/dept-empty.crl" "$P/carol.eml"
check_grep "a CA two levels up revoked: the user below is revoked" "carol.eml: smime=fail \(revoked: a CA certificate .*reason superseded" "$T/r3"
kt "$T/r4" $ALL_EMPTY "$P/carol.eml" "$P/dan.eml"
check_grep "every CA of a three-deep chain has a CRL: pass, status known" "carol.eml: smime=pass \(pass: signed by carol@partner.example\)$" "$T/r4"
pki_crl "$P" dept "$T/dept.crl" -n 2 -r 8193,affiliationChanged
kt "$T/r5" --crl "$T/root-empty.crl" --crl "$T/policy-empty.crl" --crl "$T/dept.crl" "$P/dan.eml"
check_grep "a user two levels down revoked by its CA's CRL" "dan.eml: smime=fail \(revoked: certificate of dan@partner.example .*reason affiliationChanged" "$T/r5"
kt "$T/r6" --crl "$T/issuing.crl" "$P/bob.eml"
check_grep "no CRL of the root: the intermediate's status is unknown, said in the result" \
	"bob.eml: smime=pass \(pass: signed by bob@partner.example; revocation unknown: no current CRL covers a CA certificate of the chain \(no CRL of its issuer is loaded\)\)" "$T/r6"

# ------------------------------------------------- CRLs that must not be used
# bad_crl NAME WHY-PATTERN FILE: listing alice, it is ignored with WHY; alice's status is unknown.
bad_crl() {
	kt "$T/b-$1" --crl "$3" --crl "$T/root-empty.crl" "$P/alice.eml"
	check_grep "CRL $1: not used, stderr says why" "$2" "$T/b-$1.err"
	check_grep "CRL $1: alice is not reported revoked; revocation unknown" \
		"alice.eml: smime=pass \(pass: signed by alice@partner.example; revocation unknown" "$T/b-$1"
}
openssl crl -in "$T/issuing.crl" -outform DER -out "$T/good.der"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-5]^=0x55; open(sys.argv[2],"wb").write(b)' \
	"$T/good.der" "$T/badsig.crl"
bad_crl "with a bad signature" "signature" "$T/badsig.crl"
pki_crl "$P" policy "$T/wrong-issuer.crl" -n 2 -r 4096,keyCompromise
bad_crl "of another CA" "no trusted certificate of its issuer /O=Partner/CN=Partner Policy CA" "$T/wrong-issuer.crl"
pki_crl "$P" issuing "$T/nocrlsign.crl" -n 3 -k nocrlsign -r 4096,keyCompromise
kt "$T/b-ku" --intermediates "$P/nocrlsign.crt" --intermediates "$P/intermediates.pem" --crl "$T/nocrlsign.crl" \
	--crl "$T/root-empty.crl" "$P/alice.eml"
check_grep "CRL signed by a key without cRLSign: stderr says so" "cRLSign" "$T/b-ku.err"
check_grep "CRL signed by a key without cRLSign: alice not revoked, status unknown" \
	"alice.eml: smime=pass \(pass: .*revocation unknown" "$T/b-ku"
pki_crl "$P" issuing "$T/expired.crl" -n 3 -r 4097,keyCompromise -t "$(date -u -d '-3 days' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '-1 day' +%y%m%d%H%M%SZ)"
kt "$T/b-exp" --crl "$T/expired.crl" --crl "$T/root-empty.crl" "$P/alice.eml" "$P/bob.eml"
check_grep "expired CRL: stderr says so" "expired on" "$T/b-exp.err"
check_grep "expired CRL: an unlisted user's status is unknown, and why" \
	"alice.eml: smime=pass \(pass: .*revocation unknown: .*\(the CRL of its issuer is past its next update\)" "$T/b-exp"
check_grep "expired CRL: a listed user stays revoked, marked stale" "bob.eml: smime=fail \(revoked: .*stale" "$T/b-exp"
pki_crl "$P" issuing "$T/future.crl" -n 3 -r 4096,keyCompromise -t "$(date -u -d '+1 day' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '+3 days' +%y%m%d%H%M%SZ)"
bad_crl "not yet valid" "not valid yet" "$T/future.crl"
pki_crl "$P" issuing "$T/critical.crl" -n 3 -r 4096,keyCompromise -x "1.3.6.1.4.1.99999.1 = critical,ASN1:NULL"
bad_crl "with an unknown critical extension" "unknown critical extension" "$T/critical.crl"
pki_crl "$P" issuing "$T/onlyca.crl" -n 3 -r 4096,keyCompromise -x "issuingDistributionPoint = critical,@idpca" \
	-x "[idpca]" -x "onlyCA = TRUE"
kt "$T/b-idp" --crl "$T/onlyca.crl" --crl "$T/root-empty.crl" "$P/alice.eml"
check_grep "CRL for CA certificates only: alice not revoked by it, status unknown, and why" \
	"alice.eml: smime=pass \(pass: .*revocation unknown: .*\(the CRLs of its issuer loaded here do not cover it\)" "$T/b-idp"
timeout 60 "$KMSD" -t -c "$T/warn.conf" --trust "$P/root.crt" --crl "$T/onlyca.crl" --crl "$T/root-empty.crl" \
	"$P/alice.eml" > "$T/b-warn" 2>&1
check_grep "on_revocation_unknown = warn: the policy says warn" "\(policy: warn\)" "$T/b-warn"
check_grep "... with a warning header naming the unknown status" "^X-KMS-Warning: S/MIME pass: .*revocation unknown" "$T/b-warn"
check_nogrep "... and no revoked-sender subject tag" "REVOKED SENDER" "$T/b-warn"
kt "$T/b-mix" --crl "$T/badsig.crl" --crl "$T/issuing.crl" --crl "$T/root-empty.crl" "$P/alice.eml"
check_grep "a bad CRL among good ones is ignored and the good one used" "alice.eml: smime=fail \(revoked:" "$T/b-mix"

# ------------------------------------------------- delta CRLs
pki_crl "$P" issuing "$T/base.crl" -n 10 -r 4096,certificateHold -r 4098,keyCompromise
pki_crl "$P" issuing "$T/delta.crl" -n 11 -d 10 -r 4096,removeFromCRL -r 4097,keyCompromise
kt "$T/d1" --crl "$T/base.crl" --crl "$T/root-empty.crl" "$P/alice.eml" "$P/bob.eml"
check_grep "base CRL alone: alice on hold" "alice.eml: smime=fail \(revoked: .*reason certificateHold" "$T/d1"
kt "$T/d2" --crl "$T/base.crl" --crl "$T/delta.crl" --crl "$T/root-empty.crl" "$P/alice.eml" "$P/bob.eml" "$P/erin.eml"
check_grep "delta's removeFromCRL takes alice off hold" "alice.eml: smime=pass \(pass: signed by alice@partner.example\)$" "$T/d2"
check_grep "delta revokes bob on top of the base" "bob.eml: smime=fail \(revoked: .*reason keyCompromise" "$T/d2"
check_grep "the base's own entries stay" "erin.eml: smime=fail \(revoked: .*reason keyCompromise" "$T/d2"
pki_crl "$P" issuing "$T/delta-late.crl" -n 12 -d 11 -r 4097,keyCompromise
kt "$T/d3" --crl "$T/base.crl" --crl "$T/delta-late.crl" --crl "$T/root-empty.crl" "$P/bob.eml"
check_grep "a delta on a newer base than we have is not used" "bob.eml: smime=pass \(pass: signed by bob@partner.example\)$" "$T/d3"
openssl crl -in "$T/delta.crl" -noout -text > "$T/delta.txt" 2>&1
check_grep "the test's delta CRL carries its indicator" "Delta CRL Indicator" "$T/delta.txt"

# ------------------------------------------------- fetched from the distribution points
cp "$T/issuing.crl" "$W/issuing.crl"
cp "$T/root-empty.crl" "$W/root.crl"
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$WEB_PORT" > "$T/web.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break; sleep 0.1; done
kt "$T/f1" "$P/alice.eml" "$P/bob.eml"
check_grep "without --fetch nothing is fetched: status unknown" "alice.eml: smime=pass \(pass: .*revocation unknown" "$T/f1"
kt "$T/f2" --fetch "$P/alice.eml" "$P/bob.eml"
check_grep "--fetch: the CRL at alice's distribution point revokes her" \
	"alice.eml: smime=fail \(revoked: certificate of alice@partner.example \(serial 1000\) revoked on .*reason keyCompromise" "$T/f2"
check_grep "--fetch: bob passes with a known status (root's CRL fetched too)" "bob.eml: smime=pass \(pass: signed by bob@partner.example\)$" "$T/f2"
check_grep "the server saw the fetches" "GET /issuing.crl" "$T/web.log"

# A distribution point that accepts and never answers, and one that sends too much.
cat > "$T/silent.py" <<'EOF'
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
EOF
SLOW_PORT=$(free_port)
python3 "$T/silent.py" "$SLOW_PORT" &
PIDS="$PIDS $!"
pki_make "$T/slow" "http://127.0.0.1:$SLOW_PORT" >/dev/null 2>&1
start=$(date +%s)
timeout 60 "$KMSD" -t -c "$CONF" --trust "$T/slow/root.crt" --fetch "$T/slow/alice.eml" > "$T/f3" 2> "$T/f3.err"
took=$(( $(date +%s) - start ))
check_grep "a distribution point that never answers: the error is said" "timed out" "$T/f3.err"
check_grep "... and the message still gets its result" "alice.eml: smime=pass \(pass: .*revocation unknown" "$T/f3"
[ "$took" -le 15 ] && pass "... within the fetch timeout (${took}s)" || fail "slow distribution point bounded" "${took}s"
HUGE_PORT=$(free_port)
HW="$T/hugeweb"
mkdir -p "$HW"
head -c 3000000 /dev/zero > "$HW/issuing.crl"
cp "$HW/issuing.crl" "$HW/root.crl"
python3 -m http.server --bind 127.0.0.1 --directory "$HW" "$HUGE_PORT" > "$T/huge.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$HUGE_PORT") 2>/dev/null && break; sleep 0.1; done
pki_make "$T/huge" "http://127.0.0.1:$HUGE_PORT" >/dev/null 2>&1
timeout 60 "$KMSD" -t -c "$CONF" --trust "$T/huge/root.crt" --fetch "$T/huge/alice.eml" > "$T/f4" 2> "$T/f4.err"
check_grep "a distribution point serving more than fetch_max_size: the error is said" "larger than 65536 bytes" "$T/f4.err"
check_grep "... and the message still gets its result" "alice.eml: smime=pass \(pass: .*revocation unknown" "$T/f4"
done_testing
