/*
 * audit_verify.c - verifying the audit trail: its hash chain
 * (kms_audit_verify), then every signed checkpoint (audit_ckpt.c) against
 * our CA, then whether the rows after the last checkpoint are more, and
 * older, than kmsd would ever leave unsigned.
 *
 * Entry point: ca_audit_verify().  Every failure is KMS_ERR_CORRUPT with a
 * message naming the first bad row or checkpoint, also in the report.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

/* A DER certificate larger than this is not one our CA made. */
#define MAX_CERT_DER 16384

/* Fail on checkpoint no, rows from first_row on suspect. */
static int
bad(struct ca_audit_report *rep, long long no, long long first_row)
{
	rep->bad_checkpoint = no;
	rep->bad_seq = first_row;
	return KMS_ERR_CORRUPT;
}

/* Is the stored certificate of a checkpoint an audit signer of ca_cert, valid at its time? */
static int
check_cert(sqlite3_stmt *s, X509 *ca_cert, const struct ca_audit_ckpt *ck, X509 **out)
{
	const unsigned char *p = sqlite3_column_blob(s, 4);
	int n = sqlite3_column_bytes(s, 4);
	X509 *x = NULL;

	*out = NULL;
	if (p == NULL || n <= 0 || n > MAX_CERT_DER || (x = d2i_X509(NULL, &p, n)) == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld: its signer certificate is unreadable", ck->no);
	}
	if (ca_audit_signer_check(x, ca_cert, ck->time) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());      /* kms_fail() overwrites it */
		X509_free(x);
		return kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld: %s", ck->no, why);
	}
	*out = x;
	return 0;
}

/* Order, certificate, signature and the chain's hash at its row, for one checkpoint after prev. */
static int
check_one(struct kms_store *st, sqlite3_stmt *s, X509 *ca_cert, const struct ca_audit_ckpt *prev,
    long long rows, struct ca_audit_ckpt *ck, struct ca_audit_report *rep)
{
	X509 *x = NULL;
	char h[65];
	int ok;

	ca_audit_ckpt_from_row(s, ck);
	if (ck->no != prev->no + 1) {
		kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld is missing (deleted): #%lld follows #%lld",
		    prev->no + 1, ck->no, prev->no);
		return bad(rep, prev->no + 1, prev->seq + 1);
	}
	if (ck->seq <= prev->seq || ck->time < prev->time) {
		kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld is out of order (row %lld after row %lld)",
		    ck->no, ck->seq, prev->seq);
		return bad(rep, ck->no, prev->seq + 1);
	}
	if (ck->seq > rows) {
		kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld signs row %lld but the trail ends at row %lld "
		    "(rows were removed)", ck->no, ck->seq, rows);
		return bad(rep, ck->no, rows + 1);
	}
	if (check_cert(s, ca_cert, ck, &x) != 0)
		return bad(rep, ck->no, prev->seq + 1);
	ok = ca_audit_ckpt_check_sig(ck, X509_get0_pubkey(x), sqlite3_column_blob(s, 5), (size_t)sqlite3_column_bytes(s, 5));
	X509_free(x);
	if (!ok) {
		kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld: the signature does not verify "
		    "(the checkpoint was edited)", ck->no);
		return bad(rep, ck->no, prev->seq + 1);
	}
	if (ca_audit_chain_hash_at(st, ck->seq, h) != 0 || strcmp(h, ck->head) != 0) {
		kms_fail(KMS_ERR_CORRUPT, "audit rows %lld to %lld were rewritten: the chain hash of row %lld is not "
		    "the one signed checkpoint #%lld holds", prev->seq + 1, ck->seq, ck->seq, ck->no);
		return bad(rep, ck->no, prev->seq + 1);
	}
	return 0;
}

/* Every checkpoint in order; *last the newest (no 0 when none). */
static int
check_all(struct kms_store *st, X509 *ca_cert, long long rows, struct ca_audit_ckpt *last,
    struct ca_audit_report *rep)
{
	struct ca_audit_ckpt prev = { 0 }, ck;
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT no, seq, head, time, cert, sig FROM audit_checkpoints "
	    "ORDER BY no", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit checkpoints");
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if ((rc = check_one(st, s, ca_cert, &prev, rows, &ck, rep)) != 0)
			goto out;
		prev = ck;
		rep->checkpoints++;
	}
	rc = rc == SQLITE_DONE ? 0 : kms_store_fail(st, "audit checkpoints");
	*last = prev;
out:
	sqlite3_finalize(s);
	return rc;
}

/* The last row written before checkpoints existed (meta audit_ckpt_start), 0 if none. */
static long long
ckpt_start(struct kms_store *st)
{
	char *v = NULL;
	long long n = 0;

	if (kms_store_meta_get(st, "audit_ckpt_start", &v) == 0)
		n = strtoll(v, NULL, 10);
	else
		kms_clear_error();
	free(v);
	return n > 0 ? n : 0;
}

/* The time of row seq, 0 if unknown. */
static time_t
row_time(struct kms_store *st, long long seq)
{
	sqlite3_stmt *s = NULL;
	time_t t = 0;

	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT time FROM audit WHERE seq = ?", -1, &s, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(s, 1, seq);
		if (sqlite3_step(s) == SQLITE_ROW)
			t = (time_t)sqlite3_column_int64(s, 0);
	}
	sqlite3_finalize(s);
	return t;
}

/*
 * kmsd signs a checkpoint at least every every_rows rows and every
 * interval seconds; more than twice as many rows unsigned, the oldest
 * older than twice the interval, means checkpoints were deleted (or kmsd
 * cannot sign them, which wants fixing as well).
 */
static int
check_overdue(struct kms_store *st, const struct ca_audit_ckpt *last, long long every_rows, long long interval,
    time_t now, struct ca_audit_report *rep)
{
	long long base = last->seq > ckpt_start(st) ? last->seq : ckpt_start(st);
	time_t oldest;
	char t[32];

	if (rep->rows - base <= 2 * every_rows)
		return 0;
	oldest = row_time(st, base + 1);
	if (now - oldest <= 2 * interval)
		return 0;
	kms_fail(KMS_ERR_CORRUPT, "%lld audit rows follow the last signed checkpoint (#%lld, row %lld), the oldest "
	    "(row %lld) from %s: checkpoints were deleted, or kmsd cannot sign them", rep->rows - base, last->no,
	    last->seq, base + 1, kms_time_format(oldest, t, sizeof(t)));
	return bad(rep, last->no + 1, base + 1);
}

int
ca_audit_verify(struct kms_store *st, X509 *ca_cert, const struct ca_audit_ckpt *known, long long every_rows,
    long long interval, time_t now, struct ca_audit_report *rep)
{
	struct ca_audit_ckpt last = { 0 };
	int rc;

	memset(rep, 0, sizeof(*rep));
	if ((rc = kms_audit_verify(st, &rep->bad_seq, &rep->rows)) != 0)
		return rc;
	rep->unsigned_rows = rep->rows;
	if (ca_cert == NULL)
		return 0;
	if ((rc = check_all(st, ca_cert, rep->rows, &last, rep)) != 0)
		return rc;
	if (known != NULL && known->no > last.no) {
		kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld (row %lld), signed by this kmsd, is gone: "
		    "the newest is #%lld", known->no, known->seq, last.no);
		return bad(rep, known->no, last.seq + 1);
	}
	rep->last = last;
	rep->unsigned_rows = rep->rows - last.seq;
	return every_rows > 0 ? check_overdue(st, &last, every_rows, interval, now, rep) : 0;
}
