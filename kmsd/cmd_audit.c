/*
 * cmd_audit.c - the auditor's commands: list the audit trail and verify
 * its hash chain.
 */
#include "config.h"

#include <string.h>

#include "kmsd/commands.h"

#define AUDIT_MAX_ROWS 100000

static const char *
col(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return t ? (const char *)t : "";
}

json_t *
kmsd_cmd_audit(struct kmsd_req *req)
{
	static const char *const allowed[] = { "since", "limit", NULL };
	json_t *reply = NULL, *rows;
	const char *since;
	time_t t0 = 0;
	long long limit;
	sqlite3_stmt *s = NULL;
	int rc, truncated = 0;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	since = kmsd_arg_str(req, "since", 0, 64, &reply);
	if (reply || kmsd_arg_int(req, "limit", AUDIT_MAX_ROWS, 1, AUDIT_MAX_ROWS, &limit, &reply) != 0)
		return reply;
	if (since && (rc = kms_time_parse(since, &t0)) != 0)
		return kmsd_reply_fail(rc);
	snprintf(req->target, sizeof(req->target), "since %s", since ? since : "start");
	/* The newest rows when there are more than the limit, listed oldest first. */
	if (sqlite3_prepare_v2(kms_store_db(req->st),
	    "SELECT * FROM (SELECT seq, time, uid, user, role, cmd, target, outcome, request_id, detail, hash "
	    "FROM audit WHERE time >= ? ORDER BY seq DESC LIMIT ?) ORDER BY seq", -1, &s, NULL) != SQLITE_OK)
		return kmsd_reply_fail(kms_store_fail(req->st, "audit"));
	sqlite3_bind_int64(s, 1, (long long)t0);
	sqlite3_bind_int64(s, 2, limit + 1);
	rows = json_array();
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		char t[32];
		json_t *o;

		if ((long long)json_array_size(rows) == limit) {
			truncated = 1;
			json_array_remove(rows, 0);
		}
		o = json_pack("{s:I,s:s,s:I,s:s,s:s,s:s,s:s,s:s,s:s}",
		    "seq", (json_int_t)sqlite3_column_int64(s, 0),
		    "time", kms_time_format((time_t)sqlite3_column_int64(s, 1), t, sizeof(t)),
		    "uid", (json_int_t)sqlite3_column_int64(s, 2), "user", col(s, 3), "role", col(s, 4),
		    "cmd", col(s, 5), "target", col(s, 6), "outcome", col(s, 7), "hash", col(s, 10));
		if (o && sqlite3_column_type(s, 8) != SQLITE_NULL)
			json_object_set_new(o, "request_id", json_string(col(s, 8)));
		if (o && sqlite3_column_type(s, 9) != SQLITE_NULL)
			json_object_set_new(o, "detail", json_string(col(s, 9)));
		json_array_append_new(rows, o);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE) {
		json_decref(rows);
		return kmsd_reply_fail(kms_store_fail(req->st, "audit"));
	}
	return kms_reply_ok(json_pack("{s:o,s:b}", "rows", rows, "truncated", truncated));
}

json_t *
kmsd_cmd_audit_verify(struct kmsd_req *req)
{
	static const char *const allowed[] = { NULL };
	json_t *reply = NULL;
	long long bad = 0, rows = 0;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "audit trail");
	rc = kms_audit_verify(req->st, &bad, &rows);
	if (rc == KMS_ERR_CORRUPT) {
		json_t *e = kms_reply_error("corrupt", "audit trail tampered with: %s", kms_last_error());

		snprintf(req->detail, sizeof(req->detail), "chain broken at row %lld", bad);
		if (e)
			json_object_set_new(json_object_get(e, "error"), "first_bad_row", json_integer(bad));
		return e;
	}
	if (rc != 0)
		return kmsd_reply_fail(rc);
	snprintf(req->detail, sizeof(req->detail), "%lld rows intact", rows);
	return kms_reply_ok(json_pack("{s:b,s:I}", "intact", 1, "rows", (json_int_t)rows));
}
