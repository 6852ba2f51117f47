/*
 * ocsp.c - OCSP responses (RFC 6960, with the RFC 5019 lightweight
 * profile) for certificates issued by our CA, from the in-memory
 * revocation index.
 *
 * Entry points: ca_ocsp_new(), ca_ocsp_free(), ca_ocsp_set_signer(),
 * ca_ocsp_add_issued(), ca_ocsp_respond(), ca_ocsp_blob_unref(),
 * ca_ocsp_cached().
 *
 * A request costs one DER parse, a hash comparison per CertID against the
 * CA's name and key hashes (precomputed for SHA-1, SHA-256, SHA-384 and
 * SHA-512), one revocation index lookup and one issued-serial lookup per
 * CertID: none of them grows with the number of revoked or issued
 * certificates, and no store query or CRL parse happens per request.
 *
 * Responses for one CertID without a nonce (what RFC 5019 clients send)
 * are signed once and kept ("pre-signed") until half their validity has
 * passed, keyed by the DER of the CertID.  Every hit is checked against the
 * status the index gives now, so a revocation replaces the cached "good"
 * at the very next request: no invalidation message can be lost.  A new
 * signer empties the cache.  Requests with a nonce or several CertIDs are
 * signed for that request alone.
 */
#include "config.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"
#include "ca/crlint.h"

/* Longest CertID we cache (SHA-512 hashes and a 20-octet serial need about 170). */
#define CERTID_MAX 256
/* RFC 8954 2.1: a nonce of 1 to 32 octets; some clients send a few more, refuse only absurd ones. */
#define NONCE_MAX 128

struct signer {
	atomic_long refs;
	X509 *cert;
	EVP_PKEY *key;
	const EVP_MD *md;
};

struct id_hashes {
	int nid;
	unsigned char name[EVP_MAX_MD_SIZE], key[EVP_MAX_MD_SIZE];
	unsigned len;
};

struct cache_ent {
	struct cache_ent *next;
	uint64_t h;
	size_t klen;
	struct ca_ocsp_blob *blob;
	unsigned char key[];
};

struct ca_ocsp {
	X509 *ca_cert;
	struct id_hashes ids[4];
	size_t nids;
	struct ca_ocsp_opts o;
	struct ca_serialset *issued;    /* NULL: not-revoked means good (a replica) */

	pthread_mutex_t mu;             /* signer, gen, cache */
	struct signer *signer;
	unsigned gen;
	struct cache_ent **buckets;
	size_t mask, ncached, evict_at;
};

/* ------------------------------------------------------------------ blobs */

void
ca_ocsp_blob_unref(struct ca_ocsp_blob *b)
{
	if (b == NULL || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
		return;
	free(b->der);
	free(b);
}

static struct ca_ocsp_blob *
blob_ref(struct ca_ocsp_blob *b)
{
	atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	return b;
}

/* Takes der. */
static struct ca_ocsp_blob *
blob_new(unsigned char *der, size_t len, int status)
{
	struct ca_ocsp_blob *b = calloc(1, sizeof(*b));

	if (b == NULL) {
		free(der);
		return NULL;
	}
	atomic_init(&b->refs, 1);
	b->der = der;
	b->len = len;
	b->status = status;
	b->cert_status = -1;
	return b;
}

/* An OCSPResponse with an error status and no body: SEQUENCE { ENUMERATED status }. */
static int
error_blob(int status, struct ca_ocsp_blob **out)
{
	unsigned char *der = malloc(5);

	if (der == NULL)
		return KMS_ERR_NOMEM;
	der[0] = 0x30;
	der[1] = 3;
	der[2] = 0x0a;
	der[3] = 1;
	der[4] = (unsigned char)status;
	if ((*out = blob_new(der, 5, status)) == NULL)
		return KMS_ERR_NOMEM;
	return 0;
}

/* ----------------------------------------------------------------- signer */

static void
signer_unref(struct signer *s)
{
	if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	X509_free(s->cert);
	EVP_PKEY_free(s->key);
	free(s);
}

/* ------------------------------------------------------------------ cache */

static void
cache_clear(struct ca_ocsp *r)
{
	for (size_t i = 0; r->buckets != NULL && i <= r->mask; i++) {
		struct cache_ent *e = r->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			ca_ocsp_blob_unref(e->blob);
			free(e);
		}
		r->buckets[i] = NULL;
	}
	r->ncached = 0;
}

/* Under mu: the cached blob for key (get1), or NULL. */
static struct ca_ocsp_blob *
cache_get(struct ca_ocsp *r, uint64_t h, const unsigned char *key, size_t klen)
{
	for (struct cache_ent *e = r->buckets[h & r->mask]; e != NULL; e = e->next)
		if (e->h == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
			return blob_ref(e->blob);
	return NULL;
}

/* Under mu: drop whole chains, oldest-visited first, until there is room for one more. */
static void
cache_evict(struct ca_ocsp *r)
{
	while (r->ncached >= r->o.cache_max && r->ncached > 0) {
		struct cache_ent **bp = &r->buckets[r->evict_at++ & r->mask], *e, *next;

		for (e = *bp; e != NULL; e = next) {
			next = e->next;
			ca_ocsp_blob_unref(e->blob);
			free(e);
			r->ncached--;
		}
		*bp = NULL;
	}
}

/* Under mu: keep b (takes a new reference) for key, replacing what was there. */
static void
cache_put(struct ca_ocsp *r, uint64_t h, const unsigned char *key, size_t klen, struct ca_ocsp_blob *b)
{
	struct cache_ent *e;

	if (r->o.cache_max == 0)
		return;
	for (e = r->buckets[h & r->mask]; e != NULL; e = e->next) {
		if (e->h == h && e->klen == klen && memcmp(e->key, key, klen) == 0) {
			ca_ocsp_blob_unref(e->blob);
			e->blob = blob_ref(b);
			return;
		}
	}
	cache_evict(r);
	if ((e = malloc(sizeof(*e) + klen)) == NULL)
		return;         /* not cached: the answer itself is still good */
	e->h = h;
	e->klen = klen;
	memcpy(e->key, key, klen);
	e->blob = blob_ref(b);
	e->next = r->buckets[h & r->mask];
	r->buckets[h & r->mask] = e;
	r->ncached++;
}

/* -------------------------------------------------------------- responder */

static int
add_id_hashes(struct ca_ocsp *r, int nid)
{
	struct id_hashes *ih = &r->ids[r->nids];
	const EVP_MD *md = EVP_get_digestbynid(nid);
	unsigned nlen = 0, klen = 0;

	if (md == NULL || !X509_NAME_digest(X509_get_subject_name(r->ca_cert), md, ih->name, &nlen) ||
	    !X509_pubkey_digest(r->ca_cert, md, ih->key, &klen) || nlen != klen)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "OCSP: hashing the CA's name and key");
	ih->nid = nid;
	ih->len = nlen;
	r->nids++;
	return 0;
}

int
ca_ocsp_new(X509 *ca_cert, const struct ca_ocsp_opts *opts, struct ca_ocsp **out)
{
	static const int nids[] = { NID_sha1, NID_sha256, NID_sha384, NID_sha512 };
	struct ca_ocsp *r;
	size_t nb = 64;
	int rc;

	*out = NULL;
	if (ca_cert == NULL || opts == NULL || opts->validity < 60 || opts->max_certids < 1)
		return kms_fail(KMS_ERR_INVALID, "OCSP responder: no CA certificate or bad options");
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return KMS_ERR_NOMEM;
	pthread_mutex_init(&r->mu, NULL);
	X509_up_ref(ca_cert);
	r->ca_cert = ca_cert;
	r->o = *opts;
	while (nb < opts->cache_max / 2 && nb < ((size_t)1 << 24))
		nb *= 2;
	if ((r->buckets = calloc(nb, sizeof(*r->buckets))) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	r->mask = nb - 1;
	for (size_t i = 0; i < sizeof(nids) / sizeof(nids[0]); i++)
		if ((rc = add_id_hashes(r, nids[i])) != 0)
			goto fail;
	if (opts->know_issued && (rc = ca_serialset_new(&r->issued)) != 0)
		goto fail;
	*out = r;
	return 0;
fail:
	ca_ocsp_free(r);
	return rc;
}

void
ca_ocsp_free(struct ca_ocsp *r)
{
	if (r == NULL)
		return;
	if (r->buckets != NULL)
		cache_clear(r);
	free(r->buckets);
	signer_unref(r->signer);
	ca_serialset_free(r->issued);
	X509_free(r->ca_cert);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

int
ca_ocsp_set_signer(struct ca_ocsp *r, X509 *cert, EVP_PKEY *key)
{
	struct signer *s, *old;

	if (cert == NULL || key == NULL || X509_check_private_key(cert, key) != 1)
		return kms_fail_openssl(KMS_ERR_INVALID, "OCSP signer: the key does not match the certificate");
	if (X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(r->ca_cert)) != 0 ||
	    X509_verify(cert, X509_get0_pubkey(r->ca_cert)) != 1)
		return kms_fail_openssl(KMS_ERR_INVALID, "OCSP signer: not issued by this CA");
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return KMS_ERR_NOMEM;
	atomic_init(&s->refs, 1);
	X509_up_ref(cert);
	EVP_PKEY_up_ref(key);
	s->cert = cert;
	s->key = key;
	s->md = ca_sign_digest(key);
	pthread_mutex_lock(&r->mu);
	old = r->signer;
	r->signer = s;
	r->gen++;
	cache_clear(r);
	pthread_mutex_unlock(&r->mu);
	signer_unref(old);
	return 0;
}

int
ca_ocsp_add_issued(struct ca_ocsp *r, const ASN1_INTEGER *serial)
{
	if (r == NULL || r->issued == NULL)
		return 0;
	return ca_serialset_add(r->issued, serial);
}

int
ca_ocsp_load_issued(struct ca_ocsp *r, struct kms_store *st)
{
	if (r == NULL || r->issued == NULL)
		return 0;
	return ca_serialset_add_store(r->issued, st);
}

size_t
ca_ocsp_cached(struct ca_ocsp *r)
{
	size_t n;

	pthread_mutex_lock(&r->mu);
	n = r->ncached;
	pthread_mutex_unlock(&r->mu);
	return n;
}

/* ------------------------------------------------------------ one request */

struct one {
	OCSP_CERTID *cid;           /* borrowed from the request */
	int ours;
	int status;                 /* V_OCSP_CERTSTATUS_* */
	struct ca_rev_info info;
};

/* Is this CertID about a certificate of our CA (issuer name and key hashes)? */
static int
certid_ours(const struct ca_ocsp *r, OCSP_CERTID *cid, ASN1_INTEGER **serial)
{
	ASN1_OCTET_STRING *nh = NULL, *kh = NULL;
	ASN1_OBJECT *alg = NULL;
	int nid;

	*serial = NULL;
	if (!OCSP_id_get0_info(&nh, &alg, &kh, serial, cid) || nh == NULL || kh == NULL || alg == NULL)
		return 0;
	nid = OBJ_obj2nid(alg);
	for (size_t i = 0; i < r->nids; i++) {
		const struct id_hashes *ih = &r->ids[i];

		if (ih->nid != nid)
			continue;
		return ASN1_STRING_length(nh) == (int)ih->len && ASN1_STRING_length(kh) == (int)ih->len &&
		    memcmp(ASN1_STRING_get0_data(nh), ih->name, ih->len) == 0 &&
		    memcmp(ASN1_STRING_get0_data(kh), ih->key, ih->len) == 0;
	}
	return 0;
}

static void
decide(const struct ca_ocsp *r, const struct ca_revidx *idx, struct one *o)
{
	ASN1_INTEGER *serial = NULL;

	memset(&o->info, 0, sizeof(o->info));
	o->ours = certid_ours(r, o->cid, &serial);
	if (!o->ours)
		o->status = V_OCSP_CERTSTATUS_UNKNOWN;
	else if (ca_revidx_lookup(idx, X509_get_subject_name(r->ca_cert), serial, &o->info))
		o->status = V_OCSP_CERTSTATUS_REVOKED;
	else if (r->issued == NULL || ca_serialset_has(r->issued, serial))
		o->status = V_OCSP_CERTSTATUS_GOOD;
	else
		o->status = V_OCSP_CERTSTATUS_UNKNOWN;
}

static int
nonce_ok(OCSP_REQUEST *req, int *has)
{
	int i = OCSP_REQUEST_get_ext_by_NID(req, NID_id_pkix_OCSP_Nonce, -1);
	X509_EXTENSION *ext;

	*has = 0;
	if (i < 0)
		return 1;
	if (OCSP_REQUEST_get_ext_by_NID(req, NID_id_pkix_OCSP_Nonce, i) >= 0)
		return 0;       /* two nonces */
	ext = OCSP_REQUEST_get_ext(req, i);
	if (ext == NULL || ASN1_STRING_length(X509_EXTENSION_get_data(ext)) < 1 ||
	    ASN1_STRING_length(X509_EXTENSION_get_data(ext)) > NONCE_MAX)
		return 0;
	*has = 1;
	return 1;
}

static ASN1_GENERALIZEDTIME *
gentime(time_t t)
{
	return ASN1_GENERALIZEDTIME_set(NULL, t);
}

/* Sign a BasicOCSPResponse for every CertID (and the nonce if any) with signer. */
static int
sign_response(const struct ca_ocsp *r, struct signer *sg, OCSP_REQUEST *req, const struct one *ones, size_t n,
    int with_nonce, time_t now, struct ca_ocsp_blob **out)
{
	OCSP_BASICRESP *bs = NULL;
	OCSP_RESPONSE *resp = NULL;
	ASN1_GENERALIZEDTIME *tu = gentime(now), *nu = gentime(now + r->o.validity), *rt = NULL;
	unsigned char *der = NULL, md[32];
	unsigned mdlen;
	int len, rc;

	*out = NULL;
	if (tu == NULL || nu == NULL || (bs = OCSP_BASICRESP_new()) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "OCSP response");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct one *o = &ones[i];
		int reason = OCSP_REVOKED_STATUS_NOSTATUS;

		ASN1_GENERALIZEDTIME_free(rt);
		rt = NULL;
		if (o->status == V_OCSP_CERTSTATUS_REVOKED) {
			if ((rt = gentime(o->info.revoked_at)) == NULL) {
				rc = kms_fail_openssl(KMS_ERR_NOMEM, "OCSP revocation time");
				goto out;
			}
			/* RFC 5280 5.3.1: "unspecified" is better left out than stated. */
			if (o->info.reason > 0 && o->info.reason <= 10 && o->info.reason != 7)
				reason = o->info.reason;
		}
		if (OCSP_basic_add1_status(bs, o->cid, o->status, reason, rt, tu, nu) == NULL) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "OCSP single response");
			goto out;
		}
	}
	if (with_nonce && OCSP_copy_nonce(bs, req) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "OCSP nonce");
		goto out;
	}
	/* RFC 5019 2.2.2 / 6960 4.2.2.3: responder by key hash; the signer's certificate goes along. */
	if (OCSP_basic_sign(bs, sg->cert, sg->key, sg->md, NULL, OCSP_RESPID_KEY) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "signing the OCSP response");
		goto out;
	}
	if ((resp = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs)) == NULL ||
	    (len = i2d_OCSP_RESPONSE(resp, NULL)) <= 0 || (der = malloc((size_t)len)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "encoding the OCSP response");
		goto out;
	}
	{
		unsigned char *p = der;

		i2d_OCSP_RESPONSE(resp, &p);
	}
	if ((*out = blob_new(der, (size_t)len, OCSP_RESPONSE_STATUS_SUCCESSFUL)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	(*out)->produced = now;
	(*out)->next_update = now + r->o.validity;
	(*out)->http_cacheable = !with_nonce;
	(*out)->cert_status = n == 1 ? ones[0].status : -1;
	if (EVP_Digest((*out)->der, (*out)->len, md, &mdlen, EVP_sha256(), NULL))
		for (unsigned i = 0; i < 16; i++)
			snprintf((*out)->etag + 1 + 2 * i, 3, "%02x", md[i]);
	(*out)->etag[0] = '"';
	(*out)->etag[33] = '"';
	(*out)->etag[34] = '\0';
	rc = 0;
out:
	ASN1_GENERALIZEDTIME_free(tu);
	ASN1_GENERALIZEDTIME_free(nu);
	ASN1_GENERALIZEDTIME_free(rt);
	OCSP_RESPONSE_free(resp);
	OCSP_BASICRESP_free(bs);
	return rc;
}

/* One CertID, no nonce: the pre-signed answer if it still says what the index says. */
static int
respond_cached(struct ca_ocsp *r, struct signer *sg, unsigned gen, OCSP_REQUEST *req, const struct one *o,
    time_t now, struct ca_ocsp_blob **out)
{
	unsigned char key[CERTID_MAX], *p = key;
	struct ca_ocsp_blob *b = NULL;
	uint64_t h = 0;
	int klen = i2d_OCSP_CERTID(o->cid, NULL), rc;

	if (klen > 0 && klen <= CERTID_MAX && i2d_OCSP_CERTID(o->cid, &p) == klen) {
		h = ca_keyed_hash(key, (size_t)klen);
		pthread_mutex_lock(&r->mu);
		b = cache_get(r, h, key, (size_t)klen);
		pthread_mutex_unlock(&r->mu);
		/* Fresh for the first half of its validity, and still the truth. */
		if (b != NULL && b->gen == gen && b->cert_status == o->status && now >= b->produced &&
		    now < b->produced + r->o.validity / 2) {
			*out = b;
			return 0;
		}
		ca_ocsp_blob_unref(b);
	} else {
		klen = 0;
		ERR_clear_error();
	}
	if ((rc = sign_response(r, sg, req, o, 1, 0, now, out)) != 0)
		return rc;
	(*out)->gen = gen;
	if (klen > 0) {
		pthread_mutex_lock(&r->mu);
		if (r->gen == gen)
			cache_put(r, h, key, (size_t)klen, *out);
		pthread_mutex_unlock(&r->mu);
	}
	return 0;
}

int
ca_ocsp_respond(struct ca_ocsp *r, const struct ca_revidx *idx, const unsigned char *in, size_t len, time_t now,
    struct ca_ocsp_blob **out)
{
	OCSP_REQUEST *req = NULL;
	const unsigned char *p = in;
	struct one *ones = NULL, one1;
	struct signer *sg = NULL;
	size_t n, nours = 0;
	unsigned gen;
	int has_nonce, count, rc, st_idx = 0, status = OCSP_RESPONSE_STATUS_MALFORMEDREQUEST;

	*out = NULL;
	if (r == NULL)
		return kms_fail(KMS_ERR_INVALID, "no OCSP responder");
	if (in == NULL || len == 0 || len > r->o.max_request || len > LONG_MAX)
		goto error;
	if ((req = d2i_OCSP_REQUEST(NULL, &p, (long)len)) == NULL || p != in + len)
		goto error;
	count = OCSP_request_onereq_count(req);
	if (count <= 0 || (size_t)count > r->o.max_certids || !nonce_ok(req, &has_nonce))
		goto error;
	n = (size_t)count;
	/*
	 * No current revocation data for our CA: a stale copy, or a replica
	 * that has not synchronised yet.  (The primary's index is its store:
	 * no entry for our CA there just means nothing was revoked.)
	 */
	if (idx == NULL || (st_idx = ca_revidx_issuer_state(idx, X509_get_subject_name(r->ca_cert))) == 1 ||
	    (st_idx == -1 && r->issued == NULL)) {
		status = OCSP_RESPONSE_STATUS_TRYLATER;
		goto error;
	}
	if (n == 1) {
		ones = &one1;
	} else if ((ones = calloc(n, sizeof(*ones))) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		ones[i].cid = OCSP_onereq_get0_id(OCSP_request_onereq_get0(req, (int)i));
		decide(r, idx, &ones[i]);
		nours += ones[i].ours;
	}
	if (nours == 0) {
		status = OCSP_RESPONSE_STATUS_UNAUTHORIZED;
		goto error;
	}
	pthread_mutex_lock(&r->mu);
	if ((sg = r->signer) != NULL)
		atomic_fetch_add_explicit(&sg->refs, 1, memory_order_relaxed);
	gen = r->gen;
	pthread_mutex_unlock(&r->mu);
	if (sg == NULL) {
		status = OCSP_RESPONSE_STATUS_TRYLATER;
		goto error;
	}
	if (n == 1 && !has_nonce)
		rc = respond_cached(r, sg, gen, req, ones, now, out);
	else
		rc = sign_response(r, sg, req, ones, n, has_nonce, now, out);
	if (rc != 0) {
		kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
		status = OCSP_RESPONSE_STATUS_INTERNALERROR;
		goto error;
	}
	goto out;
error:
	ERR_clear_error();
	rc = error_blob(status, out);
out:
	if (ones != &one1)
		free(ones);
	signer_unref(sg);
	OCSP_REQUEST_free(req);
	return rc;
}
