/*
 * cmd_audit.c - the auditor's commands: list the audit trail and verify
 * its hash chain.
 */
#include "config.h"

#include <string.h>

#include "kmsd/commands.h"

#define AUDIT_MAX_ROWS 100000

/* One audit row as JSON, appended to the array arg. */
static int
row_json(void *arg, const struct kms_audit_row *row)
{
	json_t *rows = arg, *o;
	char t[32];

	o = json_pack("{s:I,s:s,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "seq", (json_int_t)row->seq,
	    "time", kms_time_format(row->rec.time, t, sizeof(t)), "uid", (json_int_t)row->rec.uid,
	    "user", row->rec.user, "role", row->rec.role, "cmd", row->rec.cmd, "target", row->rec.target,
	    "outcome", row->rec.outcome, "hash", row->hash);
	if (o == NULL)
		return KMS_ERR_NOMEM;
	if (row->rec.request_id)
		json_object_set_new(o, "request_id", json_string(row->rec.request_id));
	if (row->rec.detail)
		json_object_set_new(o, "detail", json_string(row->rec.detail));
	return json_array_append_new(rows, o) == 0 ? 0 : KMS_ERR_NOMEM;
}

json_t *
kmsd_cmd_audit(struct kmsd_req *req)
{
	static const char *const allowed[] = { "since", "limit", NULL };
	json_t *reply = NULL, *rows;
	const char *since;
	time_t t0 = 0;
	long long limit;
	int rc, truncated = 0;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	since = kmsd_arg_str(req, "since", 0, 64, &reply);
	if (reply || kmsd_arg_int(req, "limit", AUDIT_MAX_ROWS, 1, AUDIT_MAX_ROWS, &limit, &reply) != 0)
		return reply;
	if (since && (rc = kms_time_parse(since, &t0)) != 0)
		return kmsd_reply_fail(rc);
	snprintf(req->target, sizeof(req->target), "since %s", since ? since : "start");
	if ((rows = json_array()) == NULL)
		return kmsd_reply_fail(KMS_ERR_NOMEM);
	if ((rc = kms_audit_list(req->st, t0, limit, row_json, rows, &truncated)) != 0) {
		json_decref(rows);
		return kmsd_reply_fail(rc);
	}
	return kms_reply_ok(json_pack("{s:o,s:b}", "rows", rows, "truncated", truncated));
}

/* The failure reply: what is wrong, and the first bad row and checkpoint. */
static json_t *
verify_failed(struct kmsd_req *req, const struct ca_audit_report *rep)
{
	json_t *e = kms_reply_error("corrupt", "audit trail tampered with: %s", kms_last_error());

	snprintf(req->detail, sizeof(req->detail), "broken at row %lld, checkpoint %lld", rep->bad_seq,
	    rep->bad_checkpoint);
	if (e) {
		json_object_set_new(json_object_get(e, "error"), "first_bad_row", json_integer(rep->bad_seq));
		if (rep->bad_checkpoint)
			json_object_set_new(json_object_get(e, "error"), "bad_checkpoint", json_integer(rep->bad_checkpoint));
	}
	return e;
}

json_t *
kmsd_cmd_audit_verify(struct kmsd_req *req)
{
	static const char *const allowed[] = { NULL };
	struct ca_audit_report rep;
	json_t *reply = NULL;
	char t[32];
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "audit trail");
	rc = kmsd_audit_verify(req->st, &rep);
	if (rc == KMS_ERR_CORRUPT)
		return verify_failed(req, &rep);
	if (rc != 0)
		return kmsd_reply_fail(rc);
	snprintf(req->detail, sizeof(req->detail), "%lld rows intact, %lld checkpoints, %lld rows unsigned", rep.rows,
	    rep.checkpoints, rep.unsigned_rows);
	reply = json_pack("{s:b,s:I,s:I,s:I,s:I}", "intact", 1, "rows", (json_int_t)rep.rows,
	    "checkpoints", (json_int_t)rep.checkpoints, "signed_row", (json_int_t)rep.last.seq,
	    "unsigned_rows", (json_int_t)rep.unsigned_rows);
	if (reply && rep.last.no)
		json_object_set_new(reply, "signed_time", json_string(kms_time_format(rep.last.time, t, sizeof(t))));
	return kms_reply_ok(reply);
}
