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
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>

#include "kmsd/kmsd.h"

static pthread_mutex_t ocsp_mu = PTHREAD_MUTEX_INITIALIZER;
/* One tick at a time (the main loop's timer, and init in a control thread). */
static pthread_mutex_t tick_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ca_ocsp *cur;             /* set once; freed by kmsd_ocsp_stop() */
static X509 *cur_signer;                /* the signer's certificate, to see when it is due */
static long cur_lifetime;
static time_t next_try;                 /* after a failure, wait before trying again */

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
		pthread_mutex_lock(&ocsp_mu);
		X509_free(cur_signer);
		cur_signer = x;
		cur_lifetime = (long)cfg->ocsp.signer_lifetime;
		pthread_mutex_unlock(&ocsp_mu);
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
	pthread_mutex_lock(&ocsp_mu);
	cur = r;
	pthread_mutex_unlock(&ocsp_mu);
	if ((rc = ca_ocsp_load_issued(r, st)) != 0)
		return rc;
	kmsd_http_set_ocsp(r, kmsd_revholder());
	kms_log(KMS_LOG_INFO, "OCSP responder started");
	return 0;
}

void
kmsd_ocsp_tick(struct kms_store *st, time_t now)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env;
	struct ca_ocsp *r;
	int due, rc = 0;

	if (ca == NULL || ca->key == NULL)
		return;
	pthread_mutex_lock(&tick_mu);
	if (now < next_try) {
		pthread_mutex_unlock(&tick_mu);
		return;
	}
	pthread_mutex_lock(&ocsp_mu);
	r = cur;
	due = r != NULL && ca_ocsp_signer_due(cur_signer, cur_lifetime, now);
	pthread_mutex_unlock(&ocsp_mu);
	if (r != NULL && !due) {
		pthread_mutex_unlock(&tick_mu);
		return;
	}
	env = kmsd_env_get();
	if (env->cfg->ocsp.enabled) {
		rc = r == NULL ? start(st, ca, env->cfg, now) : install_signer(r, st, ca, env->cfg, now);
		if (rc != 0) {
			/* Old signer (if any) keeps signing; try again in a minute. */
			kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
			next_try = now + 60;
		}
	}
	kmsd_env_put(env);
	pthread_mutex_unlock(&tick_mu);
}

void
kmsd_ocsp_note_issued(X509 *cert)
{
	pthread_mutex_lock(&ocsp_mu);
	if (cur != NULL && cert != NULL && ca_ocsp_add_issued(cur, X509_get0_serialNumber(cert)) != 0)
		kms_log(KMS_LOG_ERR, "OCSP: issued serial not noted: %s", kms_last_error());
	pthread_mutex_unlock(&ocsp_mu);
}

void
kmsd_ocsp_stop(void)
{
	pthread_mutex_lock(&ocsp_mu);
	ca_ocsp_free(cur);
	cur = NULL;
	X509_free(cur_signer);
	cur_signer = NULL;
	pthread_mutex_unlock(&ocsp_mu);
}
