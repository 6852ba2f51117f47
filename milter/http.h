/*
 * http.h - internal header of kmsd: the HTTP distribution point
 * (milter/http.c), CRL synchronisation for replicas and external CRLs
 * (milter/crlsync.c), and their kmsd bindings (milter/httpglue.c).
 *
 * Start-up order: http_listen() binds the port while kmsd may still be
 * root; http_start() (or kmsd_http_start()) serves it after privileges are
 * dropped; http_stop() wakes every long poll, stops the threads and closes
 * the socket.
 */
#ifndef KMSD_HTTP_H
#define KMSD_HTTP_H

#include <time.h>

#include <openssl/x509.h>

#include "ca/ca.h"

/* ------------------------------------------------------------------ server */

struct http_server;

struct http_opts {
	unsigned max_connections;   /* concurrent connections ([http] max_connections) */
	unsigned longpoll_ms;       /* how long GET ...crl?after=N waits ([http] longpoll_timeout) */
};

/*
 * Bind and listen on "HOST:PORT", "[v6addr]:PORT", ":PORT" or "*:PORT"
 * (any address).  Port 0 picks a free port (see http_port()).  *fd is the
 * caller's until handed to http_start().
 */
int http_listen(const char *hostport, int *fd);
/* The local port a listening socket is bound to, or -1. */
int http_port(int fd);
/*
 * Serve GET and HEAD on the bound socket fd (taken over, closed by
 * http_stop()) in MHD's own threads, one per connection:
 *   /crl/<name>.crl        the full CRL (application/pkix-crl)
 *   /crl/<name>.crl?after=N   long poll: answered at once with the CRL if
 *                          its number is above N, else when one is
 *                          published, else 304 after longpoll_ms
 *   /crl/<name>-delta.crl  the delta CRL
 *   /ca/<name>.crt         the CA certificate (application/pkix-cert)
 * with ETag, Last-Modified, Cache-Control (max-age up to nextUpdate),
 * conditional GET (304), 404 for anything else, 405 for other methods.
 */
int http_start(int fd, const struct http_opts *opts, struct http_server **out);
/* Wake long polls (they answer 503), stop serving, close the socket, free.  NULL is fine. */
void http_stop(struct http_server *srv);
/*
 * Serve set (full CRL, and the delta if any) and ca_cert (may be NULL)
 * under name from now on.  The data are copied; readers in flight keep the
 * copy they started with.  Long polls waiting for a CRL numbered below the
 * new one are answered.
 */
int http_publish(struct http_server *srv, const char *name, const struct ca_crl_set *set, X509 *ca_cert);

/* ------------------------------------------------------------ CRL sync */

struct crlsync;

struct crlsync_opts {
	const char *source;         /* replica: the primary's full CRL URL ("" or NULL: none) */
	const char *source_ca;      /* PEM of the primary's CA certificate */
	const char *external;       /* comma-separated files and http(s) URLs of other CAs' CRLs */
	const char *external_ca;    /* PEM of the CAs that sign them */
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
int crlsync_start(const struct crlsync_opts *opts, struct crlsync **out);
void crlsync_stop(struct crlsync *s);
/* Refresh the external CRLs now (e.g. on SIGHUP). */
void crlsync_refresh(struct crlsync *s);
/*
 * Add every last good copy to an index being built; copies past their
 * nextUpdate are marked stale.  Signatures were checked when the copies
 * were taken, not again here.
 */
int crlsync_add_to(struct crlsync *s, struct ca_revidx_builder *b, time_t now);
/* Number of the source's last good CRL, -1 if none. */
long long crlsync_source_number(struct crlsync *s);

/* ----------------------------------------------------- kmsd bindings */

/* http_start() with the [http] settings of the current environment. */
int kmsd_http_start(int fd, struct http_server **out);
void kmsd_http_stop(struct http_server *srv);
/* Serve a newly issued CRL set and the CA certificate under [ca] name (no-op without a server). */
void kmsd_http_publish(const struct ca_crl_set *set, X509 *ca_cert);
/*
 * Start CRL synchronisation from [crl] source/source_ca and
 * external/external_ca (cache in <state_dir>/crl-cache).  Each change
 * rebuilds the index with kmsd_revidx_rebuild().  0 with nothing to do.
 */
int kmsd_sync_start(void);
void kmsd_sync_stop(void);
/* Fetch the external CRLs again now (SIGHUP). */
void kmsd_sync_refresh(void);
/* crlsync_add_to() for the running sync (0 when none). */
int kmsd_sync_add_to(struct ca_revidx_builder *b);

#endif
