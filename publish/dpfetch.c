/*
 * dpfetch.c - fetching the CRLs named in the distribution points of
 * certificates seen in mail, in the background, never in the mail path.
 *
 * Entry points: pub_dp_start(), pub_dp_stop(), pub_dp_offer() (the
 * milter's side: queue a trusted chain whose revocation status is
 * unknown; never waits for I/O), pub_dp_add_to() (the index rebuild's
 * side), pub_dp_list() (kmsctl crl list-external).
 *
 * Each distribution point URL (http, and ldap or ldaps through
 * dpldap.c) is a source.  Sources are
 * bounded in number ([crl] fetch_max_sources); a fixed set of worker
 * threads ([crl] fetch_concurrency) fetches whatever source is due, each
 * download bounded in size and time.  A fetched CRL is validated (RFC 5280
 * 6.3, ca_crl_validate_chain) against the trust anchors, the configured
 * intermediates and the CA certificates of the chain that named it; a good
 * one becomes the source's last good copy, is written to the cache
 * directory with its validators (ETag, Last-Modified) and the chain, and
 * the index is rebuilt (changed()).  A failed fetch or a bad CRL keeps the
 * last good copy (the index marks it stale once past its nextUpdate),
 * records the error for `crl list-external` and logs it (once, and again
 * when it recovers), and the source is retried with a growing back-off.
 * Good copies are fetched again before their nextUpdate (at 80 % of their
 * life, and at least every refresh interval) with a conditional GET.
 *
 * Delta CRLs (RFC 5280 5.2.4, 5.2.6): the Freshest CRL extension of a
 * certificate offered, or of a base CRL taken, names where its deltas are;
 * each such URL is a source of its own (bounded, cached and listed like
 * the others) that must serve a delta CRL.  When the index is built each
 * complete CRL is combined with the newest delta that fits it (same
 * issuer and key, same scope, BaseCRLNumber at most the base's CRL number,
 * the delta's own number above it); a delta that fits no base is not used
 * and says why in `crl list-external` and the log.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "publish/publish.h"

/* The distribution points followed. */
#define DP_SCHEMES (CA_URL_HTTP | CA_URL_LDAP)
#define BACKOFF_MIN 30
#define BACKOFF_MAX 3600
#define CHAIN_MAX 8

struct dp_src {
	char *url;
	char *cache;                    /* file name stem in the cache directory */
	STACK_OF(X509) *cands;          /* CA certificates of the chain that named it */
	X509_CRL *crl;                  /* last good copy, NULL if none */
	struct ca_crl_meta meta;
	char etag[256], last_modified[64];
	char error[256];                /* last error, "" when the last attempt succeeded */
	time_t first_asked, last_attempt, last_success, next_fetch;
	int backoff;
	int busy;                       /* a worker is fetching it */
	int failing;
	int want_delta;                 /* named by a Freshest CRL extension: must serve a delta CRL */
	int pair_error;                 /* error says why the delta fits no base (set at index builds) */
};

struct pub_dp {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;                       /* also read by fetches in flight (atomic) */
	struct dp_src **src;            /* each allocated once, freed at stop: workers hold pointers */
	size_t n, cap, max;
	X509_STORE *anchors;
	STACK_OF(X509) *inter;
	char *cache_dir;
	size_t max_size;
	int timeout, refresh;
	void (*changed)(void *arg);
	void *arg;
	pthread_mutex_t cb_mu;
	pthread_t *th;
	int nth;
};

static int
stopping(struct pub_dp *d)
{
	return __atomic_load_n(&d->stop, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------------------------ cache */

static char *
cache_path(struct pub_dp *d, const struct dp_src *s, const char *ext)
{
	char name[96];

	snprintf(name, sizeof(name), "%s%s", s->cache, ext);
	return kms_path_join(d->cache_dir, name);
}

/* Write the copy, its chain and validators (each file atomically). */
static void
cache_save(struct pub_dp *d, const struct dp_src *s, X509_CRL *crl, STACK_OF(X509) *cands, const char *etag,
    const char *lm)
{
	unsigned char *der = NULL;
	char *p1 = NULL, *p2 = NULL, *p3 = NULL, *meta = NULL;
	BIO *b = NULL;
	char *pem = NULL;
	long pemlen;
	int n;

	if (d->cache_dir == NULL)
		return;
	if (kms_mkdir_p(d->cache_dir, 0755) != 0 || (n = i2d_X509_CRL(crl, &der)) <= 0 ||
	    (p1 = cache_path(d, s, ".crl")) == NULL || (p2 = cache_path(d, s, ".chain.pem")) == NULL ||
	    (p3 = cache_path(d, s, ".meta")) == NULL || (b = BIO_new(BIO_s_mem())) == NULL)
		goto out;
	for (int i = 0; i < sk_X509_num(cands); i++)
		PEM_write_bio_X509(b, sk_X509_value(cands, i));
	pemlen = BIO_get_mem_data(b, &pem);
	if (asprintf(&meta, "%s\n%s\n%s\n", s->url, etag, lm) < 0) {
		meta = NULL;
		goto out;
	}
	if (kms_write_file_atomic(p2, pem, (size_t)pemlen, 0644) != 0 ||
	    kms_write_file_atomic(p3, meta, strlen(meta), 0644) != 0 ||
	    kms_write_file_atomic(p1, der, (size_t)n, 0644) != 0)
		kms_log(KMS_LOG_WARNING, "CRL %s: cannot keep a copy: %s", s->url, kms_last_error());
out:
	ERR_clear_error();
	BIO_free(b);
	OPENSSL_free(der);
	free(p1);
	free(p2);
	free(p3);
	free(meta);
}

/* ---------------------------------------------------------------- sources */

static void
src_free(struct dp_src *s)
{
	free(s->url);
	free(s->cache);
	sk_X509_pop_free(s->cands, X509_free);
	X509_CRL_free(s->crl);
	ca_crl_meta_clear(&s->meta);
}

/* The source for url, or NULL.  Under d->mu. */
static struct dp_src *
src_find(struct pub_dp *d, const char *url)
{
	for (size_t i = 0; i < d->n; i++)
		if (strcmp(d->src[i]->url, url) == 0)
			return d->src[i];
	return NULL;
}

/* A new source (under d->mu); takes cands.  NULL when full or out of memory. */
static struct dp_src *
src_add(struct pub_dp *d, const char *url, STACK_OF(X509) *cands, time_t now)
{
	struct dp_src *s;
	char *h;

	if (d->n >= d->max)
		return NULL;
	if (d->n == d->cap) {
		size_t nc = d->cap ? d->cap * 2 : 16;
		struct dp_src **nv = realloc(d->src, nc * sizeof(*nv));

		if (nv == NULL)
			return NULL;
		d->src = nv;
		d->cap = nc;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	if ((s->url = strdup(url)) == NULL ||
	    (h = kms_sha256_hex((const unsigned char *)url, strlen(url))) == NULL) {
		free(s->url);
		free(s);
		return NULL;
	}
	if (asprintf(&s->cache, "dp-%.24s", h) < 0)
		s->cache = NULL;
	free(h);
	if (s->cache == NULL) {
		free(s->url);
		free(s);
		return NULL;
	}
	d->src[d->n] = s;
	s->cands = cands;
	s->first_asked = now;
	s->next_fetch = now;
	s->backoff = BACKOFF_MIN;
	d->n++;
	return s;
}

/* ------------------------------------------------------------------ fetch */

static void
call_changed(struct pub_dp *d)
{
	if (d->changed == NULL)
		return;
	pthread_mutex_lock(&d->cb_mu);
	d->changed(d->arg);
	pthread_mutex_unlock(&d->cb_mu);
}

/* When to fetch a good copy again: at 80 % of its life, at most refresh from now. */
static time_t
next_refresh(const struct pub_dp *d, const struct ca_crl_meta *m, time_t now)
{
	time_t t = now + d->refresh;

	if (m->next_update > m->this_update) {
		time_t at = m->this_update + (m->next_update - m->this_update) * 4 / 5;

		if (at < t)
			t = at;
	}
	return t > now + 5 ? t : now + 5;
}

static STACK_OF(X509) *
cands_with(struct pub_dp *d, STACK_OF(X509) *cands)
{
	STACK_OF(X509) *all = sk_X509_dup(d->inter);

	for (int i = 0; all != NULL && i < sk_X509_num(cands); i++)
		sk_X509_push(all, sk_X509_value(cands, i));
	return all;
}

/* Follow the delta CRLs at urls (a Freshest CRL extension), signed by one of cands.  Under d->mu. */
static void
add_delta_sources(struct pub_dp *d, char **urls, STACK_OF(X509) *cands, time_t now)
{
	for (size_t i = 0; urls != NULL && urls[i] != NULL; i++) {
		STACK_OF(X509) *c;
		struct dp_src *s;

		if (strlen(urls[i]) > 1024 || src_find(d, urls[i]) != NULL)
			continue;
		if ((c = X509_chain_up_ref(cands)) == NULL)
			return;
		if ((s = src_add(d, urls[i], c, now)) == NULL) {
			sk_X509_pop_free(c, X509_free);
			if (d->n >= d->max)
				kms_log(KMS_LOG_DEBUG, "CRL %s: not followed, [crl] fetch_max_sources reached", urls[i]);
			continue;
		}
		s->want_delta = 1;
		pthread_cond_signal(&d->cv);
		kms_log(KMS_LOG_INFO, "CRL %s: new delta CRL distribution point, fetching", urls[i]);
	}
}

/* Check a fetched CRL as RFC 5280 6.3 says; only a current one of the kind the source promises is taken. */
static int
validate_fetched(struct pub_dp *d, struct dp_src *s, X509_CRL *crl, X509_STORE *anchors, time_t now,
    struct ca_crl_meta *m)
{
	STACK_OF(X509) *all = cands_with(d, s->cands);
	X509 *signer = NULL;
	int rc;

	if (all == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	rc = ca_crl_validate_chain(crl, anchors, all, now, &signer, m);
	if (rc == 0 && m->delta && !s->want_delta)
		rc = kms_fail(KMS_ERR_CORRUPT, "a delta CRL, not a complete one");
	else if (rc == 0 && !m->delta && s->want_delta)
		rc = kms_fail(KMS_ERR_CORRUPT, "a complete CRL where its Freshest CRL pointer promised a delta CRL");
	else if (rc == KMS_ERR_EXPIRED)
		rc = kms_fail(KMS_ERR_EXPIRED, "the CRL served is past its nextUpdate");
	sk_X509_free(all);
	return rc;
}

/* One warning when a source starts failing, one line when it recovers, debug in between. */
static void
log_outcome(const char *url, int rc, const char *why, int was_failing, int have_copy)
{
	if (rc != 0 && !was_failing)
		kms_log(KMS_LOG_WARNING, "CRL %s: %s; %s", url, why,
		    have_copy ? "keeping the last good copy" : "no good copy yet: revocation status unknown");
	else if (rc != 0)
		kms_log(KMS_LOG_DEBUG, "CRL %s: %s", url, why);
	else if (was_failing)
		kms_log(KMS_LOG_INFO, "CRL %s: fetched again", url);
}

/*
 * One fetch of s (marked busy by the caller, d->mu not held).  Kept in one
 * piece (88 lines) on purpose: the order is what matters here, fetch and
 * check without the lock, record the result under it, then log, save and
 * tell the index outside it again.
 */
static void
fetch_one(struct pub_dp *d, struct dp_src *s)
{
	struct ca_fetch_cond cond;
	X509_CRL *crl = NULL, *old = NULL;
	struct ca_crl_meta m;
	X509_STORE *anchors;
	char etag[256], lm[64], why[256] = "";
	time_t now = time(NULL);
	int rc, changed = 0, was_failing, have_copy;

	memset(&m, 0, sizeof(m));
	memset(&cond, 0, sizeof(cond));
	pthread_mutex_lock(&d->mu);
	anchors = d->anchors;
	X509_STORE_up_ref(anchors);
	snprintf(etag, sizeof(etag), "%s", s->crl ? s->etag : "");
	snprintf(lm, sizeof(lm), "%s", s->crl ? s->last_modified : "");
	pthread_mutex_unlock(&d->mu);
	cond.etag = etag;
	cond.last_modified = lm;
	if (strncasecmp(s->url, "ldap://", 7) == 0 || strncasecmp(s->url, "ldaps://", 8) == 0)
		rc = pub_dp_ldap_fetch(s->url, d->timeout, d->max_size, &d->stop, &crl);
	else
		rc = ca_crl_fetch_cond(s->url, d->timeout, -1, d->max_size, &d->stop, &cond, &crl, NULL, NULL);
	if (stopping(d)) {
		X509_CRL_free(crl);
		return;
	}
	if (rc == 0 && crl != NULL)
		rc = validate_fetched(d, s, crl, anchors, now, &m);
	if (rc != 0)
		snprintf(why, sizeof(why), "%s", kms_last_error());
	X509_STORE_free(anchors);

	pthread_mutex_lock(&d->mu);
	s->busy = 0;
	s->last_attempt = now;
	s->pair_error = 0;              /* the fetch's own outcome now; the next index build says the rest */
	was_failing = s->failing;
	have_copy = s->crl != NULL;
	if (rc != 0) {
		s->failing = 1;
		snprintf(s->error, sizeof(s->error), "%s", why);
		s->next_fetch = now + s->backoff;
		s->backoff = s->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : s->backoff * 2;
	} else {
		s->failing = 0;
		s->error[0] = '\0';
		s->backoff = BACKOFF_MIN;
		s->last_success = now;
		if (crl != NULL) {
			long long on = s->crl ? s->meta.number : -1;

			/* Never back to an older list (a replayed CRL). */
			if (s->crl == NULL || m.number < 0 || on < 0 || m.number >= on) {
				old = s->crl;
				s->crl = crl;
				ca_crl_meta_clear(&s->meta);
				s->meta = m;
				memset(&m, 0, sizeof(m));
				crl = NULL;
				snprintf(s->etag, sizeof(s->etag), "%s", cond.etag_out);
				snprintf(s->last_modified, sizeof(s->last_modified), "%s", cond.last_modified_out);
				changed = 1;
			}
		}
		if (s->crl != NULL)
			s->next_fetch = next_refresh(d, &s->meta, now);
		else
			s->next_fetch = now + d->refresh;
	}
	pthread_mutex_unlock(&d->mu);

	log_outcome(s->url, rc, why, was_failing, have_copy);
	if (changed) {
		pthread_mutex_lock(&d->mu);
		kms_log(KMS_LOG_INFO, "CRL %s: taken (number %lld, %d entries)", s->url, s->meta.number,
		    sk_X509_REVOKED_num(X509_CRL_get_REVOKED(s->crl)) > 0 ?
		    sk_X509_REVOKED_num(X509_CRL_get_REVOKED(s->crl)) : 0);
		X509_CRL_up_ref(s->crl);
		crl = s->crl;
		pthread_mutex_unlock(&d->mu);
		cache_save(d, s, crl, s->cands, cond.etag_out, cond.last_modified_out);
		if (!s->want_delta) {
			char **durls = NULL;

			if (ca_crl_delta_urls(crl, DP_SCHEMES, &durls) == 0 && durls != NULL) {
				pthread_mutex_lock(&d->mu);
				add_delta_sources(d, durls, s->cands, now);
				pthread_mutex_unlock(&d->mu);
			}
			kms_strv_free(durls);
		}
		X509_CRL_free(crl);
		crl = NULL;
		call_changed(d);
	}
	X509_CRL_free(old);
	X509_CRL_free(crl);
	ca_crl_meta_clear(&m);
	ERR_clear_error();
	kms_clear_error();
}

static void *
worker(void *arg)
{
	struct pub_dp *d = arg;

	pthread_mutex_lock(&d->mu);
	while (!d->stop) {
		struct dp_src *due = NULL;
		time_t now = time(NULL), soonest = now + 60;
		struct timespec ts;

		for (size_t i = 0; i < d->n; i++) {
			struct dp_src *s = d->src[i];

			if (s->busy)
				continue;
			if (s->next_fetch <= now) {
				due = s;
				break;
			}
			if (s->next_fetch < soonest)
				soonest = s->next_fetch;
		}
		if (due != NULL) {
			due->busy = 1;
			pthread_mutex_unlock(&d->mu);
			fetch_one(d, due);
			pthread_mutex_lock(&d->mu);
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += soonest - now > 0 ? soonest - now : 1;
		pthread_cond_timedwait(&d->cv, &d->mu, &ts);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

/* ------------------------------------------------------------- life cycle */

/* The copies an earlier run kept: validated again, against the chain kept with them. */
static void
cache_load(struct pub_dp *d)
{
	DIR *dir;
	struct dirent *e;
	time_t now = time(NULL);

	if (d->cache_dir == NULL || (dir = opendir(d->cache_dir)) == NULL)
		return;
	while ((e = readdir(dir)) != NULL && d->n < d->max) {
		size_t len = strlen(e->d_name);
		char stem[96], *p = NULL, *meta = NULL, *url, *etag, *lm;
		unsigned char *buf = NULL;
		size_t blen;
		X509_CRL *crl = NULL;
		STACK_OF(X509) *cands = NULL, *all = NULL;
		struct ca_crl_meta m;
		struct dp_src *s;
		X509 *signer;
		int rc;

		memset(&m, 0, sizeof(m));
		if (len < 8 || len >= sizeof(stem) || strncmp(e->d_name, "dp-", 3) != 0 ||
		    strcmp(e->d_name + len - 5, ".meta") != 0)
			continue;
		memcpy(stem, e->d_name, len - 5);
		stem[len - 5] = '\0';
		if ((p = kms_path_join(d->cache_dir, e->d_name)) == NULL ||
		    kms_read_file(p, 8192, (unsigned char **)&meta, &blen) != 0)
			goto next;
		{
			char *nm = realloc(meta, blen + 1);

			if (nm == NULL)
				goto next;
			meta = nm;
		}
		meta[blen] = '\0';
		url = meta;
		if ((etag = strchr(url, '\n')) == NULL)
			goto next;
		*etag++ = '\0';
		if ((lm = strchr(etag, '\n')) == NULL)
			goto next;
		*lm++ = '\0';
		lm[strcspn(lm, "\n")] = '\0';
		free(p);
		if (asprintf(&p, "%s/%s.crl", d->cache_dir, stem) < 0 || kms_read_file(p, d->max_size, &buf, &blen) != 0 ||
		    ca_crl_parse(buf, blen, &crl) != 0)
			goto next;
		free(p);
		if (asprintf(&p, "%s/%s.chain.pem", d->cache_dir, stem) < 0 || (cands = sk_X509_new_null()) == NULL ||
		    ca_certs_load_file(p, cands, NULL) != 0 || (all = cands_with(d, cands)) == NULL)
			goto next;
		rc = ca_crl_validate_chain(crl, d->anchors, all, now, &signer, &m);
		if (rc != 0 && rc != KMS_ERR_EXPIRED) {
			kms_log(KMS_LOG_WARNING, "CRL %s: kept copy refused: %s", url, kms_last_error());
			goto next;
		}
		pthread_mutex_lock(&d->mu);
		if (src_find(d, url) == NULL && (s = src_add(d, url, cands, 0)) != NULL) {
			cands = NULL;
			s->crl = crl;
			crl = NULL;
			s->meta = m;
			s->want_delta = m.delta;        /* it was taken as what its source promised */
			memset(&m, 0, sizeof(m));
			snprintf(s->etag, sizeof(s->etag), "%s", etag);
			snprintf(s->last_modified, sizeof(s->last_modified), "%s", lm);
			s->next_fetch = rc == 0 ? next_refresh(d, &s->meta, now) : now;
			kms_log(KMS_LOG_INFO, "CRL %s: last good copy loaded%s", url, rc ? " (expired)" : "");
		}
		pthread_mutex_unlock(&d->mu);
next:
		ca_crl_meta_clear(&m);
		X509_CRL_free(crl);
		sk_X509_pop_free(cands, X509_free);
		sk_X509_free(all);
		free(buf);
		free(meta);
		free(p);
		kms_clear_error();
		ERR_clear_error();
	}
	closedir(dir);
}

static void
dp_free(struct pub_dp *d)
{
	for (size_t i = 0; i < d->n; i++) {
		src_free(d->src[i]);
		free(d->src[i]);
	}
	free(d->src);
	free(d->th);
	X509_STORE_free(d->anchors);
	sk_X509_pop_free(d->inter, X509_free);
	free(d->cache_dir);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	pthread_mutex_destroy(&d->cb_mu);
	free(d);
}

int
pub_dp_start(const struct pub_dp_opts *o, struct pub_dp **out)
{
	struct pub_dp *d;
	pthread_condattr_t ca;

	*out = NULL;
	if ((d = calloc(1, sizeof(*d))) == NULL)
		return KMS_ERR_NOMEM;
	pthread_mutex_init(&d->mu, NULL);
	pthread_mutex_init(&d->cb_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cv, &ca);
	pthread_condattr_destroy(&ca);
	d->max = o->max_sources > 0 ? (size_t)o->max_sources : 10000;
	d->max_size = o->max_size > 0 ? o->max_size : 20u * 1024 * 1024;
	d->timeout = o->timeout > 0 ? o->timeout : 30;
	d->refresh = o->refresh > 0 ? o->refresh : 3600;
	d->changed = o->changed;
	d->arg = o->arg;
	if (o->anchors == NULL || !X509_STORE_up_ref(o->anchors))
		goto nomem;
	d->anchors = o->anchors;
	if ((d->inter = o->inter ? X509_chain_up_ref(o->inter) : sk_X509_new_null()) == NULL)
		goto nomem;
	if (o->cache_dir != NULL && o->cache_dir[0] != '\0' && (d->cache_dir = strdup(o->cache_dir)) == NULL)
		goto nomem;
	cache_load(d);
	d->nth = o->concurrency > 0 ? o->concurrency : 4;
	if ((d->th = calloc((size_t)d->nth, sizeof(*d->th))) == NULL)
		goto nomem;
	for (int i = 0; i < d->nth; i++) {
		if (pthread_create(&d->th[i], NULL, worker, d) != 0) {
			d->nth = i;
			pub_dp_stop(d);
			return kms_fail(KMS_ERR_IO, "cannot start the CRL fetch threads");
		}
	}
	*out = d;
	return 0;
nomem:
	d->nth = 0;
	dp_free(d);
	return KMS_ERR_NOMEM;
}

void
pub_dp_stop(struct pub_dp *d)
{
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->mu);
	__atomic_store_n(&d->stop, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
	for (int i = 0; i < d->nth; i++)
		pthread_join(d->th[i], NULL);
	dp_free(d);
}

void
pub_dp_set_anchors(struct pub_dp *d, X509_STORE *anchors)
{
	X509_STORE *old;

	if (d == NULL || anchors == NULL || !X509_STORE_up_ref(anchors))
		return;
	pthread_mutex_lock(&d->mu);
	old = d->anchors;
	d->anchors = anchors;
	pthread_mutex_unlock(&d->mu);
	X509_STORE_free(old);
}

time_t
pub_dp_offer(struct pub_dp *d, STACK_OF(X509) *chain, int depth)
{
	char **urls = NULL;
	time_t since = 0, now = time(NULL);
	X509 *c;

	if (d == NULL || chain == NULL || depth < 0 || depth >= sk_X509_num(chain))
		return 0;
	c = sk_X509_value(chain, depth);
	{
		char **durls = NULL;

		/* The certificate's Freshest CRL: its deltas are followed from the first message. */
		if (ca_cert_delta_urls(c, DP_SCHEMES, &durls) == 0 && durls != NULL) {
			STACK_OF(X509) *cands = sk_X509_new_null();

			for (int j = depth + 1; cands != NULL && j < sk_X509_num(chain) && j <= depth + CHAIN_MAX; j++)
				sk_X509_push(cands, sk_X509_value(chain, j));
			if (cands != NULL) {
				pthread_mutex_lock(&d->mu);
				add_delta_sources(d, durls, cands, now);
				pthread_mutex_unlock(&d->mu);
			}
			sk_X509_free(cands);
		}
		kms_strv_free(durls);
	}
	if (ca_cert_crl_urls(c, DP_SCHEMES, &urls) != 0 || urls == NULL) {
		kms_clear_error();
		return 0;
	}
	for (size_t i = 0; urls[i] != NULL; i++) {
		struct dp_src *s;

		if (strlen(urls[i]) > 1024)
			continue;
		pthread_mutex_lock(&d->mu);
		if ((s = src_find(d, urls[i])) == NULL) {
			STACK_OF(X509) *cands = sk_X509_new_null();

			/* The CAs above the certificate: the CRL's signer is among them. */
			for (int j = depth + 1; cands != NULL && j < sk_X509_num(chain) && j <= depth + CHAIN_MAX; j++)
				if (sk_X509_push(cands, sk_X509_value(chain, j)))
					X509_up_ref(sk_X509_value(chain, j));
			if (cands != NULL && (s = src_add(d, urls[i], cands, now)) != NULL) {
				pthread_cond_signal(&d->cv);
				kms_log(KMS_LOG_INFO, "CRL %s: new distribution point, fetching", urls[i]);
			} else {
				sk_X509_pop_free(cands, X509_free);
				if (cands != NULL && d->n >= d->max)
					kms_log(KMS_LOG_DEBUG, "CRL %s: not followed, [crl] fetch_max_sources reached", urls[i]);
			}
		}
		/* Only a source with no good copy yet is a first fetch still running. */
		if (s != NULL && s->crl == NULL && (since == 0 || s->first_asked < since))
			since = s->first_asked;
		pthread_mutex_unlock(&d->mu);
	}
	kms_strv_free(urls);
	return since;
}

/* The good copies, taken under the lock (referenced, metadata copied), so that adding them does not hold it. */
struct dp_take {
	X509_CRL *crl;
	struct ca_crl_meta meta;
	struct dp_src *src;     /* lives until pub_dp_stop */
	int used;               /* a delta combined with a base */
	char why[256];          /* a delta: why it fits no base of its issuer */
};

static int
meta_copy(struct ca_crl_meta *dst, const struct ca_crl_meta *src)
{
	size_t n = 0;

	*dst = *src;
	dst->dp_names = NULL;
	if (src->dp_names == NULL)
		return 0;
	while (src->dp_names[n] != NULL)
		n++;
	if ((dst->dp_names = calloc(n + 1, sizeof(*dst->dp_names))) == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++)
		if ((dst->dp_names[i] = strdup(src->dp_names[i])) == NULL)
			return KMS_ERR_NOMEM;
	return 0;
}

static int
same_strv(char *const *a, char *const *b)
{
	size_t i;

	if (a == NULL || b == NULL)
		return a == b;
	for (i = 0; a[i] != NULL && b[i] != NULL; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return a[i] == NULL && b[i] == NULL;
}

/* Do two CRLs say they were signed with the same key (when both carry a key identifier)? */
static int
same_key(X509_CRL *a, X509_CRL *b)
{
	AUTHORITY_KEYID *ka = X509_CRL_get_ext_d2i(a, NID_authority_key_identifier, NULL, NULL);
	AUTHORITY_KEYID *kb = X509_CRL_get_ext_d2i(b, NID_authority_key_identifier, NULL, NULL);
	int ok = 1;

	if (ka != NULL && kb != NULL && ka->keyid != NULL && kb->keyid != NULL)
		ok = ASN1_OCTET_STRING_cmp(ka->keyid, kb->keyid) == 0;
	AUTHORITY_KEYID_free(ka);
	AUTHORITY_KEYID_free(kb);
	ERR_clear_error();
	return ok;
}

/*
 * Can delta dt go on top of base bt (RFC 5280 5.2.4, 6.3.3)?  1 yes; 0 no,
 * with why filled when they are of the same issuer (else why is left).
 */
static int
delta_fits(const struct dp_take *bt, const struct dp_take *dt, char *why, size_t whylen)
{
	const struct ca_crl_meta *bm = &bt->meta, *dm = &dt->meta;

	if (X509_NAME_cmp(X509_CRL_get_issuer(bt->crl), X509_CRL_get_issuer(dt->crl)) != 0)
		return 0;
	if (!same_key(bt->crl, dt->crl))
		snprintf(why, whylen, "delta CRL signed with another key than its base CRL %s", bt->src->url);
	else if (dm->covers != bm->covers || dm->indirect != bm->indirect || dm->some_reasons != bm->some_reasons ||
	    !same_strv(dm->dp_names, bm->dp_names))
		snprintf(why, whylen, "delta CRL of another scope than the base CRL %s", bt->src->url);
	else if (bm->number < 0)
		snprintf(why, whylen, "the base CRL %s has no CRL number", bt->src->url);
	else if (dm->base > bm->number)
		snprintf(why, whylen, "delta CRL needs base CRL %lld or later; the base CRL %s is %lld", dm->base,
		    bt->src->url, bm->number);
	else if (dm->number <= bm->number)
		snprintf(why, whylen, "delta CRL %lld is not newer than the base CRL %s (%lld): the base replaces it",
		    dm->number, bt->src->url, bm->number);
	else
		return 1;
	return 0;
}

/* The newest delta of t[0..n) that fits base t[i], or -1; deltas of its issuer that do not fit say why. */
static long
best_delta(struct dp_take *t, size_t n, size_t i)
{
	long best = -1;

	for (size_t j = 0; j < n; j++) {
		char why[256] = "";

		if (!t[j].meta.delta)
			continue;
		if (delta_fits(&t[i], &t[j], why, sizeof(why))) {
			if (best < 0 || t[j].meta.number > t[best].meta.number)
				best = (long)j;
		} else if (why[0] != '\0' && t[j].why[0] == '\0') {
			snprintf(t[j].why, sizeof(t[j].why), "%s", why);
		}
	}
	return best;
}

/* A delta that fits no base: its error (set once, logged when it changes); one used again clears it. */
static void
delta_outcome(struct pub_dp *d, struct dp_take *t)
{
	struct dp_src *s = t->src;
	char msg[sizeof(s->error)];
	int log = 0;

	snprintf(msg, sizeof(msg), "not used: %s",
	    t->why[0] ? t->why : "no complete CRL of its issuer and scope to put it on");
	pthread_mutex_lock(&d->mu);
	if (s->crl == t->crl) {
		if (t->used && s->pair_error) {
			s->error[0] = '\0';
			s->pair_error = 0;
		} else if (!t->used && (s->error[0] == '\0' || s->pair_error) && strcmp(s->error, msg) != 0) {
			snprintf(s->error, sizeof(s->error), "%s", msg);
			s->pair_error = 1;
			log = 1;
		}
	}
	pthread_mutex_unlock(&d->mu);
	if (log)
		kms_log(KMS_LOG_WARNING, "CRL %s: %s", s->url, msg);
}

int
pub_dp_add_to(struct pub_dp *d, struct ca_revidx_builder *b, time_t now)
{
	struct dp_take *t = NULL;
	size_t n = 0;
	int rc = 0;

	if (d == NULL)
		return 0;
	pthread_mutex_lock(&d->mu);
	if (d->n > 0 && (t = calloc(d->n, sizeof(*t))) == NULL)
		rc = KMS_ERR_NOMEM;
	for (size_t i = 0; rc == 0 && i < d->n; i++) {
		struct dp_src *s = d->src[i];

		if (s->crl == NULL)
			continue;
		X509_CRL_up_ref(s->crl);
		t[n].crl = s->crl;
		t[n].src = s;
		rc = meta_copy(&t[n].meta, &s->meta);
		n++;
	}
	pthread_mutex_unlock(&d->mu);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		long j;

		if (t[i].meta.delta)
			continue;
		j = best_delta(t, n, i);
		rc = ca_revidx_add_valid(b, t[i].crl, &t[i].meta, j >= 0 ? t[j].crl : NULL, j >= 0 ? &t[j].meta : NULL,
		    now);
		if (rc != 0 && rc != KMS_ERR_NOMEM && j >= 0) {
			snprintf(t[j].why, sizeof(t[j].why), "%s", kms_last_error());
			j = -1;
			rc = ca_revidx_add_valid(b, t[i].crl, &t[i].meta, NULL, NULL, now);
		}
		if (rc != 0 && rc != KMS_ERR_NOMEM) {
			kms_log(KMS_LOG_WARNING, "CRL %s: not used: %s", t[i].src->url, kms_last_error());
			rc = 0;
		} else if (rc == 0 && j >= 0) {
			t[j].used = 1;
		}
	}
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (t[i].meta.delta)
			delta_outcome(d, &t[i]);
	for (size_t i = 0; i < n; i++) {
		X509_CRL_free(t[i].crl);
		ca_crl_meta_clear(&t[i].meta);
	}
	free(t);
	return rc == KMS_ERR_NOMEM ? kms_fail(rc, "out of memory") : 0;
}

int
pub_dp_list(struct pub_dp *d, struct pub_dp_status **out, size_t *n)
{
	struct pub_dp_status *v;

	*out = NULL;
	*n = 0;
	if (d == NULL)
		return 0;
	pthread_mutex_lock(&d->mu);
	if (d->n == 0 || (v = calloc(d->n, sizeof(*v))) == NULL) {
		pthread_mutex_unlock(&d->mu);
		return d->n == 0 ? 0 : KMS_ERR_NOMEM;
	}
	for (size_t i = 0; i < d->n; i++) {
		struct dp_src *s = d->src[i];
		struct pub_dp_status *t = &v[i];

		snprintf(t->url, sizeof(t->url), "%s", s->url);
		snprintf(t->error, sizeof(t->error), "%s", s->error);
		if (s->crl != NULL) {
			X509_NAME_oneline(X509_CRL_get_issuer(s->crl), t->issuer, sizeof(t->issuer));
			t->entries = sk_X509_REVOKED_num(X509_CRL_get_REVOKED(s->crl));
			if (t->entries < 0)
				t->entries = 0;
			t->number = s->meta.number;
			t->delta_base = s->meta.delta ? s->meta.base : -1;
			t->this_update = s->meta.this_update;
			t->next_update = s->meta.next_update;
		} else {
			t->number = -1;
			t->delta_base = -1;
			if (sk_X509_num(s->cands) > 0)
				X509_NAME_oneline(X509_get_subject_name(sk_X509_value(s->cands, 0)), t->issuer,
				    sizeof(t->issuer));
		}
		t->have_copy = s->crl != NULL;
		t->want_delta = s->want_delta;
		t->first_asked = s->first_asked;
		t->last_attempt = s->last_attempt;
		t->last_success = s->last_success;
		t->next_fetch = s->next_fetch;
	}
	pthread_mutex_unlock(&d->mu);
	*out = v;
	*n = d->n;
	return 0;
}
