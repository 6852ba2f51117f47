/*
 * envelope.c - escrowed keys as CMS AuthEnvelopedData addressed to the
 * key-recovery key (KRK), and the KRK private key as a secret to split.
 *
 * Entry points: esc_wrap_key(), esc_unwrap_key(), esc_key_to_secret(),
 * esc_key_from_secret(), esc_key_matches_cert().
 *
 * An envelope is AES-256-GCM content (the PKCS#8 DER of the key) whose
 * content-encryption key goes to the KRK certificate by RSAES-OAEP with
 * SHA-256 and MGF1-SHA-256.  Wrapping needs only the KRK certificate, so
 * kmsd archives keys without holding the KRK private key.  Opening goes
 * through our own CMS code (release.c, enveloped.c) rather than
 * CMS_decrypt(), so that the content-encryption key and the decrypted
 * PKCS#8 only ever sit in the secure heap and are wiped; OpenSSL's copy
 * loop would leave them in stack buffers.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "archive/archive.h"
#include "archive/cms_asn1.h"

/* The largest PKCS#8 we expect: RSA-16384 is about 9.5 KiB. */
#define MAX_PKCS8 (32 * 1024)
/* An envelope is the PKCS#8 plus a few hundred bytes per recipient. */
#define MAX_ENVELOPE (64 * 1024)

/* Is key a usable private key (not just a public one)? */
static int
is_private_key(EVP_PKEY *key)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
	int ok;

	if (ctx == NULL)
		return 0;
	ok = EVP_PKEY_private_check(ctx) == 1;
	EVP_PKEY_CTX_free(ctx);
	return ok;
}

int
esc_key_to_secret(EVP_PKEY *key, unsigned char **secret, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	unsigned char *buf = NULL, *p;
	int n, rc;

	*secret = NULL;
	*len = 0;
	if (key == NULL)
		return kms_fail(KMS_ERR_INVALID, "no key");
	if (!is_private_key(key)) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "not a private key");
	}
	p8 = EVP_PKEY2PKCS8(key);
	if (p8 == NULL)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
	n = i2d_PKCS8_PRIV_KEY_INFO(p8, NULL);
	if (n <= 0 || n > MAX_PKCS8) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
		goto out;
	}
	buf = OPENSSL_secure_malloc((size_t)n);
	if (buf == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of locked memory for a private key");
		goto out;
	}
	p = buf;
	if (i2d_PKCS8_PRIV_KEY_INFO(p8, &p) != n) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
		goto out;
	}
	*secret = buf;
	*len = (size_t)n;
	buf = NULL;
	rc = 0;
out:
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, (size_t)n);
	PKCS8_PRIV_KEY_INFO_free(p8);   /* wipes its copy of the key */
	return rc;
}

int
esc_key_from_secret(const unsigned char *secret, size_t len, EVP_PKEY **key)
{
	PKCS8_PRIV_KEY_INFO *p8;
	const unsigned char *p = secret;
	EVP_PKEY *k;

	*key = NULL;
	if (secret == NULL || len == 0 || len > MAX_PKCS8)
		return kms_fail(KMS_ERR_CORRUPT, "not a private key (bad length)");
	p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)len);
	if (p8 == NULL || p != secret + len) {
		PKCS8_PRIV_KEY_INFO_free(p8);
		ERR_clear_error();
		return kms_fail(KMS_ERR_CORRUPT, "not a PKCS#8 private key");
	}
	k = EVP_PKCS82PKEY(p8);
	PKCS8_PRIV_KEY_INFO_free(p8);
	if (k == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_CORRUPT, "PKCS#8 structure holds no usable private key");
	}
	if (!is_private_key(k)) {
		EVP_PKEY_free(k);
		ERR_clear_error();
		return kms_fail(KMS_ERR_CORRUPT, "PKCS#8 structure holds no valid private key");
	}
	*key = k;
	return 0;
}

int
esc_key_matches_cert(EVP_PKEY *key, X509 *cert)
{
	EVP_PKEY *pub;
	int r;

	if (key == NULL || cert == NULL)
		return 0;
	pub = X509_get0_pubkey(cert);
	if (pub == NULL) {
		ERR_clear_error();
		return 0;
	}
	r = EVP_PKEY_eq(key, pub);
	ERR_clear_error();
	return r == 1;
}

int
esc_wrap_key(X509 *krk_cert, EVP_PKEY *key, unsigned char **der, size_t *len)
{
	CMS_ContentInfo *cms = NULL;
	CMS_RecipientInfo *ri;
	EVP_PKEY_CTX *pctx;
	EVP_PKEY *krk_pub;
	BIO *in = NULL;
	unsigned char *secret = NULL, *buf = NULL, *p;
	size_t slen = 0;
	int n, rc;

	*der = NULL;
	*len = 0;
	if (krk_cert == NULL || key == NULL)
		return kms_fail(KMS_ERR_INVALID, "no KRK certificate or no key to escrow");
	krk_pub = X509_get0_pubkey(krk_cert);
	if (krk_pub == NULL || !EVP_PKEY_is_a(krk_pub, "RSA")) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "the KRK certificate must hold an RSA key");
	}
	if ((rc = esc_key_to_secret(key, &secret, &slen)) != 0)
		return rc;

	cms = CMS_AuthEnvelopedData_create(EVP_aes_256_gcm());
	if (cms == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot create the envelope");
		goto out;
	}
	/* A new AuthEnvelopedData is detached: we want the content inside. */
	if (CMS_set_detached(cms, 0) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot create the envelope");
		goto out;
	}
	ri = CMS_add1_recipient_cert(cms, krk_cert, CMS_KEY_PARAM);
	if (ri == NULL || (pctx = CMS_RecipientInfo_get0_pkey_ctx(ri)) == NULL ||
	    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(pctx, EVP_sha256()) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot address the envelope to the KRK (RSA-OAEP)");
		goto out;
	}
	/* A read-only memory BIO reads the secret in place: no copy. */
	in = BIO_new_mem_buf(secret, (int)slen);
	if (in == NULL || CMS_final(cms, in, NULL, CMS_BINARY) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encrypt the key to the KRK");
		goto out;
	}
	n = i2d_CMS_ContentInfo(cms, NULL);
	if (n <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the envelope");
		goto out;
	}
	buf = malloc((size_t)n);
	if (buf == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	p = buf;
	if (i2d_CMS_ContentInfo(cms, &p) != n) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "cannot encode the envelope");
		goto out;
	}
	*der = buf;
	*len = (size_t)n;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	BIO_free(in);
	CMS_ContentInfo_free(cms);
	OPENSSL_secure_clear_free(secret, slen);
	return rc;
}

int
esc_unwrap_key(EVP_PKEY *krk_key, X509 *krk_cert, const unsigned char *der, size_t len, EVP_PKEY **key)
{
	struct esc_enveloped *e = NULL;
	unsigned char *cek = NULL, *p8 = NULL;
	size_t cek_len = 0, p8_len = 0, which, i, n;
	int rc;

	*key = NULL;
	if (krk_key == NULL || krk_cert == NULL || der == NULL || len == 0)
		return kms_fail(KMS_ERR_INVALID, "no KRK key and certificate, or no envelope");
	if (len > MAX_ENVELOPE)
		return kms_fail(KMS_ERR_CORRUPT, "escrow envelope too large (%zu bytes)", len);
	if (esc_enveloped_parse(der, len, &e) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "escrow envelope is not a valid CMS structure");
		goto out;
	}
	if (!esc_enveloped_is_auth(e)) {
		rc = kms_fail(KMS_ERR_CORRUPT, "escrow envelope is not AuthEnvelopedData");
		goto out;
	}
	/* The RecipientInfo for this KRK; its CEK is opened in the secure heap. */
	n = esc_enveloped_count(e);
	for (i = 0; i < n; i++)
		if (esc_enveloped_ri_matches(e, i, krk_cert))
			break;
	if (i == n) {
		rc = kms_fail(KMS_ERR_CORRUPT, "escrow envelope is not addressed to this key-recovery key");
		goto out;
	}
	{
		const unsigned char *ri;
		size_t rlen;

		if ((rc = esc_enveloped_ri(e, i, &ri, &rlen)) != 0 ||
		    (rc = esc_release_cek(ri, rlen, &krk_key, &krk_cert, 1, &cek, &cek_len, &which)) != 0) {
			rc = kms_fail(KMS_ERR_CORRUPT, "escrow envelope does not open with this key-recovery key");
			goto out;
		}
	}
	if (esc_enveloped_decrypt_secure(e, cek, cek_len, &p8, &p8_len) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "escrow envelope fails its authentication "
		    "(altered, or not made for this key-recovery key)");
		goto out;
	}
	if ((rc = esc_key_from_secret(p8, p8_len, key)) != 0)
		kms_fail(rc, "escrow envelope does not hold a private key");
out:
	if (cek != NULL)
		OPENSSL_secure_clear_free(cek, cek_len);
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8_len);
	esc_enveloped_free(e);
	return rc;
}
