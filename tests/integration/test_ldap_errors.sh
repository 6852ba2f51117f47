#!/bin/bash
# test_ldap_errors.sh - a directory that refuses or does not answer never
# stops kmsd: an entry the bind DN may not write (slapd ACL) gives a clear
# error naming the entry in publish status and the log while other users
# are still published; a server that accepts connections but never answers
# (slapd stopped with SIGSTOP) is given up after [ldap] timeout; a wrong
# bind password says "Invalid credentials".  Through all of it enrollment,
# revocation and kmsctl status keep answering.  SIGHUP applies new [ldap]
# settings without a restart: a corrected bind password file, another
# directory (which gets every entry), and no uri at all (publishing off).
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/slapd.sh"
need_slapd
need_cmd openssl base64
setup

P=$(free_port)
slapd_setup dir "$P" || { fail "slapd set up"; done_testing; }
slapd_start dir || { fail "slapd starts"; done_testing; }
# A person the publisher may read but not write (ou=locked is read-only to it).
ldm dir > /dev/null <<EOL || fail "locked entry added"
dn: uid=locked,ou=locked,$LDAP_BASE
changetype: add
objectClass: inetOrgPerson
uid: locked
cn: Locked
sn: Locked
mail: locked@example.org
EOL
printf '%s\n' "$LDAP_PUB_PW" > "$T/bindpw"
write_conf "[ldap]" "uri = ldap://127.0.0.1:$P/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw" \
	"base_dn = $LDAP_BASE" "timeout = 2" "retry_max = 1"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Errors Test" --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'ldappassword\n' > "$T/pw"
enroll() { ctl enroll "$1" --password-file "$T/pw" --out "$T/$1.p12" > "$T/$1.out" 2>&1; }

# ----------------------------------------------------------------- ACL
check "enrolling a user whose entry may not be written succeeds" enroll locked@example.org
check "and another user too" enroll carol@example.org
carol_there() { [ -n "$(ldap_serials dir carol@example.org)" ]; }
wait_until 10 carol_there && pass "the other user is published past the refused entry" || fail "carol published"
acl_err() { ctl publish status 2>&1 | grep -q "Insufficient access"; }
wait_until 10 acl_err && pass "publish status names the refusal" || fail "publish status shows the ACL error" "$(ctl publish status 2>&1)"
ctl publish status > "$T/acl.status" 2>&1
check_grep "the error names the entry" "uid=locked,ou=locked,$LDAP_BASE: Insufficient access \(50\)" "$T/acl.status"
check_grep "the log names the entry and the refusal" "ldap: user locked@example.org: .*Insufficient access" "$T/kmsd.log"
[ -z "$(ldap_serials dir locked@example.org)" ] && pass "nothing was written to the locked entry" || fail "locked entry unchanged"
ctl --json publish status | grep -q '"retrying":1' && pass "the refused entry stays queued for retry" || fail "retrying 1"

# ---------------------------------------------- a server that never answers
kill -STOP "$SLAPD_PID_dir"
t0=$(date +%s)
check "enrollment works while the directory hangs" enroll dave@example.org
check "revocation works while the directory hangs" ctl revoke carol@example.org
check "status answers while the directory hangs" ctl status
t1=$(date +%s)
[ $((t1 - t0)) -lt 10 ] && pass "none of them waited for the directory ($((t1 - t0)) s)" || fail "commands waited" "$((t1 - t0)) s"
hang_err() { ctl publish status 2>&1 | grep -Eq "Timed out|Can't contact"; }
wait_until 15 hang_err && pass "publish status reports the timeout" || fail "timeout reported" "$(ctl publish status 2>&1)"
grep -Eq "ldap: .*(Timed out|Can't contact LDAP server)" "$T/kmsd.log" && pass "and the log" || fail "timeout in the log"
kill -CONT "$SLAPD_PID_dir"
dave_there() { [ -n "$(ldap_serials dir dave@example.org)" ] && [ -z "$(ldap_serials dir carol@example.org)" ]; }
wait_until 20 dave_there && pass "once the server answers again, the enrollment and the revocation arrive" ||
	fail "catch-up after the hang"

# --------------------------------------------------- wrong bind password
stop_kmsd
printf 'not-the-password\n' > "$T/bindpw"
start_kmsd || fail "kmsd starts with a wrong bind password"
check "enrollment works with a wrong bind password" enroll erin@example.org
cred_err() { ctl publish status 2>&1 | grep -q "Invalid credentials"; }
wait_until 10 cred_err && pass "publish status says the credentials are wrong" || fail "Invalid credentials shown" "$(ctl publish status 2>&1)"
ctl publish status > "$T/cred.status" 2>&1
check_grep "naming the bind DN" "bind as $LDAP_PUB_DN: Invalid credentials \(49\)" "$T/cred.status"
check_grep "and the state is failing" "failing" "$T/cred.status"
check_grep "the log says so" "ldap: LDAP bind as $LDAP_PUB_DN: Invalid credentials" "$T/kmsd.log"
check_nogrep "the password is never logged" "not-the-password" "$T/kmsd.log"
ctl status > "$T/status.out" 2>&1
check_grep "kmsctl status shows the directory failing" "^Directory: .*failing" "$T/status.out"
# ------------------------------------------------ [ldap] settings on SIGHUP
printf '%s\n' "$LDAP_PUB_PW" > "$T/bindpw-fixed"
write_conf "[ldap]" "uri = ldap://127.0.0.1:$P/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw-fixed" \
	"base_dn = $LDAP_BASE" "timeout = 2" "retry_max = 1"
kill -HUP "$KMSD_PID"
erin_there() { [ -n "$(ldap_serials dir erin@example.org)" ]; }
wait_until 10 erin_there && pass "SIGHUP with a corrected bind_password_file: the waiting enrollment is published" ||
	fail "erin published after the reload" "$(ctl publish status 2>&1)"
check_grep "the log says the settings were reloaded" "ldap: settings reloaded; publishing to ldap://127.0.0.1:$P/ as $LDAP_PUB_DN" "$T/kmsd.log"
# (the locked entry stays queued: "catching up", not "failing")
wait_until 10 eval 'ctl publish status 2>&1 | grep -Eq "^Directory: .*(in sync|idle|catching up)"' &&
	pass "and publish status is no longer failing" ||
	fail "state after the reload" "$(ctl publish status 2>&1)"

P2=$(free_port)
slapd_setup two "$P2" || fail "second slapd set up"
slapd_start two || fail "second slapd starts"
write_conf "[ldap]" "uri = ldap://127.0.0.1:$P2/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw-fixed" \
	"base_dn = $LDAP_BASE" "timeout = 2" "retry_max = 1"
kill -HUP "$KMSD_PID"
moved() { [ -n "$(ldap_serials two erin@example.org)" ] && [ -n "$(ldap_serials two dave@example.org)" ]; }
wait_until 15 moved && pass "SIGHUP with another uri: the new directory gets every entry" ||
	fail "entries in the second directory" "$(ctl publish status 2>&1)"
check "enrollment after the move" enroll frank@example.org
frank_two() { [ -n "$(ldap_serials two frank@example.org)" ]; }
wait_until 10 frank_two && pass "and new enrollments go to the new directory" || fail "frank in the second directory"
[ -z "$(ldap_serials dir frank@example.org)" ] && pass "not to the old one" || fail "frank in the old directory"
ctl publish status > "$T/moved.status" 2>&1
check_grep "publish status names the new directory" "^Directory: ldap://127.0.0.1:$P2/" "$T/moved.status"

write_conf
kill -HUP "$KMSD_PID"
off() { ctl --json publish status 2>/dev/null | grep -q '"enabled":false'; }
wait_until 10 off && pass "SIGHUP without [ldap] uri turns publishing off" || fail "publishing off" "$(ctl --json publish status 2>&1)"
check_grep "and the log says so" "ldap: \[ldap\] uri removed: publishing turned off" "$T/kmsd.log"
check "enrollment works with publishing off" enroll gina@example.org
check "status answers with publishing off" ctl status
done_testing
