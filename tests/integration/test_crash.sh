#!/bin/bash
# test_crash.sh - crash safety of enrollment and escrow: enroll users in a
# loop while kmsd is killed with SIGKILL at random moments and restarted
# (KILLS times, at least 100 in the suite).  Afterwards the store passes
# PRAGMA integrity_check, every encryption certificate has its escrowed
# key, every escrowed key has its certificate, and every escrowed key
# unwraps (offline recovery, which checks each key against its
# certificate) to the key of its certificate.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl sqlite3
KILLS=${KILLS:-100}
setup
USER_KEY=ec:p256
write_conf
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Crash Test" --shares 3 --threshold 2 --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
set -- "$T"/shares/*
S1=$1
S2=$2

# The enrolling client: runs until told to stop, tolerating a dead kmsd.
(
	i=0
	while [ ! -e "$T/stop" ]; do
		i=$((i + 1))
		"$KMSCTL" -s "$SOCK" enroll "u$$-$i@crash.example" --out "$T/p12-$i.p12" >/dev/null 2>&1
		rm -f "$T/p12-$i.p12"
	done
) &
CLIENT=$!
PIDS="$PIDS $CLIENT"

kills=0
restart_failures=0
while [ $kills -lt "$KILLS" ]; do
	# A random moment inside the next 300 ms of enrolling.
	sleep "0.$(printf '%03d' $(( $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 300 )))"
	kill -KILL "$KMSD_PID" 2>/dev/null
	wait "$KMSD_PID" 2>/dev/null
	PIDS=$(printf '%s' "$PIDS" | sed "s/ $KMSD_PID\b//")
	kills=$((kills + 1))
	start_kmsd || restart_failures=$((restart_failures + 1))
done
touch "$T/stop"
wait "$CLIENT" 2>/dev/null
[ $restart_failures = 0 ] && pass "kmsd restarted cleanly after each of $kills SIGKILLs" || \
	fail "kmsd restarted cleanly after each SIGKILL" "$restart_failures restarts failed"
stop_kmsd

DB="$STATE/kms.db"
[ "$(sqlite3 "$DB" 'PRAGMA integrity_check')" = ok ] && pass "PRAGMA integrity_check is ok" || fail "PRAGMA integrity_check is ok"
users=$(sqlite3 "$DB" "SELECT count(DISTINCT email) FROM certs WHERE usage = 'enc'")
note "$users users enrolled across $kills kills"
[ "$users" -gt 0 ] && pass "enrollments went through between the kills" || fail "enrollments went through"
orphan_certs=$(sqlite3 "$DB" "SELECT count(*) FROM certs c WHERE usage = 'enc' AND NOT EXISTS (SELECT 1 FROM escrow e WHERE e.serial = c.serial)")
orphan_keys=$(sqlite3 "$DB" "SELECT count(*) FROM escrow e WHERE NOT EXISTS (SELECT 1 FROM certs c WHERE c.serial = e.serial AND c.usage = 'enc')")
[ "$orphan_certs" = 0 ] && pass "every encryption certificate has its escrowed key" || fail "encryption certificates without escrow: $orphan_certs"
[ "$orphan_keys" = 0 ] && pass "every escrowed key has its certificate" || fail "escrowed keys without certificate: $orphan_keys"
signs=$(sqlite3 "$DB" "SELECT count(*) FROM certs WHERE usage = 'sign' AND origin = 'enroll'")
encs=$(sqlite3 "$DB" "SELECT count(*) FROM certs WHERE usage = 'enc'")
[ "$signs" = "$encs" ] && pass "signing and encryption certificates come in pairs" || fail "pairs: $signs signing, $encs encryption"

bad=0
for u in $(sqlite3 "$DB" "SELECT DISTINCT email FROM certs WHERE usage = 'enc'"); do
	if ! "$KMSCTL" recover --offline --db "$DB" --share "$S1" --share "$S2" "$u" --password-file <(echo password1) \
		--out "$T/rec-$u.p12" >/dev/null 2>&1; then
		bad=$((bad + 1))
		note "cannot recover $u"
	fi
	rm -f "$T/rec-$u.p12"
done
[ $bad = 0 ] && pass "every escrowed key unwraps to the key of its certificate ($users users)" || fail "$bad users' keys do not recover"
done_testing
