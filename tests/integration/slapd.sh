# slapd.sh - private OpenLDAP servers for the integration tests (sourced
# after lib.sh).
#
# slapd_setup NAME PORT [provider|consumer PROVIDER_PORT]
#   writes a cn=config directory in $T/NAME/cfg (core, cosine and
#   inetorgperson schemas, one mdb database for $LDAP_BASE in $T/NAME/db)
#   and, unless it is a consumer, the base entries: the suffix,
#   ou=people, ou=locked (read-only for everyone but the rootdn) and the
#   publisher's own account $LDAP_PUB_DN with password $LDAP_PUB_PW.
#   A provider carries the syncprov overlay; a consumer replicates the
#   whole suffix from 127.0.0.1:PROVIDER_PORT with refreshAndPersist.
# slapd_start NAME   start it on ldap://127.0.0.1:PORT/ and wait until it
#                    answers; its pid goes to PIDS and SLAPD_PID_<NAME>.
# slapd_stop NAME    stop it (SIGTERM, wait).
# lds NAME ARGS...   ldapsearch against it as the rootdn, LDIF without
#                    wrapping.
#
# The system slapd and /etc/ldap are never touched: everything lives in $T.

SLAPD="${SLAPD:-/usr/sbin/slapd}"
SLAPADD="${SLAPADD:-/usr/sbin/slapadd}"
LDAP_BASE="${LDAP_BASE:-dc=example,dc=org}"
LDAP_ROOT_DN="cn=admin,$LDAP_BASE"
LDAP_ROOT_PW="${LDAP_ROOT_PW:-rootsecret}"
LDAP_PUB_DN="cn=kms,$LDAP_BASE"
LDAP_PUB_PW="${LDAP_PUB_PW:-kmssecret}"
LDAP_SCHEMA_DIR="${LDAP_SCHEMA_DIR:-/etc/ldap/schema}"
LDAP_MODULE_DIR="${LDAP_MODULE_DIR:-/usr/lib/ldap}"

need_slapd() {
	need_cmd "$SLAPD" "$SLAPADD" ldapsearch ldapmodify
	[ -r "$LDAP_SCHEMA_DIR/inetorgperson.ldif" ] || skip_all "needs $LDAP_SCHEMA_DIR/inetorgperson.ldif"
	[ -r "$LDAP_MODULE_DIR/back_mdb.la" ] || [ -r "$LDAP_MODULE_DIR/back_mdb.so" ] ||
		skip_all "needs slapd's back_mdb module in $LDAP_MODULE_DIR"
}

slapd_setup() {
	sname=$1 sport=$2 srole=${3:-single} sprov=${4:-}
	sd="$T/$sname"
	mkdir -p "$sd/cfg" "$sd/db"
	eval "SLAPD_PORT_$sname=$sport"
	{
		cat <<EOC
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $sd/slapd.pid
olcArgsFile: $sd/slapd.args

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: $LDAP_MODULE_DIR
olcModuleLoad: back_mdb
EOC
		[ "$srole" = provider ] && echo "olcModuleLoad: syncprov"
		cat <<EOC

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://$LDAP_SCHEMA_DIR/core.ldif

include: file://$LDAP_SCHEMA_DIR/cosine.ldif

include: file://$LDAP_SCHEMA_DIR/inetorgperson.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: unlimited

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: $LDAP_BASE
olcRootDN: $LDAP_ROOT_DN
olcRootPW: $LDAP_ROOT_PW
olcDbDirectory: $sd/db
olcDbMaxSize: 268435456
olcDbIndex: objectClass eq
olcDbIndex: mail eq
olcDbIndex: entryCSN,entryUUID eq
olcLimits: {0}dn.exact="$LDAP_ROOT_DN" size=unlimited time=unlimited
olcAccess: {0}to attrs=userPassword by self =xw by anonymous auth by * none
olcAccess: {1}to dn.subtree="ou=locked,$LDAP_BASE" by * read
olcAccess: {2}to * by dn.exact="$LDAP_PUB_DN" write by * read
EOC
		if [ "$srole" = consumer ]; then
			cat <<EOC
olcSyncrepl: {0}rid=001 provider=ldap://127.0.0.1:$sprov/ bindmethod=simple
  binddn="$LDAP_ROOT_DN" credentials="$LDAP_ROOT_PW" searchbase="$LDAP_BASE"
  type=refreshAndPersist retry="1 +" timeout=3 network-timeout=3
EOC
		fi
		if [ "$srole" = provider ]; then
			cat <<EOC

dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 1
EOC
		fi
	} > "$sd/config.ldif"
	"$SLAPADD" -n0 -F "$sd/cfg" -l "$sd/config.ldif" > "$sd/slapadd.log" 2>&1 ||
		{ sed 's/^/#   /' "$sd/slapadd.log"; return 1; }
	[ "$srole" = consumer ] && return 0
	top=$(printf '%s' "$LDAP_BASE" | sed 's/^dc=\([^,]*\).*/\1/')
	cat > "$sd/base.ldif" <<EOC
dn: $LDAP_BASE
objectClass: dcObject
objectClass: organization
dc: $top
o: Example

dn: ou=people,$LDAP_BASE
objectClass: organizationalUnit
ou: people

dn: ou=locked,$LDAP_BASE
objectClass: organizationalUnit
ou: locked

dn: $LDAP_PUB_DN
objectClass: person
objectClass: simpleSecurityObject
cn: kms
sn: kms
userPassword: $LDAP_PUB_PW
EOC
	"$SLAPADD" -n1 -F "$sd/cfg" -l "$sd/base.ldif" >> "$sd/slapadd.log" 2>&1 ||
		{ sed 's/^/#   /' "$sd/slapadd.log"; return 1; }
}

slapd_start() {
	sname=$1
	eval "sport=\$SLAPD_PORT_$sname"
	sd="$T/$sname"
	# -d 0: stay in the foreground (so $! is slapd) without debug output.
	"$SLAPD" -d 0 -h "ldap://127.0.0.1:$sport/" -F "$sd/cfg" >> "$sd/slapd.log" 2>&1 &
	spid=$!
	PIDS="$PIDS $spid"
	eval "SLAPD_PID_$sname=$spid"
	for _ in $(seq 1 100); do
		if ldapsearch -x -LLL -H "ldap://127.0.0.1:$sport/" -b "" -s base namingContexts >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$spid" 2>/dev/null || { note "slapd $sname exited:"; sed 's/^/#   /' "$sd/slapd.log" | tail -10; return 1; }
		sleep 0.1
	done
	note "slapd $sname did not answer within 10 s"
	return 1
}

slapd_stop() {
	eval "spid=\${SLAPD_PID_$1:-}"
	[ -n "$spid" ] || return 0
	kill -TERM "$spid" 2>/dev/null
	wait "$spid" 2>/dev/null
	PIDS=$(printf '%s' "$PIDS" | sed "s/ $spid\b//")
	eval "SLAPD_PID_$1="
}

lds() {
	sname=$1
	shift
	eval "sport=\$SLAPD_PORT_$sname"
	ldapsearch -x -LLL -o ldif-wrap=no -H "ldap://127.0.0.1:$sport/" -D "$LDAP_ROOT_DN" -w "$LDAP_ROOT_PW" "$@"
}

ldm() {
	sname=$1
	shift
	eval "sport=\$SLAPD_PORT_$sname"
	ldapmodify -x -H "ldap://127.0.0.1:$sport/" -D "$LDAP_ROOT_DN" -w "$LDAP_ROOT_PW" "$@"
}

# ldap_serials NAME MAIL: the serials (lowercase hex, no leading zeros) of
# the userCertificate;binary values of the entry with that mail, sorted.
ldap_serials() {
	lds "$1" -b "$LDAP_BASE" "(mail=$2)" 'userCertificate;binary' |
		sed -n 's/^userCertificate;binary:: //p' | while read -r b; do
			printf '%s' "$b" | base64 -d | openssl x509 -inform DER -noout -serial | sed 's/^serial=//'
		done | tr 'A-F' 'a-f' | sed 's/^0*//' | sort
}

# ldap_attr_file NAME DN ATTR FILE: the (first) binary value of ATTR of DN into FILE.
ldap_attr_file() {
	lds "$1" -b "$2" -s base "$3" | sed -n "s/^$3:: //p" | head -1 | base64 -d > "$4"
}

# wait_until SECONDS command...: until the command succeeds (1 if it never does).
wait_until() {
	wu_n=$(( $1 * 10 ))
	shift
	for _ in $(seq 1 "$wu_n"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# ldap_dump NAME: "address serial" for every userCertificate;binary value
# under the base, sorted (addresses lowercased).
ldap_dump() {
	lds "$1" -b "$LDAP_BASE" '(mail=*)' mail 'userCertificate;binary' | awk '
		/^dn: / { mail = "" }
		/^mail: / { mail = tolower($2) }
		/^userCertificate;binary:: / { print mail, $2 }' |
	while read -r m b; do
		s=$(printf '%s' "$b" | base64 -d | openssl x509 -inform DER -noout -serial | sed 's/^serial=//' |
			tr 'A-F' 'a-f' | sed 's/^0*//')
		printf '%s %s\n' "$m" "$s"
	done | sort
}
