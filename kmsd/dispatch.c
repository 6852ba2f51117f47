/*
 * dispatch.c - the table from command names to handlers, and the argument
 * helpers every handler uses so that bad arguments always get the same
 * clear bad_args reply.
 */
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>

#include "kmsd/commands.h"

static const struct {
	const char *name;
	kmsd_handler_fn fn;
} handlers[] = {
	{ "status", kmsd_cmd_status },
	{ "init", kmsd_cmd_init },
	{ "enroll", kmsd_cmd_enroll },
	{ "issue", kmsd_cmd_issue },
	{ "list", kmsd_cmd_list },
	{ "show", kmsd_cmd_show },
	{ "revoke", kmsd_cmd_revoke },
	{ "crl", kmsd_cmd_crl },
	{ "crl.list_external", kmsd_cmd_crl_list_external },
	{ "recover.request", kmsd_cmd_recover_request },
	{ "recover.approve", kmsd_cmd_recover_approve },
	{ "recover.list", kmsd_cmd_recover_list },
	{ "recover.close", kmsd_cmd_recover_close },
	{ "recover.fetch", kmsd_cmd_recover_fetch },
	{ "escrow.rotate", kmsd_cmd_escrow_rotate },
	{ "archive.release", kmsd_cmd_archive_release },
	{ "audit", kmsd_cmd_audit },
	{ "audit.verify", kmsd_cmd_audit_verify },
	{ "publish.status", kmsd_cmd_publish_status },
	{ "publish.resync", kmsd_cmd_publish_resync },
	{ "cert", kmsd_cmd_cert },
};

kmsd_handler_fn
kmsd_handler_find(const char *cmd)
{
	for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++)
		if (strcmp(handlers[i].name, cmd) == 0)
			return handlers[i].fn;
	return NULL;
}

void
kmsd_req_target_from_args(struct kmsd_req *req)
{
	static const char *const names[] = { "email", "target", "serial", "id", "request", NULL };

	for (int i = 0; names[i]; i++) {
		json_t *v = json_object_get(req->args, names[i]);

		if (json_is_string(v)) {
			kms_sanitize(json_string_value(v), 200, req->target, sizeof(req->target));
			return;
		}
	}
}

json_t *
kmsd_reply_fail(int err)
{
	const char *msg = kms_last_error();

	return kms_reply_error(kms_err_code_name(err), "%s", msg[0] ? msg : kms_strerror(err));
}

const char *
kmsd_arg_str(struct kmsd_req *req, const char *name, int required, size_t maxlen, json_t **reply)
{
	json_t *v = json_object_get(req->args, name);
	const char *s;

	if (v == NULL || json_is_null(v)) {
		if (required)
			*reply = kms_reply_error("bad_args", "%s: missing argument \"%s\"", req->cmd, name);
		return NULL;
	}
	if (!json_is_string(v)) {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" must be a string", req->cmd, name);
		return NULL;
	}
	s = json_string_value(v);
	if (strlen(s) != json_string_length(v)) {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" contains a NUL byte", req->cmd, name);
		return NULL;
	}
	if (json_string_length(v) > maxlen) {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" is longer than %zu bytes", req->cmd, name, maxlen);
		return NULL;
	}
	if (required && *s == '\0') {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" is empty", req->cmd, name);
		return NULL;
	}
	return s;
}

int
kmsd_arg_int(struct kmsd_req *req, const char *name, long long def, long long min, long long max,
    long long *out, json_t **reply)
{
	json_t *v = json_object_get(req->args, name);

	if (v == NULL || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" must be an integer from %lld to %lld",
		    req->cmd, name, min, max);
		return KMS_ERR_INVALID;
	}
	*out = json_integer_value(v);
	return 0;
}

int
kmsd_arg_bool(struct kmsd_req *req, const char *name, int def, int *out, json_t **reply)
{
	json_t *v = json_object_get(req->args, name);

	if (v == NULL || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v)) {
		*reply = kms_reply_error("bad_args", "%s: argument \"%s\" must be true or false", req->cmd, name);
		return KMS_ERR_INVALID;
	}
	*out = json_is_true(v);
	return 0;
}

int
kmsd_args_only(struct kmsd_req *req, const char *const *names, json_t **reply)
{
	const char *key;
	json_t *v;

	json_object_foreach(req->args, key, v) {
		int known = 0;

		for (int i = 0; names[i] && !known; i++)
			known = strcmp(key, names[i]) == 0;
		if (!known) {
			char clean[64];

			*reply = kms_reply_error("bad_args", "%s: unknown argument \"%s\"", req->cmd,
			    kms_sanitize(key, 60, clean, sizeof(clean)));
			return KMS_ERR_INVALID;
		}
	}
	return 0;
}

json_t *
kmsd_cert_json(const struct ca_cert_row *r, int full)
{
	char nb[32], na[32], is[32], rv[32], iv[32];
	json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}",
	    "serial", r->serial, "email", r->email, "name", r->name, "usage", r->usage,
	    "key_type", r->key_type, "origin", r->origin,
	    "not_before", kms_time_format(r->not_before, nb, sizeof(nb)),
	    "not_after", kms_time_format(r->not_after, na, sizeof(na)),
	    "issued", kms_time_format(r->issued, is, sizeof(is)));

	if (o == NULL)
		return NULL;
	if (r->revoked_at) {
		json_object_set_new(o, "revoked_at", json_string(kms_time_format(r->revoked_at, rv, sizeof(rv))));
		json_object_set_new(o, "reason", json_string(ca_reason_name(r->reason)));
		if (r->invalidity)
			json_object_set_new(o, "invalidity_date", json_string(kms_time_format(r->invalidity, iv, sizeof(iv))));
		json_object_set_new(o, "status", json_string("revoked"));
	} else {
		json_object_set_new(o, "status", json_string(r->not_after < time(NULL) ? "expired" : "valid"));
	}
	if (full) {
		const unsigned char *p = r->der;
		X509 *x = d2i_X509(NULL, &p, (long)r->der_len);

		json_object_set_new(o, "subject", json_string(r->subject));
		json_object_set_new(o, "issued_by", json_string(r->issued_by));
		if (x) {
			char *fp = ca_cert_fingerprint(x);
			BIO *b = BIO_new(BIO_s_mem());
			char *issuer = X509_NAME_oneline(X509_get_issuer_name(x), NULL, 0);

			if (fp)
				json_object_set_new(o, "sha256", json_string(fp));
			if (issuer)
				json_object_set_new(o, "issuer", json_string(issuer));
			if (b && PEM_write_bio_X509(b, x)) {
				char *data;
				long len = BIO_get_mem_data(b, &data);

				json_object_set_new(o, "pem", json_stringn(data, (size_t)len));
			}
			OPENSSL_free(issuer);
			BIO_free(b);
			free(fp);
			X509_free(x);
		}
	}
	return o;
}

#define GENERATED_PW_ITERATIONS 2048
#define GENERATED_PW_SIZE 25

/*
 * The password a security file goes under (the client's, or one generated
 * into genpw) and the PBKDF2 iterations that go with it.  Key stretching
 * protects passwords people chose; a generated one carries 139 random
 * bits, so more iterations would only cost time and it gets OpenSSL's
 * default count.
 */
static int
p12_password(const char *password, const struct kms_config *cfg, char genpw[GENERATED_PW_SIZE], const char **pw,
    int *iter, enum ca_p12_format *fmt)
{
	int rc;

	genpw[0] = '\0';
	*pw = password;
	if (password == NULL) {
		if ((rc = kms_random_password(genpw, GENERATED_PW_SIZE)) != 0)
			return rc;
		*pw = genpw;
	}
	*fmt = CA_P12_MODERN;
	ca_p12_format_from_name(cfg->ca.pkcs12_format, fmt);
	*iter = (int)cfg->ca.pkcs12_iterations;
	if (genpw[0] && *iter > GENERATED_PW_ITERATIONS)
		*iter = GENERATED_PW_ITERATIONS;
	return 0;
}

/* Put the file (base64) and a generated password into the reply; wipes der. */
static int
p12_reply(json_t *res, unsigned char *der, size_t len, const char *genpw, const struct kms_config *cfg)
{
	char *b64 = kms_b64_encode(der, len);

	kms_wipe(der, len);
	free(der);
	if (b64 == NULL)
		return KMS_ERR_NOMEM;
	json_object_set_new(res, "pkcs12", json_string(b64));
	json_object_set_new(res, "format", json_string(cfg->ca.pkcs12_format));
	if (genpw[0])
		json_object_set_new(res, "password", json_string(genpw));
	kms_wipe(b64, strlen(b64));
	free(b64);
	return 0;
}

int
kmsd_p12_into(json_t *res, const struct ca_p12_item *items, size_t n, X509 *ca_cert, const char *password,
    const struct kms_config *cfg)
{
	char genpw[GENERATED_PW_SIZE];
	const char *pw;
	unsigned char *p12 = NULL;
	size_t len = 0;
	enum ca_p12_format fmt;
	STACK_OF(X509) *chain = sk_X509_new_null();
	int rc, iter;

	genpw[0] = '\0';
	if (chain == NULL || (ca_cert != NULL && !sk_X509_push(chain, ca_cert))) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if ((rc = p12_password(password, cfg, genpw, &pw, &iter, &fmt)) != 0)
		goto out;
	if ((rc = ca_p12_build(items, n, chain, pw, fmt, iter, &p12, &len)) != 0)
		goto out;
	rc = p12_reply(res, p12, len, genpw, cfg);
out:
	kms_wipe(genpw, sizeof(genpw));
	sk_X509_free(chain);
	return rc;
}

int
kmsd_p12_recovered_into(json_t *res, const struct esc_recovered *r, const char *email, X509 *ca_cert,
    const char *password, const struct kms_config *cfg)
{
	char genpw[GENERATED_PW_SIZE];
	const char *pw;
	unsigned char *p12 = NULL;
	size_t len = 0;
	enum ca_p12_format fmt;
	int rc, iter;

	if ((rc = p12_password(password, cfg, genpw, &pw, &iter, &fmt)) == 0 &&
	    (rc = esc_recovered_p12(r, email, ca_cert, pw, fmt, iter, &p12, &len)) == 0)
		rc = p12_reply(res, p12, len, genpw, cfg);
	kms_wipe(genpw, sizeof(genpw));
	return rc;
}
