/*
 * common.h - the public header of libkmscommon: helpers shared by two or more
 * smime-kms modules.
 *
 *   errors     KMS_ERR_* codes, kms_strerror(), a per-thread detail message
 *   logging    kms_log() to syslog (and stderr in the foreground)
 *   text       the sanitizer for log and header text, the address validator
 *   buffer     the growable buffer (struct kms_buf) and array growth
 *   config     the kmsd.conf schema, loader and refcounted config object
 *   store      the SQLite store: open, migrate, integrity check, transactions
 *   audit      the tamper-evident audit chain kept in the store
 *   protocol   control-socket framing (JSON lines, 1 MiB bound) and replies
 *   files      exclusive and atomic file writes, bounded reads
 *   secrets    wiping, locked memory, core dumps off
 *   encoding   hex, base64, time stamps, random passwords
 *
 * Functions that can fail return 0 or a negative KMS_ERR_* code and leave a
 * human-readable detail in kms_last_error() (per thread).  Output pointers are
 * set to NULL on entry and filled only on success.
 */
#ifndef KMS_H
#define KMS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>
#include <sqlite3.h>

/* ------------------------------------------------------------------ errors */

enum kms_err {
	KMS_OK = 0,
	KMS_ERR_NOMEM = -1,     /* out of memory */
	KMS_ERR_IO = -2,        /* file or socket I/O failed */
	KMS_ERR_INVALID = -3,   /* bad argument or malformed input */
	KMS_ERR_CRYPTO = -4,    /* an OpenSSL operation failed */
	KMS_ERR_DB = -5,        /* the SQLite store failed */
	KMS_ERR_NOTFOUND = -6,  /* no such object */
	KMS_ERR_EXISTS = -7,    /* object already exists */
	KMS_ERR_TOOBIG = -8,    /* input over its bound */
	KMS_ERR_CORRUPT = -9,   /* stored or supplied data fails its checks */
	KMS_ERR_PERM = -10,     /* not allowed */
	KMS_ERR_STATE = -11,    /* wrong state for this operation */
	KMS_ERR_CONFIG = -12,   /* configuration error */
	KMS_ERR_TIMEOUT = -13,  /* timed out */
	KMS_ERR_PROTO = -14,    /* protocol violation by the peer */
	KMS_ERR_EXPIRED = -15,  /* request or object expired */
};

/* Static text for a KMS_ERR_* code. */
const char *kms_strerror(int err);
/* Record a printf-style detail for the current thread and return err. */
int kms_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like kms_fail() but appends the drained OpenSSL error queue. */
int kms_fail_openssl(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The detail recorded by the last kms_fail() in this thread ("" if none). */
const char *kms_last_error(void);
/* Forget the recorded detail. */
void kms_clear_error(void);
/* Stable wire name of a code for the control protocol ("not_found", ...). */
const char *kms_err_code_name(int err);

/* ----------------------------------------------------------------- logging */

enum kms_log_level {
	KMS_LOG_ERR = 3,
	KMS_LOG_WARNING = 4,
	KMS_LOG_NOTICE = 5,        /* what an outside log should witness (audit checkpoints) */
	KMS_LOG_INFO = 6,
	KMS_LOG_DEBUG = 7,
};

/* Open syslog under ident; to_stderr also copies every line to stderr. */
void kms_log_open(const char *ident, int facility, int to_stderr, int level);
void kms_log_set_level(int level);
int kms_log_get_level(void);
void kms_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kms_vlog(int level, const char *fmt, va_list ap);
/* Log what, then every entry of the OpenSSL error queue, and empty it. */
void kms_log_openssl(int level, const char *what);

/* ------------------------------------------------------------------- text */

/*
 * The one sanitizer for untrusted text bound for a log line or a header:
 * printable ASCII passes; controls, DEL and every byte >= 0x80 become '?';
 * text that does not fit is cut and ends in "...".
 *
 * kms_sanitize() cleans at most inlen bytes of in (stopping at a NUL) into
 * out (outlen bytes with the NUL) and returns out.
 */
char *kms_sanitize(const char *in, size_t inlen, char *out, size_t outlen);
/*
 * kms_sanitize_new() cleans exactly n bytes (a NUL becomes '?') into a new
 * string of at most max characters; NULL when out of memory.
 */
char *kms_sanitize_new(const char *in, size_t n, size_t max);

/* RFC 5321 4.5.3.1: a forward path is 256 octets with its angle brackets. */
#define KMS_ADDR_MAX 254
/* RFC 5321 4.5.3.1.1: the local part. */
#define KMS_ADDR_LOCAL_MAX 64
/* RFC 1035 2.3.4: a DNS label. */
#define KMS_ADDR_LABEL_MAX 63
/*
 * The one address validator (CA, control commands, milter): ASCII
 * local@domain of at most KMS_ADDR_MAX characters, a dot-atom local part
 * (RFC 5322 atext and single inner dots) of at most KMS_ADDR_LOCAL_MAX, and a
 * host name of two or more letter-digit-hyphen labels.  Quoted local parts
 * and address literals are refused: no mail client needs them for S/MIME and
 * they are where parsers disagree.  1 if valid, 0 if not.
 */
int kms_addr_valid(const char *s);

/* ----------------------------------------------------------------- buffer */

/*
 * The one growable buffer.  data holds len bytes followed by a NUL (not
 * counted); it is NULL until the first append.  It never holds more than
 * max bytes: an append past that fails with KMS_ERR_TOOBIG and leaves the
 * buffer as it was.  A secret buffer (kms_buf_init_secret) wipes every copy
 * of its bytes it leaves behind.  To write into it directly: reserve n, write
 * at data + len, add to len.
 */
struct kms_buf {
	unsigned char *data;
	size_t len;
	size_t cap;
	size_t max;
	int secret;
};
void kms_buf_init(struct kms_buf *b, size_t max);
void kms_buf_init_secret(struct kms_buf *b, size_t max);
/* Room for n more bytes (and the NUL): 0, KMS_ERR_TOOBIG or KMS_ERR_NOMEM. */
int kms_buf_reserve(struct kms_buf *b, size_t n);
int kms_buf_append(struct kms_buf *b, const void *p, size_t n);
int kms_buf_append_str(struct kms_buf *b, const char *s);
int kms_buf_appendf(struct kms_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int kms_buf_vappendf(struct kms_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/*
 * The bytes (NUL-terminated, "" when empty) for the caller to free, with
 * their length in *len if len is not NULL; the buffer is left empty.  NULL
 * when out of memory.
 */
void *kms_buf_steal(struct kms_buf *b, size_t *len);
/* Empty the buffer, keeping its storage (wiped if secret). */
void kms_buf_reset(struct kms_buf *b);
/* Release the storage (wiped if secret); the buffer may be used again after init. */
void kms_buf_free(struct kms_buf *b);
/*
 * The same growth for an array of structs: make *arrp (a pointer to the
 * array pointer) hold at least need elements of elsize bytes, *cap counting
 * what it holds now; at most max_elems.  0, KMS_ERR_TOOBIG or KMS_ERR_NOMEM.
 */
int kms_array_reserve(void *arrp, size_t *cap, size_t need, size_t elsize, size_t max_elems);

/* ------------------------------------------------------------------ config */

enum kms_action {
	KMS_ACT_ACCEPT = 0,
	KMS_ACT_WARN,
	KMS_ACT_REJECT,
	KMS_ACT_TEMPFAIL,
	KMS_ACT_QUARANTINE,
};

/*
 * The whole configuration, typed.  Built by kms_config_load() from the
 * schema table in config.c; immutable once built, shared by reference.
 * Paths are absolute after loading (relative ones are taken from the
 * directory kmsd started in).
 */
struct kms_config {
	int refs;
	char *file;                     /* file it came from, NULL for defaults */

	struct {
		char *state_dir;
		char *control_socket;
		char *milter_socket;
		long long milter_socket_mode;     /* permissions of a unix milter socket */
		char *pid_file;
		char *authserv_id;
		char *user;
		char *group;
		long long max_control_clients;
		long long control_idle_timeout;   /* seconds */
		long long control_request_timeout;   /* seconds for a whole request */
		long long log_level;              /* KMS_LOG_* */
		long long syslog_facility;        /* LOG_* facility */
	} kmsd;
	struct {
		int enabled;
		char *name;
		char *organization;
		char *key;                        /* "rsa:3072", "ec:p384", ... */
		char *user_key;
		char *passphrase_file;
		long long ca_validity_days;
		long long user_validity_days;
		char *pkcs12_format;              /* "modern" or "compat" */
		long long pkcs12_iterations;
		long long not_before_margin;      /* seconds notBefore is set back */
	} ca;
	struct {
		char *url;
		char *publish_dir;
		long long next_update_hours;
		int delta;
		char *external;                   /* comma-separated files and URLs */
		char *external_ca;                /* PEM trust anchors for external CRLs */
		long long external_refresh;
		int fetch;                        /* fetch distribution points of certificates seen in mail */
		long long fetch_max_size;         /* bytes */
		long long fetch_timeout;          /* seconds */
		long long fetch_concurrency;
		long long fetch_max_sources;       /* seconds */
		char *source;                     /* replica: the primary's CRL URL */
		char *source_ca;                  /* replica: PEM of the primary's CA, to check its CRLs */
		char *ldap_url;                   /* ldap:// CRL distribution point next to url, "" for none */
	} crl;
	struct {
		char *listen;                     /* "HOST:PORT", "" disables */
		long long max_connections;
		long long max_per_client;         /* connections from one address */
		long long threads;                /* event-loop threads */
		long long request_timeout;        /* seconds for a whole request to arrive */
		long long idle_timeout;           /* seconds */
		long long longpoll_timeout;       /* seconds */
		long long max_longpolls;
		int certs_endpoint;               /* serve /certs/<address> (lets anyone enumerate addresses) */
		long long certs_rate;             /* /certs requests a minute per client */
		long long certs_clients;          /* clients the rate table holds */
	} http;
	struct {
		char *uri;                        /* ldap://, ldaps:// or ldapi://; "" turns publishing off */
		int starttls;
		char *ca_file;                    /* PEM CAs for the server's TLS certificate */
		char *bind_method;                /* "simple" or "external" (SASL EXTERNAL, ldapi) */
		char *bind_dn;
		char *bind_password_file;
		char *base_dn;
		char *user_filter;                /* %s: the address (escaped) */
		char *user_dn_template;           /* %s address, %u local part; "" searches with user_filter */
		char *people_dn;                  /* where missing person entries are made */
		char *ca_dn;                      /* the CA entry */
		long long timeout;                /* seconds, per LDAP operation */
		long long retry_max;              /* seconds, longest back-off */
	} ldap;
	struct {
		int enabled;                      /* serve /ocsp, put AIA into new certificates */
		char *url;                        /* OCSP URL in AIA (default http://<http listen>/ocsp) */
		char *ca_issuers_url;             /* caIssuers URL in AIA (default .../ca/<name>.crt) */
		long long validity;               /* seconds from thisUpdate to nextUpdate */
		long long signer_lifetime;        /* seconds a delegated signer certificate is valid */
		char *signer_key;                 /* its key type */
		long long max_request_size;       /* bytes */
		long long max_certids;            /* CertIDs per request */
		long long cache_size;             /* pre-signed responses kept */
		char *replica_keys;               /* primary: PEM public keys of replicas' signers */
		char *primary_url;                /* replica: where its signer certificate is fetched */
	} ocsp;
	struct {
		long long request_ttl;            /* seconds */
		char *krk_key;
		long long shares;
		long long threshold;
		char *share_dir;
	} escrow;
	struct {
		long long checkpoint_rows;        /* sign a checkpoint after this many rows */
		long long checkpoint_interval;    /* seconds, and at least this often when rows wait */
		long long signer_lifetime;        /* seconds the audit signer's certificate is valid */
		char *signer_key;                 /* its key type */
	} audit;
	struct {
		long long max_memory;             /* bytes */
		long long max_message_size;       /* bytes */
		char *trust_file;
		char *trust_dir;
		int use_system_store;
		char *intermediates_file;
		char *tempdir;
		long long max_headers;
		long long max_parts;
		long long max_depth;
	} milter;
	struct {
		long long on_pass, on_fail, on_revoked, on_expired, on_untrusted;
		long long on_mismatch, on_partial, on_encrypted, on_none, on_error;  /* enum kms_action */
		long long on_revocation_unknown;  /* enum kms_action */
		long long revocation_unknown_wait;        /* seconds */
		char *subject_tag;
		char *notice;                     /* template, see kmsd.conf(5) */
	} policy;
	struct {
		char *admin;
		char *officer;
		char *compliance;
		char *auditor;
	} roles;
};

/*
 * Load path (NULL: embedded defaults only).  On error returns
 * KMS_ERR_CONFIG with a detail naming the file, line and key.
 */
int kms_config_load(const char *path, struct kms_config **out);
struct kms_config *kms_config_ref(struct kms_config *cfg);
/* Directory that relative paths in the config are taken from (default: cwd at load). */
void kms_config_set_basedir(const char *dir);
void kms_config_unref(struct kms_config *cfg);
/* Print the schema (section, key, type, default, bounds) for kmsd.conf(5). */
void kms_config_dump_schema(FILE *fp);
/* Parse "5s", "10m", "1h", "2d" or plain seconds; 0 or KMS_ERR_INVALID. */
int kms_parse_duration(const char *s, long long *out);
/* Parse "512", "64K", "1M", "2G"; 0 or KMS_ERR_INVALID. */
int kms_parse_size(const char *s, long long *out);
const char *kms_action_name(int action);
/* Split a comma-separated list into a NULL-terminated, trimmed array (free with kms_strv_free). */
char **kms_split_list(const char *s);
void kms_strv_free(char **v);

/* ------------------------------------------------------------------- store */

#define KMS_STORE_FILE "kms.db"

struct kms_store;

enum kms_store_flags {
	KMS_STORE_CREATE = 1,      /* create the file if absent */
	KMS_STORE_READONLY = 2,    /* open read-only, no migration */
	KMS_STORE_CHECK = 4,       /* run PRAGMA integrity_check */
	KMS_STORE_PRIVATE = 8,     /* refuse a file, WAL or SHM open to other users (kmsd) */
};

/*
 * Open (and migrate) the store at path: WAL, synchronous=FULL, busy timeout,
 * foreign keys on.  A corrupt file gives KMS_ERR_CORRUPT; a file written by a
 * newer smime-kms gives KMS_ERR_STATE.  *out is the caller's to close.
 */
int kms_store_open(const char *path, int flags, struct kms_store **out);
/* Open, migrating only up to version (tests of migrations). */
int kms_store_open_version(const char *path, int flags, int version, struct kms_store **out);
void kms_store_close(struct kms_store *st);
sqlite3 *kms_store_db(struct kms_store *st);
int kms_store_version(struct kms_store *st);
/* Schema version this build writes. */
int kms_store_latest_version(void);
/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. */
int kms_store_begin(struct kms_store *st);
int kms_store_commit(struct kms_store *st);
void kms_store_rollback(struct kms_store *st);
/* Record a DB failure detail from sqlite3_errmsg() and return KMS_ERR_DB. */
int kms_store_fail(struct kms_store *st, const char *what);
/* Small key/value table for counters and settings. */
int kms_store_meta_get(struct kms_store *st, const char *key, char **out);
int kms_store_meta_set(struct kms_store *st, const char *key, const char *value);

/* ------------------------------------------------------------------- audit */

struct kms_audit_rec {
	time_t time;
	uid_t uid;
	const char *user;        /* peer's user name (or the uid as text) */
	const char *role;        /* role the command ran under, "" if none */
	const char *cmd;
	const char *target;      /* address, serial, request id, ... */
	const char *outcome;     /* "ok" or an error code name */
	const char *request_id;  /* recovery request, or NULL */
	const char *detail;      /* free text (officers that approved, ...) */
};

/* Append one row, chained to the previous one (own transaction if none open). */
int kms_audit_append(struct kms_store *st, const struct kms_audit_rec *rec);
/*
 * Recompute the chain.  Returns 0 when every row matches; KMS_ERR_CORRUPT
 * with *bad_seq set to the first row that does not match otherwise.
 */
int kms_audit_verify(struct kms_store *st, long long *bad_seq, long long *rows);

/* One row as kms_audit_list gives it (strings borrowed for the callback only). */
struct kms_audit_row {
	long long seq;
	struct kms_audit_rec rec;   /* request_id and detail NULL when empty */
	const char *hash;
};
typedef int (*kms_audit_row_fn)(void *arg, const struct kms_audit_row *row);
/*
 * The newest limit rows from time since on, oldest first; *truncated is 1
 * when older rows from since on were left out.  A non-zero return of fn
 * stops the listing and is returned.
 */
int kms_audit_list(struct kms_store *st, time_t since, long long limit, kms_audit_row_fn fn, void *arg,
    int *truncated);

/* ---------------------------------------------------------------- protocol */

#define KMS_PROTO_MAX_REQUEST (1024 * 1024)
#define KMS_PROTO_MAX_REPLY (512 * 1024 * 1024)

/*
 * Line reader for JSON-lines framing.  kms_lines_read() returns the next
 * line, calling readfn for more bytes as needed.  A line longer than max is
 * read to its end and thrown away, and KMS_ERR_TOOBIG is returned once for
 * it, so one hostile request never costs more than the bound in memory and
 * the stream stays usable.
 */
struct kms_lines {
	struct kms_buf b;     /* bytes held (a secret buffer) */
	size_t start;         /* first byte not yet handed out */
	size_t max;           /* longest line */
};
/* Read up to n bytes into buf: >0 bytes, 0 at end of stream, <0 KMS_ERR_*. */
typedef ssize_t (*kms_read_fn)(void *ctx, char *buf, size_t n);
void kms_lines_init(struct kms_lines *lb, size_t max);
void kms_lines_free(struct kms_lines *lb);
/*
 * 1 with *line (NUL-terminated, CR/LF cut, valid until the next call) and
 * *len; 0 at a clean end of stream; KMS_ERR_TOOBIG for a skipped line;
 * KMS_ERR_PROTO for a stream that ends inside a line; other errors from readfn.
 */
int kms_lines_read(struct kms_lines *lb, kms_read_fn readfn, void *ctx, char **line, size_t *len);
/* A kms_read_fn over a plain file descriptor (ctx points to the int fd). */
ssize_t kms_read_fd(void *ctx, char *buf, size_t n);

/* Build replies ({"ok":true,"result":...} / {"ok":false,"error":{...}}). */
json_t *kms_reply_ok(json_t *result);     /* steals result; NULL gives {} */
json_t *kms_reply_error(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Serialise obj compactly with a trailing newline and write it all. */
int kms_send_json(int fd, const json_t *obj);
/*
 * The one write-all loop: all of buf to fd, through EINTR and short writes;
 * on a socket without SIGPIPE.  0 or KMS_ERR_IO (detail names the errno).
 */
int kms_write_all(int fd, const void *buf, size_t len);

/* ------------------------------------------------------------------- files */

/* Create path exclusively (O_EXCL|O_NOFOLLOW) with mode, write, fsync. */
int kms_write_file_excl(const char *path, const void *data, size_t len, mode_t mode);
/* Write to a temp name in the same directory, fsync, rename, fsync the directory. */
int kms_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* Read a whole regular file of at most max bytes; *out is NUL-terminated. */
int kms_read_file(const char *path, size_t max, unsigned char **out, size_t *outlen);
/* Read a secret file (passphrase, password): first line, trailing CR/LF cut; wipe and free with kms_secret_free(). */
int kms_read_secret_file(const char *path, char **out);
/* mkdir -p; the directories it creates get exactly mode, whatever the umask. */
int kms_mkdir_p(const char *path, mode_t mode);
/* Join a directory and a name into a new string. */
char *kms_path_join(const char *dir, const char *name);
/*
 * Open a directory that a client named, for kmsd to work in on its
 * behalf, without trusting the path: absolute, no "." or "..", each
 * component opened from "/" with O_NOFOLLOW|O_DIRECTORY (a symbolic link
 * anywhere is refused) and checked with fstat: the directory owned by
 * owner (or alt, unless it is (uid_t)-1: an unprivileged kmsd's own uid),
 * its ancestors by root, owner or alt, none writable by group or others
 * (an ancestor may be if sticky, as /tmp is).  Nothing is created: a missing directory is
 * KMS_ERR_NOTFOUND.  KMS_ERR_PERM names the component and the rule.
 * *dirfd is the caller's to close.
 */
int kms_dir_open_checked(const char *path, uid_t owner, uid_t alt, int *dirfd);
/*
 * Create name (no '/') in dirfd with O_EXCL|O_NOFOLLOW and mode, give it
 * to owner when running as root, write, fsync file and directory.  On
 * failure nothing is left behind.
 */
int kms_write_file_at_excl(int dirfd, const char *name, uid_t owner, const void *data, size_t len, mode_t mode);
void kms_unlink_at(int dirfd, const char *name);
/*
 * kms_read_secret_file() for name in dirfd: never through a symbolic
 * link, only a regular file owned by owner (or alt) with a single link (so no
 * hard link to someone else's file), at most 4 KiB.
 */
int kms_read_secret_file_at(int dirfd, const char *name, uid_t owner, uid_t alt, char **out);
/*
 * Is path kept from other users?  A file: no group or other permission
 * bits at all.  A directory (is_dir): not writable by its group, nothing
 * for others (the group may read and search it: the control socket's
 * group reaches the socket).  Symbolic links are refused.  0,
 * KMS_ERR_NOTFOUND, or KMS_ERR_PERM with a detail that gives the chmod
 * that fixes it.
 */
int kms_check_private(const char *path, int is_dir);

/* ----------------------------------------------------------------- secrets */

/* Wipe n bytes that the compiler may not optimise away. */
void kms_wipe(void *p, size_t n);
/* Wipe a NUL-terminated string and free it (NULL is fine). */
void kms_secret_free(char *s);
/* Start OpenSSL's secure heap (locked, guarded) for private keys; 0 or error. */
int kms_secmem_init(size_t size);
/* RLIMIT_CORE 0 and PR_SET_DUMPABLE 0. */
int kms_disable_core_dumps(void);

/* ---------------------------------------------------------------- encoding */

/* Lowercase hex of n bytes into a new string. */
char *kms_hex(const unsigned char *p, size_t n);
/* Decode hex (upper or lower case, optional ':' separators); *out malloc'd. */
int kms_unhex(const char *s, unsigned char **out, size_t *outlen);
/* Base64 without line breaks into a new string. */
char *kms_b64_encode(const unsigned char *p, size_t n);
/* Decode base64 (whitespace ignored); *out malloc'd. */
int kms_b64_decode(const char *s, size_t slen, unsigned char **out, size_t *outlen);
/* "2026-11-25T01:18:52Z" into buf (at least 21 bytes). */
char *kms_time_format(time_t t, char *buf, size_t buflen);
/* Accept "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS][Z]", "@EPOCH" or "now". */
int kms_time_parse(const char *s, time_t *out);
/* A random password of len characters (at least 22 for 128 bits). */
int kms_random_password(char *out, size_t len);
/* Hex SHA-256 of p into a new string. */
char *kms_sha256_hex(const unsigned char *p, size_t n);

#endif /* KMS_H */
