/*
 * cmd_ca.c - control commands of the CA: status, init, enroll, issue,
 * list, show.
 *
 * init makes the root CA and the key-recovery key (KRK), splits the KRK
 * into officer shares written to files, and keeps only the KRK certificate.
 * enroll makes a user's signing and encryption key pairs and certificates,
 * escrows the encryption key in the same transaction that records both
 * certificates, and only then builds the PKCS#12 security file.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "archive/archive.h"
#include "kmsd/commands.h"

#define MAX_PATH_ARG 1024

/* ------------------------------------------------------------------ status */

/* The "ca" part of status: our CA certificate (with its PEM) or "not initialised". */
static json_t *
ca_json(const struct kmsd_env *env, const struct ca *ca)
{
	json_t *jca;
	char t[32];

	if (env->ca_cert) {
		char *fp = ca_cert_fingerprint(env->ca_cert);
		char *subj = X509_NAME_oneline(X509_get_subject_name(env->ca_cert), NULL, 0);
		time_t na = 0;

		{
			struct tm tm;

			if (ASN1_TIME_to_tm(X509_get0_notAfter(env->ca_cert), &tm))
				na = timegm(&tm);
		}
		jca = json_pack("{s:b,s:s,s:s,s:s,s:s,s:b}", "initialized", 1, "name", env->cfg->ca.name,
		    "subject", subj ? subj : "", "sha256", fp ? fp : "", "not_after", kms_time_format(na, t, sizeof(t)),
		    "key_loaded", ca != NULL && ca->key != NULL);
		OPENSSL_free(subj);
		free(fp);
		{
			BIO *b = BIO_new(BIO_s_mem());
			char *data;
			long len;

			if (jca && b && PEM_write_bio_X509(b, env->ca_cert)) {
				len = BIO_get_mem_data(b, &data);
				json_object_set_new(jca, "pem", json_stringn(data, (size_t)len));
			}
			BIO_free(b);
		}
	} else {
		jca = json_pack("{s:b,s:s}", "initialized", 0, "name", env->cfg->ca.name);
	}
	return jca;
}

json_t *
kmsd_cmd_status(struct kmsd_req *req)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env = req->env;
	json_t *res, *roles = json_array(), *jca;
	X509 *krk = NULL;
	long long krk_id = 0;
	struct ca_crl_set *crl = NULL;
	char t[32];

	for (unsigned b = 1; b <= POL_ROLE_AUDITOR; b <<= 1)
		if (req->roles & b)
			json_array_append_new(roles, json_string(pol_role_name(b)));
	res = json_pack("{s:s,s:I,s:I,s:{s:I,s:s,s:o},s:s,s:s}",
	    "version", PACKAGE_VERSION, "uptime", kmsd_uptime(), "store_version", (json_int_t)kms_store_version(req->st),
	    "you", "uid", (json_int_t)req->uid, "user", req->user, "roles", roles,
	    "state_dir", env->cfg->kmsd.state_dir, "authserv_id", env->cfg->kmsd.authserv_id);
	if (res == NULL)
		return NULL;
	jca = ca_json(env, ca);
	json_object_set_new(res, "ca", jca);
	if (kmsd_krk_get(req->st, &krk, &krk_id) == 0) {
		char *fp = ca_cert_fingerprint(krk);

		json_object_set_new(res, "krk", json_pack("{s:I,s:s}", "id", (json_int_t)krk_id, "sha256", fp ? fp : ""));
		free(fp);
		X509_free(krk);
	}
	kms_clear_error();
	json_object_set_new(res, "ldap", kmsd_ldap_json(req->st, env->cfg));
	kms_clear_error();
	{
		struct ca_counts cc = { -1, -1, -1 };

		ca_store_counts(req->st, &cc);
		json_object_set_new(res, "counts", json_pack("{s:I,s:I,s:I,s:I}", "users", (json_int_t)cc.users,
		    "certificates", (json_int_t)cc.certificates, "revoked", (json_int_t)cc.revoked,
		    "escrowed_keys", (json_int_t)esc_store_count(req->st)));
	}
	{
		struct ca_revidx *idx = kmsd_revidx_get();

		json_object_set_new(res, "revocation", json_pack("{s:I,s:s}",
		    "entries", (json_int_t)(idx ? ca_revidx_count(idx) : 0),
		    "source", env->cfg->crl.source[0] ? env->cfg->crl.source : "store"));
		ca_revidx_unref(idx);
	}
	if (ca_crl_latest(req->st, &crl) == 0) {
		char nu[32];

		json_object_set_new(res, "crl", json_pack("{s:I,s:s,s:s,s:s}", "number", (json_int_t)crl->full_number,
		    "this_update", kms_time_format(crl->this_update, t, sizeof(t)),
		    "next_update", kms_time_format(crl->next_update, nu, sizeof(nu)),
		    "url", env->cfg->crl.url));
		ca_crl_set_free(crl);
	}
	kms_clear_error();
	return kms_reply_ok(res);
}

/* -------------------------------------------------------------------- init */

/* Passphrase of the CA key: the configured file, made (0600) when absent. */
static int
ca_passphrase(const struct kms_config *cfg, char **out, int *created)
{
	char buf[48];
	int rc;

	*created = 0;
	rc = kms_read_secret_file(cfg->ca.passphrase_file, out);
	if (rc != KMS_ERR_NOTFOUND)
		return rc;
	if ((rc = kms_random_password(buf, sizeof(buf))) != 0)
		return rc;
	buf[sizeof(buf) - 2] = '\n';
	rc = kms_write_file_excl(cfg->ca.passphrase_file, buf, strlen(buf), 0600);
	buf[sizeof(buf) - 2] = '\0';
	if (rc == 0) {
		*out = strdup(buf);
		*created = 1;
		rc = *out ? 0 : KMS_ERR_NOMEM;
	}
	kms_wipe(buf, sizeof(buf));
	return rc;
}

/* The init reply: what was made and where the shares are. */
static json_t *
init_json(const struct esc_init_result *ir, const char *org, const char *share_dir, int encrypted,
    const struct kms_config *cfg, int created, int default_dir)
{
	json_t *res = json_object(), *paths = json_array();
	char *cafp = ca_cert_fingerprint(ir->ca->cert), *krkfp = ca_cert_fingerprint(ir->krk_cert);
	char *subj = X509_NAME_oneline(X509_get_subject_name(ir->ca->cert), NULL, 0);

	for (int i = 0; i < ir->files.n; i++)
		json_array_append_new(paths, json_string(ir->files.paths[i]));
	json_object_set_new(res, "organization", json_string(org));
	json_object_set_new(res, "ca_subject", json_string(subj ? subj : ""));
	json_object_set_new(res, "ca_sha256", json_string(cafp ? cafp : ""));
	json_object_set_new(res, "krk_sha256", json_string(krkfp ? krkfp : ""));
	OPENSSL_free(subj);
	free(cafp);
	free(krkfp);
	json_object_set_new(res, "shares", paths);
	json_object_set_new(res, "share_dir", json_string(share_dir));
	json_object_set_new(res, "shares_encrypted", json_boolean(encrypted));
	json_object_set_new(res, "passphrase_file", json_string(cfg->ca.passphrase_file));
	json_object_set_new(res, "passphrase_file_created", json_boolean(created));
	if (default_dir)
		json_object_set_new(res, "warning", json_string(
		    "the recovery shares are in the state directory: give each file to its key-recovery officer "
		    "now and delete it here; anyone holding enough of them can recover every escrowed key"));
	return res;
}

json_t *
kmsd_cmd_init(struct kmsd_req *req)
{
	static const char *const allowed[] = { "org", "shares", "threshold", "share_dir", "share_passphrase_dir", NULL };
	const struct kms_config *cfg = req->env->cfg;
	json_t *reply = NULL, *res;
	const char *org, *share_dir, *pass_dir;
	long long n, m;
	char *pass = NULL;
	struct esc_init_result ir = { 0 };
	struct esc_share_dest dest = { -1, -1, 0, (uid_t)-1 };
	int created = 0, rc, default_dir;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	org = kmsd_arg_str(req, "org", 0, 64, &reply);
	if (reply)
		return reply;
	if (org == NULL || *org == '\0')
		org = cfg->ca.organization;
	if (*org == '\0')
		return kms_reply_error("bad_args", "init: give the organisation name (--org NAME)");
	if (kmsd_arg_int(req, "shares", cfg->escrow.shares, 2, ESC_MAX_SHARES, &n, &reply) != 0 ||
	    kmsd_arg_int(req, "threshold", cfg->escrow.threshold, 2, ESC_MAX_SHARES, &m, &reply) != 0)
		return reply;
	if (m > n)
		return kms_reply_error("bad_args", "init: threshold %lld is larger than the number of shares %lld", m, n);
	share_dir = kmsd_arg_str(req, "share_dir", 0, MAX_PATH_ARG, &reply);
	pass_dir = kmsd_arg_str(req, "share_passphrase_dir", 0, MAX_PATH_ARG, &reply);
	if (reply)
		return reply;
	if ((share_dir && share_dir[0] != '/') || (pass_dir && pass_dir[0] != '/'))
		return kms_reply_error("bad_args", "init: directories must be absolute paths");
	default_dir = share_dir == NULL || *share_dir == '\0';
	if (default_dir)
		share_dir = cfg->escrow.share_dir;
	snprintf(req->target, sizeof(req->target), "%s", org);
	if (!cfg->ca.enabled)
		return kms_reply_error("bad_state", "init: this kmsd is a replica ([ca] enabled = no)");
	if (kmsd_ca() != NULL || req->env->ca_cert != NULL)
		return kms_reply_error("exists", "init: the CA is already initialised");
	/* The requester's own directories, checked first: a refused path costs nothing and leaves nothing. */
	if (!default_dir && (rc = esc_share_dest_open(share_dir, pass_dir, req->uid,
	    geteuid() == 0 ? (uid_t)-1 : geteuid(), &dest)) != 0)
		goto fail;

	if ((rc = ca_passphrase(cfg, &pass, &created)) != 0)
		goto fail;
	kms_log(KMS_LOG_INFO, "init: making the %s root CA for \"%s\" and the %s key-recovery key, "
	    "%lld shares, threshold %lld", cfg->ca.key, org, cfg->escrow.krk_key, n, m);
	{
		struct esc_init_req in = { .org = org, .ca_name = cfg->ca.name, .ca_key_type = cfg->ca.key,
			.krk_key_type = cfg->escrow.krk_key, .ca_days = (int)cfg->ca.ca_validity_days,
			.crl_url = cfg->crl.url, .passphrase = pass, .not_before_margin = (int)cfg->ca.not_before_margin,
			.shares = (int)n, .threshold = (int)m,
			.share_dir = share_dir, .pass_dir = pass_dir, .dest = default_dir ? NULL : &dest,
			.user = req->user };

		if ((rc = esc_init(req->st, &in, &ir)) != 0)
			goto fail;
	}
	res = init_json(&ir, org, share_dir, pass_dir != NULL, cfg, created, default_dir);
	json_object_set_new(res, "threshold", json_integer(m));
	snprintf(req->detail, sizeof(req->detail), "CA and KRK created; %lld shares, threshold %lld, in %s", n, m, share_dir);
	kmsd_ca_install(ir.ca);
	ir.ca = NULL;
	kmsd_krk_forget();
	if (kmsd_env_refresh(req->st) != 0)
		kms_log(KMS_LOG_ERR, "init: cannot refresh the environment: %s", kms_last_error());
	if (kmsd_crl_publish_new(req->st, "init") != 0)
		kms_log(KMS_LOG_ERR, "init: cannot publish the first CRL: %s", kms_last_error());
	/* OCSP answers as soon as init does, not a timer tick later. */
	kmsd_ocsp_tick(req->st, time(NULL));
	/* The audit signer is made now; the first checkpoint follows as soon as init's own row is written. */
	kmsd_audit_tick(req->st, time(NULL));
	kms_log(KMS_LOG_WARNING, "init: %lld recovery shares written to %s: hand them to the officers and delete them there",
	    n, share_dir);
	reply = kms_reply_ok(res);
	goto out;
fail:
	if (created)
		unlink(cfg->ca.passphrase_file);
	reply = kmsd_reply_fail(rc);
out:
	esc_share_dest_close(&dest);
	esc_init_result_free(&ir);
	kms_secret_free(pass);
	return reply;
}

/* ------------------------------------------------------------------ enroll */

static json_t *
issued_json(X509 *x)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(x));
	struct tm tm;
	char t[32] = "";
	json_t *o;

	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm))
		kms_time_format(timegm(&tm), t, sizeof(t));
	o = json_pack("{s:s,s:s}", "serial", serial ? serial : "", "not_after", t);
	free(serial);
	return o;
}

/* Building a security file in a thread of its own. */
struct p12_job {
	json_t *res;                    /* gets "pkcs12", "format", "password" */
	struct ca_p12_item items[2];
	X509 *ca_cert;
	const char *password;
	const struct kms_config *cfg;
	int rc;
	char err[KMSD_ERR_TEXT];
};

static void *
p12_job_run(void *arg)
{
	struct p12_job *job = arg;

	job->rc = kmsd_p12_into(job->res, job->items, 2, job->ca_cert, job->password, job->cfg);
	if (job->rc != 0)
		snprintf(job->err, sizeof(job->err), "%s", kms_last_error());
	return NULL;
}

/* Wipe the file and password of a result that is not handed out. */
static void
p12_job_discard(struct p12_job *job)
{
	static const char *const secrets[] = { "pkcs12", "password", NULL };

	if (job->res == NULL)
		return;
	for (int i = 0; secrets[i]; i++) {
		const char *v = json_string_value(json_object_get(job->res, secrets[i]));

		if (v)
			kms_wipe((char *)v, strlen(v));
	}
	json_decref(job->res);
	job->res = NULL;
}

/* Refuse what enrollment cannot do before any key is made: the reply, or NULL. */
static json_t *
enroll_refusal(struct kmsd_req *req, const char *email, const char *password, int renew)
{
	const struct kms_config *cfg = req->env->cfg;
	const struct ca *ca = kmsd_ca();
	int rc;

	if (!kms_addr_valid(email))
		return kms_reply_error("bad_args", "enroll: \"%s\" is not a mailbox address (ASCII local@domain)", req->target);
	if (password && strlen(password) < 8)
		return kms_reply_error("bad_args", "enroll: the password must have at least 8 characters");
	/* gpgsm 2.2 cannot open a compat file under a longer password: refuse before issuing. */
	if (password && strlen(password) > 31 && strcmp(cfg->ca.pkcs12_format, "compat") == 0)
		return kms_reply_error("bad_args", "enroll: with pkcs12_format = compat the password may have at most "
		    "31 characters (gpgsm 2.2 fails on longer ones)");
	if (ca == NULL || ca->key == NULL)
		return kms_reply_error("bad_state", "enroll: the CA is not initialised (kmsctl init --org NAME)");
	rc = ca_store_has_valid(req->st, email, time(NULL));
	if (rc < 0)
		return kmsd_reply_fail(rc);
	if (rc == 1 && !renew)
		return kms_reply_error("exists", "enroll: %s already has valid certificates; use --renew for new ones", email);
	return NULL;
}

/*
 * Enrollment: keys, certificates and the escrow envelope are made first
 * (esc_enroll_prepare); the security file is built in its own thread while
 * the one transaction that records both certificates, the escrowed key and
 * the audit row syncs to disk; the file is handed out only after the
 * commit, so no file ever exists for an enrollment that did not commit.
 */
/*
 * The name a new pair is issued under: the one given, else on renewal the
 * one the user had, else NULL (the CA names the subject by the address).
 * *kept (malloc'd) holds a name read from the store.
 */
static int
enroll_name(struct kmsd_req *req, const char *email, const char *given, int renew, const char **name, char **kept)
{
	int rc;

	*kept = NULL;
	*name = given != NULL && *given != '\0' ? given : NULL;
	if (*name != NULL || !renew)
		return 0;
	if ((rc = ca_store_display_name(req->st, email, kept)) != 0)
		return rc == KMS_ERR_NOTFOUND ? 0 : rc;
	if (strcasecmp(*kept, email) != 0)
		*name = *kept;
	return 0;
}

/* Build the security file in a thread of its own (or here, if no thread can be made). */
static void
p12_job_start(struct p12_job *job, pthread_t *thread, int *started)
{
	*started = pthread_create(thread, NULL, p12_job_run, job) == 0;
	if (!*started)
		p12_job_run(job);
}

/*
 * Record the enrollment and its audit row in one transaction.  On failure
 * everything is rolled back, the audit row with it (the server then writes
 * the failure's own row).
 */
static int
enroll_commit(struct kmsd_req *req, const struct esc_enroll_req *er, const struct esc_enrollment *en, int renew,
    int generated, const unsigned char *smime, int smimelen)
{
	int rc;

	if ((rc = kms_store_begin(req->st)) != 0)
		return rc;
	snprintf(req->detail, sizeof(req->detail), "%s; encryption key escrowed%s", renew ? "renewal" : "enrollment",
	    generated ? "; password generated" : "");
	if ((rc = esc_enroll_record(req->st, er, en)) != 0 ||
	    (rc = ca_store_put_smime(req->st, en->scert, smime, (size_t)smimelen)) != 0 ||
	    (rc = kmsd_audit_record(req, "ok")) != 0 ||
	    (rc = kms_store_commit(req->st)) != 0) {
		kms_store_rollback(req->st);
		req->audited = 0;
		return rc;
	}
	kmsd_ldap_kick();
	return 0;
}

json_t *
kmsd_cmd_enroll(struct kmsd_req *req)
{
	static const char *const allowed[] = { "email", "name", "renew", "password", NULL };
	const struct kms_config *cfg = req->env->cfg;
	const char *email, *name, *password, *display;
	json_t *reply = NULL;
	X509 *krk = NULL;
	/* Friendly names: the display name (an address of up to KMS_ADDR_MAX), the usage, the generation. */
	char sname[KMS_ADDR_MAX + 32], ename[KMS_ADDR_MAX + 32], *kept_name = NULL;
	unsigned char *smime = NULL;
	int renew, rc, job_started = 0, smimelen = 0;
	struct esc_enroll_req er = { 0 };
	struct esc_enrollment en = { 0 };
	struct p12_job job = { 0 };
	pthread_t job_thread;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	email = kmsd_arg_str(req, "email", 1, KMS_ADDR_MAX, &reply);
	if (reply)
		return reply;
	kms_sanitize(email, KMS_ADDR_MAX, req->target, sizeof(req->target));
	name = kmsd_arg_str(req, "name", 0, 64, &reply);
	password = kmsd_arg_str(req, "password", 0, 1024, &reply);
	if (reply || kmsd_arg_bool(req, "renew", 0, &renew, &reply) != 0)
		return reply;
	if ((reply = enroll_refusal(req, email, password, renew)) != NULL)
		return reply;
	if (kmsd_krk_get(req->st, &krk, &er.krk_id) != 0)
		return kms_reply_error("bad_state", "enroll: no key-recovery key: escrow is not initialised");
	if ((rc = enroll_name(req, email, name, renew, &name, &kept_name)) != 0)
		goto fail;
	display = name != NULL ? name : email;
	er = (struct esc_enroll_req){ .ca = kmsd_ca(), .krk_cert = krk, .krk_id = er.krk_id, .email = email,
		.name = name, .key_type = cfg->ca.user_key, .days = (int)cfg->ca.user_validity_days,
		.crl_url = cfg->crl.url, .crl_ldap_url = cfg->crl.ldap_url,
		.ocsp_url = cfg->ocsp.enabled ? cfg->ocsp.url : NULL,
		.issuer_url = cfg->ocsp.enabled ? cfg->ocsp.ca_issuers_url : NULL, .origin = "enroll", .issued_by = req->user };
	if ((rc = esc_enroll_prepare(&er, &en)) != 0)
		goto fail;
	/* The directory's userSMIMECertificate, signed while the signing key is here. */
	if ((rc = ca_smime_signed_der(en.scert, en.skey, en.ecert, er.ca->cert, &smime, &smimelen)) != 0)
		goto fail;

	/* Friendly names (NSS nicknames) of this generation only. */
	snprintf(sname, sizeof(sname), "%s (signing) #%.8s", display, en.generation);
	snprintf(ename, sizeof(ename), "%s (encryption) #%.8s", display, en.generation);
	job.res = json_pack("{s:s,s:s,s:o,s:o,s:b}", "email", email, "name", display,
	    "signing", issued_json(en.scert), "encryption", issued_json(en.ecert), "renewed", renew);
	if (job.res == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	job.items[0] = (struct ca_p12_item){ en.skey, en.scert, sname };
	job.items[1] = (struct ca_p12_item){ en.ekey, en.ecert, ename };
	job.ca_cert = er.ca->cert;
	job.password = password;
	job.cfg = cfg;
	p12_job_start(&job, &job_thread, &job_started);
	if ((rc = enroll_commit(req, &er, &en, renew, password == NULL, smime, smimelen)) != 0)
		goto fail;

	kmsd_ocsp_note_issued(en.scert);
	kmsd_ocsp_note_issued(en.ecert);
	/* Committed: now, and only now, the security file leaves. */
	if (job_started) {
		pthread_join(job_thread, NULL);
		job_started = 0;
	}
	if (job.rc != 0) {
		/* Issued and escrowed, but no file: record that failure too. */
		req->audited = 0;
		snprintf(req->detail, sizeof(req->detail), "certificates issued and escrowed, security file failed");
		rc = kms_fail(job.rc, "%s", job.err);
		goto fail;
	}
	reply = kms_reply_ok(job.res);
	job.res = NULL;
	goto out;
fail:
	reply = kmsd_reply_fail(rc);
out:
	if (job_started)
		pthread_join(job_thread, NULL);
	p12_job_discard(&job);
	esc_enrollment_free(&en);
	OPENSSL_free(smime);
	X509_free(krk);
	free(kept_name);
	return reply;
}

/* ------------------------------------------------------------------- issue */

json_t *
kmsd_cmd_issue(struct kmsd_req *req)
{
	static const char *const allowed[] = { "csr", NULL };
	const struct kms_config *cfg = req->env->cfg;
	const struct ca *ca = kmsd_ca();
	const char *csr_pem;
	json_t *reply = NULL;
	X509_REQ *csr = NULL;
	X509 *cert = NULL;
	BIO *bio = NULL;
	char *email = NULL, *serial = NULL;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	csr_pem = kmsd_arg_str(req, "csr", 1, 64 * 1024, &reply);
	if (reply)
		return reply;
	if (ca == NULL || ca->key == NULL)
		return kms_reply_error("bad_state", "issue: the CA is not initialised (kmsctl init --org NAME)");
	bio = BIO_new_mem_buf(csr_pem, -1);
	if (bio == NULL || (csr = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL)) == NULL) {
		ERR_clear_error();
		reply = kms_reply_error("bad_args", "issue: not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)");
		goto out;
	}
	if ((rc = ca_issue_csr_aia(ca, csr, (int)cfg->ca.user_validity_days, cfg->crl.url, cfg->crl.ldap_url,
	    cfg->ocsp.enabled ? cfg->ocsp.url : NULL, cfg->ocsp.enabled ? cfg->ocsp.ca_issuers_url : NULL,
	    &cert, &email)) != 0) {
		reply = kmsd_reply_fail(rc);
		goto out;
	}
	snprintf(req->target, sizeof(req->target), "%s", email);
	if (!ca_store_knows_email(req->st, email)) {
		reply = kms_reply_error("forbidden", "issue: %s is not an address this CA manages (enroll it first)", req->target);
		goto out;
	}
	if ((rc = ca_store_add_cert(req->st, cert, email, "", CA_USAGE_SIGN, "csr", req->user)) != 0) {
		reply = kmsd_reply_fail(rc);
		goto out;
	}
	kmsd_ldap_kick();
	kmsd_ocsp_note_issued(cert);
	serial = ca_serial_hex(X509_get0_serialNumber(cert));
	{
		BIO *out = BIO_new(BIO_s_mem());
		char *data;
		long len;

		if (out == NULL || !PEM_write_bio_X509(out, cert)) {
			BIO_free(out);
			reply = kms_reply_error("internal", "out of memory");
			goto out;
		}
		len = BIO_get_mem_data(out, &data);
		reply = kms_reply_ok(json_pack("{s:s,s:s,s:s%}", "email", email, "serial", serial ? serial : "",
		    "certificate", data, (size_t)len));
		BIO_free(out);
	}
	snprintf(req->detail, sizeof(req->detail), "signing certificate %s from the user's CSR", serial ? serial : "");
out:
	free(serial);
	free(email);
	X509_free(cert);
	X509_REQ_free(csr);
	BIO_free(bio);
	return reply;
}

/* ------------------------------------------------------------- list, show */

json_t *
kmsd_cmd_list(struct kmsd_req *req)
{
	static const char *const allowed[] = { "revoked", NULL };
	struct ca_cert_row *rows = NULL;
	size_t n = 0;
	json_t *reply = NULL, *arr;
	int revoked, rc;

	if (kmsd_args_only(req, allowed, &reply) != 0 || kmsd_arg_bool(req, "revoked", 0, &revoked, &reply) != 0)
		return reply;
	if ((rc = ca_store_list(req->st, revoked, &rows, &n)) != 0 && rc != KMS_ERR_NOTFOUND)
		return kmsd_reply_fail(rc);
	arr = json_array();
	for (size_t i = 0; i < n; i++)
		if (strcmp(rows[i].usage, "krk") != 0)
			json_array_append_new(arr, kmsd_cert_json(&rows[i], 0));
	ca_cert_rows_free(rows, n);
	snprintf(req->target, sizeof(req->target), "%s", revoked ? "revoked" : "all");
	return kms_reply_ok(json_pack("{s:o}", "certificates", arr));
}

json_t *
kmsd_cmd_show(struct kmsd_req *req)
{
	static const char *const allowed[] = { "target", NULL };
	struct ca_cert_row *rows = NULL;
	size_t n = 0;
	json_t *reply = NULL, *arr;
	const char *target;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	target = kmsd_arg_str(req, "target", 1, KMS_ADDR_MAX, &reply);
	if (reply)
		return reply;
	kms_sanitize(target, KMS_ADDR_MAX, req->target, sizeof(req->target));
	if ((rc = ca_store_find(req->st, target, &rows, &n)) != 0) {
		if (rc == KMS_ERR_NOTFOUND)
			return kms_reply_error("not_found", "show: no certificate for \"%s\"", req->target);
		return kmsd_reply_fail(rc);
	}
	arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = kmsd_cert_json(&rows[i], 1);

		if (o && strcmp(rows[i].usage, "enc") == 0) {
			int has = esc_store_has_key(req->st, rows[i].serial);

			if (has >= 0)
				json_object_set_new(o, "escrowed", json_boolean(has));
			kms_clear_error();
		}
		json_array_append_new(arr, o);
	}
	ca_cert_rows_free(rows, n);
	return kms_reply_ok(json_pack("{s:o}", "certificates", arr));
}
