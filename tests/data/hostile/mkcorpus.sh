#!/bin/sh
# mkcorpus.sh - regenerate the hostile-message corpus of tests/data/hostile:
# messages a revoked sender (dave) or a trusted but lying one (mallory)
# would send to dodge kmsd's warning, each made with the openssl command
# line, and the verdict and marks each must get (the file "expected").
#
#   label    an opaque signed-data whose smime-type says enveloped-data,
#            authEnveloped-data or certs-only (and x-pkcs7-mime); a real
#            certs-only for contrast
#   mask     a broken signature beside the revoked one: a garbage
#            application/pkcs7-mime part inside the signed content, a
#            tampered second SignerInfo in the same signature, a tampered
#            second multipart/signed beside it
#   partial  signed content beside unsigned content; an outer Subject that
#            differs from the protected one (RFC 9788 header protection,
#            and the legacy message/rfc822 wrapper of RFC 8551)
#   tag      subjects that hold the tag elsewhere, two Subject fields
#   dn       display names holding another address than the From address
#            (quoted, unquoted, RFC 2047 encoded word, comment)
#
# Every signature of dave's still verifies with `openssl cms -verify`
# (checked below): a mail client shows it as good, so only kmsd can warn.
# Certificates are valid from 2025 to 2045; the CRL (dave revoked,
# keyCompromise) is valid for 20 years.  Private keys are thrown away.
#
# usage: sh tests/data/hostile/mkcorpus.sh   (from the top of the tree)
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
CNF

mkdir -p ca/newcerts
: > ca/index.txt
echo 3000 > ca/serial
echo 01 > ca/crlnumber
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca/key.pem 2>/dev/null
(cd ca && openssl req -config ../ca.cnf -new -key key.pem -subj "/O=KMS Hostile Test/CN=KMS Hostile Test CA" \
    -out req.pem && openssl ca -batch -config ../ca.cnf -selfsign -keyfile key.pem -in req.pem -out cert.pem \
    -extensions v3_ca -startdate $START -enddate $END -notext 2>/dev/null)

# user NAME KEYALG KEYOPT: NAME@example.org under the CA
user() {
	openssl genpkey -algorithm "$2" -pkeyopt "$3" -out "$1.key" 2>/dev/null
	SAN=$1@example.org openssl req -config ca.cnf -new -key "$1.key" -subj "/O=KMS Hostile Test/CN=$1" -out "$1.req"
	(cd ca && SAN=$1@example.org openssl ca -batch -config ../ca.cnf -keyfile key.pem -cert cert.pem \
	    -in "../$1.req" -out "../$1.pem" -extensions v3_user -startdate $START -enddate $END -notext 2>/dev/null)
}
user alice RSA rsa_keygen_bits:2048
user dave EC ec_paramgen_curve:P-256
user mallory EC ec_paramgen_curve:P-256
(cd ca && openssl ca -config ../ca.cnf -keyfile key.pem -cert cert.pem -revoke ../dave.pem \
    -crl_reason keyCompromise 2>/dev/null &&
 openssl ca -config ../ca.cnf -keyfile key.pem -cert cert.pem -gencrl -out ../crl.pem 2>/dev/null)

CR=$(printf '\r')
# text WHO WHAT: a text/plain entity (CRLF)
text() {
	printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\nHello from %s.\r\n%s\r\n' "$1" "$2"
}

# hdr FROM SUBJECT: outer header fields (no Content-*)
hdr() {
	printf 'From: %s\r\nTo: rcpt@example.net\r\nSubject: %s\r\nDate: Thu, 01 Jan 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n' "$1" "$2"
}

# detsig IN SIGNER... : DER detached signature of the exact bytes of IN
detsig() {
	in=$1
	shift
	args=""
	for s in "$@"; do
		args="$args -signer $s.pem -inkey $s.key"
	done
	# shellcheck disable=SC2086
	openssl cms -sign -binary -in "$in" $args -md sha256 -outform DER -out sig.der
}

# mpsigned IN BOUNDARY: the multipart/signed entity (Content-Type and body) of IN and sig.der
mpsigned() {
	printf 'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n\tmicalg=sha-256; boundary="%s"\r\n\r\n' "$2"
	printf 'This is an S/MIME signed message\r\n\r\n--%s\r\n' "$2"
	cat "$1"
	printf '\r\n--%s\r\nContent-Type: application/pkcs7-signature; name="smime.p7s"\r\n' "$2"
	printf 'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
	openssl base64 -in sig.der | sed "s/\$/$CR/"
	printf '\r\n--%s--\r\n' "$2"
}

# opaque IN SIGNER TYPE SMIMETYPE: an application/TYPE entity holding signed-data of IN, labelled SMIMETYPE
opaque() {
	openssl cms -sign -binary -nodetach -in "$1" -signer "$2.pem" -inkey "$2.key" -md sha256 -outform DER -out op.der
	printf 'Content-Type: application/%s; smime-type=%s; name="smime.p7m"\r\n' "$3" "$4"
	printf 'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
	openssl base64 -in op.der | sed "s/\$/$CR/"
}

# verify FILE.eml: the revoked sender's own signature must verify for a mail client
verify() {
	openssl cms -verify -in "$1" -CAfile ca/cert.pem -purpose smimesign -out /dev/null 2>/dev/null ||
	    { echo "mkcorpus: $1 does not verify with openssl" >&2; exit 1; }
}

rm -f "$out"/*.eml

# ------------------------------------------------------------------ label
text dave "The label says this is encrypted." > body.txt
for t in enveloped-data authEnveloped-data certs-only; do
	{ hdr dave@example.org "Label $t"; opaque body.txt dave pkcs7-mime "$t"; } > "label-$t.eml"
done
{ hdr dave@example.org "Label x-pkcs7-mime enveloped-data"; opaque body.txt dave x-pkcs7-mime enveloped-data; } \
    > label-x-enveloped-data.eml
for f in label-*.eml; do
	# openssl reads the blob whatever its label says, as mail clients do
	sed 's/smime-type=[A-Za-z-]*/smime-type=signed-data/' "$f" > v.eml
	verify v.eml
	cp "$f" "$out/$f"
done
# A real certs-only blob (signed-data without signers) signs nothing: no verdict to give.
openssl crl2pkcs7 -nocrl -certfile alice.pem -outform DER -out co.der
{
	hdr alice@example.org "Certificates only"
	printf 'Content-Type: application/pkcs7-mime; smime-type=certs-only; name="smime.p7c"\r\n'
	printf 'Content-Transfer-Encoding: base64\r\n\r\n'
	openssl base64 -in co.der | sed "s/\$/$CR/"
} > certs-only.eml

# ------------------------------------------------------------------ mask
# A garbage pkcs7-mime part inside dave's signed content.
{
	printf 'Content-Type: multipart/mixed; boundary="inner-garbage"\r\n\r\n--inner-garbage\r\n'
	text dave "A broken signature rides along."
	printf '\r\n--inner-garbage\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data; name="x.p7m"\r\n'
	printf 'Content-Transfer-Encoding: base64\r\n\r\nbm90IGEgQ01TIGJsb2IgYXQgYWxs\r\n--inner-garbage--\r\n'
} > inner.txt
detsig inner.txt dave
{ hdr dave@example.org "Mask garbage part"; mpsigned inner.txt sig-garbage; } > mask-garbage-part.eml
verify mask-garbage-part.eml

# Two SignerInfos, dave's good and alice's RSA signature value changed.
text dave "Two signers, one of them broken." > body.txt
detsig body.txt dave alice
off=$(openssl asn1parse -inform DER -in sig.der | awk -F: '/l= 256 prim: OCTET STRING/ { o = $1 } END { print o + 0 }')
hl=$(openssl asn1parse -inform DER -in sig.der | awk -v o="$off" -F: '$1 + 0 == o { sub(/.*hl= */, ""); print $1 + 0 }')
[ "$off" -gt 0 ] || { echo "mkcorpus: alice's signature value not found" >&2; exit 1; }
pos=$((off + hl + 17))
b=$(od -An -tu1 -j "$pos" -N1 sig.der | tr -d ' ')
printf "$(printf '\\%03o' $(( (b + 1) % 256 )))" | dd of=sig.der bs=1 seek="$pos" conv=notrunc 2>/dev/null
{ hdr dave@example.org "Mask tampered second signer"; mpsigned body.txt sig-second; } > mask-second-signer.eml
# openssl -verify needs every signer good: check dave's alone with the same content.
detsig body.txt dave
{ hdr dave@example.org "x"; mpsigned body.txt sig-second; } > v.eml
verify v.eml

# A tampered multipart/signed of alice's beside dave's good one.
text dave "Signed by dave." > d.txt
detsig d.txt dave
mpsigned d.txt sig-dave > d.part
verify_part() { { hdr dave@example.org x; cat "$1"; } > v.eml; verify v.eml; }
verify_part d.part
text alice "Signed by alice, then changed." > a.txt
detsig a.txt alice
mpsigned a.txt sig-alice | sed 's/then changed\./then CHANGED./' > a.part
{
	hdr dave@example.org "Mask tampered signature beside"
	printf 'Content-Type: multipart/mixed; boundary="outer-mask"\r\n\r\n--outer-mask\r\n'
	cat d.part
	printf '\r\n--outer-mask\r\n'
	cat a.part
	printf '\r\n--outer-mask--\r\n'
} > mask-tampered-beside.eml

# ---------------------------------------------------------------- partial
# partial_mixed WHO: WHO's signed part beside an unsigned attacker part
partial_mixed() {
	text "$1" "The invoice follows." > p.txt
	detsig p.txt "$1"
	mpsigned p.txt "sig-$1" > p.part
	{
		hdr "$1@example.org" "Partial $1"
		printf 'Content-Type: multipart/mixed; boundary="outer-partial"\r\n\r\n--outer-partial\r\n'
		cat p.part
		printf '\r\n--outer-partial\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n'
		printf '<p>Please pay to account 666 instead.</p>\r\n--outer-partial--\r\n'
	} > "partial-mixed-$1.eml"
}
partial_mixed alice
partial_mixed dave
# An unsigned third part inside alice's multipart/signed.
text alice "Two parts are enough." > p.txt
detsig p.txt alice
mpsigned p.txt sig-third | sed '$d' > p.part
{
	hdr alice@example.org "Partial third part"
	cat p.part
	printf '\r\n--sig-third\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nUnsigned postscript.\r\n--sig-third--\r\n'
} > partial-third-part.eml

# hp WHO NAME INNER_SUBJECT OUTER_SUBJECT: RFC 9788 protected headers in the signed part
hp() {
	{
		printf 'Content-Type: text/plain; charset=us-ascii; hp="clear"\r\n'
		printf 'From: %s@example.org\r\nTo: rcpt@example.net\r\nSubject: %s\r\n\r\n' "$1" "$3"
		printf 'Hello from %s.\r\nThe header fields above are signed.\r\n' "$1"
	} > hp.txt
	detsig hp.txt "$1"
	{ hdr "$1@example.org" "$4"; mpsigned hp.txt "sig-hp"; } > "$2.eml"
}
hp alice hp-subject-alice "Quarterly figures" "Quarterly figures: pay account 666"
hp dave hp-subject-dave "Quarterly figures" "Quarterly figures: pay account 666"
hp alice hp-same-alice "Quarterly figures" "Quarterly figures"
verify hp-subject-dave.eml
# The legacy wrapper (RFC 8551 3.1): the signed content is a message/rfc822.
{
	printf 'Content-Type: message/rfc822\r\n\r\n'
	printf 'From: alice@example.org\r\nTo: rcpt@example.net\r\nSubject: Quarterly figures\r\nMIME-Version: 1.0\r\n'
	text alice "The whole message is signed."
} > w.txt
detsig w.txt alice
{ hdr alice@example.org "Quarterly figures: pay account 666"; mpsigned w.txt sig-wrap; } > wrapper-subject-alice.eml
{ hdr alice@example.org "Quarterly figures"; mpsigned w.txt sig-wrap; } > wrapper-same-alice.eml

# -------------------------------------------------------------------- tag
text dave "About the tag." > t.txt
detsig t.txt dave
mpsigned t.txt sig-tag > t.part
{ hdr dave@example.org "Re: [REVOKED SENDER] minutes"; cat t.part; } > tag-contains.eml
{ hdr dave@example.org "[revoked sender] minutes"; cat t.part; } > tag-other-case.eml
{ hdr dave@example.org "[REVOKED SENDER] minutes"; cat t.part; } > tag-exact.eml
{
	printf 'From: dave@example.org\r\nTo: rcpt@example.net\r\nSubject: [REVOKED SENDER] old news\r\n'
	printf 'Subject: Quarterly figures\r\nMIME-Version: 1.0\r\n'
	cat t.part
} > tag-two-subjects.eml
verify tag-two-subjects.eml

# --------------------------------------------------------- display names
text mallory "Who do you think I am?" > m.txt
detsig m.txt mallory
mpsigned m.txt sig-dn > m.part
dn() { { hdr "$2" "Display name $1"; cat m.part; } > "dn-$1.eml"; }
dn quoted '"alice@example.org" <mallory@example.org>'
dn unquoted 'alice@example.org <mallory@example.org>'
dn encoded '=?UTF-8?Q?alice=40example=2Eorg?= <mallory@example.org>'
dn comment 'mallory@example.org (alice@example.org)'
dn angle-comment '(alice@example.org) <mallory@example.org>'
dn fullwidth '=?UTF-8?B?YWxpY2XvvKBleGFtcGxlLm9yZw==?= <mallory@example.org>'
dn plain '"Mallory Example" <mallory@example.org>'
dn self '"mallory@example.org" <mallory@example.org>'

cp ./*.eml "$out/"
rm -f "$out/v.eml"
cp ca/cert.pem "$out/ca.pem"
cp crl.pem "$out/crl.pem"
cp dave.pem "$out/dave.pem"
echo "corpus written to $out"
