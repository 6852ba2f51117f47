/*
 * crlsync.c - keeping other CRLs current inside kmsd: a replica follows the
 * primary's CRL with long polls, and external CAs' CRLs (files and URLs)
 * are refreshed on a schedule.
 *
 * Entry points: pub_sync_start(), pub_sync_stop(), pub_sync_refresh(),
 * pub_sync_add_to(), pub_sync_source_number().
 *
 * Each source keeps its last good copy: a CRL validated as RFC 5280 6.3
 * says (ca/crlcheck.c), never replaced by an older one
 * (a lower CRL number, or with no number an older thisUpdate).  A failed
 * fetch or a bad CRL is logged once (and its recovery once) and the copy
 * stays in use; past its nextUpdate the index marks its entries stale.
 * Good copies are also written to a cache directory so that a restart
 * while the primary is down still has them.
 *
 * Who may sign: the replica's source, a certificate of [crl] source_ca.
 * An external CRL, a certificate of [crl] external_ca when one is its
 * issuer, else the full trust set of the milter: a trust anchor, or an
 * intermediate with a valid path to one (the configured intermediates,
 * the CA that signed the source's last good copy, and CA certificates
 * that trusted chains in mail showed, pub_sync_offer).  A CRL whose
 * issuer none of them is yet is kept aside, not used; it is validated
 * again when mail first shows a certificate of its issuer (the fetch
 * thread does it, never the mail path) and after a reload
 * (pub_sync_set_trust).  The certificate that validated a kept copy is
 * kept beside it, so that a restart need not wait for mail to show it.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "publish/publish.h"

/* A long poll is given this long beyond the server's own timeout. */
#define LONGPOLL_SLACK 15
#define EXTERNAL_TIMEOUT 60
#define BACKOFF_MAX 30
/* CA certificates from mail kept as would-be CRL signers (the oldest go first). */
#define SEEN_MAX 256

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
	X509 *issuer;               /* the certificate that validated crl (external only) */
	X509_CRL *pend;             /* fetched, its issuer not trusted yet: kept aside, not used */
	char error[256];            /* the last failure, "" after a success */
	time_t last_attempt, last_success;
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
	/* Under mu: the trust set external CRLs are validated against. */
	X509_STORE *anchors;        /* may be NULL */
	STACK_OF(X509) *inter;      /* configured intermediates */
	STACK_OF(X509) *seen;       /* CA certificates of trusted chains in mail */
	int recheck;                /* a pending CRL may have its issuer now */
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
	snprintf(src->error, sizeof(src->error), "%s", why);
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
	src->error[0] = '\0';
	src->last_success = time(NULL);
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

static STACK_OF(X509) *
certs_dup(STACK_OF(X509) *c)
{
	STACK_OF(X509) *d = c ? sk_X509_dup(c) : sk_X509_new_null();

	for (int i = 0; d != NULL && i < sk_X509_num(d); i++)
		X509_up_ref(sk_X509_value(d, i));
	return d;
}

/*
 * RFC 5280 6.3 checks of crl for src: [crl] source_ca / external_ca
 * first, then (external only) the trust set.  0 or KMS_ERR_EXPIRED with
 * *issuer (get1) and *m; KMS_ERR_NOTFOUND when no trusted certificate of
 * its issuer is known (yet); another error when it is unusable.
 */
static int
validate(struct pub_sync *s, struct src *src, X509_CRL *crl, X509 **issuer, struct ca_crl_meta *m)
{
	X509_STORE *anchors = NULL;
	STACK_OF(X509) *cands = NULL;
	X509 *signer = NULL;
	int rc = KMS_ERR_NOTFOUND;

	*issuer = NULL;
	memset(m, 0, sizeof(*m));
	if (src->cas != NULL && sk_X509_num(src->cas) > 0) {
		rc = ca_crl_validate(crl, src->cas, time(NULL), &signer, m);
		if (rc != KMS_ERR_NOTFOUND || src->replica) {
			if (signer != NULL)
				X509_up_ref(signer);
			*issuer = signer;
			return rc;
		}
		ca_crl_meta_clear(m);
	}
	if (src->replica)
		return rc;
	/* A snapshot of the trust set: validation runs without the lock. */
	pthread_mutex_lock(&s->mu);
	if (s->anchors != NULL && X509_STORE_up_ref(s->anchors))
		anchors = s->anchors;
	if ((cands = certs_dup(s->inter)) != NULL) {
		for (int i = 0; i < sk_X509_num(s->seen); i++)
			if (sk_X509_push(cands, sk_X509_value(s->seen, i)))
				X509_up_ref(sk_X509_value(s->seen, i));
		if (src->issuer != NULL && sk_X509_push(cands, src->issuer))
			X509_up_ref(src->issuer);
	}
	pthread_mutex_unlock(&s->mu);
	if (cands == NULL)
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
	else if (anchors == NULL)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no CA certificate of [crl] external_ca issued it, and there are no trust anchors");
	else
		rc = ca_crl_validate_chain(crl, anchors, cands, time(NULL), &signer, m);
	if ((rc == 0 || rc == KMS_ERR_EXPIRED) && signer != NULL) {
		X509_up_ref(signer);
		*issuer = signer;
	}
	sk_X509_pop_free(cands, X509_free);
	X509_STORE_free(anchors);
	return rc;
}

/* Keep crl (taken) aside until a certificate of its issuer is trusted; a newer one replaces it. */
static void
keep_pending(struct pub_sync *s, struct src *src, X509_CRL *crl)
{
	X509_CRL *old = NULL;
	int first = 0;
	char name[256];

	pthread_mutex_lock(&s->mu);
	if (src->pend == NULL || ca_crl_number(crl) > ca_crl_number(src->pend) ||
	    this_update_of(crl) > this_update_of(src->pend)) {
		first = src->pend == NULL;
		old = src->pend;
		src->pend = crl;
		crl = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	if (first) {
		X509_NAME_oneline(X509_CRL_get_issuer(src->pend), name, sizeof(name));
		kms_log(KMS_LOG_WARNING, "CRL %s: no trusted certificate of its issuer %s yet; kept aside, used once "
		    "a message shows a trusted chain to that CA", src->url, name);
	}
	X509_CRL_free(old);
	X509_CRL_free(crl);
}

/*
 * Beside an external CRL's kept copy, the certificate that validated it
 * (<cache_name>.issuer.pem): a restart tries it again as an intermediate
 * (it must still have a valid path to an anchor), so a CRL whose issuer
 * mail showed once counts at once, before the next message shows it.
 */
static char *
issuer_path(struct pub_sync *s, const struct src *src)
{
	char name[96];

	snprintf(name, sizeof(name), "%s.issuer.pem", src->cache_name);
	return kms_path_join(s->cache_dir, name);
}

static int
save_issuer(struct pub_sync *s, const struct src *src, X509 *issuer)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *path = issuer_path(s, src), *data = NULL;
	long n;
	int rc = KMS_ERR_NOMEM;

	if (b != NULL && path != NULL && PEM_write_bio_X509(b, issuer) == 1 && (n = BIO_get_mem_data(b, &data)) > 0)
		rc = kms_write_file_atomic(path, data, (size_t)n, 0644);
	else
		kms_fail(rc, "out of memory");
	BIO_free(b);
	free(path);
	return rc;
}

static void
load_issuer(struct pub_sync *s, struct src *src)
{
	STACK_OF(X509) *v = sk_X509_new_null();
	char *path = issuer_path(s, src);

	if (v != NULL && path != NULL && access(path, R_OK) == 0 && ca_certs_load_file(path, v, NULL) == 0 &&
	    sk_X509_num(v) > 0) {
		src->issuer = sk_X509_value(v, 0);
		X509_up_ref(src->issuer);
	}
	kms_clear_error();
	sk_X509_pop_free(v, X509_free);
	free(path);
}

/*
 * Validate crl for src and make it the last good copy if it is newer.
 * *changed tells whether it was.  Takes crl either way (an external CRL
 * whose issuer is not trusted yet is kept aside: KMS_ERR_NOTFOUND).
 */
static int
take(struct pub_sync *s, struct src *src, X509_CRL *crl, int *changed)
{
	X509 *issuer = NULL, *old_issuer = NULL;
	X509_CRL *old = NULL, *keep = NULL, *old_pend = NULL;
	struct ca_crl_meta m;
	long long n;
	int rc, stale, newer;

	*changed = 0;
	rc = validate(s, src, crl, &issuer, &m);
	stale = rc == KMS_ERR_EXPIRED;
	if (rc == KMS_ERR_NOTFOUND && !src->replica) {
		keep_pending(s, src, crl);
		return rc;
	}
	if (rc != 0 && !stale) {
		X509_free(issuer);
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
		old_issuer = src->issuer;
		src->issuer = issuer;
		X509_up_ref(issuer);
		keep = crl;
		crl = NULL;
	}
	/* What was kept aside is this CRL or older: no longer needed. */
	if (src->pend != NULL && (src->pend == keep || src->pend == crl || ca_crl_number(src->pend) <= n)) {
		old_pend = src->pend;
		src->pend = NULL;
	}
	pthread_mutex_unlock(&s->mu);
	ca_crl_meta_clear(&m);
	X509_CRL_free(old);
	X509_CRL_free(old_pend);
	X509_free(old_issuer);
	X509_CRL_free(crl);
	if (keep == NULL) {
		X509_free(issuer);
		return 0;
	}
	*changed = 1;
	if (stale)
		kms_log(KMS_LOG_WARNING, "CRL %s is past its nextUpdate: used, marked stale", src->url);
	if (s->cache_dir != NULL && ca_crl_save(s->cache_dir, src->cache_name, keep, issuer) != 0)
		kms_log(KMS_LOG_WARNING, "CRL %s: cannot keep a copy: %s", src->url, kms_last_error());
	else if (s->cache_dir != NULL && !src->replica && save_issuer(s, src, issuer) != 0)
		kms_log(KMS_LOG_WARNING, "CRL %s: cannot keep its issuer's certificate: %s", src->url, kms_last_error());
	X509_CRL_free(keep);
	X509_free(issuer);
	return 0;
}

/* Validate the CRLs kept aside again (their issuers may be trusted now); 1 when one was taken. */
static int
recheck_pending(struct pub_sync *s)
{
	int any = 0;

	pthread_mutex_lock(&s->mu);
	s->recheck = 0;
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < s->next && !stopping(s); i++) {
		struct src *src = &s->ext[i];
		X509_CRL *crl = NULL;
		int rc, changed = 0;

		pthread_mutex_lock(&s->mu);
		if (src->pend != NULL && X509_CRL_up_ref(src->pend))
			crl = src->pend;
		pthread_mutex_unlock(&s->mu);
		if (crl == NULL)
			continue;
		rc = take(s, src, crl, &changed);
		if (rc == 0 && changed) {
			kms_log(KMS_LOG_INFO, "CRL %s: its issuer is trusted now; taken (number %lld)", src->url,
			    ca_crl_number(src->crl));
			any = 1;
		} else if (rc != 0 && rc != KMS_ERR_NOTFOUND) {
			/* Its issuer showed up, and the CRL is not valid for it: drop it. */
			pthread_mutex_lock(&s->mu);
			crl = src->pend;
			src->pend = NULL;
			pthread_mutex_unlock(&s->mu);
			X509_CRL_free(crl);
			note_failure(s, src, kms_last_error());
		}
	}
	return any;
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

/* Wait until deadline (CLOCK_MONOTONIC), stop, a refresh or a recheck; 1 when a refresh was asked for. */
static int
ext_wait(struct pub_sync *s, const struct timespec *deadline)
{
	int r;

	pthread_mutex_lock(&s->mu);
	while (!s->stop && !s->refresh && !s->recheck)
		if (pthread_cond_timedwait(&s->cv, &s->mu, deadline) == ETIMEDOUT)
			break;
	r = s->refresh;
	s->refresh = 0;
	pthread_mutex_unlock(&s->mu);
	return r;
}

static void *
ext_main(void *arg)
{
	struct pub_sync *s = arg;
	struct timespec due = { 0, 0 };
	int fetch = 1;

	while (!stopping(s)) {
		struct timespec now;
		int any = 0;

		for (size_t i = 0; fetch && i < s->next && !stopping(s); i++) {
			struct src *src = &s->ext[i];
			X509_CRL *crl = NULL;
			int rc, changed = 0;

			pthread_mutex_lock(&s->mu);
			src->last_attempt = time(NULL);
			pthread_mutex_unlock(&s->mu);
			rc = ca_crl_fetch(src->url, EXTERNAL_TIMEOUT, -1, 0, &s->stop, &crl, NULL, NULL);
			if (rc == 0 && crl == NULL)
				rc = kms_fail(KMS_ERR_PROTO, "no CRL in the answer");
			if (rc == 0)
				rc = take(s, src, crl, &changed);
			if (rc == KMS_ERR_NOTFOUND) {
				note_success(s, src);   /* read well; kept aside, said once */
				continue;
			}
			if (rc != 0) {
				if (!stopping(s))
					note_failure(s, src, kms_last_error());
				continue;
			}
			note_success(s, src);
			if (changed)
				kms_log(KMS_LOG_INFO, "CRL %s: taken (number %lld)", src->url, src->number);
			any |= changed;
		}
		if (fetch) {
			clock_gettime(CLOCK_MONOTONIC, &due);
			due.tv_sec += s->external_refresh;
		}
		/* CRLs kept aside whose issuer mail may have shown since. */
		any |= recheck_pending(s);
		if (any && !stopping(s))
			call_changed(s);
		fetch = ext_wait(s, &due);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > due.tv_sec || (now.tv_sec == due.tv_sec && now.tv_nsec >= due.tv_nsec))
			fetch = 1;
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
		int changed;

		if (!replica)
			load_issuer(s, src);
		if (path != NULL && kms_read_file(path, CA_CRL_FETCH_MAX, &buf, &len) == 0 &&
		    ca_crl_parse(buf, len, &crl) == 0) {
			/* Validated again, as a fetched one would be. */
			int rc = take(s, src, crl, &changed);

			if (rc == 0)
				kms_log(KMS_LOG_INFO, "CRL %s: last good copy loaded (number %lld%s)", url, src->number,
				    src->crl != NULL && src->meta.next_update != 0 && src->meta.next_update < time(NULL) ?
				    ", stale" : "");
			else if (rc != KMS_ERR_NOTFOUND)
				kms_log(KMS_LOG_WARNING, "CRL %s: kept copy refused: %s", url, kms_last_error());
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
	X509_CRL_free(src->pend);
	X509_free(src->issuer);
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
	sk_X509_pop_free(s->inter, X509_free);
	sk_X509_pop_free(s->seen, X509_free);
	X509_STORE_free(s->anchors);
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

		if (empty(o->external_ca) && s->anchors == NULL) {
			rc = kms_fail(KMS_ERR_CONFIG, "[crl] external needs trust anchors ([milter] trust_file, trust_dir, "
			    "use_system_store) or [crl] external_ca");
			goto out;
		}
		if (!empty(o->external_ca) && (rc = ca_crl_load_cas(o->external_ca, &s->ext_cas)) != 0)
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
	if ((s->inter = certs_dup(o->inter)) == NULL || (s->seen = sk_X509_new_null()) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	if (o->anchors != NULL && X509_STORE_up_ref(o->anchors))
		s->anchors = o->anchors;

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

void
pub_sync_set_trust(struct pub_sync *s, X509_STORE *anchors, STACK_OF(X509) *inter)
{
	STACK_OF(X509) *ni, *oi;
	X509_STORE *oa;

	if (s == NULL || (ni = certs_dup(inter)) == NULL)
		return;
	if (anchors != NULL && !X509_STORE_up_ref(anchors))
		anchors = NULL;
	pthread_mutex_lock(&s->mu);
	oa = s->anchors;
	oi = s->inter;
	s->anchors = anchors;
	s->inter = ni;
	s->recheck = 1;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	X509_STORE_free(oa);
	sk_X509_pop_free(oi, X509_free);
}

/* Does a CRL kept aside name subj as its issuer?  Under s->mu. */
static int
pending_for(struct pub_sync *s, const X509_NAME *subj)
{
	for (size_t i = 0; i < s->next; i++)
		if (s->ext[i].pend != NULL && X509_NAME_cmp(X509_CRL_get_issuer(s->ext[i].pend), subj) == 0)
			return 1;
	return 0;
}

void
pub_sync_offer(struct pub_sync *s, STACK_OF(X509) *chain)
{
	int added = 0;

	/* Never waits: while an index rebuild holds the lock, the next message offers again. */
	if (s == NULL || chain == NULL || pthread_mutex_trylock(&s->mu) != 0)
		return;
	/* Only the chain's CAs, only those a CRL kept aside waits for, each once. */
	for (int i = 1; i < sk_X509_num(chain); i++) {
		X509 *c = sk_X509_value(chain, i);
		int known = 0;

		if (!pending_for(s, X509_get_subject_name(c)))
			continue;
		for (int j = 0; j < sk_X509_num(s->seen) && !known; j++)
			known = X509_cmp(sk_X509_value(s->seen, j), c) == 0;
		if (known)
			continue;
		if (sk_X509_num(s->seen) >= SEEN_MAX)
			X509_free(sk_X509_shift(s->seen));
		if (sk_X509_push(s->seen, c)) {
			X509_up_ref(c);
			added = 1;
		}
	}
	if (added) {
		s->recheck = 1;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
}

int
pub_sync_list(struct pub_sync *s, struct pub_dp_status **out, size_t *n)
{
	struct pub_dp_status *v;

	*out = NULL;
	*n = 0;
	if (s == NULL || s->next == 0)
		return 0;
	if ((v = calloc(s->next, sizeof(*v))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->next; i++) {
		const struct src *src = &s->ext[i];
		X509_CRL *named = src->crl ? src->crl : src->pend;
		STACK_OF(X509_REVOKED) *r = src->crl ? X509_CRL_get_REVOKED(src->crl) : NULL;

		snprintf(v[i].url, sizeof(v[i].url), "%s", src->url);
		if (named != NULL)
			X509_NAME_oneline(X509_CRL_get_issuer(named), v[i].issuer, sizeof(v[i].issuer));
		if (src->error[0] != '\0')
			snprintf(v[i].error, sizeof(v[i].error), "%s", src->error);
		else if (src->pend != NULL)
			snprintf(v[i].error, sizeof(v[i].error), "%s", "kept aside: no trusted certificate of its issuer "
			    "yet (used once a message shows a trusted chain to it)");
		v[i].have_copy = src->crl != NULL;
		v[i].entries = r ? sk_X509_REVOKED_num(r) : 0;
		v[i].number = src->crl ? src->number : -1;
		v[i].this_update = src->crl ? src->meta.this_update : 0;
		v[i].next_update = src->crl ? src->meta.next_update : 0;
		v[i].last_attempt = src->last_attempt;
		v[i].last_success = src->last_success;
		v[i].next_fetch = src->last_attempt ? src->last_attempt + s->external_refresh : 0;
	}
	pthread_mutex_unlock(&s->mu);
	*out = v;
	*n = s->next;
	return 0;
}
