#!/bin/bash
# test_limits.sh - slow and idle clients cannot lock anyone out.
# Control socket: 16 idle connections of an ordinary user fill every slot
# but the one kept for root and admins, and root's kmsctl status still
# answers; a request trickled one byte a second is cut at
# control_request_timeout (a deadline for the whole request, not per
# read), which frees the slots.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "runs clients as other local users"
need_cmd setpriv curl timeout
HOLD="${HOLD:-$top_builddir/tests/integration/holdconn}"
setup
officers_setup

write_conf "[kmsd]" "group = $GROUP" "max_control_clients = 8" "control_idle_timeout = 60" \
	"control_request_timeout = 3" \
	"[roles]" "admin = root" "officer = ${ACCT}o1, ${ACCT}o2" "auditor = root"
start_kmsd || { fail "kmsd starts"; done_testing; }
chgrp "$GROUP" "$STATE" && chmod 0750 "$STATE"

# hold USER OUTFILE ARGS...: holdconn as USER in the background; waits for "held".
hold() {
	who=$1 out=$2
	shift 2
	setpriv --reuid="$who" --regid="$GROUP" --init-groups "$HOLD" "$@" > "$out" 2>&1 &
	PIDS="$PIDS $!"
	HOLD_PID=$!
	for _ in $(seq 1 100); do
		grep -q '^held' "$out" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# ------------------------------------------------------ control socket
hold ${ACCT}o1 "$T/idle.out" -n 16 -t 6 "unix:$SOCK" || fail "16 idle control clients connect"
sleep 1
timeout 5 "$KMSCTL" -s "$SOCK" status > "$T/root.out" 2>&1
check_grep "root's kmsctl status answers while 16 idle clients hold connections" "^kmsd " "$T/root.out"
as ${ACCT}o2 status > "$T/busy.out" 2>&1
rc=$?
[ $rc != 0 ] && pass "another ordinary user finds the other slots full" || fail "ordinary user refused" "$(cat "$T/busy.out")"
check_grep "and is told so" "too many control connections" "$T/busy.out"
wait "$HOLD_PID"
check_grep "the idle clients held every slot but the one kept for root and admins (7 of 8)" "^open 7$" "$T/idle.out"

# One byte a second: the whole request has 3 s, whatever each read brings.
hold ${ACCT}o1 "$T/drip.out" -n 8 -d 1 -r '{"cmd":"status","args":{}}' -t 7 "unix:$SOCK" || fail "8 trickling clients connect"
sleep 5
as ${ACCT}o2 status > "$T/after.out" 2>&1
check_grep "a request trickled one byte a second is cut at control_request_timeout, freeing the slots" "^kmsd " "$T/after.out"
wait "$HOLD_PID"
check_grep "none of the trickling clients is still connected" "^open 0$" "$T/drip.out"
check_grep "kmsd says why it closed them" "sent no whole request in time" "$T/kmsd.log"
done_testing
