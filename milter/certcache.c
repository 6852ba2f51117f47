/*
 * certcache.c - certificates decoded once per DER encoding, and CMS blobs
 * parsed without decoding the certificates they carry again.
 *
 * Entry points: mlt_cms_decode, mlt_cert_hash, mlt_certcache_stats,
 * mlt_certcache_clear (cache.h).
 *
 * Why: with OpenSSL 3 every decoded certificate sets up a decoder context
 * for its public key (OSSL_DECODER_CTX_new_for_pkey), and d2i of a signed
 * message decodes every certificate it carries; that was the largest cost
 * of checking a message, far above the signature check itself.  Mail from
 * one signer carries the same certificates again and again.
 *
 * How: mlt_cms_decode walks the outer BER of ContentInfo -> [0] ->
 * SignedData, takes the certificates [0] set out, and hands OpenSSL the
 * rest re-encoded with definite lengths (everything inside SignedData is
 * copied byte for byte, so the signed attributes and the content are what
 * was sent).  Each certificate of the set is looked up by the SHA-256 of
 * its encoding; only an unknown one is decoded (d2i_X509) and kept.  A
 * blob whose outer structure does not fit (another content type, a tag
 * of more than one byte, nesting deeper than the walk goes, a certificate
 * OpenSSL cannot decode) goes to d2i_CMS_ContentInfo whole, as before, so
 * the outcome for odd input is OpenSSL's.
 *
 * The table is content addressed, so it never goes stale: nothing but the
 * encoding decides what a decoded certificate is.  Trust is decided per
 * message elsewhere (chaincache.c, verdict.c).
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "milter/cache.h"

/* Deepest BER nesting walked to find the end of an indefinite-length element. */
#define BER_MAX_DEPTH 32

static void
x509_free_val(void *v)
{
	X509_free(v);
}

static struct mlt_lru cert_table = MLT_LRU_INIT(MLT_CERTCACHE_MAX, x509_free_val);

static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256;
/*
 * The SHA-256 of a cached certificate's encoding rides on the X509 object
 * (ex_data, set before the object is shared, read-only after), so that
 * the chain cache's key needs neither the certificate re-encoded nor
 * hashed again for every message.
 */
static int hash_idx = -1;

static void
hash_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	free(ptr);
}

static void
md_init(void)
{
	/* Fetched once: the implicit fetch of EVP_sha256() takes a lock each time. */
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	hash_idx = X509_get_ex_new_index(0, NULL, NULL, NULL, hash_free);
	ERR_clear_error();
}

int
mlt_hash_bytes(const unsigned char *p, size_t n, unsigned char out[MLT_HASH_LEN])
{
	unsigned int olen = 0;

	pthread_once(&md_once, md_init);
	if (EVP_Digest(p, n, out, &olen, sha256 ? sha256 : EVP_sha256(), NULL) != 1 || olen != MLT_HASH_LEN) {
		ERR_clear_error();
		return -1;
	}
	return 0;
}

int
mlt_cert_hash(X509 *x, unsigned char out[MLT_HASH_LEN])
{
	const unsigned char *kept;
	unsigned char *der = NULL;
	int n, rc;

	pthread_once(&md_once, md_init);
	if (hash_idx >= 0 && (kept = X509_get_ex_data(x, hash_idx)) != NULL) {
		memcpy(out, kept, MLT_HASH_LEN);
		return 0;
	}
	if ((n = i2d_X509(x, &der)) <= 0) {
		ERR_clear_error();
		return -1;
	}
	rc = mlt_hash_bytes(der, (size_t)n, out);
	OPENSSL_free(der);
	return rc;
}

void
mlt_certcache_stats(struct mlt_cache_stats *st)
{
	mlt_lru_stats(&cert_table, st);
}

void
mlt_certcache_clear(void)
{
	mlt_lru_clear(&cert_table);
}

/* The certificate encoded in p (n bytes, one whole TLV): get1, NULL if it does not decode. */
static X509 *
cert_get(const unsigned char *p, size_t n)
{
	unsigned char key[MLT_HASH_LEN];
	const unsigned char *q = p;
	X509 *x;

	if (mlt_hash_bytes(p, n, key) != 0)
		return NULL;
	pthread_mutex_lock(&cert_table.lock);
	if ((x = mlt_lru_find(&cert_table, key)) != NULL)
		X509_up_ref(x);
	pthread_mutex_unlock(&cert_table.lock);
	if (x != NULL)
		return x;
	if (n > (size_t)0x7fffffff || (x = d2i_X509(NULL, &q, (long)n)) == NULL || q != p + n) {
		X509_free(x);
		ERR_clear_error();
		return NULL;
	}
	/* Not shared yet: the only moment its ex_data is written. */
	if (hash_idx >= 0) {
		unsigned char *h = malloc(MLT_HASH_LEN);

		if (h != NULL) {
			memcpy(h, key, MLT_HASH_LEN);
			if (X509_set_ex_data(x, hash_idx, h) != 1) {
				free(h);
				ERR_clear_error();
			}
		}
	}
	pthread_mutex_lock(&cert_table.lock);
	X509_up_ref(x);
	if (mlt_lru_insert(&cert_table, key, x) != 0)
		X509_free(x);   /* not kept: the caller's reference stays */
	pthread_mutex_unlock(&cert_table.lock);
	return x;
}

/* ------------------------------------------------------------------ BER */

struct tlv {
	unsigned char tag;      /* the one tag byte */
	size_t hl;              /* header length */
	size_t cl;              /* content length (without the end-of-contents octets) */
	size_t total;           /* the whole element */
};

static int ber_size(const unsigned char *p, size_t avail, int depth, size_t *out);

/* Read the element at p (avail bytes), finding the end of an indefinite one.  0 or -1. */
static int
ber_read(const unsigned char *p, size_t avail, int depth, struct tlv *t)
{
	size_t len = 0, hl;
	unsigned char b;

	if (avail < 2 || (p[0] & 0x1f) == 0x1f)
		return -1;      /* short, or a tag of several bytes: not in CMS's outer structure */
	t->tag = p[0];
	b = p[1];
	if (b < 0x80) {
		len = b;
		hl = 2;
	} else if (b == 0x80) {
		size_t off = 2, n;

		if (!(p[0] & 0x20) || depth >= BER_MAX_DEPTH)
			return -1;
		for (;;) {
			if (avail - off >= 2 && p[off] == 0 && p[off + 1] == 0)
				break;
			if (ber_size(p + off, avail - off, depth + 1, &n) != 0)
				return -1;
			off += n;
		}
		t->hl = 2;
		t->cl = off - 2;
		t->total = off + 2;
		return 0;
	} else {
		size_t nb = b & 0x7f;

		if (nb > 4 || avail < 2 + nb)
			return -1;
		for (size_t i = 0; i < nb; i++)
			len = (len << 8) | p[2 + i];
		hl = 2 + nb;
	}
	if (len > avail - hl)
		return -1;
	t->hl = hl;
	t->cl = len;
	t->total = hl + len;
	return 0;
}

static int
ber_size(const unsigned char *p, size_t avail, int depth, size_t *out)
{
	struct tlv t;

	if (ber_read(p, avail, depth, &t) != 0)
		return -1;
	*out = t.total;
	return 0;
}

/* Write a DER header (tag, definite length) at o; returns its length. */
static size_t
der_header(unsigned char *o, unsigned char tag, size_t len)
{
	size_t n = 0, hl;

	o[0] = tag;
	if (len < 0x80) {
		o[1] = (unsigned char)len;
		return 2;
	}
	for (size_t l = len; l > 0; l >>= 8)
		n++;
	o[1] = (unsigned char)(0x80 | n);
	hl = 2 + n;
	for (size_t i = 0; i < n; i++)
		o[hl - 1 - i] = (unsigned char)(len >> (8 * i));
	return hl;
}

static size_t
der_header_len(size_t len)
{
	unsigned char tmp[16];

	return der_header(tmp, 0, len);
}

/* id-signedData, as encoded. */
static const unsigned char oid_signed_data[] = {
	0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02
};

/*
 * Take the certificate set out of the signed-data blob der: 1 with *out
 * (malloc'd, *outlen) the blob without it and *cs the certificates, 0
 * when the blob is not one this walks (no certificate set included), -1
 * when out of memory.
 */
static int
split_certs(const unsigned char *der, size_t len, unsigned char **out, size_t *outlen, STACK_OF(X509) *cs)
{
	struct tlv ci, oid, exp, sd, el, set;
	const unsigned char *sdc, *setp = NULL;
	size_t off, idx = 0, rest, sdlen, explen, cilen;
	unsigned char *o;

	if (ber_read(der, len, 0, &ci) != 0 || ci.tag != 0x30)
		return 0;
	if (ber_read(der + ci.hl, ci.cl, 1, &oid) != 0 || oid.total != sizeof(oid_signed_data) ||
	    memcmp(der + ci.hl, oid_signed_data, sizeof(oid_signed_data)) != 0)
		return 0;
	if (ber_read(der + ci.hl + oid.total, ci.cl - oid.total, 1, &exp) != 0 || exp.tag != 0xa0 ||
	    oid.total + exp.total != ci.cl)
		return 0;
	if (ber_read(der + ci.hl + oid.total + exp.hl, exp.cl, 2, &sd) != 0 || sd.tag != 0x30 || sd.total != exp.cl)
		return 0;
	sdc = der + ci.hl + oid.total + exp.hl + sd.hl;
	/* version, digestAlgorithms, encapContentInfo, then [0] certificates if present. */
	for (off = 0; off < sd.cl; off += el.total, idx++) {
		if (ber_read(sdc + off, sd.cl - off, 3, &el) != 0)
			return 0;
		if (idx == 3) {
			if (el.tag == 0xa0) {
				setp = sdc + off;
				set = el;
			}
			break;
		}
	}
	if (setp == NULL)
		return 0;
	for (off = 0; off < set.cl; off += el.total) {
		X509 *x;

		if (ber_read(setp + set.hl + off, set.cl - off, 4, &el) != 0)
			return 0;
		if (el.tag != 0x30)
			continue;       /* attribute and other certificate formats: not used */
		if (sk_X509_num(cs) >= MLT_CMS_MAX_CERTS)
			return 0;       /* an odd blob: OpenSSL's parse, with every certificate */
		if ((x = cert_get(setp + set.hl + off, el.total)) == NULL)
			return 0;       /* OpenSSL's own parse decides what this blob is */
		if (!sk_X509_push(cs, x)) {
			X509_free(x);
			return -1;
		}
	}
	/* The new SignedData: everything but the set, byte for byte. */
	rest = sd.cl - (size_t)(setp - sdc) - set.total;
	sdlen = sd.cl - set.total;
	explen = der_header_len(sdlen) + sdlen;
	cilen = oid.total + der_header_len(explen) + explen;
	if ((o = malloc(der_header_len(cilen) + cilen)) == NULL)
		return -1;
	off = der_header(o, 0x30, cilen);
	memcpy(o + off, oid_signed_data, sizeof(oid_signed_data));
	off += sizeof(oid_signed_data);
	off += der_header(o + off, 0xa0, explen);
	off += der_header(o + off, 0x30, sdlen);
	memcpy(o + off, sdc, (size_t)(setp - sdc));
	off += (size_t)(setp - sdc);
	memcpy(o + off, setp + set.total, rest);
	off += rest;
	*out = o;
	*outlen = off;
	return 1;
}

static CMS_ContentInfo *
d2i_cms(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	CMS_ContentInfo *cms;

	if (len == 0 || len > (size_t)0x7fffffff)
		return NULL;
	cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
	ERR_clear_error();
	return cms;
}

int
mlt_cms_decode(const unsigned char *der, size_t len, CMS_ContentInfo **cms, STACK_OF(X509) **certs)
{
	STACK_OF(X509) *cs;
	unsigned char *stripped = NULL;
	size_t slen = 0;
	int r;

	*cms = NULL;
	*certs = NULL;
	if ((cs = sk_X509_new_null()) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	r = split_certs(der, len, &stripped, &slen, cs);
	if (r < 0) {
		sk_X509_pop_free(cs, X509_free);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	if (r == 1 && (*cms = d2i_cms(stripped, slen)) != NULL) {
		free(stripped);
		*certs = cs;
		return 0;
	}
	free(stripped);
	/* Not split (or OpenSSL refused the rest): OpenSSL's parse of the whole blob. */
	sk_X509_pop_free(cs, X509_free);
	if ((*cms = d2i_cms(der, len)) != NULL) {
		cs = CMS_get1_certs(*cms);
		ERR_clear_error();
	} else {
		cs = NULL;
	}
	if (cs == NULL && (cs = sk_X509_new_null()) == NULL) {
		CMS_ContentInfo_free(*cms);
		*cms = NULL;
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	*certs = cs;
	return 0;
}
