#!/bin/bash
# test_nss.sh - what a Mozilla NSS mail client (Thunderbird's stack) sees
# of enrollment and renewal, with NSS's own tools: a renewal without
# --name keeps the user's display name; the renewed security file,
# imported into the NSS database that holds the first one, keeps a
# nickname per certificate, so each certificate still verifies for its
# use by its nickname (certutil -V -u S / -u R); notBefore is set back by
# [ca] not_before_margin so that a recipient whose clock is behind does
# not see a new certificate as not yet valid.
. "${srcdir:-.}/tests/integration/lib.sh"
need_cmd openssl certutil pk12util
setup

write_conf "[roles]" "admin = $(id -un)" "auditor = $(id -un)"
start_kmsd || { fail "kmsd starts"; done_testing; }
ctl init --org "NSS Test" --shares 2 --threshold 2 --share-dir "$T/shares" >/dev/null 2>&1 || fail "init"
printf 'nss-test-password\n' > "$T/pw"

ctl enroll bob@example.org --name "Bob Example" --password-file "$T/pw" --out "$T/bob1.p12" > "$T/e1.out" 2>&1 || \
	fail "enroll bob" "$(cat "$T/e1.out")"
ctl enroll bob@example.org --renew --password-file "$T/pw" --out "$T/bob2.p12" > "$T/e2.out" 2>&1 || \
	fail "renew bob" "$(cat "$T/e2.out")"
check_grep "the renewal without --name reports the kept name" "^Renewed bob@example.org \(Bob Example\)" "$T/e2.out"

# cert FILE.p12 USAGE: the PEM certificate whose friendly name says USAGE.
cert() {
	openssl pkcs12 -in "$1" -passin "file:$T/pw" -nokeys -clcerts 2>/dev/null |
		awk -v u="($2)" 'index($0, "friendlyName:") && index($0, u) {p=1} /-----BEGIN/ && p {q=1} q {print} /-----END/ && q {exit}'
}
nick() {
	openssl pkcs12 -in "$1" -passin "file:$T/pw" -nokeys -clcerts 2>/dev/null |
		sed -n "s/^ *friendlyName: \(.*($2).*\)$/\1/p" | head -1
}
cert "$T/bob2.p12" signing > "$T/s2.pem"
cert "$T/bob2.p12" encryption > "$T/e2.pem"
subj=$(openssl x509 -in "$T/s2.pem" -noout -subject -nameopt RFC2253 2>/dev/null)
case "$subj" in
*"CN=Bob Example,"*) pass "renew without --name keeps the subject CN=Bob Example" ;;
*) fail "renew without --name keeps the subject CN=Bob Example" "$subj" ;;
esac
s2sub=$(openssl x509 -in "$T/s2.pem" -noout -subject 2>/dev/null)
e2sub=$(openssl x509 -in "$T/e2.pem" -noout -subject 2>/dev/null)
s1sub=$(cert "$T/bob1.p12" signing | openssl x509 -noout -subject 2>/dev/null)
[ -n "$s2sub" ] && [ "$s2sub" = "$e2sub" ] && pass "one enrollment's two certificates share a subject (one identity for gpgsm)" || \
	fail "one subject per pair" "$s2sub / $e2sub"
[ "$s1sub" != "$s2sub" ] && pass "a renewal's subject differs from the renewed pair's (serialNumber)" || \
	fail "a subject per generation" "$s1sub"

# notBefore: five minutes (the default margin) before the moment of issue.
nb=$(date -d "$(openssl x509 -in "$T/s2.pem" -noout -startdate | cut -d= -f2)" +%s)
now=$(date +%s)
[ $((now - nb)) -ge 290 ] && [ $((now - nb)) -le 400 ] && pass "notBefore is set back by not_before_margin (5 min)" || \
	fail "notBefore set back" "now-notBefore=$((now - nb))"

# ---------------------------------------------------- one NSS database
DB="sql:$T/nssdb"
mkdir "$T/nssdb"
certutil -N -d "$DB" --empty-password
openssl pkcs12 -in "$T/bob1.p12" -passin "file:$T/pw" -nokeys -cacerts 2>/dev/null | openssl x509 -out "$T/ca.pem"
certutil -A -d "$DB" -n "NSS Test CA" -t "C,C,C" -a -i "$T/ca.pem"
printf 'nss-test-password\n' > "$T/pk12pw"
pk12util -i "$T/bob1.p12" -d "$DB" -w "$T/pk12pw" > "$T/imp1.out" 2>&1 || fail "pk12util imports the first file" "$(cat "$T/imp1.out")"
S1=$(nick "$T/bob1.p12" signing)
E1=$(nick "$T/bob1.p12" encryption)
certutil -V -u S -n "$S1" -d "$DB" > "$T/v1.out" 2>&1
check_grep "the first signing certificate verifies for signing by its nickname ($S1)" "certificate is valid" "$T/v1.out"
pk12util -i "$T/bob2.p12" -d "$DB" -w "$T/pk12pw" > "$T/imp2.out" 2>&1 || fail "pk12util imports the renewed file" "$(cat "$T/imp2.out")"
certutil -L -d "$DB" > "$T/list.out" 2>&1
S2=$(nick "$T/bob2.p12" signing)
E2=$(nick "$T/bob2.p12" encryption)
[ "$S1" != "$S2" ] && pass "the renewed file names its certificates apart from the old ones ($S2)" || fail "new friendly names" "$S1"
for n in "$S1" "$E1" "$S2" "$E2"; do
	grep -qF "$n" "$T/list.out" && pass "NSS keeps the nickname $n" || fail "NSS keeps the nickname $n" "$(cat "$T/list.out")"
done
certutil -V -u S -n "$S2" -d "$DB" > "$T/v2.out" 2>&1
check_grep "after the renewal, the new signing certificate verifies for signing by its nickname" "certificate is valid" "$T/v2.out"
certutil -V -u R -n "$E2" -d "$DB" > "$T/v3.out" 2>&1
check_grep "the new encryption certificate verifies for encryption by its nickname" "certificate is valid" "$T/v3.out"
certutil -V -u S -n "$S1" -d "$DB" > "$T/v4.out" 2>&1
check_grep "the old signing certificate still verifies by its own nickname" "certificate is valid" "$T/v4.out"
certutil -V -u S -n "$E2" -d "$DB" > "$T/v5.out" 2>&1
check_nogrep "an encryption certificate is not valid for signing (the check can fail)" "certificate is valid" "$T/v5.out"
done_testing
