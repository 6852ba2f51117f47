/*
 * kmsd.h - internal header of the kmsd program (kmsd/): what the parts of
 * the daemon share.  Nothing outside kmsd/ includes it.
 *
 * The runtime keeps one current "environment": the config, the trust
 * anchors and the configured intermediates, reference counted and replaced as a whole on SIGHUP or after
 * `kmsctl init`.  A milter connection takes a reference at connect and
 * keeps it until close, so a reload never changes a message half-way.
 * The revocation index is held separately because it changes far more often
 * (every revocation) and is swapped on its own.
 */
#ifndef KMSD_H
#define KMSD_H

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <jansson.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "ca/ca.h"
#include "common/common.h"
#include "policy/policy.h"
#include "publish/publish.h"

struct kmsd_env {
	int refs;
	struct kms_config *cfg;     /* the config in force */
	X509_STORE *trust;          /* our CA plus [milter] trust_file; never NULL, may be empty */
	STACK_OF(X509) *inter;      /* [milter] intermediates_file; never NULL, may be empty */
	unsigned long trust_gen;    /* mlt_generation_next() when trust and inter were made: the milter caches per generation */
	X509 *ca_cert;              /* our CA certificate; NULL before init (or on a replica without one) */
	struct pol_roles *roles;    /* [roles] compiled */
};

/* Take a reference to the current environment (never NULL once kmsd runs). */
struct kmsd_env *kmsd_env_get(void);
void kmsd_env_put(struct kmsd_env *env);

/* The current revocation index (get1; NULL when none is loaded yet). */
struct ca_revidx *kmsd_revidx_get(void);
/* The holder of the current index (borrowed; lives until kmsd_runtime_stop()). */
struct ca_revholder *kmsd_revholder(void);
/* Make idx the current index (takes the reference); readers see it at their next get. */
void kmsd_revidx_set(struct ca_revidx *idx);

/*
 * Look up one of our issued certificates in the store, by issuer and
 * serial or by subject key identifier (either may be NULL).  *out get1.
 * For signatures sent without certificates (openssl smime -nocerts).
 */
int kmsd_find_cert(const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid, X509 **out);

/* ------------------------------------------------------------- runtime */

/*
 * Build the first environment from cfg (takes the reference).  The store
 * must be open; the CA certificate is loaded from it if initialised.
 */
int kmsd_runtime_start(struct kms_config *cfg, struct kms_store *st);
void kmsd_runtime_stop(void);
/* Load path, and swap it in only when it is valid: 0, or the error (old config kept). */
int kmsd_reload(const char *path);
/* Rebuild the environment from the current config (after init). */
int kmsd_env_refresh(struct kms_store *st);
/* The CA with its key (borrowed; NULL before init or when the key cannot be loaded). */
const struct ca *kmsd_ca(void);
/* Install the CA after init (takes ownership). */
void kmsd_ca_install(struct ca *ca);
/* Load the CA and its key from the store with the configured passphrase file. */
int kmsd_ca_load(struct kms_store *st, const struct kms_config *cfg);
/* The current KRK certificate (get1) and its id; KMS_ERR_NOTFOUND before init. */
int kmsd_krk_get(struct kms_store *st, X509 **cert, long long *id);
void kmsd_krk_forget(void);
/* Seconds since start. */
long long kmsd_uptime(void);

/*
 * After a change of revocation state: rebuild (or extend) the index, sign
 * and publish a new CRL.  Called by revoke, init and the timer.
 */
int kmsd_crl_publish_new(struct kms_store *st, const char *why);
/* Add one revocation to the current index at once (no full rebuild). */
int kmsd_revidx_add(const X509_NAME *issuer, const ASN1_INTEGER *serial, const struct ca_rev_info *info);
/* Rebuild the revocation index from the store (and external CRLs). */
int kmsd_revidx_rebuild(struct kms_store *st);
/* Expire recovery requests past their time: wipe their shares and keys. */
void kmsd_recovery_expire(struct kms_store *st, time_t now);
/* Wipe every pending recovery (start-up, shutdown) and mark open ones failed. */
void kmsd_recovery_abort_all(struct kms_store *st, const char *why);
/* Timer work: re-sign the CRL before nextUpdate, OCSP and audit signers and checkpoints, expire recovery requests. */
void kmsd_periodic(struct kms_store *st, time_t now);

/*
 * Audit checkpoints (kmsd/auditglue.c): tick (timer, after each control
 * request, after init) loads or renews the audit signer and signs a
 * checkpoint when one is due; verify checks the trail and its checkpoints
 * against our CA and what this process signed ([audit] settings); stop
 * frees the signer.
 */
void kmsd_audit_tick(struct kms_store *st, time_t now);
int kmsd_audit_verify(struct kms_store *st, struct ca_audit_report *rep);
void kmsd_audit_stop(void);

/* ----------------------------------------------------- HTTP and CRL sync (httpglue.c) */

/* pub_http_start() with the [http] settings of the current environment. */
int kmsd_http_start(int fd, struct pub_http_server **out);
void kmsd_http_stop(struct pub_http_server *srv);
/* Serve a newly issued CRL set and the CA certificate under [ca] name (no-op without a server). */
void kmsd_http_publish(const struct ca_crl_set *set, X509 *ca_cert);
/* Serve a replica's delegated signer certificate at /ocsp-signers/<fp>.crt. */
void kmsd_http_publish_signer(const char *fp, X509 *cert);
/* Serve OCSP from r and rev on the running HTTP server (no-op without one). */
void kmsd_http_set_ocsp(struct ca_ocsp *r, struct ca_revholder *rev);

/*
 * OCSP (kmsd/ocspglue.c): each tick starts the responder once the CA key is
 * loaded and [ocsp] enabled, and renews the delegated signer when due;
 * note_issued tells it of a certificate just committed; stop (after the
 * HTTP server) frees it.
 */
void kmsd_ocsp_tick(struct kms_store *st, time_t now);
void kmsd_ocsp_note_issued(X509 *cert);
void kmsd_ocsp_stop(void);
/*
 * Start CRL synchronisation from [crl] source/source_ca and
 * external/external_ca (cache in <state_dir>/crl-cache).  Each change
 * rebuilds the index with kmsd_revidx_rebuild().  0 with nothing to do.
 */
int kmsd_sync_start(void);
void kmsd_sync_stop(void);
/* Fetch the external CRLs again now, validated against the current environment's trust set (SIGHUP). */
void kmsd_sync_refresh(void);
/* A trusted chain in mail with an unknown status: external CRLs kept aside for its CAs are tried again. */
void kmsd_sync_offer(STACK_OF(X509) *chain);
/* The [crl] external sources with their state (pub_sync_list). */
int kmsd_sync_list(struct pub_dp_status **out, size_t *n);
/* pub_sync_add_to() for the running sync (0 when none). */
int kmsd_sync_add_to(struct ca_revidx_builder *b);
/*
 * Fetching the distribution points of certificates seen in mail ([crl]
 * fetch; cache in <state_dir>/crl-dp), each change rebuilding the index;
 * 0 with nothing to do.  offer, add_to and list are no-ops when stopped.
 */
int kmsd_dp_start(void);
void kmsd_dp_stop(void);
/* The current environment's trust anchors for later fetches (after a reload). */
void kmsd_dp_reload(void);
time_t kmsd_dp_offer(STACK_OF(X509) *chain, int depth);
int kmsd_dp_add_to(struct ca_revidx_builder *b);
int kmsd_dp_list(struct pub_dp_status **out, size_t *n);

/* ------------------------------------------------------- the process state */

struct kmsd_client;             /* kmsd/server.c */
struct kmsd_pending;            /* kmsd/cmd_escrow.c */
struct kmsd_replica_signer;     /* kmsd/ocspglue.c */

/*
 * Everything kmsd keeps for the life of the process, in one object
 * (kmsd/state.c).  Each part belongs to one file, which alone touches it
 * (under the part's own locks) and names it with a one-letter alias at its
 * top; other files go through that file's functions.
 */
struct kmsd_state {
	struct {                    /* runtime.c: environment, CA, KRK, revocation index */
		pthread_mutex_t lock;
		struct kmsd_env *env;
		struct ca *ca;          /* with key; set once */
		X509 *krk_cert;
		long long krk_id;
		struct ca_revholder *rev;
		time_t started;
	} rt;
	struct {                    /* crlpub.c: CRL publication and index rebuilds */
		pthread_mutex_t publish_lock;
		/*
		 * Serialises changes to the revocation index: a rebuild reads the
		 * store and installs its result under it, and a revocation extends
		 * the index under it, so a revocation committed while a rebuild
		 * runs is never lost.
		 */
		pthread_mutex_t rev_lock;
		time_t this_update, next_update;        /* of the CRL in force */
	} crl;
	struct {                    /* httpglue.c: the HTTP server and CRL sync in use */
		pthread_mutex_t http_mu;
		struct pub_http_server *http;
		pthread_mutex_t sync_mu;
		struct pub_sync *sync;
		char *sync_dbpath;
		pthread_rwlock_t dp_lock;   /* write: start and stop; read: every use */
		struct pub_dp *dp;          /* distribution points seen in mail, NULL when off */
		pthread_mutex_t certs_mu;   /* certs_st: one lookup at a time */
		struct kms_store *certs_st; /* /certs lookups; NULL when [http] certs_endpoint is off */
		struct pub_certs *certs;
	} pub;
	struct {                    /* cmd_publish.c: the LDAP directory's delivery thread */
		pthread_rwlock_t lock;  /* write: start, stop, reload; read: every use */
		struct pub_ldap *publisher;     /* NULL when [ldap] uri is not set */
		char *uri;              /* the directory it writes to (a reload may move it) */
	} ldap;
	struct {                    /* ocspglue.c: the OCSP responder and the signers */
		pthread_mutex_t mu;     /* cur, signer */
		pthread_mutex_t tick_mu;        /* one tick at a time (timer, init) */
		struct ca_ocsp *cur;    /* set once; freed by kmsd_ocsp_stop() */
		X509 *signer;           /* the signer's certificate, to see when it is due */
		long lifetime;
		time_t next_try;        /* after a failure, wait before trying again */
		struct kmsd_replica_signer *replicas;   /* primary: signers issued to replicas */
		size_t nreplicas;
		time_t replicas_next;
		EVP_PKEY *replica_key;  /* replica: its own signer key */
		char *replica_fp;
		X509 *replica_ca;       /* replica: the CA it answers for */
		time_t replica_next;
	} ocsp;
	struct {                    /* auditglue.c: the audit signer and the last checkpoint */
		pthread_mutex_t mu;     /* everything here; one checkpoint at a time */
		X509 *cert;
		EVP_PKEY *key;          /* freed (and cleared) at renewal and stop */
		struct ca_audit_ckpt known;     /* signed or verified last by this process */
		int verified;           /* the checkpoints found at start verified */
		int refused;            /* the store changed behind our back: sign no more */
		time_t next_try;        /* after a failure */
	} audit;
	struct {                    /* cmd_escrow.c: shares and recovered keys, only in memory */
		pthread_mutex_t lock;
		struct kmsd_pending *pendings;
	} rec;
	struct {                    /* server.c: the control socket and its clients */
		int listen_fd;
		int wake[2];
		pthread_t thread;
		int running;
		pthread_mutex_t lock;
		pthread_cond_t cond;
		struct kmsd_client *clients;
		int nclients;
		int stopping;
		char path[108];         /* sizeof(sun_path) */
	} srv;
	struct {                    /* main.c: signals, start-up handshake, the milter thread */
		int sig_pipe[2];
		volatile sig_atomic_t got_hup, got_term;
		int ready_fd;
		int milter_running;
		volatile int milter_exited;
	} main;
};

extern struct kmsd_state kmsd_state;

/* ------------------------------------------------- LDAP directory (cmd_publish.c) */

/*
 * Turn the store's publication queue on or off after [ldap] uri and, when
 * on, start the delivery thread.  0 when off.
 */
int kmsd_ldap_start(struct kms_config *cfg, struct kms_store *st);
void kmsd_ldap_stop(void);
/*
 * After a reload (SIGHUP): [ldap] uri set or cleared turns publishing on or
 * off; otherwise the running thread takes the new settings.  0 or an error.
 */
int kmsd_ldap_reload(struct kms_config *cfg, struct kms_store *st);
/* Wake the delivery thread after a committed change (no-op when off). */
void kmsd_ldap_kick(void);
/* The directory's state for status and publish status (new object). */
json_t *kmsd_ldap_json(struct kms_store *st, const struct kms_config *cfg);

#endif
