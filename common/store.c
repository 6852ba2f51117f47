/*
 * store.c - the SQLite store: one file in the state directory.
 *
 * Opening sets WAL, synchronous=FULL (a commit is on disk when it returns),
 * a busy timeout and foreign keys, runs PRAGMA integrity_check when asked,
 * and applies forward migrations up to the version this build writes.
 * Writers use BEGIN IMMEDIATE so that two writers never deadlock on upgrade.
 * Each thread that needs the store opens its own connection.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"

struct kms_store {
	sqlite3 *db;
	int version;
	int readonly;
};

/*
 * Forward migrations.  Entry i takes the schema from version i to i + 1.
 * Never edit a released step: add a new one.
 */
static const char *const migrations[] = {
	/* 1: the CA, issued certificates and the audit trail. */
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE ca("
	"  id INTEGER PRIMARY KEY CHECK (id = 1),"
	"  name TEXT NOT NULL, subject TEXT NOT NULL, cert BLOB NOT NULL,"
	"  key BLOB NOT NULL, key_type TEXT NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE certs("
	"  serial TEXT PRIMARY KEY,"
	"  email TEXT NOT NULL COLLATE NOCASE,"
	"  name TEXT NOT NULL DEFAULT '',"
	"  usage TEXT NOT NULL CHECK (usage IN ('sign', 'enc', 'krk')),"
	"  key_type TEXT NOT NULL,"
	"  origin TEXT NOT NULL CHECK (origin IN ('enroll', 'csr', 'init')),"
	"  subject TEXT NOT NULL,"
	"  not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,"
	"  cert BLOB NOT NULL, issued INTEGER NOT NULL, issued_by TEXT NOT NULL DEFAULT '');"
	"CREATE INDEX certs_email ON certs(email);"
	"CREATE TABLE audit("
	"  seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, uid INTEGER NOT NULL,"
	"  user TEXT NOT NULL, role TEXT NOT NULL, cmd TEXT NOT NULL, target TEXT NOT NULL,"
	"  outcome TEXT NOT NULL, request_id TEXT, detail TEXT,"
	"  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);",

	/* 2: revocation and the CRLs we signed. */
	"ALTER TABLE certs ADD COLUMN revoked_at INTEGER;"
	"ALTER TABLE certs ADD COLUMN reason INTEGER;"
	"ALTER TABLE certs ADD COLUMN invalidity INTEGER;"
	"CREATE INDEX certs_revoked ON certs(revoked_at) WHERE revoked_at IS NOT NULL;"
	"CREATE TABLE crls("
	"  number INTEGER PRIMARY KEY,"
	"  kind TEXT NOT NULL CHECK (kind IN ('full', 'delta')),"
	"  base INTEGER,"
	"  this_update INTEGER NOT NULL, next_update INTEGER NOT NULL,"
	"  der BLOB NOT NULL);",

	/* 3: key escrow, recovery requests and their approvals. */
	"CREATE TABLE krk("
	"  id INTEGER PRIMARY KEY, cert BLOB NOT NULL, fingerprint TEXT NOT NULL UNIQUE,"
	"  shares INTEGER NOT NULL, threshold INTEGER NOT NULL,"
	"  created INTEGER NOT NULL, retired INTEGER);"
	"CREATE TABLE krk_shares("
	"  krk_id INTEGER NOT NULL REFERENCES krk(id), idx INTEGER NOT NULL,"
	"  digest TEXT NOT NULL, PRIMARY KEY (krk_id, idx));"
	"CREATE TABLE escrow("
	"  serial TEXT PRIMARY KEY REFERENCES certs(serial),"
	"  krk_id INTEGER NOT NULL REFERENCES krk(id),"
	"  envelope BLOB NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE recovery("
	"  id TEXT PRIMARY KEY,"
	"  purpose TEXT NOT NULL CHECK (purpose IN ('key', 'archive', 'rotate')),"
	"  email TEXT NOT NULL COLLATE NOCASE, why TEXT NOT NULL,"
	"  requester_uid INTEGER NOT NULL, requester TEXT NOT NULL,"
	"  krk_id INTEGER NOT NULL REFERENCES krk(id),"
	"  created INTEGER NOT NULL, expires INTEGER NOT NULL,"
	"  state TEXT NOT NULL, state_time INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE approvals("
	"  request_id TEXT NOT NULL REFERENCES recovery(id),"
	"  officer_uid INTEGER NOT NULL, officer TEXT NOT NULL,"
	"  share_idx INTEGER NOT NULL, time INTEGER NOT NULL,"
	"  PRIMARY KEY (request_id, officer_uid), UNIQUE (request_id, share_idx));",

	/* 4: the number of the first CRL that listed a revocation (what a delta CRL carries). */
	"ALTER TABLE certs ADD COLUMN crl_number INTEGER;",

	/*
	 * 5: the subject key identifier of each issued certificate (lowercase
	 * hex), to find a CMS signer or recipient named by SKI.  Rows from
	 * older versions keep NULL; ca_store_find_cert() scans only those.
	 */
	"ALTER TABLE certs ADD COLUMN ski TEXT;"
	"CREATE INDEX certs_ski ON certs(ski) WHERE ski IS NOT NULL;",

	/*
	 * 6: what a CRL needs of each revoked certificate, in serial order, in
	 * one compact covering index (a million-entry CRL is then one
	 * sequential read); and revocations no CRL has numbered yet (rows
	 * revoked before step 4), normally none.  certs.crl_number is now set
	 * when a certificate is revoked: the number the next CRL will have.
	 */
	"CREATE INDEX certs_crl ON certs(serial, revoked_at, reason, invalidity, not_after, crl_number) "
	"  WHERE revoked_at IS NOT NULL;"
	"CREATE INDEX certs_crl_pending ON certs(serial) WHERE revoked_at IS NOT NULL AND crl_number IS NULL;",

	/*
	 * 7: where a KRK rotation writes its new shares (and reads their
	 * passphrases), so that the officers asked to approve it see it in
	 * recover list.  '' for recoveries.
	 */
	"ALTER TABLE recovery ADD COLUMN share_dir TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE recovery ADD COLUMN pass_dir TEXT NOT NULL DEFAULT '';",

	/*
	 * 8: the publication queue (ca/pubq.c): entries of the LDAP directory
	 * to rewrite, one row per entry, filled by triggers in the very
	 * statement (so the very transaction) that issues or revokes a
	 * certificate or records a new full CRL, while meta "pubq.on" says
	 * publishing is on.  A newer change to an entry replaces its row with
	 * a higher seq (AUTOINCREMENT: a seq is never reused, so the publisher
	 * can remove exactly the rows it delivered).
	 */
	"CREATE TABLE pubq("
	"  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  kind TEXT NOT NULL CHECK (kind IN ('user', 'ca')),"
	"  key TEXT NOT NULL COLLATE NOCASE,"
	"  queued INTEGER NOT NULL,"
	"  attempts INTEGER NOT NULL DEFAULT 0,"
	"  next_try INTEGER NOT NULL DEFAULT 0,"
	"  last_error TEXT,"
	"  UNIQUE (kind, key));"
	"CREATE TRIGGER pubq_cert_issued AFTER INSERT ON certs "
	"  WHEN NEW.usage IN ('sign', 'enc') AND EXISTS (SELECT 1 FROM meta WHERE key = 'pubq.on') BEGIN"
	"  DELETE FROM pubq WHERE kind = 'user' AND key = NEW.email;"
	"  INSERT INTO pubq(kind, key, queued) VALUES ('user', NEW.email, CAST(strftime('%s', 'now') AS INTEGER));"
	"END;"
	"CREATE TRIGGER pubq_cert_revoked AFTER UPDATE OF revoked_at ON certs "
	"  WHEN NEW.usage IN ('sign', 'enc') AND OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL"
	"  AND EXISTS (SELECT 1 FROM meta WHERE key = 'pubq.on') BEGIN"
	"  DELETE FROM pubq WHERE kind = 'user' AND key = NEW.email;"
	"  INSERT INTO pubq(kind, key, queued) VALUES ('user', NEW.email, CAST(strftime('%s', 'now') AS INTEGER));"
	"END;"
	"CREATE TRIGGER pubq_crl AFTER INSERT ON crls "
	"  WHEN NEW.kind = 'full' AND EXISTS (SELECT 1 FROM meta WHERE key = 'pubq.on') BEGIN"
	"  DELETE FROM pubq WHERE kind = 'ca' AND key = '';"
	"  INSERT INTO pubq(kind, key, queued) VALUES ('ca', '', CAST(strftime('%s', 'now') AS INTEGER));"
	"END;",

	/*
	 * 9: signed checkpoints of the audit chain (ca/audit_ckpt.c): number
	 * no (1, 2, ... without gaps) says that row seq of the chain had the
	 * hash head at time, signed (sig) by the audit signer whose
	 * certificate (DER) it carries.  meta "audit_ckpt_start" is the last
	 * row written before checkpoints existed (0 for a new store): those
	 * rows wait for the first checkpoint without counting as overdue.
	 */
	"CREATE TABLE audit_checkpoints("
	"  no INTEGER PRIMARY KEY,"
	"  seq INTEGER NOT NULL,"
	"  head TEXT NOT NULL,"
	"  time INTEGER NOT NULL,"
	"  cert BLOB NOT NULL,"
	"  sig BLOB NOT NULL);"
	"INSERT OR REPLACE INTO meta(key, value) SELECT 'audit_ckpt_start', COALESCE(MAX(seq), 0) FROM audit;",

	/*
	 * 10: the userSMIMECertificate value signed by the user's signing key at
	 * enrollment (ca/smime.c), by the serial of that signing certificate.
	 */
	"CREATE TABLE IF NOT EXISTS smime(serial TEXT PRIMARY KEY, der BLOB NOT NULL);",
};

#define LATEST ((int)(sizeof(migrations) / sizeof(migrations[0])))

int
kms_store_latest_version(void)
{
	return LATEST;
}

int
kms_store_fail(struct kms_store *st, const char *what)
{
	return kms_fail(KMS_ERR_DB, "%s: %s", what, st && st->db ? sqlite3_errmsg(st->db) : "no database");
}

static int
exec(struct kms_store *st, const char *sql, const char *what)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		int rc = kms_fail(KMS_ERR_DB, "%s: %s", what, msg ? msg : sqlite3_errmsg(st->db));

		sqlite3_free(msg);
		return rc;
	}
	return 0;
}

static int
pragma_int(struct kms_store *st, const char *sql, int *out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, sql);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int(s, 0);
		rc = 0;
	} else {
		rc = kms_store_fail(st, sql);
	}
	sqlite3_finalize(s);
	return rc;
}

static int
integrity_check(struct kms_store *st, const char *path)
{
	sqlite3_stmt *s = NULL;
	int rc;
	const unsigned char *res;

	if (sqlite3_prepare_v2(st->db, "PRAGMA integrity_check(1)", -1, &s, NULL) != SQLITE_OK) {
		rc = sqlite3_errcode(st->db);
		if (rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB)
			return kms_fail(KMS_ERR_CORRUPT, "store %s is corrupt (%s); restore it from a backup",
			    path, sqlite3_errmsg(st->db));
		return kms_store_fail(st, "integrity check");
	}
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		int ec = sqlite3_errcode(st->db);

		sqlite3_finalize(s);
		if (ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB)
			return kms_fail(KMS_ERR_CORRUPT, "store %s is corrupt (%s); restore it from a backup",
			    path, sqlite3_errmsg(st->db));
		return kms_store_fail(st, "integrity check");
	}
	res = sqlite3_column_text(s, 0);
	if (res == NULL || strcmp((const char *)res, "ok") != 0) {
		char clean[200];

		kms_sanitize(res ? (const char *)res : "no answer", 400, clean, sizeof(clean));
		rc = kms_fail(KMS_ERR_CORRUPT, "store %s is corrupt (integrity check: %s); "
		    "kmsd will not start on it: restore it from a backup", path, clean);
		sqlite3_finalize(s);
		return rc;
	}
	sqlite3_finalize(s);
	return 0;
}

static int
migrate(struct kms_store *st, int target)
{
	int rc, from = st->version;

	while (st->version < target) {
		char sql[64];

		if ((rc = exec(st, "BEGIN IMMEDIATE", "begin migration")) != 0)
			return rc;
		/* Another process may have migrated while we waited for the lock. */
		if ((rc = pragma_int(st, "PRAGMA user_version", &st->version)) != 0)
			goto fail;
		if (st->version >= target) {
			exec(st, "COMMIT", "commit");
			break;
		}
		if ((rc = exec(st, migrations[st->version], "schema migration")) != 0)
			goto fail;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", st->version + 1);
		if ((rc = exec(st, sql, "set schema version")) != 0)
			goto fail;
		if ((rc = exec(st, "COMMIT", "commit migration")) != 0)
			goto fail;
		st->version++;
	}
	if (from == 0)
		kms_log(KMS_LOG_DEBUG, "store: created with schema version %d", st->version);
	else if (st->version > from)
		kms_log(KMS_LOG_INFO, "store: migrated from schema version %d to %d", from, st->version);
	return 0;
fail:
	sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/*
 * SQLite creates a database with mode 0644 less the umask, and gives its
 * WAL and SHM files the database file's mode: so the file is made here,
 * 0600, before SQLite sees it, whatever the umask.
 */
static int
create_private(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0)
		return kms_fail(errno == ELOOP ? KMS_ERR_PERM : KMS_ERR_IO, "cannot create store %s: %s", path,
		    errno == ELOOP ? "it is a symbolic link" : strerror(errno));
	close(fd);
	return 0;
}

/* The file, and the WAL and SHM beside it when present, closed to other users. */
static int
check_private(const char *path)
{
	static const char *const suffix[] = { "", "-wal", "-shm" };
	char p[4096];
	int rc;

	for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
		if ((size_t)snprintf(p, sizeof(p), "%s%s", path, suffix[i]) >= sizeof(p))
			return kms_fail(KMS_ERR_INVALID, "store path too long");
		rc = kms_check_private(p, 0);
		if (rc == KMS_ERR_NOTFOUND && i > 0)
			continue;
		if (rc != 0)
			return rc;
	}
	return 0;
}

int
kms_store_open_version(const char *path, int flags, int version, struct kms_store **out)
{
	struct kms_store *st;
	int oflags, rc;

	*out = NULL;
	if (version < 0 || version > LATEST)
		return kms_fail(KMS_ERR_INVALID, "no schema version %d", version);
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return KMS_ERR_NOMEM;
	st->readonly = (flags & KMS_STORE_READONLY) != 0;
	if (st->readonly)
		oflags = SQLITE_OPEN_READONLY;
	else
		oflags = SQLITE_OPEN_READWRITE | ((flags & KMS_STORE_CREATE) ? SQLITE_OPEN_CREATE : 0);
	oflags |= SQLITE_OPEN_NOMUTEX;
	if ((flags & KMS_STORE_CREATE) && !st->readonly && (rc = create_private(path)) != 0)
		goto out;
	if ((flags & KMS_STORE_PRIVATE) && (rc = check_private(path)) != 0)
		goto out;
	if (sqlite3_open_v2(path, &st->db, oflags, NULL) != SQLITE_OK) {
		rc = kms_fail(access(path, F_OK) == 0 ? KMS_ERR_DB : KMS_ERR_NOTFOUND,
		    "cannot open store %s: %s", path, st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto out;
	}
	sqlite3_extended_result_codes(st->db, 1);
	sqlite3_busy_timeout(st->db, 15000);
	if (!st->readonly) {
		int ec;
		char *msg = NULL;

		if (sqlite3_exec(st->db, "PRAGMA journal_mode=WAL", NULL, NULL, &msg) != SQLITE_OK) {
			ec = sqlite3_errcode(st->db) & 0xff;
			rc = kms_fail(ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB ? KMS_ERR_CORRUPT : KMS_ERR_DB,
			    "store %s: %s%s", path, msg ? msg : sqlite3_errmsg(st->db),
			    ec == SQLITE_NOTADB || ec == SQLITE_CORRUPT ? "; the file is corrupt or not an smime-kms store" : "");
			sqlite3_free(msg);
			goto out;
		}
	}
	if ((rc = exec(st, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON",
	    "store settings")) != 0)
		goto out;
	if (flags & KMS_STORE_CHECK) {
		if ((rc = integrity_check(st, path)) != 0)
			goto out;
	}
	if ((rc = pragma_int(st, "PRAGMA user_version", &st->version)) != 0) {
		int ec = sqlite3_errcode(st->db) & 0xff;

		if (ec == SQLITE_CORRUPT || ec == SQLITE_NOTADB)
			rc = kms_fail(KMS_ERR_CORRUPT, "store %s is corrupt or not an smime-kms store", path);
		goto out;
	}
	if (st->version > LATEST) {
		rc = kms_fail(KMS_ERR_STATE, "store %s has schema version %d, newer than this build (%d); "
		    "run a newer smime-kms", path, st->version, LATEST);
		goto out;
	}
	if (!st->readonly && st->version < version) {
		if ((rc = migrate(st, version)) != 0)
			goto out;
	}
	*out = st;
	st = NULL;
	rc = 0;
out:
	kms_store_close(st);
	return rc;
}

int
kms_store_open(const char *path, int flags, struct kms_store **out)
{
	return kms_store_open_version(path, flags, LATEST, out);
}

void
kms_store_close(struct kms_store *st)
{
	if (st == NULL)
		return;
	if (st->db) {
		sqlite3_stmt *s;

		while ((s = sqlite3_next_stmt(st->db, NULL)) != NULL)
			sqlite3_finalize(s);
		sqlite3_close(st->db);
	}
	free(st);
}

sqlite3 *
kms_store_db(struct kms_store *st)
{
	return st->db;
}

int
kms_store_version(struct kms_store *st)
{
	return st->version;
}

int
kms_store_begin(struct kms_store *st)
{
	return exec(st, "BEGIN IMMEDIATE", "begin transaction");
}

int
kms_store_commit(struct kms_store *st)
{
	int rc = exec(st, "COMMIT", "commit");

	if (rc != 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

void
kms_store_rollback(struct kms_store *st)
{
	if (st && st->db && !sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

int
kms_store_meta_get(struct kms_store *st, const char *key, char **out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*out = NULL;
	if (sqlite3_prepare_v2(st->db, "SELECT value FROM meta WHERE key = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read setting");
	sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = strdup((const char *)sqlite3_column_text(s, 0));
		rc = *out ? 0 : KMS_ERR_NOMEM;
	} else if (rc == SQLITE_DONE) {
		rc = KMS_ERR_NOTFOUND;
	} else {
		rc = kms_store_fail(st, "read setting");
	}
	sqlite3_finalize(s);
	return rc;
}

int
kms_store_meta_set(struct kms_store *st, const char *key, const char *value)
{
	sqlite3_stmt *s = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(st->db, "INSERT INTO meta(key, value) VALUES (?, ?) "
	    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "write setting");
	sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = kms_store_fail(st, "write setting");
	sqlite3_finalize(s);
	return rc;
}
