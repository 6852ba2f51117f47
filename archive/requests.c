/*
 * requests.c - recovery requests and their approvals in the store: open,
 * load, change state, record an approval, list, find the ones due to
 * expire, and fail the open ones when kmsd stops.
 *
 * Entry points: esc_request_open(), esc_request_load(),
 * esc_request_set_state(), esc_request_add_approval(), esc_request_list(),
 * esc_request_due(), esc_request_fail_open(), esc_request_officers().
 *
 * Only records live here.  The shares given so far and the recovered keys
 * never reach the store: kmsd keeps them in locked memory.  Who may approve
 * is policy's rule (pol_approval_check).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <openssl/rand.h>

#include "archive/archive.h"

/* Requests listed by esc_request_list that ended this long ago are left out. */
#define ENDED_SHOWN_SECONDS (7 * 86400)

static const char *
text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return t ? (const char *)t : "";
}

static int
new_request_id(char *buf, size_t len)
{
	unsigned char r[6];

	if (RAND_bytes(r, sizeof(r)) != 1)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "random");
	snprintf(buf, len, "R-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
	return 0;
}

int
esc_request_open(struct kms_store *st, const struct esc_request_new *nr, char id[ESC_REQUEST_ID_MAX])
{
	sqlite3_stmt *s = NULL;
	int rc;

	id[0] = '\0';
	if (strcmp(nr->purpose, "key") != 0 && strcmp(nr->purpose, "archive") != 0 && strcmp(nr->purpose, "rotate") != 0)
		return kms_fail(KMS_ERR_INVALID, "a recovery request is for key, archive or rotate, not %s", nr->purpose);
	if ((rc = new_request_id(id, ESC_REQUEST_ID_MAX)) != 0)
		return rc;
	if (sqlite3_prepare_v2(kms_store_db(st), "INSERT INTO recovery(id, purpose, email, why, requester_uid, "
	    "requester, krk_id, created, expires, state, state_time, share_dir, pass_dir) "
	    "VALUES (?,?,?,?,?,?,?,?,?,'open',?,?,?)", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery request");
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, nr->purpose, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, nr->email ? nr->email : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, nr->why, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 5, (long long)nr->requester_uid);
	sqlite3_bind_text(s, 6, nr->requester, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 7, nr->krk_id);
	sqlite3_bind_int64(s, 8, (long long)nr->now);
	sqlite3_bind_int64(s, 9, (long long)nr->expires);
	sqlite3_bind_int64(s, 10, (long long)nr->now);
	sqlite3_bind_text(s, 11, nr->share_dir ? nr->share_dir : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 12, nr->pass_dir ? nr->pass_dir : "", -1, SQLITE_STATIC);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, "recovery request");
	sqlite3_finalize(s);
	if (rc != 0)
		id[0] = '\0';
	return rc;
}

int
esc_request_load(struct kms_store *st, const char *id, struct esc_request *rq)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	int rc;

	memset(rq, 0, sizeof(*rq));
	if (sqlite3_prepare_v2(db, "SELECT id, purpose, email, why, requester_uid, requester, krk_id, created, "
	    "expires, state, state_time, detail FROM recovery WHERE id = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery request");
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		sqlite3_finalize(s);
		return rc == SQLITE_DONE ? kms_fail(KMS_ERR_NOTFOUND, "no recovery request %s", id) :
		    kms_store_fail(st, "recovery request");
	}
	snprintf(rq->id, sizeof(rq->id), "%s", text(s, 0));
	snprintf(rq->purpose, sizeof(rq->purpose), "%s", text(s, 1));
	snprintf(rq->email, sizeof(rq->email), "%s", text(s, 2));
	snprintf(rq->why, sizeof(rq->why), "%s", text(s, 3));
	rq->requester_uid = (uid_t)sqlite3_column_int64(s, 4);
	snprintf(rq->requester, sizeof(rq->requester), "%s", text(s, 5));
	rq->krk_id = sqlite3_column_int64(s, 6);
	rq->created = (time_t)sqlite3_column_int64(s, 7);
	rq->expires = (time_t)sqlite3_column_int64(s, 8);
	snprintf(rq->state, sizeof(rq->state), "%s", text(s, 9));
	rq->state_time = (time_t)sqlite3_column_int64(s, 10);
	snprintf(rq->detail, sizeof(rq->detail), "%s", text(s, 11));
	sqlite3_finalize(s);
	if (sqlite3_prepare_v2(db, "SELECT officer_uid, officer, share_idx FROM approvals WHERE request_id = ? "
	    "ORDER BY time, share_idx", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "approvals");
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && rq->napprovals < ESC_MAX_APPROVALS) {
		struct esc_approval *a = &rq->approvals[rq->napprovals++];

		a->officer_uid = (uid_t)sqlite3_column_int64(s, 0);
		snprintf(a->officer, sizeof(a->officer), "%s", text(s, 1));
		a->share_index = sqlite3_column_int(s, 2);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return kms_store_fail(st, "approvals");
	return 0;
}

int
esc_request_set_state(struct kms_store *st, const char *id, const char *state, const char *detail, time_t now)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), "UPDATE recovery SET state = ?, state_time = ?, "
	    "detail = coalesce(?, detail) WHERE id = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery state");
	sqlite3_bind_text(s, 1, state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (long long)now);
	if (detail)
		sqlite3_bind_text(s, 3, detail, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, "recovery state");
	if (rc == 0 && sqlite3_changes(kms_store_db(st)) == 0)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no recovery request %s", id);
	sqlite3_finalize(s);
	return rc;
}

int
esc_request_add_approval(struct kms_store *st, struct esc_request *rq, uid_t officer_uid, const char *officer,
    int share_index, time_t now)
{
	sqlite3_stmt *s = NULL;
	struct esc_approval *a;
	int rc;

	if (rq->napprovals >= ESC_MAX_APPROVALS)
		return kms_fail(KMS_ERR_TOOBIG, "request %s has all the approvals it can take", rq->id);
	if (sqlite3_prepare_v2(kms_store_db(st), "INSERT INTO approvals(request_id, officer_uid, officer, "
	    "share_idx, time) VALUES (?,?,?,?,?)", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "approval");
	sqlite3_bind_text(s, 1, rq->id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (long long)officer_uid);
	sqlite3_bind_text(s, 3, officer, -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 4, share_index);
	sqlite3_bind_int64(s, 5, (long long)now);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, "approval");
	sqlite3_finalize(s);
	if (rc != 0)
		return rc;
	a = &rq->approvals[rq->napprovals++];
	a->officer_uid = officer_uid;
	snprintf(a->officer, sizeof(a->officer), "%s", officer);
	a->share_index = share_index;
	return 0;
}

void
esc_request_officers(const struct esc_request *rq, char *buf, size_t len)
{
	size_t o = 0;

	if (len == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < rq->napprovals && o < len; i++) {
		int k = snprintf(buf + o, len - o, "%s%s (share %d)", i ? ", " : "", rq->approvals[i].officer,
		    rq->approvals[i].share_index);

		if (k < 0)
			break;
		o += (size_t)k;
	}
}

int
esc_request_list(struct kms_store *st, int all, time_t now, esc_request_row_fn fn, void *arg)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT r.id, r.purpose, r.email, r.why, r.requester, r.created, "
	    "r.expires, r.state, r.detail, k.threshold, (SELECT group_concat(officer, ', ') FROM approvals a "
	    "WHERE a.request_id = r.id), (SELECT count(*) FROM approvals a WHERE a.request_id = r.id), "
	    "r.requester_uid, r.share_dir, r.pass_dir FROM recovery r JOIN krk k ON k.id = r.krk_id WHERE ? OR r.state IN ('open', 'approved') "
	    "OR r.state_time > ? ORDER BY r.created", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery list");
	sqlite3_bind_int(s, 1, all);
	sqlite3_bind_int64(s, 2, (long long)now - ENDED_SHOWN_SECONDS);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct esc_request_row row = {
			.id = text(s, 0), .purpose = text(s, 1), .email = text(s, 2), .why = text(s, 3),
			.requester = text(s, 4), .created = (time_t)sqlite3_column_int64(s, 5),
			.expires = (time_t)sqlite3_column_int64(s, 6), .state = text(s, 7), .detail = text(s, 8),
			.threshold = sqlite3_column_int(s, 9), .officers = text(s, 10),
			.napprovals = sqlite3_column_int(s, 11), .requester_uid = (uid_t)sqlite3_column_int64(s, 12),
			.share_dir = text(s, 13), .pass_dir = text(s, 14),
		};

		if ((rc = fn(arg, &row)) != 0) {
			sqlite3_finalize(s);
			return rc;
		}
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : kms_store_fail(st, "recovery list");
}

int
esc_request_due(struct kms_store *st, time_t now, char (*ids)[ESC_REQUEST_ID_MAX], int max, int *n)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*n = 0;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT id FROM recovery WHERE state IN ('open', 'approved') "
	    "AND expires <= ? LIMIT ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery expiry");
	sqlite3_bind_int64(s, 1, (long long)now);
	sqlite3_bind_int(s, 2, max);
	while (*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW)
		snprintf(ids[(*n)++], ESC_REQUEST_ID_MAX, "%s", text(s, 0));
	sqlite3_finalize(s);
	return 0;
}

int
esc_request_fail_open(struct kms_store *st, const char *detail, time_t now)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), "UPDATE recovery SET state = 'failed', state_time = ?, detail = ? "
	    "WHERE state IN ('open', 'approved')", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "recovery state");
	sqlite3_bind_int64(s, 1, (long long)now);
	sqlite3_bind_text(s, 2, detail, -1, SQLITE_STATIC);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, "recovery state");
	sqlite3_finalize(s);
	return rc;
}
