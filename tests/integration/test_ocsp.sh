#!/bin/bash
# test_ocsp.sh - the OCSP responder end to end, with the clients that use
# it: openssl ocsp (POST with a nonce, GET with HTTP caching headers,
# SHA-1 and SHA-256 CertIDs, several certificates in one request),
# good -> revoked (time and reason) right after `kmsctl revoke`, unknown for
# a serial we never issued, unauthorized for another CA; Mozilla NSS as
# Thunderbird uses it (a PKCS#12 imported with pk12util, vfychain checking
# revocation through OCSP alone, no CRL anywhere) seeing a revocation
# within a second; gpgsm with dirmngr --allow-ocsp refusing a revoked
# signer; hostile requests (truncated, oversized, wrong ASN.1, 10,000
# CertIDs) answered with errors while the responder keeps answering; and a
# replica (its delegated signer issued by the primary) that keeps answering
# OCSP when the primary is stopped; `kmsctl enroll --renew` brings an
# existing user onto AIA.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl curl
setup
USER_KEY=rsa:2048
# First without OCSP: frank's certificates carry no AIA until `enroll --renew`.
write_conf "[ca]" "pkcs12_format = compat" "[ocsp]" "enabled = no"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "OCSP Test" --share-dir "$T/shares" >/dev/null 2>&1
printf 'ocsppassword\n' > "$T/pw"
# enroll USER [kmsctl options]: a security file and the signing certificate out of it.
enroll() {
	u=$1
	shift
	ctl enroll "$u@example.org" --name "$u" --password-file "$T/pw" --out "$T/$u.p12" "$@" >/dev/null 2>&1
	openssl pkcs12 -in "$T/$u.p12" -passin "file:$T/pw" -nodes -legacy 2>/dev/null > "$T/$u.pem"
	awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' "$T/$u.pem" > "$T/$u-sign.pem"
	openssl x509 -in "$T/$u-sign.pem" -out "$T/$u-sign.crt" 2>/dev/null
}
enroll frank
openssl x509 -in "$T/frank-sign.crt" -noout -ext authorityInfoAccess > "$T/frank-aia.out" 2>&1
check_nogrep "with [ocsp] enabled = no certificates carry no AIA" "OCSP - URI" "$T/frank-aia.out"
write_conf "[ca]" "pkcs12_format = compat" "[ocsp]" "max_certids = 100"
kill -HUP "$KMSD_PID"
for _ in $(seq 1 50); do
	curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$HTTP_PORT/ocsp" | grep -q 200 && break
	sleep 0.2
done
for u in alice bob carol dave erin; do
	enroll "$u"
done
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" | openssl x509 -inform DER -out "$T/ca.pem"
URL="http://127.0.0.1:$HTTP_PORT/ocsp"

# ocsp CERT [openssl ocsp options...]: ask our responder (POST) about CERT.
ocsp() {
	c=$1
	shift
	openssl ocsp -issuer "$T/ca.pem" -cert "$c" -url "$URL" -CAfile "$T/ca.pem" -resp_text "$@" 2>&1
}

# --------------------------------------------------------- certificates
openssl x509 -in "$T/alice-sign.crt" -noout -ext authorityInfoAccess > "$T/aia.out" 2>&1
check_grep "new certificates name the OCSP responder in AIA" "OCSP - URI:$URL\$" "$T/aia.out"
check_grep "and the CA certificate (caIssuers)" "CA Issuers - URI:http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" "$T/aia.out"
ciu=$(sed -n 's/.*CA Issuers - URI:\(http[^ ]*\).*/\1/p' "$T/aia.out")
curl -sf "$ciu" | openssl x509 -inform DER -out "$T/ca-aia.pem" 2>/dev/null
cmp -s "$T/ca.pem" "$T/ca-aia.pem" && pass "the caIssuers URL serves our CA certificate" || fail "caIssuers serves the CA"

rm -f "$T/frank.p12"
enroll frank --renew
openssl x509 -in "$T/frank-sign.crt" -noout -ext authorityInfoAccess > "$T/frank-aia2.out" 2>&1
check_grep "kmsctl enroll --renew brings an existing user onto AIA" "OCSP - URI:$URL\$" "$T/frank-aia2.out"
ocsp "$T/frank-sign.crt" > "$T/frank.out"
check_grep "and frank's new certificate is good over OCSP" "frank-sign.crt: good" "$T/frank.out"

# ------------------------------------------------- openssl ocsp: good
ocsp "$T/alice-sign.crt" -reqout "$T/req1.der" -respout "$T/resp1.der" > "$T/good.out"
check_grep "openssl ocsp (POST): the response verifies against our CA" "Response verify OK" "$T/good.out"
check_grep "alice is good" "alice-sign.crt: good" "$T/good.out"
check_grep "with thisUpdate and nextUpdate" "Next Update: " "$T/good.out"
check_nogrep "no nonce warning" "WARNING" "$T/good.out"
req_nonce=$(openssl ocsp -reqin "$T/req1.der" -req_text 2>/dev/null | grep -A1 'OCSP Nonce' | tail -1 | tr -d ' ')
resp_nonce=$(openssl ocsp -respin "$T/resp1.der" -resp_text -noverify 2>/dev/null | grep -A1 'OCSP Nonce' | tail -1 | tr -d ' ')
[ -n "$req_nonce" ] && [ "$req_nonce" = "$resp_nonce" ] && pass "the nonce is echoed ($resp_nonce)" || \
	fail "nonce echoed" "request $req_nonce, response $resp_nonce"
check_grep "signed by the delegated responder, not the CA" "Subject: O=OCSP Test, CN=OCSP Test OCSP Responder" "$T/good.out"
check_grep "whose certificate says OCSP Signing" "OCSP Signing" "$T/good.out"
check_grep "and OCSP No Check" "OCSP No Check" "$T/good.out"
openssl ocsp -sha256 -issuer "$T/ca.pem" -cert "$T/alice-sign.crt" -url "$URL" -CAfile "$T/ca.pem" -resp_text > "$T/sha256.out" 2>&1
check_grep "a SHA-256 CertID is answered" "Hash Algorithm: sha256" "$T/sha256.out"
check_grep "good" "alice-sign.crt: good" "$T/sha256.out"
ocsp "$T/alice-sign.crt" -cert "$T/bob-sign.crt" -serial 0x0123456789abcdef > "$T/multi.out"
[ "$(grep -c 'Cert Status: ' "$T/multi.out")" = 3 ] && pass "three CertIDs in one request get three answers" || \
	fail "three answers" "$(grep 'Cert Status' "$T/multi.out" | tr '\n' ' ')"
check_grep "bob among them is good" "bob-sign.crt: good" "$T/multi.out"
check_grep "a serial we never issued is unknown" "0x0123456789abcdef: unknown|Cert Status: unknown" "$T/multi.out"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/other.key" -subj "/O=Other/CN=Other CA" -days 3 \
	-out "$T/other.pem" 2>/dev/null
openssl ocsp -issuer "$T/other.pem" -serial 0x42 -url "$URL" > "$T/other.out" 2>&1
check_grep "a request about another CA's certificate is unauthorized" "unauthorized \(6\)" "$T/other.out"

# ------------------------------------------------------ openssl: GET
openssl ocsp -issuer "$T/ca.pem" -cert "$T/bob-sign.crt" -no_nonce -reqout "$T/get.der" >/dev/null 2>&1
enc=$(base64 -w0 "$T/get.der" | sed 's/+/%2B/g; s/\//%2F/g; s/=/%3D/g')
curl -s -D "$T/get.hdr" -o "$T/get.resp" "$URL/$enc"
check_grep "GET /ocsp/<base64>: 200" "^HTTP/1.1 200" "$T/get.hdr"
check_grep "as application/ocsp-response" "^Content-Type: application/ocsp-response" "$T/get.hdr"
check_grep "with Cache-Control max-age" "^Cache-Control: public, max-age=[0-9]+" "$T/get.hdr"
check_grep "an ETag" "^ETag: \"[0-9a-f]{32}\"" "$T/get.hdr"
check_grep "and Last-Modified" "^Last-Modified: " "$T/get.hdr"
openssl ocsp -respin "$T/get.resp" -issuer "$T/ca.pem" -cert "$T/bob-sign.crt" -CAfile "$T/ca.pem" > "$T/get.out" 2>&1
check_grep "the GET answer verifies and says good" "bob-sign.crt: good" "$T/get.out"
etag=$(sed -n 's/^ETag: \(.*\)\r$/\1/p' "$T/get.hdr")
code=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$URL/$enc")
[ "$code" = 304 ] && pass "a conditional GET with the ETag gets 304" || fail "304 on If-None-Match" "$code"
curl -s -o "$T/get2.resp" "$URL/$(base64 -w0 "$T/get.der")"
cmp -s "$T/get.resp" "$T/get2.resp" && pass "the same request unescaped gets the same pre-signed bytes" || \
	fail "pre-signed answer reused"

# --------------------------------------------- revoked, right away
ctl revoke bob@example.org --reason keyCompromise > /dev/null 2>&1
ocsp "$T/bob-sign.crt" > "$T/revoked.out"
check_grep "right after kmsctl revoke: revoked" "bob-sign.crt: revoked" "$T/revoked.out"
check_grep "with the reason" "Reason: keyCompromise" "$T/revoked.out"
check_grep "and the revocation time" "Revocation Time: [A-Z][a-z]{2} +[0-9]+ [0-9:]{8} 20[0-9]{2} GMT" "$T/revoked.out"
check_grep "and the response still verifies" "Response verify OK" "$T/revoked.out"
curl -s -o "$T/get3.resp" "$URL/$enc"
openssl ocsp -respin "$T/get3.resp" -issuer "$T/ca.pem" -cert "$T/bob-sign.crt" -CAfile "$T/ca.pem" > "$T/get3.out" 2>&1
check_grep "the cached good GET answer is replaced at once: revoked" "bob-sign.crt: revoked" "$T/get3.out"

# ---------------------------------------------------- hostile input
status_of() { openssl ocsp -respin "$1" -resp_text -noverify 2>&1 | sed -n 's/.*OCSP Response Status: \([a-zA-Z]*\).*/\1/p; s/.*Responder Error: \([a-zA-Z]*\).*/\1/p' | head -1; }
head -c 20 "$T/req1.der" > "$T/trunc.der"
curl -s -o "$T/h1" -H 'Content-Type: application/ocsp-request' --data-binary "@$T/trunc.der" "$URL"
[ "$(status_of "$T/h1")" = malformedrequest ] && pass "a truncated request gets malformedRequest" || fail "truncated" "$(status_of "$T/h1")"
openssl x509 -in "$T/ca.pem" -outform DER -out "$T/cert.der"
curl -s -o "$T/h2" -H 'Content-Type: application/ocsp-request' --data-binary "@$T/cert.der" "$URL"
[ "$(status_of "$T/h2")" = malformedrequest ] && pass "wrong ASN.1 (a certificate) gets malformedRequest" || fail "wrong asn1" "$(status_of "$T/h2")"
head -c 200000 /dev/urandom > "$T/big.bin"
code=$(curl -s -o "$T/h3" -w '%{http_code}' -H 'Content-Type: application/ocsp-request' --data-binary "@$T/big.bin" "$URL")
[ "$code" = 413 ] && [ "$(status_of "$T/h3")" = malformedrequest ] && pass "an oversized request gets 413 and malformedRequest" || \
	fail "oversized" "HTTP $code, $(status_of "$T/h3")"
code=$(curl -s -o "$T/h3b" -w '%{http_code}' -H 'Content-Type: application/ocsp-request' -H 'Transfer-Encoding: chunked' \
	--data-binary "@$T/big.bin" "$URL")
[ "$code" = 413 ] && pass "and so does one sent chunked, without a length" || fail "chunked oversized" "HTTP $code"
args=""
for i in $(seq 1 10000); do args="$args -serial $i"; done
# shellcheck disable=SC2086
openssl ocsp -issuer "$T/ca.pem" $args -no_nonce -reqout "$T/many.der" >/dev/null 2>&1
code=$(curl -s -o "$T/h4" -w '%{http_code}' -H 'Content-Type: application/ocsp-request' --data-binary "@$T/many.der" "$URL")
[ "$(status_of "$T/h4")" = malformedrequest ] && pass "10,000 CertIDs in one request get an error response (HTTP $code)" || \
	fail "10,000 CertIDs" "$(status_of "$T/h4")"
args=""
for i in $(seq 1 101); do args="$args -serial $i"; done
# shellcheck disable=SC2086
openssl ocsp -issuer "$T/ca.pem" $args -no_nonce -reqout "$T/101.der" >/dev/null 2>&1
curl -s -o "$T/h5" -H 'Content-Type: application/ocsp-request' --data-binary "@$T/101.der" "$URL"
[ "$(status_of "$T/h5")" = malformedrequest ] && pass "101 CertIDs over max_certids = 100: malformedRequest" || \
	fail "101 CertIDs" "$(status_of "$T/h5")"
curl -s -o "$T/h6" "$URL/not-base64!!"
[ "$(status_of "$T/h6")" = malformedrequest ] && pass "GET with bad base64 gets malformedRequest" || fail "bad base64" "$(status_of "$T/h6")"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data x "$URL")
[ "$code" = 405 ] && pass "other methods get 405" || fail "405" "$code"
# A GET with a body: answered from its URL without reading the body (MHD takes no answer while a
# body is half read: it would close the connection with none), and the responder goes on.
code=$(curl -s -m 20 -o "$T/h7" -w '%{http_code}' -X GET --data-binary "@$T/big.bin" "$URL/$enc")
[ "$code" = 200 ] && [ "$(status_of "$T/h7")" = successful ] && pass "a GET with a 200 kB body is answered from its URL" || \
	fail "GET with a body" "HTTP $code, $(status_of "$T/h7")"
ocsp "$T/alice-sign.crt" > "$T/after.out"
check_grep "after all that the responder still answers" "alice-sign.crt: good" "$T/after.out"
kill -0 "$KMSD_PID" 2>/dev/null && pass "and kmsd is still running" || fail "kmsd alive"

# ------------------------------------- NSS (Thunderbird): OCSP alone
if command -v certutil >/dev/null && command -v vfychain >/dev/null && command -v pk12util >/dev/null; then
	db="sql:$T/nss"
	mkdir "$T/nss"
	certutil -N -d "$db" --empty-password
	certutil -A -d "$db" -n "OCSP Test CA" -t "C,C,C" -a -i "$T/ca.pem"
	pk12util -i "$T/carol.p12" -d "$db" -w "$T/pw" > "$T/pk12util.out" 2>&1
	check_grep "pk12util imports carol's security file into a fresh NSS database" "SUCCESSFUL" "$T/pk12util.out"
	# The nickname is the security file's friendly name: "carol (signing)", perhaps with a generation id.
	nick=$(certutil -L -d "$db" | sed -n 's/^\(carol (signing)[^ ]*\( #[0-9a-f]*\)\?\) .*/\1/p' | head -1)
	certutil -L -d "$db" -n "$nick" -a > "$T/carol-nss.pem"
	check_grep "the signing certificate is in the database" "BEGIN CERTIFICATE" "$T/carol-nss.pem"
	crlutil -L -d "$db" > "$T/crls.out" 2>&1
	check_nogrep "the database holds no CRL" "CRL Info" "$T/crls.out"
	vfy() { vfychain -d "$db" -pp -u 4 -g leaf -m ocsp -s failIfNoInfo -a "$T/carol-nss.pem" 2>&1; }
	vfy > "$T/nss-good.out"
	check_grep "vfychain (OCSP only, failIfNoInfo): carol's chain is good" "Chain is good" "$T/nss-good.out"
	ctl revoke carol@example.org --reason affiliationChanged > /dev/null 2>&1
	t0=$(date +%s%N)
	vfy > "$T/nss-revoked.out"
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	check_grep "right after kmsctl revoke vfychain says revoked" "ERROR -8180: Peer's Certificate has been revoked" "$T/nss-revoked.out"
	[ "$ms" -lt 1000 ] && pass "within a second of the revocation ($ms ms)" || fail "within a second" "$ms ms"
else
	note "NSS tools not installed: Thunderbird check skipped"
fi

# ------------------------------------------------------ gpgsm + dirmngr
if command -v gpgsm >/dev/null && command -v dirmngr >/dev/null; then
	export GNUPGHOME="$T/gnupg"
	mkdir -m 700 "$GNUPGHOME"
	echo allow-loopback-pinentry > "$GNUPGHOME/gpg-agent.conf"
	# OCSP only: no CRL is ever fetched, so the answer can only come from the responder.
	printf 'allow-ocsp\n' > "$GNUPGHOME/dirmngr.conf"
	printf 'enable-ocsp\ndisable-crl-checks\n' > "$GNUPGHOME/gpgsm.conf"
	fpr=$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha1 | cut -d= -f2)
	echo "$fpr S relax" > "$GNUPGHOME/trustlist.txt"
	gpgsm --batch --import "$T/ca.pem" >/dev/null 2>&1
	for u in alice dave; do
		gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --import "$T/$u.p12" < "$T/pw" >/dev/null 2>&1
		printf 'Content-Type: text/plain\r\n\r\nsigned by %s\r\n' "$u" > "$T/$u.msg"
		sfpr=$(gpgsm_signing_fpr "$u@example.org")
		[ -n "$sfpr" ] || fail "gpgsm lists $u's signing certificate with its secret key"
		# gpg-agent on a loaded machine sometimes fails a first signature: try again before giving up.
		for _ in 1 2 3; do
			rm -f "$T/$u.sig"
			gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --disable-ocsp -u "$sfpr" \
				--detach-sign -o "$T/$u.sig" "$T/$u.msg" < "$T/pw" > "$T/$u.sign.out" 2>&1 && break
			sleep 1
		done
		[ -s "$T/$u.sig" ] || fail "gpgsm signs as $u" "$(tail -3 "$T/$u.sign.out" | tr '\n' ' ')"
	done
	ctl revoke alice@example.org --reason keyCompromise > /dev/null 2>&1
	gpgsm --batch --verify "$T/alice.sig" "$T/alice.msg" > "$T/gv-alice.out" 2>&1
	check_grep "gpgsm (dirmngr asking our OCSP responder) says alice's certificate has been revoked" \
		"certificate has been revoked" "$T/gv-alice.out"
	check_nogrep "and does not call it a good signature" "Good signature" "$T/gv-alice.out"
	gpgsm --batch --verify "$T/dave.sig" "$T/dave.msg" > "$T/gv-dave.out" 2>&1
	check_grep "and accepts a valid user's signature" "Good signature" "$T/gv-dave.out"
	check_nogrep "without any revocation complaint" "revoked|OCSP.*(error|failed)" "$T/gv-dave.out"
	gpgconf --kill all >/dev/null 2>&1
	unset GNUPGHOME
else
	note "gpgsm/dirmngr not installed: client check skipped"
fi

# --------------------------------------------------------------- replica
# A milter-only kmsd following the primary's CRL answers OCSP with a
# delegated signer the primary issues to it, and keeps answering when the
# primary is stopped.
RPORT=$(free_port)
RSTATE="$T/replica"
printf '[kmsd]\nstate_dir = %s\nauthserv_id = mx2.test.example\nlog_level = debug\n[ca]\nenabled = no\n' "$RSTATE" \
	> "$T/replica.conf"
printf '[http]\nlisten = 127.0.0.1:%s\n[crl]\nsource = http://127.0.0.1:%s/crl/kms-ca.crl\nsource_ca = %s\n' \
	"$RPORT" "$HTTP_PORT" "$T/ca.pem" >> "$T/replica.conf"
"$KMSD" -f -c "$T/replica.conf" >> "$T/replica.log" 2>&1 &
RPID=$!
PIDS="$PIDS $RPID"
for _ in $(seq 1 100); do [ -s "$RSTATE/ocsp-signer.pub" ] && break; sleep 0.1; done
check_grep "the replica writes its signer's public key for the primary" "BEGIN PUBLIC KEY" "$RSTATE/ocsp-signer.pub"
RURL="http://127.0.0.1:$RPORT/ocsp"
rocsp() { openssl ocsp -issuer "$T/ca.pem" -url "$RURL" -CAfile "$T/ca.pem" "$@" 2>&1; }
rocsp -cert "$T/dave-sign.crt" > "$T/r0.out"
check_grep "before the primary issued it a signer, the replica says tryLater" "trylater \(3\)" "$T/r0.out"
write_conf "[ca]" "pkcs12_format = compat" "[ocsp]" "max_certids = 100" "replica_keys = $RSTATE/ocsp-signer.pub"
kill -HUP "$KMSD_PID"
for _ in $(seq 1 60); do
	rocsp -cert "$T/dave-sign.crt" > "$T/r1.out"
	grep -q "dave-sign.crt: good" "$T/r1.out" && break
	sleep 0.5
done
check_grep "once listed in replica_keys, the replica answers: dave is good" "dave-sign.crt: good" "$T/r1.out"
check_grep "its response verifies against our CA" "Response verify OK" "$T/r1.out"
rocsp -cert "$T/bob-sign.crt" > "$T/r2.out"
check_grep "and bob, revoked on the primary, is revoked there too" "bob-sign.crt: revoked" "$T/r2.out"
fp=$(openssl pkey -pubin -in "$RSTATE/ocsp-signer.pub" -outform DER | sha256sum | cut -c1-64)
curl -sf "http://127.0.0.1:$HTTP_PORT/ocsp-signers/$fp.crt" | openssl x509 -inform DER -noout -ext extendedKeyUsage \
	> "$T/rsigner.out" 2>&1
check_grep "the primary serves the replica's delegated signer certificate" "OCSP Signing" "$T/rsigner.out"
ctl revoke erin@example.org --reason superseded > /dev/null 2>&1
for _ in $(seq 1 30); do
	rocsp -cert "$T/erin-sign.crt" > "$T/r3.out"
	grep -q "erin-sign.crt: revoked" "$T/r3.out" && break
	sleep 0.2
done
check_grep "a revocation on the primary reaches the replica's OCSP answers" "erin-sign.crt: revoked" "$T/r3.out"
stop_kmsd
rocsp -cert "$T/dave-sign.crt" -cert "$T/erin-sign.crt" > "$T/r4.out"
check_grep "with the primary stopped the replica still answers: dave good" "dave-sign.crt: good" "$T/r4.out"
check_grep "and erin revoked" "erin-sign.crt: revoked" "$T/r4.out"

# Both sides keep the replica's signer in their store: a replica restarted
# while the primary is down still signs, and a restarted primary serves the
# same certificate rather than issuing another.
# rsigner_serial RESPONSE: the serial number of the signer certificate an OCSP response carries.
rsigner_serial() { openssl ocsp -respin "$1" -resp_text -noverify 2>/dev/null | \
	sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2; }
rocsp -cert "$T/dave-sign.crt" -respout "$T/r4.der" > /dev/null
s_before=$(rsigner_serial "$T/r4.der")
kill -TERM "$RPID"
wait "$RPID" 2>/dev/null
PIDS=$(printf '%s' "$PIDS" | sed "s/ $RPID\b//")
"$KMSD" -f -c "$T/replica.conf" >> "$T/replica.log" 2>&1 &
RPID=$!
PIDS="$PIDS $RPID"
for _ in $(seq 1 100); do
	rocsp -cert "$T/dave-sign.crt" -cert "$T/erin-sign.crt" -respout "$T/r5.der" > "$T/r5.out"
	grep -q "dave-sign.crt: good" "$T/r5.out" && break
	sleep 0.1
done
check_grep "a replica restarted while the primary is down answers: dave good" "dave-sign.crt: good" "$T/r5.out"
check_grep "erin revoked (from the CRL it kept)" "erin-sign.crt: revoked" "$T/r5.out"
check_grep "and its answer verifies against our CA" "Response verify OK" "$T/r5.out"
s_after=$(rsigner_serial "$T/r5.der")
[ -n "$s_before" ] && [ "$s_before" = "$s_after" ] && pass "signed with the signer certificate it kept ($s_after)" || \
	fail "the kept signer" "before $s_before, after $s_after"
curl -sf "http://127.0.0.1:$HTTP_PORT/ocsp-signers/$fp.crt" -o /dev/null
[ $? -ne 0 ] && pass "(the primary is really down)" || fail "the primary is down"
start_kmsd || fail "the primary starts again"
for _ in $(seq 1 50); do
	curl -sf "http://127.0.0.1:$HTTP_PORT/ocsp-signers/$fp.crt" -o "$T/rsigner2.der" && break
	sleep 0.2
done
s_served=$(openssl x509 -inform DER -in "$T/rsigner2.der" -noout -serial 2>/dev/null | cut -d= -f2)
[ -n "$s_served" ] && [ "$s_served" = "$s_before" ] && \
	pass "the restarted primary serves the replica the same signer certificate, not a new one" || \
	fail "the same replica signer after a primary restart" "served $s_served, replica has $s_before"
grep -q "delegated signer kept for the replica key" "$T/kmsd.log" && pass "(the primary says it kept it)" || \
	fail "the primary kept the replica signer" "$(grep 'delegated signer' "$T/kmsd.log" | tail -2 | tr '\n' ' ')"
ctl revoke dave@example.org --reason cessationOfOperation > /dev/null 2>&1
for _ in $(seq 1 30); do
	rocsp -cert "$T/dave-sign.crt" > "$T/r6.out"
	grep -q "dave-sign.crt: revoked" "$T/r6.out" && break
	sleep 0.2
done
check_grep "after the primary's restart a revocation there reaches the replica's answers" "dave-sign.crt: revoked" "$T/r6.out"
check_grep "which still verify" "Response verify OK" "$T/r6.out"
kill -TERM "$RPID"
wait "$RPID" 2>/dev/null
PIDS=$(printf '%s' "$PIDS" | sed "s/ $RPID\b//")

done_testing
