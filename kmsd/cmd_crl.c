/*
 * cmd_crl.c - revoke and crl: mark certificates revoked, make the very
 * next lookup in this process see it, then sign and publish a new CRL.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "kmsd/commands.h"

/* Extend the current index with one revocation; no full rebuild. */
static void
index_add(const struct ca_cert_row *row, time_t when, int reason, time_t invalidity)
{
	struct ca_rev_info info = { .revoked_at = when, .reason = reason, .invalidity = invalidity };
	const unsigned char *p = row->der;
	X509 *x = d2i_X509(NULL, &p, (long)row->der_len);

	if (x == NULL || kmsd_revidx_add(X509_get_issuer_name(x), X509_get0_serialNumber(x), &info) != 0)
		kms_log(KMS_LOG_ERR, "revocation index: cannot add %s: %s", row->serial, kms_last_error());
	X509_free(x);
}

/* The revoke reply: what was revoked now and what was revoked before. */
static json_t *
revoke_json(const char *target, const struct ca_revoke_result *res, int reason)
{
	json_t *done = json_array(), *already = json_array();

	for (size_t i = 0; i < res->n; i++) {
		const struct ca_cert_row *row = &res->rows[i];
		char t[32];

		if (res->outcome[i] == CA_REVOKE_DONE)
			json_array_append_new(done, json_string(row->serial));
		else if (res->outcome[i] == CA_REVOKE_ALREADY)
			json_array_append_new(already, json_pack("{s:s,s:s,s:s}", "serial", row->serial,
			    "revoked_at", kms_time_format(row->revoked_at, t, sizeof(t)), "reason",
			    ca_reason_name(row->reason)));
	}
	return kms_reply_ok(json_pack("{s:s,s:o,s:o,s:s}", "target", target, "revoked", done,
	    "already_revoked", already, "reason", ca_reason_name(reason)));
}

json_t *
kmsd_cmd_revoke(struct kmsd_req *req)
{
	static const char *const allowed[] = { "target", "reason", "invalidity_date", NULL };
	const struct ca *ca = kmsd_ca();
	const char *target, *reason_name, *inv;
	json_t *reply = NULL;
	struct ca_revoke_result res;
	time_t now = time(NULL), invalidity = 0;
	int reason = 0, rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	target = kmsd_arg_str(req, "target", 1, KMS_ADDR_MAX, &reply);
	reason_name = kmsd_arg_str(req, "reason", 0, 64, &reply);
	inv = kmsd_arg_str(req, "invalidity_date", 0, 64, &reply);
	if (reply)
		return reply;
	kms_sanitize(target, KMS_ADDR_MAX, req->target, sizeof(req->target));
	if (reason_name && (reason = ca_reason_from_name(reason_name)) < 0)
		return kms_reply_error("bad_args", "revoke: unknown reason \"%.64s\"; use one of unspecified, "
		    "keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, "
		    "certificateHold, privilegeWithdrawn, aACompromise", reason_name);
	if (reason == 8)
		return kms_reply_error("bad_args", "revoke: removeFromCRL is only for delta CRLs, not a reason to revoke");
	if (inv && (rc = kms_time_parse(inv, &invalidity)) != 0)
		return kmsd_reply_fail(rc);
	if (invalidity > now)
		return kms_reply_error("bad_args", "revoke: the invalidity date is in the future");
	if (ca == NULL || ca->key == NULL)
		return kms_reply_error("bad_state", "revoke: the CA is not initialised or its key is not loaded");
	if ((rc = ca_revoke_target(req->st, target, now, reason, invalidity, &res)) != 0) {
		if (rc == KMS_ERR_NOTFOUND)
			return kms_reply_error("not_found", "revoke: no certificate for \"%s\"", req->target);
		if (rc == KMS_ERR_INVALID)
			return kms_reply_error("bad_args", "revoke: %s", kms_last_error());
		return kmsd_reply_fail(rc);
	}
	kmsd_ldap_kick();
	for (size_t i = 0; i < res.n; i++)
		if (res.outcome[i] == CA_REVOKE_DONE)
			index_add(&res.rows[i], now, reason, invalidity);
	if (res.nrevoked > 0 && kmsd_crl_publish_new(req->st, "revocation") != 0) {
		/* The revocation stands and the index has it; the timer retries the CRL. */
		kms_log(KMS_LOG_ERR, "revoke: the new CRL could not be published yet: %s", kms_last_error());
	}
	snprintf(req->detail, sizeof(req->detail), "%zu certificate(s) revoked, reason %s%s", res.nrevoked,
	    ca_reason_name(reason), res.nalready ? "; some were already revoked" : "");
	reply = revoke_json(target, &res, reason);
	ca_revoke_result_free(&res);
	return reply;
}

json_t *
kmsd_cmd_crl(struct kmsd_req *req)
{
	static const char *const allowed[] = { "new", NULL };
	struct ca_crl_set *set = NULL;
	json_t *reply = NULL;
	int fresh, rc;
	char tu[32], nu[32];

	if (kmsd_args_only(req, allowed, &reply) != 0 || kmsd_arg_bool(req, "new", 0, &fresh, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "CRL");
	if (fresh && (rc = kmsd_crl_publish_new(req->st, "requested")) != 0)
		return kmsd_reply_fail(rc);
	if ((rc = ca_crl_latest(req->st, &set)) != 0)
		return rc == KMS_ERR_NOTFOUND ? kms_reply_error("not_found", "no CRL has been signed yet") :
		    kmsd_reply_fail(rc);
	{
		const unsigned char *p = set->full_der;
		X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)set->full_len);
		BIO *b = BIO_new(BIO_s_mem());
		char *data = NULL;
		long len = 0;

		if (crl && b && PEM_write_bio_X509_CRL(b, crl))
			len = BIO_get_mem_data(b, &data);
		reply = kms_reply_ok(json_pack("{s:I,s:s,s:s,s:I,s:s%}", "number", (json_int_t)set->full_number,
		    "this_update", kms_time_format(set->this_update, tu, sizeof(tu)),
		    "next_update", kms_time_format(set->next_update, nu, sizeof(nu)),
		    "entries", (json_int_t)(crl && X509_CRL_get_REVOKED(crl) ? sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)) : 0),
		    "pem", data ? data : "", (size_t)len));
		X509_CRL_free(crl);
		BIO_free(b);
	}
	ca_crl_set_free(set);
	return reply;
}

/*
 * crl list-external: every [crl] external CRL, then every CRL fetched
 * from a distribution point seen in mail, each with its state.
 */
json_t *
kmsd_cmd_crl_list_external(struct kmsd_req *req)
{
	static const char *const allowed[] = { NULL };
	struct pub_dp_status *v = NULL, *d = NULL, *nv;
	json_t *reply = NULL, *arr;
	size_t n = 0, nd = 0;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "external CRLs");
	if ((rc = kmsd_sync_list(&v, &n)) != 0)
		return kmsd_reply_fail(rc);
	if ((rc = kmsd_dp_list(&d, &nd)) != 0) {
		free(v);
		return kmsd_reply_fail(rc);
	}
	if (nd > 0) {
		if ((nv = realloc(v, (n + nd) * sizeof(*v))) == NULL) {
			free(v);
			free(d);
			return kmsd_reply_fail(kms_fail(KMS_ERR_NOMEM, "out of memory"));
		}
		v = nv;
		memcpy(v + n, d, nd * sizeof(*d));
		n += nd;
	}
	free(d);
	arr = json_array();
	for (size_t i = 0; arr != NULL && i < n; i++) {
		char tu[32] = "", nu[32] = "", la[32] = "", ls[32] = "", nf[32] = "";

		if (v[i].this_update)
			kms_time_format(v[i].this_update, tu, sizeof(tu));
		if (v[i].next_update)
			kms_time_format(v[i].next_update, nu, sizeof(nu));
		if (v[i].last_attempt)
			kms_time_format(v[i].last_attempt, la, sizeof(la));
		if (v[i].last_success)
			kms_time_format(v[i].last_success, ls, sizeof(ls));
		if (v[i].next_fetch)
			kms_time_format(v[i].next_fetch, nf, sizeof(nf));
		json_array_append_new(arr, json_pack("{s:s,s:s,s:b,s:I,s:I,s:b,s:I,s:s,s:s,s:s,s:s,s:s,s:s}",
		    "url", v[i].url, "issuer", v[i].issuer, "have_copy", v[i].have_copy,
		    "entries", (json_int_t)v[i].entries, "number", (json_int_t)v[i].number,
		    "delta", v[i].want_delta, "delta_base", (json_int_t)(v[i].want_delta ? v[i].delta_base : -1),
		    "this_update", tu, "next_update", nu, "last_attempt", la, "last_success", ls,
		    "next_fetch", nf, "error", v[i].error));
	}
	free(v);
	snprintf(req->detail, sizeof(req->detail), "%zu external CRL(s)", n);
	return kms_reply_ok(json_pack("{s:o}", "crls", arr ? arr : json_array()));
}
