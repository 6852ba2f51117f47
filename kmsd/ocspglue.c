/*
 * ocspglue.c - binds the OCSP responder (ca/ocsp.c, served by
 * publish/ocsp.c) to the running kmsd: starts it once the CA key is
 * loaded (at start-up, or on the first tick after `kmsctl init`), renews
 * the delegated signer before it expires, and notes every certificate
 * issued so that OCSP knows it at once.
 *
 * Entry points: kmsd_ocsp_tick(), kmsd_ocsp_note_issued(), kmsd_ocsp_stop().
 * The responder lives until kmsd_ocsp_stop(), after the HTTP server has
 * stopped: request threads borrow it without a reference.
 *
 * Replicas (a milter-only kmsd following the primary's CRL) answer OCSP
 * too, with a delegated signer the primary issues to them: the replica
 * makes its own key (kept in its store, encrypted under its passphrase
 * file, made on first use like the CA's), writes the public half to
 * <state_dir>/ocsp-signer.pub, and fetches
 * <primary>/ocsp-signers/<key fingerprint>.crt until it gets a certificate
 * and again at half its life.  The primary issues and renews one for every
 * public key listed in [ocsp] replica_keys.  Both sides keep the
 * certificate in their store (ca_ocsp_replica_cert_save): a restarted
 * primary serves the same one, a replica restarted while the primary is
 * down signs with the one it has.  The replica's answers come
 * from the CRL it follows: "good" means not revoked (it has no list of
 * issued serials), "unknown" only for other CAs' certificates.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "kmsd/kmsd.h"

#define O kmsd_state.ocsp

/* Primary: a signer issued to a replica, by its key's fingerprint. */
struct kmsd_replica_signer {
	char fp[65];
	X509 *cert;
};

/* Load or make the signer with the CA passphrase, and hand it to r. */
static int
install_signer(struct ca_ocsp *r, struct kms_store *st, const struct ca *ca, const struct kms_config *cfg,
    time_t now)
{
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	char *pass = NULL;
	int renewed = 0, rc;

	if ((rc = kms_read_secret_file(cfg->ca.passphrase_file, &pass)) != 0)
		return kms_fail(rc, "OCSP signer: the CA passphrase file %s cannot be read", cfg->ca.passphrase_file);
	rc = ca_ocsp_signer_ensure(st, ca, pass, cfg->ocsp.signer_key, (long)cfg->ocsp.signer_lifetime, now, &x, &k,
	    &renewed);
	kms_secret_free(pass);
	if (rc != 0)
		return rc;
	if ((rc = ca_ocsp_set_signer(r, x, k)) == 0) {
		char *serial = ca_serial_hex(X509_get0_serialNumber(x));

		kms_log(KMS_LOG_INFO, "OCSP signer %s %s", serial ? serial : "?", renewed ? "issued" : "loaded");
		free(serial);
		pthread_mutex_lock(&O.mu);
		X509_free(O.signer);
		O.signer = x;
		O.lifetime = (long)cfg->ocsp.signer_lifetime;
		pthread_mutex_unlock(&O.mu);
		x = NULL;
	}
	X509_free(x);
	EVP_PKEY_free(k);
	return rc;
}

static int
start(struct kms_store *st, const struct ca *ca, const struct kms_config *cfg, time_t now)
{
	struct ca_ocsp_opts o = {
		.validity = (long)cfg->ocsp.validity,
		.max_request = (size_t)cfg->ocsp.max_request_size,
		.max_certids = (size_t)cfg->ocsp.max_certids,
		.cache_max = (size_t)cfg->ocsp.cache_size,
		.know_issued = 1,
	};
	struct ca_ocsp *r = NULL;
	int rc;

	if ((rc = ca_ocsp_new(ca->cert, &o, &r)) != 0 || (rc = install_signer(r, st, ca, cfg, now)) != 0) {
		ca_ocsp_free(r);
		return rc;
	}
	/*
	 * Visible to kmsd_ocsp_note_issued() before the store is read, to HTTP
	 * only after: a certificate committed meanwhile is either read or
	 * noted, and no client is told "unknown" for it.
	 */
	pthread_mutex_lock(&O.mu);
	O.cur = r;
	pthread_mutex_unlock(&O.mu);
	if ((rc = ca_ocsp_load_issued(r, st)) != 0)
		return rc;
	kmsd_http_set_ocsp(r, kmsd_revholder());
	kms_log(KMS_LOG_INFO, "OCSP responder started");
	return 0;
}

/* ------------------------------------------------------------ primary */

static EVP_PKEY *
read_pubkey(const char *path)
{
	BIO *b = BIO_new_file(path, "r");
	EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;

	BIO_free(b);
	if (k == NULL)
		kms_fail_openssl(KMS_ERR_CONFIG, "[ocsp] replica_keys: %s holds no PEM public key", path);
	return k;
}

/*
 * A replica's signer kept in the store from before a restart: taken back
 * (not issued again) while it is good and not due.
 */
static X509 *
replica_signer_kept(struct kms_store *st, const struct ca *ca, EVP_PKEY *k, const char *fp, long lifetime,
    time_t now)
{
	X509 *x = NULL;
	int rc = ca_ocsp_replica_cert_load(st, fp, &x);

	if (rc == KMS_ERR_NOTFOUND)
		return NULL;
	if (rc != 0 || ca_ocsp_signer_check(x, ca->cert, k, now) != 0 || ca_ocsp_signer_due(x, lifetime, now)) {
		if (rc != 0)
			kms_log(KMS_LOG_WARNING, "OCSP: %s", kms_last_error());
		kms_clear_error();
		X509_free(x);
		return NULL;
	}
	return x;
}

/*
 * Issue (and renew at half-life) a delegated signer for each replica key,
 * served for it to fetch and kept in the store, so that a restart of the
 * primary serves the same one rather than issuing another.
 */
static void
replica_signers(struct kms_store *st, const struct ca *ca, const struct kms_config *cfg, time_t now)
{
	char **files;

	if (cfg->ocsp.replica_keys[0] == '\0' || now < O.replicas_next)
		return;
	O.replicas_next = now + 10;       /* picks up a reloaded list soon, without reading files every second */
	if ((files = kms_split_list(cfg->ocsp.replica_keys)) == NULL)
		return;
	for (char **f = files; *f != NULL; f++) {
		EVP_PKEY *k = read_pubkey(*f);
		struct kmsd_replica_signer *rs = NULL, *na;
		char *fp = NULL;
		X509 *x = NULL;
		int kept = 0;

		if (k == NULL || (fp = ca_key_fingerprint(k)) == NULL) {
			kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
			goto next;
		}
		for (size_t i = 0; i < O.nreplicas; i++)
			if (strcmp(O.replicas[i].fp, fp) == 0)
				rs = &O.replicas[i];
		if (rs != NULL && !ca_ocsp_signer_due(rs->cert, (long)cfg->ocsp.signer_lifetime, now))
			goto next;
		if (rs == NULL && (x = replica_signer_kept(st, ca, k, fp, (long)cfg->ocsp.signer_lifetime, now)) != NULL) {
			kept = 1;
		} else if (ca_ocsp_issue_signer(ca, k, (long)cfg->ocsp.signer_lifetime, &x) != 0) {
			kms_log(KMS_LOG_ERR, "OCSP: replica signer for %s: %s", *f, kms_last_error());
			goto next;
		} else if (ca_ocsp_replica_cert_save(st, fp, x) != 0) {
			/* Served all the same; a restart would issue another. */
			kms_log(KMS_LOG_WARNING, "OCSP: replica signer for %s not kept: %s", *f, kms_last_error());
		}
		if (rs == NULL) {
			if ((na = realloc(O.replicas, (O.nreplicas + 1) * sizeof(*na))) == NULL)
				goto next;
			O.replicas = na;
			rs = &O.replicas[O.nreplicas++];
			memcpy(rs->fp, fp, sizeof(rs->fp));
			rs->cert = NULL;
		}
		X509_free(rs->cert);
		rs->cert = x;
		x = NULL;
		kmsd_http_publish_signer(rs->fp, rs->cert);
		kms_log(KMS_LOG_INFO, "OCSP: delegated signer %s for the replica key %s (%.16s...)", kept ? "kept" : "issued",
		    *f, fp);
next:
		X509_free(x);
		free(fp);
		EVP_PKEY_free(k);
	}
	kms_strv_free(files);
}

/* ------------------------------------------------------------ replica */

/* Use cert (taken) as this replica's signer. */
static int
replica_install(struct ca_ocsp *r, X509 *x)
{
	if (ca_ocsp_set_signer(r, x, O.replica_key) != 0) {
		X509_free(x);
		return -1;
	}
	pthread_mutex_lock(&O.mu);
	X509_free(O.signer);
	O.signer = x;
	pthread_mutex_unlock(&O.mu);
	return 0;
}

/* The passphrase of the replica's signer key: [ca] passphrase_file, made (0600) when absent. */
static int
replica_passphrase(const struct kms_config *cfg, char **out)
{
	char buf[48];
	int rc = kms_read_secret_file(cfg->ca.passphrase_file, out);

	if (rc != KMS_ERR_NOTFOUND)
		return rc;
	if ((rc = kms_random_password(buf, sizeof(buf) - 1)) != 0)
		return rc;
	buf[sizeof(buf) - 2] = '\n';
	buf[sizeof(buf) - 1] = '\0';
	rc = kms_write_file_excl(cfg->ca.passphrase_file, buf, strlen(buf), 0600);
	kms_wipe(buf, sizeof(buf));
	return rc != 0 ? rc : kms_read_secret_file(cfg->ca.passphrase_file, out);
}

static int
replica_setup(struct kms_store *st, const struct kms_config *cfg)
{
	STACK_OF(X509) *cas = NULL;
	X509 *x = NULL;
	char *pass = NULL, *path = NULL, *pem = NULL;
	BIO *b = NULL;
	long n;
	int created = 0, rc;
	struct ca_ocsp_opts o = {
		.validity = (long)cfg->ocsp.validity,
		.max_request = (size_t)cfg->ocsp.max_request_size,
		.max_certids = (size_t)cfg->ocsp.max_certids,
		.cache_max = (size_t)cfg->ocsp.cache_size,
		.know_issued = 0,
	};
	struct ca_ocsp *r = NULL;

	if (O.replica_key == NULL) {
		if ((rc = replica_passphrase(cfg, &pass)) != 0)
			goto out;
		rc = ca_ocsp_replica_key(st, pass, cfg->ocsp.signer_key, &O.replica_key, &created);
		if (rc != 0)
			goto out;
		if ((O.replica_fp = ca_key_fingerprint(O.replica_key)) == NULL ||
		    (path = kms_path_join(cfg->kmsd.state_dir, "ocsp-signer.pub")) == NULL ||
		    (b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_PUBKEY(b, O.replica_key) ||
		    (n = BIO_get_mem_data(b, &pem)) <= 0) {
			rc = kms_fail_openssl(KMS_ERR_NOMEM, "replica signer public key");
			goto out;
		}
		if ((rc = kms_write_file_atomic(path, pem, (size_t)n, 0644)) != 0)
			goto out;
		kms_log(KMS_LOG_INFO, "OCSP: this replica's signer key is in %s (%s): list that file in the "
		    "primary's [ocsp] replica_keys", path, created ? "new" : "kept");
	}
	if (O.replica_ca == NULL) {
		if ((rc = ca_crl_load_cas(cfg->crl.source_ca, &cas)) != 0)
			goto out;
		O.replica_ca = sk_X509_shift(cas);
	}
	if ((rc = ca_ocsp_new(O.replica_ca, &o, &r)) != 0)
		goto out;
	pthread_mutex_lock(&O.mu);
	O.cur = r;
	pthread_mutex_unlock(&O.mu);
	/* The certificate kept from before a restart signs until the primary's next one arrives. */
	if ((rc = ca_ocsp_replica_cert_load(st, NULL, &x)) == 0 &&
	    ca_ocsp_signer_check(x, O.replica_ca, O.replica_key, time(NULL)) == 0) {
		if (replica_install(r, x) == 0)
			kms_log(KMS_LOG_INFO, "OCSP: the kept signer certificate installed");
		else
			kms_log(KMS_LOG_WARNING, "OCSP: the kept signer certificate: %s", kms_last_error());
	} else {
		if (rc != KMS_ERR_NOTFOUND)
			kms_log(KMS_LOG_INFO, "OCSP: the kept signer certificate is not used: %s", kms_last_error());
		X509_free(x);
	}
	x = NULL;
	kms_clear_error();
	rc = 0;
	/* Until the primary's certificate arrives it answers tryLater. */
	kmsd_http_set_ocsp(r, kmsd_revholder());
	kms_log(KMS_LOG_INFO, "OCSP responder started (replica of %s)", cfg->crl.source);
out:
	sk_X509_pop_free(cas, X509_free);
	BIO_free(b);
	free(path);
	kms_secret_free(pass);
	return rc;
}

/* http://host:port of the primary: [ocsp] primary_url, else from [crl] source. */
static char *
primary_base(const struct kms_config *cfg)
{
	const char *src = cfg->ocsp.primary_url[0] ? cfg->ocsp.primary_url : cfg->crl.source;
	const char *p = strstr(src, "://");
	size_t n;

	if (p == NULL)
		return NULL;
	if (cfg->ocsp.primary_url[0])
		n = strlen(src);
	else
		n = (size_t)((p = strchr(p + 3, '/')) != NULL ? p - src : (long)strlen(src));
	while (n > 0 && src[n - 1] == '/')
		n--;
	return strndup(src, n);
}

/*
 * Fetch this replica's signer certificate from the primary; install it when
 * it is new and good, and keep it in the store for a restart while the
 * primary is down.
 */
static void
replica_fetch(struct ca_ocsp *r, struct kms_store *st, const struct kms_config *cfg, time_t now)
{
	char *base = primary_base(cfg), *url = NULL;
	unsigned char *body = NULL;
	size_t len = 0;
	const unsigned char *p;
	X509 *x = NULL;
	int rc;

	if (base == NULL || (url = malloc(strlen(base) + strlen(O.replica_fp) + 32)) == NULL)
		goto out;
	snprintf(url, strlen(base) + strlen(O.replica_fp) + 32, "%s/ocsp-signers/%s.crt", base, O.replica_fp);
	if ((rc = ca_http_get(url, 5, 64 * 1024, &body, &len)) != 0) {
		if (rc == KMS_ERR_NOTFOUND)
			kms_log(KMS_LOG_DEBUG, "OCSP: no signer certificate for this replica at %s yet", url);
		else
			kms_log(KMS_LOG_WARNING, "OCSP: %s", kms_last_error());
		goto out;
	}
	p = body;
	if ((x = d2i_X509(NULL, &p, (long)len)) == NULL || ca_ocsp_signer_check(x, O.replica_ca, O.replica_key, now) != 0) {
		kms_log(KMS_LOG_WARNING, "OCSP: the signer certificate from %s is refused: %s", url,
		    x == NULL ? "not a certificate" : kms_last_error());
		goto out;
	}
	if (O.signer != NULL && X509_cmp(x, O.signer) == 0)
		goto out;
	if (ca_ocsp_replica_cert_save(st, NULL, x) != 0)
		kms_log(KMS_LOG_WARNING, "OCSP: the signer certificate is not kept: %s", kms_last_error());
	rc = replica_install(r, x);
	x = NULL;
	if (rc != 0) {
		kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
		goto out;
	}
	kms_log(KMS_LOG_INFO, "OCSP: signer certificate from the primary installed");
out:
	X509_free(x);
	free(body);
	free(url);
	free(base);
}

static void
replica_tick(struct kms_store *st, const struct kms_config *cfg, time_t now)
{
	long span;
	time_t nb, na;

	if (cfg->crl.source[0] == '\0' || cfg->crl.source_ca[0] == '\0' || !cfg->ocsp.enabled || now < O.replica_next)
		return;
	O.replica_next = now + 5;         /* while it has no good certificate, ask often */
	if (O.cur == NULL && replica_setup(st, cfg) != 0) {
		kms_log(KMS_LOG_ERR, "OCSP (replica): %s", kms_last_error());
		O.replica_next = now + 60;
		return;
	}
	if (O.signer != NULL) {
		X509 *x = O.signer;

		span = 0;
		struct tm tm;

		if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm) == 1 && (nb = timegm(&tm)) > 0 &&
		    ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 && (na = timegm(&tm)) > nb)
			span = (long)(na - nb);
		if (span > 0 && !ca_ocsp_signer_due(x, span, now)) {
			O.replica_next = now + 60;
			return;
		}
	}
	replica_fetch(O.cur, st, cfg, now);
}

/* ---------------------------------------------------------------- tick */

void
kmsd_ocsp_tick(struct kms_store *st, time_t now)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env;
	struct ca_ocsp *r;
	int due, rc = 0;

	if (ca == NULL || ca->key == NULL) {
		pthread_mutex_lock(&O.tick_mu);
		env = kmsd_env_get();
		if (ca == NULL)
			replica_tick(st, env->cfg, now);
		kmsd_env_put(env);
		pthread_mutex_unlock(&O.tick_mu);
		return;
	}
	pthread_mutex_lock(&O.tick_mu);
	env = kmsd_env_get();
	if (env->cfg->ocsp.enabled)
		replica_signers(st, ca, env->cfg, now);
	kmsd_env_put(env);
	if (now < O.next_try) {
		pthread_mutex_unlock(&O.tick_mu);
		return;
	}
	pthread_mutex_lock(&O.mu);
	r = O.cur;
	due = r != NULL && ca_ocsp_signer_due(O.signer, O.lifetime, now);
	pthread_mutex_unlock(&O.mu);
	if (r != NULL && !due) {
		pthread_mutex_unlock(&O.tick_mu);
		return;
	}
	env = kmsd_env_get();
	if (env->cfg->ocsp.enabled) {
		rc = r == NULL ? start(st, ca, env->cfg, now) : install_signer(r, st, ca, env->cfg, now);
		if (rc != 0) {
			/* Old signer (if any) keeps signing; try again in a minute. */
			kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
			O.next_try = now + 60;
		}
	}
	kmsd_env_put(env);
	pthread_mutex_unlock(&O.tick_mu);
}

void
kmsd_ocsp_note_issued(X509 *cert)
{
	pthread_mutex_lock(&O.mu);
	if (O.cur != NULL && cert != NULL && ca_ocsp_add_issued(O.cur, X509_get0_serialNumber(cert)) != 0)
		kms_log(KMS_LOG_ERR, "OCSP: issued serial not noted: %s", kms_last_error());
	pthread_mutex_unlock(&O.mu);
}

void
kmsd_ocsp_stop(void)
{
	for (size_t i = 0; i < O.nreplicas; i++)
		X509_free(O.replicas[i].cert);
	free(O.replicas);
	O.replicas = NULL;
	O.nreplicas = 0;
	EVP_PKEY_free(O.replica_key);
	O.replica_key = NULL;
	free(O.replica_fp);
	O.replica_fp = NULL;
	X509_free(O.replica_ca);
	O.replica_ca = NULL;
	pthread_mutex_lock(&O.mu);
	ca_ocsp_free(O.cur);
	O.cur = NULL;
	X509_free(O.signer);
	O.signer = NULL;
	pthread_mutex_unlock(&O.mu);
}
