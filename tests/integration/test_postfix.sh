#!/bin/bash
# test_postfix.sh - the milter through a real, private Postfix on loopback
# relaying to smtp-sink: good signed mail arrives with smime=pass; after
# kmsctl revoke the next message from that user arrives with the subject
# tag, X-KMS-Warning and the notice, and its inner part still passes
# openssl cms -verify; a tampered message gets fail; unsigned mail passes
# untouched; a reject policy gives 5xx at SMTP time; with kmsd stopped
# Postfix answers 4xx, and mail queued meanwhile arrives exactly once after
# kmsd restarts and the queue is flushed.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "starts a private Postfix"
need_cmd postfix smtp-sink swaks openssl postqueue postkick
setup
mkdir -m 755 "$T/sock"
MILTER="unix:$T/sock/milter.sock"
write_conf "[kmsd]" "milter_socket = $MILTER"
cp "$CONF" "$T/warn.conf"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Postfix Test" --share-dir "$T/shares" >/dev/null 2>&1
printf 'pfpassword\n' > "$T/pw"
ctl enroll alice@example.org --name Alice --password-file "$T/pw" --out "$T/alice.p12" >/dev/null 2>&1
openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes 2>/dev/null > "$T/alice.pem"
awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' "$T/alice.pem" > "$T/sign.pem"
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" | openssl x509 -inform DER -out "$T/ca.pem"

SINK_PORT=$(free_port)
SMTP_PORT=$(free_port)
sink_start "$SINK_PORT" "$T/sink" || { fail "smtp-sink starts"; done_testing; }
pf_setup pf "$SMTP_PORT" "$SINK_PORT" "$MILTER"
pf_start pf && pass "a private Postfix starts on 127.0.0.1:$SMTP_PORT" || { fail "Postfix starts"; done_testing; }

# sign FILE SUBJECT: a message signed by alice with openssl smime (detached).
sign() {
	printf 'Content-Type: text/plain; charset=us-ascii\r\n\r\nHello Bob,\r\nthe figures for %s.\r\n' "$2" > "$T/body.txt"
	openssl smime -sign -in "$T/body.txt" -signer "$T/sign.pem" -inkey "$T/sign.pem" \
		-from alice@example.org -to bob@remote.example -subject "$2" -out "$1" 2>/dev/null
}

# send FILE: through Postfix; the SMTP transcript goes to FILE.smtp.
send() {
	swaks --server "127.0.0.1:$SMTP_PORT" --from alice@example.org --to bob@remote.example \
		--data "@$1" > "$1.smtp" 2>&1
}

n=0
# deliver FILE: send and wait for the sink to hold one more message; $got is its path.
deliver() {
	send "$1"
	n=$((n + 1))
	got=/nonexistent
	wait_files "$T/sink" "$n" 20 || { note "no delivery for $1: $(tail -3 "$T/pf/maillog")"; return 1; }
	got=$(ls -t "$T/sink"/* | head -1)
}

# ---------------------------------------------------------------- pass
sign "$T/good.eml" "week 1"
deliver "$T/good.eml"
check_grep "good signed mail arrives with smime=pass" "smime=pass" "$got"
check_grep "the header names the signer" "body.smime-identifier=alice@example.org" "$got"
check_nogrep "and carries no warning" "X-KMS-Warning|REVOKED" "$got"

# ------------------------------------------------------------ tampered
sign "$T/t.eml" "week 2"
sed 's/the figures for week 2/the figures for week 9/' "$T/t.eml" > "$T/tampered.eml"
deliver "$T/tampered.eml"
check_grep "a tampered message gets smime=fail" "smime=fail" "$got"

# ------------------------------------------------------------ unsigned
printf 'From: carol@example.org\r\nTo: bob@remote.example\r\nSubject: plain\r\n\r\nno signature here\r\n' > "$T/plain.eml"
swaks --server "127.0.0.1:$SMTP_PORT" --from carol@example.org --to bob@remote.example --data "@$T/plain.eml" > "$T/plain.smtp" 2>&1
n=$((n + 1))
wait_files "$T/sink" "$n" 20
got=$(ls -t "$T/sink"/* | head -1)
check_nogrep "unsigned mail passes untouched (no tag, no warning)" "X-KMS-Warning|REVOKED|kms_" "$got"
check_grep "with its body as it was" "^no signature here" "$got"

# ------------------------------------------------------------- revoked
sign "$T/before.eml" "week 3"
sleep 1
ctl revoke alice@example.org --reason keyCompromise >/dev/null 2>&1
deliver "$T/before.eml"
check_grep "after revoke the subject carries the tag" "^Subject: \[REVOKED SENDER\] week 3" "$got"
check_grep "an X-KMS-Warning header gives date and reason" "^X-KMS-Warning: .*revoked on 20[0-9-]+T.*keyCompromise" "$got"
check_grep "the A-R header says fail" "smime=fail" "$got"
check_grep "the message is wrapped as multipart/mixed" "^Content-Type: multipart/mixed" "$got"
check_grep "the notice is there" "the certificate that signed this message has been revoked" "$got"
check_grep "it says the message claims to have been signed before the revocation" "claims to have been signed on .*before" "$got"
boundary=$(sed -n 's/^Content-Type: multipart\/mixed; boundary="\([^"]*\)".*/\1/p' "$got" | head -1)
awk -v b="--$boundary" '$0 == b {k++; next} $0 == b "--" {exit} k == 2' "$got" > "$T/inner.eml"
check_grep "the original entity is the second part" "^Content-Type: multipart/signed" "$T/inner.eml"
check "and its signature still passes openssl cms -verify" \
	openssl cms -verify -in "$T/inner.eml" -CAfile "$T/ca.pem" -purpose smimesign -out /dev/null
sign "$T/again.eml" "week 4"
deliver "$T/again.eml"
[ "$(grep -c '^Subject: ' "$got")" = 1 ] && pass "one Subject header" || fail "one Subject header"
check_nogrep "never tagged twice" "REVOKED SENDER\] \[REVOKED SENDER" "$got"

# ------------------------------------------------------------ reject
{ cat "$T/warn.conf"; printf '[policy]\non_revoked = reject\n'; } > "$CONF"
kill -HUP "$KMSD_PID"
sleep 1
sign "$T/rej.eml" "week 5"
send "$T/rej.eml"
check_grep "with on_revoked = reject Postfix answers 550 5.7.x at SMTP time" "<\*\* +550[ -]5\.7\.[0-9]" "$T/rej.eml.smtp"
check_grep "and the reply text names the reason" "550.*revoked" "$T/rej.eml.smtp"
sleep 1
[ "$(ls "$T/sink" | wc -l)" = "$n" ] && pass "the rejected message is not delivered" || fail "rejected message not delivered"
cp "$T/warn.conf" "$CONF"
kill -HUP "$KMSD_PID"
sleep 1

# ------------------------------------------------- kmsd down: tempfail
stop_kmsd
send "$T/good.eml"
check_grep "with kmsd stopped Postfix answers 4xx" "<\*\* +4[0-9][0-9][ -]4\." "$T/good.eml.smtp"
# Local submission queues the mail; Postfix keeps it until kmsd is back.
for i in 1 2 3; do
	printf 'From: alice@example.org\nTo: bob@remote.example\nSubject: queued %s\nMessage-ID: <queued-%s@test.example>\n\nqueued while kmsd was down\n' \
		"$i" "$i" | sendmail -C "$T/pf/etc" -f alice@example.org bob@remote.example
done
sleep 2
[ "$(ls "$T/sink" | wc -l)" = "$n" ] && pass "nothing is delivered while kmsd is down" || fail "nothing delivered while kmsd is down"
check_grep "Postfix logs the milter tempfail and keeps the mail" "milter|Service unavailable" "$T/pf/maillog"
start_kmsd || fail "kmsd restarts"
postkick -c "$T/pf/etc" public pickup W
postqueue -c "$T/pf/etc" -f
wait_files "$T/sink" $((n + 3)) 30
for i in 1 2 3; do
	c=$(grep -l "^Message-ID: <queued-$i@test.example>" "$T/sink"/* 2>/dev/null | wc -l)
	[ "$c" = 1 ] && pass "queued message $i arrives exactly once after kmsd restarts" || fail "queued message $i arrives exactly once" "found $c"
done
done_testing
