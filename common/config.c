/*
 * config.c - kmsd.conf: the schema table, the loader and the refcounted
 * config object.
 *
 * The schema is data: one row per key with its type, default and bounds.
 * kms_config_load() starts from the defaults, applies the file through inih,
 * checks every value against its row and derives the paths that default to
 * places inside state_dir.  Any error names the file, the line and the key,
 * and no half-built config ever escapes: reload swaps only a valid one in.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "common/common.h"

enum cfg_type {
	T_STRING,       /* free text */
	T_PATH,         /* file system path, made absolute */
	T_INT,          /* integer in [min, max] */
	T_BOOL,         /* yes/no */
	T_SIZE,         /* bytes with K/M/G suffix, in [min, max] */
	T_DURATION,     /* seconds with s/m/h/d suffix, in [min, max] */
	T_CHOICE,       /* string out of a fixed list, kept as string */
	T_ENUM,         /* name out of a fixed list, kept as its number */
	T_LIST,         /* comma-separated items */
	T_MODE,         /* octal file mode in [min, max] */
};

struct enum_val {
	const char *name;
	long long value;
};

struct cfg_key {
	const char *section;
	const char *name;
	enum cfg_type type;
	const char *def;
	long long min, max;
	const char *const *choices;       /* T_CHOICE */
	const struct enum_val *enums;     /* T_ENUM */
	size_t offset;                    /* into struct kms_config */
	const char *help;
};

static const char *const ca_keys[] = { "rsa:3072", "rsa:4096", "ec:p384", NULL };
static const char *const user_keys[] = { "rsa:2048", "rsa:3072", "ec:p256", "ec:p384", NULL };
static const char *const krk_keys[] = { "rsa:3072", "rsa:4096", NULL };
static const char *const p12_formats[] = { "modern", "compat", NULL };
static const char *const ldap_binds[] = { "simple", "external", NULL };

static const struct enum_val levels[] = {
	{ "err", KMS_LOG_ERR }, { "error", KMS_LOG_ERR }, { "warning", KMS_LOG_WARNING },
	{ "notice", KMS_LOG_NOTICE },
	{ "info", KMS_LOG_INFO }, { "debug", KMS_LOG_DEBUG }, { NULL, 0 },
};
static const struct enum_val facilities[] = {
	{ "mail", LOG_MAIL }, { "daemon", LOG_DAEMON }, { "auth", LOG_AUTH },
	{ "local0", LOG_LOCAL0 }, { "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 },
	{ "local3", LOG_LOCAL3 }, { "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 },
	{ "local6", LOG_LOCAL6 }, { "local7", LOG_LOCAL7 }, { NULL, 0 },
};
static const struct enum_val actions[] = {
	{ "accept", KMS_ACT_ACCEPT }, { "warn", KMS_ACT_WARN }, { "reject", KMS_ACT_REJECT },
	{ "tempfail", KMS_ACT_TEMPFAIL }, { "quarantine", KMS_ACT_QUARANTINE }, { NULL, 0 },
};

#define DEFAULT_NOTICE \
	"WARNING: the certificate that signed this message has been revoked.\n" \
	"\n" \
	"Signer: %{signer}\n" \
	"Certificate serial: %{serial}\n" \
	"Revoked on: %{revoked_at}\n" \
	"Reason: %{reason}\n" \
	"The message %{signed_claim}.\n" \
	"\n" \
	"Do not trust that this message comes from the signer, and do not act on\n" \
	"it, until you have checked with the sender by another channel (phone,\n" \
	"in person).  If in doubt, forward it to your mail administrator.\n" \
	"The original message, with its signature, is attached unchanged."

#define OFF(f) offsetof(struct kms_config, f)
/* An error message about one key or line. */
#define CFG_ERR_MAX 512
/* The longest line inih reads whole (its buffer, less the NUL). */
#define CFG_MAX_LINE (INI_MAX_LINE - 1)
/* A Unix socket path must fit sun_path with its NUL (108 bytes on Linux). */
#define KMS_SUN_PATH_MAX ((int)sizeof(((struct sockaddr_un *)0)->sun_path))
#define INTMAX LLONG_MAX

static const struct cfg_key schema[] = {
	{ "kmsd", "state_dir", T_PATH, "./kmsd-state", 0, 0, NULL, NULL, OFF(kmsd.state_dir),
	  "directory for the store, sockets, pid file and published files" },
	{ "kmsd", "control_socket", T_PATH, "", 0, 0, NULL, NULL, OFF(kmsd.control_socket),
	  "control socket path (default <state_dir>/control.sock)" },
	{ "kmsd", "milter_socket", T_STRING, "", 0, 0, NULL, NULL, OFF(kmsd.milter_socket),
	  "unix:PATH or inet:PORT@HOST (default unix:<state_dir>/milter.sock)" },
	{ "kmsd", "milter_socket_mode", T_MODE, "0660", 0, 0777, NULL, NULL, OFF(kmsd.milter_socket_mode),
	  "permissions of a unix milter socket (the MTA must be able to write to it)" },
	{ "kmsd", "pid_file", T_PATH, "", 0, 0, NULL, NULL, OFF(kmsd.pid_file),
	  "pid file (default <state_dir>/kmsd.pid)" },
	{ "kmsd", "authserv_id", T_STRING, "", 0, 0, NULL, NULL, OFF(kmsd.authserv_id),
	  "authserv-id in Authentication-Results (default: host name)" },
	{ "kmsd", "user", T_STRING, "", 0, 0, NULL, NULL, OFF(kmsd.user),
	  "user to run as after start-up when started as root" },
	{ "kmsd", "group", T_STRING, "", 0, 0, NULL, NULL, OFF(kmsd.group),
	  "group to run as; also owns the control socket" },
	{ "kmsd", "max_control_clients", T_INT, "16", 2, 1024, NULL, NULL, OFF(kmsd.max_control_clients),
	  "concurrent control connections (the last one is kept for root and admins)" },
	{ "kmsd", "control_idle_timeout", T_DURATION, "300", 1, 86400, NULL, NULL, OFF(kmsd.control_idle_timeout),
	  "close an idle control connection after this long" },
	{ "kmsd", "control_request_timeout", T_DURATION, "30", 1, 3600, NULL, NULL, OFF(kmsd.control_request_timeout),
	  "a whole request line must arrive within this long of its first byte (and a reply be taken)" },
	{ "kmsd", "log_level", T_ENUM, "info", 0, 0, NULL, levels, OFF(kmsd.log_level),
	  "err, warning, info or debug" },
	{ "kmsd", "syslog_facility", T_ENUM, "mail", 0, 0, NULL, facilities, OFF(kmsd.syslog_facility),
	  "syslog facility" },

	{ "ca", "enabled", T_BOOL, "yes", 0, 0, NULL, NULL, OFF(ca.enabled),
	  "no on a milter-only replica" },
	{ "ca", "name", T_STRING, "kms-ca", 0, 0, NULL, NULL, OFF(ca.name),
	  "short name in published file names and URLs ([A-Za-z0-9._-])" },
	{ "ca", "organization", T_STRING, "", 0, 0, NULL, NULL, OFF(ca.organization),
	  "organisation name used by init when --org is not given" },
	{ "ca", "key", T_CHOICE, "rsa:3072", 0, 0, ca_keys, NULL, OFF(ca.key),
	  "CA key type" },
	{ "ca", "user_key", T_CHOICE, "rsa:2048", 0, 0, user_keys, NULL, OFF(ca.user_key),
	  "key type of enrolled users' key pairs" },
	{ "ca", "passphrase_file", T_PATH, "", 0, 0, NULL, NULL, OFF(ca.passphrase_file),
	  "file holding the CA key passphrase (default <state_dir>/ca-passphrase, made by init)" },
	{ "ca", "ca_validity_days", T_INT, "3650", 30, 9125, NULL, NULL, OFF(ca.ca_validity_days),
	  "validity of the CA certificate" },
	{ "ca", "user_validity_days", T_INT, "365", 1, 825, NULL, NULL, OFF(ca.user_validity_days),
	  "validity of user certificates (S/MIME BR cap: 825)" },
	{ "ca", "pkcs12_format", T_CHOICE, "modern", 0, 0, p12_formats, NULL, OFF(ca.pkcs12_format),
	  "modern (AES-256, PBKDF2, SHA-256 MAC) or compat (3DES, SHA-1 MAC; gpgsm 2.2)" },
	{ "ca", "pkcs12_iterations", T_INT, "10000", 1000, 10000000, NULL, NULL, OFF(ca.pkcs12_iterations),
	  "key derivation iterations in security files under an admin-given password" },
	{ "ca", "not_before_margin", T_DURATION, "300", 0, 86400, NULL, NULL, OFF(ca.not_before_margin),
	  "how far before the moment of issue certificates start (recipients whose clock is behind)" },

	{ "crl", "url", T_STRING, "", 0, 0, NULL, NULL, OFF(crl.url),
	  "CRL distribution point written into certificates (default http://<http listen>/crl/<name>.crl)" },
	{ "crl", "publish_dir", T_PATH, "", 0, 0, NULL, NULL, OFF(crl.publish_dir),
	  "where CRL files are written (default <state_dir>/crl)" },
	{ "crl", "next_update_hours", T_INT, "24", 1, 240, NULL, NULL, OFF(crl.next_update_hours),
	  "CRL validity (S/MIME BR cap: 10 days)" },
	{ "crl", "delta", T_BOOL, "no", 0, 0, NULL, NULL, OFF(crl.delta),
	  "also publish delta CRLs" },
	{ "crl", "external", T_LIST, "", 0, 0, NULL, NULL, OFF(crl.external),
	  "CRL files and http URLs of other trusted CAs" },
	{ "crl", "external_ca", T_PATH, "", 0, 0, NULL, NULL, OFF(crl.external_ca),
	  "PEM file of CAs trusted to sign the external CRLs (optional: else the trust set)" },
	{ "crl", "external_refresh", T_DURATION, "3600", 60, 604800, NULL, NULL, OFF(crl.external_refresh),
	  "how often external CRLs are fetched again" },
	{ "crl", "fetch", T_BOOL, "yes", 0, 0, NULL, NULL, OFF(crl.fetch),
	  "fetch the CRL distribution points of trusted certificates seen in mail" },
	{ "crl", "fetch_max_size", T_SIZE, "20M", 1024, 512LL * 1024 * 1024, NULL, NULL, OFF(crl.fetch_max_size),
	  "largest CRL fetched from a distribution point" },
	{ "crl", "fetch_timeout", T_DURATION, "30", 1, 600, NULL, NULL, OFF(crl.fetch_timeout),
	  "time allowed for one distribution point fetch" },
	{ "crl", "fetch_concurrency", T_INT, "4", 1, 64, NULL, NULL, OFF(crl.fetch_concurrency),
	  "distribution point fetches at once" },
	{ "crl", "fetch_max_sources", T_INT, "10000", 1, 1000000, NULL, NULL, OFF(crl.fetch_max_sources),
	  "most distribution points followed" },
	{ "crl", "source", T_STRING, "", 0, 0, NULL, NULL, OFF(crl.source),
	  "replica: the primary's CRL URL to follow" },
	{ "crl", "source_ca", T_PATH, "", 0, 0, NULL, NULL, OFF(crl.source_ca),
	  "replica: PEM file of the primary's CA certificate, to check its CRLs" },

	{ "crl", "ldap_url", T_STRING, "", 0, 0, NULL, NULL, OFF(crl.ldap_url),
	  "ldap:// URL of the CA entry's CRL, added to the distribution point of new certificates" },

	{ "ldap", "uri", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.uri),
	  "directory to publish to (ldap://, ldaps://, ldapi://); empty turns publishing off" },
	{ "ldap", "starttls", T_BOOL, "no", 0, 0, NULL, NULL, OFF(ldap.starttls),
	  "StartTLS on an ldap:// connection (certificate checked against ca_file)" },
	{ "ldap", "ca_file", T_PATH, "", 0, 0, NULL, NULL, OFF(ldap.ca_file),
	  "PEM file of the CAs that issued the directory server's TLS certificate" },
	{ "ldap", "bind_method", T_CHOICE, "simple", 0, 0, ldap_binds, NULL, OFF(ldap.bind_method),
	  "simple (bind_dn and bind_password_file) or external (SASL EXTERNAL, e.g. over ldapi://)" },
	{ "ldap", "bind_dn", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.bind_dn),
	  "DN to bind as (simple bind)" },
	{ "ldap", "bind_password_file", T_PATH, "", 0, 0, NULL, NULL, OFF(ldap.bind_password_file),
	  "file holding the bind password (first line)" },
	{ "ldap", "base_dn", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.base_dn),
	  "subtree searched for person entries" },
	{ "ldap", "user_filter", T_STRING, "(&(objectClass=inetOrgPerson)(mail=%s))", 0, 0, NULL, NULL,
	  OFF(ldap.user_filter), "filter finding a user's entry; %s is the address" },
	{ "ldap", "user_dn_template", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.user_dn_template),
	  "DN of a user's entry (%s address, %u local part) instead of searching" },
	{ "ldap", "people_dn", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.people_dn),
	  "where entries for users without one are made (default ou=people,<base_dn>)" },
	{ "ldap", "ca_dn", T_STRING, "", 0, 0, NULL, NULL, OFF(ldap.ca_dn),
	  "the CA entry (default cn=<ca name>,<base_dn>)" },
	{ "ldap", "timeout", T_DURATION, "10", 1, 300, NULL, NULL, OFF(ldap.timeout),
	  "longest wait for the server, per operation" },
	{ "ldap", "retry_max", T_DURATION, "300", 1, 86400, NULL, NULL, OFF(ldap.retry_max),
	  "longest back-off between delivery attempts while the directory fails" },

	{ "http", "listen", T_STRING, "127.0.0.1:8480", 0, 0, NULL, NULL, OFF(http.listen),
	  "HOST:PORT of the distribution point; empty disables it" },
	{ "http", "max_connections", T_INT, "512", 1, 10000, NULL, NULL, OFF(http.max_connections),
	  "concurrent HTTP connections (more wait in the listen queue)" },
	{ "http", "max_connections_per_client", T_INT, "32", 1, 10000, NULL, NULL, OFF(http.max_per_client),
	  "concurrent HTTP connections from one address (more are closed at once)" },
	{ "http", "threads", T_INT, "4", 1, 64, NULL, NULL, OFF(http.threads),
	  "threads serving HTTP, each over epoll" },
	{ "http", "request_timeout", T_DURATION, "10", 1, 300, NULL, NULL, OFF(http.request_timeout),
	  "a request (line, headers and body) must arrive within this long of the connection or the last answer" },
	{ "http", "idle_timeout", T_DURATION, "30", 1, 3600, NULL, NULL, OFF(http.idle_timeout),
	  "close a connection on which nothing moves for this long" },
	{ "http", "longpoll_timeout", T_DURATION, "30", 1, 300, NULL, NULL, OFF(http.longpoll_timeout),
	  "how long ?after= requests wait for a newer CRL" },
	{ "http", "max_longpolls", T_INT, "64", 1, 10000, NULL, NULL, OFF(http.max_longpolls),
	  "?after= requests waiting at once (more are answered 503)" },
	{ "http", "certs_endpoint", T_BOOL, "no", 0, 0, NULL, NULL, OFF(http.certs_endpoint),
	  "serve users' encryption certificates at /certs/<address> (anyone reaching the port can enumerate addresses)" },
	{ "http", "certs_rate", T_INT, "30", 1, 100000, NULL, NULL, OFF(http.certs_rate),
	  "/certs requests a minute per client address (IPv6: per /64)" },
	{ "http", "certs_clients", T_INT, "4096", 16, 1000000, NULL, NULL, OFF(http.certs_clients),
	  "client addresses the /certs rate table holds (the least recent gives way)" },

	{ "ocsp", "enabled", T_BOOL, "yes", 0, 0, NULL, NULL, OFF(ocsp.enabled),
	  "answer OCSP at /ocsp and name it (and the CA certificate) in new certificates' AIA" },
	{ "ocsp", "url", T_STRING, "", 0, 0, NULL, NULL, OFF(ocsp.url),
	  "OCSP responder URL written into certificates (default http://<http listen>/ocsp)" },
	{ "ocsp", "ca_issuers_url", T_STRING, "", 0, 0, NULL, NULL, OFF(ocsp.ca_issuers_url),
	  "CA certificate URL written into certificates (default http://<http listen>/ca/<name>.crt)" },
	{ "ocsp", "validity", T_DURATION, "3600", 300, 604800, NULL, NULL, OFF(ocsp.validity),
	  "how long a response is valid (nextUpdate - thisUpdate); clients cache it that long" },
	{ "ocsp", "signer_lifetime", T_DURATION, "604800", 14400, 7776000, NULL, NULL, OFF(ocsp.signer_lifetime),
	  "validity of the delegated OCSP signing certificate (renewed at half of it)" },
	{ "ocsp", "signer_key", T_CHOICE, "rsa:2048", 0, 0, user_keys, NULL, OFF(ocsp.signer_key),
	  "key type of the delegated OCSP signer" },
	{ "ocsp", "max_request_size", T_SIZE, "64K", 1024, 1024 * 1024, NULL, NULL, OFF(ocsp.max_request_size),
	  "largest OCSP request accepted" },
	{ "ocsp", "max_certids", T_INT, "100", 1, 10000, NULL, NULL, OFF(ocsp.max_certids),
	  "most certificates asked about in one OCSP request" },
	{ "ocsp", "cache_size", T_INT, "100000", 0, 10000000, NULL, NULL, OFF(ocsp.cache_size),
	  "pre-signed responses kept in memory" },
	{ "ocsp", "replica_keys", T_LIST, "", 0, 0, NULL, NULL, OFF(ocsp.replica_keys),
	  "primary: PEM public key files of replicas' OCSP signers, each issued a delegated signer" },
	{ "ocsp", "primary_url", T_STRING, "", 0, 0, NULL, NULL, OFF(ocsp.primary_url),
	  "replica: http://HOST:PORT of the primary, for its signer certificate (default from [crl] source)" },

	{ "escrow", "request_ttl", T_DURATION, "3600", 60, 604800, NULL, NULL, OFF(escrow.request_ttl),
	  "lifetime of a recovery request" },
	{ "escrow", "krk_key", T_CHOICE, "rsa:3072", 0, 0, krk_keys, NULL, OFF(escrow.krk_key),
	  "key-recovery key type" },
	{ "escrow", "shares", T_INT, "5", 2, 255, NULL, NULL, OFF(escrow.shares),
	  "number of key-recovery shares made by init" },
	{ "escrow", "threshold", T_INT, "3", 2, 255, NULL, NULL, OFF(escrow.threshold),
	  "shares needed to recover" },
	{ "escrow", "share_dir", T_PATH, "", 0, 0, NULL, NULL, OFF(escrow.share_dir),
	  "where init writes share files (default <state_dir>/recovery-shares)" },

	{ "milter", "max_memory", T_SIZE, "1M", 64 * 1024, 1024LL * 1024 * 1024, NULL, NULL, OFF(milter.max_memory),
	  "message bytes kept in memory before spilling to a temp file" },
	{ "milter", "max_message_size", T_SIZE, "50M", 1024 * 1024, 2048LL * 1024 * 1024, NULL, NULL, OFF(milter.max_message_size),
	  "larger messages are not checked (verdict error)" },
	{ "milter", "trust_file", T_PATH, "", 0, 0, NULL, NULL, OFF(milter.trust_file),
	  "PEM file of extra trust anchors for signatures" },
	{ "milter", "trust_dir", T_PATH, "", 0, 0, NULL, NULL, OFF(milter.trust_dir),
	  "directory of PEM files of extra trust anchors (every *.pem and *.crt)" },
	{ "milter", "use_system_store", T_BOOL, "no", 0, 0, NULL, NULL, OFF(milter.use_system_store),
	  "also trust the system's CA store (OpenSSL's default paths)" },
	{ "milter", "intermediates_file", T_PATH, "", 0, 0, NULL, NULL, OFF(milter.intermediates_file),
	  "PEM file of intermediate CA certificates for chains and CRLs (not trusted by themselves)" },
	{ "milter", "tempdir", T_PATH, "", 0, 0, NULL, NULL, OFF(milter.tempdir),
	  "directory for spilled message bodies (default <state_dir>)" },
	{ "milter", "max_headers", T_INT, "1000", 10, 100000, NULL, NULL, OFF(milter.max_headers),
	  "header fields per message" },
	{ "milter", "max_parts", T_INT, "1000", 10, 100000, NULL, NULL, OFF(milter.max_parts),
	  "MIME parts examined per message" },
	{ "milter", "max_depth", T_INT, "32", 2, 256, NULL, NULL, OFF(milter.max_depth),
	  "MIME nesting examined per message" },

	{ "policy", "on_pass", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_pass), "action for a good signature" },
	{ "policy", "on_fail", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_fail), "action for a broken signature" },
	{ "policy", "on_revoked", T_ENUM, "warn", 0, 0, NULL, actions, OFF(policy.on_revoked), "action for a revoked signer" },
	{ "policy", "on_expired", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_expired), "action for an expired signer" },
	{ "policy", "on_untrusted", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_untrusted), "action for an unknown CA" },
	{ "policy", "on_mismatch", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_mismatch), "action when From is not the signer" },
	{ "policy", "on_partial", T_ENUM, "warn", 0, 0, NULL, actions, OFF(policy.on_partial),
	  "action when a good signature does not cover the whole message" },
	{ "policy", "on_encrypted", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_encrypted), "action for encrypted mail" },
	{ "policy", "on_none", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_none), "action for unsigned mail" },
	{ "policy", "on_error", T_ENUM, "tempfail", 0, 0, NULL, actions, OFF(policy.on_error), "action on internal errors" },
	{ "policy", "on_revocation_unknown", T_ENUM, "accept", 0, 0, NULL, actions, OFF(policy.on_revocation_unknown),
	  "action for a good signature whose revocation status is unknown (no current CRL)" },
	{ "policy", "revocation_unknown_wait", T_DURATION, "15m", 0, 86400, NULL, NULL,
	  OFF(policy.revocation_unknown_wait), "with on_revocation_unknown = tempfail: how long the first fetch may take" },
	{ "policy", "subject_tag", T_STRING, "[REVOKED SENDER]", 0, 0, NULL, NULL, OFF(policy.subject_tag),
	  "subject prefix added by warn" },
	{ "policy", "notice", T_STRING, DEFAULT_NOTICE, 0, 0, NULL, NULL, OFF(policy.notice),
	  "text of the notice added by warn; continue lines with leading spaces" },

	{ "audit", "checkpoint_rows", T_INT, "100", 1, 1000000, NULL, NULL, OFF(audit.checkpoint_rows),
	  "sign an audit checkpoint after this many new audit rows" },
	{ "audit", "checkpoint_interval", T_DURATION, "600", 1, 86400, NULL, NULL, OFF(audit.checkpoint_interval),
	  "and at least this often while there are rows no checkpoint signs" },
	{ "audit", "signer_lifetime", T_DURATION, "2592000", 86400, 7776000, NULL, NULL, OFF(audit.signer_lifetime),
	  "validity of the audit signer's certificate (renewed at half of it)" },
	{ "audit", "signer_key", T_CHOICE, "ec:p256", 0, 0, user_keys, NULL, OFF(audit.signer_key),
	  "key type of the audit signer" },
	{ "roles", "admin", T_LIST, "root, self", 0, 0, NULL, NULL, OFF(roles.admin),
	  "users, uids and @groups allowed to run the CA" },
	{ "roles", "officer", T_LIST, "", 0, 0, NULL, NULL, OFF(roles.officer),
	  "key-recovery officers" },
	{ "roles", "compliance", T_LIST, "", 0, 0, NULL, NULL, OFF(roles.compliance),
	  "compliance officers (recovery requests, archive decryption)" },
	{ "roles", "auditor", T_LIST, "root, self", 0, 0, NULL, NULL, OFF(roles.auditor),
	  "readers of the audit trail" },
};

#define NKEYS (sizeof(schema) / sizeof(schema[0]))

static char *base_dir;

void
kms_config_set_basedir(const char *dir)
{
	free(base_dir);
	base_dir = dir ? strdup(dir) : NULL;
}

struct load_state {
	struct kms_config *cfg;
	const char *file;
	int line;               /* line the reader last returned */
	int continuation;       /* that line started with white space */
	int toolong;            /* a line did not fit inih's buffer */
	unsigned char seen[NKEYS];
	const struct cfg_key *last_key;
	char err[CFG_ERR_MAX];
	FILE *fp;
};

static char **
field_str(struct kms_config *cfg, const struct cfg_key *k)
{
	return (char **)((char *)cfg + k->offset);
}

static long long *
field_ll(struct kms_config *cfg, const struct cfg_key *k)
{
	return (long long *)((char *)cfg + k->offset);
}

static int *
field_int(struct kms_config *cfg, const struct cfg_key *k)
{
	return (int *)((char *)cfg + k->offset);
}

int
kms_parse_duration(const char *s, long long *out)
{
	char *end;
	long long v, mult = 1;

	if (s == NULL || *s == '\0' || !isdigit((unsigned char)*s))
		return KMS_ERR_INVALID;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0)
		return KMS_ERR_INVALID;
	if (*end != '\0') {
		switch (*end) {
		case 's': mult = 1; break;
		case 'm': mult = 60; break;
		case 'h': mult = 3600; break;
		case 'd': mult = 86400; break;
		default: return KMS_ERR_INVALID;
		}
		if (end[1] != '\0')
			return KMS_ERR_INVALID;
	}
	if (v > LLONG_MAX / mult)
		return KMS_ERR_INVALID;
	*out = v * mult;
	return 0;
}

int
kms_parse_size(const char *s, long long *out)
{
	char *end;
	long long v, mult = 1;

	if (s == NULL || *s == '\0' || !isdigit((unsigned char)*s))
		return KMS_ERR_INVALID;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0)
		return KMS_ERR_INVALID;
	if (*end != '\0') {
		switch (toupper((unsigned char)*end)) {
		case 'K': mult = 1024; break;
		case 'M': mult = 1024 * 1024; break;
		case 'G': mult = 1024LL * 1024 * 1024; break;
		default: return KMS_ERR_INVALID;
		}
		if (end[1] != '\0' && !(toupper((unsigned char)end[1]) == 'B' && end[2] == '\0'))
			return KMS_ERR_INVALID;
	}
	if (v > LLONG_MAX / mult)
		return KMS_ERR_INVALID;
	*out = v * mult;
	return 0;
}

static int
parse_bool(const char *s, int *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1", NULL };
	static const char *const no[] = { "no", "false", "off", "0", NULL };

	for (int i = 0; yes[i]; i++)
		if (strcasecmp(s, yes[i]) == 0)
			return *out = 1, 0;
	for (int i = 0; no[i]; i++)
		if (strcasecmp(s, no[i]) == 0)
			return *out = 0, 0;
	return KMS_ERR_INVALID;
}

static char *
make_absolute(const char *p)
{
	char cwd[PATH_MAX];
	const char *base = base_dir;

	if (p[0] == '\0' || p[0] == '/')
		return strdup(p);
	if (base == NULL) {
		if (getcwd(cwd, sizeof(cwd)) == NULL)
			return strdup(p);
		base = cwd;
	}
	if (p[0] == '.' && p[1] == '/')
		p += 2;
	return kms_path_join(base, p);
}

static void
range_text(const struct cfg_key *k, char *buf, size_t len)
{
	switch (k->type) {
	case T_INT:
		snprintf(buf, len, "an integer from %lld to %lld", k->min, k->max);
		break;
	case T_SIZE:
		snprintf(buf, len, "a size from %lld to %lld bytes (K, M, G suffixes)", k->min, k->max);
		break;
	case T_DURATION:
		snprintf(buf, len, "a duration from %lld to %lld seconds (s, m, h, d suffixes)", k->min, k->max);
		break;
	case T_BOOL:
		snprintf(buf, len, "yes or no");
		break;
	case T_MODE:
		snprintf(buf, len, "an octal mode from %04llo to %04llo", k->min, k->max);
		break;
	case T_CHOICE: {
		size_t o = 0;

		o += snprintf(buf + o, len - o, "one of");
		for (int i = 0; k->choices[i] && o < len; i++)
			o += snprintf(buf + o, len - o, "%s %s", i ? "," : "", k->choices[i]);
		break;
	}
	case T_ENUM: {
		size_t o = 0;

		o += snprintf(buf + o, len - o, "one of");
		for (int i = 0; k->enums[i].name && o < len; i++)
			o += snprintf(buf + o, len - o, "%s %s", i ? "," : "", k->enums[i].name);
		break;
	}
	default:
		snprintf(buf, len, "text");
	}
}

/* Parse value for key k into cfg; on error write a message into err. */
/* A copy of value (made absolute for a path) in k's string field. */
static int
set_string(struct kms_config *cfg, const struct cfg_key *k, const char *value)
{
	char *dup = k->type == T_PATH ? make_absolute(value) : strdup(value);

	if (dup == NULL)
		return KMS_ERR_NOMEM;
	free(*field_str(cfg, k));
	*field_str(cfg, k) = dup;
	return 0;
}

/* A number of k's type (INT, MODE in octal, SIZE, DURATION) within its bounds: 1 with *v, else 0. */
static int
parse_number(const struct cfg_key *k, const char *value, long long *v)
{
	char *end;
	int ok;

	switch (k->type) {
	case T_INT:
	case T_MODE:
		errno = 0;
		*v = strtoll(value, &end, k->type == T_MODE ? 8 : 10);
		ok = errno == 0 && end != value && *end == '\0';
		break;
	case T_SIZE:
		ok = kms_parse_size(value, v) == 0;
		break;
	case T_DURATION:
		ok = kms_parse_duration(value, v) == 0;
		break;
	default:
		return 0;
	}
	return ok && *v >= k->min && *v <= k->max;
}

static int
set_value(struct kms_config *cfg, const struct cfg_key *k, const char *value, char *err, size_t errlen)
{
	long long v = 0;
	char range[256];
	int b;

	switch (k->type) {
	case T_STRING:
	case T_LIST:
	case T_PATH:
		return set_string(cfg, k, value);
	case T_BOOL:
		if (parse_bool(value, &b) == 0) {
			*field_int(cfg, k) = b;
			return 0;
		}
		break;
	case T_INT:
	case T_MODE:
	case T_SIZE:
	case T_DURATION:
		if (parse_number(k, value, &v)) {
			*field_ll(cfg, k) = v;
			return 0;
		}
		break;
	case T_CHOICE:
		for (int i = 0; k->choices[i]; i++)
			if (strcmp(value, k->choices[i]) == 0)
				return set_string(cfg, k, value);
		break;
	case T_ENUM:
		for (int i = 0; k->enums[i].name; i++) {
			if (strcasecmp(value, k->enums[i].name) == 0) {
				*field_ll(cfg, k) = k->enums[i].value;
				return 0;
			}
		}
		break;
	}
	range_text(k, range, sizeof(range));
	snprintf(err, errlen, "bad value \"%.64s\" for %s: expected %s", value, k->name, range);
	return KMS_ERR_CONFIG;
}

static const struct cfg_key *
find_key(const char *section, const char *name, size_t *idx)
{
	for (size_t i = 0; i < NKEYS; i++) {
		if (strcmp(schema[i].section, section) == 0 && strcmp(schema[i].name, name) == 0) {
			*idx = i;
			return &schema[i];
		}
	}
	return NULL;
}

static int
section_known(const char *section)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(schema[i].section, section) == 0)
			return 1;
	return 0;
}

/* inih handler: 1 to go on, 0 marks this line as the error line. */
static int
cfg_handler(void *user, const char *section, const char *name, const char *value)
{
	struct load_state *ls = user;
	const struct cfg_key *k;
	size_t idx;
	char err[CFG_ERR_MAX];

	if (ls->err[0] != '\0')
		return 1;       /* report only the first error */
	if (ls->toolong) {
		snprintf(ls->err, sizeof(ls->err), "%s:%d: line too long (at most %d characters; "
		    "continue long values on indented lines)", ls->file, ls->line, CFG_MAX_LINE);
		return 0;
	}
	if (!section_known(section)) {
		snprintf(ls->err, sizeof(ls->err), "%s:%d: unknown section [%.64s]", ls->file, ls->line, section);
		return 0;
	}
	k = find_key(section, name, &idx);
	if (k == NULL) {
		snprintf(ls->err, sizeof(ls->err), "%s:%d: unknown key \"%.64s\" in [%s]",
		    ls->file, ls->line, name, section);
		return 0;
	}
	if (ls->continuation && ls->last_key == k && (k->type == T_STRING || k->type == T_LIST)) {
		/* Continuation line of a multi-line value: append it. */
		char **f = field_str(ls->cfg, k);
		size_t a = strlen(*f), b = strlen(value);
		char *n = malloc(a + b + 2);

		if (n == NULL)
			return 0;
		memcpy(n, *f, a);
		n[a] = k->type == T_LIST ? ',' : '\n';
		memcpy(n + a + 1, value, b + 1);
		free(*f);
		*f = n;
		return 1;
	}
	if (ls->seen[idx]) {
		snprintf(ls->err, sizeof(ls->err), "%s:%d: key \"%s\" in [%s] given twice",
		    ls->file, ls->line, name, section);
		return 0;
	}
	ls->seen[idx] = 1;
	ls->last_key = k;
	if (set_value(ls->cfg, k, value, err, sizeof(err)) != 0) {
		snprintf(ls->err, sizeof(ls->err), "%s:%d: [%s] %s", ls->file, ls->line, section, err);
		return 0;
	}
	return 1;
}

/* inih reader: like fgets, but counts lines and notices overlong ones. */
static char *
cfg_reader(char *str, int num, void *stream)
{
	struct load_state *ls = stream;
	size_t len;

	if (fgets(str, num, ls->fp) == NULL)
		return NULL;
	len = strlen(str);
	ls->line++;
	ls->continuation = (str[0] == ' ' || str[0] == '\t');
	if (len > 0 && str[len - 1] != '\n' && !feof(ls->fp)) {
		int c;

		ls->toolong = 1;
		while ((c = fgetc(ls->fp)) != EOF && c != '\n')
			;
	}
	return str;
}

static void
config_free(struct kms_config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < NKEYS; i++) {
		switch (schema[i].type) {
		case T_STRING: case T_PATH: case T_CHOICE: case T_LIST:
			free(*field_str(cfg, &schema[i]));
			break;
		default:
			break;
		}
	}
	free(cfg->file);
	free(cfg);
}

static int
set_default_path(char **field, const char *dir, const char *name)
{
	if (*field != NULL && (*field)[0] != '\0')
		return 0;
	free(*field);
	*field = kms_path_join(dir, name);
	return *field ? 0 : KMS_ERR_NOMEM;
}

static int
valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
			return 0;
	return s[0] != '.';
}

static int
valid_milter_socket(const char *s)
{
	const char *p;
	char *end;
	long port;

	if (strncmp(s, "unix:", 5) == 0 || strncmp(s, "local:", 6) == 0)
		return s[strcspn(s, ":") + 1] == '/';
	if (strncmp(s, "inet:", 5) == 0)
		p = s + 5;
	else if (strncmp(s, "inet6:", 6) == 0)
		p = s + 6;
	else
		return 0;
	port = strtol(p, &end, 10);
	return end != p && port > 0 && port < 65536 && (*end == '\0' || (*end == '@' && end[1] != '\0'));
}

/* "PREFIX<value>" into *field when it is empty. */
static int
set_default_dn(char **field, const char *prefix, const char *value)
{
	size_t n;

	if ((*field)[0] != '\0')
		return 0;
	n = strlen(prefix) + strlen(value) + 1;
	free(*field);
	if ((*field = malloc(n)) == NULL)
		return KMS_ERR_NOMEM;
	snprintf(*field, n, "%s%s", prefix, value);
	return 0;
}

/* [ldap]: off unless uri is set; then the keys it needs and the derived DNs. */
static int
derive_ldap(struct kms_config *cfg, const char *where, char *err, size_t errlen)
{
	char prefix[80];

	if (cfg->ldap.uri[0] == '\0')
		return 0;
	if (strncmp(cfg->ldap.uri, "ldap://", 7) != 0 && strncmp(cfg->ldap.uri, "ldaps://", 8) != 0 &&
	    strncmp(cfg->ldap.uri, "ldapi://", 8) != 0) {
		snprintf(err, errlen, "%s: [ldap] uri must be an ldap://, ldaps:// or ldapi:// URI", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->ldap.starttls && strncmp(cfg->ldap.uri, "ldap://", 7) != 0) {
		snprintf(err, errlen, "%s: [ldap] starttls is for ldap:// URIs only", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->ldap.base_dn[0] == '\0') {
		snprintf(err, errlen, "%s: [ldap] base_dn is needed with [ldap] uri", where);
		return KMS_ERR_CONFIG;
	}
	if (strcmp(cfg->ldap.bind_method, "simple") == 0 && cfg->ldap.bind_dn[0] != '\0' &&
	    cfg->ldap.bind_password_file[0] == '\0') {
		snprintf(err, errlen, "%s: [ldap] bind_dn needs bind_password_file", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->ldap.user_dn_template[0] == '\0' && strstr(cfg->ldap.user_filter, "%s") == NULL) {
		snprintf(err, errlen, "%s: [ldap] user_filter must contain %%s (the address)", where);
		return KMS_ERR_CONFIG;
	}
	snprintf(prefix, sizeof(prefix), "cn=%s,", cfg->ca.name);
	if (set_default_dn(&cfg->ldap.people_dn, "ou=people,", cfg->ldap.base_dn) != 0 ||
	    set_default_dn(&cfg->ldap.ca_dn, prefix, cfg->ldap.base_dn) != 0)
		return KMS_ERR_NOMEM;
	return 0;
}

/* "unix:STATE_DIR/milter.sock" when milter_socket is empty; otherwise it must be unix:/PATH or inet:PORT@HOST. */
static int
derive_milter_socket(struct kms_config *cfg, const char *where, char *err, size_t errlen)
{
	struct kms_buf b;
	char *p;
	int rc;

	if (cfg->kmsd.milter_socket[0] != '\0') {
		if (valid_milter_socket(cfg->kmsd.milter_socket))
			return 0;
		snprintf(err, errlen, "%s: [kmsd] milter_socket \"%.64s\" is not unix:/PATH or inet:PORT@HOST",
		    where, cfg->kmsd.milter_socket);
		return KMS_ERR_CONFIG;
	}
	if ((p = kms_path_join(cfg->kmsd.state_dir, "milter.sock")) == NULL)
		return KMS_ERR_NOMEM;
	kms_buf_init(&b, SIZE_MAX);
	rc = kms_buf_appendf(&b, "unix:%s", p);
	free(p);
	if (rc != 0) {
		kms_buf_free(&b);
		return KMS_ERR_NOMEM;
	}
	free(cfg->kmsd.milter_socket);
	cfg->kmsd.milter_socket = kms_buf_steal(&b, NULL);
	return cfg->kmsd.milter_socket != NULL ? 0 : KMS_ERR_NOMEM;
}

/* [kmsd]: paths under state_dir, the sockets, authserv_id (the host name by default). */
static int
derive_kmsd(struct kms_config *cfg, const char *where, char *err, size_t errlen)
{
	char host[HOST_NAME_MAX + 1];
	int rc;

	if (cfg->kmsd.state_dir[0] == '\0') {
		snprintf(err, errlen, "%s: [kmsd] state_dir must not be empty", where);
		return KMS_ERR_CONFIG;
	}
	if (set_default_path(&cfg->kmsd.control_socket, cfg->kmsd.state_dir, "control.sock") ||
	    set_default_path(&cfg->kmsd.pid_file, cfg->kmsd.state_dir, "kmsd.pid") ||
	    set_default_path(&cfg->ca.passphrase_file, cfg->kmsd.state_dir, "ca-passphrase") ||
	    set_default_path(&cfg->crl.publish_dir, cfg->kmsd.state_dir, "crl") ||
	    set_default_path(&cfg->escrow.share_dir, cfg->kmsd.state_dir, "recovery-shares") ||
	    set_default_path(&cfg->milter.tempdir, cfg->kmsd.state_dir, ""))
		return KMS_ERR_NOMEM;
	if (strlen(cfg->kmsd.control_socket) >= KMS_SUN_PATH_MAX) {
		snprintf(err, errlen, "%s: [kmsd] control_socket path is longer than a socket address allows (%d)",
		    where, KMS_SUN_PATH_MAX - 1);
		return KMS_ERR_CONFIG;
	}
	if ((rc = derive_milter_socket(cfg, where, err, errlen)) != 0)
		return rc;
	if (cfg->kmsd.authserv_id[0] == '\0') {
		if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		free(cfg->kmsd.authserv_id);
		if ((cfg->kmsd.authserv_id = strdup(host)) == NULL)
			return KMS_ERR_NOMEM;
	}
	for (const char *p = cfg->kmsd.authserv_id; *p; p++) {
		if (!isgraph((unsigned char)*p) || *p == ';' || *p == '(' || *p == ')') {
			snprintf(err, errlen, "%s: [kmsd] authserv_id must be a token (no spaces, ';' or parentheses)", where);
			return KMS_ERR_CONFIG;
		}
	}
	return 0;
}

static int
is_http_url(const char *s)
{
	return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

/* [ca] name, [crl] url (from [http] listen by default) and source, [http] listen. */
static int
derive_crl(struct kms_config *cfg, const char *where, char *err, size_t errlen)
{
	if (!valid_name(cfg->ca.name)) {
		snprintf(err, errlen, "%s: [ca] name \"%.64s\" must be 1-64 of A-Z a-z 0-9 . _ -", where, cfg->ca.name);
		return KMS_ERR_CONFIG;
	}
	if (cfg->crl.url[0] == '\0' && cfg->http.listen[0] != '\0') {
		struct kms_buf b;

		kms_buf_init(&b, SIZE_MAX);
		if (kms_buf_appendf(&b, "http://%s/crl/%s.crl", cfg->http.listen, cfg->ca.name) != 0) {
			kms_buf_free(&b);
			return KMS_ERR_NOMEM;
		}
		free(cfg->crl.url);
		if ((cfg->crl.url = kms_buf_steal(&b, NULL)) == NULL)
			return KMS_ERR_NOMEM;
	}
	if (cfg->ocsp.url[0] == '\0' && cfg->http.listen[0] != '\0') {
		struct kms_buf b;

		kms_buf_init(&b, SIZE_MAX);
		if (kms_buf_appendf(&b, "http://%s/ocsp", cfg->http.listen) != 0) {
			kms_buf_free(&b);
			return KMS_ERR_NOMEM;
		}
		free(cfg->ocsp.url);
		if ((cfg->ocsp.url = kms_buf_steal(&b, NULL)) == NULL)
			return KMS_ERR_NOMEM;
	}
	if (cfg->ocsp.ca_issuers_url[0] == '\0' && cfg->http.listen[0] != '\0') {
		struct kms_buf b;

		kms_buf_init(&b, SIZE_MAX);
		if (kms_buf_appendf(&b, "http://%s/ca/%s.crt", cfg->http.listen, cfg->ca.name) != 0) {
			kms_buf_free(&b);
			return KMS_ERR_NOMEM;
		}
		free(cfg->ocsp.ca_issuers_url);
		if ((cfg->ocsp.ca_issuers_url = kms_buf_steal(&b, NULL)) == NULL)
			return KMS_ERR_NOMEM;
	}
	if ((cfg->ocsp.url[0] != '\0' && strncmp(cfg->ocsp.url, "http://", 7) != 0) ||
	    (cfg->ocsp.ca_issuers_url[0] != '\0' && strncmp(cfg->ocsp.ca_issuers_url, "http://", 7) != 0)) {
		/* RFC 5019 5 / RFC 5280 4.2.2.1: plain HTTP, so that no client needs OCSP to check the TLS of OCSP. */
		snprintf(err, errlen, "%s: [ocsp] url and ca_issuers_url must be http:// URLs", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->ocsp.signer_lifetime < 4 * cfg->ocsp.validity) {
		snprintf(err, errlen, "%s: [ocsp] signer_lifetime must be at least 4 times validity (a response "
		    "must not outlive the certificate that signed it)", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->crl.url[0] != '\0' && !is_http_url(cfg->crl.url)) {
		snprintf(err, errlen, "%s: [crl] url must be an http:// or https:// URL", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->crl.ldap_url[0] != '\0' && strncmp(cfg->crl.ldap_url, "ldap://", 7) != 0) {
		snprintf(err, errlen, "%s: [crl] ldap_url must be an ldap:// URL", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->crl.source[0] != '\0' && cfg->crl.source_ca[0] == '\0') {
		snprintf(err, errlen, "%s: [crl] source needs [crl] source_ca (the primary's CA certificate)", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->crl.source[0] != '\0' && !is_http_url(cfg->crl.source)) {
		snprintf(err, errlen, "%s: [crl] source must be an http:// or https:// URL", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->http.listen[0] != '\0') {
		const char *colon = strrchr(cfg->http.listen, ':');
		char *end;
		long port = colon ? strtol(colon + 1, &end, 10) : 0;

		if (colon == NULL || colon == cfg->http.listen || port <= 0 || port > 65535 || *end != '\0') {
			snprintf(err, errlen, "%s: [http] listen \"%.64s\" is not HOST:PORT", where, cfg->http.listen);
			return KMS_ERR_CONFIG;
		}
	}
	return 0;
}

/* Fill what defaults to other keys, and check what one key cannot check alone. */
/* Fill the defaults that depend on other keys and check cross-key rules. */
static int
derive(struct kms_config *cfg, const char *file, char *err, size_t errlen)
{
	const char *where = file ? file : "built-in defaults";
	int rc;

	if ((rc = derive_kmsd(cfg, where, err, errlen)) != 0 || (rc = derive_crl(cfg, where, err, errlen)) != 0 ||
	    (rc = derive_ldap(cfg, where, err, errlen)) != 0)
		return rc;
	if (cfg->escrow.threshold > cfg->escrow.shares) {
		snprintf(err, errlen, "%s: [escrow] threshold (%lld) is larger than shares (%lld)",
		    where, cfg->escrow.threshold, cfg->escrow.shares);
		return KMS_ERR_CONFIG;
	}
	if (cfg->policy.on_error == KMS_ACT_WARN || cfg->policy.on_error == KMS_ACT_QUARANTINE) {
		snprintf(err, errlen, "%s: [policy] on_error must be tempfail, reject or accept", where);
		return KMS_ERR_CONFIG;
	}
	if (cfg->milter.max_memory > cfg->milter.max_message_size) {
		snprintf(err, errlen, "%s: [milter] max_memory is larger than max_message_size", where);
		return KMS_ERR_CONFIG;
	}
	return 0;
}

int
kms_config_load(const char *path, struct kms_config **out)
{
	struct load_state ls;
	struct kms_config *cfg;
	int rc, r;

	*out = NULL;
	memset(&ls, 0, sizeof(ls));
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		return KMS_ERR_NOMEM;
	cfg->refs = 1;
	for (size_t i = 0; i < NKEYS; i++) {
		char err[CFG_ERR_MAX];

		if (set_value(cfg, &schema[i], schema[i].def, err, sizeof(err)) != 0) {
			rc = kms_fail(KMS_ERR_CONFIG, "built-in default: %s", err);
			goto out;
		}
	}
	if (path != NULL) {
		cfg->file = make_absolute(path);
		ls.fp = fopen(path, "r");
		if (ls.fp == NULL) {
			rc = kms_fail(KMS_ERR_CONFIG, "%s: cannot open: %s", path, strerror(errno));
			goto out;
		}
		ls.cfg = cfg;
		ls.file = path;
		r = ini_parse_stream(cfg_reader, &ls, cfg_handler, &ls);
		fclose(ls.fp);
		if (ls.err[0] != '\0') {
			rc = kms_fail(KMS_ERR_CONFIG, "%s", ls.err);
			goto out;
		}
		if (r != 0) {
			rc = kms_fail(KMS_ERR_CONFIG, "%s:%d: syntax error (expected [section] or key = value)",
			    path, r > 0 ? r : 0);
			goto out;
		}
	}
	{
		char err[CFG_ERR_MAX];

		if ((r = derive(cfg, path, err, sizeof(err))) != 0) {
			rc = r == KMS_ERR_NOMEM ? kms_fail(r, "out of memory") : kms_fail(r, "%s", err);
			goto out;
		}
	}
	*out = cfg;
	cfg = NULL;
	rc = 0;
out:
	config_free(cfg);
	return rc;
}

struct kms_config *
kms_config_ref(struct kms_config *cfg)
{
	if (cfg)
		__atomic_add_fetch(&cfg->refs, 1, __ATOMIC_SEQ_CST);
	return cfg;
}

void
kms_config_unref(struct kms_config *cfg)
{
	if (cfg && __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_SEQ_CST) == 0)
		config_free(cfg);
}

const char *
kms_action_name(int action)
{
	for (int i = 0; actions[i].name; i++)
		if (actions[i].value == action)
			return actions[i].name;
	return "accept";
}

void
kms_config_dump_schema(FILE *fp)
{
	const char *section = "";

	for (size_t i = 0; i < NKEYS; i++) {
		const struct cfg_key *k = &schema[i];
		char range[256];

		if (strcmp(section, k->section) != 0) {
			fprintf(fp, "%s[%s]\n", i ? "\n" : "", k->section);
			section = k->section;
		}
		range_text(k, range, sizeof(range));
		fprintf(fp, "%-22s %s; default \"%s\"; %s\n", k->name, range,
		    strchr(k->def, '\n') ? "(multi-line text)" : k->def, k->help);
	}
}

char **
kms_split_list(const char *s)
{
	size_t n = 1, i = 0;
	char **v;
	const char *p = s;

	for (const char *q = s; *q; q++)
		if (*q == ',')
			n++;
	v = calloc(n + 1, sizeof(*v));
	if (v == NULL)
		return NULL;
	while (*p) {
		const char *e = p + strcspn(p, ",");
		const char *a = p, *b = e;

		while (a < b && isspace((unsigned char)*a))
			a++;
		while (b > a && isspace((unsigned char)b[-1]))
			b--;
		if (b > a) {
			v[i] = strndup(a, (size_t)(b - a));
			if (v[i] == NULL) {
				kms_strv_free(v);
				return NULL;
			}
			i++;
		}
		p = *e ? e + 1 : e;
	}
	return v;
}

void
kms_strv_free(char **v)
{
	if (v == NULL)
		return;
	for (size_t i = 0; v[i]; i++)
		free(v[i]);
	free(v);
}
