/*
 * crlpub.c - keeping revocation state current inside kmsd: sign and
 * publish a new CRL (files and HTTP) after each revocation and before
 * nextUpdate passes, and rebuild the in-memory revocation index.
 *
 * Entry points: kmsd_crl_publish_new(), kmsd_revidx_rebuild(),
 * kmsd_periodic().
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "publish/publish.h"
#include "kmsd/kmsd.h"

/* Our part of the process state: kmsd_state.crl (kmsd/state.c). */
#define C kmsd_state.crl

/* The delta CRL's URL: the full CRL's with "-delta" before ".crl". */
static char *
delta_url(const char *full)
{
	size_t n = strlen(full);
	char *d;

	if (n < 4 || strcmp(full + n - 4, ".crl") != 0)
		return NULL;
	d = malloc(n + 7);
	if (d == NULL)
		return NULL;
	memcpy(d, full, n - 4);
	memcpy(d + n - 4, "-delta.crl", 11);
	return d;
}

int
kmsd_crl_publish_new(struct kms_store *st, const char *why)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env;
	struct ca_crl_set *set = NULL;
	struct ca_crl_opts opts;
	char *durl = NULL;
	int rc;

	if (ca == NULL || ca->key == NULL)
		return 0;       /* nothing to sign with: not initialised, or a replica */
	env = kmsd_env_get();
	memset(&opts, 0, sizeof(opts));
	opts.next_update_hours = (int)env->cfg->crl.next_update_hours;
	opts.delta = env->cfg->crl.delta;
	opts.full_url = env->cfg->crl.url[0] ? env->cfg->crl.url : NULL;
	if (opts.delta && opts.full_url) {
		durl = delta_url(opts.full_url);
		opts.delta_url = durl;
	}
	pthread_mutex_lock(&C.publish_lock);
	rc = ca_crl_issue(st, ca, &opts, &set);
	if (rc == 0 && (rc = kms_mkdir_p(env->cfg->crl.publish_dir, 0755)) == 0)
		rc = ca_crl_publish(env->cfg->crl.publish_dir, ca->name, set, ca->cert);
	if (rc == 0) {
		kmsd_ldap_kick();
		kmsd_http_publish(set, ca->cert);
		C.this_update = set->this_update;
		C.next_update = set->next_update;
		kms_log(KMS_LOG_INFO, "CRL %lld signed and published (%s)%s", set->full_number, why,
		    set->delta_der ? ", with a delta" : "");
	}
	pthread_mutex_unlock(&C.publish_lock);
	if (rc != 0)
		kms_log(KMS_LOG_ERR, "CRL (%s): %s", why, kms_last_error());
	ca_crl_set_free(set);
	free(durl);
	kmsd_env_put(env);
	return rc;
}

int
kmsd_revidx_rebuild(struct kms_store *st)
{
	struct kmsd_env *env = kmsd_env_get();
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	int rc;

	pthread_mutex_lock(&C.rev_lock);
	if ((rc = ca_revidx_builder_new(&b)) != 0)
		goto out;
	if (env->ca_cert != NULL && kmsd_ca() != NULL && (rc = ca_revidx_add_store(b, st, env->ca_cert)) != 0)
		goto out;
	if ((rc = kmsd_sync_add_to(b)) != 0)
		goto out;
	if ((rc = kmsd_dp_add_to(b)) != 0)
		goto out;
	if ((rc = ca_revidx_build(b, &idx)) != 0)
		goto out;
	kms_log(KMS_LOG_DEBUG, "revocation index rebuilt: %zu entries", ca_revidx_count(idx));
	kmsd_revidx_set(idx);
out:
	pthread_mutex_unlock(&C.rev_lock);
	ca_revidx_builder_free(b);
	kmsd_env_put(env);
	return rc;
}

int
kmsd_revidx_add(const X509_NAME *issuer, const ASN1_INTEGER *serial, const struct ca_rev_info *info)
{
	struct ca_revidx *cur, *next = NULL;
	int rc;

	pthread_mutex_lock(&C.rev_lock);
	cur = kmsd_revidx_get();
	if (cur == NULL) {
		struct ca_revidx_builder *b = NULL;

		/* No index yet: start an empty one. */
		rc = ca_revidx_builder_new(&b);
		if (rc == 0)
			rc = ca_revidx_build(b, &cur);
		ca_revidx_builder_free(b);
		if (rc != 0)
			goto out;
	}
	if ((rc = ca_revidx_with(cur, issuer, serial, info, &next)) == 0)
		kmsd_revidx_set(next);
out:
	pthread_mutex_unlock(&C.rev_lock);
	ca_revidx_unref(cur);
	return rc;
}

void
kmsd_periodic(struct kms_store *st, time_t now)
{
	const struct ca *ca = kmsd_ca();

	if (ca != NULL && ca->key != NULL) {
		if (C.next_update == 0) {
			struct ca_crl_set *set = NULL;

			/* First tick: pick up the newest CRL in the store and serve it. */
			if (ca_crl_latest(st, &set) == 0) {
				C.this_update = set->this_update;
				C.next_update = set->next_update;
				kmsd_http_publish(set, ca->cert);
				ca_crl_set_free(set);
			} else {
				kms_clear_error();
			}
		}
		/* Re-sign at half-life, so that a published CRL is never stale. */
		if (C.next_update == 0 || now >= C.this_update + (C.next_update - C.this_update) / 2)
			kmsd_crl_publish_new(st, C.next_update == 0 ? "first CRL" : "timer");
	}
	kmsd_ocsp_tick(st, now);
	kmsd_audit_tick(st, now);
	kmsd_recovery_expire(st, now);
}
