/*
 * auditglue.c - binds the signed audit checkpoints (ca/audit_ckpt.c) to
 * the running kmsd: loads the audit signer once the CA key is loaded
 * (issuing it on the first start after `kmsctl init` or after an upgrade
 * from a store without one) and renews it at half its life; signs a
 * checkpoint every [audit] checkpoint_rows rows (looked at after every
 * control request) and every checkpoint_interval while rows wait (looked
 * at every tick); writes each one to the log at notice level, so that an
 * external log holds a copy the store's writers cannot change.
 *
 * Entry points: kmsd_audit_tick(), kmsd_audit_verify(), kmsd_audit_stop().
 *
 * Before its first checkpoint this process verifies the checkpoints it
 * finds, and afterwards signs only on top of the checkpoint it signed (or
 * verified) last: if that one is gone or the chain under it changed, it
 * stops signing and logs why, rather than sign a rewritten trail.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "kmsd/kmsd.h"

#define A kmsd_state.audit

/* How long to wait after a failure before trying again. */
#define RETRY 600

/* The signer: the one loaded while it is not due, else the stored one or a new one. */
static int
ensure_signer(struct kms_store *st, const struct ca *ca, const struct kms_config *cfg, time_t now)
{
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	char *pass = NULL, *serial;
	int renewed = 0, rc;

	if (A.cert != NULL && !ca_audit_signer_due(A.cert, (long)cfg->audit.signer_lifetime, now))
		return 0;
	if ((rc = kms_read_secret_file(cfg->ca.passphrase_file, &pass)) != 0)
		return kms_fail(rc, "audit signer: the CA passphrase file %s cannot be read", cfg->ca.passphrase_file);
	rc = ca_audit_signer_ensure(st, ca, pass, cfg->audit.signer_key, (long)cfg->audit.signer_lifetime, now, &x, &k,
	    &renewed);
	kms_secret_free(pass);
	if (rc != 0)
		return rc;
	X509_free(A.cert);
	EVP_PKEY_free(A.key);
	A.cert = x;
	A.key = k;
	serial = ca_serial_hex(X509_get0_serialNumber(x));
	kms_log(renewed ? KMS_LOG_NOTICE : KMS_LOG_INFO, "audit signer %s %s", serial ? serial : "?",
	    renewed ? "issued" : "loaded");
	free(serial);
	return 0;
}

/* Once per process: the checkpoints found must verify before any is added on top of them. */
static int
verify_found(struct kms_store *st, const struct ca *ca, time_t now)
{
	struct ca_audit_report rep;
	int rc;

	if (A.verified)
		return 0;
	/* No overdue test here: rows left unsigned while the CA key was unavailable are signed now. */
	if ((rc = ca_audit_verify(st, ca->cert, NULL, 0, 0, now, &rep)) != 0)
		return rc;
	A.known = rep.last;
	A.verified = 1;
	return 0;
}

static void
log_checkpoint(const struct ca_audit_ckpt *ck)
{
	char t[32];

	kms_log(KMS_LOG_NOTICE, "audit checkpoint #%lld: row %lld head %s time %s", ck->no, ck->seq, ck->head,
	    kms_time_format(ck->time, t, sizeof(t)));
}

static void
tick_locked(struct kms_store *st, const struct ca *ca, const struct kms_config *cfg, time_t now)
{
	struct ca_audit_ckpt made;
	int rc;

	if ((rc = ensure_signer(st, ca, cfg, now)) != 0 || (rc = verify_found(st, ca, now)) != 0) {
		kms_log(KMS_LOG_ERR, "audit: no checkpoints are signed: %s", kms_last_error());
		A.next_try = now + RETRY;
		return;
	}
	rc = ca_audit_checkpoint(st, A.cert, A.key, &A.known, cfg->audit.checkpoint_rows,
	    cfg->audit.checkpoint_interval, now, &made);
	if (rc == KMS_ERR_CORRUPT) {
		A.refused = 1;
		kms_log(KMS_LOG_ERR, "audit: the store was changed behind kmsd's back; no more checkpoints are signed "
		    "until kmsd restarts and the trail verifies: %s", kms_last_error());
	} else if (rc != 0) {
		kms_log(KMS_LOG_ERR, "audit: checkpoint: %s", kms_last_error());
		A.next_try = now + 10;
	} else if (made.no != 0) {
		log_checkpoint(&made);
	}
}

void
kmsd_audit_tick(struct kms_store *st, time_t now)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env;

	if (st == NULL || ca == NULL || ca->key == NULL)
		return;
	pthread_mutex_lock(&A.mu);
	if (!A.refused && now >= A.next_try) {
		env = kmsd_env_get();
		tick_locked(st, ca, env->cfg, now);
		kmsd_env_put(env);
	}
	pthread_mutex_unlock(&A.mu);
}

int
kmsd_audit_verify(struct kms_store *st, struct ca_audit_report *rep)
{
	const struct ca *ca = kmsd_ca();
	struct kmsd_env *env = kmsd_env_get();
	struct ca_audit_ckpt known;
	X509 *ca_cert = ca != NULL ? ca->cert : env->ca_cert;
	int rc;

	pthread_mutex_lock(&A.mu);
	known = A.known;
	pthread_mutex_unlock(&A.mu);
	rc = ca_audit_verify(st, ca_cert, &known, env->cfg->audit.checkpoint_rows, env->cfg->audit.checkpoint_interval,
	    time(NULL), rep);
	kmsd_env_put(env);
	return rc;
}

void
kmsd_audit_stop(void)
{
	pthread_mutex_lock(&A.mu);
	X509_free(A.cert);
	EVP_PKEY_free(A.key);   /* clears the private key */
	A.cert = NULL;
	A.key = NULL;
	pthread_mutex_unlock(&A.mu);
}
