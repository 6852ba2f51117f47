#!/bin/sh
# run.sh - run the kmsd miltertest scripts against a kmsd started here, on
# a unix milter socket (default) or an inet one on loopback:
#
#   top_builddir=BUILD srcdir=SRC sh SRC/tests/integration/miltertest/run.sh [unix|inet]
#
# kmsd trusts the test CA of tests/data/smime and loads its CRL as an
# external CRL (dave is revoked there).  verdicts, forged, abort and
# two_messages run under the default policy; policy.lua runs once per
# on_revoked action, each with its own kmsd.  TAP-like output; exit 0 when
# every script passed, 77 when miltertest is missing.  kmsd runs with
# max_memory = 64K and max_message_size = 4M so that big.lua exercises both.
# hostile.lua runs against a kmsd that trusts the CA of tests/data/hostile.
. "${srcdir:-.}/tests/integration/lib.sh"

need_cmd miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"
SMIME="$(cd "$srcdir/tests/data/smime" && pwd)"
KIND=${1:-unix}

# mt_run what script [-D ...]: run one script, pass if miltertest exits 0.
mt_run() {
	what=$1
	script=$2
	shift 2
	if miltertest -D sock="$MSOCK" -D data="$SMIME" -D dir="$MT" "$@" -s "$MT/$script" > "$T/mt.out" 2>&1; then
		pass "$what"
	else
		fail "$what" "$(grep -v '^ok' "$T/mt.out" | tail -5 | tr '\n' ' ')"
	fi
	sed 's/^/#   /' "$T/mt.out"
}

HOSTILE="$(cd "$srcdir/tests/data/hostile" && pwd)"

# start POLICY [CADIR]: a kmsd with on_revoked = POLICY trusting CADIR's ca.pem
# and loading its crl.pem (default tests/data/smime); waits until dave's
# revocation is known.
start() {
	cadir=${2:-$SMIME}
	if [ "$KIND" = inet ]; then
		MSOCK="inet:$(free_port)@127.0.0.1"
	else
		MSOCK="unix:$STATE/milter.sock"
	fi
	write_conf "[kmsd]" "milter_socket = $MSOCK" \
	    "[milter]" "trust_file = $cadir/ca.pem" "max_memory = 64K" "max_message_size = 4M" \
	    "[crl]" "external = $cadir/crl.pem" "external_ca = $cadir/ca.pem" \
	    "[policy]" "on_revoked = $1"
	# Only this kmsd's lines count: the log holds the earlier ones too.
	seen=$(cat "$T/kmsd.log" 2>/dev/null | wc -l)
	start_kmsd || return 1
	# The external CRL is read by a thread after start: wait for the index.
	for _ in $(seq 1 50); do
		tail -n +"$((seen + 1))" "$T/kmsd.log" | grep -Eq "revocation index rebuilt: [1-9]" && break
		sleep 0.1
	done
	return 0
}

if start warn; then
	mt_run "verdicts: each verdict's header and actions ($KIND)" verdicts.lua
	mt_run "forged Authentication-Results removed ($KIND)" forged.lua
	mt_run "abort mid-message ($KIND)" abort.lua
	mt_run "several messages on one connection ($KIND)" two_messages.lua
	mt_run "3 MB message spilled and checked, 5 MB over the bound tempfailed ($KIND)" big.lua
	stop_kmsd
else
	fail "kmsd starts with the test trust anchors"
fi
if start warn "$HOSTILE"; then
	mt_run "hostile corpus: label, masking, partial, subject tag, display names ($KIND)" hostile.lua \
	    -D hostile="$HOSTILE"
	stop_kmsd
else
	fail "kmsd starts with the hostile corpus's trust anchor"
fi
# The reply text names the verdict's detail: take it from kmsd -t.
DETAIL=$("$KMSD" -t -c "$CONF" --trust "$SMIME/ca.pem" --crl "$SMIME/crl.pem" "$SMIME/dave-revoked.eml" |
    sed -n 's/^.*: smime=fail (revoked: \(.*\))$/\1/p')
for p in reject tempfail quarantine accept; do
	if start "$p"; then
		mt_run "on_revoked = $p ($KIND)" policy.lua -D policy="$p" -D detail="$DETAIL"
		stop_kmsd
	else
		fail "kmsd starts with on_revoked = $p"
	fi
done
done_testing
