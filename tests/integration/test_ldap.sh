#!/bin/bash
# test_ldap.sh - certificates and CRLs in a real OpenLDAP directory: a
# private slapd provider and a syncrepl consumer on loopback.  Enrollment
# writes the user's certificates into their existing entry (found by mail)
# or a new one under ou=people; the CA entry holds the CA certificate and
# the same CRL bytes HTTP serves (and the delta); renewal replaces the
# certificates, revocation removes them at once, on the consumer too
# within 5 s; userSMIMECertificate parses as certs-only PKCS#7; publish
# resync repairs an entry changed behind kmsd's back; kmsctl cert and
# status report what the directory holds.
. "${srcdir:-.}/tests/integration/lib.sh"
. "${srcdir:-.}/tests/integration/slapd.sh"
need_slapd
need_cmd openssl curl base64
setup
USER_KEY=rsa:2048

PROV=$(free_port)
CONS=$(free_port)
slapd_setup prov "$PROV" provider || { fail "provider slapd set up"; done_testing; }
slapd_setup cons "$CONS" consumer "$PROV" || { fail "consumer slapd set up"; done_testing; }
slapd_start prov || { fail "provider slapd starts"; done_testing; }
slapd_start cons || { fail "consumer slapd starts"; done_testing; }

# Alice has an entry already (found by her address); bob has none.
ldm prov > /dev/null <<EOL || fail "alice's entry added"
dn: uid=alice,ou=people,$LDAP_BASE
changetype: add
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mail: alice@example.org
telephoneNumber: +1 555 0100
EOL

printf '%s\n' "$LDAP_PUB_PW" > "$T/bindpw"
write_conf "[crl]" "delta = yes" \
	"[ldap]" "uri = ldap://127.0.0.1:$PROV/" "bind_dn = $LDAP_PUB_DN" "bind_password_file = $T/bindpw" \
	"base_dn = $LDAP_BASE" "timeout = 3" "retry_max = 2"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "LDAP Test" --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'ldappassword\n' > "$T/pw"

# serials_of OUTPUT: the two serials an enroll printed, sorted.
serials_of() {
	sed -n 's/.*certificate *serial \([0-9a-f]*\),.*/\1/p' "$1" | sort
}
queue_empty() {
	ctl --json publish status | grep -q '"queue":0,'
}

for u in alice bob; do
	ctl enroll "$u@example.org" --name "$u" --password-file "$T/pw" --out "$T/$u.p12" > "$T/$u.enroll" 2>&1 ||
		fail "enroll $u" "$(cat "$T/$u.enroll")"
	serials_of "$T/$u.enroll" > "$T/$u.serials"
done
wait_until 10 queue_empty || fail "the queue drains" "$(ctl publish status 2>&1)"

# ------------------------------------------------------------ users
ldap_serials prov alice@example.org > "$T/alice.ldap"
if [ -s "$T/alice.ldap" ] && cmp -s "$T/alice.ldap" "$T/alice.serials"; then
	pass "alice's entry holds exactly her signing and encryption certificates"
else
	fail "alice's entry holds her two certificates" "ldap: $(cat "$T/alice.ldap" | tr '\n' ' ') store: $(cat "$T/alice.serials" | tr '\n' ' ')"
fi
n=$(lds prov -b "$LDAP_BASE" "(mail=alice@example.org)" dn | grep -c '^dn:')
[ "$n" = 1 ] && pass "alice's existing entry was used, no second one made" || fail "one entry for alice" "$n entries"
lds prov -b "uid=alice,ou=people,$LDAP_BASE" -s base telephoneNumber cn > "$T/alice.entry"
check_grep "the rest of alice's entry is left alone" "telephoneNumber: \+1 555 0100" "$T/alice.entry"
lds prov -b "ou=people,$LDAP_BASE" "(mail=bob@example.org)" dn objectClass cn > "$T/bob.entry"
check_grep "bob's entry was made under ou=people" "^dn: mail=bob@example.org,ou=people,$LDAP_BASE" "$T/bob.entry"
check_grep "bob's new entry is an inetOrgPerson" "objectClass: inetOrgPerson" "$T/bob.entry"
ldap_serials prov bob@example.org > "$T/bob.ldap"
cmp -s "$T/bob.ldap" "$T/bob.serials" && [ -s "$T/bob.ldap" ] && pass "bob's entry holds exactly his certificates" ||
	fail "bob's certificates" "$(cat "$T/bob.ldap" | tr '\n' ' ')"

ldap_attr_file prov "uid=alice,ou=people,$LDAP_BASE" 'userSMIMECertificate' "$T/alice.p7"
openssl pkcs7 -inform DER -in "$T/alice.p7" -print_certs > "$T/alice.p7.txt" 2>&1
n=$(grep -c '^subject=' "$T/alice.p7.txt")
[ "$n" = 3 ] && pass "userSMIMECertificate parses as PKCS#7 with alice's two certificates and the CA" ||
	fail "userSMIMECertificate parses" "$n certificates: $(head -3 "$T/alice.p7.txt")"
check_grep "userSMIMECertificate holds the CA certificate" "subject=.*LDAP Test S/MIME CA" "$T/alice.p7.txt"
# Like Outlook's: signed by the user, with SMIMECapabilities and the encryption key preference.
openssl cms -cmsout -print -inform DER -in "$T/alice.p7" > "$T/alice.p7.print" 2>&1
check_grep "userSMIMECertificate carries S/MIME capabilities (openssl cms -cmsout -print)" "object: S/MIME Capabilities \(1.2.840.113549.1.9.15\)" "$T/alice.p7.print"
grep -A8 'object: S/MIME Capabilities' "$T/alice.p7.print" | grep -m1 'OBJECT' | grep -q ':aes-256-cbc' &&
	pass "led by AES-256-CBC" || fail "AES-256-CBC first in SMIMECapabilities"
check_grep "and the encryption key preference" "object: id-smime-aa-encrypKeyPref" "$T/alice.p7.print"
enc1=$(sed -n 's/.*encryption certificate *serial \([0-9a-f]*\),.*/\1/p' "$T/alice.enroll" | sed 's/^0*//')
grep -A16 'object: id-smime-aa-encrypKeyPref' "$T/alice.p7.print" | grep 'INTEGER' | tr 'A-F' 'a-f' |
	grep -Eq ":0*$enc1\$" &&
	pass "the preference names alice's encryption certificate" || fail "encrypKeyPref names serial $enc1"
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" -o "$T/ca.der" && openssl x509 -inform DER -in "$T/ca.der" -out "$T/ca.pem"
if openssl cms -verify -binary -inform DER -in "$T/alice.p7" -content /dev/null -CAfile "$T/ca.pem" -purpose any \
	-out /dev/null > "$T/alice.verify" 2>&1; then
	pass "its signature verifies, made by alice's signing certificate"
else
	fail "userSMIMECertificate signature" "$(tail -2 "$T/alice.verify" | tr '\n' ' ')"
fi

# --------------------------------------------------------------- CA
CADN="cn=kms-ca,$LDAP_BASE"
curl -sf "http://127.0.0.1:$HTTP_PORT/crl/kms-ca.crl" -o "$T/http.crl"
curl -sf "http://127.0.0.1:$HTTP_PORT/crl/kms-ca-delta.crl" -o "$T/http-delta.crl"
curl -sf "http://127.0.0.1:$HTTP_PORT/ca/kms-ca.crt" -o "$T/http.crt"
ldap_attr_file prov "$CADN" 'certificateRevocationList;binary' "$T/ldap.crl"
ldap_attr_file prov "$CADN" 'deltaRevocationList;binary' "$T/ldap-delta.crl"
ldap_attr_file prov "$CADN" 'cACertificate;binary' "$T/ldap.crt"
[ -s "$T/ldap.crl" ] && cmp -s "$T/ldap.crl" "$T/http.crl" && pass "the CA entry holds the CRL HTTP serves, byte for byte" ||
	fail "CA entry CRL == /crl/kms-ca.crl"
[ -s "$T/ldap-delta.crl" ] && cmp -s "$T/ldap-delta.crl" "$T/http-delta.crl" && pass "the CA entry holds the delta CRL" ||
	fail "CA entry delta CRL == /crl/kms-ca-delta.crl"
[ -s "$T/ldap.crt" ] && cmp -s "$T/ldap.crt" "$T/http.crt" && pass "the CA entry holds the CA certificate" ||
	fail "CA entry cACertificate"
lds prov -b "$CADN" -s base objectClass > "$T/ca.entry"
check_grep "the CA entry is a pkiCA" "objectClass: pkiCA" "$T/ca.entry"
check_grep "the CA entry is a cRLDistributionPoint" "objectClass: cRLDistributionPoint" "$T/ca.entry"

# ---------------------------------------------------------- renewal
ctl enroll alice@example.org --renew --password-file "$T/pw" --out "$T/alice2.p12" > "$T/alice2.enroll" 2>&1 ||
	fail "renew alice" "$(cat "$T/alice2.enroll")"
serials_of "$T/alice2.enroll" > "$T/alice2.serials"
alice_renewed() {
	ldap_serials prov alice@example.org > "$T/alice2.ldap"
	[ -s "$T/alice2.ldap" ] && cmp -s "$T/alice2.ldap" "$T/alice2.serials"
}
wait_until 10 alice_renewed && pass "renewal replaces alice's certificates with the new two" ||
	fail "renewal replaces" "ldap: $(tr '\n' ' ' < "$T/alice2.ldap") new: $(tr '\n' ' ' < "$T/alice2.serials")"

# --------------------------------------------------------- revocation
# The consumer has bob's certificates first.
bob_on_consumer() { [ -n "$(ldap_serials cons bob@example.org)" ]; }
wait_until 10 bob_on_consumer && pass "syncrepl copied bob's certificates to the consumer" || fail "consumer has bob"
t0=$(date +%s.%N)
ctl revoke bob@example.org --reason affiliationChanged > "$T/revoke.out" 2>&1 || fail "revoke bob" "$(cat "$T/revoke.out")"
bob_gone_cons() { [ -z "$(ldap_serials cons bob@example.org)" ]; }
if wait_until 5 bob_gone_cons; then
	t1=$(date +%s.%N)
	pass "the revocation reaches the syncrepl consumer within 5 s ($(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s)"
else
	fail "revocation visible on the consumer within 5 s"
fi
[ -z "$(ldap_serials prov bob@example.org)" ] && pass "revocation removes bob's certificates from the provider" ||
	fail "bob's certificates removed"
lds prov -b "ou=people,$LDAP_BASE" "(mail=bob@example.org)" 'userSMIMECertificate' > "$T/bob2.entry"
check_nogrep "and his userSMIMECertificate" "userSMIMECertificate" "$T/bob2.entry"
crl_fresh() {
	curl -sf "http://127.0.0.1:$HTTP_PORT/crl/kms-ca.crl" -o "$T/http2.crl" &&
	ldap_attr_file prov "$CADN" 'certificateRevocationList;binary' "$T/ldap2.crl" &&
	cmp -s "$T/ldap2.crl" "$T/http2.crl" && ! cmp -s "$T/ldap2.crl" "$T/ldap.crl"
}
wait_until 10 crl_fresh && pass "the CA entry has the new CRL after the revocation" || fail "CA entry CRL updated"
for s in $(cat "$T/bob.serials"); do
	openssl crl -inform DER -in "$T/ldap2.crl" -noout -text | tr 'A-Z' 'a-z' | tr -d ' ' | grep -q "serialnumber:0*$s" ||
		fail "bob's serial $s in the directory's CRL"
done
ldap_attr_file cons "$CADN" 'certificateRevocationList;binary' "$T/cons.crl"
wait_until 5 cmp -s "$T/cons.crl" "$T/ldap2.crl" || ldap_attr_file cons "$CADN" 'certificateRevocationList;binary' "$T/cons.crl"
cmp -s "$T/cons.crl" "$T/ldap2.crl" && pass "the consumer has the new CRL" || fail "consumer CRL"

# ------------------------------------------------------ resync, cert
ldm prov > /dev/null <<EOL
dn: uid=alice,ou=people,$LDAP_BASE
changetype: modify
delete: userCertificate;binary
EOL
[ -z "$(ldap_serials prov alice@example.org)" ] || fail "alice's certificates deleted behind kmsd's back"
ctl publish resync > "$T/resync.out" 2>&1 || fail "publish resync" "$(cat "$T/resync.out")"
check_grep "publish resync says how many entries it queued" "^3 entries queued" "$T/resync.out"
wait_until 10 alice_renewed && pass "publish resync rewrites alice's entry from the store" || fail "resync repairs alice"
# kmsd remembers where alice's entry is; deleted behind its back, it is looked for again and made anew.
ldapdelete -x -H "ldap://127.0.0.1:$PROV/" -D "$LDAP_ROOT_DN" -w "$LDAP_ROOT_PW" "uid=alice,ou=people,$LDAP_BASE" ||
	fail "alice's entry deleted behind kmsd's back"
ctl publish resync > /dev/null 2>&1 || fail "publish resync after the delete"
alice_made_again() {
	lds prov -b "ou=people,$LDAP_BASE" "(mail=alice@example.org)" dn | grep -q "^dn: mail=alice@example.org,ou=people" &&
		alice_renewed
}
wait_until 10 alice_made_again && pass "an entry deleted behind kmsd's back is made again (the remembered DN is not trusted blindly)" ||
	fail "alice's entry made again" "$(ctl publish status 2>&1)"

ctl cert alice@example.org --out "$T/alice-cert.pem" > /dev/null 2>&1 || fail "kmsctl cert --out"
s=$(openssl x509 -in "$T/alice-cert.pem" -noout -serial -ext keyUsage 2>/dev/null)
enc=$(sed -n 's/.*encryption certificate *serial \([0-9a-f]*\),.*/\1/p' "$T/alice2.enroll")
printf '%s' "$s" | tr 'A-F' 'a-f' | grep -q "serial=0*$enc" && pass "kmsctl cert gives alice's current encryption certificate" ||
	fail "kmsctl cert" "$s vs $enc"
check_fails "kmsctl cert of a revoked user fails and says why" 1 "no valid certificate" ctl cert bob@example.org

ctl publish status > "$T/pstatus.out" 2>&1
check_grep "publish status names the directory and its state" "^Directory: ldap://127.0.0.1:$PROV/ .*(in sync|idle), 0 queued" "$T/pstatus.out"
check_grep "publish status gives the last success" "last success 20[0-9-]+T" "$T/pstatus.out"
ctl status > "$T/status.out" 2>&1
check_grep "kmsctl status shows the directory" "^Directory: ldap://127.0.0.1:$PROV/" "$T/status.out"
done_testing
