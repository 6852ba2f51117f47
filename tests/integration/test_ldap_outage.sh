#!/bin/bash
# test_ldap_outage.sh - nothing lost while the directory is down: with
# slapd stopped, 50 users are enrolled and 10 revoked (kmsd keeps working);
# when slapd is back the directory ends up holding exactly the store's
# current certificates, one entry per user.  Then, with slapd stopped
# again, 20 renewals and 5 more revocations; slapd comes back and kmsd is
# SIGKILLed in the middle of catching up (rows still queued, checked in the
# store); after a restart the directory again matches exactly.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/slapd.sh"
need_slapd
need_cmd openssl base64 sqlite3
setup

P=$(free_port)
slapd_setup dir "$P" || { fail "slapd set up"; done_testing; }
slapd_start dir || { fail "slapd starts"; done_testing; }
printf '%s\n' "$LDAP_PUB_PW" > "$T/bindpw"
write_conf "[ldap]" "uri = ldap://127.0.0.1:$P/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw" \
	"base_dn = $LDAP_BASE" "timeout = 2" "retry_max = 1"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Outage Test" --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'ldappassword\n' > "$T/pw"
mkdir -p "$T/exp"

queue_len() {
	ctl --json publish status | sed -n 's/.*"queue":\([0-9]*\).*/\1/p'
}
queue_empty() { [ "$(queue_len)" = 0 ]; }
# expect U OUTPUT: U's current serials are the two an enroll printed.
expect() {
	sed -n 's/.*certificate *serial \([0-9a-f]*\),.*/\1/p' "$2" | sed "s/^/$1 /" > "$T/exp/$1"
}
expected() { cat "$T/exp/"* 2>/dev/null | sort; }
matches() {
	ldap_dump dir > "$T/dir.now"
	expected > "$T/exp.now"
	cmp -s "$T/dir.now" "$T/exp.now"
}
one_entry_each() {
	n=$(lds dir -b "ou=people,$LDAP_BASE" '(mail=*)' mail | grep '^mail: ' | sort | uniq -d | wc -l)
	[ "$n" = 0 ]
}

wait_until 10 queue_empty || fail "the first CRL reaches the directory"
slapd_stop dir
ok=1
for i in $(seq 1 50); do
	u="user$i@example.org"
	ctl enroll "$u" --password-file "$T/pw" --out "$T/u$i.p12" > "$T/u$i.out" 2>&1 || { ok=0; fail "enroll $u with LDAP down" "$(cat "$T/u$i.out")"; }
	expect "$u" "$T/u$i.out"
done
for i in $(seq 1 10); do
	ctl revoke "user$i@example.org" > /dev/null 2>&1 || { ok=0; fail "revoke user$i with LDAP down"; }
	rm -f "$T/exp/user$i@example.org"
done
[ "$ok" = 1 ] && pass "50 enrollments and 10 revocations succeed while the directory is down"
n=$(queue_len)
[ "${n:-0}" -ge 51 ] && pass "the changes wait in the queue ($n entries)" || fail "changes queued" "queue $n"
ctl publish status > "$T/down.status" 2>&1
check_grep "publish status says the directory is failing, with the error" "failing|Can't contact LDAP server" "$T/down.status"

slapd_start dir || fail "slapd starts again"
wait_until 60 queue_empty || fail "the queue drains after slapd is back" "$(ctl publish status 2>&1)"
matches && pass "the directory holds exactly the store's current certificates (40 users, 80 certificates)" ||
	fail "directory == store" "$(diff "$T/exp.now" "$T/dir.now" | head -5 | tr '\n' ' ')"
[ "$(wc -l < "$T/dir.now")" = 80 ] || fail "80 certificates in the directory" "$(wc -l < "$T/dir.now")"
one_entry_each && pass "one entry per user, none duplicated" || fail "duplicate entries"
n=$(lds dir -b "ou=people,$LDAP_BASE" '(mail=*)' dn | grep -c '^dn:')
[ "$n" = 40 ] && pass "no entry is made for users revoked before they were ever published" || fail "40 entries" "$n"

# --------------------------------------------- SIGKILL during catch-up
slapd_stop dir
for i in $(seq 11 30); do
	u="user$i@example.org"
	ctl enroll "$u" --renew --password-file "$T/pw" --out "$T/r$i.p12" > "$T/r$i.out" 2>&1 || fail "renew $u" "$(cat "$T/r$i.out")"
	expect "$u" "$T/r$i.out"
done
for i in $(seq 31 35); do
	ctl revoke "user$i@example.org" > /dev/null 2>&1 || fail "revoke user$i"
	rm -f "$T/exp/user$i@example.org"
done
ctl publish resync > /dev/null 2>&1 || fail "resync queued while down"
# A long backlog ahead of them (addresses without certificates: each costs
# the publisher a search), so that the kill lands in the middle.
sqlite3 "$STATE/kms.db" ".timeout 10000" "UPDATE pubq SET seq = seq + 100000" \
	"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
	 INSERT INTO pubq(seq, kind, key, queued) SELECT i, 'user', 'ghost' || i || '@example.org', 0 FROM n" ||
	fail "backlog added"
total=$(queue_len)
slapd_start dir || fail "slapd starts a third time"
# Kill kmsd as soon as the catch-up has begun.
begun() { [ "$(queue_len)" -lt "$total" ]; }
wait_until 30 begun || note "the catch-up was not seen before the kill"
kill -KILL "$KMSD_PID"
wait "$KMSD_PID" 2>/dev/null
PIDS=$(printf '%s' "$PIDS" | sed "s/ $KMSD_PID\b//")
KMSD_PID=""
left=$(sqlite3 "$STATE/kms.db" "SELECT count(*) FROM pubq")
[ "${left:-0}" -gt 0 ] && [ "$left" -lt "$total" ] && pass "kmsd was killed mid catch-up ($left of $total entries still queued)" ||
	fail "kmsd killed mid catch-up" "$left of $total queued"
start_kmsd || fail "kmsd restarts after SIGKILL"
wait_until 60 queue_empty || fail "the queue drains after the restart" "$(ctl publish status 2>&1)"
matches && pass "after the restart the directory again matches the store exactly" ||
	fail "directory == store after SIGKILL" "$(diff "$T/exp.now" "$T/dir.now" | head -5 | tr '\n' ' ')"
[ "$(wc -l < "$T/dir.now")" = 70 ] && pass "35 users with 2 certificates each remain" || fail "70 certificates" "$(wc -l < "$T/dir.now")"
one_entry_each && pass "still one entry per user" || fail "duplicate entries after SIGKILL"
done_testing
