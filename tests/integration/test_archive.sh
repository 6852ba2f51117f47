#!/bin/bash
# test_archive.sh - compliance decryption of a user's archived mail.  An
# archive built here: messages encrypted with openssl smime and gpgsm to
# the user's current and earlier (renewed) encryption certificates, to
# another user, to both, signed-then-encrypted, signed only, plain, and a
# corrupt one.  After M officers approve an archive request, archive
# decrypt gives exactly the expected counts and every decrypted body is the
# original plaintext; the audit trail has one key release per decrypted
# message and names the officers; only the requester can use the request,
# and nothing is released after close or expiry; Maildir and single files
# give the same result as the mbox; the --p12 form agrees.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "creates officer accounts"
need_cmd openssl sqlite3 setpriv useradd groupadd
setup

officers_setup
USER_KEY=rsa:2048
write_conf "[kmsd]" "group = $GROUP" \
	"[roles]" "officer = ${ACCT}o1, ${ACCT}o2, ${ACCT}o3" "compliance = ${ACCT}c" "admin = root" "auditor = root"
start_kmsd || { fail "kmsd starts"; done_testing; }
chgrp "$GROUP" "$STATE" && chmod 0750 "$STATE"
# kmsd writes shares only where no one else can swap a directory: before $T is opened to the group.
ctl init --org "Archive Test" --share-dir "$T/shares" >/dev/null 2>&1
chgrp "$GROUP" "$T" && chmod 0775 "$T"
i=0
for f in "$T"/shares/*-share-*; do
	i=$((i + 1))
	[ $i -le 3 ] && install -m 0600 -o "${ACCT}o$i" "$f" "$T/officer$i.share"
done
printf 'archivepass\n' > "$T/pw"

# enc_cert NAME P12: the encryption certificate of a security file.
enc_cert() {
	openssl pkcs12 -in "$2" -passin "file:$T/pw" -nodes 2>/dev/null |
		awk '/friendlyName: .*\(encryption\)/{p=1} /friendlyName: .*\(signing\)/{p=0} p' > "$T/$1.enc.pem"
	openssl x509 -in "$T/$1.enc.pem" -out "$T/$1.enc.crt" 2>/dev/null
}
ctl enroll alice@example.org --password-file "$T/pw" --out "$T/alice-old.p12" >/dev/null 2>&1
enc_cert alice-old "$T/alice-old.p12"
ctl enroll alice@example.org --renew --password-file "$T/pw" --out "$T/alice.p12" >/dev/null 2>&1
enc_cert alice "$T/alice.p12"
openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes 2>/dev/null |
	awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' > "$T/alice.sign.pem"
ctl enroll bob@example.org --password-file "$T/pw" --out "$T/bob.p12" >/dev/null 2>&1
enc_cert bob "$T/bob.p12"
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" | openssl x509 -inform DER -out "$T/ca.pem"

# ------------------------------------------------------------ the archive
M="$T/msgs"
mkdir -p "$M"
# body N: the plaintext entity of message N.
body() { printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\nsecret body of message %s\r\n' "$1"; }
hdr() { printf 'From: %s\r\nTo: alice@example.org\r\nSubject: message %s\r\nMessage-ID: <m%s@archive.example>\r\nDate: Mon, 2 Nov 2026 10:0%s:00 +0000\r\n' "$2" "$1" "$1" "$1"; }
# smime_encrypt N CERT...: encrypted with openssl smime.
smime_encrypt() {
	n=$1
	shift
	body "$n" > "$M/$n.body"
	{ hdr "$n" sender@example.org; openssl smime -encrypt -aes256 -in "$M/$n.body" "$@" 2>/dev/null; } > "$M/$n.eml"
}
smime_encrypt 1 "$T/alice.enc.crt"
smime_encrypt 2 "$T/alice-old.enc.crt"
smime_encrypt 4 "$T/bob.enc.crt"
smime_encrypt 5 "$T/alice.enc.crt" "$T/bob.enc.crt"
# 3: gpgsm --encrypt to alice's current certificate.
if command -v gpgsm >/dev/null; then
	export GNUPGHOME="$T/gnupg"
	mkdir -m 700 "$GNUPGHOME"
	echo "$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha1 | cut -d= -f2) S relax" > "$GNUPGHOME/trustlist.txt"
	echo disable-crl-checks > "$GNUPGHOME/gpgsm.conf"
	gpgsm --batch --import "$T/ca.pem" "$T/alice.enc.crt" >/dev/null 2>&1
	body 3 > "$M/3.body"
	gpgsm --batch --encrypt -r "$(openssl x509 -in "$T/alice.enc.crt" -noout -fingerprint -sha1 | cut -d= -f2 | tr -d :)" \
		-o "$M/3.p7m" "$M/3.body" > "$T/gpgsm.out" 2>&1
	{ hdr 3 sender@example.org
	  printf 'MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
	  printf 'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
	  base64 -w 64 "$M/3.p7m" | sed 's/$/\r/'; } > "$M/3.eml"
	gpgconf --kill all >/dev/null 2>&1
	unset GNUPGHOME
	[ -s "$M/3.p7m" ] && pass "gpgsm encrypts a message to alice" || fail "gpgsm encrypts" "$(cat "$T/gpgsm.out")"
	GPGSM=1
else
	GPGSM=0
	note "gpgsm not installed: its message is left out"
fi
# 6: signed by alice, then encrypted to her.
body 6 > "$M/6.body"
openssl smime -sign -in "$M/6.body" -signer "$T/alice.sign.pem" -inkey "$T/alice.sign.pem" -out "$M/6.signed" 2>/dev/null
{ hdr 6 alice@example.org; openssl smime -encrypt -aes256 -in "$M/6.signed" "$T/alice.enc.crt" 2>/dev/null; } > "$M/6.eml"
# 7: signed only; 8: plain.
body 7 > "$M/7.body"
{ hdr 7 alice@example.org; openssl smime -sign -in "$M/7.body" -signer "$T/alice.sign.pem" -inkey "$T/alice.sign.pem" 2>/dev/null; } > "$M/7.eml"
{ hdr 8 sender@example.org; printf '\r\njust a plain message 8\r\n'; } > "$M/8.eml"
# 9: encrypted to alice, then its base64 damaged.
smime_encrypt 9 "$T/alice.enc.crt"
awk 'NR > 12 && NR < 18 { gsub(/[A-Za-z]/, "Q") } { print }' "$M/9.eml" > "$M/9.bad" && mv "$M/9.bad" "$M/9.eml"

LIST="1 2 3 4 5 6 7 8 9"
[ $GPGSM = 1 ] || LIST="1 2 4 5 6 7 8 9"
# The same messages as an mbox, a Maildir and single files.
for n in $LIST; do
	printf 'From sender@example.org Mon Nov  2 10:00:00 2026\n'
	tr -d '\r' < "$M/$n.eml" | sed 's/^\(>*From \)/>\1/'
	printf '\n'
done > "$T/archive.mbox"
mkdir -p "$T/maildir/cur" "$T/maildir/new" "$T/maildir/tmp"
for n in $LIST; do cp "$M/$n.eml" "$T/maildir/cur/17000000$n.M1P1.host:2,S"; done
chmod -R a+rX "$T/msgs" "$T/maildir" "$T/archive.mbox"
EXPECT_DEC=5
[ $GPGSM = 1 ] || EXPECT_DEC=4

# ---------------------------------------------------- request, approve
as ${ACCT}c recover request alice@example.org --why "legal hold 17" --purpose archive > "$T/req.out" 2>&1
ID=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req.out")
[ -n "$ID" ] && pass "the compliance officer opens an archive request" || fail "archive request" "$(cat "$T/req.out")"
check_fails "nothing is released before the officers approve" 1 "request $ID is open \\(waiting for officer approvals\\)" \
	as ${ACCT}c archive decrypt --request "$ID" --in "$T/archive.mbox" --out "$T/early.mbox"
[ ! -e "$T/early.mbox" ] && pass "and no output is written" || fail "no output before approval"
for n in 1 2 3; do as "${ACCT}o$n" recover approve "$ID" --share "$T/officer$n.share" >/dev/null 2>&1; done
ctl recover list | grep -q "$ID .*approved" && pass "three officers approve it" || fail "approved"

# ------------------------------------------------------------ decrypt
cd "$T"
as ${ACCT}c --json archive decrypt --request "$ID" --in "$T/archive.mbox" --out "$T/out.mbox" > "$T/dec.json" 2> "$T/dec.err"
check_grep "archive decrypt: $EXPECT_DEC decrypted" "\"decrypted\":$EXPECT_DEC[,}]" "$T/dec.json"
check_grep "1 not addressed to this user" '"not_for_user":1[,}]' "$T/dec.json"
check_grep "2 not encrypted" '"not_encrypted":2[,}]' "$T/dec.json"
check_grep "1 failed, with its reason" '"failed":1,.*"failures":\["[^"]*m9@archive.example' "$T/dec.json"
for n in 1 2 3 5 6; do
	[ $n = 3 ] && [ $GPGSM = 0 ] && continue
	c=$(grep -c "^secret body of message $n\$" "$T/out.mbox")
	[ "$c" = 1 ] && pass "message $n decrypts to its original plaintext" || fail "message $n decrypted" "found $c"
done
check_grep "decrypted messages carry X-KMS-Decrypted with the request and key" "^X-KMS-Decrypted: request=$ID; key=[0-9a-f]+" "$T/out.mbox"
old=$(openssl x509 -in "$T/alice-old.enc.crt" -noout -serial | cut -d= -f2 | tr A-F a-f | sed 's/^0*//')
check_grep "the message for the earlier certificate was opened with the earlier key" "key=$old" "$T/out.mbox"
check_grep "a signature inside the encryption is verified" "^Authentication-Results: .*smime=pass.*alice@example.org" "$T/out.mbox"
check_grep "outer headers are kept" "^Subject: message 6" "$T/out.mbox"
check_grep "messages not for the user are copied unchanged" "^Message-ID: <m4@archive.example>" "$T/out.mbox"
check_nogrep "and stay encrypted" "secret body of message 4" "$T/out.mbox"
[ "$(grep -c '^From ' "$T/out.mbox")" = "$(echo $LIST | wc -w)" ] && pass "every input message is in the output" || fail "message count in output"

as ${ACCT}c --json archive decrypt --request "$ID" --only-decrypted --in "$T/archive.mbox" --out "$T/only.mbox" > /dev/null 2>&1
[ "$(grep -c '^From ' "$T/only.mbox")" = $EXPECT_DEC ] && pass "--only-decrypted leaves the others out" || fail "--only-decrypted"

as ${ACCT}c archive decrypt --request "$ID" --in "$T/maildir" --out "$T/out-maildir.mbox" > /dev/null 2>&1
cmp -s "$T/out.mbox" "$T/out-maildir.mbox" && pass "a Maildir gives the same result as the mbox" || fail "Maildir result equals mbox"
files=""
for n in $LIST; do files="$files --in $M/$n.eml"; done
# shellcheck disable=SC2086
as ${ACCT}c archive decrypt --request "$ID" $files --out "$T/out-files.mbox" > /dev/null 2>&1
cmp -s "$T/out.mbox" "$T/out-files.mbox" && pass "single .eml files give the same result as the mbox" || fail "single files result equals mbox"

# ------------------------------------------------------------- audit
ctl audit > "$T/audit.out"
releases=$(grep -c "archive.release -> ok .*(key release:" "$T/audit.out")
[ "$releases" = $((EXPECT_DEC * 4)) ] && pass "the audit trail has one key release per decrypted message ($releases over 4 runs)" || \
	fail "one audit row per key release" "$releases rows"
check_grep "each release names the request and the Message-ID" "archive.release -> ok \[<?m1@archive.example>?\] request=$ID" "$T/audit.out"
check_grep "the approval names the officers" "approved by ${ACCT}o1 \(share [0-9]\), ${ACCT}o2 \(share [0-9]\), ${ACCT}o3" "$T/audit.out"

# ------------------------------------------ who may use it, and until when
check_fails "another user (even an admin) cannot use the request, and is told so" 1 \
	"request $ID belongs to ${ACCT}c: only the requester may use it" \
	ctl archive decrypt --request "$ID" --in "$T/archive.mbox" --out "$T/root.mbox"
[ ! -e "$T/root.mbox" ] && pass "and no output is written" || fail "no output for another user"
as ${ACCT}c recover close "$ID" >/dev/null 2>&1
check_fails "after recover close nothing more is released" 1 "request $ID is closed" \
	as ${ACCT}c archive decrypt --request "$ID" --in "$T/archive.mbox" --out "$T/closed.mbox"
[ ! -e "$T/closed.mbox" ] && pass "and no partial output is left" || fail "no output after close"
as ${ACCT}c recover request alice@example.org --why "expiry" --purpose archive > "$T/req2.out" 2>&1
ID2=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req2.out")
for n in 1 2 3; do as "${ACCT}o$n" recover approve "$ID2" --share "$T/officer$n.share" >/dev/null 2>&1; done
sqlite3 "$STATE/kms.db" "UPDATE recovery SET expires = 1 WHERE id = '$ID2'"
check_fails "after expiry nothing more is released, and the reason says expired" 1 "request $ID2 is expired" \
	as ${ACCT}c archive decrypt --request "$ID2" --in "$T/archive.mbox" --out "$T/expired.mbox"
[ ! -e "$T/expired.mbox" ] && pass "and no output is written" || fail "no output after expiry"

# -------------------------------------------------------------- --p12
ctl recover request alice@example.org --why "hand over" > "$T/req3.out" 2>&1
ID3=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req3.out")
for n in 1 2 3; do as "${ACCT}o$n" recover approve "$ID3" --share "$T/officer$n.share" >/dev/null 2>&1; done
ctl recover fetch "$ID3" --password-file "$T/pw" --out "$T/recovered.p12" >/dev/null 2>&1
"$KMSCTL" --json archive decrypt --p12 "$T/recovered.p12" --password-file "$T/pw" --in "$T/archive.mbox" \
	--out "$T/out-p12.mbox" > "$T/p12.json" 2>&1
check_grep "the --p12 form decrypts the same messages" "\"decrypted\":$EXPECT_DEC,\"not_for_user\":1,\"not_encrypted\":2,\"failed\":1" "$T/p12.json"
diff <(grep -v '^X-KMS-Decrypted' "$T/out.mbox") <(grep -v '^X-KMS-Decrypted' "$T/out-p12.mbox") >/dev/null && \
	pass "with the same output" || fail "--p12 output equals --request output"
# A truncated mbox: what comes before the cut is decrypted, the cut message
# is counted as failed with its reason, and the run completes.
head -c 3000 "$T/archive.mbox" > "$T/trunc.mbox"
"$KMSCTL" archive decrypt --p12 "$T/recovered.p12" --password-file "$T/pw" --in "$T/trunc.mbox" \
	--out "$T/trunc-out.mbox" > "$T/trunc.out" 2>&1
st=$?
[ $st -eq 0 ] && pass "a truncated mbox is read to its end (exit 0)" || fail "truncated mbox exit status" "$st"
check_grep "the messages before the cut are decrypted" "decrypted: +2$" "$T/trunc.out"
check_grep "the cut message is counted as failed, with its reason" \
	"trunc.mbox#3 .*not a CMS ContentInfo \\(damaged or truncated\\)" "$T/trunc.out"
done_testing
