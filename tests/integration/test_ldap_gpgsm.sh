#!/bin/bash
# test_ldap_gpgsm.sh - a real S/MIME client against the directory: gpgsm
# with its own dirmngr (private GNUPGHOME, started here, stopped by pid)
# pointed at a private slapd.  gpgsm finds a colleague's certificate by
# address (--list-external-keys), imports it and encrypts to it (the
# message opens with her PKCS#12 under openssl); dirmngr fetches our CRL
# from the ldap:// name of the distribution point ([crl] ldap_url; the
# http:// name ignored) and gpgsm then calls a revoked user's certificate
# revoked and refuses to encrypt to it.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/slapd.sh"
need_slapd
need_cmd openssl curl gpgsm dirmngr gpgconf
setup
USER_KEY=rsa:2048

P=$(free_port)
slapd_setup dir "$P" || { fail "slapd set up"; done_testing; }
slapd_start dir || { fail "slapd starts"; done_testing; }
printf '%s\n' "$LDAP_PUB_PW" > "$T/bindpw"
CADN="cn=kms-ca,$LDAP_BASE"
write_conf "[crl]" "ldap_url = ldap://127.0.0.1:$P/$CADN?certificateRevocationList;binary" \
	"[ldap]" "uri = ldap://127.0.0.1:$P/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw" \
	"base_dn = $LDAP_BASE" "timeout = 3" "retry_max = 2"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "Gpgsm Test" --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'gpgsmpassword\n' > "$T/pw"
for u in alice bob; do
	ctl enroll "$u@example.org" --password-file "$T/pw" --out "$T/$u.p12" > "$T/$u.enroll" 2>&1 ||
		fail "enroll $u" "$(cat "$T/$u.enroll")"
done
openssl pkcs12 -in "$T/bob.p12" -passin file:"$T/pw" -nokeys -clcerts -out "$T/bob.certs.pem" 2>/dev/null ||
	fail "bob's certificates from his PKCS#12"
ctl revoke bob@example.org > /dev/null 2>&1 || fail "revoke bob"
queue_empty() { ctl --json publish status | grep -q '"queue":0,'; }
wait_until 10 queue_empty || fail "the queue drains" "$(ctl publish status 2>&1)"
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" -o "$T/ca.der" || fail "CA certificate over HTTP"
openssl x509 -inform DER -in "$T/ca.der" -out "$T/ca.pem"

# ------------------------------------------------ the client's own world
export GNUPGHOME="$T/gnupg"
mkdir -m 700 "$GNUPGHOME"
# Only the ldap:// name of the distribution point, never OCSP: the CRL must come from the directory.
cat > "$GNUPGHOME/dirmngr.conf" <<EOC
ldapserver 127.0.0.1:$P:::$LDAP_BASE:plain
ignore-http-dp
ldaptimeout 10
log-file $T/dirmngr.log
debug-level guru
EOC
fpr=$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha1 | sed 's/.*=//')
echo "$fpr S" > "$GNUPGHOME/trustlist.txt"
# gpg-agent reads trustlist.txt for gpgsm: it is started here too.
gpg-agent --homedir "$GNUPGHOME" --daemon --no-detach > "$T/agent.out" 2>&1 &
AGENT_PID=$!
PIDS="$PIDS $AGENT_PID"
dirmngr --homedir "$GNUPGHOME" --daemon --no-detach > "$T/dirmngr.out" 2>&1 &
DIRMNGR_PID=$!
PIDS="$PIDS $DIRMNGR_PID"
sock=$(gpgconf --list-dirs dirmngr-socket)
wait_until 10 test -S "$sock" || fail "dirmngr listens" "$(cat "$T/dirmngr.out")"
asock=$(gpgconf --list-dirs agent-socket)
wait_until 10 test -S "$asock" || fail "gpg-agent listens" "$(cat "$T/agent.out")"
G() { gpgsm --batch --no-autostart "$@"; }
G --import "$T/ca.pem" > "$T/import-ca.out" 2>&1 || fail "gpgsm imports the CA" "$(cat "$T/import-ca.out")"

enc=$(sed -n 's/.*encryption certificate *serial \([0-9a-f]*\),.*/\1/p' "$T/alice.enroll" | tr 'a-f' 'A-F' | sed 's/^0*//')
G --list-external-keys alice@example.org > "$T/ext.out" 2>&1
check_grep "gpgsm --list-external-keys finds alice's certificate in the directory" "Subject: .*CN=alice@example.org" "$T/ext.out"
tr -d ' ' < "$T/ext.out" | grep -Eq "^S/N:0*$enc\$" && pass "it is her encryption certificate (the first value of userCertificate)" ||
	fail "alice's encryption certificate listed" "serial $enc; $(grep -E 'S/N|usage' "$T/ext.out" | tr '\n' ' ')"
check_grep "dirmngr asked our directory" "cmd_lookup: trying 127.0.0.1:$P base=$LDAP_BASE" "$T/dirmngr.log"

# What --list-external-keys found is kept as an ephemeral certificate: import it for good.
fp=$(G --with-ephemeral-keys --with-colons --list-keys alice@example.org 2>/dev/null | awk -F: '/^fpr:/ { print $10; exit }')
G --with-ephemeral-keys --export "$fp" > "$T/alice.der" 2>/dev/null
G --import "$T/alice.der" > "$T/import-alice.out" 2>&1 && G --with-colons --list-keys alice@example.org 2>/dev/null | grep -q "^fpr:::::::::$fp:" &&
	pass "gpgsm imports the certificate it found" || fail "import alice's certificate" "fp '$fp': $(cat "$T/import-alice.out")"

printf 'For alice only.\n' > "$T/msg"
check "gpgsm encrypts to alice (validated with CRL checks on)" G -r alice@example.org --encrypt -o "$T/msg.p7m" "$T/msg"
# The PKCS#12 holds two keys: the one that opens the message is the encryption key.
decrypts() {
	openssl pkcs12 -in "$T/alice.p12" -passin file:"$T/pw" -nocerts -nodes 2>/dev/null |
		awk -v d="$T" '/-----BEGIN/ { n++ } n { print > (d "/alice.key" n ".pem") }'
	for k in "$T"/alice.key*.pem; do
		openssl cms -decrypt -binary -inform DER -in "$T/msg.p7m" -inkey "$k" > "$T/msg.out" 2>/dev/null &&
			cmp -s "$T/msg" "$T/msg.out" && return 0
	done
	return 1
}
decrypts && pass "alice opens it with her PKCS#12 (openssl cms -decrypt)" || fail "alice decrypts gpgsm's message"

G --list-keys --with-validation alice@example.org > "$T/val-alice.out" 2>&1
check_nogrep "her certificate validates: not revoked, a CRL found" "revoked|no CRL found|certificate is bad" "$T/val-alice.out"
check_grep "dirmngr fetched the CRL over the ldap:// distribution point" \
	"fetching CRL from 'ldap://127.0.0.1:$P/$CADN\?certificateRevocationList;binary'" "$T/dirmngr.log"
check_nogrep "and never over http://" "fetching CRL from 'http" "$T/dirmngr.log"

# Bob was revoked: his certificates are gone from the directory, and the
# CRL dirmngr got from it names them.
G --list-external-keys bob@example.org > "$T/ext-bob.out" 2>&1
check_nogrep "the directory no longer offers bob's certificates" "CN=bob@example.org" "$T/ext-bob.out"
G --import "$T/bob.certs.pem" > "$T/import-bob.out" 2>&1 || fail "import bob's certificates from his PKCS#12"
G --list-keys --with-validation bob@example.org > "$T/val-bob.out" 2>&1
check_grep "gpgsm calls bob's certificate revoked" "certificate has been revoked" "$T/val-bob.out"
check_fails "gpgsm refuses to encrypt to bob" 1 "Certificate revoked" G -r bob@example.org --encrypt -o "$T/msgb.p7m" "$T/msg"

kill -TERM "$DIRMNGR_PID" "$AGENT_PID" 2>/dev/null
wait "$DIRMNGR_PID" "$AGENT_PID" 2>/dev/null
PIDS=$(printf '%s' "$PIDS" | sed "s/ $DIRMNGR_PID\b//; s/ $AGENT_PID\b//")
unset GNUPGHOME
done_testing
