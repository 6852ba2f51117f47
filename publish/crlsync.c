/*
 * crlsync.c - keeping other CRLs current inside kmsd: a replica follows the
 * primary's CRL with long polls, and external CAs' CRLs (files and URLs)
 * are refreshed on a schedule.
 *
 * Entry points: pub_sync_start(), pub_sync_stop(), pub_sync_refresh(),
 * pub_sync_add_to(), pub_sync_source_number().
 *
 * Each source keeps its last good copy: a CRL whose signature checked out
 * against the configured CA certificates, never replaced by an older one
 * (a lower CRL number, or with no number an older thisUpdate).  A failed
 * fetch or a bad CRL is logged once (and its recovery once) and the copy
 * stays in use; past its nextUpdate the index marks its entries stale.
 * Good copies are also written to a cache directory so that a restart
 * while the primary is down still has them.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "publish/publish.h"

/* A long poll is given this long beyond the server's own timeout. */
#define LONGPOLL_SLACK 15
#define EXTERNAL_TIMEOUT 60
#define BACKOFF_MAX 30

struct src {
	char *url;
	int replica;                /* followed by long polls */
	STACK_OF(X509) *cas;        /* borrowed from the crlsync */
	char *cache_name;
	/* Under crlsync.mu: */
	X509_CRL *crl;              /* last good copy */
	struct ca_crl_meta meta;    /* what its validation found (scope, times) */
	long long number;
	int failing;
};

struct pub_sync {
	pthread_mutex_t mu;
	pthread_cond_t cv;          /* stop and refresh */
	pthread_mutex_t cb_mu;      /* changed() one at a time */
	int stop;                   /* read by fetches in flight too (atomic) */
	int refresh;
	struct src *source;
	struct src *ext;
	size_t next;
	STACK_OF(X509) *source_cas, *ext_cas;
	char *cache_dir;
	int external_refresh, longpoll;
	void (*changed)(void *arg);
	void *arg;
	pthread_t source_th, ext_th;
	int source_started, ext_started;
};

static int
stopping(struct pub_sync *s)
{
	return __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE);
}

/* Sleep up to secs, waking early on stop (or, with wake_on_refresh, a refresh request). */
static void
nap(struct pub_sync *s, int secs, int wake_on_refresh)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += secs;
	pthread_mutex_lock(&s->mu);
	while (!s->stop && !(wake_on_refresh && s->refresh))
		if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT)
			break;
	if (wake_on_refresh)
		s->refresh = 0;
	pthread_mutex_unlock(&s->mu);
}

static void
note_failure(struct pub_sync *s, struct src *src, const char *why)
{
	int first;
	long long n;

	pthread_mutex_lock(&s->mu);
	first = !src->failing;
	src->failing = 1;
	n = src->crl ? src->number : -1;
	pthread_mutex_unlock(&s->mu);
	if (first && n >= 0)
		kms_log(KMS_LOG_WARNING, "CRL %s: %s; keeping the last good copy (CRL number %lld)", src->url, why, n);
	else if (first)
		kms_log(KMS_LOG_WARNING, "CRL %s: %s; no good copy yet", src->url, why);
	else
		kms_log(KMS_LOG_DEBUG, "CRL %s: %s", src->url, why);
}

static void
note_success(struct pub_sync *s, struct src *src)
{
	int was;

	pthread_mutex_lock(&s->mu);
	was = src->failing;
	src->failing = 0;
	pthread_mutex_unlock(&s->mu);
	if (was)
		kms_log(KMS_LOG_INFO, "CRL %s: fetched again", src->url);
}

static time_t
this_update_of(X509_CRL *crl)
{
	struct tm tm;

	if (crl == NULL || !ASN1_TIME_to_tm(X509_CRL_get0_lastUpdate(crl), &tm))
		return 0;
	return timegm(&tm);
}

/*
 * Check crl against src's CAs and make it the last good copy if it is
 * newer.  *changed tells whether it was.  Takes crl either way.
 */
static int
take(struct pub_sync *s, struct src *src, X509_CRL *crl, int *changed)
{
	X509 *issuer;
	X509_CRL *old = NULL, *keep = NULL;
	struct ca_crl_meta m;
	long long n;
	int rc, stale, newer;

	*changed = 0;
	/* RFC 5280 6.3 checks, the configured CA certificates being the would-be signers. */
	rc = ca_crl_validate(crl, src->cas, time(NULL), &issuer, &m);
	stale = rc == KMS_ERR_EXPIRED;
	if (rc != 0 && !stale) {
		X509_CRL_free(crl);
		return rc;
	}
	n = ca_crl_number(crl);
	pthread_mutex_lock(&s->mu);
	if (src->crl == NULL)
		newer = 1;
	else if (n >= 0 && src->number >= 0)
		newer = n > src->number;
	else
		newer = this_update_of(crl) > this_update_of(src->crl);
	if (newer && X509_CRL_up_ref(crl)) {
		/* One reference for the copy, one (keep) for the save below. */
		old = src->crl;
		src->crl = crl;
		ca_crl_meta_clear(&src->meta);
		src->meta = m;
		memset(&m, 0, sizeof(m));
		src->number = n;
		keep = crl;
		crl = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	ca_crl_meta_clear(&m);
	X509_CRL_free(old);
	X509_CRL_free(crl);
	if (keep == NULL)
		return 0;
	*changed = 1;
	if (stale)
		kms_log(KMS_LOG_WARNING, "CRL %s is past its nextUpdate: used, marked stale", src->url);
	if (s->cache_dir != NULL && ca_crl_save(s->cache_dir, src->cache_name, keep, issuer) != 0)
		kms_log(KMS_LOG_WARNING, "CRL %s: cannot keep a copy: %s", src->url, kms_last_error());
	X509_CRL_free(keep);
	return 0;
}

static void
call_changed(struct pub_sync *s)
{
	if (s->changed == NULL)
		return;
	pthread_mutex_lock(&s->cb_mu);
	s->changed(s->arg);
	pthread_mutex_unlock(&s->cb_mu);
}

/* The replica: GET source?after=<our number>, answered when the primary signs a newer CRL. */
static void *
source_main(void *arg)
{
	struct pub_sync *s = arg;
	struct src *src = s->source;
	int backoff = 1;

	while (!stopping(s)) {
		X509_CRL *crl = NULL;
		long long after;
		int rc, changed;

		pthread_mutex_lock(&s->mu);
		after = src->crl != NULL && src->number >= 0 ? src->number : -1;
		pthread_mutex_unlock(&s->mu);
		rc = ca_crl_fetch(src->url, s->longpoll + LONGPOLL_SLACK, after, 0, &s->stop, &crl, NULL, NULL);
		if (stopping(s)) {
			X509_CRL_free(crl);
			break;
		}
		if (rc == 0 && crl == NULL) {
			/* 304: nothing newer within the server's timeout. */
			note_success(s, src);
			backoff = 1;
			continue;
		}
		if (rc == 0)
			rc = take(s, src, crl, &changed);
		if (rc != 0) {
			note_failure(s, src, kms_last_error());
			nap(s, backoff, 0);
			backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
			continue;
		}
		note_success(s, src);
		backoff = 1;
		if (changed) {
			kms_log(KMS_LOG_INFO, "CRL %s: number %lld taken", src->url, pub_sync_source_number(s));
			call_changed(s);
		} else {
			/* The primary answered with nothing newer than ours: do not spin. */
			nap(s, 1, 0);
		}
	}
	return NULL;
}

static void *
ext_main(void *arg)
{
	struct pub_sync *s = arg;

	while (!stopping(s)) {
		int any = 0;

		for (size_t i = 0; i < s->next && !stopping(s); i++) {
			struct src *src = &s->ext[i];
			X509_CRL *crl = NULL;
			int rc, changed = 0;

			rc = ca_crl_fetch(src->url, EXTERNAL_TIMEOUT, -1, 0, &s->stop, &crl, NULL, NULL);
			if (rc == 0 && crl == NULL)
				rc = kms_fail(KMS_ERR_PROTO, "no CRL in the answer");
			if (rc == 0)
				rc = take(s, src, crl, &changed);
			if (rc != 0) {
				if (!stopping(s))
					note_failure(s, src, kms_last_error());
				continue;
			}
			note_success(s, src);
			any |= changed;
		}
		if (any && !stopping(s))
			call_changed(s);
		nap(s, s->external_refresh, 1);
	}
	return NULL;
}

static int
src_init(struct pub_sync *s, struct src *src, const char *url, int replica, STACK_OF(X509) *cas)
{
	char *h, name[64];

	memset(src, 0, sizeof(*src));
	src->replica = replica;
	src->cas = cas;
	src->number = -1;
	if ((src->url = strdup(url)) == NULL || (h = kms_sha256_hex((const unsigned char *)url, strlen(url))) == NULL)
		return KMS_ERR_NOMEM;
	snprintf(name, sizeof(name), "%s-%.16s.crl", replica ? "source" : "external", h);
	free(h);
	if ((src->cache_name = strdup(name)) == NULL)
		return KMS_ERR_NOMEM;
	if (s->cache_dir == NULL)
		return 0;
	/* The copy kept by an earlier run, if it still checks out. */
	{
		char *path = kms_path_join(s->cache_dir, name);
		unsigned char *buf = NULL;
		size_t len;
		X509_CRL *crl = NULL;
		X509 *issuer;
		int stale, changed;

		if (path != NULL && kms_read_file(path, CA_CRL_FETCH_MAX, &buf, &len) == 0 &&
		    ca_crl_parse(buf, len, &crl) == 0) {
			if (ca_crl_find_issuer(crl, cas, time(NULL), &issuer, &stale) == 0) {
				take(s, src, crl, &changed);
				kms_log(KMS_LOG_INFO, "CRL %s: last good copy loaded (number %lld%s)", url, src->number,
				    stale ? ", stale" : "");
			} else {
				kms_log(KMS_LOG_WARNING, "CRL %s: kept copy refused: %s", url, kms_last_error());
				X509_CRL_free(crl);
			}
		}
		kms_clear_error();
		free(buf);
		free(path);
	}
	return 0;
}

static void
src_free(struct src *src)
{
	free(src->url);
	free(src->cache_name);
	X509_CRL_free(src->crl);
	ca_crl_meta_clear(&src->meta);
}

static void
sync_free(struct pub_sync *s)
{
	if (s->source != NULL) {
		src_free(s->source);
		free(s->source);
	}
	for (size_t i = 0; i < s->next; i++)
		src_free(&s->ext[i]);
	free(s->ext);
	sk_X509_pop_free(s->source_cas, X509_free);
	sk_X509_pop_free(s->ext_cas, X509_free);
	free(s->cache_dir);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->cb_mu);
	free(s);
}

static int
empty(const char *s)
{
	return s == NULL || s[0] == '\0';
}

/* The replica's source ([crl] source) and the external CRLs ([crl] external), each with its CAs. */
static int
sources_init(struct pub_sync *s, const struct pub_sync_opts *o)
{
	char **list = NULL;
	int rc = 0;

	if (!empty(o->source)) {
		if (empty(o->source_ca)) {
			rc = kms_fail(KMS_ERR_CONFIG, "[crl] source needs [crl] source_ca");
			goto out;
		}
		if ((rc = ca_crl_load_cas(o->source_ca, &s->source_cas)) != 0)
			goto out;
		if ((s->source = calloc(1, sizeof(*s->source))) == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		if ((rc = src_init(s, s->source, o->source, 1, s->source_cas)) != 0)
			goto out;
	}
	if (!empty(o->external)) {
		size_t n = 0;

		if (empty(o->external_ca)) {
			rc = kms_fail(KMS_ERR_CONFIG, "[crl] external needs [crl] external_ca");
			goto out;
		}
		if ((rc = ca_crl_load_cas(o->external_ca, &s->ext_cas)) != 0)
			goto out;
		if ((list = kms_split_list(o->external)) == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		while (list[n] != NULL)
			n++;
		if ((s->ext = calloc(n + 1, sizeof(*s->ext))) == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			if (list[i][0] == '\0')
				continue;
			s->next++;
			if ((rc = src_init(s, &s->ext[s->next - 1], list[i], 0, s->ext_cas)) != 0)
				goto out;
		}
	}
out:
	kms_strv_free(list);
	return rc;
}

int
pub_sync_start(const struct pub_sync_opts *o, struct pub_sync **out)
{
	struct pub_sync *s;
	pthread_condattr_t ca;
	int rc;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return KMS_ERR_NOMEM;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->cb_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	s->external_refresh = o->external_refresh > 0 ? o->external_refresh : 3600;
	s->longpoll = o->longpoll_timeout > 0 ? o->longpoll_timeout : 30;
	s->changed = o->changed;
	s->arg = o->arg;
	if (!empty(o->cache_dir) && (s->cache_dir = strdup(o->cache_dir)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}

	if ((rc = sources_init(s, o)) != 0)
		goto fail;

	/* Visible to the caller before any thread can call changed(). */
	*out = s;
	if (s->source != NULL) {
		if (pthread_create(&s->source_th, NULL, source_main, s) != 0) {
			rc = kms_fail(KMS_ERR_IO, "cannot start the CRL replica thread");
			goto fail_threads;
		}
		s->source_started = 1;
	}
	if (s->next > 0) {
		if (pthread_create(&s->ext_th, NULL, ext_main, s) != 0) {
			rc = kms_fail(KMS_ERR_IO, "cannot start the external CRL thread");
			goto fail_threads;
		}
		s->ext_started = 1;
	}
	return 0;
fail_threads:
	*out = NULL;
	pub_sync_stop(s);
	return rc;
fail:
	sync_free(s);
	return rc;
}

void
pub_sync_stop(struct pub_sync *s)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	__atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	if (s->source_started)
		pthread_join(s->source_th, NULL);
	if (s->ext_started)
		pthread_join(s->ext_th, NULL);
	sync_free(s);
}

void
pub_sync_refresh(struct pub_sync *s)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	s->refresh = 1;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* A complete CRL with its scope; a delta (no base kept here) as a plain list of revocations. */
static int
add_src(struct ca_revidx_builder *b, const struct src *src, time_t now)
{
	if (src->meta.delta || src->meta.covers == 0)
		return ca_revidx_add_checked_crl(b, src->crl, now);
	return ca_revidx_add_valid(b, src->crl, &src->meta, NULL, NULL, now);
}

int
pub_sync_add_to(struct pub_sync *s, struct ca_revidx_builder *b, time_t now)
{
	int rc = 0;

	if (s == NULL)
		return 0;
	pthread_mutex_lock(&s->mu);
	if (s->source != NULL && s->source->crl != NULL)
		rc = add_src(b, s->source, now);
	for (size_t i = 0; rc == 0 && i < s->next; i++)
		if (s->ext[i].crl != NULL)
			rc = add_src(b, &s->ext[i], now);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

long long
pub_sync_source_number(struct pub_sync *s)
{
	long long n = -1;

	if (s == NULL || s->source == NULL)
		return -1;
	pthread_mutex_lock(&s->mu);
	if (s->source->crl != NULL)
		n = s->source->number;
	pthread_mutex_unlock(&s->mu);
	return n;
}
