#!/bin/bash
# test_hostile.sh - the hostile-message corpus of tests/data/hostile (made by
# its mkcorpus.sh with openssl; verdicts in its "expected" file) through
# `kmsd -t`, then the label, masking, partial and subject-tag cases through a
# real, private Postfix with kmsd attached: a revoked sender gets the subject
# tag on every Subject field, X-KMS-Warning and the notice whatever else the
# message holds (a smime-type label that says encrypted, a broken signature
# beside the revoked one, unsigned content beside it, a tag elsewhere in the
# subject); a good signature beside unsigned content arrives as partial,
# with X-KMS-Warning and no revoked-sender tag.  The Postfix half needs root.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl
setup
H="$(cd "$srcdir/tests/data/hostile" && pwd)"
NOTICE='This message was signed with a revoked certificate: %{signer}, %{reason}.'

# ---------------------------------------------------------------- kmsd -t
write_conf "[policy]" "notice = $NOTICE"
ncases=0
while read -r file verdict ar marks; do
	case "$file" in *.eml) ;; *) continue ;; esac
	ncases=$((ncases + 1))
	out="$T/t-$file.out"
	"$KMSD" -t -c "$CONF" --trust "$H/ca.pem" --crl "$H/crl.pem" "$H/$file" > "$out" 2> "$out.err"
	rc=$?
	first=$(head -1 "$out")
	case "$first" in
	"$H/$file: smime=$ar ($verdict: "*) pass "kmsd -t: $file is $verdict (smime=$ar)" ;;
	*) fail "kmsd -t: $file is $verdict (smime=$ar)" "exit $rc: $first $(cat "$out.err")" ;;
	esac
	case "$marks" in
	revoked)
		if grep -q '^X-KMS-Warning: signer certificate of dave@example.org .*keyCompromise' "$out" &&
		    grep -q '^Subject: \[REVOKED SENDER\] ' "$out" || [ "$file" = tag-exact.eml ]; then
			pass "kmsd -t: $file gets the subject tag and X-KMS-Warning"
		else
			fail "kmsd -t: $file gets the subject tag and X-KMS-Warning" "$(tr '\n' ' ' < "$out")"
		fi ;;
	warn)
		if grep -q '^X-KMS-Warning: S/MIME partial: ' "$out" && ! grep -q '^Subject:' "$out"; then
			pass "kmsd -t: $file gets X-KMS-Warning, no revoked-sender tag"
		else
			fail "kmsd -t: $file gets X-KMS-Warning, no revoked-sender tag" "$(tr '\n' ' ' < "$out")"
		fi ;;
	*)
		check_nogrep "kmsd -t: $file gets no warning" '^X-KMS-Warning|^Subject:' "$out" ;;
	esac
done < "$H/expected"
[ "$ncases" -ge 25 ] && pass "the corpus has its cases ($ncases)" || fail "the corpus has its cases" "$ncases"
# Both Subject fields of tag-two-subjects end up tagged: only the second changes.
"$KMSD" -t -c "$CONF" --trust "$H/ca.pem" --crl "$H/crl.pem" "$H/tag-two-subjects.eml" > "$T/two.out"
[ "$(grep -c '^Subject: ' "$T/two.out")" = 1 ] && grep -q '^Subject: \[REVOKED SENDER\] Quarterly figures$' "$T/two.out" &&
    pass "kmsd -t: of two Subject fields the untagged one is tagged" ||
    fail "kmsd -t: of two Subject fields the untagged one is tagged" "$(cat "$T/two.out")"

# ---------------------------------------------------------------- Postfix
if [ "$(id -u)" != 0 ] || ! command -v postfix >/dev/null 2>&1 || ! command -v smtp-sink >/dev/null 2>&1 ||
    ! command -v swaks >/dev/null 2>&1; then
	note "Postfix half skipped: needs root, postfix, smtp-sink and swaks"
	done_testing
fi
mkdir -m 755 "$T/sock"
MILTER="unix:$T/sock/milter.sock"
write_conf "[kmsd]" "milter_socket = $MILTER" "[milter]" "trust_file = $H/ca.pem" \
    "[crl]" "external = $H/crl.pem" "external_ca = $H/ca.pem" "[policy]" "notice = $NOTICE"
start_kmsd || { fail "kmsd starts"; done_testing; }
for _ in $(seq 1 50); do
	grep -Eq "revocation index rebuilt: [1-9]" "$T/kmsd.log" 2>/dev/null && break
	sleep 0.1
done
SINK_PORT=$(free_port)
SMTP_PORT=$(free_port)
sink_start "$SINK_PORT" "$T/sink" || { fail "smtp-sink starts"; done_testing; }
pf_setup pf "$SMTP_PORT" "$SINK_PORT" "$MILTER"
pf_start pf && pass "a private Postfix starts on 127.0.0.1:$SMTP_PORT" || { fail "Postfix starts"; done_testing; }

# top FILE: the top-level header block of a delivered message.
top() {
	awk '/^\r?$/ { exit } { print }' "$1"
}

n=0
# deliver FILE: through Postfix to the sink; $got is the delivered copy.
deliver() {
	swaks --server "127.0.0.1:$SMTP_PORT" --from sender@example.org --to bob@remote.example \
	    --data "@$H/$1" > "$T/$1.smtp" 2>&1
	n=$((n + 1))
	got=/nonexistent
	wait_files "$T/sink" "$n" 20 || { note "no delivery for $1: $(tail -3 "$T/pf/maillog")"; return 1; }
	got=$(ls -t "$T/sink"/* | head -1)
}

for file in label-enveloped-data.eml label-authEnveloped-data.eml label-certs-only.eml label-x-enveloped-data.eml \
    mask-garbage-part.eml mask-second-signer.eml mask-tampered-beside.eml partial-mixed-dave.eml \
    hp-subject-dave.eml tag-contains.eml tag-two-subjects.eml; do
	deliver "$file"
	# every Subject field carries the tag at its start
	subj=$(top "$got" | grep -c '^Subject: ')
	tagged=$(top "$got" | grep -c '^Subject: \[REVOKED SENDER\] ')
	[ "$subj" -ge 1 ] && [ "$subj" = "$tagged" ] && pass "Postfix: $file arrives with the subject tag" ||
	    fail "Postfix: $file arrives with the subject tag" "$(top "$got" | grep '^Subject' | tr '\n' ' ')"
	check_grep "Postfix: $file arrives with X-KMS-Warning" \
	    '^X-KMS-Warning: signer certificate of dave@example.org .*revoked on .*keyCompromise' "$got"
	check_grep "Postfix: $file arrives with the notice" \
	    '^This message was signed with a revoked certificate: dave@example.org, keyCompromise\.' "$got"
	check_grep "Postfix: $file: A-R says revoked" 'smime=fail \(revoked:' "$got"
done
# Of the two Subject fields, the one that started with the tag kept its one.
check_nogrep "Postfix: never tagged twice" '\[REVOKED SENDER\] \[REVOKED SENDER\]' "$got"

deliver partial-mixed-alice.eml
check_grep "Postfix: alice's signature beside an unsigned part arrives as partial" \
    'smime=policy \(partial: .*part 2 \[text/html\]' "$got"
check_grep "Postfix: with X-KMS-Warning naming the unsigned part" '^X-KMS-Warning: S/MIME partial: .*part 2' "$got"
check_nogrep "Postfix: and no revoked-sender tag or notice" 'REVOKED SENDER|revoked certificate' "$got"
check_nogrep "Postfix: and no pass claimed for the whole message" 'smime=pass' "$got"
done_testing
