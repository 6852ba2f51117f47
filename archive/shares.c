/*
 * shares.c - Shamir M-of-N split and combine of the key-recovery key over
 * GF(256), through libgfshare.
 *
 * Entry points: esc_split(), esc_combine(), esc_share_clear(),
 * esc_shares_free(), esc_share_digest().
 *
 * Owns the share buffers (OpenSSL secure heap, wiped on free) and the
 * libgfshare random source: libgfshare 2.0 calls the global
 * gfshare_fill_rand both for the polynomial coefficients and to overwrite
 * its own buffers when a context is freed, so it is set to RAND_priv_bytes
 * before any context exists.  libgfshare keeps its working copy of the
 * secret in its own (ordinary) heap for the length of one call and
 * overwrites it when the context is freed.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <libgfshare.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "archive/archive.h"

/* A share of a KRK is the length of its PKCS#8; nothing we split is near this. */
#define ESC_MAX_SECRET (64 * 1024)

/* Set when RAND_priv_bytes failed during a libgfshare call on this thread. */
static _Thread_local int rand_failed;

static void
esc_fill_rand(unsigned char *buf, unsigned int n)
{
	if (n == 0)
		return;
	if (RAND_priv_bytes(buf, (int)n) != 1) {
		/* No randomness: never use what is in buf; zeros still wipe. */
		OPENSSL_cleanse(buf, n);
		rand_failed = 1;
	}
}

static void
use_priv_rand(void)
{
	gfshare_fill_rand = esc_fill_rand;
	rand_failed = 0;
}

void
esc_share_clear(struct esc_share *s)
{
	if (s == NULL)
		return;
	if (s->data != NULL)
		OPENSSL_secure_clear_free(s->data, s->len);
	s->data = NULL;
	s->len = 0;
	s->index = 0;
}

void
esc_shares_free(struct esc_share *s, size_t n)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		esc_share_clear(&s[i]);
	free(s);
}

int
esc_split(const unsigned char *secret, size_t len, int n, int m, struct esc_share **out)
{
	struct esc_share *shares = NULL;
	unsigned char coords[ESC_MAX_SHARES];
	unsigned char *copy = NULL;
	gfshare_ctx *ctx = NULL;
	int rc;

	*out = NULL;
	if (secret == NULL || len == 0)
		return kms_fail(KMS_ERR_INVALID, "nothing to split");
	if (len > ESC_MAX_SECRET)
		return kms_fail(KMS_ERR_TOOBIG, "secret of %zu bytes is too large to split", len);
	if (m < 2 || n < m || n > ESC_MAX_SHARES)
		return kms_fail(KMS_ERR_INVALID, "bad share parameters: %d shares, threshold %d "
		    "(need 2 <= threshold <= shares <= %d)", n, m, ESC_MAX_SHARES);

	for (int i = 0; i < n; i++)
		coords[i] = (unsigned char)(i + 1);
	shares = calloc((size_t)n, sizeof(*shares));
	/* gfshare_ctx_enc_setsecret() takes a non-const pointer. */
	copy = OPENSSL_secure_malloc(len);
	if (shares == NULL || copy == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of locked memory for shares");
		goto out;
	}
	memcpy(copy, secret, len);

	use_priv_rand();
	ctx = gfshare_ctx_init_enc(coords, (unsigned int)n, (unsigned char)m, (unsigned int)len);
	if (ctx == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "cannot set up secret sharing");
		goto out;
	}
	gfshare_ctx_enc_setsecret(ctx, copy);
	if (rand_failed) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "no random numbers for the share polynomial");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		shares[i].data = OPENSSL_secure_malloc(len);
		if (shares[i].data == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of locked memory for shares");
			goto out;
		}
		shares[i].len = len;
		shares[i].index = coords[i];
		gfshare_ctx_enc_getshare(ctx, (unsigned char)i, shares[i].data);
	}
	*out = shares;
	shares = NULL;
	rc = 0;
out:
	if (ctx != NULL)
		gfshare_ctx_free(ctx);
	if (copy != NULL)
		OPENSSL_secure_clear_free(copy, len);
	esc_shares_free(shares, (size_t)n);
	OPENSSL_cleanse(coords, sizeof(coords));
	return rc;
}

int
esc_combine(const struct esc_share *shares, size_t count, unsigned char **secret, size_t *len)
{
	unsigned char coords[ESC_MAX_SHARES];
	unsigned char *buf = NULL;
	gfshare_ctx *ctx = NULL;
	size_t slen;
	int rc;

	*secret = NULL;
	*len = 0;
	if (shares == NULL || count < 2)
		return kms_fail(KMS_ERR_INVALID, "at least two shares are needed");
	if (count > ESC_MAX_SHARES)
		return kms_fail(KMS_ERR_INVALID, "too many shares (%zu)", count);
	slen = shares[0].len;
	if (slen == 0 || slen > ESC_MAX_SECRET)
		return kms_fail(KMS_ERR_INVALID, "share of bad length");
	for (size_t i = 0; i < count; i++) {
		if (shares[i].data == NULL || shares[i].len != slen)
			return kms_fail(KMS_ERR_INVALID, "share %u does not have the length of the others",
			    shares[i].index);
		if (shares[i].index == 0)
			return kms_fail(KMS_ERR_INVALID, "share index 0 is not valid");
		for (size_t j = 0; j < i; j++)
			if (shares[j].index == shares[i].index)
				return kms_fail(KMS_ERR_INVALID, "share %u given twice", shares[i].index);
		coords[i] = shares[i].index;
	}
	buf = OPENSSL_secure_malloc(slen);
	if (buf == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of locked memory for the secret");
		goto out;
	}
	use_priv_rand();
	ctx = gfshare_ctx_init_dec(coords, (unsigned int)count, (unsigned int)slen);
	if (ctx == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "cannot set up secret sharing");
		goto out;
	}
	for (size_t i = 0; i < count; i++)
		gfshare_ctx_dec_giveshare(ctx, (unsigned char)i, shares[i].data);
	gfshare_ctx_dec_extract(ctx, buf);
	*secret = buf;
	*len = slen;
	buf = NULL;
	rc = 0;
out:
	if (ctx != NULL)
		gfshare_ctx_free(ctx);
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, slen);
	return rc;
}

char *
esc_share_digest(const struct esc_share *share)
{
	static const char domain[] = "smime-kms share v1";
	unsigned char h[EVP_MAX_MD_SIZE], hdr[5];
	unsigned int hl = 0;
	EVP_MD_CTX *md;
	char *hex = NULL;

	if (share == NULL || share->data == NULL || share->len == 0 || share->len > UINT32_MAX)
		return NULL;
	hdr[0] = share->index;
	hdr[1] = (unsigned char)(share->len >> 24);
	hdr[2] = (unsigned char)(share->len >> 16);
	hdr[3] = (unsigned char)(share->len >> 8);
	hdr[4] = (unsigned char)share->len;
	md = EVP_MD_CTX_new();
	if (md == NULL)
		return NULL;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(md, domain, sizeof(domain) - 1) == 1 &&
	    EVP_DigestUpdate(md, hdr, sizeof(hdr)) == 1 &&
	    EVP_DigestUpdate(md, share->data, share->len) == 1 &&
	    EVP_DigestFinal_ex(md, h, &hl) == 1)
		hex = kms_hex(h, hl);
	EVP_MD_CTX_free(md);
	return hex;
}
