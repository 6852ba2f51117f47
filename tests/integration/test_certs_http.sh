#!/bin/bash
# test_certs_http.sh - GET /certs/<address> on kmsd's HTTP port: off by
# default (404 for everyone); when [http] certs_endpoint is on, the PEM of
# the user's current encryption certificate (the same one kmsctl cert
# gives, and one openssl can encrypt to), 404 alike for an unknown
# address and a revoked user, 400 for what is not an address, and 429
# once a client spends its [http] certs_rate.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl curl
setup

code() { curl -s -o "$T/body" -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT$1"; }

write_conf
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Certs Test" --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'certspassword\n' > "$T/pw"
for u in alice bob; do
	ctl enroll "$u@example.org" --password-file "$T/pw" --out "$T/$u.p12" > "$T/$u.enroll" 2>&1 || fail "enroll $u"
done
[ "$(code /certs/alice@example.org)" = 404 ] && pass "/certs is off by default" || fail "/certs off by default"
stop_kmsd

# The two keys belong in [http] (write_conf puts extra lines at the end).
write_conf
sed -i "s|^listen = 127.0.0.1:$HTTP_PORT\$|&\ncerts_endpoint = yes\ncerts_rate = 12|" "$CONF"
start_kmsd || { fail "kmsd starts with certs_endpoint"; done_testing; }
ctl revoke bob@example.org > /dev/null 2>&1 || fail "revoke bob"

[ "$(code /certs/alice@example.org)" = 200 ] && pass "/certs/alice@example.org answers 200" || fail "200 for alice" "$(cat "$T/body")"
cp "$T/body" "$T/alice.http.pem"
ctl cert alice@example.org --out "$T/alice.ctl.pem" > /dev/null 2>&1 || fail "kmsctl cert alice"
cmp -s "$T/alice.http.pem" "$T/alice.ctl.pem" && pass "it is the certificate kmsctl cert gives" || fail "same as kmsctl cert"
openssl x509 -in "$T/alice.http.pem" -noout -ext keyUsage > "$T/ku" 2>&1
check_grep "it is her encryption certificate" "Key Agreement|Key Encipherment" "$T/ku"
printf 'hello alice\n' > "$T/msg"
# The PKCS#12 holds two keys: the one that opens the message is the encryption key.
decrypts() {
	openssl pkcs12 -in "$T/alice.p12" -passin file:"$T/pw" -nocerts -nodes 2>/dev/null |
		awk -v d="$T" '/-----BEGIN/ { n++ } n { print > (d "/alice.key" n ".pem") }'
	for k in "$T"/alice.key*.pem; do
		openssl cms -decrypt -binary -inform DER -in "$T/msg.p7" -inkey "$k" -recip "$T/alice.http.pem" \
			> "$T/msg.out" 2>/dev/null && cmp -s "$T/msg" "$T/msg.out" && return 0
	done
	return 1
}
openssl cms -encrypt -binary -aes256 -in "$T/msg" -out "$T/msg.p7" -outform DER "$T/alice.http.pem" 2>"$T/enc.err" && decrypts &&
	pass "mail encrypted to it opens with alice's PKCS#12" || fail "encrypt and decrypt" "$(cat "$T/enc.err")"
curl -sI "http://127.0.0.1:$HTTP_PORT/certs/alice@example.org" > "$T/head" 2>&1
check_grep "the type is application/pem-certificate-chain" "^Content-Type: application/pem-certificate-chain" "$T/head"
check_grep "and nothing is cached" "^Cache-Control: no-store" "$T/head"
[ "$(code /certs/alice%40example.org)" = 200 ] && pass "a %-escaped @ is the same address" || fail "%40"

[ "$(code /certs/bob@example.org)" = 404 ] && cp "$T/body" "$T/bob.body" && pass "a revoked user is 404" || fail "bob 404"
[ "$(code /certs/nobody@example.org)" = 404 ] && cp "$T/body" "$T/nobody.body" && pass "an unknown address is 404" || fail "nobody 404"
cmp -s "$T/bob.body" "$T/nobody.body" && pass "with the same body: a revoked user looks like no user" || fail "same 404 body"
[ "$(code '/certs/a%0d%0aX:%20y@example.org')" = 400 ] && pass "an address with CR LF is refused with 400" || fail "CRLF 400"
[ "$(code '/certs/alice@example.org%00.evil')" = 400 ] && pass "an address with a NUL is refused with 400" || fail "NUL 400"
[ "$(code "/certs/$(head -c 300 /dev/zero | tr '\0' a)@example.org")" = 400 ] && pass "an over-long address is refused with 400" ||
	fail "long 400"
# 8 requests so far from 127.0.0.1 (the HEAD too) in a few seconds: the
# bucket of 12 is nearly spent, whatever the machine's speed.
ok=0 c=
for i in $(seq 1 20); do
	c=$(code /certs/alice@example.org)
	[ "$c" = 200 ] || break
	ok=$((ok + 1))
done
[ "$c" = 429 ] && [ "$ok" -le 8 ] && pass "past [http] certs_rate a client gets 429 (after $ok more)" ||
	fail "429 once the bucket is spent" "last $c after $ok answers of 200"
curl -sI "http://127.0.0.1:$HTTP_PORT/certs/alice@example.org" > "$T/head429" 2>&1
check_grep "with Retry-After" "^Retry-After: 60" "$T/head429"
c=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/crl/kms-ca.crl")
[ "$c" = 200 ] && pass "the CRL is still served to that client" || fail "CRL after 429" "$c"
check_grep "the log says /certs is on" "HTTP: /certs/<address> on, 12 requests a minute per client" "$T/kmsd.log"
done_testing
