#!/bin/bash
# test_sendmail.sh - the milter through a real Sendmail from Debian's
# packages, unpacked (never installed: that would remove Postfix) and run
# as a private daemon on loopback with kmsd on an inet milter socket:
# a revoked sender's mail arrives with the same warning as through
# Postfix, good mail passes, and with kmsd down Sendmail tempfails.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "runs Sendmail as a daemon"
need_cmd apt-get dpkg m4 unshare smtp-sink swaks openssl
setup

# The packages, downloaded once per build tree.
DEBS="${top_builddir}/tests/sendmail-debs"
if ! ls "$DEBS"/sendmail-bin_*.deb >/dev/null 2>&1; then
	mkdir -p "$DEBS"
	(cd "$DEBS" && apt-get download sendmail-bin sendmail-base sendmail-cf >/dev/null 2>&1) || \
		skip_all "cannot download the sendmail packages"
fi
SM="$T/sendmail"
mkdir -p "$SM/root" "$SM/mq" "$SM/clq"
chmod 700 "$SM/mq"
for f in "$DEBS"/*.deb; do
	dpkg -x "$f" "$SM/root"
done
SENDMAIL="$SM/root/usr/libexec/sendmail/sendmail"
chmod g-s "$SENDMAIL"      # setgid binaries ignore LD_* and drop privileges oddly
[ -x "$SENDMAIL" ] && pass "sendmail unpacked from Debian's packages" || { fail "sendmail unpacked"; done_testing; }

MPORT=$(free_port)
write_conf "[kmsd]" "milter_socket = inet:$MPORT@127.0.0.1"
start_kmsd || { fail "kmsd starts with an inet milter socket"; done_testing; }
ctl init --org "Sendmail Test" --share-dir "$T/shares" >/dev/null 2>&1
printf 'smpassword\n' > "$T/pw"
ctl enroll alice@example.org --password-file "$T/pw" --out "$T/alice.p12" >/dev/null 2>&1
openssl pkcs12 -in "$T/alice.p12" -passin "file:$T/pw" -nodes 2>/dev/null |
	awk '/friendlyName: .*\(signing\)/{p=1} /friendlyName: .*\(encryption\)/{p=0} p' > "$T/sign.pem"
sign() {
	printf 'Content-Type: text/plain\r\n\r\n%s\r\n' "$2" > "$T/body.txt"
	openssl smime -sign -in "$T/body.txt" -signer "$T/sign.pem" -inkey "$T/sign.pem" \
		-from alice@example.org -to bob@remote.example -subject "$2" -out "$1" 2>/dev/null
}

SINK_PORT=$(free_port)
SMTP_PORT=$(free_port)
sink_start "$SINK_PORT" "$T/sink" || { fail "smtp-sink starts"; done_testing; }
cat > "$SM/test.mc" <<EOF
divert(-1)
divert(0)dnl
VERSIONID(\`smime-kms test')dnl
OSTYPE(\`linux')dnl
define(\`QUEUE_DIR', \`$SM/mq')dnl
define(\`MSP_QUEUE_DIR', \`$SM/clq')dnl
define(\`confPID_FILE', \`$SM/sendmail.pid')dnl
define(\`STATUS_FILE', \`$SM/sendmail.st')dnl
define(\`ALIAS_FILE', \`')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`SMART_HOST', \`[127.0.0.1]')dnl
define(\`RELAY_MAILER_ARGS', \`TCP \$h $SINK_PORT')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $SINK_PORT')dnl
FEATURE(\`no_default_msa')dnl
FEATURE(\`accept_unresolvable_domains')dnl
DAEMON_OPTIONS(\`Port=$SMTP_PORT, Addr=127.0.0.1, Name=MTA')dnl
INPUT_MAIL_FILTER(\`kms', \`S=inet:$MPORT@127.0.0.1, F=T, T=S:10s;R:10s;E:1m')dnl
MAILER(\`smtp')dnl
EOF
m4 -D_CF_DIR_="$SM/root/usr/share/sendmail/cf/" "$SM/root/usr/share/sendmail/cf/m4/cf.m4" "$SM/test.mc" > "$SM/test.cf" 2> "$SM/m4.err"
check_grep "the .cf has the kms input filter" "^Xkms, S=inet:$MPORT@127.0.0.1, F=T" "$SM/test.cf"
# Sendmail sleeps 60 s at start when the host name has no dot: give it one in its own UTS namespace.
unshare --uts sh -c "hostname mta.test.example && exec '$SENDMAIL' -bD -C '$SM/test.cf'" > "$SM/sendmail.log" 2>&1 &
SMPID=$!
PIDS="$PIDS $SMPID"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null && pass "sendmail listens on 127.0.0.1:$SMTP_PORT" || { fail "sendmail starts" "$(cat "$SM/sendmail.log")"; done_testing; }

send() {
	swaks --server "127.0.0.1:$SMTP_PORT" --from alice@example.org --to bob@remote.example --data "@$1" > "$1.smtp" 2>&1
}
n=0
deliver() {
	send "$1"
	n=$((n + 1))
	got=/nonexistent
	wait_files "$T/sink" "$n" 30 || return 1
	got=$(ls -t "$T/sink"/* | head -1)
}

sign "$T/good.eml" "all good"
deliver "$T/good.eml"
check_grep "through Sendmail, good signed mail arrives with smime=pass" "smime=pass" "$got"
sign "$T/revoked.eml" "after revocation"
ctl revoke alice@example.org --reason affiliationChanged >/dev/null 2>&1
deliver "$T/revoked.eml"
check_grep "a revoked sender's subject is tagged" "^Subject: \[REVOKED SENDER\] after revocation" "$got"
check_grep "X-KMS-Warning gives date and reason" "^X-KMS-Warning: .*revoked on .*affiliationChanged" "$got"
check_grep "the notice is there" "the certificate that signed this message has been revoked" "$got"
check_grep "the original signed entity is kept" "Content-Type: multipart/signed" "$got"

stop_kmsd
send "$T/good.eml"
check_grep "with kmsd stopped Sendmail tempfails" "<\*\* +4[0-9][0-9][ -]4\." "$T/good.eml.smtp"
kill -TERM "$SMPID" 2>/dev/null
done_testing
