#!/bin/bash
# test_duties.sh - no role reaches past its room, with real local users:
# paths a client names for share files and passphrases (missing, someone
# else's, group- or world-writable, through a symbolic link, passphrase
# files that are links to /etc/shadow) are refused and nothing is created
# outside them; the store, its WAL and SHM are 0600 whatever the umask,
# and kmsd refuses to start on a store or state directory open to other
# users, saying how to fix it; the requester of a recovery or a rotation
# never approves it, whatever roles they hold; recover list shows the
# officers what they approve.
. "${srcdir:-.}/tests/integration/lib.sh"
need_root "creates local accounts"
need_cmd openssl sqlite3 setpriv useradd userdel groupadd stat timeout
setup

officers_setup
# Accounts of this test only (removed at the end with the others): a
# non-root admin, and a user who is both compliance officer and key-recovery
# officer.
make_user "${ACCT}a" "$GROUP"
make_user "${ACCT}b" "$GROUP"

# rawas USER JSON: one request as USER, bypassing kmsctl's own checks.
rawas() {
	printf '%s\n' "$2" | setpriv --reuid="$1" --regid="$GROUP" --init-groups "$CTLRAW" "$SOCK"
}

USER_KEY=ec:p256
write_conf "[kmsd]" "group = $GROUP" \
	"[roles]" "admin = root, ${ACCT}a" "officer = ${ACCT}o1, ${ACCT}o2, ${ACCT}o3, ${ACCT}b, root" \
	"compliance = ${ACCT}c, ${ACCT}b" "auditor = root"
umask 022       # kmsd must not depend on the umask it is started with
start_kmsd || { fail "kmsd starts"; done_testing; }
chgrp "$GROUP" "$STATE" && chmod 0750 "$STATE"

# ------------------------------------------------ paths named by a client
A="$T/adm"      # the admin's own tree
mkdir -p "$A" && chown ${ACCT}a "$A" && chmod 0700 "$A"
# What is in /etc, by name; the account files change under other tests
# running at the same time (useradd), so they are left out.
etc_names() {
	ls -1A /etc | grep -Ev '^(passwd|group|shadow|gshadow|subuid|subgid)([-+]|\.lock|\.[0-9]+)?$|^\.pwd\.lock$'
}
etc_names > "$T/etc.before"

init_as_adm() {   # init_as_adm OUTFILE SHARE_DIR [PASS_DIR]
	if [ -n "${3:-}" ]; then
		rawas ${ACCT}a "{\"cmd\":\"init\",\"args\":{\"org\":\"Duties\",\"shares\":3,\"threshold\":2,\"share_dir\":\"$2\",\"share_passphrase_dir\":\"$3\"}}" > "$1" 2>&1
	else
		rawas ${ACCT}a "{\"cmd\":\"init\",\"args\":{\"org\":\"Duties\",\"shares\":3,\"threshold\":2,\"share_dir\":\"$2\"}}" > "$1" 2>&1
	fi
}

init_as_adm "$T/p1.out" /etc/kmsd-duties-test
check_grep "a share directory that does not exist is refused" '"ok":false.*must exist' "$T/p1.out"
[ ! -e /etc/kmsd-duties-test ] && pass "and kmsd created nothing under /etc" || { fail "nothing created under /etc"; rm -rf /etc/kmsd-duties-test; }

init_as_adm "$T/p2.out" /etc
check_grep "a non-root admin cannot have shares written into /etc (root's directory)" '"ok":false.*belongs to uid 0' "$T/p2.out"
etc_names > "$T/etc.after"
cmp -s "$T/etc.before" "$T/etc.after" && pass "/etc is unchanged" || fail "/etc is unchanged" "$(diff "$T/etc.before" "$T/etc.after")"

mkdir -m 0700 "$A/other" && chown ${ACCT}o1 "$A/other"
init_as_adm "$T/p3.out" "$A/other"
check_grep "another user's directory is refused" '"ok":false.*belongs to uid' "$T/p3.out"

mkdir -m 0700 "$A/ww" && chown ${ACCT}a "$A/ww" && chmod 0777 "$A/ww"
init_as_adm "$T/p4.out" "$A/ww"
check_grep "a world-writable directory is refused" '"ok":false.*writable by every user' "$T/p4.out"
chmod 0770 "$A/ww"
init_as_adm "$T/p5.out" "$A/ww"
check_grep "a group-writable directory is refused" '"ok":false.*writable by its group' "$T/p5.out"

mkdir -m 0700 "$A/real" && chown ${ACCT}a "$A/real"
ln -s "$A/real" "$A/link"
init_as_adm "$T/p6.out" "$A/link"
check_grep "a share directory named through a symbolic link is refused" '"ok":false.*symbolic link' "$T/p6.out"
mkdir -m 0700 "$A/real/sub" && chown ${ACCT}a "$A/real/sub"
init_as_adm "$T/p7.out" "$A/link/sub"
check_grep "so is a link anywhere in the path" '"ok":false.*\\"link\\" is a symbolic link' "$T/p7.out"
[ -z "$(ls -A "$A/real/sub")" ] && pass "and nothing was written through the link" || fail "nothing written through the link"

# Passphrase files that are links to /etc/shadow.
mkdir -m 0700 "$A/shares" "$A/pass" && chown ${ACCT}a "$A/shares" "$A/pass"
for n in 1 2 3; do ln -s /etc/shadow "$A/pass/share-$n.passphrase"; done
chown -h ${ACCT}a "$A"/pass/*
init_as_adm "$T/p8.out" "$A/shares" "$A/pass"
check_grep "passphrase files that are symbolic links (to /etc/shadow) are refused" '"ok":false.*symbolic link' "$T/p8.out"
check_nogrep "and nothing of /etc/shadow shows in the reply" "root:" "$T/p8.out"
[ -z "$(ls -A "$A/shares")" ] && pass "no share file is left behind" || fail "no share file left" "$(ls "$A/shares")"
ctl --json status > "$T/st.out" 2>&1
check_grep "the CA was not made by a refused init" '"initialized": *false' "$T/st.out"

# A passphrase file of someone else's is refused too.
rm -f "$A"/pass/*
for n in 1 2 3; do printf 'officer %s passphrase\n' "$n" > "$A/pass/share-$n.passphrase"; done
chown ${ACCT}a "$A"/pass/* && chmod 0600 "$A"/pass/*
chown ${ACCT}o1 "$A/pass/share-2.passphrase"
init_as_adm "$T/p9.out" "$A/shares" "$A/pass"
check_grep "a passphrase file the requester does not own is refused" '"ok":false.*not to the requester' "$T/p9.out"
chown ${ACCT}a "$A/pass/share-2.passphrase"

# The admin's own directories: init works, the files are theirs, 0600.
init_as_adm "$T/p10.out" "$A/shares" "$A/pass"
check_grep "init with the admin's own directories works" '"ok":true' "$T/p10.out"
n=0; bad=0
for f in "$A"/shares/*-share-*; do
	n=$((n + 1))
	[ "$(stat -c '%U %a' "$f")" = "${ACCT}a 600" ] || bad=1
done
[ $n = 3 ] && [ $bad = 0 ] && pass "three share files, owned by the admin, mode 0600" || \
	fail "share files owned by the admin, 0600" "$(ls -l "$A/shares")"
check_grep "they are encrypted under the admin's passphrases" "^Encryption: scrypt" "$(ls "$A"/shares/*-share-1-of-3.txt)"

# ---------------------------------------------------------- file modes
for f in kms.db kms.db-wal kms.db-shm; do
	m=$(stat -c %a "$STATE/$f" 2>/dev/null)
	[ "$m" = 600 ] && pass "$f is 0600 although kmsd started under umask 022" || fail "$f is 0600" "mode $m"
done
stop_kmsd
chmod 0644 "$STATE/kms.db"
timeout 30 "$KMSD" -f -c "$CONF" > "$T/refused.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "kmsd refuses to start on a store readable by others" || fail "refuses a readable store" "rc=$rc"
check_grep "and says how to fix it" "kms.db is open to other users \(mode 0644\).*chmod 600" "$T/refused.out"
chmod 0600 "$STATE/kms.db"
chmod 0755 "$STATE"
timeout 30 "$KMSD" -f -c "$CONF" > "$T/refused2.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "kmsd refuses to start in a state directory others can read" || fail "refuses an open state dir" "rc=$rc"
check_grep "and says how to fix it" "is open to other users \(mode 0755\).*chmod g-w,o-rwx" "$T/refused2.out"
chmod 0750 "$STATE"
start_kmsd || { fail "kmsd starts again once fixed"; done_testing; }

# ------------------------------------------------- separation of duties
for n in 1 2 3; do
	install -m 0600 -o "${ACCT}o$n" "$(ls "$A"/shares/*-share-$n-of-3.txt)" "$T/off$n.share"
	install -m 0600 -o "${ACCT}o$n" "$A/pass/share-$n.passphrase" "$T/off$n.pass"
done
install -m 0600 -o ${ACCT}b "$(ls "$A"/shares/*-share-1-of-3.txt)" "$T/both.share"
install -m 0600 -o ${ACCT}b "$A/pass/share-1.passphrase" "$T/both.pass"
printf 'hunter2hunter2\n' > "$T/pw"
ctl enroll alice@example.org --password-file "$T/pw" --out "$T/alice.p12" >/dev/null 2>&1 || fail "enroll alice"

as ${ACCT}b recover request alice@example.org --why "audit 42" > "$T/req.out" 2>&1
ID=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/req.out")
[ -n "$ID" ] && pass "a user with compliance and officer roles opens a request" || fail "request opened" "$(cat "$T/req.out")"
as ${ACCT}b recover approve "$ID" --share "$T/both.share" --passphrase-file "$T/both.pass" > "$T/self.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "the requester cannot approve their own request, though an officer" || fail "requester approval refused" "rc=$rc $(cat "$T/self.out")"
check_grep "and the reason names separation of duties" "separation of duties" "$T/self.out"
as ${ACCT}o1 recover list > "$T/list.out" 2>&1
check_grep "recover list shows an officer the purpose and what approving does" "approving hands the escrowed keys of alice@example.org to ${ACCT}b" "$T/list.out"
as ${ACCT}o2 recover approve "$ID" --share "$T/off2.share" --passphrase-file "$T/off2.pass" > /dev/null 2>&1
as ${ACCT}o3 recover approve "$ID" --share "$T/off3.share" --passphrase-file "$T/off3.pass" > "$T/a3.out" 2>&1
check_grep "two other officers approve it" "threshold reached" "$T/a3.out"
mkdir -m 0700 "$T/both" && chown ${ACCT}b "$T/both"
as ${ACCT}b recover fetch "$ID" --password-file "$T/pw" --out "$T/both/rec.p12" > "$T/fetch.out" 2>&1
check_grep "and the requester fetches the keys" "Recovered 1 encryption key" "$T/fetch.out"

# Rotation: root asks, root is also an officer, root may not approve.
mkdir -m 0700 "$T/newshares"
ctl escrow rotate --share-dir "$T/newshares" > "$T/rot.out" 2>&1
RID=$(sed -n 's/^Request \(R-[0-9a-f]*\) opened.*/\1/p' "$T/rot.out")
[ -n "$RID" ] && pass "root opens a KRK rotation" || fail "rotation opened" "$(cat "$T/rot.out")"
as ${ACCT}o1 recover list > "$T/list2.out" 2>&1
check_grep "recover list shows the officers where a rotation writes the new shares" \
	"approving replaces the key-recovery key; the new shares are written to $T/newshares" "$T/list2.out"
install -m 0600 "$(ls "$A"/shares/*-share-1-of-3.txt)" "$T/root.share"
ctl recover approve "$RID" --share "$T/root.share" --passphrase-file "$A/pass/share-1.passphrase" > "$T/rself.out" 2>&1
rc=$?
[ $rc = 1 ] && pass "the requester of a rotation cannot approve it (root, with the officer role)" || fail "root approval refused" "rc=$rc"
check_grep "separation of duties again" "separation of duties" "$T/rself.out"
ctl audit > "$T/audit.out" 2>&1
check_grep "the refusal is in the audit trail" "recover.approve -> forbidden" "$T/audit.out"

# escrow rotate with a directory through a link is refused at request time.
ln -s "$T/newshares" "$T/linkshares"
check_fails "escrow rotate refuses a share directory named through a link" 1 '"linkshares" is a symbolic link; name the real directory' ctl escrow rotate --share-dir "$T/linkshares"
done_testing
