#!/bin/bash
# test_partner_delta.sh - the running kmsd follows delta CRLs (RFC 5280
# 5.2.4): the partner's base CRL names its delta in a Freshest CRL
# extension, both served by a local HTTP server; through miltertest:
# - a serial revoked only in the delta is revoked, removeFromCRL in the
#   delta takes a certificateHold of the base off, the base's own entries
#   stay; crl list-external shows the delta and its base;
# - a delta whose base is newer than the base we have is not used (and
#   says why in crl list-external and the log);
# - a newer base replaces an older delta.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_cmd openssl python3 miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"

WEB_PORT=$(free_port)
URL="http://127.0.0.1:$WEB_PORT"
P="$T/pki"
W="$T/www"
mkdir -p "$W"
pki_make "$P" "$URL" || { fail "the test PKI is made"; done_testing; }
FRESH="freshestCRL = URI:$URL/issuing-delta.crl"
# Alice (4096) on hold and erin (4098) revoked in base 10; the delta takes alice off hold and revokes bob (4097).
pki_crl "$P" issuing "$W/issuing.crl" -n 10 -r 4096,certificateHold -r 4098,keyCompromise -x "$FRESH"
pki_crl "$P" issuing "$W/issuing-delta.crl" -n 11 -d 10 -r 4096,removeFromCRL -r 4097,keyCompromise
pki_crl "$P" root "$W/root.crl" -n 1
python3 -m http.server --bind 127.0.0.1 --directory "$W" "$WEB_PORT" > "$T/web.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break; sleep 0.1; done

# fetched WHAT: the first message (erin's) makes kmsd fetch base, delta and root CRL; wait for all three.
fetched() {
	: > "$T/kmsd.log"
	start_kmsd || { fail "kmsd starts ($1)"; done_testing; }
	miltertest -D sock="unix:$STATE/milter.sock" -D data="$P" -D dir="$MT" -D msg=erin.eml -D expect=unknown \
		-s "$MT/partner.lua" > /dev/null 2>&1
	if wait_log "CRL $URL/issuing.crl: taken" && wait_log "CRL $URL/issuing-delta.crl: taken" &&
	    wait_log "CRL $URL/root.crl: taken"; then
		pass "$1: base CRL, the delta its Freshest CRL names, and the root's CRL are fetched"
	else
		fail "$1: CRLs fetched" "$(tail -5 "$T/kmsd.log" | tr '\n' ' ')"
	fi
	# The index is rebuilt after the last one taken.
	sleep 1
}

write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = $P/root.crt" \
	"[crl]" "fetch_timeout = 2" "fetch_max_size = 64K" "[policy]" "on_revocation_unknown = accept"

# ------------------------------------------------- a delta on its base
fetched "delta on base"
mt "bob, revoked only in the delta, is revoked" bob.eml revoked
mt "alice, on hold in the base, is off hold by the delta's removeFromCRL" alice.eml pass
mt "erin, revoked in the base, stays revoked" erin.eml revoked
ctl crl list-external > "$T/list.out" 2>&1
check_grep "crl list-external shows the delta CRL's URL" "^$URL/issuing-delta.crl$" "$T/list.out"
check_grep "... as a delta on base 10" "delta CRL on base CRL 10" "$T/list.out"
check_grep "... with its number" "entries: 2 +number: 11" "$T/list.out"
check_nogrep "... and no error" "not used" "$T/list.out"
stop_kmsd

# ------------------------------------------------- a delta on a base newer than ours
rm -rf "$STATE/crl-dp"
pki_crl "$P" issuing "$W/issuing-delta.crl" -n 13 -d 12 -r 4097,keyCompromise
fetched "delta on a newer base"
mt "a delta needing base 12 on base 10 is not used: bob passes" bob.eml pass
mt "... and alice stays on hold (base alone)" alice.eml revoked
wait_log "CRL $URL/issuing-delta.crl: not used: delta CRL needs base CRL 12 or later; the base CRL .* is 10" &&
	pass "the log says why the delta is not used" || fail "the log names the base the delta needs"
ctl crl list-external > "$T/list2.out" 2>&1
check_grep "crl list-external says why the delta is not used" \
	"last error: not used: delta CRL needs base CRL 12 or later" "$T/list2.out"
stop_kmsd

# ------------------------------------------------- a newer base replaces an older delta
rm -rf "$STATE/crl-dp"
pki_crl "$P" issuing "$W/issuing.crl" -n 12 -r 4098,keyCompromise -x "$FRESH"
pki_crl "$P" issuing "$W/issuing-delta.crl" -n 11 -d 10 -r 4097,keyCompromise
fetched "an older delta"
mt "a delta older than the base is not used: bob passes" bob.eml pass
mt "... and the newer base's alice (no longer on hold) passes" alice.eml pass
ctl crl list-external > "$T/list3.out" 2>&1
check_grep "crl list-external says the base replaces the delta" "last error: not used: delta CRL 11 is not newer" \
	"$T/list3.out"
stop_kmsd
done_testing
