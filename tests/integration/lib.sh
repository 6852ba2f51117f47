# lib.sh - shared helpers for the integration tests (sourced, POSIX sh + bash).
#
# Each test makes its own temp directory, starts kmsd in the foreground on
# sockets and ports inside or chosen for it, drives it with kmsctl and real
# clients (openssl, gpgsm, Postfix), and stops exactly the processes it
# started, by pid.  Output is TAP-like: "ok N - what" / "not ok N - what".
# Exit status: 0 all passed, 1 a check failed, 77 skipped.

set -u

: "${top_builddir:=$(pwd)}"
: "${srcdir:=.}"
KMSD="${KMSD:-$top_builddir/kmsd/kmsd}"
KMSCTL="${KMSCTL:-$top_builddir/ctl/kmsctl}"
CTLRAW="${CTLRAW:-$top_builddir/tests/integration/ctlraw}"
DATA="${srcdir}/tests/data"

T=""
KMSD_PID=""
PIDS=""
N=0
FAILED=0

note() { printf '# %s\n' "$*"; }

pass() {
	N=$((N + 1))
	printf 'ok %d - %s\n' "$N" "$1"
}

fail() {
	N=$((N + 1))
	FAILED=$((FAILED + 1))
	printf 'not ok %d - %s\n' "$N" "$1"
	[ -n "${2:-}" ] && printf '#   %s\n' "$2"
	return 0
}

# check "what" command...: passes when the command succeeds.
check() {
	what=$1
	shift
	if out=$("$@" 2>&1); then
		pass "$what"
	else
		fail "$what" "$(printf '%s' "$out" | tail -5 | tr '\n' ' ')"
	fi
}

# check_fails "what" STATUS PATTERN command...: passes when the command
# exits with STATUS (not 0) and its output (stdout and stderr together)
# matches PATTERN (extended regex, case-sensitive).  A failure for another
# reason does not pass: another exit status, other text, a usage error the
# pattern does not expect, or an empty argument (an id the test never got).
check_fails() {
	what=$1
	want=$2
	pattern=$3
	shift 3
	case $want in
	'' | *[!0-9]* | 0)
		fail "$what" "check_fails: expected exit status must be a number other than 0, not '$want'"
		return 0
		;;
	esac
	if [ -z "$pattern" ]; then
		fail "$what" "check_fails: no expected error text"
		return 0
	fi
	for a in "$@"; do
		if [ -z "$a" ]; then
			fail "$what" "check_fails: an argument is empty: $*"
			return 0
		fi
	done
	out=$("$@" 2>&1)
	st=$?
	tail3=$(printf '%s' "$out" | tail -3 | tr '\n' ' ')
	if [ "$st" -eq 0 ]; then
		fail "$what" "unexpectedly succeeded: $tail3"
	elif [ "$st" -ne "$want" ]; then
		fail "$what" "exit status $st, expected $want: $tail3"
	elif printf '%s' "$out" | grep -Eq -- '--help for usage|^usage:' &&
		! printf '%s' "$pattern" | grep -q usage; then
		fail "$what" "a usage error, not the failure meant: $tail3"
	elif ! printf '%s' "$out" | grep -Eq -- "$pattern"; then
		fail "$what" "exit status $st but no /$pattern/ in: $tail3"
	else
		pass "$what"
	fi
}

# check_grep "what" PATTERN FILE: FILE contains PATTERN (extended regex).
check_grep() {
	if grep -Eq -- "$2" "$3" 2>/dev/null; then
		pass "$1"
	else
		fail "$1" "no /$2/ in $3: $(tail -3 "$3" 2>/dev/null | tr '\n' ' ')"
	fi
}

check_nogrep() {
	if grep -Eq -- "$2" "$3" 2>/dev/null; then
		fail "$1" "/$2/ found in $3"
	else
		pass "$1"
	fi
}

skip_all() {
	printf '1..0 # SKIP %s\n' "$*"
	exit 77
}

need_root() {
	[ "$(id -u)" = 0 ] || skip_all "needs root ($*)"
}

need_cmd() {
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip_all "needs $c"
	done
}

# A TCP port on 127.0.0.1 that nothing listens on, below the kernel's
# ephemeral range (32768 and up), where client connections of parallel
# tests could take it between our check and the server's bind.
free_port() {
	while :; do
		p=$(( ( $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 20000 ) + 12000 ))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

cleanup() {
	pf_cleanup
	for p in $PIDS; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in $PIDS; do
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$p" 2>/dev/null
	done
	accounts_remove
	if [ -n "$T" ] && [ -d "$T" ]; then
		if [ "$FAILED" -gt 0 ] && [ -n "${KMS_KEEP_FAILED:-}" ]; then
			note "kept $T"
		else
			rm -rf "$T"
		fi
	fi
}

setup() {
	T=$(mktemp -d "${TMPDIR:-/tmp}/kmsit.XXXXXX")
	# Postfix (and nobody) must be able to traverse it.
	chmod 755 "$T"
	trap cleanup EXIT
	trap 'exit 1' INT TERM HUP PIPE
	HTTP_PORT=$(free_port)
	STATE="$T/state"
	SOCK="$STATE/control.sock"
	CONF="$T/kmsd.conf"
}

# write_conf [extra lines...]: a config for this test's kmsd.
write_conf() {
	{
		printf '[kmsd]\nstate_dir = %s\nauthserv_id = mx.test.example\nlog_level = debug\n' "$STATE"
		printf 'milter_socket_mode = 0666\n'
		printf '[ca]\nuser_key = %s\npkcs12_iterations = 2048\n' "${USER_KEY:-ec:p256}"
		printf '[http]\nlisten = 127.0.0.1:%s\n' "$HTTP_PORT"
		printf '[escrow]\nkrk_key = rsa:3072\n'
		for l in "$@"; do
			printf '%s\n' "$l"
		done
	} > "$CONF"
}

# start_kmsd [CONF]: start kmsd in the foreground and wait until it answers.
start_kmsd() {
	conf=${1:-$CONF}
	"$KMSD" -f -c "$conf" >> "$T/kmsd.log" 2>&1 &
	KMSD_PID=$!
	PIDS="$PIDS $KMSD_PID"
	for _ in $(seq 1 100); do
		if "$KMSCTL" -s "$SOCK" status >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$KMSD_PID" 2>/dev/null; then
			note "kmsd exited during start-up:"
			sed 's/^/#   /' "$T/kmsd.log" | tail -20
			return 1
		fi
		sleep 0.1
	done
	note "kmsd did not answer within 10 s"
	return 1
}

stop_kmsd() {
	[ -n "$KMSD_PID" ] || return 0
	kill -TERM "$KMSD_PID" 2>/dev/null
	wait "$KMSD_PID" 2>/dev/null
	rc=$?
	PIDS=$(printf '%s' "$PIDS" | sed "s/ $KMSD_PID\b//")
	KMSD_PID=""
	return $rc
}

ctl() {
	"$KMSCTL" -s "$SOCK" "$@"
}

# Local accounts for tests that need real, distinct users.  Their names
# carry this test's pid (tests run in parallel) and stay within 8
# characters (ps prints longer names as numbers); cleanup() removes every
# account and group made here, whatever way the test ends.
ACCT="k$(($$ % 100000))"
GROUP="${ACCT}g"
OFFICERS="${ACCT}o1 ${ACCT}o2 ${ACCT}o3"
COMPLIANCE="${ACCT}c"
ACCOUNTS_MADE=""
GROUPS_MADE=""

# make_group NAME, make_user NAME [GROUP]: create it (if absent) and remember it.
make_group() {
	getent group "$1" >/dev/null && return 0
	groupadd -r "$1" && GROUPS_MADE="$GROUPS_MADE $1"
}
make_user() {
	id "$1" >/dev/null 2>&1 && return 0
	if [ -n "${2:-}" ]; then
		useradd -r -M -d /nonexistent -s /usr/sbin/nologin -G "$2" "$1"
	else
		useradd -r -M -d /nonexistent -s /usr/sbin/nologin "$1"
	fi && ACCOUNTS_MADE="$ACCOUNTS_MADE $1"
}
accounts_remove() {
	for u in $ACCOUNTS_MADE; do
		userdel "$u" 2>/dev/null || note "could not remove test account $u"
	done
	for g in $GROUPS_MADE; do
		groupdel "$g" 2>/dev/null || note "could not remove test group $g"
	done
	ACCOUNTS_MADE=""
	GROUPS_MADE=""
}

# officers_setup: officers ${ACCT}o1..3 and compliance officer ${ACCT}c in
# group $GROUP, which owns kmsd's socket in these tests.
officers_setup() {
	make_group "$GROUP"
	for u in $OFFICERS $COMPLIANCE; do
		make_user "$u" "$GROUP"
	done
}

# as USER kmsctl-args...: run kmsctl as a local user in kmsd's group.
as() {
	who=$1
	shift
	setpriv --reuid="$who" --regid="$GROUP" --init-groups "$KMSCTL" -s "$SOCK" "$@"
}

done_testing() {
	printf '1..%d\n' "$N"
	[ "$FAILED" -eq 0 ] || { note "$FAILED check(s) failed; kmsd log tail:"; tail -30 "$T/kmsd.log" 2>/dev/null | sed 's/^/#   /'; exit 1; }
	exit 0
}

# ------------------------------------------------------------ Postfix

# pf_setup NAME SMTP_PORT SINK_PORT MILTER: a private Postfix instance in
# $T/NAME (config, queue, data, log) listening on 127.0.0.1:SMTP_PORT,
# relaying everything to the sink, with MILTER (e.g. unix:/path) attached
# to smtpd and to local submission, default action tempfail.  It never
# reads or writes /etc/postfix/main.cf.
pf_setup() {
	name=$1 port=$2 sink=$3 milter=$4
	d="$T/$name"
	mkdir -p "$d/etc" "$d/queue" "$d/data"
	chown postfix "$d/data"
	cat > "$d/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $d/maillog
maillog_file_prefixes = $d
myhostname = mta.test.example
mydomain = test.example
myorigin = test.example
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$sink
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
# kmsd checks mail on the way in; tempfail (the MTA keeps the mail) when
# kmsd cannot answer.
smtpd_milters = $milter
non_smtpd_milters = $milter
milter_default_action = tempfail
milter_connect_timeout = 10s
milter_command_timeout = 30s
milter_content_timeout = 60s
# Retry quickly in tests.
minimal_backoff_time = 1s
maximal_backoff_time = 5s
queue_run_delay = 1s
EOF
	cat > "$d/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

PF_STARTED=""
pf_start() {
	postfix -c "$T/$1/etc" start >> "$T/$1/start.log" 2>&1 || { sed 's/^/#   /' "$T/$1/start.log"; return 1; }
	PF_STARTED="$PF_STARTED $1"
}

pf_stop() {
	postfix -c "$T/$1/etc" stop >/dev/null 2>&1
	PF_STARTED=$(printf '%s' "$PF_STARTED" | sed "s/ $1\b//")
}

pf_cleanup() {
	for n in $PF_STARTED; do
		postfix -c "$T/$n/etc" stop >/dev/null 2>&1
	done
}

# sink_start PORT DIR: smtp-sink on 127.0.0.1:PORT writing each message to DIR.
sink_start() {
	mkdir -p "$2"
	chmod 777 "$2"
	smtp-sink -u nobody -d "$2/%Y%m%d%H%M%S." "127.0.0.1:$1" 100 > "$T/sink.log" 2>&1 &
	PIDS="$PIDS $!"
	for _ in $(seq 1 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# wait_files DIR N [SECONDS]: until DIR holds at least N files, none of
# them still growing (smtp-sink writes while the message arrives).
wait_files() {
	for _ in $(seq 1 $(( ${3:-20} * 10 ))); do
		if [ "$(ls "$1" 2>/dev/null | wc -l)" -ge "$2" ]; then
			a=$(du -sb "$1" 2>/dev/null | cut -f1)
			sleep 0.2
			[ "$a" = "$(du -sb "$1" 2>/dev/null | cut -f1)" ] && return 0
		fi
		sleep 0.1
	done
	return 1
}

# gpgsm_signing_fpr EMAIL: the fingerprint of EMAIL's signing certificate that
# has its secret key in $GNUPGHOME.  gpgsm -u EMAIL may take the encryption
# certificate (same subject, same notBefore) and then refuses to sign.
gpgsm_signing_fpr() {
	gpgsm --with-colons --list-secret-keys "$1" 2>/dev/null |
		awk -F: '$1 == "crs" || $1 == "crt" { s = ($12 ~ /s/) } $1 == "fpr" && s { print $10; exit }'
}
