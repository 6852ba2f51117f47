#!/bin/bash
# test_partner_daemon.sh - a partner organisation's PKI (partner_pki.sh)
# checked by the running kmsd through miltertest, as `kmsd -t` checks it
# in test_partner_crl.sh:
# - messages that carry only the signer's certificate build their chain
#   from [milter] intermediates_file; a reload that adds or removes it
#   counts from the next message (cached chains dropped);
# - [crl] external CRLs without external_ca are validated against the
#   trust set: an intermediate's CRL whose issuer mail shows later is kept
#   aside and taken then (and at once after a restart); a user revoked by the intermediate's CRL is
#   revoked with date and reason; an intermediate revoked by the root's
#   CRL revokes the users below it;
# - bad CRLs (bad signature, another CA's, no cRLSign, expired, not yet
#   valid, unknown critical extension, CA certificates only) are not
#   used: the log and crl list-external say why, and the message gets
#   on_revocation_unknown;
# - with on_pass = warn and on_revocation_unknown = tempfail the first
#   message from a new partner CA is tempfailed, not delivered as a pass;
# - a distribution point that refuses connections: mail keeps flowing,
#   the admin sees the error in crl list-external and the log.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_cmd openssl python3 miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"

WEB_PORT=$(free_port)
P="$T/pki"
W="$T/www"
mkdir -p "$W"
pki_make "$P" "http://127.0.0.1:$WEB_PORT" || { fail "the test PKI is made"; done_testing; }
# Messages that carry the signer's certificate alone.
for u in alice bob carol; do
	openssl smime -sign -in "$P/$u.txt" -signer "$P/$u.crt" -inkey "$P/$u.key" -from "$u@partner.example" \
		-to "rcpt@example.org" -subject "from $u" -out "$P/$u-bare.eml" 2>/dev/null || fail "$u-bare.eml is made"
done
for ca in root issuing policy dept; do
	pki_crl "$P" "$ca" "$T/$ca-empty.crl" -n 1 || fail "an empty CRL of $ca is made"
done
pki_crl "$P" issuing "$T/issuing.crl" -n 2 -r 4096,keyCompromise
pki_crl "$P" root "$T/root-revokes-policy.crl" -n 2 -r 3,cACompromise

MSGN=0
# mt WHAT MSG EXPECT [REASON]: one message through kmsd (queue id PD<n>), pass if partner.lua is content.
mt() {
	MSGN=$((MSGN + 1))
	if miltertest -D sock="unix:$STATE/milter.sock" -D data="$P" -D dir="$MT" -D msg="$2" -D expect="$3" \
	    -D qid="PD$MSGN" ${4:+-D reason="$4"} -s "$MT/partner.lua" > "$T/mt.out" 2>&1; then
		pass "$1"
	else
		fail "$1" "$(grep -v '^ok' "$T/mt.out" | tail -4 | tr '\n' ' ')"
	fi
}

# reload: SIGHUP, and wait for the log to say it was done.
reload() {
	n=$(grep -c "configuration reloaded\|reload refused" "$T/kmsd.log")
	kill -HUP "$KMSD_PID"
	for _ in $(seq 1 100); do
		[ "$(grep -c "configuration reloaded\|reload refused" "$T/kmsd.log")" -gt "$n" ] && return 0
		sleep 0.1
	done
	return 1
}

base_conf() {
	write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = ${TRUST:-$P/root.crt}" "$@"
}

# ------------------------------------- intermediates_file, external CRLs and their issuers
base_conf "[crl]" "fetch = no" "external = $T/issuing.crl, $T/root-empty.crl"
start_kmsd || { fail "kmsd starts with [crl] external and no external_ca"; done_testing; }
pass "kmsd starts with [crl] external and no external_ca"
mt "without intermediates_file, a message without its intermediate is untrusted" alice-bare.eml untrusted
wait_log "CRL $T/issuing.crl: no trusted certificate of its issuer /O=Partner/CN=Partner Issuing CA yet" &&
	pass "the intermediate's CRL is kept aside until its issuer is trusted, and the log says so" ||
	fail "the log names the CRL kept aside"
ctl crl list-external > "$T/list0.out" 2>&1
check_grep "crl list-external shows the external CRL kept aside" \
	"last error: kept aside: no trusted certificate of its issuer yet" "$T/list0.out"
check_grep "... with its issuer" "issuer: /O=Partner/CN=Partner Issuing CA" "$T/list0.out"
mt "alice's first message shows the intermediate: status unknown for now" alice.eml unknown
wait_log "CRL $T/issuing.crl: its issuer is trusted now; taken" &&
	pass "the CRL is validated again when its issuer's certificate first appears in mail, and taken" ||
	fail "the CRL kept aside is taken once mail shows its issuer"
wait_log "revocation index rebuilt" && sleep 0.3
mt "then alice, revoked by the intermediate's CRL, is revoked with date and reason" alice.eml revoked keyCompromise
ctl crl list-external > "$T/list1.out" 2>&1
check_grep "once taken, crl list-external shows its entries and no error" \
	"^$T/issuing.crl\$" "$T/list1.out"
grep -A4 "^$T/issuing.crl\$" "$T/list1.out" | grep -Eq "entries: 1 +number: 2" && \
	grep -A4 "^$T/issuing.crl\$" "$T/list1.out" | grep -q "last error: none" &&
	pass "... entries 1, number 2, last error none" || fail "crl list-external after the CRL is taken" "$(cat "$T/list1.out")"

base_conf "[milter]" "intermediates_file = $P/intermediates.pem" "[crl]" "fetch = no" \
	"external = $T/issuing.crl, $T/root-empty.crl"
reload && pass "SIGHUP with intermediates_file" || fail "SIGHUP with intermediates_file"
mt "after the reload, the message without its intermediate is built from intermediates_file: revoked" \
	alice-bare.eml revoked keyCompromise
mt "... and bob's passes with a known status" bob-bare.eml pass
base_conf "[crl]" "fetch = no" "external = $T/issuing.crl, $T/root-empty.crl"
reload || fail "SIGHUP without intermediates_file"
mt "a reload that drops intermediates_file drops the cached chains: untrusted again" bob-bare.eml untrusted
printf 'not a certificate\n' > "$T/broken.pem"
base_conf "[milter]" "intermediates_file = $T/broken.pem" "[crl]" "fetch = no"
reload
check_grep "a reload with a broken intermediates_file is refused and named" \
	"reload refused.*intermediates_file" "$T/kmsd.log"
stop_kmsd
# A restart, intermediates_file still unset: the kept copy counts at once, its issuer kept beside it.
base_conf "[crl]" "fetch = no" "external = $T/issuing.crl, $T/root-empty.crl"
start_kmsd || { fail "kmsd restarts"; done_testing; }
check_grep "the kept copy of the CRL whose issuer mail showed is loaded at start" \
	"CRL $T/issuing.crl: last good copy loaded \(number 2\)" "$T/kmsd.log"
mt "after a restart alice is revoked on the first message, before mail shows the intermediate again" \
	alice.eml revoked keyCompromise
mt "... and so is her message without the intermediate (her serial is listed under her issuer)" \
	alice-bare.eml revoked keyCompromise
stop_kmsd

# The issuers are known from intermediates_file when the CRLs are loaded.
rm -rf "$STATE/crl-cache"
base_conf "[milter]" "intermediates_file = $P/intermediates.pem" "[crl]" "fetch = no" \
	"external = $T/issuing.crl, $T/root-revokes-policy.crl, $T/policy-empty.crl, $T/dept-empty.crl"
start_kmsd || { fail "kmsd starts (intermediates_file)"; done_testing; }
wait_log "revocation index rebuilt: 2 entries" || fail "the external CRLs are loaded"
mt "an external CRL of an intermediate in intermediates_file counts from the first message" \
	alice-bare.eml revoked keyCompromise
mt "an intermediate revoked by the root's CRL revokes the user two levels below" carol-bare.eml revoked cACompromise
wait_log "PD$MSGN: .*a CA certificate in the chain" &&
	pass "... the log says it is a CA certificate of the chain" || fail "the log names the revoked CA"
stop_kmsd

# ------------------------------------- CRLs that must not be used
openssl crl -in "$T/issuing.crl" -outform DER -out "$T/good.der"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-5]^=0x55; open(sys.argv[2],"wb").write(b)' \
	"$T/good.der" "$T/badsig.crl"
pki_crl "$P" policy "$T/wrong-issuer.crl" -n 2 -r 4096,keyCompromise
pki_crl "$P" issuing "$T/nocrlsign.crl" -n 3 -k nocrlsign -r 4096,keyCompromise
pki_crl "$P" issuing "$T/expired.crl" -n 3 -r 4097,keyCompromise -t "$(date -u -d '-3 days' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '-1 day' +%y%m%d%H%M%SZ)"
pki_crl "$P" issuing "$T/future.crl" -n 3 -r 4096,keyCompromise -t "$(date -u -d '+1 day' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '+3 days' +%y%m%d%H%M%SZ)"
pki_crl "$P" issuing "$T/critical.crl" -n 3 -r 4096,keyCompromise -x "1.3.6.1.4.1.99999.1 = critical,ASN1:NULL"
pki_crl "$P" issuing "$T/onlyca.crl" -n 3 -r 4096,keyCompromise -x "issuingDistributionPoint = critical,@idpca" \
	-x "[idpca]" -x "onlyCA = TRUE"
cat "$P/intermediates.pem" "$P/nocrlsign.crt" > "$T/inter-nocrlsign.pem"
rm -rf "$STATE/crl-cache"
base_conf "[milter]" "intermediates_file = $T/inter-nocrlsign.pem" "[crl]" "fetch = no" \
	"external = $T/badsig.crl, $T/wrong-issuer.crl, $T/nocrlsign.crl, $T/expired.crl," \
	"	$T/future.crl, $T/critical.crl, $T/onlyca.crl, $T/root-empty.crl" \
	"[policy]" "on_pass = warn" "on_revocation_unknown = reject"
start_kmsd || { fail "kmsd starts (bad CRLs)"; done_testing; }
wait_log "CRL $T/root-empty.crl: taken" && wait_log "CRL $T/onlyca.crl: taken" && wait_log "revocation index rebuilt" ||
	fail "the external CRLs are read"
# Each CRL of the issuing CA but the expired one lists alice: any of them used would say revoked.
mt "no bad CRL is used: alice's status is unknown, and on_revocation_unknown = reject refuses her" alice.eml refused
wait_log "PD$MSGN: smime=pass verdict=pass action=reject.*revocation unknown" &&
	pass "... the log says pass, revocation unknown, action reject (on_pass = warn notwithstanding)" ||
	fail "the log names the unknown status and the reject" "$(grep "PD$MSGN:" "$T/kmsd.log")"
check_grep "bad signature: the log says why" "CRL $T/badsig.crl: .*signature" "$T/kmsd.log"
check_grep "key without cRLSign: the log says why" "CRL $T/nocrlsign.crl: .*cRLSign" "$T/kmsd.log"
check_grep "expired: used for its entries only, marked stale" "CRL $T/expired.crl is past its nextUpdate" "$T/kmsd.log"
check_grep "not yet valid: the log says why" "CRL $T/future.crl: .*not valid yet" "$T/kmsd.log"
check_grep "unknown critical extension: the log says why" "CRL $T/critical.crl: .*unknown critical extension" "$T/kmsd.log"
ctl crl list-external > "$T/list2.out" 2>&1
grep -A5 "^$T/badsig.crl\$" "$T/list2.out" | grep -q "last error: .*signature" &&
	pass "crl list-external shows why the CRL with a bad signature is refused" ||
	fail "crl list-external names the bad signature" "$(head -20 "$T/list2.out")"
grep -A5 "^$T/badsig.crl\$" "$T/list2.out" | grep -q "no good copy yet" &&
	pass "... and that there is no good copy" || fail "crl list-external: no good copy"
stop_kmsd

# ------------------------------------- strict checking whatever on_pass says
pki_crl "$P" issuing "$W/issuing.crl" -n 2 -r 4096,keyCompromise
cp "$T/root-empty.crl" "$W/root.crl"
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$WEB_PORT" > "$T/web.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break; sleep 0.1; done
rm -rf "$STATE/crl-cache" "$STATE/crl-dp"
base_conf "[crl]" "fetch_timeout = 2" \
	"[policy]" "on_pass = warn" "on_revocation_unknown = tempfail" "revocation_unknown_wait = 10m"
start_kmsd || { fail "kmsd starts (strict)"; done_testing; }
mt "on_pass = warn: the first message from a new partner CA is tempfailed, not delivered as a pass" bob.eml tempfail
wait_log "PD$MSGN: smime=pass verdict=pass action=tempfail" &&
	pass "... the log says action tempfail" || fail "the log says tempfail" "$(grep "PD$MSGN:" "$T/kmsd.log")"
wait_log "CRL http://127.0.0.1:$WEB_PORT/issuing.crl: taken" && wait_log "CRL http://127.0.0.1:$WEB_PORT/root.crl: taken" &&
	sleep 0.5
mt "once both CRLs are fetched, bob passes with a known status" bob.eml pass
mt "... and alice is revoked with date and reason" alice.eml revoked keyCompromise
stop_kmsd

# ------------------------------------- a distribution point that refuses connections
DEAD_PORT=$(free_port)
pki_make "$T/dead" "http://127.0.0.1:$DEAD_PORT" || fail "the unreachable PKI is made"
rm -rf "$STATE/crl-dp"
TRUST="$T/dead/root.crt" base_conf "[crl]" "fetch_timeout = 2" "[policy]" "on_revocation_unknown = accept"
start_kmsd || { fail "kmsd starts (unreachable)"; done_testing; }
for i in 1 2 3; do
	miltertest -D sock="unix:$STATE/milter.sock" -D data="$T/dead" -D dir="$MT" -D msg=alice.eml -D expect=unknown \
		-s "$MT/partner.lua" > "$T/mt.out" 2>&1 && pass "unreachable distribution point: message $i answered, revocation unknown" ||
		fail "unreachable distribution point: message $i" "$(tail -3 "$T/mt.out" | tr '\n' ' ')"
done
wait_log "CRL http://127.0.0.1:$DEAD_PORT/issuing.crl: " && pass "the log names the failed fetch" || fail "the log names the failed fetch"
ctl crl list-external > "$T/list.out" 2>&1
check_grep "crl list-external lists the unreachable distribution point" "^http://127.0.0.1:$DEAD_PORT/issuing.crl$" "$T/list.out"
check_grep "... with its error" "last error: .*(onnect|refused)" "$T/list.out"
stop_kmsd
done_testing
