/*
 * escrow_store.c - the escrow tables of the store (schema migration 3):
 * krk (key-recovery key certificates, current and retired), krk_shares
 * (the digest of every share made at init) and escrow (one envelope per
 * encryption certificate).
 *
 * Entry points: esc_store_add_krk(), esc_store_current_krk(),
 * esc_store_krk_by_id(), esc_store_check_share(), esc_store_retire_krk(),
 * esc_store_put(), esc_store_get_user(), esc_store_get_all(),
 * esc_store_rewrap(), esc_krk_free(), esc_entries_free().
 *
 * Writes run inside the caller's transaction when one is open, so that a
 * certificate and its escrowed key commit together; a write of several
 * rows outside any transaction opens its own.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "archive/archive.h"

/* An envelope is a few KiB; anything past this is not ours. */
#define MAX_ENVELOPE (64 * 1024)

void
esc_krk_free(struct esc_krk *k)
{
	if (k == NULL)
		return;
	X509_free(k->cert);
	free(k);
}

void
esc_entries_free(struct esc_entry *e, size_t n)
{
	if (e == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(e[i].serial);
		free(e[i].envelope);
		X509_free(e[i].cert);
	}
	free(e);
}

static X509 *
cert_from_blob(const void *blob, int n)
{
	const unsigned char *p = blob;
	X509 *x;

	if (blob == NULL || n <= 0)
		return NULL;
	x = d2i_X509(NULL, &p, n);
	if (x != NULL && p != (const unsigned char *)blob + n) {
		X509_free(x);
		x = NULL;
	}
	ERR_clear_error();
	return x;
}

static int
cert_fingerprint(X509 *cert, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	char *hex;

	if (X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != 32)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "certificate fingerprint");
	hex = kms_hex(md, n);
	if (hex == NULL)
		return KMS_ERR_NOMEM;
	memcpy(out, hex, 65);
	free(hex);
	return 0;
}

static int
prepare(struct kms_store *st, const char *sql, sqlite3_stmt **s, const char *what)
{
	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, s, NULL) != SQLITE_OK)
		return kms_store_fail(st, what);
	return 0;
}

/* Map a failed write step to our codes: constraints are the caller's mistake, not the store's. */
static int
step_fail(struct kms_store *st, int src, const char *what)
{
	if (src == SQLITE_CONSTRAINT_PRIMARYKEY || src == SQLITE_CONSTRAINT_UNIQUE)
		return kms_fail(KMS_ERR_EXISTS, "%s: already recorded", what);
	if (src == SQLITE_CONSTRAINT_FOREIGNKEY)
		return kms_fail(KMS_ERR_NOTFOUND, "%s: no such certificate or key-recovery key", what);
	return kms_store_fail(st, what);
}

/* ------------------------------------------------------------------- krk */

int
esc_store_add_krk(struct kms_store *st, X509 *cert, int shares, int threshold,
    char *const *share_digests, long long *id)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	unsigned char *der = NULL;
	char fpr[65];
	int own = 0, rc, n, src;
	long long newid;

	*id = 0;
	if (cert == NULL || share_digests == NULL || threshold < 2 || shares < threshold || shares > ESC_MAX_SHARES)
		return kms_fail(KMS_ERR_INVALID, "bad key-recovery key record (%d shares, threshold %d)",
		    shares, threshold);
	for (int i = 0; i < shares; i++)
		if (share_digests[i] == NULL || strlen(share_digests[i]) != 64)
			return kms_fail(KMS_ERR_INVALID, "missing or bad digest for share %d", i + 1);
	if ((rc = cert_fingerprint(cert, fpr)) != 0)
		return rc;
	n = i2d_X509(cert, &der);
	if (n <= 0)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the KRK certificate");

	if (sqlite3_get_autocommit(db)) {
		if ((rc = kms_store_begin(st)) != 0)
			goto out;
		own = 1;
	}
	if ((rc = prepare(st, "INSERT INTO krk(cert, fingerprint, shares, threshold, created) "
	    "VALUES (?, ?, ?, ?, ?)", &s, "record key-recovery key")) != 0)
		goto out;
	sqlite3_bind_blob(s, 1, der, n, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, fpr, -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 3, shares);
	sqlite3_bind_int(s, 4, threshold);
	sqlite3_bind_int64(s, 5, (sqlite3_int64)time(NULL));
	if ((src = sqlite3_step(s)) != SQLITE_DONE) {
		rc = step_fail(st, sqlite3_extended_errcode(db), "record key-recovery key");
		goto out;
	}
	newid = sqlite3_last_insert_rowid(db);
	sqlite3_finalize(s);
	s = NULL;
	if ((rc = prepare(st, "INSERT INTO krk_shares(krk_id, idx, digest) VALUES (?, ?, ?)", &s,
	    "record share digests")) != 0)
		goto out;
	for (int i = 0; i < shares; i++) {
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, newid);
		sqlite3_bind_int(s, 2, i + 1);
		sqlite3_bind_text(s, 3, share_digests[i], -1, SQLITE_STATIC);
		if (sqlite3_step(s) != SQLITE_DONE) {
			rc = step_fail(st, sqlite3_extended_errcode(db), "record share digests");
			goto out;
		}
	}
	sqlite3_finalize(s);
	s = NULL;
	if (own) {
		own = 0;
		if ((rc = kms_store_commit(st)) != 0)
			goto out;
	}
	*id = newid;
	rc = 0;
out:
	sqlite3_finalize(s);
	if (own)
		kms_store_rollback(st);
	OPENSSL_free(der);
	return rc;
}

static int
krk_query(struct kms_store *st, const char *sql, long long id, int bind_id, struct esc_krk **out)
{
	sqlite3_stmt *s = NULL;
	struct esc_krk *k = NULL;
	const char *fpr;
	int rc;

	*out = NULL;
	if ((rc = prepare(st, sql, &s, "read key-recovery key")) != 0)
		return rc;
	if (bind_id)
		sqlite3_bind_int64(s, 1, id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		rc = bind_id ? kms_fail(KMS_ERR_NOTFOUND, "no key-recovery key %lld", id) :
		    kms_fail(KMS_ERR_NOTFOUND, "no key-recovery key: run kmsctl init first");
		goto out;
	}
	if (rc != SQLITE_ROW) {
		rc = kms_store_fail(st, "read key-recovery key");
		goto out;
	}
	k = calloc(1, sizeof(*k));
	if (k == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	k->id = sqlite3_column_int64(s, 0);
	k->cert = cert_from_blob(sqlite3_column_blob(s, 1), sqlite3_column_bytes(s, 1));
	fpr = (const char *)sqlite3_column_text(s, 2);
	if (k->cert == NULL || fpr == NULL || strlen(fpr) != 64) {
		rc = kms_fail(KMS_ERR_CORRUPT, "stored key-recovery key %lld is damaged", k->id);
		goto out;
	}
	memcpy(k->fingerprint, fpr, 65);
	k->shares = sqlite3_column_int(s, 3);
	k->threshold = sqlite3_column_int(s, 4);
	k->created = (time_t)sqlite3_column_int64(s, 5);
	k->retired = sqlite3_column_type(s, 6) == SQLITE_NULL ? 0 : (time_t)sqlite3_column_int64(s, 6);
	*out = k;
	k = NULL;
	rc = 0;
out:
	esc_krk_free(k);
	sqlite3_finalize(s);
	return rc;
}

int
esc_store_current_krk(struct kms_store *st, struct esc_krk **out)
{
	return krk_query(st, "SELECT id, cert, fingerprint, shares, threshold, created, retired FROM krk "
	    "WHERE retired IS NULL ORDER BY id DESC LIMIT 1", 0, 0, out);
}

int
esc_store_krk_by_id(struct kms_store *st, long long id, struct esc_krk **out)
{
	return krk_query(st, "SELECT id, cert, fingerprint, shares, threshold, created, retired FROM krk "
	    "WHERE id = ?", id, 1, out);
}

int
esc_store_check_share(struct kms_store *st, long long krk_id, int index, const char *digest)
{
	sqlite3_stmt *s = NULL;
	const char *want;
	int rc;

	if (digest == NULL || strlen(digest) != 64)
		return kms_fail(KMS_ERR_CORRUPT, "share has no valid digest");
	if ((rc = prepare(st, "SELECT digest FROM krk_shares WHERE krk_id = ? AND idx = ?", &s,
	    "read share digest")) != 0)
		return rc;
	sqlite3_bind_int64(s, 1, krk_id);
	sqlite3_bind_int(s, 2, index);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		rc = kms_fail(KMS_ERR_CORRUPT, "share %d was not made for key-recovery key %lld", index, krk_id);
	} else if (rc != SQLITE_ROW) {
		rc = kms_store_fail(st, "read share digest");
	} else {
		want = (const char *)sqlite3_column_text(s, 0);
		if (want == NULL || strlen(want) != 64 || CRYPTO_memcmp(want, digest, 64) != 0)
			rc = kms_fail(KMS_ERR_CORRUPT, "share %d does not match the one made for "
			    "key-recovery key %lld (edited, or from another key)", index, krk_id);
		else
			rc = 0;
	}
	sqlite3_finalize(s);
	return rc;
}

int
esc_store_retire_krk(struct kms_store *st, long long id, time_t when)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if ((rc = prepare(st, "UPDATE krk SET retired = ? WHERE id = ? AND retired IS NULL", &s,
	    "retire key-recovery key")) != 0)
		return rc;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)when);
	sqlite3_bind_int64(s, 2, id);
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = kms_store_fail(st, "retire key-recovery key");
	else if (sqlite3_changes(kms_store_db(st)) != 1)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no current key-recovery key %lld to retire", id);
	sqlite3_finalize(s);
	return rc;
}

/* ---------------------------------------------------------------- escrow */

static int
write_envelope(struct kms_store *st, const char *sql, const char *serial, long long krk_id,
    const unsigned char *env, size_t len, int update)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (serial == NULL || *serial == '\0' || env == NULL || len == 0)
		return kms_fail(KMS_ERR_INVALID, "no serial or no envelope to store");
	if (len > MAX_ENVELOPE)
		return kms_fail(KMS_ERR_TOOBIG, "escrow envelope too large");
	if ((rc = prepare(st, sql, &s, "store escrowed key")) != 0)
		return rc;
	if (update) {
		sqlite3_bind_blob(s, 1, env, (int)len, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, krk_id);
		sqlite3_bind_text(s, 3, serial, -1, SQLITE_STATIC);
	} else {
		sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, krk_id);
		sqlite3_bind_blob(s, 3, env, (int)len, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)time(NULL));
	}
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = step_fail(st, sqlite3_extended_errcode(kms_store_db(st)), "store escrowed key");
	else if (update && sqlite3_changes(kms_store_db(st)) != 1)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no escrowed key for certificate %s", serial);
	sqlite3_finalize(s);
	return rc;
}

/* Signing keys are never escrowed: only an encryption certificate gets an envelope. */
static int
check_enc_cert(struct kms_store *st, const char *serial)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if ((rc = prepare(st, "SELECT usage FROM certs WHERE serial = ?", &s, "store escrowed key")) != 0)
		return rc;
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(s, 0), "enc") != 0)
		rc = kms_fail(KMS_ERR_INVALID, "certificate %s is not an encryption certificate: "
		    "only encryption keys are escrowed", serial);
	else if (rc == SQLITE_ROW || rc == SQLITE_DONE)
		rc = 0;         /* an unknown serial is refused by the foreign key */
	else
		rc = kms_store_fail(st, "store escrowed key");
	sqlite3_finalize(s);
	return rc;
}

int
esc_store_put(struct kms_store *st, const char *serial, long long krk_id, const unsigned char *env, size_t len)
{
	int rc;

	if (serial != NULL && *serial != '\0' && (rc = check_enc_cert(st, serial)) != 0)
		return rc;
	return write_envelope(st, "INSERT INTO escrow(serial, krk_id, envelope, created) VALUES (?, ?, ?, ?)",
	    serial, krk_id, env, len, 0);
}

int
esc_store_rewrap(struct kms_store *st, const char *serial, long long krk_id, const unsigned char *env, size_t len)
{
	return write_envelope(st, "UPDATE escrow SET envelope = ?, krk_id = ? WHERE serial = ?",
	    serial, krk_id, env, len, 1);
}

/* Collect rows of (serial, krk_id, envelope, cert, issued). */
static int
entries_query(struct kms_store *st, sqlite3_stmt *s, struct esc_entry **out, size_t *n)
{
	struct esc_entry *e = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct esc_entry *x;
		const void *blob;
		int bl;

		if ((rc = kms_array_reserve(&e, &cap, cnt + 1, sizeof(*e), SIZE_MAX)) != 0)
			goto out;
		x = &e[cnt];
		memset(x, 0, sizeof(*x));
		cnt++;
		x->serial = strdup((const char *)sqlite3_column_text(s, 0));
		x->krk_id = sqlite3_column_int64(s, 1);
		blob = sqlite3_column_blob(s, 2);
		bl = sqlite3_column_bytes(s, 2);
		if (x->serial == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		if (blob == NULL || bl <= 0) {
			rc = kms_fail(KMS_ERR_CORRUPT, "escrowed key of %s has no envelope", x->serial);
			goto out;
		}
		x->envelope = malloc((size_t)bl);
		if (x->envelope == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		memcpy(x->envelope, blob, (size_t)bl);
		x->len = (size_t)bl;
		x->cert = cert_from_blob(sqlite3_column_blob(s, 3), sqlite3_column_bytes(s, 3));
		if (x->cert == NULL) {
			rc = kms_fail(KMS_ERR_CORRUPT, "certificate %s in the store is damaged", x->serial);
			goto out;
		}
		x->issued = (time_t)sqlite3_column_int64(s, 4);
	}
	if (rc != SQLITE_DONE) {
		rc = kms_store_fail(st, "read escrowed keys");
		goto out;
	}
	*out = e;
	*n = cnt;
	e = NULL;
	cnt = 0;
	rc = 0;
out:
	esc_entries_free(e, cnt);
	return rc;
}

int
esc_store_get_user(struct kms_store *st, const char *email, struct esc_entry **out, size_t *n)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*out = NULL;
	*n = 0;
	if (email == NULL || *email == '\0')
		return kms_fail(KMS_ERR_INVALID, "no address");
	if ((rc = prepare(st, "SELECT e.serial, e.krk_id, e.envelope, c.cert, c.issued "
	    "FROM escrow e JOIN certs c ON c.serial = e.serial "
	    "WHERE c.email = ? AND c.usage = 'enc' "
	    "ORDER BY c.issued DESC, c.not_before DESC, c.rowid DESC", &s, "read escrowed keys")) != 0)
		return rc;
	sqlite3_bind_text(s, 1, email, -1, SQLITE_STATIC);
	rc = entries_query(st, s, out, n);
	sqlite3_finalize(s);
	if (rc == 0 && *n == 0) {
		char clean[128];

		free(*out);
		*out = NULL;
		return kms_fail(KMS_ERR_NOTFOUND, "no escrowed key for %s",
		    kms_sanitize(email, strlen(email), clean, sizeof(clean)));
	}
	return rc;
}

int
esc_store_get_all(struct kms_store *st, struct esc_entry **out, size_t *n)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*out = NULL;
	*n = 0;
	if ((rc = prepare(st, "SELECT e.serial, e.krk_id, e.envelope, c.cert, c.issued "
	    "FROM escrow e JOIN certs c ON c.serial = e.serial ORDER BY e.rowid", &s,
	    "read escrowed keys")) != 0)
		return rc;
	rc = entries_query(st, s, out, n);
	sqlite3_finalize(s);
	return rc;
}

int
esc_store_has_key(struct kms_store *st, const char *serial)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if ((rc = prepare(st, "SELECT 1 FROM escrow WHERE serial = ?", &s, "read escrow")) != 0)
		return rc;
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc == SQLITE_ROW)
		return 1;
	return rc == SQLITE_DONE ? 0 : kms_store_fail(st, "read escrow");
}

long long
esc_store_count(struct kms_store *st)
{
	sqlite3_stmt *s = NULL;
	long long n;
	int rc;

	if ((rc = prepare(st, "SELECT count(*) FROM escrow", &s, "count escrow")) != 0)
		return rc;
	n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : kms_store_fail(st, "count escrow");
	sqlite3_finalize(s);
	return n;
}
