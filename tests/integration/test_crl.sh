#!/bin/bash
# test_crl.sh - revocation end to end: revoke with a reason; the CRL
# fetched over HTTP from the URL in the certificate lists both of the
# user's serials with that reason; openssl verify -crl_check says revoked;
# publish_dir matches what HTTP serves (with validators and conditional
# GET); a replica kmsd on another port sees a revocation within two seconds
# and keeps its last copy when the primary stops; kmsctl crl fetch keeps a
# checked client copy; gpgsm with dirmngr, pointed at our distribution
# point, refuses a signature from the revoked user and accepts one from a
# valid user.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl curl
setup
USER_KEY=rsa:2048

# A partner CA whose CRL kmsd should honour, made with openssl ca, and a
# CRL that claims to be the partner's but is signed by someone else.
mkdir -p "$T/ext"
(
	cd "$T/ext" || exit 1
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -subj "/O=Partner/CN=Partner CA" -days 30 \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem 2>/dev/null
	openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key -subj "/O=Partner/CN=Partner CA" -days 30 \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out evil.pem 2>/dev/null
	printf 'R\t301231000000Z\t261101000000Z,keyCompromise\t0A1B2C\tunknown\t/CN=Revoked Partner User\n' > index.txt
	echo 01 > crlnumber
	printf '[ca]\ndefault_ca = p\n[p]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n' > ca.cnf
	openssl ca -batch -gencrl -config ca.cnf -keyfile ca.key -cert ca.pem -out partner.crl 2>/dev/null
	openssl ca -batch -gencrl -config ca.cnf -keyfile evil.key -cert evil.pem -out forged.crl 2>/dev/null
)
write_conf "[ca]" "pkcs12_format = compat" "[http]" "longpoll_timeout = 5" \
	"[crl]" "delta = yes" "external = $T/ext/partner.crl, $T/ext/forged.crl" "external_ca = $T/ext/ca.pem"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "CRL Test" --share-dir "$T/shares" >/dev/null 2>&1
printf 'crlpassword\n' > "$T/pw"
for u in alice bob carol; do
	ctl enroll "$u@example.org" --name "$u" --password-file "$T/pw" --out "$T/$u.p12" >/dev/null 2>&1
	openssl pkcs12 -in "$T/$u.p12" -passin "file:$T/pw" -nodes -legacy 2>/dev/null > "$T/$u.pem"
	awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' "$T/$u.pem" > "$T/$u-sign.pem"
	openssl x509 -in "$T/$u-sign.pem" -out "$T/$u-sign.crt" 2>/dev/null
	openssl pkey -in "$T/$u-sign.pem" -out "$T/$u-sign.key" 2>/dev/null
done
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" | openssl x509 -inform DER -out "$T/ca.pem"

# ------------------------------------------------------------- revoke
ctl revoke alice@example.org --reason keyCompromise --invalidity-date 2026-11-01 > "$T/revoke.out" 2>&1
[ "$(grep -c '^revoked ' "$T/revoke.out")" = 2 ] && pass "revoking by address revokes both of alice's certificates" || \
	fail "both certificates revoked" "$(cat "$T/revoke.out")"
ctl revoke alice@example.org > "$T/again.out" 2>&1
check_grep "revoking twice is reported, not an error" "already revoked" "$T/again.out"
check_fails "an unknown reason is refused" 2 'unknown reason "becauseISaidSo".*for usage' ctl revoke bob@example.org --reason becauseISaidSo
ctl list --revoked > "$T/list.out"
check_grep "list --revoked shows the time and reason" "alice@example.org .*revoked .*keyCompromise" "$T/list.out"
check_nogrep "list --revoked leaves valid users out" "bob@example.org" "$T/list.out"
ctl show alice@example.org > "$T/show.out"
check_grep "show gives the revocation time" "^Revoked: +20[0-9-]+T" "$T/show.out"
check_grep "show gives the invalidity date" "Invalid since: 2026-11-01" "$T/show.out"

# ------------------------------------------------- the published CRL
url=$(openssl x509 -in "$T/alice-sign.crt" -noout -ext crlDistributionPoints | sed -n 's/.*URI:\(http[^ ]*\).*/\1/p')
[ "$url" = "http://127.0.0.1:$HTTP_PORT/crl/kms-ca.crl" ] && pass "the certificate's distribution point is our server" || fail "CDP URL" "$url"
curl -sf -D "$T/h1" -o "$T/crl.der" "$url"
check "the CRL at that URL is a CRL signed by the CA" openssl crl -inform DER -in "$T/crl.der" -CAfile "$T/ca.pem" -noout
openssl crl -inform DER -in "$T/crl.der" -noout -text > "$T/crl.txt"
for s in $(ctl --json show alice@example.org | grep -o '"serial":"[0-9a-f]*"' | cut -d'"' -f4); do
	S=$(printf '%s' "$s" | tr a-f A-F)
	check_grep "the CRL lists alice's serial $s" "Serial Number: 0*$S" "$T/crl.txt"
done
[ "$(grep -c 'Key Compromise' "$T/crl.txt")" = 2 ] && pass "both entries carry the reason keyCompromise" || fail "reason codes"
check_grep "entries carry the invalidity date" "Invalidity Date" "$T/crl.txt"
check_grep "the CRL has a CRL number" "X509v3 CRL Number" "$T/crl.txt"
check_grep "the CRL has the AKI" "X509v3 Authority Key Identifier" "$T/crl.txt"
check_grep "HTTP serves it as application/pkix-crl" "^Content-Type: application/pkix-crl" "$T/h1"
check_grep "with an ETag" "^ETag: " "$T/h1"
check_grep "with Last-Modified" "^Last-Modified: " "$T/h1"
check_grep "with Cache-Control" "^Cache-Control: .*max-age=" "$T/h1"
etag=$(sed -n 's/^ETag: //p' "$T/h1" | tr -d '\r')
code=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$url")
[ "$code" = 304 ] && pass "a conditional GET with its ETag gets 304" || fail "conditional GET 304" "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' -I "$url")
[ "$code" = 200 ] && pass "HEAD answers 200" || fail "HEAD 200" "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/crl/other.crl")
[ "$code" = 404 ] && pass "an unknown path is 404" || fail "404" "$code"
cmp -s "$T/crl.der" "$STATE/crl/kms-ca.crl" && pass "publish_dir holds the same bytes as HTTP" || fail "publish_dir matches HTTP"
openssl crl -inform DER -in "$T/crl.der" -out "$T/crl.pem"
cmp -s "$T/crl.pem" "$STATE/crl/kms-ca.crl.pem" && pass "and the PEM copy is the same CRL" || fail "PEM copy"

openssl verify -crl_check -CAfile "$T/ca.pem" -CRLfile "$T/crl.pem" "$T/alice-sign.crt" > "$T/v1.out" 2>&1
check_grep "openssl verify -crl_check reports alice's certificate revoked" "certificate revoked" "$T/v1.out"
check "openssl verify -crl_check accepts bob's" openssl verify -crl_check -CAfile "$T/ca.pem" -CRLfile "$T/crl.pem" "$T/bob-sign.crt"

# ------------------------------------------------------------- delta
check_grep "the full CRL points at the delta (Freshest CRL)" "Freshest CRL" "$T/crl.txt"
curl -sf -o "$T/delta.der" "http://127.0.0.1:$HTTP_PORT/crl/kms-ca-delta.crl"
openssl crl -inform DER -in "$T/delta.der" -noout -text > "$T/delta.txt" 2>&1
check_grep "a delta CRL is served with the Delta CRL Indicator" "Delta CRL Indicator" "$T/delta.txt"
cmp -s "$T/delta.der" "$STATE/crl/kms-ca-delta.crl" && pass "and published as a file" || fail "delta file"

# ------------------------------------------------------ external CRLs
primary_entries() { ctl --json status 2>/dev/null | grep -o '"entries":[0-9]*' | cut -d: -f2; }
[ "$(primary_entries)" = 3 ] && pass "the partner's CRL, checked against external_ca, adds its entry to the index" || \
	fail "external CRL in the index" "$(primary_entries) entries"
check_grep "a CRL with a bad signature is refused and logged" "forged.crl.*(signature|issuer|not signed|does not verify)" "$T/kmsd.log"

# --------------------------------------------------------- client copy
check "kmsctl crl fetch keeps a checked client copy" "$KMSCTL" crl fetch "$url" --ca "$T/ca.pem" --out "$T/client"
cmp -s "$T/client/kms-ca.crl" "$T/crl.der" && pass "the client copy is the published CRL" || fail "client copy"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null -subj /CN=Other -out "$T/other.pem" 2>/dev/null
check_fails "a CRL checked against the wrong CA is refused" 1 'no trusted CA certificate for the CRL issuer.*the local copy is kept' "$KMSCTL" crl fetch "$url" --ca "$T/other.pem" --out "$T/client"
cmp -s "$T/client/kms-ca.crl" "$T/crl.der" && pass "and the last good copy is kept" || fail "last good copy kept"

# ------------------------------------------------------------- replica
RSTATE="$T/replica"
RPORT=$(free_port)
cat > "$T/replica.conf" <<EOF
[kmsd]
state_dir = $RSTATE
log_level = debug
[ca]
enabled = no
[crl]
source = $url
source_ca = $T/ca.pem
[http]
listen = 127.0.0.1:$RPORT
longpoll_timeout = 5
EOF
"$KMSD" -f -c "$T/replica.conf" > "$T/replica.log" 2>&1 &
RPID=$!
PIDS="$PIDS $RPID"
rctl() { "$KMSCTL" -s "$RSTATE/control.sock" "$@"; }
for _ in $(seq 1 50); do rctl status >/dev/null 2>&1 && break; sleep 0.1; done
entries() { rctl --json status 2>/dev/null | grep -o '"entries":[0-9]*' | cut -d: -f2; }
for _ in $(seq 1 30); do [ "$(entries)" = 2 ] && break; sleep 0.1; done
[ "$(entries)" = 2 ] && pass "the replica loads the primary's CRL" || fail "replica has 2 entries" "$(entries)"
ctl revoke bob@example.org --reason affiliationChanged >/dev/null 2>&1
start=$(date +%s%N)
while [ "$(entries)" != 4 ] && [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 2000 ]; do sleep 0.05; done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$(entries)" = 4 ] && pass "the replica sees a new revocation within two seconds ($ms ms)" || fail "replica within 2 s" "$(entries) entries after $ms ms"
stop_kmsd
sleep 1
check "with the primary stopped the replica keeps answering" rctl status
[ "$(entries)" = 4 ] && pass "on its last good copy" || fail "replica keeps its copy" "$(entries)"
start_kmsd || fail "primary restarts"

# ------------------------------------------------------ gpgsm + dirmngr
if command -v gpgsm >/dev/null && command -v dirmngr >/dev/null; then
	export GNUPGHOME="$T/gnupg"
	mkdir -m 700 "$GNUPGHOME"
	echo allow-loopback-pinentry > "$GNUPGHOME/gpg-agent.conf"
	printf 'allow-version-check:0\n' > /dev/null
	fpr=$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha1 | cut -d= -f2)
	echo "$fpr S relax" > "$GNUPGHOME/trustlist.txt"
	gpgsm --batch --import "$T/ca.pem" >/dev/null 2>&1
	for u in alice carol; do
		gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --import "$T/$u.p12" < "$T/pw" >/dev/null 2>&1
		printf 'Content-Type: text/plain\r\n\r\nsigned by %s\r\n' "$u" > "$T/$u.msg"
		sfpr=$(gpgsm_signing_fpr "$u@example.org")
		[ -n "$sfpr" ] || fail "gpgsm lists $u's signing certificate with its secret key"
		gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --disable-crl-checks -u "$sfpr" \
			--detach-sign -o "$T/$u.sig" "$T/$u.msg" < "$T/pw" >/dev/null 2>&1
	done
	# dirmngr keeps a CRL until its nextUpdate: start from an empty cache.
	gpgconf --kill dirmngr >/dev/null 2>&1
	rm -rf "$GNUPGHOME/crls.d"
	gpgsm --batch --verify "$T/alice.sig" "$T/alice.msg" > "$T/gv-alice.out" 2>&1
	check_grep "gpgsm (dirmngr fetching our CRL) says alice's certificate has been revoked" "certificate has been revoked" "$T/gv-alice.out"
	gpgsm --batch --verify "$T/carol.sig" "$T/carol.msg" > "$T/gv-carol.out" 2>&1
	check_grep "and accepts a valid user's signature" "Good signature" "$T/gv-carol.out"
	check_nogrep "without any revocation complaint" "revoked" "$T/gv-carol.out"
	gpgconf --kill all >/dev/null 2>&1
	unset GNUPGHOME
else
	note "gpgsm/dirmngr not installed: client check skipped"
fi
done_testing
