# partner_pki.sh - a partner organisation's PKI made with openssl at test
# time (sourced by the tests that need one):
#
#   root          Partner Root (self-signed; CRL: root.crl)
#   ├── issuing   Partner Issuing CA (CDP root.crl; CRL: issuing.crl)
#   │   ├── alice, bob, erin (CDP issuing.crl)
#   └── policy    Partner Policy CA (CDP root.crl; CRL: policy.crl)
#       └── dept  Partner Department CA, two levels down (CDP policy.crl;
#           │     CRL: dept.crl)
#           └── carol, dan (CDP dept.crl)
#
# pki_make DIR URLBASE: keys, certificates (DIR/NAME.crt, .key), chain
# files (DIR/NAME-chain.pem: the certificate and its CAs up to, not
# including, the root), DIR/intermediates.pem and a signed message per
# user (DIR/NAME.eml, From NAME@partner.example).  URLBASE is where the
# CRLs are served (http://127.0.0.1:PORT); PKI_CDP_FMT, when set, gives
# the distribution points instead (see pki_cdp).
#
# pki_crl DIR CA OUT [options]: a CRL of CA (root, issuing, policy, dept)
# listing the revoked entries given as -r SERIAL,REASON (reason as openssl
# ca spells it, removeFromCRL included); -n NUMBER (CRL number), -d BASE
# (a delta CRL on base BASE), -x EXTLINE (more crl extensions, in openssl
# config syntax), -k KEYNAME (sign with DIR/KEYNAME.key and DIR/KEYNAME.crt
# instead), -t LAST NEXT (thisUpdate and nextUpdate, YYMMDDHHMMSSZ).
# The CRL is PEM.

pki_ext() {
	# pki_ext FILE KIND CDP: extensions for a CA or a user certificate.
	{
		printf '[ext]\n'
		if [ "$2" = ca ]; then
			printf 'basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n'
		elif [ "$2" = ca_nocrlsign ]; then
			printf 'basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign\n'
		else
			printf 'basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,nonRepudiation\n'
			printf 'extendedKeyUsage = emailProtection\nsubjectAltName = email:%s@partner.example\n' "$4"
		fi
		printf 'subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n'
		[ -n "$3" ] && printf 'crlDistributionPoints = URI:%s\n' "$3"
	} > "$1"
}

# pki_cert DIR NAME ISSUER KIND CN SERIAL [CDP]
pki_cert() {
	d=$1 n=$2 iss=$3 kind=$4 cn=$5 serial=$6 cdp=${7:-}
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$n.key" 2>/dev/null || return 1
	pki_ext "$d/$n.ext" "$kind" "$cdp" "$n"
	subj="/O=Partner/CN=$cn"
	[ "$kind" = user ] && subj="/O=Partner/CN=$cn/emailAddress=$n@partner.example"
	openssl req -new -key "$d/$n.key" -subj "$subj" -out "$d/$n.csr" 2>/dev/null || return 1
	if [ "$iss" = self ]; then
		openssl x509 -req -in "$d/$n.csr" -signkey "$d/$n.key" -days 365 -set_serial "$serial" \
			-extfile "$d/$n.ext" -extensions ext -out "$d/$n.crt" 2>/dev/null
	else
		openssl x509 -req -in "$d/$n.csr" -CA "$d/$iss.crt" -CAkey "$d/$iss.key" -days 365 \
			-set_serial "$serial" -extfile "$d/$n.ext" -extensions ext -out "$d/$n.crt" 2>/dev/null
	fi
}

# pki_cdp CA: the distribution point of CA's CRL: URLBASE/CA.crl, or
# printf "$PKI_CDP_FMT" CA when that is set (an ldap:// URL, say; no
# commas: openssl's config would split the URI there, write %2C).
pki_cdp() {
	if [ -n "${PKI_CDP_FMT:-}" ]; then
		# shellcheck disable=SC2059
		printf "$PKI_CDP_FMT" "$1"
	else
		printf '%s/%s.crl' "$base" "$1"
	fi
}

pki_make() {
	d=$1 base=$2
	mkdir -p "$d"
	pki_cert "$d" root self ca "Partner Root" 1 &&
	pki_cert "$d" issuing root ca "Partner Issuing CA" 2 "$(pki_cdp root)" &&
	pki_cert "$d" policy root ca "Partner Policy CA" 3 "$(pki_cdp root)" &&
	pki_cert "$d" dept policy ca "Partner Department CA" 4 "$(pki_cdp policy)" &&
	pki_cert "$d" alice issuing user "Alice" 4096 "$(pki_cdp issuing)" &&
	pki_cert "$d" bob issuing user "Bob" 4097 "$(pki_cdp issuing)" &&
	pki_cert "$d" erin issuing user "Erin" 4098 "$(pki_cdp issuing)" &&
	pki_cert "$d" carol dept user "Carol" 8192 "$(pki_cdp dept)" &&
	pki_cert "$d" dan dept user "Dan" 8193 "$(pki_cdp dept)" || return 1
	# The same name as the issuing CA, another key, and no cRLSign.
	pki_cert "$d" nocrlsign root ca_nocrlsign "Partner Issuing CA" 5 || return 1
	cat "$d/issuing.crt" "$d/policy.crt" "$d/dept.crt" > "$d/intermediates.pem"
	for u in alice bob erin; do cat "$d/$u.crt" "$d/issuing.crt" > "$d/$u-chain.pem"; done
	for u in carol dan; do cat "$d/$u.crt" "$d/dept.crt" "$d/policy.crt" > "$d/$u-chain.pem"; done
	for u in alice bob erin carol dan; do
		printf 'Hello from %s.\n' "$u" > "$d/$u.txt"
		openssl smime -sign -in "$d/$u.txt" -signer "$d/$u.crt" -inkey "$d/$u.key" -certfile "$d/$u-chain.pem" \
			-from "$u@partner.example" -to "rcpt@example.org" -subject "from $u" -out "$d/$u.eml" 2>/dev/null || return 1
	done
}

pki_serial_hex() {
	h=$(printf '%X' "$1")
	[ $((${#h} % 2)) = 1 ] && h="0$h"
	printf '%s' "$h"
}

pki_crl() {
	d=$1 ca=$2 out=$3
	shift 3
	key=$ca number=1 delta="" last="" next="" exts="" entries=""
	while [ $# -gt 0 ]; do
		case $1 in
		-r) entries="$entries $2"; shift 2 ;;
		-n) number=$2; shift 2 ;;
		-d) delta=$2; shift 2 ;;
		-x) exts="$exts
$2"; shift 2 ;;
		-k) key=$2; shift 2 ;;
		-t) last=$2; next=$3; shift 3 ;;
		*) return 1 ;;
		esac
	done
	w="$d/crl-$ca-$$"
	rm -rf "$w"
	mkdir -p "$w"
	: > "$w/index.txt"
	for e in $entries; do
		s=${e%%,*} r=${e#*,}
		printf 'R\t301231000000Z\t%s,%s\t%s\tunknown\t/CN=revoked %s\n' "$(date -u -d '-1 day' +%y%m%d%H%M%SZ)" \
			"$r" "$(pki_serial_hex "$s")" "$s" >> "$w/index.txt"
	done
	printf '%X\n' "$number" | sed 's/^\(.\)$/0\1/; s/^\(...\)$/0\1/' > "$w/crlnumber"
	{
		printf '[ca]\ndefault_ca = p\n[p]\ndatabase = %s/index.txt\ncrlnumber = %s/crlnumber\n' "$w" "$w"
		printf 'default_md = sha256\ndefault_crl_days = 2\ncrl_extensions = crlext\n'
		printf '[crlext]\nauthorityKeyIdentifier = keyid\n'
		# openssl has no config syntax for the Delta CRL Indicator: its DER (INTEGER < 128).
		[ -n "$delta" ] && printf '2.5.29.27 = critical,DER:02:01:%02X\n' "$delta"
		printf '%s\n' "$exts"
		printf '[idp]\nfullname = URI:http://127.0.0.1/not-this.crl\n'
	} > "$w/ca.cnf"
	set -- -batch -gencrl -config "$w/ca.cnf" -keyfile "$d/$key.key" -cert "$d/$key.crt" -out "$out"
	[ -n "$last" ] && set -- "$@" -crl_lastupdate "$last" -crl_nextupdate "$next"
	openssl ca "$@" 2> "$w/err" || { cat "$w/err" >&2; return 1; }
	rm -rf "$w"
}

# mt WHAT MSG EXPECT [DATA]: one message through kmsd's milter socket, pass
# if partner.lua is content (DATA: the PKI directory, default $P).
mt() {
	if miltertest -D sock="unix:$STATE/milter.sock" -D data="${4:-$P}" -D dir="$MT" -D msg="$2" -D expect="$3" \
	    -s "$MT/partner.lua" > "$T/mt.out" 2>&1; then
		pass "$1"
	else
		fail "$1" "$(tail -4 "$T/mt.out" | tr '\n' ' ')"
	fi
}

# wait_log PATTERN: up to 20 s for the kmsd log to show it (extended regex).
wait_log() {
	for _ in $(seq 1 200); do
		grep -Eq -- "$1" "$T/kmsd.log" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
