/*
 * certs.c - GET /certs/<address> on the HTTP distribution point: the PEM
 * of a user's current encryption certificate, for mail clients and
 * scripts that cannot search LDAP.  Off unless kmsd hands the server a
 * lookup (pub_http_set_certs(), [http] certs_endpoint).
 *
 * Entry points: pub_certs_new(), pub_certs_free(), pub_certs_serve()
 * (called by http.c's handler for /certs/ URLs).  Owns the per-client rate
 * table.
 *
 * Anyone who reaches the port can ask for any address, so every request
 * spends a token of its client's bucket first (valid or not, known or
 * not): [http] certs_rate requests a minute, bursts of as many.  Clients
 * are counted by IPv4 address or IPv6 /64 (one host usually holds a whole
 * /64).  The table is bounded ([http] certs_clients); when it is full the
 * client seen least recently gives up its slot.  The address is checked
 * with kms_addr_valid(), the one validator; an unknown address, one with no
 * valid encryption certificate and a revoked user all get the same 404.
 */
#include "config.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "publish/publish.h"
#include "publish/pubint.h"

#define CT_PEM "application/pem-certificate-chain"

struct client {
	unsigned char key[16];      /* IPv4 (mapped) address or IPv6 /64 prefix */
	double tokens;
	double last;                /* monotonic seconds of the last refill */
	int used;
};

struct pub_certs {
	pub_certs_lookup_fn lookup;
	void *arg;
	double per_sec, burst;
	pthread_mutex_t mu;
	struct client *table;
	size_t size;
};

int
pub_certs_new(pub_certs_lookup_fn lookup, void *arg, unsigned per_minute, size_t clients, struct pub_certs **out)
{
	struct pub_certs *pc;

	*out = NULL;
	if (lookup == NULL || per_minute == 0 || clients == 0)
		return kms_fail(KMS_ERR_INVALID, "/certs: a lookup, a rate and a table size are needed");
	if ((pc = calloc(1, sizeof(*pc))) == NULL || (pc->table = calloc(clients, sizeof(*pc->table))) == NULL) {
		free(pc);
		return KMS_ERR_NOMEM;
	}
	pc->lookup = lookup;
	pc->arg = arg;
	pc->per_sec = per_minute / 60.0;
	pc->burst = per_minute;
	pc->size = clients;
	pthread_mutex_init(&pc->mu, NULL);
	*out = pc;
	return 0;
}

void
pub_certs_free(struct pub_certs *pc)
{
	if (pc == NULL)
		return;
	pthread_mutex_destroy(&pc->mu);
	free(pc->table);
	free(pc);
}

static double
mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The rate-table key of a client address: 0, or -1 when it is of no family we count. */
int
pub_certs_client_key(const struct sockaddr *sa, unsigned char key[16])
{
	memset(key, 0, 16);
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

		key[10] = key[11] = 0xff;
		memcpy(key + 12, &s4->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

		if (memcmp(s6->sin6_addr.s6_addr, mapped, 12) == 0)
			memcpy(key, s6->sin6_addr.s6_addr, 16);         /* an IPv4 client: its whole address */
		else
			memcpy(key, s6->sin6_addr.s6_addr, 8);          /* the /64 */
		return 0;
	}
	return -1;
}

int
pub_certs_allow(struct pub_certs *pc, const unsigned char key[16], double now)
{
	struct client *c = NULL, *oldest = NULL;
	int ok;

	pthread_mutex_lock(&pc->mu);
	for (size_t i = 0; i < pc->size; i++) {
		struct client *e = &pc->table[i];

		if (e->used && memcmp(e->key, key, 16) == 0) {
			c = e;
			break;
		}
		if (!e->used) {
			if (oldest == NULL || oldest->used)
				oldest = e;
		} else if (oldest == NULL || (oldest->used && e->last < oldest->last)) {
			oldest = e;
		}
	}
	if (c == NULL) {
		c = oldest;
		memcpy(c->key, key, 16);
		c->used = 1;
		c->tokens = pc->burst;
		c->last = now;
	}
	c->tokens += (now - c->last) * pc->per_sec;
	if (c->tokens > pc->burst)
		c->tokens = pc->burst;
	c->last = now;
	ok = c->tokens >= 1.0;
	if (ok)
		c->tokens -= 1.0;
	pthread_mutex_unlock(&pc->mu);
	return ok;
}

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, const char *ctype, char *body, size_t len, int owned)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (r == NULL) {
		if (owned)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	/* A revocation must take effect at once: nothing is kept by caches. */
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_TOO_MANY_REQUESTS)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "60");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

size_t
pub_http_unescape(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls;
	(void)c;
	for (char *p = s; (p = strstr(p, "%00")) != NULL; p += 3)
		*p = 0x7f;
	return MHD_http_unescape(s);
}

#define TEXT(c, status, s) reply((c), (status), "text/plain; charset=utf-8", (char *)(uintptr_t)(s), strlen(s), 0)

enum MHD_Result
pub_certs_serve(struct pub_certs *pc, struct MHD_Connection *c, const char *url, const char *method)
{
	const union MHD_ConnectionInfo *ci;
	const char *addr = url + strlen("/certs/");
	unsigned char key[16];
	char *pem = NULL;
	size_t len = 0;
	int rc;

	if (pc == NULL)
		return TEXT(c, MHD_HTTP_NOT_FOUND, "not found\n");
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return TEXT(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (ci == NULL || pub_certs_client_key(ci->client_addr, key) != 0)
		return TEXT(c, MHD_HTTP_FORBIDDEN, "no client address\n");
	if (!pub_certs_allow(pc, key, mono_now()))
		return TEXT(c, MHD_HTTP_TOO_MANY_REQUESTS, "too many requests; try again in a minute\n");
	/* MHD has already undone %-escapes; the validator refuses anything else odd. */
	if (!kms_addr_valid(addr))
		return TEXT(c, MHD_HTTP_BAD_REQUEST, "not a mail address\n");
	rc = pc->lookup(pc->arg, addr, &pem, &len);
	if (rc == KMS_ERR_NOTFOUND) {
		kms_clear_error();
		return TEXT(c, MHD_HTTP_NOT_FOUND, "no certificate for this address\n");
	}
	if (rc != 0) {
		kms_log(KMS_LOG_ERR, "/certs: %s", kms_last_error());
		return TEXT(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "lookup failed\n");
	}
	return reply(c, MHD_HTTP_OK, CT_PEM, pem, len, 1);
}
