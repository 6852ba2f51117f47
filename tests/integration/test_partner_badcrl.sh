#!/bin/bash
# test_partner_badcrl.sh - CRLs fetched by the running kmsd from a
# partner's distribution point that must not be used (RFC 5280 6.3.3),
# through miltertest: a bad signature, another CA's CRL, one signed by a
# key without cRLSign, expired, not yet valid, with an unknown critical
# extension, one whose issuing distribution point covers CA certificates
# only, and a distribution point nobody listens on.  Each is fetched in
# the background: the message is answered at once with "revocation
# unknown" as [policy] on_revocation_unknown = warn says (X-KMS-Warning),
# alice (listed in every one of those CRLs) is never called revoked, and
# crl list-external and the log say why each CRL is not used.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_cmd openssl python3 miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"

WEB_PORT=$(free_port)
CLOSED=$(free_port)
URL="http://127.0.0.1:$WEB_PORT"
W="$T/www"
CASES="badsig otherca nocrlsign expired future critical onlyca closed"
: > "$T/roots.pem"
: > "$T/inter.pem"
for c in $CASES; do
	base="$URL/$c"
	[ "$c" = closed ] && base="http://127.0.0.1:$CLOSED/$c"
	mkdir -p "$W/$c"
	pki_make "$T/$c" "$base" || { fail "the $c PKI is made"; done_testing; }
	cat "$T/$c/root.crt" >> "$T/roots.pem"
	pki_crl "$T/$c" root "$W/$c/root.crl" -n 1
done
# The intermediate without cRLSign is known to kmsd (intermediates_file): its key signs that CRL.
cat "$T/nocrlsign/nocrlsign.crt" >> "$T/inter.pem"
R="-r 4096,keyCompromise"
pki_crl "$T/badsig" issuing "$T/good.pem" -n 2 $R
openssl crl -in "$T/good.pem" -outform DER -out "$T/good.der"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-5]^=0x55; open(sys.argv[2],"wb").write(b)' \
	"$T/good.der" "$W/badsig/issuing.crl"
pki_crl "$T/otherca" policy "$W/otherca/issuing.crl" -n 2 $R
pki_crl "$T/nocrlsign" issuing "$W/nocrlsign/issuing.crl" -n 2 -k nocrlsign $R
pki_crl "$T/expired" issuing "$W/expired/issuing.crl" -n 2 $R -t "$(date -u -d '-3 days' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '-1 day' +%y%m%d%H%M%SZ)"
pki_crl "$T/future" issuing "$W/future/issuing.crl" -n 2 $R -t "$(date -u -d '+1 day' +%y%m%d%H%M%SZ)" \
	"$(date -u -d '+3 days' +%y%m%d%H%M%SZ)"
pki_crl "$T/critical" issuing "$W/critical/issuing.crl" -n 2 $R -x "1.3.6.1.4.1.99999.1 = critical,ASN1:NULL"
pki_crl "$T/onlyca" issuing "$W/onlyca/issuing.crl" -n 2 $R -x "issuingDistributionPoint = critical,@idpca" \
	-x "[idpca]" -x "onlyCA = TRUE"
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$WEB_PORT" > "$T/web.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break; sleep 0.1; done

# mt WHAT CASE EXPECT: alice's message of that PKI through kmsd, pass if partner.lua is content.
mt() {
	if miltertest -D sock="unix:$STATE/milter.sock" -D data="$T/$2" -D dir="$MT" -D msg=alice.eml -D expect="$3" \
	    -s "$MT/partner.lua" > "$T/mt.out" 2>&1; then
		pass "$1"
	else
		fail "$1" "$(tail -4 "$T/mt.out" | tr '\n' ' ')"
	fi
}

write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" \
	"[milter]" "trust_file = $T/roots.pem" "intermediates_file = $T/inter.pem" \
	"[crl]" "fetch_timeout = 3" "fetch_max_size = 64K" "[policy]" "on_revocation_unknown = warn"
start_kmsd || { fail "kmsd starts"; done_testing; }
for c in $CASES; do
	mt "$c: the first message is answered at once, revocation unknown" "$c" unknown
done
# Every case's intermediate CRL tried.
tried() {
	ctl --json crl list-external | python3 -c '
import json, sys
crls = [c for c in json.load(sys.stdin)["result"]["crls"] if c["url"].endswith("/issuing.crl")]
sys.exit(0 if len(crls) >= 8 and all(c["last_attempt"] for c in crls) else 1)'
}
wait_until() {
	for _ in $(seq 1 "$(( $1 * 10 ))"); do "$2" && return 0; sleep 0.1; done
	return 1
}
wait_until 20 tried && pass "every distribution point was tried" || fail "every distribution point tried"
sleep 1
ctl --json crl list-external > "$T/list.json"
# error_of CASE: the last error of that case's intermediate CRL.
error_of() {
	python3 -c '
import json, sys
for c in json.load(open(sys.argv[1]))["result"]["crls"]:
    if c["url"].endswith("/" + sys.argv[2] + "/issuing.crl"):
        print(c["error"] or "none", "copy" if c["have_copy"] else "nocopy")' "$T/list.json" "$1"
}
# refused CASE WHY-PATTERN: not used, list-external and the log say why; alice's message: unknown, policy warn.
refused() {
	error_of "$1" > "$T/err-$1"
	check_grep "$1: crl list-external says why it is not used" "$2.* nocopy$" "$T/err-$1"
	check_grep "$1: the log says so too" "CRL $URL/$1/issuing.crl: .*$2|CRL http://127.0.0.1:$CLOSED/$1/issuing.crl: .*$2" \
		"$T/kmsd.log"
	mt "$1: alice is not called revoked: revocation unknown, with the policy's warning" "$1" unknown
}
refused badsig "signature does not verify"
refused otherca "no trusted certificate of the CRL issuer /O=Partner/CN=Partner Policy CA"
refused nocrlsign "no cRLSign"
refused expired "past its nextUpdate"
refused future "not valid yet"
refused critical "unknown critical extension"
refused closed "Couldn't connect|Connection refused|Failed to connect"
# The CRL for CA certificates only is valid and taken, but does not speak for alice.
error_of onlyca > "$T/err-onlyca"
check_grep "onlyca: a CRL for CA certificates only is taken" "^none copy$" "$T/err-onlyca"
mt "onlyca: it does not speak for alice (listed in it): revocation unknown" onlyca unknown
check_nogrep "no message was called revoked" "smime=fail" "$T/kmsd.log"
check_grep "on_revocation_unknown = warn: the action is warn" "smime=pass verdict=pass action=warn .*revocation unknown" "$T/kmsd.log"
stop_kmsd
done_testing
