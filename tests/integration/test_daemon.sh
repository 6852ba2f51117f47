#!/bin/bash
# test_daemon.sh - kmsd as a daemon: it returns once ready in the
# background and writes its pid file; started as root with [kmsd]
# user/group it drops to that user after opening its sockets; core dumps
# are off; the control socket has the configured group and mode 0660; a
# bound on concurrent control clients holds; a start-up failure in the
# background is printed by the parent and exits 1.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "switches users"
need_cmd useradd setpriv
setup
KUSER="${ACCT}d"
make_user "$KUSER"
make_group "$GROUP"
write_conf "[kmsd]" "user = $KUSER" "group = $GROUP" "max_control_clients = 2" "control_idle_timeout = 20"

"$KMSD" -c "$CONF" > "$T/bg.out" 2>&1
rc=$?
[ $rc = 0 ] && pass "kmsd in the background returns 0 once it is ready" || fail "background start" "rc=$rc $(cat "$T/bg.out")"
PID=$(cat "$STATE/kmsd.pid" 2>/dev/null)
[ -n "$PID" ] && kill -0 "$PID" 2>/dev/null && pass "the pid file names the running daemon" || fail "pid file" "$PID"
PIDS="$PIDS $PID"
check "the daemon answers at once" ctl status
[ "$(ps -o user= -p "$PID" | tr -d ' ')" = "$KUSER" ] && pass "it runs as [kmsd] user" || fail "runs as $KUSER" "$(ps -o user= -p "$PID")"
[ "$(ps -o group= -p "$PID" | tr -d ' ')" = "$GROUP" ] && pass "and as [kmsd] group" || fail "runs as $GROUP" "$(ps -o group= -p "$PID")"
grep -q '^Max core file size *0 *0' "/proc/$PID/limits" && pass "core dumps are limited to 0 bytes" || fail "RLIMIT_CORE 0"
# A process that is not dumpable has its /proc files owned by root.
[ "$(stat -c %U "/proc/$PID/status")" = root ] && pass "and the process is not dumpable (PR_SET_DUMPABLE 0)" || fail "not dumpable"
[ "$(stat -c '%a %G' "$SOCK")" = "660 $GROUP" ] && pass "the control socket is 0660, group $GROUP" || fail "control socket mode" "$(stat -c '%a %G' "$SOCK")"
[ "$(stat -c %U "$STATE/kms.db")" = "$KUSER" ] && pass "the store belongs to the kmsd user" || fail "store owner" "$(stat -c %U "$STATE/kms.db")"

# Two idle clients fill the bound; the third is told to come back.
(sleep 4) | "$CTLRAW" "$SOCK" > /dev/null 2>&1 &
(sleep 4) | "$CTLRAW" "$SOCK" > /dev/null 2>&1 &
sleep 0.5
ctl status > "$T/busy.out" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "too many control connections" "$T/busy.out" && pass "a third concurrent client is refused with busy" || \
	fail "client bound" "rc=$rc $(cat "$T/busy.out")"
wait
check "and served again once the others leave" ctl status

kill -TERM "$PID"
for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && fail "SIGTERM stops the daemon" || pass "SIGTERM stops the daemon"
[ ! -e "$STATE/kmsd.pid" ] || [ ! -w "$STATE" ] && pass "it removes its pid file" || fail "pid file removed"

# A failure after forking reaches the terminal through the parent.
printf 'garbage that is not a database, long enough to have a header page or two......\n' > "$T/bad.db"
cp "$T/bad.db" "$STATE/kms.db"
"$KMSD" -c "$CONF" > "$T/fail.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "a background start that fails exits 1" || fail "failed background start exits 1" "rc=$rc"
check_grep "and says why" "store" "$T/fail.out"
done_testing
