/*
 * publish.h - the public header of libkmspublish: where certificates and
 * CRLs go.  The HTTP distribution point (publish/http.c) and CRL
 * synchronisation for replicas and external CRLs (publish/crlsync.c).
 * kmsd binds them to its settings in kmsd/httpglue.c.  The LDAP directory
 * publisher (publish/ldap.c) delivers the store's publication queue.
 *
 * Start-up order: pub_http_listen() binds the port while kmsd may still be
 * root; pub_http_start() (or kmsd_http_start()) serves it after privileges are
 * dropped; pub_http_stop() wakes every long poll, stops the threads and closes
 * the socket.
 */
#ifndef PUB_PUBLISH_H
#define PUB_PUBLISH_H

#include <sys/socket.h>
#include <time.h>

#include <openssl/x509.h>

#include "ca/ca.h"
#include "common/common.h"

/* ------------------------------------------------------------------ server */

struct pub_http_server;

struct pub_http_opts {
	unsigned max_connections;   /* concurrent connections ([http] max_connections; 0: 512) */
	unsigned longpoll_ms;       /* how long GET ...crl?after=N waits ([http] longpoll_timeout) */
	size_t ocsp_max_request;    /* bytes of one OCSP request ([ocsp] max_request_size; 0: 64 KiB) */
	unsigned max_per_client;    /* from one address ([http] max_connections_per_client; 0: 32) */
	unsigned threads;           /* event-loop threads ([http] threads; 0: 4) */
	unsigned request_ms;        /* a whole request must arrive within this ([http] request_timeout; 0: 10 s) */
	unsigned idle_ms;           /* nothing moving this long closes ([http] idle_timeout; 0: 30 s) */
	unsigned max_longpolls;     /* ?after= requests parked at once ([http] max_longpolls; 0: 64) */
};

/*
 * Bind and listen on "HOST:PORT", "[v6addr]:PORT", ":PORT" or "*:PORT"
 * (any address).  Port 0 picks a free port (see pub_http_port()).  *fd is the
 * caller's until handed to pub_http_start().
 */
int pub_http_listen(const char *hostport, int *fd);
/* The local port a listening socket is bound to, or -1. */
int pub_http_port(int fd);
/*
 * Serve GET and HEAD on the bound socket fd (taken over, closed by
 * pub_http_stop()) in a few MHD threads over epoll (opts->threads), so
 * that a slow or idle client costs a socket, never a thread:
 *   /crl/<name>.crl        the full CRL (application/pkix-crl)
 *   /crl/<name>.crl?after=N   long poll: answered at once with the CRL if
 *                          its number is above N, else when one is
 *                          published, else 304 after longpoll_ms
 *   /crl/<name>-delta.crl  the delta CRL
 *   /ca/<name>.crt         the CA certificate (application/pkix-cert)
 *   /certs/<address>       a user's encryption certificate (PEM), once
 *                          pub_http_set_certs() was called (certs.c)
 *   /ocsp, /ocsp/<base64>  OCSP (POST and GET), once pub_http_set_ocsp() was called
 *   /ocsp-signers/<fp>.crt a replica's delegated OCSP signer certificate
 * with ETag, Last-Modified, Cache-Control (max-age up to nextUpdate),
 * conditional GET (304), 404 for anything else, 405 for other methods.
 * Bounds: opts->max_connections in all (more wait in the listen queue),
 * max_per_client from one address (more are closed), a whole request
 * within request_ms of the connection or of the previous answer (1 s when
 * three quarters of max_connections are taken), idle_ms
 * without progress; long polls are parked without a thread, at most
 * max_longpolls at once (503 at once over it).
 */
int pub_http_start(int fd, const struct pub_http_opts *opts, struct pub_http_server **out);
/*
 * Answer OCSP from now on with r and the current index of rev (both
 * borrowed: they must outlive the server, or be replaced first).  r NULL
 * turns /ocsp off (404).
 */
/*
 * Serve cert (copied) at /ocsp-signers/<fp>.crt, fp being the 64 hex
 * digits of ca_key_fingerprint() of its key: where a replica fetches the
 * signer certificate the primary issued for it.  Replaces an older one.
 */
int pub_http_publish_signer(struct pub_http_server *srv, const char *fp, X509 *cert);
void pub_http_set_ocsp(struct pub_http_server *srv, struct ca_ocsp *r, struct ca_revholder *rev);

/*
 * /certs/<address> (publish/certs.c): the lookup gives the PEM of the
 * address's current encryption certificate (malloc'd, *len bytes) or
 * KMS_ERR_NOTFOUND; it runs in the connection's thread.
 */
typedef int (*pub_certs_lookup_fn)(void *arg, const char *email, char **pem, size_t *len);
struct pub_certs;
/* Rate per_minute per client (IPv4 address or IPv6 /64), table of clients entries. */
int pub_certs_new(pub_certs_lookup_fn lookup, void *arg, unsigned per_minute, size_t clients, struct pub_certs **out);
void pub_certs_free(struct pub_certs *pc);
/* Serve /certs/ with pc (borrowed: it must outlive the server); NULL: 404, the default. */
void pub_http_set_certs(struct pub_http_server *srv, struct pub_certs *pc);
/* For tests: the table key of a client address (0, or -1 for other families). */
int pub_certs_client_key(const struct sockaddr *sa, unsigned char key[16]);
/* For tests: spend one token of key's bucket at monotonic time now; 1 if allowed. */
int pub_certs_allow(struct pub_certs *pc, const unsigned char key[16], double now);
/* Wake long polls (they answer 503), stop serving, close the socket, free.  NULL is fine. */
void pub_http_stop(struct pub_http_server *srv);
/*
 * Serve set (full CRL, and the delta if any) and ca_cert (may be NULL)
 * under name from now on.  The data are copied; readers in flight keep the
 * copy they started with.  Long polls waiting for a CRL numbered below the
 * new one are answered.
 */
int pub_http_publish(struct pub_http_server *srv, const char *name, const struct ca_crl_set *set, X509 *ca_cert);

/* ------------------------------------------------------------ CRL sync */

struct pub_sync;

struct pub_sync_opts {
	const char *source;         /* replica: the primary's full CRL URL ("" or NULL: none) */
	const char *source_ca;      /* PEM of the primary's CA certificate */
	const char *external;       /* comma-separated files and http(s) URLs of other CAs' CRLs */
	const char *external_ca;    /* PEM of CAs that sign them ("" or NULL: the trust set alone) */
	X509_STORE *anchors;        /* trust anchors for external CRLs (a reference is taken), may be NULL */
	STACK_OF(X509) *inter;      /* configured intermediates (copied), may be NULL */
	int external_refresh;       /* seconds between refreshes of the external CRLs */
	int longpoll_timeout;       /* seconds the primary holds a long poll */
	const char *cache_dir;      /* last good copies, kept across restarts (NULL: memory only) */
	/* Called from a sync thread after a good copy changed (never concurrently with itself). */
	void (*changed)(void *arg);
	void *arg;
};

/*
 * Load the cached last good copies (each checked again), then start a
 * thread that long-polls the source and one that refreshes the external
 * CRLs.  A failed fetch or a bad signature keeps the last good copy and is
 * logged (once per failure, and again when it recovers).
 */
int pub_sync_start(const struct pub_sync_opts *opts, struct pub_sync **out);
void pub_sync_stop(struct pub_sync *s);
/* Refresh the external CRLs now (e.g. on SIGHUP). */
void pub_sync_refresh(struct pub_sync *s);
/*
 * New trust anchors and intermediates (after a reload): later external
 * CRLs are validated against them, and those kept aside are tried again.
 */
void pub_sync_set_trust(struct pub_sync *s, X509_STORE *anchors, STACK_OF(X509) *inter);
/*
 * A trusted chain in mail has a certificate of unknown status: its CA
 * certificates that an external CRL kept aside names as issuer are
 * noted, and the sync thread validates that CRL again.  Never waits for
 * a lock (busy: the next message offers again), a signature check or
 * I/O: safe in the mail path.
 */
void pub_sync_offer(struct pub_sync *s, STACK_OF(X509) *chain);
struct pub_dp_status;
/* A snapshot of every [crl] external source (as pub_dp_list describes them); *out malloc'd. */
int pub_sync_list(struct pub_sync *s, struct pub_dp_status **out, size_t *n);
/*
 * Add every last good copy to an index being built; copies past their
 * nextUpdate are marked stale.  Signatures were checked when the copies
 * were taken, not again here.
 */
int pub_sync_add_to(struct pub_sync *s, struct ca_revidx_builder *b, time_t now);
/* Number of the source's last good CRL, -1 if none. */
long long pub_sync_source_number(struct pub_sync *s);

/* ------------------------------------------------------------------ LDAP */

struct pub_ldap;

struct pub_ldap_status {
	int connected;              /* bound to the server now */
	time_t last_ok;             /* last successful delivery, 0 if none */
	time_t last_error_time;     /* 0 if none */
	char last_error[600];       /* the last failure, "" if none */
	long long delivered;        /* entries written since start */
	time_t next_retry;          /* backing off until then, 0 if not */
	int failures;               /* connection failures in a row */
};

/*
 * Start the delivery thread for cfg's [ldap] section (uri must be set):
 * it opens its own store connection at store_path and its own LDAP
 * connection, and writes the queued entries in order (see ldap.c).
 * Holds a reference to cfg.  *out for pub_ldap_kick/status/stop.
 */
int pub_ldap_start(struct kms_config *cfg, const char *store_path, struct pub_ldap **out);
/* Wake the thread now (a change was committed); NULL is fine. */
void pub_ldap_kick(struct pub_ldap *pl);
/*
 * New [ldap] settings (a reload; uri still set): the thread drops its
 * connection between two rounds and goes on with cfg (a reference is taken),
 * re-reading the bind password file.  A back-off in progress ends early.
 */
void pub_ldap_reconfigure(struct pub_ldap *pl, struct kms_config *cfg);
/* A copy of the thread's state; all zero for NULL. */
void pub_ldap_status(struct pub_ldap *pl, struct pub_ldap_status *out);
/* Stop the thread (waits for an operation in flight, at most [ldap] timeout) and free. */
void pub_ldap_stop(struct pub_ldap *pl);

/* The same work without a thread, on the caller's store connection. */
int pub_ldap_new(const struct kms_config *cfg, struct pub_ldap **out);
void pub_ldap_free(struct pub_ldap *pl);
/*
 * Deliver up to max due rows of the queue.  0: every row taken was
 * written (*delivered of them).  KMS_ERR_IO: the connection failed (the
 * rest stays queued, in order).  KMS_ERR_PROTO: some entries could not be
 * written and wait with back-off; the others were.  Detail in kms_last_error().
 */
int pub_ldap_deliver(struct pub_ldap *pl, struct kms_store *st, size_t max, size_t *delivered);
/* Entries the delivery thread takes per pub_ldap_deliver() (one pipelined round, one queue commit). */
#define PUB_LDAP_BATCH 64
/* Rewrite one user's entry or the CA entry from the store now. */
int pub_ldap_put_user(struct pub_ldap *pl, struct kms_store *st, const char *email);
int pub_ldap_put_ca(struct pub_ldap *pl, struct kms_store *st);
/*
 * userSMIMECertificate value: a certs-only CMS SignedData (DER) holding
 * certs and ca_cert (may be NULL).  *der for OPENSSL_free.
 */
int pub_smime_certs_der(STACK_OF(X509) *certs, X509 *ca_cert, unsigned char **der, int *len);
/*
 * The userSMIMECertificate value published for certs (encryption first,
 * then signing, as the directory lists them): the one the user's signing
 * key signed at enrollment (with SMIMECapabilities and the encryption key
 * preference) when the store keeps one holding these very certificates,
 * else the certs-only SignedData.  *der for OPENSSL_free.
 */
int pub_smime_value(struct kms_store *st, STACK_OF(X509) *certs, X509 *ca_cert, unsigned char **der, int *len);

/* ------------------------------------------- distribution points seen in mail */

struct pub_dp;

struct pub_dp_opts {
	X509_STORE *anchors;        /* trust anchors (a reference is taken) */
	STACK_OF(X509) *inter;      /* configured intermediates (copied), may be NULL */
	const char *cache_dir;      /* last good copies across restarts (NULL: memory only) */
	size_t max_size;            /* bytes per CRL */
	int timeout;                /* seconds per fetch */
	int concurrency;            /* fetches at once */
	int max_sources;            /* distribution points followed */
	int refresh;                /* a good copy is fetched again at least this often (seconds) */
	void (*changed)(void *arg); /* a good copy changed (from a fetch thread, one at a time) */
	void *arg;
};

/* Load the kept copies (validated again), start the fetch threads. */
int pub_dp_start(const struct pub_dp_opts *opts, struct pub_dp **out);
void pub_dp_stop(struct pub_dp *d);
/* New trust anchors (after a reload): later fetches are validated against them. */
void pub_dp_set_anchors(struct pub_dp *d, X509_STORE *anchors);
/*
 * The revocation status of chain[depth] (a validated chain) is unknown:
 * queue its http distribution points for fetching, with the CAs above it
 * as the would-be CRL signers.  Takes a short lock, never waits for I/O:
 * safe in the mail path.  Returns when the first fetch of a distribution
 * point that has no good copy yet was asked for, 0 if none is pending.
 */
time_t pub_dp_offer(struct pub_dp *d, STACK_OF(X509) *chain, int depth);
/* Add every good copy to an index being built (expired ones: entries stale, no coverage). */
int pub_dp_add_to(struct pub_dp *d, struct ca_revidx_builder *b, time_t now);

struct pub_dp_status {
	char url[1025];
	char issuer[256];
	char error[256];            /* last error, "" if the last attempt went well */
	int have_copy;
	int entries;
	long long number;
	long long delta_base;       /* a delta CRL: its BaseCRLNumber; else -1 */
	int want_delta;             /* named by a Freshest CRL extension: a delta CRL source */
	time_t this_update, next_update;
	time_t first_asked, last_attempt, last_success, next_fetch;
};
/* A snapshot of every source; *out malloc'd. */
int pub_dp_list(struct pub_dp *d, struct pub_dp_status **out, size_t *n);
/*
 * Fetch the CRL an ldap:// or ldaps:// distribution point names (anonymous
 * bind, base-object search, the URL's attribute or
 * certificateRevocationList;binary), bounded by timeout (seconds), max
 * (bytes) and *cancel (non-zero stops it).  0 with *crl, or an error whose
 * text names the URL.
 */
int pub_dp_ldap_fetch(const char *url, int timeout, size_t max, const int *cancel, X509_CRL **crl);

#endif
