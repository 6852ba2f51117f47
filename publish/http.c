/*
 * http.c - the HTTP distribution point: our CRLs and CA certificate over
 * plain HTTP, served by libmicrohttpd from in-memory copies.
 *
 * Entry points: pub_http_listen(), pub_http_port(), pub_http_start(), pub_http_publish(),
 * pub_http_set_ocsp(), pub_http_stop().  /ocsp is handed to ocsp.c.  Owns the published copies ("blobs": immutable, reference
 * counted, so a response in flight keeps the bytes it started with while
 * kmsd publishes a newer CRL) and the record of every connection.
 *
 * Hostile clients must not lock out the ones that need a CRL, so every
 * resource has a bound: libmicrohttpd runs a few threads over epoll (a
 * slow or idle client costs a socket, not a thread), max_connections in
 * all and max_per_client from one address; a whole request must arrive
 * within request_ms (a timer thread cuts the late ones, since MHD's own
 * timeout is only for idleness and a byte every few seconds resets it);
 * a long poll (GET /crl/<name>.crl?after=N) is parked with MHD
 * suspend/resume in a pool of max_longpolls, holding no thread, and is
 * resumed on publish, at its deadline and on stop.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "publish/publish.h"
#include "publish/pubint.h"

#define CT_CRL "application/pkix-crl"
#define CT_CERT "application/pkix-cert"
#define CERT_MAX_AGE 86400
#define FULL_REQUEST_MS 1000        /* the request deadline when three quarters of the connections are taken */

struct blob {
	atomic_long refs;
	unsigned char *data;
	size_t len;
	long long number;           /* CRL number; -1 for the certificate */
	time_t last_modified;
	time_t next_update;         /* 0 for the certificate */
	char etag[48];
};

struct site {
	char *name;
	struct blob *full, *delta, *cert;
	struct site *next;
};

/* A replica's delegated OCSP signer certificate, by the fingerprint of its key. */
struct signer_pub {
	char fp[65];
	struct blob *cert;
	struct signer_pub *next;
};

/*
 * One connection, from MHD's NOTIFY_STARTED to NOTIFY_CLOSED (its socket
 * context): the request deadline, and the long poll it is parked in.
 */
struct conn {
	struct MHD_Connection *c;
	int fd;                     /* MHD's socket: open while listed (MHD closes it after NOTIFY_CLOSED) */
	struct timespec start;      /* of the connection, or of its last answer */
	int received;               /* the request is all in: no deadline */
	int polling;                /* counted in the long-poll pool */
	int suspended;              /* parked by MHD_suspend_connection, not yet resumed */
	struct timespec deadline;   /* of the long poll */
	struct conn *prev, *next;
};

struct pub_http_server {
	struct MHD_Daemon *mhd;
	pthread_mutex_t mu;         /* everything below */
	struct site *sites;
	struct signer_pub *signers;
	int stopping;
	unsigned longpoll_ms;
	unsigned request_ms;
	unsigned max_conns, nconns; /* nearly full: late requests get a much shorter deadline */
	unsigned max_longpolls;
	unsigned nlongpolls;
	struct conn *conns;
	unsigned long long cut;     /* connections cut at request_ms, not yet logged */
	unsigned long long cut_early; /* of which cut early, the server being nearly full */
	time_t cut_logged;
	pthread_t timer;            /* resumes long polls at their deadline, cuts late requests */
	int timer_running;
	pthread_cond_t timer_cv;    /* signalled on stop */
	struct ca_ocsp *ocsp;       /* /ocsp; NULL: 404 (set by pub_http_set_ocsp) */
	struct ca_revholder *rev;
	size_t ocsp_max;            /* bytes of one OCSP request */
	struct pub_certs *certs;    /* /certs/; NULL: 404 (set by pub_http_set_certs) */
};

/* ----------------------------------------------------------------- blobs */

static void
blob_unref(struct blob *b)
{
	if (b == NULL || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
		return;
	free(b->data);
	free(b);
}

static struct blob *
blob_ref(struct blob *b)
{
	if (b != NULL)
		atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	return b;
}

static void
blob_free_cb(void *arg)
{
	blob_unref(arg);
}

static struct blob *
blob_new(const unsigned char *data, size_t len, long long number, time_t lm, time_t nu)
{
	struct blob *b = calloc(1, sizeof(*b));
	char *hex;

	if (b == NULL || (b->data = malloc(len ? len : 1)) == NULL || (hex = kms_sha256_hex(data, len)) == NULL) {
		if (b != NULL)
			free(b->data);
		free(b);
		return NULL;
	}
	memcpy(b->data, data, len);
	b->len = len;
	b->number = number;
	b->last_modified = lm;
	b->next_update = nu;
	if (number >= 0)
		snprintf(b->etag, sizeof(b->etag), "\"%lld-%.16s\"", number, hex);
	else
		snprintf(b->etag, sizeof(b->etag), "\"%.24s\"", hex);
	free(hex);
	atomic_init(&b->refs, 1);
	return b;
}

/* ------------------------------------------------------------ HTTP dates */

static const char *const wdays[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
	"Oct", "Nov", "Dec" };

void
pub_http_date(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d GMT", wdays[tm.tm_wday % 7], tm.tm_mday,
	    months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static int
month_of(const char *m)
{
	for (int i = 0; i < 12; i++)
		if (strcasecmp(m, months[i]) == 0)
			return i;
	return -1;
}

/* RFC 9110 5.6.7: IMF-fixdate, RFC 850 and asctime forms.  0 or -1. */
static int
parse_http_date(const char *s, time_t *out)
{
	struct tm tm;
	char wd[16], mon[4];
	int d, y, h, mi, sec, mo;

	memset(&tm, 0, sizeof(tm));
	if (sscanf(s, "%3s, %2d %3s %4d %2d:%2d:%2d GMT", wd, &d, mon, &y, &h, &mi, &sec) == 7) {
		/* IMF-fixdate */
	} else if (sscanf(s, "%15[A-Za-z], %2d-%3s-%2d %2d:%2d:%2d GMT", wd, &d, mon, &y, &h, &mi, &sec) == 7) {
		y += y < 70 ? 2000 : 1900;
	} else if (sscanf(s, "%3s %3s %2d %2d:%2d:%2d %4d", wd, mon, &d, &h, &mi, &sec, &y) == 7) {
		/* asctime */
	} else {
		return -1;
	}
	if ((mo = month_of(mon)) < 0 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || y < 1970)
		return -1;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	*out = timegm(&tm);
	return 0;
}

int
pub_etag_listed(const char *list, const char *etag)
{
	size_t elen = strlen(etag);
	const char *p = list;

	while (*p != '\0') {
		const char *end;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return 1;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		if (*p != '"')
			return 0;
		if ((end = strchr(p + 1, '"')) == NULL)
			return 0;
		if ((size_t)(end + 1 - p) == elen && strncmp(p, etag, elen) == 0)
			return 1;
		p = end + 1;
	}
	return 0;
}

/* --------------------------------------------------------------- replies */

static enum MHD_Result
reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_PERSISTENT);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static void
add_validators(struct MHD_Response *r, const struct blob *b)
{
	char date[64], cc[64];
	time_t now = time(NULL);

	MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, b->etag);
	pub_http_date(b->last_modified, date, sizeof(date));
	MHD_add_response_header(r, MHD_HTTP_HEADER_LAST_MODIFIED, date);
	if (b->next_update > 0) {
		long long age = b->next_update > now ? (long long)(b->next_update - now) : 0;

		snprintf(cc, sizeof(cc), "public, max-age=%lld, no-transform", age);
		pub_http_date(b->next_update, date, sizeof(date));
		MHD_add_response_header(r, MHD_HTTP_HEADER_EXPIRES, date);
	} else {
		snprintf(cc, sizeof(cc), "public, max-age=%d, no-transform", CERT_MAX_AGE);
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, cc);
}

/* Queue b with status 200 or 304; takes the reference to b. */
static enum MHD_Result
reply_blob(struct MHD_Connection *c, struct blob *b, const char *ctype, unsigned status)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (status == MHD_HTTP_NOT_MODIFIED) {
		r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		if (r == NULL) {
			blob_unref(b);
			return MHD_NO;
		}
		add_validators(r, b);
		blob_unref(b);
	} else {
		r = MHD_create_response_from_buffer_with_free_callback_cls(b->len, b->data, blob_free_cb, b);
		if (r == NULL) {
			blob_unref(b);
			return MHD_NO;
		}
		add_validators(r, b);
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	}
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* 304 when the client's copy is current (If-None-Match wins over If-Modified-Since). */
static int
not_modified(struct MHD_Connection *c, const struct blob *b)
{
	const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
	const char *ims;
	time_t t;

	if (inm != NULL)
		return pub_etag_listed(inm, b->etag);
	ims = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_MODIFIED_SINCE);
	return ims != NULL && parse_http_date(ims, &t) == 0 && b->last_modified <= t;
}

/* ---------------------------------------------------------------- routing */

enum what { W_NONE, W_FULL, W_DELTA, W_CERT, W_SIGNER };

static int
name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 128 || s[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		    s[i] == '-' || s[i] == '_' || s[i] == '.'))
			return 0;
	return 1;
}

static struct site *
site_find(struct pub_http_server *srv, const char *name, size_t n)
{
	for (struct site *s = srv->sites; s != NULL; s = s->next)
		if (strlen(s->name) == n && memcmp(s->name, name, n) == 0)
			return s;
	return NULL;
}

static int
ends_with(const char *s, size_t n, const char *suffix)
{
	size_t k = strlen(suffix);

	return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Under mu: the site and what the URL asks of it. */
/* Under mu: the signer certificate published for /ocsp-signers/<64 hex>.crt. */
static struct blob *
signer_find(struct pub_http_server *srv, const char *url)
{
	const char *fp = url + strlen("/ocsp-signers/");

	if (strlen(fp) != 64 + 4 || strcmp(fp + 64, ".crt") != 0)
		return NULL;
	for (struct signer_pub *p = srv->signers; p != NULL; p = p->next)
		if (strncmp(p->fp, fp, 64) == 0)
			return p->cert;
	return NULL;
}

static enum what
route(struct pub_http_server *srv, const char *url, struct site **site)
{
	size_t n;

	*site = NULL;
	if (strncmp(url, "/ocsp-signers/", 14) == 0)
		return signer_find(srv, url) != NULL ? W_SIGNER : W_NONE;
	if (strncmp(url, "/crl/", 5) == 0) {
		url += 5;
		n = strlen(url);
		if (!ends_with(url, n, ".crl") || !name_ok(url, n - 4))
			return W_NONE;
		n -= 4;
		/* A CA whose own name ends in "-delta" wins over another's delta. */
		if ((*site = site_find(srv, url, n)) != NULL)
			return W_FULL;
		if (ends_with(url, n, "-delta") && (*site = site_find(srv, url, n - 6)) != NULL)
			return W_DELTA;
	} else if (strncmp(url, "/ca/", 4) == 0) {
		url += 4;
		n = strlen(url);
		if (ends_with(url, n, ".crt") && name_ok(url, n - 4) && (*site = site_find(srv, url, n - 4)) != NULL)
			return W_CERT;
	}
	return W_NONE;
}

static int
parse_after(const char *s, long long *out)
{
	long long v = 0;

	if (s == NULL || *s == '\0' || strlen(s) > 18)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
	}
	*out = v;
	return 0;
}

static void
deadline_after(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static int
passed(const struct timespec *ts)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

static struct conn *
conn_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci != NULL ? ci->socket_context : NULL;
}

/*
 * Resume the parked long polls (all of them on publish and stop, else
 * those past their deadline).  Marked under mu, resumed after it: MHD
 * never frees a suspended connection, and only the one who clears
 * k->suspended resumes it, so the pointer stays good.
 */
static void
wake_longpolls(struct pub_http_server *srv, int all)
{
	struct MHD_Connection *batch[64];
	size_t n;

	do {
		n = 0;
		pthread_mutex_lock(&srv->mu);
		for (struct conn *k = srv->conns; k != NULL && n < 64; k = k->next) {
			if (k->suspended && (all || passed(&k->deadline))) {
				k->suspended = 0;
				batch[n++] = k->c;
			}
		}
		pthread_mutex_unlock(&srv->mu);
		for (size_t i = 0; i < n; i++)
			MHD_resume_connection(batch[i]);
	} while (n == 64);
}

/* Under mu: the long poll of k (if any) leaves the pool. */
static void
longpoll_end(struct pub_http_server *srv, struct conn *k)
{
	if (k != NULL && k->polling) {
		k->polling = 0;
		srv->nlongpolls--;
	}
}

/*
 * GET /crl/<name>.crl?after=N: answered at once when the CRL's number is
 * above N; else parked (MHD suspend, no thread held) in a pool of at most
 * max_longpolls until a newer CRL, the deadline (304) or shutdown (503);
 * over the pool, 503 at once.  MHD calls the handler again after each
 * resume; k says whether this request is already parked.
 */
static enum MHD_Result
long_poll(struct pub_http_server *srv, struct MHD_Connection *c, struct conn *k, const char *url, long long after)
{
	struct site *site;
	struct blob *b = NULL;
	enum what wh;
	int stopping;

	pthread_mutex_lock(&srv->mu);
	wh = route(srv, url, &site);
	stopping = srv->stopping;
	if (wh == W_FULL && site->full != NULL && site->full->number > after)
		b = blob_ref(site->full);
	if (wh == W_FULL && b == NULL && !stopping && !(k != NULL && k->polling && passed(&k->deadline))) {
		if (k == NULL || (!k->polling && srv->nlongpolls >= srv->max_longpolls)) {
			pthread_mutex_unlock(&srv->mu);
			return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "too many long polls; retry later\n");
		}
		if (!k->polling) {
			k->polling = 1;
			srv->nlongpolls++;
			deadline_after(&k->deadline, srv->longpoll_ms);
		}
		/* Suspended before mu goes, so that no wake-up can resume it first. */
		k->suspended = 1;
		MHD_suspend_connection(c);
		pthread_mutex_unlock(&srv->mu);
		return MHD_YES;
	}
	if (b == NULL && wh == W_FULL && !stopping)
		b = blob_ref(site->full);
	longpoll_end(srv, k);
	pthread_mutex_unlock(&srv->mu);
	if (stopping) {
		blob_unref(b);
		return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
	}
	if (b == NULL)
		return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
	return reply_blob(c, b, CT_CRL, b->number > after ? MHD_HTTP_OK : MHD_HTTP_NOT_MODIFIED);
}

/* The request is all in (headers, and the body of a POST): its deadline no longer applies. */
static void
request_received(struct pub_http_server *srv, struct conn *k)
{
	if (k == NULL)
		return;
	pthread_mutex_lock(&srv->mu);
	k->received = 1;
	pthread_mutex_unlock(&srv->mu);
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
    const char *upload_data, size_t *upload_size, void **req_cls)
{
	struct pub_http_server *srv = cls;
	struct conn *k = conn_of(c);
	struct site *site;
	struct blob *b = NULL;
	enum what w;
	const char *after_s, *ctype;
	long long after;
	int head;

	(void)version;
	if (pub_ocsp_path(url)) {
		struct ca_ocsp *r;
		struct ca_revholder *rev;
		enum MHD_Result ret;
		int first = *req_cls == NULL, body_done = !first && *upload_size == 0;

		pthread_mutex_lock(&srv->mu);
		r = srv->ocsp;
		rev = srv->rev;
		pthread_mutex_unlock(&srv->mu);
		ret = pub_ocsp_serve(c, r, rev, srv->ocsp_max, url, method, upload_data, upload_size, req_cls);
		/* Answered from the headers alone, or a POST body complete: the deadline is met. */
		if (body_done || (first && *req_cls == NULL))
			request_received(srv, k);
		return ret;
	}
	request_received(srv, k);
	if (strncmp(url, "/certs/", 7) == 0) {
		struct pub_certs *pc;

		pthread_mutex_lock(&srv->mu);
		pc = srv->certs;
		pthread_mutex_unlock(&srv->mu);
		return pub_certs_serve(pc, c, url, method);
	}
	if (strcmp(method, MHD_HTTP_METHOD_GET) == 0)
		head = 0;
	else if (strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
		head = 1;
	else
		return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");

	after_s = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after");
	if (after_s != NULL && !head) {
		if (parse_after(after_s, &after) != 0)
			return reply_text(c, MHD_HTTP_BAD_REQUEST, "after= takes a CRL number\n");
		return long_poll(srv, c, k, url, after);
	}

	pthread_mutex_lock(&srv->mu);
	w = route(srv, url, &site);
	if (w == W_FULL)
		b = blob_ref(site->full);
	else if (w == W_DELTA)
		b = blob_ref(site->delta);
	else if (w == W_CERT)
		b = blob_ref(site->cert);
	else if (w == W_SIGNER)
		b = blob_ref(signer_find(srv, url));
	pthread_mutex_unlock(&srv->mu);
	if (b == NULL)
		return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
	ctype = w == W_CERT || w == W_SIGNER ? CT_CERT : CT_CRL;
	return reply_blob(c, b, ctype, not_modified(c, b) ? MHD_HTTP_NOT_MODIFIED : MHD_HTTP_OK);
}

/* A request ended, answered or not: its long poll leaves the pool; the next request gets a new deadline. */
static void
completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe)
{
	struct pub_http_server *srv = cls;
	struct conn *k = conn_of(c);

	(void)toe;
	pub_ocsp_done(req_cls);
	if (k == NULL)
		return;
	pthread_mutex_lock(&srv->mu);
	longpoll_end(srv, k);
	k->received = 0;
	clock_gettime(CLOCK_MONOTONIC, &k->start);
	pthread_mutex_unlock(&srv->mu);
}

/* Every connection is listed from accept to close, for its request deadline and its long poll. */
static void
conn_notify(void *cls, struct MHD_Connection *c, void **socket_context, enum MHD_ConnectionNotificationCode code)
{
	struct pub_http_server *srv = cls;
	struct conn *k = *socket_context;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

		/* Out of memory: the connection is served, with no deadline and no long poll (503). */
		if (ci == NULL || (k = calloc(1, sizeof(*k))) == NULL)
			return;
		k->c = c;
		k->fd = ci->connect_fd;
		clock_gettime(CLOCK_MONOTONIC, &k->start);
		pthread_mutex_lock(&srv->mu);
		k->next = srv->conns;
		if (k->next != NULL)
			k->next->prev = k;
		srv->conns = k;
		srv->nconns++;
		pthread_mutex_unlock(&srv->mu);
		*socket_context = k;
	} else if (code == MHD_CONNECTION_NOTIFY_CLOSED && k != NULL) {
		pthread_mutex_lock(&srv->mu);
		if (k->prev != NULL)
			k->prev->next = k->next;
		else
			srv->conns = k->next;
		if (k->next != NULL)
			k->next->prev = k->prev;
		srv->nconns--;
		longpoll_end(srv, k);
		pthread_mutex_unlock(&srv->mu);
		free(k);
		*socket_context = NULL;
	}
}

/*
 * Cut the connections whose request did not all arrive within request_ms.
 * shutdown() under mu: a listed connection's socket is still open (MHD
 * closes it only after NOTIFY_CLOSED, which takes mu), and MHD sees the
 * end of the stream and closes the connection itself.
 */
static void
cut_late_requests(struct pub_http_server *srv)
{
	struct timespec now;
	time_t wall = time(NULL);
	unsigned long long report = 0, early = 0;
	long long limit;
	int full;

	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&srv->mu);
	/*
	 * Three quarters full: whoever has not sent a whole request within a
	 * second goes, so that a crowd of slow clients from many addresses
	 * makes room for new ones within about a second, not request_ms.  A
	 * real client sends its request in one go.
	 */
	full = srv->nconns >= srv->max_conns - srv->max_conns / 4;
	limit = full && srv->request_ms > FULL_REQUEST_MS ? FULL_REQUEST_MS : srv->request_ms;
	for (struct conn *k = srv->conns; k != NULL; k = k->next) {
		long long ms = (long long)(now.tv_sec - k->start.tv_sec) * 1000 +
		    (now.tv_nsec - k->start.tv_nsec) / 1000000;

		if (!k->received && ms > limit) {
			shutdown(k->fd, SHUT_RDWR);
			k->received = 1;    /* once */
			srv->cut++;
			if (ms <= (long long)srv->request_ms)
				srv->cut_early++;
		}
	}
	/* One line per ten seconds at most, however many there are. */
	if (srv->cut > 0 && wall - srv->cut_logged >= 10) {
		report = srv->cut;
		early = srv->cut_early;
		srv->cut = srv->cut_early = 0;
		srv->cut_logged = wall;
	}
	pthread_mutex_unlock(&srv->mu);
	if (report > 0)
		kms_log(KMS_LOG_WARNING, "HTTP: closed %llu connection(s) that sent no whole request within %u s "
		    "(%llu within 1 s, the server being nearly full)", report, srv->request_ms / 1000, early);
}

static void *
timer_main(void *arg)
{
	struct pub_http_server *srv = arg;

	pthread_mutex_lock(&srv->mu);
	while (!srv->stopping) {
		struct timespec ts;

		deadline_after(&ts, 250);
		pthread_cond_timedwait(&srv->timer_cv, &srv->mu, &ts);
		if (srv->stopping)
			break;
		pthread_mutex_unlock(&srv->mu);
		wake_longpolls(srv, 0);
		cut_late_requests(srv);
		pthread_mutex_lock(&srv->mu);
	}
	pthread_mutex_unlock(&srv->mu);
	return NULL;
}

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	kms_vlog(KMS_LOG_DEBUG, fmt, ap);
}

/* ------------------------------------------------------------ lifecycle */

int
pub_http_listen(const char *hostport, int *fd)
{
	struct addrinfo hints, *res = NULL, *ai;
	char host[256], port[16];
	const char *colon, *h = hostport;
	size_t hl;
	int s = -1, one = 1, rc, err = 0;

	*fd = -1;
	if (hostport == NULL || (colon = strrchr(hostport, ':')) == NULL || colon[1] == '\0' ||
	    strlen(colon + 1) >= sizeof(port))
		return kms_fail(KMS_ERR_CONFIG, "HTTP listen address \"%.64s\" is not HOST:PORT", hostport ? hostport : "");
	snprintf(port, sizeof(port), "%s", colon + 1);
	hl = (size_t)(colon - hostport);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return kms_fail(KMS_ERR_CONFIG, "HTTP listen host too long");
	memcpy(host, h, hl);
	host[hl] = '\0';

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(host[0] == '\0' || strcmp(host, "*") == 0 ? NULL : host, port, &hints, &res)) != 0)
		return kms_fail(KMS_ERR_CONFIG, "HTTP listen %s: %s", hostport, gai_strerror(rc));
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (s < 0) {
			err = errno;
			continue;
		}
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(s, ai->ai_addr, ai->ai_addrlen) == 0 && listen(s, 64) == 0)
			break;
		err = errno;
		close(s);
		s = -1;
	}
	freeaddrinfo(res);
	if (s < 0)
		return kms_fail(KMS_ERR_IO, "HTTP listen %s: %s", hostport, strerror(err));
	*fd = s;
	return 0;
}

int
pub_http_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

int
pub_http_start(int fd, const struct pub_http_opts *opts, struct pub_http_server **out)
{
	struct pub_http_server *srv;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	pthread_condattr_t ca;
	/*
	 * A few threads over epoll, not one per connection: nothing in the
	 * handler waits (answers are in memory or signed at once; long polls
	 * are parked), so idle and slow clients cost a socket each, not a thread.
	 */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
	    MHD_USE_ERROR_LOG;
	unsigned maxc = opts && opts->max_connections ? opts->max_connections : 512;
	unsigned perc = opts && opts->max_per_client ? opts->max_per_client : 32;
	unsigned threads = opts && opts->threads ? opts->threads : 4;
	unsigned idle_ms = opts && opts->idle_ms ? opts->idle_ms : 30000;
	unsigned lp = opts && opts->longpoll_ms ? opts->longpoll_ms : 30000;

	*out = NULL;
	if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return kms_fail(KMS_ERR_INVALID, "HTTP: no listening socket");
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if ((srv = calloc(1, sizeof(*srv))) == NULL)
		return KMS_ERR_NOMEM;
	srv->longpoll_ms = lp;
	srv->request_ms = opts && opts->request_ms ? opts->request_ms : 10000;
	srv->max_conns = maxc;
	srv->max_longpolls = opts && opts->max_longpolls ? opts->max_longpolls : 64;
	srv->ocsp_max = opts && opts->ocsp_max_request ? opts->ocsp_max_request : 65536;
	/* MHD splits the connection limit between its threads: each needs one. */
	if (threads > maxc)
		threads = maxc;
	pthread_mutex_init(&srv->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&srv->timer_cv, &ca);
	pthread_condattr_destroy(&ca);
	srv->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, srv,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
	    MHD_OPTION_THREAD_POOL_SIZE, threads,
	    MHD_OPTION_CONNECTION_LIMIT, maxc,
	    MHD_OPTION_PER_IP_CONNECTION_LIMIT, perc,
	    /* Nothing moving for this long: gone.  Parked long polls are not timed by MHD but by us. */
	    MHD_OPTION_CONNECTION_TIMEOUT, (idle_ms + 999) / 1000,
	    MHD_OPTION_NOTIFY_COMPLETED, completed, srv,
	    MHD_OPTION_UNESCAPE_CALLBACK, pub_http_unescape, NULL,
	    MHD_OPTION_NOTIFY_CONNECTION, conn_notify, srv,
	    MHD_OPTION_END);
	if (srv->mhd == NULL) {
		pthread_cond_destroy(&srv->timer_cv);
		pthread_mutex_destroy(&srv->mu);
		free(srv);
		return kms_fail(KMS_ERR_IO, "HTTP: libmicrohttpd did not start");
	}
	if (pthread_create(&srv->timer, NULL, timer_main, srv) != 0) {
		MHD_stop_daemon(srv->mhd);
		pthread_cond_destroy(&srv->timer_cv);
		pthread_mutex_destroy(&srv->mu);
		free(srv);
		return kms_fail(KMS_ERR_IO, "HTTP: cannot start the timer thread");
	}
	srv->timer_running = 1;
	*out = srv;
	return 0;
}

int
pub_http_publish_signer(struct pub_http_server *srv, const char *fp, X509 *cert)
{
	struct signer_pub *p;
	struct blob *b, *old = NULL;
	unsigned char *der = NULL;
	struct tm tm;
	time_t nb = 0;
	int n;

	if (srv == NULL)
		return 0;
	if (fp == NULL || strlen(fp) != 64 || strspn(fp, "0123456789abcdef") != 64 || cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "HTTP publish: bad signer fingerprint or no certificate");
	if ((n = i2d_X509(cert, &der)) <= 0)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "encode signer certificate");
	if (ASN1_TIME_to_tm(X509_get0_notBefore(cert), &tm))
		nb = timegm(&tm);
	b = blob_new(der, (size_t)n, -1, nb, 0);
	OPENSSL_free(der);
	if (b == NULL)
		return KMS_ERR_NOMEM;
	pthread_mutex_lock(&srv->mu);
	for (p = srv->signers; p != NULL && strcmp(p->fp, fp) != 0; p = p->next)
		;
	if (p == NULL && (p = calloc(1, sizeof(*p))) != NULL) {
		memcpy(p->fp, fp, 65);
		p->next = srv->signers;
		srv->signers = p;
	}
	if (p != NULL) {
		old = p->cert;
		p->cert = b;
		b = NULL;
	}
	pthread_mutex_unlock(&srv->mu);
	blob_unref(old);
	if (b != NULL) {
		blob_unref(b);
		return KMS_ERR_NOMEM;
	}
	return 0;
}

void
pub_http_set_ocsp(struct pub_http_server *srv, struct ca_ocsp *r, struct ca_revholder *rev)
{
	if (srv == NULL)
		return;
	pthread_mutex_lock(&srv->mu);
	srv->ocsp = r;
	srv->rev = rev;
	pthread_mutex_unlock(&srv->mu);
}

void
pub_http_set_certs(struct pub_http_server *srv, struct pub_certs *pc)
{
	pthread_mutex_lock(&srv->mu);
	srv->certs = pc;
	pthread_mutex_unlock(&srv->mu);
}

void
pub_http_stop(struct pub_http_server *srv)
{
	struct site *s, *next;

	if (srv == NULL)
		return;
	pthread_mutex_lock(&srv->mu);
	srv->stopping = 1;
	pthread_cond_broadcast(&srv->timer_cv);
	pthread_mutex_unlock(&srv->mu);
	if (srv->timer_running)
		pthread_join(srv->timer, NULL);
	/*
	 * MHD must not be stopped with a connection suspended: resume every
	 * long poll (none parks once stopping is set) and give them a moment
	 * to answer 503.
	 */
	for (int i = 0; i < 100; i++) {
		unsigned left;

		wake_longpolls(srv, 1);
		pthread_mutex_lock(&srv->mu);
		left = srv->nlongpolls;
		pthread_mutex_unlock(&srv->mu);
		if (left == 0)
			break;
		poll(NULL, 0, 10);
	}
	MHD_stop_daemon(srv->mhd);
	for (struct signer_pub *p = srv->signers, *pn; p != NULL; p = pn) {
		pn = p->next;
		blob_unref(p->cert);
		free(p);
	}
	for (s = srv->sites; s != NULL; s = next) {
		next = s->next;
		blob_unref(s->full);
		blob_unref(s->delta);
		blob_unref(s->cert);
		free(s->name);
		free(s);
	}
	pthread_cond_destroy(&srv->timer_cv);
	pthread_mutex_destroy(&srv->mu);
	free(srv);
}

int
pub_http_publish(struct pub_http_server *srv, const char *name, const struct ca_crl_set *set, X509 *ca_cert)
{
	struct blob *full = NULL, *delta = NULL, *cert = NULL, *old[3] = { NULL, NULL, NULL };
	struct site *site;
	unsigned char *der = NULL;
	int n, rc = 0;

	if (srv == NULL)
		return 0;
	if (name == NULL || !name_ok(name, strlen(name)) || set == NULL || set->full_der == NULL)
		return kms_fail(KMS_ERR_INVALID, "HTTP publish: bad name or no CRL");
	if ((full = blob_new(set->full_der, set->full_len, set->full_number, set->this_update,
	    set->next_update)) == NULL)
		goto nomem;
	if (set->delta_der != NULL && (delta = blob_new(set->delta_der, set->delta_len, set->delta_number,
	    set->this_update, set->next_update)) == NULL)
		goto nomem;
	if (ca_cert != NULL) {
		struct tm tm;
		time_t nb = 0;

		if ((n = i2d_X509(ca_cert, &der)) <= 0) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encode CA certificate");
			goto out;
		}
		if (ASN1_TIME_to_tm(X509_get0_notBefore(ca_cert), &tm))
			nb = timegm(&tm);
		if ((cert = blob_new(der, (size_t)n, -1, nb, 0)) == NULL)
			goto nomem;
	}

	pthread_mutex_lock(&srv->mu);
	if ((site = site_find(srv, name, strlen(name))) == NULL) {
		if ((site = calloc(1, sizeof(*site))) == NULL || (site->name = strdup(name)) == NULL) {
			free(site);
			pthread_mutex_unlock(&srv->mu);
			goto nomem;
		}
		site->next = srv->sites;
		srv->sites = site;
	}
	old[0] = site->full;
	old[1] = site->delta;
	site->full = full;
	site->delta = delta;
	full = delta = NULL;
	if (cert != NULL) {
		old[2] = site->cert;
		site->cert = cert;
		cert = NULL;
	}
	pthread_mutex_unlock(&srv->mu);
	wake_longpolls(srv, 1);     /* each parked long poll looks at the new number */
	goto out;
nomem:
	rc = KMS_ERR_NOMEM;
out:
	for (int i = 0; i < 3; i++)
		blob_unref(old[i]);
	blob_unref(full);
	blob_unref(delta);
	blob_unref(cert);
	OPENSSL_free(der);
	return rc;
}
