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
# large.lua and hup.lua run against a kmsd of their own that trusts a
# throwaway CA made here (mk_big): 100 KB and 1 MB signed messages and a
# 10 MB attachment (max_message_size = 16M), then a reload without that CA.
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
# mk_big DIR: a throwaway CA, a revoked signer (lara) and a good one (tom),
# its CRL, signed messages of about 100 KB and 1 MB, and an unsigned one
# with a 10 MB attachment.
mk_big() {
	d=$1
	mkdir -p "$d/out"
	( cd "$d" || exit 1
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 30 \
	    -subj "/O=KMS Large Test/CN=KMS Large Test CA" -addext "basicConstraints=critical,CA:TRUE" \
	    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || exit 1
	for u in lara:4201 tom:4202; do
		n=${u%%:*}
		printf 'subjectAltName=email:%s@example.org\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=emailProtection\n' "$n" > "$n.ext"
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$n.key" -out "$n.csr" \
		    -subj "/CN=$n" 2>/dev/null &&
		openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca.key -set_serial "0x${u#*:}" -days 20 \
		    -extfile "$n.ext" -out "$n.pem" 2>/dev/null || exit 1
	done
	printf 'R\t%s\t%s\t4201\tunknown\t/CN=lara\n' "$(date -u -d '+20 days' +%y%m%d%H%M%SZ)" \
	    "$(date -u -d '-1 hour' +%y%m%d%H%M%SZ)" > index.txt
	echo 01 > crlnumber
	printf '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n' > ca.cnf
	openssl ca -gencrl -config ca.cnf -keyfile ca.key -cert ca.pem -out crl.pem 2>/dev/null || exit 1
	# sign NAME SIGNER KB: a text/plain part of about KB KB signed by SIGNER.
	sign() {
		awk -v n="$(( $3 * 1024 ))" 'BEGIN {
			printf "Content-Type: text/plain; charset=us-ascii\n\n"
			w = "quarterly numbers contract draft meeting invoice budget review   "
			for (s = 0; s < n; s += 73) { l = ""; while (length(l) < 72) l = l substr(w, (s / 7 + length(l)) % length(w) + 1, 1); print l }
			printf "trailing space  \nlast line without end"
		}' > "$1.txt"
		openssl smime -sign -in "$1.txt" -signer "$2.pem" -inkey "$2.key" -from "$2@example.org" \
		    -to rcpt@example.net -subject "large $1" -out "$1.eml" 2>/dev/null
	}
	sign lara-100k lara 100 && sign lara-1m lara 1024 && sign tom-1m tom 1024 && sign tom-5k tom 5 || exit 1
	{
		printf 'From: tom@example.org\nTo: rcpt@example.net\nSubject: a 10 MB attachment\nMIME-Version: 1.0\n'
		printf 'Content-Type: multipart/mixed; boundary="att"\n\n--att\nContent-Type: text/plain\n\nsee attached\n'
		printf -- '--att\nContent-Type: application/octet-stream; name="data.bin"\nContent-Transfer-Encoding: base64\n\n'
		head -c 7800000 /dev/urandom | base64 -w 76
		printf -- '--att--\n'
	} > plain-10m.eml
	) || return 1
}

# Large mail, and a reload that drops a trust anchor: a kmsd of its own
# that trusts only the throwaway CA of mk_big, with its CRL.
BIG="$T/big"
if mk_big "$BIG"; then
	if [ "$KIND" = inet ]; then
		MSOCK="inet:$(free_port)@127.0.0.1"
	else
		MSOCK="unix:$STATE/milter.sock"
	fi
	big_conf() {
		write_conf "[kmsd]" "milter_socket = $MSOCK" \
		    "[milter]" "trust_file = $1" "max_memory = 64K" "max_message_size = 16M" \
		    "[crl]" "external = $BIG/crl.pem" "external_ca = $BIG/ca.pem" \
		    "[policy]" "on_revoked = warn"
	}
	big_conf "$BIG/ca.pem"
	# What the milter must write: the same configuration, offline.
	"$KMSD" -t -c "$CONF" --trust "$BIG/ca.pem" --crl "$BIG/crl.pem" --out "$BIG/out" \
	    "$BIG/lara-100k.eml" "$BIG/lara-1m.eml" > "$T/big-t.out" 2>&1 ||
	    fail "kmsd -t --out on the large messages" "$(tail -3 "$T/big-t.out")"
	n0=$(grep -Ec "revocation index rebuilt: [1-9]" "$T/kmsd.log" 2>/dev/null || :)
	if start_kmsd; then
		for _ in $(seq 1 50); do
			[ "$(grep -Ec "revocation index rebuilt: [1-9]" "$T/kmsd.log" 2>/dev/null || :)" -gt "${n0:-0}" ] && break
			sleep 0.1
		done
		if [ "$KIND" = inet ]; then
			mt_run "1 MB signed and 10 MB unsigned, bodies untouched ($KIND)" large.lua -D big="$BIG" -D wrap=0
		else
			mt_run "100 KB and 1 MB signed, 10 MB unsigned: bodies byte for byte ($KIND)" large.lua -D big="$BIG"
		fi
		mt_run "tom passes while his CA is trusted ($KIND)" hup.lua -D big="$BIG" -D want=pass
		# The same configuration, with another CA in place of tom's.
		big_conf "$SMIME/other-ca.pem"
		n0=$(grep -c "configuration reloaded" "$T/kmsd.log")
		kill -HUP "$KMSD_PID"
		for _ in $(seq 1 100); do
			[ "$(grep -c "configuration reloaded" "$T/kmsd.log")" -gt "$n0" ] && break
			sleep 0.1
		done
		mt_run "after SIGHUP without his CA, the next message is untrusted ($KIND)" hup.lua -D big="$BIG" -D want=untrusted
		stop_kmsd
	else
		fail "kmsd starts with the large-mail configuration"
	fi
else
	fail "make the large test messages"
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
