/*
 * audit.c - the audit trail: one row per control command, allowed or refused,
 * chained by SHA-256 so that a changed, deleted or inserted row is found.
 *
 * Row hash = SHA-256(prev_hash || canonical(row)), where canonical(row) is
 * every field as "<length>:<bytes>\n" in a fixed order, so no two different
 * rows serialise alike.  The head (last sequence and hash) is also kept in
 * meta and logged, so truncating the tail is visible too.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/common.h"

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

static void
put_field(EVP_MD_CTX *md, const char *s)
{
	char len[32];
	size_t n = s ? strlen(s) : 0;

	snprintf(len, sizeof(len), "%zu:", n);
	EVP_DigestUpdate(md, len, strlen(len));
	if (n)
		EVP_DigestUpdate(md, s, n);
	EVP_DigestUpdate(md, "\n", 1);
}

static void
put_num(EVP_MD_CTX *md, long long v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%lld", v);
	put_field(md, buf);
}

/* hex SHA-256 of prev || canonical(row) into out[65]. */
static int
row_hash(const char *prev, long long seq, long long time, long long uid, const char *user,
    const char *role, const char *cmd, const char *target, const char *outcome,
    const char *request_id, const char *detail, char out[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char h[32];
	unsigned int hl = 0;

	if (md == NULL || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(md);
		return kms_fail_openssl(KMS_ERR_CRYPTO, "audit hash");
	}
	put_field(md, prev);
	put_num(md, seq);
	put_num(md, time);
	put_num(md, uid);
	put_field(md, user);
	put_field(md, role);
	put_field(md, cmd);
	put_field(md, target);
	put_field(md, outcome);
	put_field(md, request_id);
	put_field(md, detail);
	EVP_DigestFinal_ex(md, h, &hl);
	EVP_MD_CTX_free(md);
	for (unsigned i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", h[i]);
	return 0;
}

int
kms_audit_append(struct kms_store *st, const struct kms_audit_rec *r)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	int own_tx = sqlite3_get_autocommit(db), rc;
	long long seq = 1;
	char prev[65] = ZERO_HASH, hash[65], head[100];

	if (own_tx && (rc = kms_store_begin(st)) != 0)
		return rc;
	if (sqlite3_prepare_v2(db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "audit head");
		goto out;
	}
	if (sqlite3_step(s) == SQLITE_ROW) {
		seq = sqlite3_column_int64(s, 0) + 1;
		snprintf(prev, sizeof(prev), "%s", (const char *)sqlite3_column_text(s, 1));
	}
	sqlite3_finalize(s);
	s = NULL;
	if ((rc = row_hash(prev, seq, (long long)r->time, (long long)r->uid, r->user, r->role ? r->role : "",
	    r->cmd, r->target ? r->target : "", r->outcome, r->request_id, r->detail, hash)) != 0)
		goto out;
	if (sqlite3_prepare_v2(db, "INSERT INTO audit(seq, time, uid, user, role, cmd, target, outcome, "
	    "request_id, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "audit insert");
		goto out;
	}
	sqlite3_bind_int64(s, 1, seq);
	sqlite3_bind_int64(s, 2, (long long)r->time);
	sqlite3_bind_int64(s, 3, (long long)r->uid);
	sqlite3_bind_text(s, 4, r->user, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 5, r->role ? r->role : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, r->cmd, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 7, r->target ? r->target : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 8, r->outcome, -1, SQLITE_STATIC);
	if (r->request_id)
		sqlite3_bind_text(s, 9, r->request_id, -1, SQLITE_STATIC);
	if (r->detail)
		sqlite3_bind_text(s, 10, r->detail, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 11, prev, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 12, hash, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE) {
		rc = kms_store_fail(st, "audit insert");
		goto out;
	}
	snprintf(head, sizeof(head), "%lld:%s", seq, hash);
	if ((rc = kms_store_meta_set(st, "audit_head", head)) != 0)
		goto out;
	if (own_tx && (rc = kms_store_commit(st)) != 0)
		goto out;
	own_tx = 0;
	kms_log(KMS_LOG_DEBUG, "audit #%lld hash %.16s", seq, hash);
	rc = 0;
out:
	sqlite3_finalize(s);
	if (own_tx && rc != 0)
		kms_store_rollback(st);
	return rc;
}

static const char *
col(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return t ? (const char *)t : NULL;
}

int
kms_audit_verify(struct kms_store *st, long long *bad_seq, long long *rows)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	char prev[65] = ZERO_HASH, hash[65];
	long long expect = 1, n = 0;
	char *head = NULL;
	int rc;

	*bad_seq = 0;
	if (rows)
		*rows = 0;
	if (sqlite3_prepare_v2(db, "SELECT seq, time, uid, user, role, cmd, target, outcome, request_id, "
	    "detail, prev_hash, hash FROM audit ORDER BY seq", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit read");
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		long long seq = sqlite3_column_int64(s, 0);
		const char *stored_prev = col(s, 10), *stored = col(s, 11);

		if (seq != expect) {
			*bad_seq = seq;
			rc = kms_fail(KMS_ERR_CORRUPT, "audit row %lld: expected row %lld here (rows deleted or inserted)",
			    seq, expect);
			goto out;
		}
		if (row_hash(prev, seq, sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2), col(s, 3),
		    col(s, 4), col(s, 5), col(s, 6), col(s, 7), col(s, 8), col(s, 9), hash) != 0) {
			rc = KMS_ERR_CRYPTO;
			goto out;
		}
		if (stored_prev == NULL || strcmp(stored_prev, prev) != 0) {
			*bad_seq = seq;
			rc = kms_fail(KMS_ERR_CORRUPT, "audit row %lld: does not chain to row %lld "
			    "(a row before it was changed, deleted or inserted)", seq, seq - 1);
			goto out;
		}
		if (stored == NULL || strcmp(stored, hash) != 0) {
			*bad_seq = seq;
			rc = kms_fail(KMS_ERR_CORRUPT, "audit row %lld: content does not match its hash (row was changed)", seq);
			goto out;
		}
		memcpy(prev, hash, sizeof(prev));
		expect++;
		n++;
	}
	if (rc != SQLITE_DONE) {
		rc = kms_store_fail(st, "audit read");
		goto out;
	}
	if (kms_store_meta_get(st, "audit_head", &head) == 0) {
		char want[100];

		snprintf(want, sizeof(want), "%lld:%s", n, prev);
		if (n == 0 || strcmp(head, want) != 0) {
			*bad_seq = n + 1;
			rc = kms_fail(KMS_ERR_CORRUPT, "audit trail ends at row %lld but its recorded head is %s "
			    "(rows were removed from the end)", n, head);
			goto out;
		}
	} else if (n > 0) {
		*bad_seq = 1;
		rc = kms_fail(KMS_ERR_CORRUPT, "audit trail has %lld rows but no recorded head", n);
		goto out;
	}
	if (rows)
		*rows = n;
	rc = 0;
out:
	free(head);
	sqlite3_finalize(s);
	return rc;
}

static const char *
col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return t ? (const char *)t : "";
}

int
kms_audit_list(struct kms_store *st, time_t since, long long limit, kms_audit_row_fn fn, void *arg,
    int *truncated)
{
	sqlite3_stmt *s = NULL;
	long long total = 0, skip;
	int rc;

	*truncated = 0;
	if (limit < 1)
		return kms_fail(KMS_ERR_INVALID, "audit: limit must be at least 1");
	/* How many rows match, so that only the newest limit of them are handed out, oldest first. */
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT count(*) FROM audit WHERE time >= ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit");
	sqlite3_bind_int64(s, 1, (long long)since);
	if (sqlite3_step(s) == SQLITE_ROW)
		total = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	skip = total > limit ? total - limit : 0;
	*truncated = skip > 0;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT seq, time, uid, user, role, cmd, target, outcome, request_id, "
	    "detail, hash FROM audit WHERE time >= ? ORDER BY seq LIMIT ? OFFSET ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit");
	sqlite3_bind_int64(s, 1, (long long)since);
	sqlite3_bind_int64(s, 2, limit);
	sqlite3_bind_int64(s, 3, skip);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct kms_audit_row row = {
			.seq = sqlite3_column_int64(s, 0),
			.rec = {
				.time = (time_t)sqlite3_column_int64(s, 1), .uid = (uid_t)sqlite3_column_int64(s, 2),
				.user = col_text(s, 3), .role = col_text(s, 4), .cmd = col_text(s, 5),
				.target = col_text(s, 6), .outcome = col_text(s, 7),
				.request_id = sqlite3_column_type(s, 8) == SQLITE_NULL ? NULL : col_text(s, 8),
				.detail = sqlite3_column_type(s, 9) == SQLITE_NULL ? NULL : col_text(s, 9),
			},
			.hash = col_text(s, 10),
		};

		if ((rc = fn(arg, &row)) != 0) {
			sqlite3_finalize(s);
			return rc;
		}
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : kms_store_fail(st, "audit");
}
