#!/bin/bash
# test_limits.sh - slow and idle clients cannot lock anyone out.
# Control socket: 16 idle connections of an ordinary user fill every slot
# but the one kept for root and admins, and root's kmsctl status still
# answers; a request trickled one byte a second is cut at
# control_request_timeout (a deadline for the whole request, not per
# read), which frees the slots.
# HTTP distribution point: a plain curl gets the CRL, the CA certificate
# and OCSP answers (POST and GET) within 2 s while 200 slow clients and 100
# idle sockets are held open; the slow ones are cut at request_timeout,
# and so is an OCSP POST whose body trickles; one address gets at most
# max_connections_per_client; long polls over max_longpolls get 503 at
# once and the parked ones are answered on a new CRL; a 64 KiB OCSP POST
# is answered, a bigger one refused with 413.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "runs clients as other local users"
need_cmd setpriv curl timeout
HOLD="${HOLD:-$top_builddir/tests/integration/holdconn}"
setup
officers_setup

write_conf "[kmsd]" "group = $GROUP" "max_control_clients = 8" "control_idle_timeout = 60" \
	"control_request_timeout = 3" \
	"[http]" "max_longpolls = 4" "[ocsp]" "max_certids = 1000" \
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
hold ${ACCT}o1 "$T/drip.out" -n 8 -d 1 -r '{"cmd":"status","args":{}}' -t 10 "unix:$SOCK" || fail "8 trickling clients connect"
sleep 5
as ${ACCT}o2 status > "$T/after.out" 2>&1
check_grep "a request trickled one byte a second is cut at control_request_timeout, freeing the slots" "^kmsd " "$T/after.out"
wait "$HOLD_PID"
check_grep "none of the trickling clients is still connected" "^open 0$" "$T/drip.out"
check_grep "kmsd says why it closed them" "sent no whole request in time" "$T/kmsd.log"

# ---------------------------------------------------------------- HTTP
# (defaults: request_timeout 10 s, max_connections 512, 32 per address)
ctl init --org "Limits Test" --shares 2 --threshold 2 --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
BASE="http://127.0.0.1:$HTTP_PORT"
curl -s --max-time 5 -o "$T/crl0.der" "$BASE/crl/kms-ca.crl"
curl -s --max-time 5 "$BASE/ca/kms-ca.crt" | openssl x509 -inform DER -out "$T/ca.pem" 2>/dev/null
N0=$(openssl crl -inform DER -in "$T/crl0.der" -noout -crlnumber 2>/dev/null | sed -n 's/^crlNumber=//p')
[ -n "$N0" ] && [ -s "$T/ca.pem" ] && pass "the CRL (number $N0) and the CA certificate are served" || \
	fail "the CRL and the CA certificate are served"
N0=$((N0))
openssl ocsp -issuer "$T/ca.pem" -serial 0x1234 -no_nonce -reqout "$T/q1.der" >/dev/null 2>&1
Q1=$(base64 -w0 < "$T/q1.der")
for _ in $(seq 1 50); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/ocsp/$Q1")" = 200 ] && break
	sleep 0.2
done
# ocsp_ok FILE: a successful OCSP response that verifies with our CA.
ocsp_ok() {
	openssl ocsp -respin "$1" -issuer "$T/ca.pem" -serial 0x1234 -CAfile "$T/ca.pem" > "$1.txt" 2>&1 &&
		grep -q "Response verify OK" "$1.txt"
}
# timed_get NAME PATH [curl options...]: HTTP code of a plain curl allowed 2 s, the body in $T/NAME.
timed_get() {
	n=$1 path=$2
	shift 2
	curl -s --max-time 2 -o "$T/$n" -w '%{http_code}' "$@" "$BASE$path"
}

# 200 slow clients (a request line one byte every 3 s) and 100 idle ones, from ten addresses.
hold root "$T/slow.out" -n 200 -a 10 -d 3 -r "GET /crl/kms-ca.crl HTTP/1.1" -t 16 "tcp:127.0.0.1:$HTTP_PORT" ||
	fail "slow clients connect"
SLOW=$HOLD_PID
hold root "$T/idle-http.out" -n 100 -a 10 -t 8 "tcp:127.0.0.1:$HTTP_PORT" || fail "idle clients connect"
IDLE=$HOLD_PID
check_grep "200 slow clients are connected" "^held 200$" "$T/slow.out"
check_grep "100 idle clients are connected" "^held 100$" "$T/idle-http.out"
code=$(timed_get crl1.der /crl/kms-ca.crl)
[ "$code" = 200 ] && cmp -s "$T/crl0.der" "$T/crl1.der" &&
	pass "a plain curl gets the CRL within 2 s while 200 slow and 100 idle clients hold connections" ||
	fail "curl gets the CRL within 2 s under 300 held connections" "code=$code"
code=$(timed_get ca1.der /ca/kms-ca.crt)
[ "$code" = 200 ] && openssl x509 -inform DER -in "$T/ca1.der" -noout 2>/dev/null &&
	pass "and the CA certificate" || fail "curl gets the CA certificate within 2 s" "code=$code"
code=$(timed_get o1.der /ocsp -H 'Content-Type: application/ocsp-request' --data-binary "@$T/q1.der")
[ "$code" = 200 ] && ocsp_ok "$T/o1.der" && pass "and an OCSP answer to a POST" ||
	fail "OCSP POST within 2 s" "code=$code $(cat "$T/o1.der.txt" 2>/dev/null)"
code=$(timed_get o2.der "/ocsp/$Q1")
[ "$code" = 200 ] && ocsp_ok "$T/o2.der" && pass "and to a GET" || fail "OCSP GET within 2 s" "code=$code"
th=$(awk '/^Threads:/{print $2}' "/proc/$KMSD_PID/status")
[ "$th" -lt 100 ] && pass "kmsd holds the 300 connections without a thread each ($th threads)" ||
	fail "threads while 300 connections are held" "$th"
# Were they all still there while we asked?  (The deadline is 10 s from their connection.)
kill -0 "$SLOW" 2>/dev/null && kill -0 "$IDLE" 2>/dev/null && pass "(the held clients were still connected)" ||
	fail "held clients still connected during the checks"
wait "$IDLE"
wait "$SLOW"
check_grep "the slow clients were cut at request_timeout (none still connected after 16 s)" "^open 0$" "$T/slow.out"
check_grep "kmsd says why it closed them" "sent no whole request within 10 s" "$T/kmsd.log"

# An OCSP POST whose headers come at once and whose body trickles is cut too.
hold root "$T/body.out" -n 4 -a 1 -d 2 \
	-p "$(printf 'POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\nContent-Length: 200\r\n\r\nx')" \
	-r "$(head -c 100 /dev/zero | tr '\0' 'x')" -t 14 "tcp:127.0.0.1:$HTTP_PORT" || fail "slow POST bodies start"
wait "$HOLD_PID"
check_grep "an OCSP POST whose body trickles is cut at request_timeout" "^open 0$" "$T/body.out"

# One address gets at most max_connections_per_client.  Connections the
# clients above closed may still count for a moment on a loaded machine (the
# server has not read their end yet): try again until all 32 fit, and never
# more than 32.
one=0
for try in 1 2 3 4 5; do
	hold root "$T/one.out" -n 40 -a 1 -t 3 "tcp:127.0.0.1:$HTTP_PORT" || fail "40 connections from one address"
	wait "$HOLD_PID"
	one=$(sed -n 's/^open \([0-9]*\)$/\1/p' "$T/one.out")
	[ "${one:-0}" -ge 32 ] && break
	note "try $try: $one of 40 held, the earlier clients' connections may still count"
	sleep 1
done
[ "${one:-0}" -eq 32 ] && pass "one address holds at most 32 connections" ||
	fail "one address holds at most 32 connections" "open ${one:-?} of 40"

# OCSP POSTs: 64 KiB is answered (949 CertIDs), more is refused with 413 and malformedRequest.
# big_req N FILE: an OCSP request about N serials.
big_req() {
	args=""
	for i in $(seq 1 "$1"); do args="$args -serial $((0x1000000000000000 + i))"; done
	# shellcheck disable=SC2086
	openssl ocsp -issuer "$T/ca.pem" $args -no_nonce -reqout "$2" >/dev/null 2>&1
}
big_req 949 "$T/q64.der"
big_req 950 "$T/q65.der"
s64=$(stat -c %s "$T/q64.der")
s65=$(stat -c %s "$T/q65.der")
[ "$s64" -gt 65000 ] && [ "$s64" -le 65536 ] && [ "$s65" -gt 65536 ] && pass "requests of $s64 and $s65 bytes" ||
	fail "request sizes" "$s64 $s65"
code=$(curl -s --max-time 10 -o "$T/o64.der" -w '%{http_code}' -H 'Content-Type: application/ocsp-request' \
	--data-binary "@$T/q64.der" "$BASE/ocsp")
n=$(openssl ocsp -respin "$T/o64.der" -resp_text -noverify 2>/dev/null | grep -c "Cert Status: unknown")
[ "$code" = 200 ] && [ "$n" = 949 ] && pass "a 64 KiB OCSP POST is answered (949 statuses)" || fail "64 KiB POST" "code=$code n=$n"
code=$(curl -s --max-time 10 -o "$T/o65.der" -w '%{http_code}' -H 'Content-Type: application/ocsp-request' \
	--data-binary "@$T/q65.der" "$BASE/ocsp")
st=$(openssl ocsp -respin "$T/o65.der" -resp_text -noverify 2>&1 | sed -n 's/.*Responder Error: \([a-zA-Z]*\).*/\1/p')
[ "$code" = 413 ] && [ "$st" = malformedrequest ] && pass "one byte more is refused: 413 and malformedRequest" ||
	fail "oversized POST" "code=$code st=$st"

# Long polls: at most max_longpolls (4) wait; the next is refused at once; the CRL is still served.
LP=""
for i in 1 2 3 4; do
	curl -s --max-time 25 -o "$T/lp$i.der" -w '%{http_code}' "$BASE/crl/kms-ca.crl?after=$N0" > "$T/lp$i.code" 2>&1 &
	LP="$LP $!"
	PIDS="$PIDS $!"
done
sleep 1
code=$(timed_get lp5.der "/crl/kms-ca.crl?after=$N0")
[ "$code" = 503 ] && pass "a long poll over max_longpolls is answered 503 at once" || fail "long poll over the pool refused" "code=$code"
code=$(timed_get crl2.der /crl/kms-ca.crl)
[ "$code" = 200 ] && pass "the CRL is served while the long-poll pool is full" || fail "CRL served beside long polls" "code=$code"
ctl crl --new --out "$T/new.pem" >/dev/null 2>&1 || fail "a new CRL is signed"
for p in $LP; do wait "$p"; done
ok=0
for i in 1 2 3 4; do
	[ "$(cat "$T/lp$i.code")" = 200 ] && [ "$(openssl crl -inform DER -in "$T/lp$i.der" -noout -crlnumber 2>/dev/null |
		sed -n 's/^crlNumber=//p')" != "" ] && ok=$((ok + 1))
done
[ $ok = 4 ] && pass "the parked long polls get the new CRL when it is signed" || fail "long polls answered" "$ok of 4"
done_testing
