/*
 * commands.h - control command handlers (internal to kmsd).
 *
 * A handler gets the parsed request with the peer's identity and role, its
 * own store connection, and the environment; it returns the reply object
 * (kms_reply_ok / kms_reply_error) and fills target, request_id and
 * detail for the audit row the server writes.
 */
#ifndef KMSD_COMMANDS_H
#define KMSD_COMMANDS_H

#include <jansson.h>
#include <sys/types.h>

#include "archive/archive.h"
#include "kmsd/kmsd.h"

struct kmsd_req {
	const char *cmd;
	json_t *args;               /* always an object */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	char user[64];              /* peer's user name, or the uid */
	unsigned roles;             /* every role the peer holds */
	const char *role;           /* the role this command runs under */
	struct kmsd_env *env;
	struct kms_store *st;
	/* for the audit row */
	char target[256];
	char request_id[64];
	char detail[512];
	int audited;                /* the handler wrote the audit row itself */
};

/*
 * Text a handler keeps beside the request: an error message it copies
 * (kms_last_error, cleaned), a part of an audit detail such as an officer
 * list or a summary (it must leave room in detail[]), and the cleaned
 * Message-ID and Date of a released message.
 */
#define KMSD_ERR_TEXT 300
#define KMSD_PART_TEXT 400
#define KMSD_MSGID_TEXT 200
#define KMSD_DATE_TEXT 100

typedef json_t *(*kmsd_handler_fn)(struct kmsd_req *req);

kmsd_handler_fn kmsd_handler_find(const char *cmd);
/*
 * Write the request's audit row now, inside the handler's open transaction
 * (so it commits, or rolls back, with the change it records; one disk sync
 * instead of two).  The server then writes no second row.  A handler that
 * fails after its commit clears req->audited to have the failure recorded.
 */
int kmsd_audit_record(struct kmsd_req *req, const char *outcome);
/* Fill req->target from the usual argument names, for refused requests. */
void kmsd_req_target_from_args(struct kmsd_req *req);

/* An error reply from a KMS_ERR_* code and kms_last_error(). */
json_t *kmsd_reply_fail(int err);
/*
 * A string argument: NULL and *reply set to a bad_args error when it is
 * required and missing, not a string, empty or longer than maxlen.
 */
const char *kmsd_arg_str(struct kmsd_req *req, const char *name, int required, size_t maxlen, json_t **reply);
/* An integer argument in [min, max] (def when absent). */
int kmsd_arg_int(struct kmsd_req *req, const char *name, long long def, long long min, long long max,
    long long *out, json_t **reply);
/* A boolean argument (def when absent). */
int kmsd_arg_bool(struct kmsd_req *req, const char *name, int def, int *out, json_t **reply);
/* Refuse any argument not in the NULL-terminated list. */
int kmsd_args_only(struct kmsd_req *req, const char *const *names, json_t **reply);

/* Handlers, by file. */
json_t *kmsd_cmd_status(struct kmsd_req *req);
json_t *kmsd_cmd_init(struct kmsd_req *req);
json_t *kmsd_cmd_enroll(struct kmsd_req *req);
json_t *kmsd_cmd_issue(struct kmsd_req *req);
json_t *kmsd_cmd_list(struct kmsd_req *req);
json_t *kmsd_cmd_show(struct kmsd_req *req);
json_t *kmsd_cmd_revoke(struct kmsd_req *req);
json_t *kmsd_cmd_crl(struct kmsd_req *req);
json_t *kmsd_cmd_crl_list_external(struct kmsd_req *req);
json_t *kmsd_cmd_recover_request(struct kmsd_req *req);
json_t *kmsd_cmd_recover_approve(struct kmsd_req *req);
json_t *kmsd_cmd_recover_list(struct kmsd_req *req);
json_t *kmsd_cmd_recover_close(struct kmsd_req *req);
json_t *kmsd_cmd_recover_fetch(struct kmsd_req *req);
json_t *kmsd_cmd_escrow_rotate(struct kmsd_req *req);
json_t *kmsd_cmd_archive_release(struct kmsd_req *req);
json_t *kmsd_cmd_audit(struct kmsd_req *req);
json_t *kmsd_cmd_audit_verify(struct kmsd_req *req);
json_t *kmsd_cmd_publish_status(struct kmsd_req *req);
json_t *kmsd_cmd_publish_resync(struct kmsd_req *req);
json_t *kmsd_cmd_cert(struct kmsd_req *req);

/* Helpers shared by handlers. */
/*
 * Build the PKCS#12 of items (and the CA certificate) under password, or a
 * generated one, and put it into res as "pkcs12" (base64), "format" and,
 * when generated, "password".  Every copy of the file is wiped.
 */
int kmsd_p12_into(json_t *res, const struct ca_p12_item *items, size_t n, X509 *ca_cert, const char *password,
    const struct kms_config *cfg);
/* The same for keys recovered from escrow (friendly names by esc_recovered_p12). */
int kmsd_p12_recovered_into(json_t *res, const struct esc_recovered *r, const char *email, X509 *ca_cert,
    const char *password, const struct kms_config *cfg);
/* JSON description of a certificate row. */
json_t *kmsd_cert_json(const struct ca_cert_row *row, int full);

#endif
