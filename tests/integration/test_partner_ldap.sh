#!/bin/bash
# test_partner_ldap.sh - the running kmsd fetches CRLs from ldap://
# distribution points: the partner PKI of partner_pki.sh with its
# certificates naming ldap://127.0.0.1:PORT/cn=CA,dc=example,dc=org?
# certificateRevocationList;binary, the CRLs held by a private slapd
# (anonymous read); through miltertest:
# - alice, revoked by the intermediate's CRL fetched over LDAP, is revoked;
#   bob passes with a known status; crl list-external shows the ldap URLs;
# - an entry without the attribute, an entry that does not exist, a server
#   that does not listen, one that never answers and a value bigger than
#   fetch_max_size: each is an error in crl list-external and the log,
#   and messages are answered at once meanwhile.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/slapd.sh"
. "${srcdir:-.}/tests/integration/partner_pki.sh"
need_slapd
need_cmd openssl python3 miltertest
setup
MT="$(cd "$srcdir/tests/integration/miltertest" && pwd)"

LP=$(free_port)
slapd_setup dir "$LP" || { fail "slapd set up"; done_testing; }
slapd_start dir || { fail "slapd starts"; done_testing; }
# %s is the CA's name; commas written %2C (RFC 4516 lets a DN carry them escaped).
LDAP_CDP_FMT="ldap://127.0.0.1:$LP/cn=%s%%2C${LDAP_BASE//,/%%2C}?certificateRevocationList;binary"
P="$T/pki"
PKI_CDP_FMT="$LDAP_CDP_FMT" pki_make "$P" unused || { fail "the test PKI is made"; done_testing; }
pki_crl "$P" issuing "$T/issuing.pem" -n 2 -r 4096,keyCompromise
pki_crl "$P" root "$T/root.pem" -n 1
openssl crl -in "$T/issuing.pem" -outform DER -out "$T/issuing.der"
openssl crl -in "$T/root.pem" -outform DER -out "$T/root.der"
ldm dir > "$T/ldm.out" 2>&1 <<EOL || fail "the CRL entries are added" "$(cat "$T/ldm.out")"
dn: cn=issuing,$LDAP_BASE
changetype: add
objectClass: cRLDistributionPoint
cn: issuing
certificateRevocationList;binary:< file://$T/issuing.der

dn: cn=root,$LDAP_BASE
changetype: add
objectClass: cRLDistributionPoint
cn: root
certificateRevocationList;binary:< file://$T/root.der
EOL
ISSUING_URL=$(printf "$LDAP_CDP_FMT" issuing)
ROOT_URL=$(printf "$LDAP_CDP_FMT" root)
openssl x509 -in "$P/alice.crt" -noout -ext crlDistributionPoints > "$T/alice.cdp" 2>&1
check_grep "alice's certificate names the ldap distribution point" "URI:ldap://127.0.0.1:$LP/cn=issuing" "$T/alice.cdp"

# wait_log PATTERN: up to 20 s for the kmsd log to show it (a fixed string).
wait_log() {
	for _ in $(seq 1 200); do
		grep -Fq -- "$1" "$T/kmsd.log" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = $P/root.crt" \
	"[crl]" "fetch_timeout = 3" "fetch_max_size = 64K" "[policy]" "on_revocation_unknown = accept"
start_kmsd || { fail "kmsd starts"; done_testing; }
mt "the first message: revocation unknown while the ldap CRLs are fetched" alice.eml unknown
if wait_log "CRL $ISSUING_URL: taken" && wait_log "CRL $ROOT_URL: taken"; then
	pass "kmsd fetched the intermediate's and the root's CRLs over LDAP"
else
	fail "the CRLs are fetched over LDAP" "$(grep CRL "$T/kmsd.log" | tail -4 | tr '\n' ' ')"
fi
sleep 1
mt "alice, revoked by the CRL from the directory, is revoked" alice.eml revoked
mt "bob passes with a known status" bob.eml pass
ctl crl list-external > "$T/list.out" 2>&1
check_grep "crl list-external shows the ldap URL" "^ldap://127.0.0.1:$LP/cn=issuing" "$T/list.out"
check_grep "... with the CRL's entries and number" "entries: 1 +number: 2" "$T/list.out"
check_nogrep "... and no error" "last error: [^n]" "$T/list.out"
stop_kmsd

# ------------------------------------------------- what goes wrong
# An entry without the attribute, one that does not exist, a port nobody listens on, a
# server that never answers, and a value over fetch_max_size (64K).
# A valid CRL (the directory checks the syntax) of some 150 KB: 4000 entries.
set -- 
for i in $(seq 20000 23999); do set -- "$@" -r "$i,keyCompromise"; done
pki_crl "$P" issuing "$T/huge.pem" -n 3 "$@" || fail "the huge CRL is made"
set --
openssl crl -in "$T/huge.pem" -outform DER -out "$T/huge.bin"
[ "$(stat -c %s "$T/huge.bin")" -gt 100000 ] && pass "the huge CRL is over 100 KB" || fail "huge CRL size"
ldm dir > "$T/ldm2.out" 2>&1 <<EOL || fail "the bad entries are added" "$(cat "$T/ldm2.out")"
dn: cn=empty,$LDAP_BASE
changetype: add
objectClass: cRLDistributionPoint
cn: empty

dn: cn=huge,$LDAP_BASE
changetype: add
objectClass: cRLDistributionPoint
cn: huge
certificateRevocationList;binary:< file://$T/huge.bin
EOL
cat > "$T/silent.py" <<'EOP'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
EOP
SILENT=$(free_port)
python3 "$T/silent.py" "$SILENT" &
PIDS="$PIDS $!"
CLOSED=$(free_port)
for what in empty missing closed silent huge; do
	case $what in
	closed) fmt="ldap://127.0.0.1:$CLOSED/cn=%s%%2Cdc=example%%2Cdc=org" ;;
	silent) fmt="ldap://127.0.0.1:$SILENT/cn=%s%%2Cdc=example%%2Cdc=org" ;;
	missing) fmt="ldap://127.0.0.1:$LP/cn=nobody-%s%%2C${LDAP_BASE//,/%%2C}" ;;
	*) fmt="ldap://127.0.0.1:$LP/cn=$what%%2C${LDAP_BASE//,/%%2C}?certificateRevocationList;binary" ;;
	esac
	PKI_CDP_FMT="$fmt" pki_make "$T/$what" unused > /dev/null 2>&1 || fail "the $what PKI is made"
	cat "$T/$what/root.crt" >> "$T/roots.pem"
done
rm -rf "$STATE/crl-dp"
: > "$T/kmsd.log"
# The silent server's fetch may take 12 s before it gives up: every message must be answered
# while it still hangs (an order of events, not a speed).
write_conf "[kmsd]" "milter_socket = unix:$STATE/milter.sock" "[milter]" "trust_file = $T/roots.pem" \
	"[crl]" "fetch_timeout = 12" "fetch_max_size = 64K" "[policy]" "on_revocation_unknown = accept"
start_kmsd || { fail "kmsd starts (bad distribution points)"; done_testing; }
for what in silent empty missing closed huge; do
	mt "$what: the message is answered, revocation unknown" alice.eml unknown "$T/$what"
done
if grep -Fq "timed out after 12 s" "$T/kmsd.log"; then
	fail "mail flows while an LDAP fetch hangs" "the fetch had timed out before the messages were answered"
else
	pass "mail flows while an LDAP fetch hangs: every message answered before the hanging fetch gave up"
fi
# log_says WHAT URL-PART TEXT: the log and crl list-external both give the error.
log_says() {
	if wait_log "$3"; then
		pass "$1: the log says \"$3\""
	else
		fail "$1: the log says \"$3\"" "$(grep "$2" "$T/kmsd.log" | tail -2 | tr '\n' ' ')"
	fi
}
log_says "an entry without the attribute" "cn=empty" "the entry has no certificateRevocationList;binary value"
log_says "an entry that does not exist" "cn=nobody" "search: No such object"
log_says "a port nobody listens on" ":$CLOSED/" "cannot connect: Can't contact LDAP server"
log_says "a server that never answers" ":$SILENT/" "timed out after 12 s"
log_says "a value over fetch_max_size (cut by the bound on what libldap reads)" "cn=huge" "an answer larger than 65536 bytes"
ctl crl list-external > "$T/list2.out" 2>&1
for e in "the entry has no certificateRevocationList;binary value" "No such object" "Can't contact LDAP server" \
    "timed out after 12 s" "larger than 65536 bytes"; do
	check_grep "crl list-external shows: $e" "last error: .*$e" "$T/list2.out"
done
check_grep "... and that there is no good copy" "no good copy yet" "$T/list2.out"
stop_kmsd
done_testing
