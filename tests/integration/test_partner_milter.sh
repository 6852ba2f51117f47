#!/bin/bash
# test_partner_milter.sh - the running kmsd fetches the CRLs named in the
# distribution points of a partner's certificates seen in mail (the
# partner PKI of tests/integration/partner_pki.sh, its CRLs served by a
# local HTTP server), through miltertest:
# - with on_revocation_unknown = tempfail the first message from the new
#   partner CA is tempfailed while the fetch runs; once fetched, alice
#   (revoked by the intermediate's CRL) is revoked and bob passes with a
#   known status; kmsctl crl list-external shows both CRLs;
# - the fetched CRLs are kept on disk: a restarted kmsd knows them at once;
# - a distribution point that never answers, and one that serves more than
#   fetch_max_size: messages are answered at once (on_revocation_unknown =
#   accept), and the admin sees the error in crl list-external and the log.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_cmd openssl python3 miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"

WEB_PORT=$(free_port)
P="$T/pki"
W="$T/www"
mkdir -p "$W"
pki_make "$P" "http://127.0.0.1:$WEB_PORT" || { fail "the test PKI is made"; done_testing; }
pki_crl "$P" issuing "$W/issuing.crl" -n 2 -r 4096,keyCompromise
pki_crl "$P" root "$W/root.crl" -n 1
openssl crl -in "$W/issuing.crl" -outform DER -out "$W/issuing.der"
mv "$W/issuing.der" "$W/issuing.crl"
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$WEB_PORT" > "$T/web.log" 2>&1 &
WEB_PID=$!
PIDS="$PIDS $WEB_PID"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break; sleep 0.1; done

write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = $P/root.crt" \
	"[crl]" "fetch_timeout = 2" "fetch_max_size = 64K" \
	"[policy]" "on_revocation_unknown = tempfail" "revocation_unknown_wait = 10m"
start_kmsd || { fail "kmsd starts"; done_testing; }
mt "the first message from a new partner CA is tempfailed while its CRL is fetched" alice.eml tempfail
if wait_log "CRL http://127.0.0.1:$WEB_PORT/issuing.crl: taken" && wait_log "revocation index rebuilt: [1-9]"; then
	pass "kmsd fetched the intermediate's CRL from the certificate's distribution point"
else
	fail "the intermediate's CRL is fetched"
fi
mt "alice, revoked by the intermediate's CRL, is then revoked" alice.eml revoked
# alice's chain named the root's CRL too (for the intermediate): bob's first message finds both.
wait_log "CRL http://127.0.0.1:$WEB_PORT/root.crl: taken" && sleep 0.5
mt "bob passes with a known status: every CRL of his chain came with alice's message" bob.eml pass
ctl crl list-external > "$T/list.out" 2>&1
check_grep "crl list-external shows the intermediate's CRL URL" "^http://127.0.0.1:$WEB_PORT/issuing.crl$" "$T/list.out"
check_grep "... its issuer, validity and entries" "entries: 1 +number: 2" "$T/list.out"
check_grep "... and the issuer's name" "issuer: /O=Partner/CN=Partner Issuing CA" "$T/list.out"
check_grep "... with no error" "last error: none" "$T/list.out"
ctl --json crl list-external > "$T/list.json" 2>&1
check_grep "--json gives the same as JSON" '"url":"http://127.0.0.1:'"$WEB_PORT"'/root.crl"' "$T/list.json"
ls "$STATE/crl-dp/"*.crl > /dev/null 2>&1 && pass "fetched CRLs are kept on disk" || fail "CRL cache on disk"

# A restart knows the kept copies before any fetch: alice is revoked on the first message.
stop_kmsd
kill "$WEB_PID" 2>/dev/null
start_kmsd || { fail "kmsd restarts"; done_testing; }
wait_log "last good copy loaded" && pass "the kept copies are loaded at start" || fail "the kept copies are loaded at start"
mt "after a restart with the server gone, alice is revoked at once from the kept copy" alice.eml revoked
stop_kmsd

# A distribution point that never answers and one that sends too much.
cat > "$T/silent.py" <<'EOF'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
EOF
SLOW_PORT=$(free_port)
python3 "$T/silent.py" "$SLOW_PORT" &
PIDS="$PIDS $!"
pki_make "$T/slow" "http://127.0.0.1:$SLOW_PORT" || fail "the slow PKI is made"
HUGE_PORT=$(free_port)
mkdir -p "$T/hugeweb"
head -c 3000000 /dev/zero > "$T/hugeweb/issuing.crl"
cp "$T/hugeweb/issuing.crl" "$T/hugeweb/root.crl"
python3 -m http.server --bind 127.0.0.1 --directory "$T/hugeweb" "$HUGE_PORT" > "$T/huge.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$HUGE_PORT") 2>/dev/null && break; sleep 0.1; done
pki_make "$T/huge" "http://127.0.0.1:$HUGE_PORT" || fail "the huge PKI is made"
cat "$T/slow/root.crt" "$T/huge/root.crt" > "$T/roots.pem"
rm -rf "$STATE/crl-dp"
# The slow fetch may take 12 s before it gives up: all ten messages must be
# answered while it still hangs (an order of events, not a speed: a mail
# path that waited for the fetch could not answer before the time-out).
write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = $T/roots.pem" \
	"[crl]" "fetch_timeout = 12" "fetch_max_size = 64K" "[policy]" "on_revocation_unknown = accept"
start_kmsd || { fail "kmsd starts (slow and huge)"; done_testing; }
for i in 1 2 3 4 5; do
	mt "slow distribution point: message $i answered, revocation unknown" alice.eml unknown "$T/slow"
	mt "huge distribution point: message $i answered, revocation unknown" alice.eml unknown "$T/huge"
done
if grep -Eq "CRL http://127.0.0.1:$SLOW_PORT/issuing.crl: .*timed out" "$T/kmsd.log"; then
	fail "mail flows while a fetch hangs" "the fetch had timed out before the ten messages were answered"
else
	pass "mail flows while a fetch hangs: ten messages answered before the hanging fetch gave up"
fi
wait_log "CRL http://127.0.0.1:$SLOW_PORT/issuing.crl: .*timed out" && pass "the log says the slow fetch timed out" || \
	fail "log names the timeout"
wait_log "CRL http://127.0.0.1:$HUGE_PORT/issuing.crl: .*larger than 65536 bytes" && \
	pass "the log says the huge CRL was over the bound" || fail "log names the size bound"
ctl crl list-external > "$T/list2.out" 2>&1
check_grep "crl list-external shows the timeout" "last error: .*timed out" "$T/list2.out"
check_grep "crl list-external shows the size bound" "last error: .*larger than 65536 bytes" "$T/list2.out"
check_grep "crl list-external says there is no good copy yet" "no good copy yet" "$T/list2.out"
done_testing
