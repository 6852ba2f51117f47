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
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "archive/archive.h"
#include "kmsd/commands.h"

#define MAX_PATH_ARG 1024

/* ------------------------------------------------------------------ status */

static long long
count(struct kms_store *st, const char *sql)
{
	sqlite3_stmt *s = NULL;
	long long n = -1;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
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
	json_object_set_new(res, "ca", jca);
	if (kmsd_krk_get(req->st, &krk, &krk_id) == 0) {
		char *fp = ca_cert_fingerprint(krk);

		json_object_set_new(res, "krk", json_pack("{s:I,s:s}", "id", (json_int_t)krk_id, "sha256", fp ? fp : ""));
		free(fp);
		X509_free(krk);
	}
	kms_clear_error();
	json_object_set_new(res, "counts", json_pack("{s:I,s:I,s:I,s:I}",
	    "users", count(req->st, "SELECT count(DISTINCT email) FROM certs WHERE usage != 'krk'"),
	    "certificates", count(req->st, "SELECT count(*) FROM certs WHERE usage != 'krk'"),
	    "revoked", count(req->st, "SELECT count(*) FROM certs WHERE revoked_at IS NOT NULL"),
	    "escrowed_keys", count(req->st, "SELECT count(*) FROM escrow")));
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

void
kmsd_shares_remove(struct kmsd_share_files *sf)
{
	for (int i = 0; i < sf->n; i++) {
		if (sf->paths[i])
			unlink(sf->paths[i]);
	}
}

void
kmsd_shares_free(struct kmsd_share_files *sf)
{
	for (int i = 0; i < sf->n; i++)
		free(sf->paths[i]);
	free(sf->paths);
	sf->paths = NULL;
	sf->n = 0;
}

int
kmsd_shares_write(EVP_PKEY *krk, X509 *krk_cert, int n, int m, const char *dir, const char *pass_dir,
    struct kmsd_share_files *sf, char **digests)
{
	unsigned char *secret = NULL;
	size_t slen = 0;
	struct esc_share *shares = NULL;
	char *fp = ca_cert_fingerprint(krk_cert);
	int rc;

	sf->paths = calloc((size_t)n, sizeof(char *));
	if (sf->paths == NULL || fp == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	sf->n = n;
	if ((rc = kms_mkdir_p(dir, 0700)) != 0)
		goto out;
	if ((rc = esc_key_to_secret(krk, &secret, &slen)) != 0)
		goto out;
	if ((rc = esc_split(secret, slen, n, m, &shares)) != 0)
		goto out;
	for (int i = 0; i < n; i++) {
		struct esc_share_meta meta = { .index = shares[i].index, .threshold = m, .total = n };
		char name[64], *text = NULL, *pass = NULL;
		size_t tlen = 0;

		snprintf(meta.krk_fingerprint, sizeof(meta.krk_fingerprint), "%s", fp);
		if (pass_dir != NULL) {
			char pname[64], *ppath;

			snprintf(pname, sizeof(pname), "share-%d.passphrase", shares[i].index);
			ppath = kms_path_join(pass_dir, pname);
			if (ppath == NULL) {
				rc = KMS_ERR_NOMEM;
				goto out;
			}
			rc = kms_read_secret_file(ppath, &pass);
			if (rc != 0) {
				rc = kms_fail(rc, "share %d: cannot read its passphrase file %s", shares[i].index, ppath);
				free(ppath);
				goto out;
			}
			free(ppath);
			if (strlen(pass) < 8) {
				kms_secret_free(pass);
				rc = kms_fail(KMS_ERR_INVALID, "share %d: passphrase shorter than 8 characters", shares[i].index);
				goto out;
			}
		}
		rc = esc_share_encode(&shares[i], &meta, pass, &text, &tlen);
		kms_secret_free(pass);
		if (rc != 0)
			goto out;
		snprintf(name, sizeof(name), "krk-%.8s-share-%d-of-%d.txt", fp, shares[i].index, n);
		sf->paths[i] = kms_path_join(dir, name);
		if (sf->paths[i] == NULL) {
			kms_wipe(text, tlen);
			free(text);
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		rc = kms_write_file_excl(sf->paths[i], text, tlen, 0600);
		kms_wipe(text, tlen);
		free(text);
		if (rc != 0) {
			free(sf->paths[i]);
			sf->paths[i] = NULL;
			goto out;
		}
		digests[i] = esc_share_digest(&shares[i]);
		if (digests[i] == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
	}
	rc = 0;
out:
	if (rc != 0)
		kmsd_shares_remove(sf);
	esc_shares_free(shares, (size_t)n);
	if (secret)
		OPENSSL_secure_clear_free(secret, slen);
	free(fp);
	return rc;
}

json_t *
kmsd_cmd_init(struct kmsd_req *req)
{
	static const char *const allowed[] = { "org", "shares", "threshold", "share_dir", "share_passphrase_dir", NULL };
	const struct kms_config *cfg = req->env->cfg;
	json_t *reply = NULL, *res, *paths;
	const char *org, *share_dir, *pass_dir;
	long long n, m;
	struct ca *ca = NULL;
	EVP_PKEY *krk = NULL;
	X509 *krk_cert = NULL;
	char *pass = NULL, *pem = NULL, **digests = NULL;
	struct kmsd_share_files sf = { NULL, 0 };
	size_t pemlen = 0;
	int created = 0, rc, in_tx = 0, default_dir;
	long long krk_id = 0;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	org = kmsd_arg_str(req, "org", 0, 64, &reply);
	if (reply)
		return reply;
	if (org == NULL || *org == '\0')
		org = cfg->ca.organization;
	if (*org == '\0')
		return kms_reply_error("bad_args", "init: give the organisation name (--org NAME)");
	if (kmsd_arg_int(req, "shares", cfg->escrow.shares, 2, 255, &n, &reply) != 0 ||
	    kmsd_arg_int(req, "threshold", cfg->escrow.threshold, 2, 255, &m, &reply) != 0)
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

	if ((rc = ca_passphrase(cfg, &pass, &created)) != 0)
		goto fail;
	kms_log(KMS_LOG_INFO, "init: making the %s root CA for \"%s\"", cfg->ca.key, org);
	if ((rc = ca_create_root(org, cfg->ca.name, cfg->ca.key, (int)cfg->ca.ca_validity_days, &ca)) != 0)
		goto fail;
	if ((rc = ca_key_encrypt(ca->key, pass, &pem, &pemlen)) != 0)
		goto fail;
	kms_log(KMS_LOG_INFO, "init: making the %s key-recovery key, %lld shares, threshold %lld",
	    cfg->escrow.krk_key, n, m);
	if ((rc = ca_keygen(cfg->escrow.krk_key, &krk)) != 0)
		goto fail;
	{
		struct ca_issue_req ir = { .usage = CA_USAGE_KRK, .pubkey = krk, .name = "Key Recovery Key",
			.days = (int)cfg->ca.ca_validity_days, .crl_url = cfg->crl.url };

		if ((rc = ca_issue(ca, &ir, &krk_cert)) != 0)
			goto fail;
	}
	digests = calloc((size_t)n, sizeof(char *));
	if (digests == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	/* Files first: a KRK recorded without its shares could never be used. */
	if ((rc = kmsd_shares_write(krk, krk_cert, (int)n, (int)m, share_dir, pass_dir, &sf, digests)) != 0)
		goto fail;
	EVP_PKEY_free(krk);         /* the only copy of the KRK private key goes now */
	krk = NULL;
	if ((rc = kms_store_begin(req->st)) != 0)
		goto fail;
	in_tx = 1;
	if ((rc = ca_store_save(req->st, ca, pem, cfg->ca.key)) != 0 ||
	    (rc = ca_store_add_cert(req->st, krk_cert, "", "Key Recovery Key", CA_USAGE_KRK, "init", req->user)) != 0 ||
	    (rc = esc_store_add_krk(req->st, krk_cert, (int)n, (int)m, digests, &krk_id)) != 0)
		goto fail;
	if ((rc = kms_store_commit(req->st)) != 0)
		goto fail;
	in_tx = 0;

	res = json_object();
	paths = json_array();
	for (int i = 0; i < sf.n; i++)
		json_array_append_new(paths, json_string(sf.paths[i]));
	{
		char *cafp = ca_cert_fingerprint(ca->cert), *krkfp = ca_cert_fingerprint(krk_cert);
		char *subj = X509_NAME_oneline(X509_get_subject_name(ca->cert), NULL, 0);

		json_object_set_new(res, "organization", json_string(org));
		json_object_set_new(res, "ca_subject", json_string(subj ? subj : ""));
		json_object_set_new(res, "ca_sha256", json_string(cafp ? cafp : ""));
		json_object_set_new(res, "krk_sha256", json_string(krkfp ? krkfp : ""));
		OPENSSL_free(subj);
		free(cafp);
		free(krkfp);
	}
	json_object_set_new(res, "shares", paths);
	json_object_set_new(res, "threshold", json_integer(m));
	json_object_set_new(res, "share_dir", json_string(share_dir));
	json_object_set_new(res, "shares_encrypted", json_boolean(pass_dir != NULL));
	json_object_set_new(res, "passphrase_file", json_string(cfg->ca.passphrase_file));
	json_object_set_new(res, "passphrase_file_created", json_boolean(created));
	if (default_dir)
		json_object_set_new(res, "warning", json_string(
		    "the recovery shares are in the state directory: give each file to its key-recovery officer "
		    "now and delete it here; anyone holding enough of them can recover every escrowed key"));
	snprintf(req->detail, sizeof(req->detail), "CA and KRK created; %lld shares, threshold %lld, in %s", n, m, share_dir);

	kmsd_ca_install(ca);
	ca = NULL;
	kmsd_krk_forget();
	if (kmsd_env_refresh(req->st) != 0)
		kms_log(KMS_LOG_ERR, "init: cannot refresh the environment: %s", kms_last_error());
	if (kmsd_crl_publish_new(req->st, "init") != 0)
		kms_log(KMS_LOG_ERR, "init: cannot publish the first CRL: %s", kms_last_error());
	kms_log(KMS_LOG_WARNING, "init: %lld recovery shares written to %s: hand them to the officers and delete them there",
	    n, share_dir);
	reply = kms_reply_ok(res);
	goto out;
fail:
	if (in_tx)
		kms_store_rollback(req->st);
	kmsd_shares_remove(&sf);
	if (created)
		unlink(cfg->ca.passphrase_file);
	reply = kmsd_reply_fail(rc);
out:
	kmsd_shares_free(&sf);
	if (digests) {
		for (long long i = 0; i < n; i++)
			free(digests[i]);
		free(digests);
	}
	kms_secret_free(pass);
	free(pem);
	EVP_PKEY_free(krk);
	X509_free(krk_cert);
	ca_free(ca);
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
	char err[300];
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

json_t *
kmsd_cmd_enroll(struct kmsd_req *req)
{
	static const char *const allowed[] = { "email", "name", "renew", "password", NULL };
	const struct kms_config *cfg = req->env->cfg;
	const struct ca *ca = kmsd_ca();
	const char *email, *name, *password;
	json_t *reply = NULL;
	EVP_PKEY *skey = NULL, *ekey = NULL;
	X509 *scert = NULL, *ecert = NULL, *krk = NULL;
	unsigned char *env = NULL;
	size_t envlen = 0;
	long long krk_id = 0;
	char sname[160], ename[160];
	enum ca_p12_format fmt;
	int renew, rc, in_tx = 0, job_started = 0;
	struct p12_job job = { 0 };
	pthread_t job_thread;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	email = kmsd_arg_str(req, "email", 1, 254, &reply);
	if (reply)
		return reply;
	snprintf(req->target, sizeof(req->target), "%s", email);
	name = kmsd_arg_str(req, "name", 0, 64, &reply);
	password = kmsd_arg_str(req, "password", 0, 1024, &reply);
	if (reply || kmsd_arg_bool(req, "renew", 0, &renew, &reply) != 0)
		return reply;
	if (!kmsd_valid_email(email))
		return kms_reply_error("bad_args", "enroll: \"%s\" is not a mailbox address (ASCII local@domain)", req->target);
	if (password && strlen(password) < 8)
		return kms_reply_error("bad_args", "enroll: the password must have at least 8 characters");
	/* gpgsm 2.2 cannot open a compat file under a longer password: refuse before issuing. */
	if (password && strlen(password) > 31 && strcmp(cfg->ca.pkcs12_format, "compat") == 0)
		return kms_reply_error("bad_args", "enroll: with pkcs12_format = compat the password may have at most "
		    "31 characters (gpgsm 2.2 fails on longer ones)");
	if (ca == NULL || ca->key == NULL)
		return kms_reply_error("bad_state", "enroll: the CA is not initialised (kmsctl init --org NAME)");
	if (kmsd_krk_get(req->st, &krk, &krk_id) != 0)
		return kms_reply_error("bad_state", "enroll: no key-recovery key: escrow is not initialised");
	if (ca_p12_format_from_name(cfg->ca.pkcs12_format, &fmt) != 0) {
		reply = kms_reply_error("internal", "bad pkcs12_format");
		goto out;
	}
	rc = ca_store_has_valid(req->st, email, time(NULL));
	if (rc < 0) {
		reply = kmsd_reply_fail(rc);
		goto out;
	}
	if (rc == 1 && !renew) {
		reply = kms_reply_error("exists", "enroll: %s already has valid certificates; use --renew for new ones", email);
		goto out;
	}
	if (name == NULL || *name == '\0')
		name = email;

	/* Keys and certificates first, outside the transaction: it only records them. */
	if ((rc = ca_keygen(cfg->ca.user_key, &skey)) != 0 || (rc = ca_keygen(cfg->ca.user_key, &ekey)) != 0)
		goto fail;
	{
		struct ca_issue_req sr = { .usage = CA_USAGE_SIGN, .pubkey = skey, .email = email, .name = name,
			.days = (int)cfg->ca.user_validity_days, .crl_url = cfg->crl.url };
		struct ca_issue_req er = sr;

		er.usage = CA_USAGE_ENC;
		er.pubkey = ekey;
		if ((rc = ca_issue(ca, &sr, &scert)) != 0 || (rc = ca_issue(ca, &er, &ecert)) != 0)
			goto fail;
	}
	if ((rc = esc_wrap_key(krk, ekey, &env, &envlen)) != 0)
		goto fail;

	/*
	 * The security file is built in memory while the transaction's disk
	 * sync runs, and handed out only after the commit: no file ever exists
	 * for an enrollment that did not commit.
	 */
	snprintf(sname, sizeof(sname), "%s (signing)", name);
	snprintf(ename, sizeof(ename), "%s (encryption)", name);
	job.res = json_pack("{s:s,s:s,s:o,s:o,s:b}", "email", email, "name", name,
	    "signing", issued_json(scert), "encryption", issued_json(ecert), "renewed", renew);
	if (job.res == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	job.items[0] = (struct ca_p12_item){ skey, scert, sname };
	job.items[1] = (struct ca_p12_item){ ekey, ecert, ename };
	job.ca_cert = ca->cert;
	job.password = password;
	job.cfg = cfg;
	job_started = pthread_create(&job_thread, NULL, p12_job_run, &job) == 0;
	if (!job_started)
		p12_job_run(&job);
	{
		char *serial = ca_serial_hex(X509_get0_serialNumber(ecert));

		if (serial == NULL) {
			rc = KMS_ERR_NOMEM;
			goto fail;
		}
		/* One transaction: no encryption certificate without its escrowed key, nor the reverse. */
		if ((rc = kms_store_begin(req->st)) != 0) {
			free(serial);
			goto fail;
		}
		in_tx = 1;
		rc = ca_store_add_cert(req->st, scert, email, name, CA_USAGE_SIGN, "enroll", req->user);
		if (rc == 0)
			rc = ca_store_add_cert(req->st, ecert, email, name, CA_USAGE_ENC, "enroll", req->user);
		if (rc == 0)
			rc = esc_store_put(req->st, serial, krk_id, env, envlen);
		free(serial);
		if (rc != 0)
			goto fail;
		snprintf(req->detail, sizeof(req->detail), "%s; encryption key escrowed%s", renew ? "renewal" : "enrollment",
		    password ? "" : "; password generated");
		if ((rc = kmsd_audit_record(req, "ok")) != 0)
			goto fail;
		if ((rc = kms_store_commit(req->st)) != 0) {
			req->audited = 0;       /* rolled back with the rest */
			goto fail;
		}
		in_tx = 0;
	}

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
	if (in_tx) {
		kms_store_rollback(req->st);
		req->audited = 0;
	}
	reply = kmsd_reply_fail(rc);
out:
	if (job_started)
		pthread_join(job_thread, NULL);
	p12_job_discard(&job);
	free(env);
	EVP_PKEY_free(skey);
	EVP_PKEY_free(ekey);
	X509_free(scert);
	X509_free(ecert);
	X509_free(krk);
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
	if ((rc = ca_issue_csr(ca, csr, (int)cfg->ca.user_validity_days, cfg->crl.url, &cert, &email)) != 0) {
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
	target = kmsd_arg_str(req, "target", 1, 254, &reply);
	if (reply)
		return reply;
	kms_sanitize(target, 254, req->target, sizeof(req->target));
	if ((rc = ca_store_find(req->st, target, &rows, &n)) != 0) {
		if (rc == KMS_ERR_NOTFOUND)
			return kms_reply_error("not_found", "show: no certificate for \"%s\"", req->target);
		return kmsd_reply_fail(rc);
	}
	arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = kmsd_cert_json(&rows[i], 1);

		if (o && strcmp(rows[i].usage, "enc") == 0) {
			sqlite3_stmt *s = NULL;

			if (sqlite3_prepare_v2(kms_store_db(req->st), "SELECT 1 FROM escrow WHERE serial = ?", -1, &s,
			    NULL) == SQLITE_OK) {
				sqlite3_bind_text(s, 1, rows[i].serial, -1, SQLITE_STATIC);
				json_object_set_new(o, "escrowed", json_boolean(sqlite3_step(s) == SQLITE_ROW));
			}
			sqlite3_finalize(s);
		}
		json_array_append_new(arr, o);
	}
	ca_cert_rows_free(rows, n);
	return kms_reply_ok(json_pack("{s:o}", "certificates", arr));
}
