#!/bin/bash
# test_ca.sh - the CA and its control plane, end to end: init, enroll,
# list, show; certificates checked with openssl; the modern security file
# read by openssl and used to sign; the compat file imported by gpgsm, which
# signs a message that openssl accepts; a CSR from openssl req; a peer with
# no role refused; malformed, oversize and unknown requests answered while
# kmsd keeps working; SIGHUP with a broken config keeps the old one.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl
setup
USER_KEY=rsa:2048     # the default user key type
write_conf
start_kmsd || { fail "kmsd starts"; done_testing; }
pass "kmsd starts on a fresh state directory"

# ---------------------------------------------------------------- init
ctl init --org "Example Org" --shares 5 --threshold 3 --share-dir "$T/shares" > "$T/init.out" 2>&1
check_grep "init reports the new CA" "Initialised the CA: .*Example Org" "$T/init.out"
[ "$(ls "$T/shares" | wc -l)" = 5 ] && pass "init writes five share files" || fail "init writes five share files"
[ "$(stat -c %a "$T/shares/$(ls "$T/shares" | head -1)")" = 600 ] && pass "share files are mode 0600" || fail "share files are mode 0600"
check_grep "share file names its KRK, index and threshold" "^KRK-Fingerprint: [0-9a-f]{64}" "$T/shares/$(ls "$T/shares" | head -1)"
[ "$(stat -c %a "$STATE/ca-passphrase")" = 600 ] && pass "init creates the CA passphrase file 0600" || fail "CA passphrase file 0600"
check_fails "a second init is refused" 1 'init: the CA is already initialised' ctl init --org "Other"
ctl status > "$T/status.out" 2>&1
check_grep "status shows the initialised CA" "CA: +O ?= ?Example Org|CA:.*Example Org" "$T/status.out"
check_grep "status shows the caller's roles" "roles: admin" "$T/status.out"

# The CA certificate, as published over HTTP and as a file.
check "CA certificate served over HTTP" curl -sf -o "$T/ca.der" "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt"
openssl x509 -inform DER -in "$T/ca.der" -out "$T/ca.pem" 2>/dev/null
check_grep "CA certificate is a CA" "CA:TRUE" <(openssl x509 -in "$T/ca.pem" -noout -text 2>/dev/null)

# -------------------------------------------------------------- enroll
printf 'correct horse battery staple\n' > "$T/pw"
ctl enroll alice@example.org --name "Alice Example" --password-file "$T/pw" --out "$T/alice.p12" > "$T/enroll.out" 2>&1
check_grep "enroll reports both certificates" "encryption certificate +serial [0-9a-f]+" "$T/enroll.out"
[ "$(stat -c %a "$T/alice.p12")" = 600 ] && pass "security file is mode 0600" || fail "security file is mode 0600"
check "openssl reads the modern security file" \
	openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes -out "$T/alice.pem"
check_grep "security file holds two private keys" "BEGIN PRIVATE KEY" "$T/alice.pem"
[ "$(grep -c 'BEGIN PRIVATE KEY' "$T/alice.pem")" = 2 ] && pass "exactly two private keys" || fail "exactly two private keys"
[ "$(grep -c 'BEGIN CERTIFICATE' "$T/alice.pem")" = 3 ] && pass "two user certificates and the CA" || fail "three certificates"
check_grep "modern encoding uses AES-256-CBC" "AES-256-CBC|aes-256-cbc" <(openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -info -noout 2>&1)
check_grep "modern encoding uses a SHA-256 MAC" "MAC: sha256" <(openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -info -noout 2>&1)
check_fails "a wrong password does not open it" 1 'Mac verify error' openssl pkcs12 -in "$T/alice.p12" -passin pass:wrong -nodes -noout

# Split the certificates and keys by friendly name.
openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes -clcerts 2>/dev/null > "$T/all.pem"
awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' "$T/all.pem" > "$T/sign.pem"
openssl x509 -in "$T/sign.pem" -out "$T/sign.crt" 2>/dev/null
openssl pkey -in "$T/sign.pem" -out "$T/sign.key" 2>/dev/null
awk '/friendlyName: .*\(encryption\)/{p=1} /friendlyName: .*\(signing\)/{p=0} p' "$T/all.pem" > "$T/enc.pem"
openssl x509 -in "$T/enc.pem" -out "$T/enc.crt" 2>/dev/null
check "openssl verify: signing certificate against the CA" openssl verify -CAfile "$T/ca.pem" -purpose smimesign "$T/sign.crt"
check "openssl verify: encryption certificate against the CA" openssl verify -CAfile "$T/ca.pem" -purpose smimeencrypt "$T/enc.crt"
openssl x509 -in "$T/sign.crt" -noout -text > "$T/sign.txt"
openssl x509 -in "$T/enc.crt" -noout -text > "$T/enc.txt"
check_grep "signing certificate: digitalSignature, nonRepudiation" "Digital Signature, Non Repudiation" "$T/sign.txt"
check_nogrep "signing certificate: no key agreement or encipherment" "Key Agreement|Key Encipherment" "$T/sign.txt"
check_grep "encryption certificate (RSA): keyEncipherment" "Key Encipherment" "$T/enc.txt"
check_nogrep "encryption certificate: no signing bits" "Digital Signature|Non Repudiation" "$T/enc.txt"
check_grep "SAN rfc822Name" "email:alice@example.org" "$T/sign.txt"
check_grep "EKU emailProtection" "E-mail Protection" "$T/sign.txt"
check_grep "CRL distribution point is our HTTP URL" "URI:http://127.0.0.1:$HTTP_PORT/crl/kms-ca.crl" "$T/sign.txt"

# Sign a message with the enrolled key; openssl verifies it.
printf 'Subject: hello\r\n\r\nsigned by alice\r\n' > "$T/msg.txt"
check "openssl smime -sign with the enrolled signing key" \
	openssl smime -sign -in "$T/msg.txt" -signer "$T/sign.crt" -inkey "$T/sign.key" -out "$T/signed.eml"
check "openssl smime -verify accepts it against our CA" \
	openssl smime -verify -in "$T/signed.eml" -CAfile "$T/ca.pem" -out /dev/null

# ---------------------------------------------------------- list, show
ctl list > "$T/list.out" 2>&1
[ "$(grep -c 'alice@example.org' "$T/list.out")" = 2 ] && pass "list shows alice's two certificates" || fail "list shows two certificates"
ctl show alice@example.org > "$T/show.out" 2>&1
check_grep "show names the escrowed encryption key" "private key escrowed" "$T/show.out"
serial=$(openssl x509 -in "$T/sign.crt" -noout -serial | cut -d= -f2)
check "show finds a certificate by serial" ctl show "$serial"
check_fails "enrolling alice again without --renew is refused" 1 'alice@example.org already has valid certificates; use --renew' ctl enroll alice@example.org --out "$T/again.p12"
[ ! -e "$T/again.p12" ] && pass "a refused enroll leaves no file" || fail "a refused enroll leaves no file"
check "enroll --renew issues new certificates" ctl enroll alice@example.org --renew --password-file "$T/pw" --out "$T/alice2.p12"
# kmsd and the CA apply one address rule (RFC 5321: 254 characters, local
# part 64): an address of 254 characters is enrolled, one of 255 refused.
long_local=$(printf 'u%.0s' $(seq 64))
long_domain=$(printf 'd%.0s' $(seq 60)).$(printf 'e%.0s' $(seq 60)).$(printf 'f%.0s' $(seq 55)).example.org
LONG="$long_local@$long_domain"
[ ${#LONG} -eq 254 ] || fail "the long test address has 254 characters" "${#LONG}"
check "an address of 254 characters is enrolled" ctl enroll "$LONG" --password-file "$T/pw" --out "$T/long.p12"
openssl pkcs12 -in "$T/long.p12" -passin "file:$T/pw" -nokeys -clcerts 2>/dev/null | openssl x509 -noout -ext subjectAltName > "$T/long.san" 2>&1
check_grep "its certificate names it in the subjectAltName" "email:$LONG" "$T/long.san"
check "and it is renewed" ctl enroll "$LONG" --renew --password-file "$T/pw" --out "$T/long-renewed.p12"
check_fails "an address of 255 characters is refused" 1 'argument "email" is longer than 254 bytes' ctl enroll "$long_local@d$long_domain" --out "$T/long2.p12"
check_fails "an invalid address is refused" 1 '"not an address" is not a mailbox address' ctl enroll "not an address" --out "$T/x.p12"

# ---------------------------------------------------------------- CSR
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/csr.key" \
	-subj "/CN=Alice/emailAddress=alice@example.org" -addext "subjectAltName=email:alice@example.org" \
	-out "$T/alice.csr" 2>/dev/null
check "issue --csr signs a user's own signing key" ctl issue --csr "$T/alice.csr" --out "$T/csr.crt"
check "the CSR certificate verifies against the CA" openssl verify -CAfile "$T/ca.pem" -purpose smimesign "$T/csr.crt"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/m.key" \
	-subj "/CN=Mallory/emailAddress=mallory@evil.example" -out "$T/mallory.csr" 2>/dev/null
check_fails "a CSR for an address we do not manage is refused" 1 'mallory@evil.example is not an address this CA manages' ctl issue --csr "$T/mallory.csr" --out "$T/m.crt"

# ------------------------------------------------------- hostile input
printf '{"cmd": "status",,,\n' | "$CTLRAW" "$SOCK" > "$T/raw1.out"
check_grep "malformed JSON gets bad_request" '"code":"bad_request"' "$T/raw1.out"
printf '{"cmd":"format-disk"}\n' | "$CTLRAW" "$SOCK" > "$T/raw2.out"
check_grep "unknown command gets unknown_command" '"code":"unknown_command"' "$T/raw2.out"
{ printf '{"cmd":"status","args":{"x":"'; head -c 1100000 /dev/zero | tr '\0' a; printf '"}}\n{"cmd":"status"}\n'; } \
	| "$CTLRAW" "$SOCK" > "$T/raw3.out"
check_grep "an oversize request gets too_large" '"code":"too_large"' "$T/raw3.out"
check_grep "the same connection keeps working after it" '"ok":true' "$T/raw3.out"
printf '{"cmd":"enroll","args":{"email":7}}\n' | "$CTLRAW" "$SOCK" > "$T/raw4.out"
check_grep "a bad argument gets bad_args" '"code":"bad_args"' "$T/raw4.out"
check "kmsd still answers" ctl status

# A uid that can reach the socket but holds no role.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
	# kmsd's group may reach the socket; nobody is put in it for this check.
	chgrp nogroup "$STATE" "$SOCK" && chmod 0750 "$STATE" && chmod 0660 "$SOCK"
	setpriv --reuid=65534 --regid=65534 --clear-groups "$KMSCTL" -s "$SOCK" enroll eve@example.org \
		--out /tmp/kms-should-not-exist.p12 > "$T/forbidden.out" 2>&1
	rc=$?
	[ $rc = 1 ] && pass "a peer without a role exits 1" || fail "a peer without a role exits 1" "rc=$rc"
	check_grep "and is told it is forbidden" "may not run enroll: it needs the admin role" "$T/forbidden.out"
	rm -f /tmp/kms-should-not-exist.p12
	ctl audit > "$T/audit.out" 2>&1
	check_grep "the refusal is in the audit trail" "nobody.*enroll -> forbidden" "$T/audit.out"
else
	note "not root: the no-role peer check needs setpriv as root"
fi
check "the audit trail verifies" ctl audit verify

# ------------------------------------------------------------- reload
printf '[kmsd]\nstate_dir = %s\nno_such_key = 1\n' "$STATE" > "$T/bad.conf"
cp "$CONF" "$T/good.conf"
cp "$T/bad.conf" "$CONF"
kill -HUP "$KMSD_PID"
sleep 1
check_grep "a broken config on SIGHUP is refused and named" "reload refused.*no_such_key" "$T/kmsd.log"
check "kmsd keeps answering on the old config" ctl status
cp "$T/good.conf" "$CONF"
stop_kmsd
rc=$?
[ $rc = 0 ] && pass "SIGTERM stops kmsd cleanly" || fail "SIGTERM stops kmsd cleanly" "exit $rc"
[ ! -e "$STATE/kmsd.pid" ] && pass "the pid file is removed" || fail "the pid file is removed"

# -------------------------------------------------------- compat, gpgsm
if command -v gpgsm >/dev/null; then
	write_conf "[ca]" "pkcs12_format = compat"
	start_kmsd || fail "kmsd restarts"
	ctl enroll bob@example.org --name "Bob Example" --password-file "$T/pw" --out "$T/bob.p12" >/dev/null 2>&1
	check_grep "compat encoding: 3DES key bags" "pbeWithSHA1And3-KeyTripleDES-CBC" \
		<(openssl pkcs12 -in "$T/bob.p12" -passin "file:$T/pw" -info -noout -legacy 2>&1)
	check_grep "compat encoding: SHA-1 MAC" "MAC: sha1" <(openssl pkcs12 -in "$T/bob.p12" -passin "file:$T/pw" -info -noout -legacy 2>&1)
	export GNUPGHOME="$T/gnupg"
	mkdir -m 700 "$GNUPGHOME"
	echo allow-loopback-pinentry > "$GNUPGHOME/gpg-agent.conf"
	echo disable-crl-checks > "$GNUPGHOME/gpgsm.conf"
	fpr=$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha1 | cut -d= -f2)
	echo "$fpr S relax" > "$GNUPGHOME/trustlist.txt"
	gpgsm --batch --import "$T/ca.pem" >/dev/null 2>&1
	gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --import "$T/bob.p12" < "$T/pw" > "$T/gpgsm-import.out" 2>&1
	check_grep "gpgsm 2.2 imports the compat security file (its first key, the signing key)" "secret keys imported: 1" "$T/gpgsm-import.out"
	printf 'Content-Type: text/plain\r\n\r\nsigned by bob with gpgsm\r\n' > "$T/bobmsg.txt"
	gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 -u bob@example.org --detach-sign \
		-o "$T/bob.sig" "$T/bobmsg.txt" < "$T/pw" > "$T/gpgsm-sign.out" 2>&1
	[ -s "$T/bob.sig" ] && pass "gpgsm signs with the imported key" || fail "gpgsm signs with the imported key" "$(tail -3 "$T/gpgsm-sign.out" | tr '\n' ' ')"
	check "openssl cms -verify accepts gpgsm's signature" \
		openssl cms -verify -binary -inform DER -in "$T/bob.sig" -content "$T/bobmsg.txt" -CAfile "$T/ca.pem" \
		-purpose smimesign -out /dev/null
	gpgconf --kill all >/dev/null 2>&1
	unset GNUPGHOME
	stop_kmsd
else
	note "gpgsm not installed: compat import not checked"
fi

# A store that fails its integrity check: kmsd refuses to start.
cp "$STATE/kms.db" "$T/kms.db.bak"
sqlite3 "$STATE/kms.db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null 2>&1
dd if=/dev/urandom of="$STATE/kms.db" bs=4096 seek=2 count=4 conv=notrunc 2>/dev/null
if "$KMSD" -f -c "$CONF" > "$T/corrupt.out" 2>&1; then
	fail "kmsd refuses a corrupt store"
else
	check_grep "kmsd refuses a corrupt store with a clear message" "corrupt" "$T/corrupt.out"
fi

check "kmsd -n accepts a good config" "$KMSD" -n -c "$T/good.conf"
"$KMSD" -n -c "$T/bad.conf" > "$T/n.out" 2>&1 && fail "kmsd -n refuses a bad config" || \
	check_grep "kmsd -n names the file, line and key" "bad.conf:3: unknown key \"no_such_key\"" "$T/n.out"
done_testing
