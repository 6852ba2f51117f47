#!/bin/bash
# test_escrow.sh - key escrow and M-of-N recovery with real, distinct local
# users as officers: enroll; a message encrypted to the user before
# recovery; request, approvals (each officer once, each share once, edited
# and foreign shares refused), fetch by the requester only and only once;
# the recovered file holds the encryption key of the certificate and no
# signing key, and decrypts the old message; offline recovery gives the
# same key; KRK rotation keeps every key recoverable with the new shares
# and none with the old; an edited audit row makes audit verify fail.
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

ctl init --org "Escrow Test" --shares 5 --threshold 3 --share-dir "$T/shares" > "$T/init.out" 2>&1
check_grep "init made 5 shares, threshold 3" "any 3 of 5" "$T/init.out"
i=0
for f in "$T"/shares/*-share-*; do
	i=$((i + 1))
	SHARE[$i]=$f
done
# Each officer gets their own copy of their share, readable only by them.
for n in 1 2 3; do
	install -m 0600 -o "${ACCT}o$n" "${SHARE[$n]}" "$T/officer$n.share"
done

printf 'hunter2hunter2\n' > "$T/pw"
ctl enroll alice@example.org --password-file "$T/pw" --out "$T/alice.p12" >/dev/null 2>&1
openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes -clcerts 2>/dev/null > "$T/alice.pem"
awk '/friendlyName: .*\(encryption\)/{p=1} /friendlyName: .*\(signing\)/{p=0} p' "$T/alice.pem" | openssl x509 -out "$T/enc.crt" 2>/dev/null
awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' "$T/alice.pem" | openssl x509 -out "$T/sign.crt" 2>/dev/null
printf 'To: alice@example.org\r\nSubject: secret\r\n\r\nthe quarterly numbers\r\n' > "$T/plain.txt"
check "a message is encrypted to alice before any recovery" \
	openssl smime -encrypt -aes256 -in "$T/plain.txt" -out "$T/enc.eml" "$T/enc.crt"

# ------------------------------------------------------------ request
check_fails "a request for an unknown address is refused" 1 'no escrowed key for nobody@example.org' ctl recover request nobody@example.org --why test
ctl recover request alice@example.org --why "lost laptop, ticket 4711" > "$T/req.out" 2>&1
ID=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req.out")
[ -n "$ID" ] && pass "a request is opened and its id printed ($ID)" || fail "request id printed" "$(cat "$T/req.out")"
check_fails "an admin cannot approve (officer role needed)" 1 'may not run recover.approve: it needs the officer role' ctl recover approve "$ID" --share "${SHARE[1]}"

as ${ACCT}o1 recover approve "$ID" --share "$T/officer1.share" > "$T/a1.out" 2>&1
check_grep "officer 1's share is accepted (1 of 3)" "1 of 3 approvals" "$T/a1.out"
check_fails "the same officer cannot approve twice" 1 'has already approved this request' as ${ACCT}o1 recover approve "$ID" --share "$T/officer1.share"
install -m 0600 -o ${ACCT}o2 "${SHARE[1]}" "$T/officer2-has-share1"
check_fails "a share already given is refused" 1 'share 1 has already been given for this request' as ${ACCT}o2 recover approve "$ID" --share "$T/officer2-has-share1"
# An edited share: one base64 character of the payload changed.
awk 'BEGIN{d=0} /^$/{body=1; print; next} body && !d && length($0) > 10 {c=substr($0,5,1); r=(c=="A")?"B":"A"; $0=substr($0,1,4) r substr($0,6); d=1} {print}' \
	"${SHARE[2]}" > "$T/edited.share"
chown ${ACCT}o2 "$T/edited.share"
as ${ACCT}o2 recover approve "$ID" --share "$T/edited.share" > "$T/edited.out" 2>&1
[ $? != 0 ] && pass "an edited share is refused" || fail "an edited share is refused" "$(cat "$T/edited.out")"
check_grep "and the reason says so" "edited" "$T/edited.out"
head -n 5 "${SHARE[2]}" > "$T/truncated.share"
chown ${ACCT}o2 "$T/truncated.share"
check_fails "a truncated share is refused" 2 'is not a recovery share file: not a valid share file' as ${ACCT}o2 recover approve "$ID" --share "$T/truncated.share"
check_fails "fetch before the threshold is refused" 1 'is open \(waiting for officer approvals\)' ctl recover fetch "$ID" --out "$T/early.p12"
as ${ACCT}o2 recover approve "$ID" --share "$T/officer2.share" > "$T/a2.out" 2>&1
check_grep "officer 2's share is accepted (2 of 3)" "2 of 3 approvals" "$T/a2.out"
as ${ACCT}o3 recover approve "$ID" --share "$T/officer3.share" > "$T/a3.out" 2>&1
check_grep "the third share reaches the threshold" "threshold reached, request approved" "$T/a3.out"
ctl recover list > "$T/list.out" 2>&1
check_grep "recover list shows the approved request and its officers" "$ID +key +approved .*${ACCT}o1, ${ACCT}o2, ${ACCT}o3" "$T/list.out"

# ------------------------------------------------------------ fetch
# The output goes where ${ACCT}c may write, so only kmsd's refusal can stop it.
install -d -o ${ACCT}c -m 0700 "$T/comp"
check_fails "a compliance officer who did not ask cannot fetch" 1 'belongs to root: only the requester may use it' as ${ACCT}c recover fetch "$ID" --out "$T/comp/other.p12"
ctl recover fetch "$ID" --password-file "$T/pw" --out "$T/recovered.p12" > "$T/fetch.out" 2>&1
check_grep "the requester fetches the recovered file" "Recovered 1 encryption key" "$T/fetch.out"
check_fails "a second fetch is refused" 1 'its keys were already fetched once' ctl recover fetch "$ID" --out "$T/again.p12"
openssl pkcs12 -in "$T/recovered.p12" -passin "file:$T/pw" -nodes 2>/dev/null > "$T/recovered.pem"
[ "$(grep -c 'BEGIN PRIVATE KEY' "$T/recovered.pem")" = 1 ] && pass "the recovered file holds exactly one private key" || fail "one private key"
openssl pkey -in "$T/recovered.pem" -pubout 2>/dev/null > "$T/rec.pub"
openssl x509 -in "$T/enc.crt" -pubkey -noout > "$T/enc.pub"
openssl x509 -in "$T/sign.crt" -pubkey -noout > "$T/sign.pub"
cmp -s "$T/rec.pub" "$T/enc.pub" && pass "its public key is the encryption certificate's" || fail "recovered key matches the encryption certificate"
cmp -s "$T/rec.pub" "$T/sign.pub" && fail "the recovered file holds no signing key" || pass "the recovered file holds no signing key"
openssl pkey -in "$T/recovered.pem" -out "$T/rec.key" 2>/dev/null
openssl smime -decrypt -in "$T/enc.eml" -inkey "$T/rec.key" -out "$T/decrypted.txt" 2>/dev/null
cmp -s <(tr -d '\r' < "$T/decrypted.txt") <(tr -d '\r' < "$T/plain.txt") && \
	pass "the recovered key decrypts the message sent before the recovery" || fail "old message decrypts"

# -------------------------------------------------- expiry and audit
ctl recover request alice@example.org --why "expiry check" > "$T/req2.out" 2>&1
ID2=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req2.out")
sqlite3 "$STATE/kms.db" "UPDATE recovery SET expires = 1 WHERE id = '$ID2'"
as ${ACCT}o1 recover approve "$ID2" --share "$T/officer1.share" > "$T/exp.out" 2>&1
check_grep "an approval after expiry is refused" "expired" "$T/exp.out"
ctl audit > "$T/audit.out" 2>&1
check_grep "the audit trail names every approving officer" "approved by ${ACCT}o1 \(share [0-9]\), ${ACCT}o2 \(share [0-9]\), ${ACCT}o3" "$T/audit.out"
check "audit verify passes on an untouched trail" ctl audit verify

# ----------------------------------------------------- offline recovery
stop_kmsd
"$KMSCTL" recover --offline --db "$STATE/kms.db" --share "${SHARE[4]}" --share "${SHARE[2]}" --share "${SHARE[5]}" \
	alice@example.org --password-file "$T/pw" --out "$T/offline.p12" > "$T/offline.out" 2>&1
check_grep "offline recovery works with kmsd stopped" "Recovered 1 encryption key" "$T/offline.out"
openssl pkcs12 -in "$T/offline.p12" -passin "file:$T/pw" -nodes -nocerts 2>/dev/null | openssl pkey -out "$T/off.key" 2>/dev/null
cmp -s "$T/off.key" "$T/rec.key" && pass "offline recovery gives the same key" || fail "offline recovery gives the same key"
check_fails "offline recovery with two shares is refused" 2 '2 share\(s\) given; this key-recovery key needs 3' "$KMSCTL" recover --offline --db "$STATE/kms.db" \
	--share "${SHARE[1]}" --share "${SHARE[2]}" alice@example.org --out "$T/two.p12"

# ------------------------------------------------------------ rotation
start_kmsd || fail "kmsd restarts"
# The new shares are each encrypted under their officer's own passphrase.
mkdir -m 700 "$T/pass"
for n in 1 2 3 4 5; do printf 'officer %s passphrase\n' "$n" > "$T/pass/share-$n.passphrase"; done
ctl escrow rotate --share-dir "$T/newshares" --share-passphrase-dir "$T/pass" > "$T/rot.out" 2>&1
RID=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/rot.out")
for n in 1 2 3; do
	as "${ACCT}o$n" recover approve "$RID" --share "$T/officer$n.share" > "$T/r$n.out" 2>&1
done
check_grep "rotation completes at the threshold" "request done" "$T/r3.out"
[ "$(ls "$T/newshares" | wc -l)" = 5 ] && pass "rotation writes five new shares" || fail "five new shares"
check_grep "the new shares are encrypted under their passphrases" "^Encryption: scrypt" "$(ls "$T"/newshares/* | head -1)"
ctl enroll bob@example.org --password-file "$T/pw" --out "$T/bob.p12" >/dev/null 2>&1
stop_kmsd
newshare() { ls "$T"/newshares/*-share-"$1"-of-5.txt; }
pf() { printf '%s' "$T/pass/share-$1.passphrase"; }
"$KMSCTL" recover --offline --db "$STATE/kms.db" --share "$(newshare 1)" --share "$(newshare 2)" --share "$(newshare 3)" \
	--passphrase-file "$(pf 1)" --passphrase-file "$(pf 2)" --passphrase-file "$(pf 3)" \
	alice@example.org --password-file "$T/pw" --out "$T/rot-alice.p12" > "$T/rot-a.out" 2>&1
check_grep "after rotation the new shares recover a key escrowed before it" "Recovered 1" "$T/rot-a.out"
check_fails "an encrypted share with a wrong passphrase recovers nothing" 1 'newshare.*-share-1-of-5.txt: wrong passphrase for this share' "$KMSCTL" recover --offline --db "$STATE/kms.db" \
	--share "$(newshare 1)" --share "$(newshare 2)" --share "$(newshare 3)" \
	--passphrase-file "$(pf 2)" --passphrase-file "$(pf 2)" --passphrase-file "$(pf 3)" \
	alice@example.org --out "$T/wrongpass.p12"
"$KMSCTL" recover --offline --db "$STATE/kms.db" --share "$(newshare 3)" --share "$(newshare 4)" --share "$(newshare 5)" \
	--passphrase-file "$(pf 3)" --passphrase-file "$(pf 4)" --passphrase-file "$(pf 5)" \
	bob@example.org --password-file "$T/pw" --out "$T/rot-bob.p12" > "$T/rot-b.out" 2>&1
check_grep "and one escrowed after it" "Recovered 1" "$T/rot-b.out"
check_fails "the old shares recover nothing" 1 'belongs to another key-recovery key' "$KMSCTL" recover --offline --db "$STATE/kms.db" \
	--share "${SHARE[1]}" --share "${SHARE[2]}" --share "${SHARE[3]}" alice@example.org --out "$T/old.p12"
start_kmsd || fail "kmsd restarts"
ctl recover request alice@example.org --why "old share check" > "$T/req3.out" 2>&1
ID3=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req3.out")
as ${ACCT}o1 recover approve "$ID3" --share "$T/officer1.share" > "$T/old.out" 2>&1
check_grep "an old share is refused as belonging to another key-recovery key" "another key-recovery key" "$T/old.out"
install -m 0600 -o ${ACCT}o1 "$(newshare 1)" "$T/officer1.new"
install -m 0600 -o ${ACCT}o1 "$(pf 1)" "$T/officer1.pass"
install -m 0600 -o ${ACCT}o1 "$(pf 2)" "$T/officer1.wrong"
check_fails "online, an encrypted share with a wrong passphrase is refused" 1 'wrong passphrase for this share' \
	as ${ACCT}o1 recover approve "$ID3" --share "$T/officer1.new" --passphrase-file "$T/officer1.wrong"
as ${ACCT}o1 recover approve "$ID3" --share "$T/officer1.new" --passphrase-file "$T/officer1.pass" > "$T/new1.out" 2>&1
check_grep "and accepted with the officer's passphrase" "1 of 3 approvals" "$T/new1.out"

# ------------------------------------------------------ audit tamper
sqlite3 "$STATE/kms.db" "UPDATE audit SET user = 'mallory' WHERE seq = 3"
ctl audit verify > "$T/verify.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "audit verify fails after a row is edited" || fail "audit verify fails after a row is edited" "rc=$rc"
check_grep "and names the row" "row 3" "$T/verify.out"
done_testing
