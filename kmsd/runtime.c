/*
 * runtime.c - kmsd's shared state: the current environment (config, trust
 * anchors, roles), the CA with its key, the KRK certificate, and the
 * revocation index.
 *
 * The environment is immutable and reference counted: a reader takes it
 * with kmsd_env_get() and keeps it as long as it needs a consistent view;
 * reload and init build a new one and swap it in under a short lock.  The
 * CA is installed once (at start-up or by init) and lives until exit.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include "archive/archive.h"
#include "kmsd/kmsd.h"
#include "milter/milter.h"

/* Our part of the process state: kmsd_state.rt (kmsd/state.c). */
#define R kmsd_state.rt

long long
kmsd_uptime(void)
{
	return (long long)(time(NULL) - R.started);
}

/* -------------------------------------------------------------- environment */

static void
env_free(struct kmsd_env *env)
{
	if (env == NULL)
		return;
	X509_STORE_free(env->trust);
	sk_X509_pop_free(env->inter, X509_free);
	X509_free(env->ca_cert);
	pol_roles_free(env->roles);
	kms_config_unref(env->cfg);
	free(env);
}

struct kmsd_env *
kmsd_env_get(void)
{
	struct kmsd_env *env;

	pthread_mutex_lock(&R.lock);
	env = R.env;
	if (env)
		env->refs++;
	pthread_mutex_unlock(&R.lock);
	return env;
}

void
kmsd_env_put(struct kmsd_env *env)
{
	int last;

	if (env == NULL)
		return;
	pthread_mutex_lock(&R.lock);
	last = --env->refs == 0;
	pthread_mutex_unlock(&R.lock);
	if (last)
		env_free(env);
}

static void
env_swap(struct kmsd_env *env)
{
	struct kmsd_env *old;

	pthread_mutex_lock(&R.lock);
	old = R.env;
	R.env = env;
	pthread_mutex_unlock(&R.lock);
	kmsd_env_put(old);
}

/* Trust every certificate of a PEM file; the error names the setting. */
static int
add_trust_file(X509_STORE *store, const char *key, const char *path)
{
	int rc = ca_trust_add_file(store, path);

	if (rc != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		return kms_fail(KMS_ERR_CONFIG, "%s: %s", key, why);
	}
	return 0;
}

/* Build an environment for cfg (takes the reference) with ca_cert (borrowed). */
static int
env_build(struct kms_config *cfg, X509 *ca_cert, struct kmsd_env **out)
{
	struct kmsd_env *env;
	int rc;

	*out = NULL;
	env = calloc(1, sizeof(*env));
	if (env == NULL) {
		kms_config_unref(cfg);
		return KMS_ERR_NOMEM;
	}
	env->refs = 1;
	env->cfg = cfg;
	env->trust = X509_STORE_new();
	env->inter = sk_X509_new_null();
	if (env->trust == NULL || env->inter == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	if (ca_cert != NULL) {
		X509_up_ref(ca_cert);
		env->ca_cert = ca_cert;
		X509_STORE_add_cert(env->trust, ca_cert);
	}
	if (cfg->milter.trust_file[0] != '\0' &&
	    (rc = add_trust_file(env->trust, "[milter] trust_file", cfg->milter.trust_file)) != 0)
		goto fail;
	if (cfg->milter.trust_dir[0] != '\0' && (rc = ca_trust_add_dir(env->trust, cfg->milter.trust_dir, NULL)) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(KMS_ERR_CONFIG, "[milter] trust_dir: %s", why);
		goto fail;
	}
	if (cfg->milter.use_system_store && (rc = ca_trust_add_system(env->trust)) != 0)
		goto fail;
	if (cfg->crl.source_ca[0] != '\0' && ca_cert == NULL &&
	    (rc = add_trust_file(env->trust, "[crl] source_ca", cfg->crl.source_ca)) != 0)
		goto fail;
	/* Chains are built with them as with the certificates a message carries. */
	if (cfg->milter.intermediates_file[0] != '\0' &&
	    (rc = ca_certs_load_file(cfg->milter.intermediates_file, env->inter, NULL)) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(KMS_ERR_CONFIG, "[milter] intermediates_file: %s", why);
		goto fail;
	}
	if ((rc = pol_roles_compile(cfg, geteuid(), &env->roles)) != 0)
		goto fail;
	env->trust_gen = mlt_generation_next();
	*out = env;
	return 0;
fail:
	env_free(env);
	return rc;
}

/* The CA certificate that belongs in the environment. */
static X509 *
current_ca_cert(struct kms_store *st)
{
	struct ca *ca = NULL;
	X509 *x = NULL;

	pthread_mutex_lock(&R.lock);
	if (R.ca) {
		x = R.ca->cert;
		X509_up_ref(x);
	}
	pthread_mutex_unlock(&R.lock);
	if (x == NULL && st != NULL && ca_store_load(st, NULL, NULL, &ca) == 0) {
		x = ca->cert;
		X509_up_ref(x);
		ca_free(ca);
	}
	kms_clear_error();
	return x;
}

int
kmsd_env_refresh(struct kms_store *st)
{
	struct kmsd_env *cur = kmsd_env_get(), *env;
	X509 *x = current_ca_cert(st);
	int rc;

	rc = env_build(kms_config_ref(cur->cfg), x, &env);
	X509_free(x);
	kmsd_env_put(cur);
	if (rc == 0)
		env_swap(env);
	return rc;
}

int
kmsd_reload(const char *path)
{
	struct kms_config *cfg;
	struct kmsd_env *cur, *env;
	X509 *x;
	int rc;

	if ((rc = kms_config_load(path, &cfg)) != 0)
		return rc;
	cur = kmsd_env_get();
	/* Some settings are bound at start-up; say so instead of pretending. */
	if (strcmp(cur->cfg->kmsd.state_dir, cfg->kmsd.state_dir) != 0 ||
	    strcmp(cur->cfg->kmsd.control_socket, cfg->kmsd.control_socket) != 0 ||
	    strcmp(cur->cfg->kmsd.milter_socket, cfg->kmsd.milter_socket) != 0 ||
	    strcmp(cur->cfg->http.listen, cfg->http.listen) != 0 ||
	    strcmp(cur->cfg->kmsd.user, cfg->kmsd.user) != 0)
		kms_log(KMS_LOG_WARNING, "reload: state_dir, sockets, [http] listen and user take effect "
		    "only at restart; the running values are kept");
	kmsd_env_put(cur);
	x = current_ca_cert(NULL);
	rc = env_build(cfg, x, &env);
	X509_free(x);
	if (rc != 0)
		return rc;
	kms_log_set_level((int)env->cfg->kmsd.log_level);
	env_swap(env);
	return 0;
}

/* ------------------------------------------------------------------- the CA */

const struct ca *
kmsd_ca(void)
{
	const struct ca *ca;

	pthread_mutex_lock(&R.lock);
	ca = R.ca;
	pthread_mutex_unlock(&R.lock);
	return ca;
}

void
kmsd_ca_install(struct ca *ca)
{
	struct ca *old;

	pthread_mutex_lock(&R.lock);
	old = R.ca;
	R.ca = ca;
	pthread_mutex_unlock(&R.lock);
	/* Installed once; a second install (never expected) must not free a CA in use. */
	if (old != NULL)
		kms_log(KMS_LOG_WARNING, "CA installed twice; keeping the old one in memory");
}

int
kmsd_ca_load(struct kms_store *st, const struct kms_config *cfg)
{
	struct ca *ca = NULL;
	char *pass = NULL;
	int rc;

	rc = kms_read_secret_file(cfg->ca.passphrase_file, &pass);
	if (rc != 0) {
		if (ca_store_load(st, cfg->ca.name, NULL, &ca) == KMS_ERR_NOTFOUND)
			return KMS_ERR_NOTFOUND;        /* not initialised: fine */
		ca_free(ca);
		return kms_fail(KMS_ERR_CONFIG, "the CA is initialised but its passphrase file %s cannot be read",
		    cfg->ca.passphrase_file);
	}
	rc = ca_store_load(st, cfg->ca.name, pass, &ca);
	kms_secret_free(pass);
	if (rc == KMS_ERR_PERM)
		return kms_fail(rc, "the passphrase in %s does not open the CA key", cfg->ca.passphrase_file);
	if (rc != 0)
		return rc;
	ca->not_before_margin = (int)cfg->ca.not_before_margin;
	kmsd_ca_install(ca);
	return 0;
}

int
kmsd_krk_get(struct kms_store *st, X509 **cert, long long *id)
{
	struct esc_krk *k = NULL;
	int rc;

	*cert = NULL;
	pthread_mutex_lock(&R.lock);
	if (R.krk_cert) {
		X509_up_ref(R.krk_cert);
		*cert = R.krk_cert;
		*id = R.krk_id;
	}
	pthread_mutex_unlock(&R.lock);
	if (*cert)
		return 0;
	if ((rc = esc_store_current_krk(st, &k)) != 0)
		return rc;
	pthread_mutex_lock(&R.lock);
	if (R.krk_cert == NULL) {
		X509_up_ref(k->cert);
		R.krk_cert = k->cert;
		R.krk_id = k->id;
	}
	X509_up_ref(R.krk_cert);
	*cert = R.krk_cert;
	*id = R.krk_id;
	pthread_mutex_unlock(&R.lock);
	esc_krk_free(k);
	return 0;
}

void
kmsd_krk_forget(void)
{
	pthread_mutex_lock(&R.lock);
	X509_free(R.krk_cert);
	R.krk_cert = NULL;
	R.krk_id = 0;
	pthread_mutex_unlock(&R.lock);
}

/* ------------------------------------------------------- revocation index */

struct ca_revholder *
kmsd_revholder(void)
{
	return R.rev;
}

struct ca_revidx *
kmsd_revidx_get(void)
{
	return R.rev ? ca_revholder_get(R.rev) : NULL;
}

void
kmsd_revidx_set(struct ca_revidx *idx)
{
	if (R.rev)
		ca_revholder_set(R.rev, idx);
	else
		ca_revidx_unref(idx);
}

int
kmsd_find_cert(const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid, X509 **out)
{
	struct kmsd_env *env = kmsd_env_get();
	struct kms_store *st = NULL;
	char *path;
	int rc;

	*out = NULL;
	path = kms_path_join(env->cfg->kmsd.state_dir, KMS_STORE_FILE);
	kmsd_env_put(env);
	if (path == NULL)
		return KMS_ERR_NOMEM;
	rc = kms_store_open(path, KMS_STORE_READONLY, &st);
	free(path);
	if (rc == 0)
		rc = ca_store_find_cert(st, issuer, serial, skid, out);
	kms_store_close(st);
	return rc;
}

/* ------------------------------------------------------------- start, stop */

int
kmsd_runtime_start(struct kms_config *cfg, struct kms_store *st)
{
	struct kmsd_env *env;
	X509 *x;
	int rc;

	R.started = time(NULL);
	if ((rc = ca_revholder_new(&R.rev)) != 0) {
		kms_config_unref(cfg);
		return rc;
	}
	if (cfg->ca.enabled) {
		rc = kmsd_ca_load(st, cfg);
		if (rc != 0 && rc != KMS_ERR_NOTFOUND) {
			kms_config_unref(cfg);
			return rc;
		}
		if (rc == KMS_ERR_NOTFOUND)
			kms_log(KMS_LOG_INFO, "the CA is not initialised yet: run `kmsctl init --org NAME`");
	}
	x = current_ca_cert(st);
	rc = env_build(cfg, x, &env);
	X509_free(x);
	if (rc != 0)
		return rc;
	env_swap(env);
	return 0;
}

void
kmsd_runtime_stop(void)
{
	struct kmsd_env *env;
	struct ca *ca;

	pthread_mutex_lock(&R.lock);
	env = R.env;
	R.env = NULL;
	ca = R.ca;
	R.ca = NULL;
	X509_free(R.krk_cert);
	R.krk_cert = NULL;
	pthread_mutex_unlock(&R.lock);
	kmsd_env_put(env);
	ca_free(ca);
	ca_revholder_free(R.rev);
	R.rev = NULL;
}
