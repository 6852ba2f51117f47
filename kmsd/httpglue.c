/*
 * httpglue.c - binds the HTTP distribution point and CRL synchronisation
 * (publish/http.c, publish/crlsync.c) to the running kmsd: settings from the
 * current environment, the [ca] name for published CRLs, and an index
 * rebuild (kmsd_revidx_rebuild) whenever a synchronised CRL changes.
 *
 * Entry points: kmsd_http_start(), kmsd_http_stop(), kmsd_http_publish(),
 * kmsd_http_set_ocsp(), and the /certs/ lookup (certs_lookup) when
 * [http] certs_endpoint is on,
 * kmsd_sync_start(), kmsd_sync_stop(), kmsd_sync_refresh(),
 * kmsd_sync_offer(), kmsd_sync_add_to().  Kept apart from http.c and crlsync.c so that their
 * unit suite links without the rest of kmsd.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>

#include "publish/publish.h"
#include "kmsd/kmsd.h"

/* Our part of the process state: kmsd_state.pub (kmsd/state.c). */
#define P kmsd_state.pub

/* /certs/<address>: the current encryption certificate, on a store connection of our own. */
static int
certs_lookup(void *arg, const char *email, char **pem, size_t *len)
{
	X509 *sign = NULL, *enc = NULL;
	BIO *b = NULL;
	char *data;
	long n;
	int rc;

	(void)arg;
	*pem = NULL;
	*len = 0;
	pthread_mutex_lock(&P.certs_mu);
	rc = P.certs_st ? ca_store_current(P.certs_st, email, time(NULL), &sign, &enc, NULL) : KMS_ERR_STATE;
	pthread_mutex_unlock(&P.certs_mu);
	if (rc != 0)
		goto out;
	if (enc == NULL) {
		rc = kms_fail(KMS_ERR_NOTFOUND, "no valid encryption certificate");
		goto out;
	}
	if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, enc)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PEM of a certificate");
		goto out;
	}
	n = BIO_get_mem_data(b, &data);
	if ((*pem = malloc((size_t)n)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	memcpy(*pem, data, (size_t)n);
	*len = (size_t)n;
out:
	BIO_free(b);
	X509_free(sign);
	X509_free(enc);
	return rc;
}

/* [http] certs_endpoint: the lookup's store connection and rate table, handed to srv. */
static int
certs_start(const struct kms_config *cfg, struct pub_http_server *srv)
{
	char *dbpath;
	int rc;

	if (!cfg->http.certs_endpoint)
		return 0;
	if ((dbpath = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL)
		return KMS_ERR_NOMEM;
	rc = kms_store_open(dbpath, 0, &P.certs_st);
	free(dbpath);
	if (rc == 0)
		rc = pub_certs_new(certs_lookup, NULL, (unsigned)cfg->http.certs_rate, (size_t)cfg->http.certs_clients,
		    &P.certs);
	if (rc != 0) {
		kms_store_close(P.certs_st);
		P.certs_st = NULL;
		return rc;
	}
	pub_http_set_certs(srv, P.certs);
	kms_log(KMS_LOG_INFO, "HTTP: /certs/<address> on, %lld requests a minute per client",
	    cfg->http.certs_rate);
	return 0;
}

int
kmsd_http_start(int fd, struct pub_http_server **out)
{
	struct kmsd_env *env = kmsd_env_get();
	struct pub_http_opts o = { 0 };
	int rc;

	o.max_connections = (unsigned)env->cfg->http.max_connections;
	o.max_per_client = (unsigned)env->cfg->http.max_per_client;
	o.threads = (unsigned)env->cfg->http.threads;
	o.request_ms = (unsigned)env->cfg->http.request_timeout * 1000u;
	o.idle_ms = (unsigned)env->cfg->http.idle_timeout * 1000u;
	o.longpoll_ms = (unsigned)env->cfg->http.longpoll_timeout * 1000u;
	o.max_longpolls = (unsigned)env->cfg->http.max_longpolls;
	o.ocsp_max_request = (size_t)env->cfg->ocsp.max_request_size;
	if ((rc = pub_http_start(fd, &o, out)) != 0) {
		kmsd_env_put(env);
		return rc;
	}
	rc = certs_start(env->cfg, *out);
	kmsd_env_put(env);
	if (rc != 0) {
		pub_http_stop(*out);
		*out = NULL;
		return rc;
	}
	pthread_mutex_lock(&P.http_mu);
	P.http = *out;
	pthread_mutex_unlock(&P.http_mu);
	return 0;
}

void
kmsd_http_stop(struct pub_http_server *srv)
{
	pthread_mutex_lock(&P.http_mu);
	if (P.http == srv)
		P.http = NULL;
	pthread_mutex_unlock(&P.http_mu);
	pub_http_stop(srv);
	/* No connection is left to use them. */
	pub_certs_free(P.certs);
	P.certs = NULL;
	pthread_mutex_lock(&P.certs_mu);
	kms_store_close(P.certs_st);
	P.certs_st = NULL;
	pthread_mutex_unlock(&P.certs_mu);
}

void
kmsd_http_publish(const struct ca_crl_set *set, X509 *ca_cert)
{
	struct kmsd_env *env;

	pthread_mutex_lock(&P.http_mu);
	if (P.http != NULL) {
		env = kmsd_env_get();
		if (pub_http_publish(P.http, env->cfg->ca.name, set, ca_cert) != 0)
			kms_log(KMS_LOG_ERR, "HTTP distribution point: %s", kms_last_error());
		kmsd_env_put(env);
	}
	pthread_mutex_unlock(&P.http_mu);
}

/* A synchronised CRL changed: rebuild the index on a store connection of this thread. */
static void
sync_changed(void *arg)
{
	struct kms_store *st = NULL;

	(void)arg;
	if (kms_store_open(P.sync_dbpath, 0, &st) != 0) {
		kms_log(KMS_LOG_ERR, "revocation index not rebuilt: %s", kms_last_error());
		return;
	}
	if (kmsd_revidx_rebuild(st) != 0)
		kms_log(KMS_LOG_ERR, "revocation index not rebuilt: %s", kms_last_error());
	kms_store_close(st);
}

void
kmsd_http_publish_signer(const char *fp, X509 *cert)
{
	pthread_mutex_lock(&P.http_mu);
	if (P.http != NULL && pub_http_publish_signer(P.http, fp, cert) != 0)
		kms_log(KMS_LOG_ERR, "HTTP distribution point: %s", kms_last_error());
	pthread_mutex_unlock(&P.http_mu);
}

void
kmsd_http_set_ocsp(struct ca_ocsp *r, struct ca_revholder *rev)
{
	pthread_mutex_lock(&P.http_mu);
	pub_http_set_ocsp(P.http, r, rev);
	pthread_mutex_unlock(&P.http_mu);
}

int
kmsd_sync_start(void)
{
	struct kmsd_env *env = kmsd_env_get();
	const struct kms_config *cfg = env->cfg;
	struct pub_sync_opts o = { 0 };
	struct pub_sync *s = NULL;
	char *cache = NULL;
	int rc = 0;

	if (cfg->crl.source[0] == '\0' && cfg->crl.external[0] == '\0')
		goto out;
	if ((cache = kms_path_join(cfg->kmsd.state_dir, "crl-cache")) == NULL ||
	    (P.sync_dbpath == NULL && (P.sync_dbpath = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL)) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	o.source = cfg->crl.source;
	o.source_ca = cfg->crl.source_ca;
	o.external = cfg->crl.external;
	o.external_ca = cfg->crl.external_ca;
	o.anchors = env->trust;
	o.inter = env->inter;
	o.external_refresh = (int)cfg->crl.external_refresh;
	o.longpoll_timeout = (int)cfg->http.longpoll_timeout;
	o.cache_dir = cache;
	o.changed = sync_changed;
	pthread_mutex_lock(&P.sync_mu);
	rc = pub_sync_start(&o, &P.sync);
	s = P.sync;
	pthread_mutex_unlock(&P.sync_mu);
	/* Copies kept by the previous run count from now on. */
	if (rc == 0 && s != NULL)
		sync_changed(NULL);
out:
	free(cache);
	kmsd_env_put(env);
	return rc;
}

void
kmsd_sync_stop(void)
{
	struct pub_sync *s;

	pthread_mutex_lock(&P.sync_mu);
	s = P.sync;
	P.sync = NULL;
	pthread_mutex_unlock(&P.sync_mu);
	pub_sync_stop(s);
	free(P.sync_dbpath);
	P.sync_dbpath = NULL;
}

void
kmsd_sync_refresh(void)
{
	struct kmsd_env *env = kmsd_env_get();

	pthread_mutex_lock(&P.sync_mu);
	pub_sync_set_trust(P.sync, env->trust, env->inter);
	pub_sync_refresh(P.sync);
	pthread_mutex_unlock(&P.sync_mu);
	kmsd_env_put(env);
}

void
kmsd_sync_offer(STACK_OF(X509) *chain)
{
	/* The mail path never waits for a sync being started, stopped or read. */
	if (pthread_mutex_trylock(&P.sync_mu) != 0)
		return;
	pub_sync_offer(P.sync, chain);
	pthread_mutex_unlock(&P.sync_mu);
}

int
kmsd_sync_list(struct pub_dp_status **out, size_t *n)
{
	int rc;

	pthread_mutex_lock(&P.sync_mu);
	rc = pub_sync_list(P.sync, out, n);
	pthread_mutex_unlock(&P.sync_mu);
	return rc;
}

int
kmsd_sync_add_to(struct ca_revidx_builder *b)
{
	int rc;

	pthread_mutex_lock(&P.sync_mu);
	rc = pub_sync_add_to(P.sync, b, time(NULL));
	pthread_mutex_unlock(&P.sync_mu);
	return rc;
}

/* ------------------------------------------- distribution points seen in mail */

int
kmsd_dp_start(void)
{
	struct kmsd_env *env = kmsd_env_get();
	const struct kms_config *cfg = env->cfg;
	struct pub_dp_opts o = { 0 };
	struct pub_dp *d = NULL;
	char *cache = NULL;
	int rc = 0;

	if (!cfg->crl.fetch)
		goto out;
	if ((cache = kms_path_join(cfg->kmsd.state_dir, "crl-dp")) == NULL ||
	    (P.sync_dbpath == NULL && (P.sync_dbpath = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL)) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	o.anchors = env->trust;
	o.inter = env->inter;
	o.cache_dir = cache;
	o.max_size = (size_t)cfg->crl.fetch_max_size;
	o.timeout = (int)cfg->crl.fetch_timeout;
	o.concurrency = (int)cfg->crl.fetch_concurrency;
	o.max_sources = (int)cfg->crl.fetch_max_sources;
	o.refresh = (int)cfg->crl.external_refresh;
	o.changed = sync_changed;
	/* Started (kept copies read) before the mail path can see it. */
	if ((rc = pub_dp_start(&o, &d)) == 0) {
		pthread_rwlock_wrlock(&P.dp_lock);
		P.dp = d;
		pthread_rwlock_unlock(&P.dp_lock);
	}
	/* Copies kept by the previous run count from now on. */
	if (rc == 0)
		sync_changed(NULL);
out:
	free(cache);
	kmsd_env_put(env);
	return rc;
}

void
kmsd_dp_stop(void)
{
	struct pub_dp *d;

	pthread_rwlock_wrlock(&P.dp_lock);
	d = P.dp;
	P.dp = NULL;
	pthread_rwlock_unlock(&P.dp_lock);
	pub_dp_stop(d);
}

void
kmsd_dp_reload(void)
{
	struct kmsd_env *env = kmsd_env_get();

	pthread_rwlock_rdlock(&P.dp_lock);
	pub_dp_set_anchors(P.dp, env->trust);
	pthread_rwlock_unlock(&P.dp_lock);
	kmsd_env_put(env);
}

time_t
kmsd_dp_offer(STACK_OF(X509) *chain, int depth)
{
	time_t since;

	/* Readers never wait for each other; pub_dp_offer never waits for I/O or a rebuild. */
	pthread_rwlock_rdlock(&P.dp_lock);
	since = pub_dp_offer(P.dp, chain, depth);
	pthread_rwlock_unlock(&P.dp_lock);
	return since;
}

int
kmsd_dp_add_to(struct ca_revidx_builder *b)
{
	int rc;

	pthread_rwlock_rdlock(&P.dp_lock);
	rc = pub_dp_add_to(P.dp, b, time(NULL));
	pthread_rwlock_unlock(&P.dp_lock);
	return rc;
}

int
kmsd_dp_list(struct pub_dp_status **out, size_t *n)
{
	int rc;

	pthread_rwlock_rdlock(&P.dp_lock);
	rc = pub_dp_list(P.dp, out, n);
	pthread_rwlock_unlock(&P.dp_lock);
	return rc;
}
