#!/bin/sh
# mkfixtures.sh - regenerate the S/MIME test messages of tests/data/smime
# with clients no one here wrote: the openssl command line (cms and smime,
# detached and opaque, -binary, SHA-256/SHA-512, RSA/ECDSA, -nocerts) and
# gpgsm.  Certificates have fixed validity dates so that the messages stay
# good (until 2045) and the expired one stays expired; the unit suite
# checks at a fixed time.  Private keys are thrown away at the end.
#
# usage: sh tests/data/smime/mkfixtures.sh   (from the top of the tree)
set -eu
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
cd "$work"

START=20250101000000Z
END=20450101000000Z
export SAN=x

cat > ca.cnf <<'CNF'
[ ca ]
default_ca = testca
[ testca ]
dir = .
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
default_crl_days = 7300
[ anything ]
commonName = optional
emailAddress = optional
organizationName = optional
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_user ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = email:$ENV::SAN
[ v3_noaddr ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = email:$ENV::SAN
CNF

# newca DIR SUBJ KEYALG: a self-signed root in DIR
newca() {
	mkdir -p "$1/newcerts"
	: > "$1/index.txt"
	echo 1000 > "$1/serial"
	echo 01 > "$1/crlnumber"
	openssl genpkey -algorithm "$3" $4 -out "$1/key.pem" 2>/dev/null
	(cd "$1" && SAN=x openssl req -config ../ca.cnf -new -key key.pem -subj "$2" -out req.pem &&
	 SAN=x openssl ca -batch -config ../ca.cnf -selfsign -keyfile key.pem -in req.pem -out cert.pem \
	    -extensions v3_ca -startdate $START -enddate $END -notext 2>/dev/null)
}

# issue CADIR NAME SUBJ SAN EXT START END KEYALG KEYOPT
issue() {
	openssl genpkey -algorithm "$8" $9 -out "$2.key" 2>/dev/null
	SAN=$4 openssl req -config ca.cnf -new -key "$2.key" -subj "$3" -out "$2.req"
	(cd "$1" && SAN=$4 openssl ca -batch -config ../ca.cnf -keyfile key.pem -cert cert.pem \
	    -in "../$2.req" -out "../$2.pem" -extensions "$5" -startdate "$6" -enddate "$7" -notext 2>/dev/null)
}

newca ca "/O=KMS Test/CN=KMS Test S\/MIME CA" RSA "-pkeyopt rsa_keygen_bits:2048"
newca other "/O=Elsewhere/CN=Untrusted CA" EC "-pkeyopt ec_paramgen_curve:P-256"
# An intermediate CA under the root (revoked below: its users are revoked too).
issue ca inter "/O=KMS Test/CN=KMS Test Intermediate" x v3_ca $START $END EC "-pkeyopt ec_paramgen_curve:P-256"
mkdir -p inter.d/newcerts && : > inter.d/index.txt && echo 2000 > inter.d/serial && echo 01 > inter.d/crlnumber
cp inter.pem inter.d/cert.pem && cp inter.key inter.d/key.pem

RSA="-pkeyopt rsa_keygen_bits:2048"
P256="-pkeyopt ec_paramgen_curve:P-256"
issue ca alice "/O=KMS Test/CN=Alice/emailAddress=alice@example.org" alice@example.org v3_user $START $END RSA "$RSA"
issue ca bob "/O=KMS Test/CN=Bob" bob@example.org v3_user $START $END EC "$P256"
issue ca dave "/O=KMS Test/CN=Dave" dave@example.org v3_user $START $END EC "$P256"
issue ca eve "/O=KMS Test/CN=Eve" eve@example.org v3_user $START 20260101000000Z EC "$P256"
issue ca frank "/O=KMS Test/CN=Frank/emailAddress=frank@example.org" x v3_noaddr $START $END EC "$P256"
issue ca nobody "/O=KMS Test/CN=Nobody" x v3_noaddr $START $END EC "$P256"
issue ca web "/O=KMS Test/CN=Web" web@example.org v3_server $START $END EC "$P256"
issue other mallory "/O=Elsewhere/CN=Mallory" mallory@example.org v3_user $START $END EC "$P256"
issue inter.d carol "/O=KMS Test/CN=Carol" carol@example.org v3_user $START $END EC "$P256"

# The root's CRL: dave's certificate (keyCompromise) and the intermediate (cACompromise).
(cd ca && openssl ca -config ../ca.cnf -keyfile key.pem -cert cert.pem -revoke ../dave.pem \
    -crl_reason keyCompromise &&
 openssl ca -config ../ca.cnf -keyfile key.pem -cert cert.pem -revoke ../inter.pem \
    -crl_reason CACompromise &&
 openssl ca -config ../ca.cnf -keyfile key.pem -cert cert.pem -gencrl -out ../crl.pem)

body() {
	printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\nHello from %s.\r\nThis message is signed.\r\n' "$1"
}

# sign NAME FROM SIGNER [openssl cms options...]
sign() {
	n=$1 from=$2 who=$3
	shift 3
	body "$who" > body.txt
	openssl cms -sign -in body.txt -signer "$who.pem" -inkey "$who.key" -from "$from" \
	    -to "rcpt@example.net" -subject "Test $n" "$@" > "$out/$n.eml"
}

sign alice-detached alice@example.org alice -md sha256
sign alice-opaque alice@example.org alice -nodetach -md sha256
sign alice-binary alice@example.org alice -binary -md sha256
sign alice-sha512 alice@example.org alice -md sha512
sign alice-nocerts alice@example.org alice -nocerts
sign bob-ecdsa bob@example.org bob
sign dave-revoked dave@example.org dave
sign eve-expired eve@example.org eve
sign mallory-untrusted mallory@example.org mallory -certfile other/cert.pem
sign alice-mismatch someone@example.net alice
sign nobody-noaddr nobody@example.org nobody
sign frank-subject-email frank@example.org frank
sign web-serverauth web@example.org web
sign carol-revoked-ca carol@example.org carol -certfile inter.pem
body alice > body.txt
openssl cms -sign -in body.txt -signer alice.pem -inkey alice.key -signer bob.pem -inkey bob.key \
    -from alice@example.org -to rcpt@example.net -subject "Test two signers" > "$out/two-signers.eml"
openssl smime -sign -in body.txt -signer alice.pem -inkey alice.key -from alice@example.org \
    -to rcpt@example.net -subject "Test openssl smime" > "$out/alice-smime-x.eml"
openssl smime -encrypt -in body.txt -from alice@example.org -to rcpt@example.net \
    -subject "Test encrypted" -aes256 alice.pem > "$out/encrypted.eml"

# gpgsm: a detached signature, put into multipart/signed as a mail client would.
export GNUPGHOME="$work/gnupg"
mkdir -m 700 "$GNUPGHOME"
echo allow-loopback-pinentry > "$GNUPGHOME/gpg-agent.conf"
printf 'disable-crl-checks\ndisable-policy-checks\n' > "$GNUPGHOME/gpgsm.conf"
openssl pkcs12 -export -in alice.pem -inkey alice.key -certfile ca/cert.pem -passout pass:test \
    -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 -out alice.p12
echo test | gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --import alice.p12 2>/dev/null
gpgsm --batch --import ca/cert.pem 2>/dev/null
fpr=$(gpgsm --with-colons --list-keys "KMS Test S/MIME CA" | awk -F: '/^fpr/ {print $10; exit}')
echo "$fpr S relax" > "$GNUPGHOME/trustlist.txt"
body alice > body.txt
echo test | gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --include-certs 2 \
    --local-user alice@example.org --detach-sign body.txt > sig.der 2>/dev/null
gpgconf --kill gpg-agent 2>/dev/null || true
{
	printf 'From: alice@example.org\r\nTo: rcpt@example.net\r\nSubject: Test gpgsm\r\n'
	printf 'MIME-Version: 1.0\r\n'
	printf 'Content-Type: multipart/signed; micalg=sha-256;\r\n\tprotocol="application/pkcs7-signature"; boundary="=-=gpgsm-test=-="\r\n\r\n'
	printf 'This is a signed message.\r\n--=-=gpgsm-test=-=\r\n'
	cat body.txt
	printf '\r\n--=-=gpgsm-test=-=\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n'
	printf 'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=smime.p7s\r\n\r\n'
	openssl base64 -in sig.der | sed 's/$/\r/'
	printf '\r\n--=-=gpgsm-test=-=--\r\n'
} > "$out/alice-gpgsm.eml"

# Broken ones, from the good one.
sed 's/This message is signed\./This message is forged./' "$out/alice-detached.eml" > "$out/alice-tampered.eml"
awk '/^MII/ && !done { print "!!!! not base64 at all ####"; done = 1; next } { print }' \
    "$out/alice-detached.eml" > "$out/garbage-signature.eml"
awk 'BEGIN { n = 0 } /^[A-Za-z0-9+\/=]+\r?$/ && length($0) > 60 { n++; if (n > 5) next } { print }' \
    "$out/alice-detached.eml" > "$out/truncated-signature.eml"
printf 'From: alice@example.org\r\nTo: rcpt@example.net\r\nSubject: Test unsigned\r\n\r\nJust text.\r\n' \
    > "$out/unsigned.eml"

cp ca/cert.pem "$out/ca.pem"
cp other/cert.pem "$out/other-ca.pem"
cp inter.pem "$out/inter.pem"
cp crl.pem "$out/crl.pem"
for n in alice bob dave eve frank mallory carol; do cp "$n.pem" "$out/$n.pem"; done
echo "fixtures written to $out"
