/*
 * enveloped.c - compliance decryption, kmsctl side: an S/MIME enveloped
 * body (ContentInfo with EnvelopedData or AuthEnvelopedData) split into
 * its RecipientInfos, which go one at a time to kmsd, and its encrypted
 * content, which is decrypted here with the key kmsd released.
 *
 * Entry points: esc_enveloped_parse(), esc_enveloped_free(),
 * esc_enveloped_count(), esc_enveloped_ri(), esc_enveloped_ri_matches(),
 * esc_enveloped_decrypt().
 *
 * Content ciphers: AES-128/192/256-CBC and DES-EDE3-CBC in EnvelopedData;
 * AES-128/192/256-GCM (RFC 5084) in AuthEnvelopedData, with its
 * authenticated attributes as AAD (RFC 5083).  Input is BER as mail
 * clients write it (indefinite lengths, chunked strings); every length is
 * checked against its bound before use.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "archive/archive.h"
#include "archive/cms_asn1.h"

#define MAX_RECIPIENTS 4096
/* An OID as dotted text in an error message. */
#define OID_TEXT_MAX 100
/* Decrypt in steps that fit an int. */
#define CHUNK (1024 * 1024)

struct esc_enveloped {
	int auth;                       /* AuthEnvelopedData */
	ESC_ENV *env;
	ESC_AUTHENV *aenv;
	STACK_OF(ESC_RI) *ris;          /* borrowed from env or aenv */
	ESC_ECI *eci;                   /* borrowed from env or aenv */
	size_t n;
	unsigned char **ri_der;         /* OPENSSL_malloc'd DER of each RecipientInfo */
	size_t *ri_len;
};

void
esc_enveloped_free(struct esc_enveloped *e)
{
	if (e == NULL)
		return;
	if (e->ri_der != NULL)
		for (size_t i = 0; i < e->n; i++)
			OPENSSL_free(e->ri_der[i]);
	free(e->ri_der);
	free(e->ri_len);
	ASN1_item_free((ASN1_VALUE *)e->env, ASN1_ITEM_rptr(ESC_ENV));
	ASN1_item_free((ASN1_VALUE *)e->aenv, ASN1_ITEM_rptr(ESC_AUTHENV));
	free(e);
}

/* The ContentInfo's inner SEQUENCE when it is (Auth)EnvelopedData; *nid says which. */
static int
enveloped_inner(const ESC_CONTENT_INFO *ci, const ASN1_STRING **inner, int *nid)
{
	*nid = OBJ_obj2nid(ci->type);
	if (*nid != NID_pkcs7_enveloped && *nid != NID_id_smime_ct_authEnvelopedData) {
		char txt[OID_TEXT_MAX];

		if (OBJ_obj2txt(txt, sizeof(txt), ci->type, 0) <= 0)
			snprintf(txt, sizeof(txt), "(unknown)");
		return kms_fail(KMS_ERR_INVALID, "CMS content type %s is not enveloped data", txt);
	}
	if (ci->content == NULL || ci->content->type != V_ASN1_SEQUENCE)
		return kms_fail(KMS_ERR_INVALID, "enveloped data is not a SEQUENCE");
	*inner = ci->content->value.sequence;
	return 0;
}

/* Decode the (Auth)EnvelopedData into e: recipients, content info, a known version. */
static int
enveloped_decode(struct esc_enveloped *e, const ASN1_STRING *inner)
{
	long version = -1;

	if (e->auth) {
		e->aenv = esc_asn1_decode_exact(ASN1_ITEM_rptr(ESC_AUTHENV), inner->data, (size_t)inner->length);
		if (e->aenv != NULL) {
			e->ris = e->aenv->ris;
			e->eci = e->aenv->eci;
			version = ASN1_INTEGER_get(e->aenv->version);
		}
	} else {
		e->env = esc_asn1_decode_exact(ASN1_ITEM_rptr(ESC_ENV), inner->data, (size_t)inner->length);
		if (e->env != NULL) {
			e->ris = e->env->ris;
			e->eci = e->env->eci;
			version = ASN1_INTEGER_get(e->env->version);
		}
	}
	if (e->ris == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "malformed %s", e->auth ? "AuthEnvelopedData" : "EnvelopedData");
	}
	if (version < 0 || version > 4)
		return kms_fail(KMS_ERR_INVALID, "enveloped data version %ld", version);
	return 0;
}

/* Each RecipientInfo re-encoded on its own, for release. */
static int
enveloped_ris(struct esc_enveloped *e)
{
	int count = sk_ESC_RI_num(e->ris);

	if (count <= 0)
		return kms_fail(KMS_ERR_INVALID, "enveloped data without recipients");
	if (count > MAX_RECIPIENTS)
		return kms_fail(KMS_ERR_TOOBIG, "enveloped data with %d recipients", count);
	e->ri_der = calloc((size_t)count, sizeof(*e->ri_der));
	e->ri_len = calloc((size_t)count, sizeof(*e->ri_len));
	if (e->ri_der == NULL || e->ri_len == NULL)
		return KMS_ERR_NOMEM;
	e->n = (size_t)count;
	for (int i = 0; i < count; i++) {
		int n = ASN1_item_i2d((ASN1_VALUE *)sk_ESC_RI_value(e->ris, i), &e->ri_der[i], ASN1_ITEM_rptr(ESC_RI));

		if (n <= 0) {
			e->ri_der[i] = NULL;
			return kms_fail_openssl(KMS_ERR_INVALID, "cannot encode RecipientInfo %d", i);
		}
		e->ri_len[i] = (size_t)n;
	}
	return 0;
}

int
esc_enveloped_parse(const unsigned char *der, size_t len, struct esc_enveloped **out)
{
	struct esc_enveloped *e = NULL;
	ESC_CONTENT_INFO *ci = NULL;
	const ASN1_STRING *inner = NULL;
	int nid, rc;

	*out = NULL;
	if (der == NULL || len == 0)
		return kms_fail(KMS_ERR_INVALID, "empty CMS message");
	if (len > ESC_MAX_MESSAGE)
		return kms_fail(KMS_ERR_TOOBIG, "CMS message of %zu bytes is over the %zu-byte bound",
		    len, ESC_MAX_MESSAGE);
	ci = esc_asn1_decode_exact(ASN1_ITEM_rptr(ESC_CONTENT_INFO), der, len);
	if (ci == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "not a CMS ContentInfo (damaged or truncated)");
	}
	if ((rc = enveloped_inner(ci, &inner, &nid)) != 0)
		goto out;
	if ((e = calloc(1, sizeof(*e))) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	e->auth = nid == NID_id_smime_ct_authEnvelopedData;
	if ((rc = enveloped_decode(e, inner)) != 0 || (rc = enveloped_ris(e)) != 0)
		goto out;
	*out = e;
	e = NULL;
out:
	ASN1_item_free((ASN1_VALUE *)ci, ASN1_ITEM_rptr(ESC_CONTENT_INFO));
	esc_enveloped_free(e);
	return rc;
}

size_t
esc_enveloped_count(const struct esc_enveloped *e)
{
	return e ? e->n : 0;
}

int
esc_enveloped_ri(const struct esc_enveloped *e, size_t i, const unsigned char **der, size_t *len)
{
	*der = NULL;
	*len = 0;
	if (e == NULL || i >= e->n)
		return kms_fail(KMS_ERR_NOTFOUND, "no RecipientInfo %zu", i);
	*der = e->ri_der[i];
	*len = e->ri_len[i];
	return 0;
}

int
esc_enveloped_ri_matches(const struct esc_enveloped *e, size_t i, X509 *cert)
{
	if (e == NULL || i >= e->n || cert == NULL)
		return 0;
	return esc_ri_matches(sk_ESC_RI_value(e->ris, (int)i), cert);
}

/* ----------------------------------------------------------------- decrypt */

struct content_cipher {
	const EVP_CIPHER *cipher;
	const unsigned char *iv;
	int ivlen;
	int taglen;                     /* GCM only */
	ESC_GCM_PARAMS *gcm;            /* owns iv for GCM */
};

static int
unsupported_cipher(const X509_ALGOR *alg, const char *in)
{
	const ASN1_OBJECT *obj = NULL;
	char txt[100];

	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	if (obj == NULL || OBJ_obj2txt(txt, sizeof(txt), obj, 0) <= 0)
		snprintf(txt, sizeof(txt), "(unknown)");
	return kms_fail(KMS_ERR_INVALID, "unsupported content encryption algorithm %s in %s", txt, in);
}

static int
cbc_params(const X509_ALGOR *alg, struct content_cipher *cc)
{
	const ASN1_OBJECT *obj;
	const void *pval;
	int ptype;

	switch (OBJ_obj2nid(alg->algorithm)) {
	case NID_aes_128_cbc:
		cc->cipher = EVP_aes_128_cbc();
		break;
	case NID_aes_192_cbc:
		cc->cipher = EVP_aes_192_cbc();
		break;
	case NID_aes_256_cbc:
		cc->cipher = EVP_aes_256_cbc();
		break;
	case NID_des_ede3_cbc:
		cc->cipher = EVP_des_ede3_cbc();
		break;
	default:
		return unsupported_cipher(alg, "EnvelopedData");
	}
	X509_ALGOR_get0(&obj, &ptype, &pval, alg);
	if (ptype != V_ASN1_OCTET_STRING || pval == NULL ||
	    ASN1_STRING_length(pval) != EVP_CIPHER_get_iv_length(cc->cipher))
		return kms_fail(KMS_ERR_INVALID, "content encryption IV missing or of the wrong length");
	cc->iv = ASN1_STRING_get0_data(pval);
	cc->ivlen = ASN1_STRING_length(pval);
	return 0;
}

static int
gcm_params(const X509_ALGOR *alg, struct content_cipher *cc)
{
	long icv = 12;

	switch (OBJ_obj2nid(alg->algorithm)) {
	case NID_aes_128_gcm:
		cc->cipher = EVP_aes_128_gcm();
		break;
	case NID_aes_192_gcm:
		cc->cipher = EVP_aes_192_gcm();
		break;
	case NID_aes_256_gcm:
		cc->cipher = EVP_aes_256_gcm();
		break;
	default:
		return unsupported_cipher(alg, "AuthEnvelopedData");
	}
	cc->gcm = esc_asn1_decode_params(ASN1_ITEM_rptr(ESC_GCM_PARAMS), alg);
	if (cc->gcm == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "malformed GCM parameters");
	}
	if (cc->gcm->icvlen != NULL)
		icv = ASN1_INTEGER_get(cc->gcm->icvlen);
	/* RFC 5084 allows 12 to 16 octets of tag; nonces are usually 12. */
	if (icv < 12 || icv > 16)
		return kms_fail(KMS_ERR_INVALID, "GCM tag length %ld", icv);
	cc->ivlen = ASN1_STRING_length(cc->gcm->nonce);
	if (cc->ivlen < 1 || cc->ivlen > 16)
		return kms_fail(KMS_ERR_INVALID, "GCM nonce of %d bytes", cc->ivlen);
	cc->iv = ASN1_STRING_get0_data(cc->gcm->nonce);
	cc->taglen = (int)icv;
	return 0;
}

/* The authenticated attributes as AAD: their DER with the SET OF tag, not [1]. */
static int
auth_aad(const ESC_AUTHENV *a, unsigned char **aad, size_t *len)
{
	const ASN1_STRING *raw = a->auth_attrs;

	*aad = NULL;
	*len = 0;
	if (raw == NULL)
		return 0;
	if (raw->length < 2 || raw->data[0] != 0xa1 || raw->data[1] == 0x80)
		return kms_fail(KMS_ERR_INVALID, "authenticated attributes are not DER");
	*aad = OPENSSL_memdup(raw->data, (size_t)raw->length);
	if (*aad == NULL)
		return KMS_ERR_NOMEM;
	(*aad)[0] = 0x31;
	*len = (size_t)raw->length;
	return 0;
}

static int
feed(EVP_CIPHER_CTX *c, unsigned char *out, const unsigned char *in, size_t len, size_t *written)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i += CHUNK) {
		size_t n = len - i < CHUNK ? len - i : CHUNK;
		int ol = 0;

		if (EVP_DecryptUpdate(c, out ? out + o : NULL, &ol, in + i, (int)n) != 1 || ol < 0)
			return -1;
		o += (size_t)ol;
	}
	*written = o;
	return 0;
}

static void
free_output(unsigned char *buf, size_t cap, int secure)
{
	if (buf == NULL)
		return;
	if (secure) {
		OPENSSL_secure_clear_free(buf, cap);
	} else {
		OPENSSL_cleanse(buf, cap);
		free(buf);
	}
}

/* Decrypt into malloc'd memory, or into the secure heap when secure is set. */
/* The cipher of the content and checks that the key, the length and the tag fit it. */
static int
content_check(const struct esc_enveloped *e, size_t cek_len, size_t clen, struct content_cipher *cc)
{
	int rc;

	if ((rc = e->auth ? gcm_params(e->eci->alg, cc) : cbc_params(e->eci->alg, cc)) != 0)
		return rc;
	if (cek_len != (size_t)EVP_CIPHER_get_key_length(cc->cipher))
		return kms_fail(KMS_ERR_INVALID, "content-encryption key of %zu bytes for a %d-byte cipher key",
		    cek_len, EVP_CIPHER_get_key_length(cc->cipher));
	if (!e->auth && clen % (size_t)EVP_CIPHER_get_block_size(cc->cipher) != 0)
		return kms_fail(KMS_ERR_CORRUPT, "encrypted content is not a whole number of blocks");
	if (e->auth && (size_t)ASN1_STRING_length(e->aenv->mac) != (size_t)cc->taglen)
		return kms_fail(KMS_ERR_CORRUPT, "authentication tag of %d bytes, expected %d",
		    ASN1_STRING_length(e->aenv->mac), cc->taglen);
	return 0;
}

/* Set c up to decrypt with cek; for AuthEnvelopedData feed the authenticated attributes and set the tag. */
static int
content_start(EVP_CIPHER_CTX *c, const struct esc_enveloped *e, const struct content_cipher *cc,
    const unsigned char *cek)
{
	unsigned char *aad = NULL;
	size_t aadlen = 0, n;
	int rc = 0;

	if (EVP_DecryptInit_ex(c, cc->cipher, NULL, NULL, NULL) != 1 ||
	    (e->auth && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, cc->ivlen, NULL) != 1) ||
	    EVP_DecryptInit_ex(c, NULL, NULL, cek, cc->iv) != 1)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "content decryption");
	if (!e->auth)
		return 0;
	if ((rc = auth_aad(e->aenv, &aad, &aadlen)) != 0)
		return rc;
	if ((aad != NULL && feed(c, NULL, aad, aadlen, &n) != 0) ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, cc->taglen, (void *)ASN1_STRING_get0_data(e->aenv->mac)) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "content decryption");
	OPENSSL_free(aad);
	return rc;
}

static int
decrypt_content(const struct esc_enveloped *e, const unsigned char *cek, size_t cek_len, int secure,
    unsigned char **out, size_t *out_len)
{
	struct content_cipher cc;
	EVP_CIPHER_CTX *c = NULL;
	const ASN1_OCTET_STRING *ct;
	unsigned char *buf = NULL;
	size_t clen, cap = 0, o = 0;
	int fl = 0, rc;

	*out = NULL;
	*out_len = 0;
	memset(&cc, 0, sizeof(cc));
	if (e == NULL || cek == NULL || cek_len == 0)
		return kms_fail(KMS_ERR_INVALID, "no message or no key");
	ct = e->eci->content;
	if (ct == NULL || ct->length <= 0)
		return kms_fail(KMS_ERR_INVALID, "the message carries no encrypted content (detached)");
	clen = (size_t)ct->length;
	if ((rc = content_check(e, cek_len, clen, &cc)) != 0)
		goto out;
	cap = clen + EVP_MAX_BLOCK_LENGTH;
	buf = secure ? OPENSSL_secure_malloc(cap) : malloc(cap);
	c = EVP_CIPHER_CTX_new();
	if (buf == NULL || c == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if ((rc = content_start(c, e, &cc, cek)) != 0)
		goto out;
	if (feed(c, buf, ct->data, clen, &o) != 0 || o > clen) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "content decryption");
		goto out;
	}
	if (EVP_DecryptFinal_ex(c, buf + o, &fl) != 1 || fl < 0) {
		ERR_clear_error();
		rc = e->auth ? kms_fail(KMS_ERR_CORRUPT, "message authentication failed "
		    "(altered message or wrong key)") :
		    kms_fail(KMS_ERR_CRYPTO, "content decryption failed (wrong key or damaged message)");
		goto out;
	}
	*out = buf;
	*out_len = o + (size_t)fl;
	buf = NULL;
out:
	free_output(buf, cap, secure);
	EVP_CIPHER_CTX_free(c);
	ASN1_item_free((ASN1_VALUE *)cc.gcm, ASN1_ITEM_rptr(ESC_GCM_PARAMS));
	return rc;
}

int
esc_enveloped_decrypt(const struct esc_enveloped *e, const unsigned char *cek, size_t cek_len,
    unsigned char **out, size_t *out_len)
{
	return decrypt_content(e, cek, cek_len, 0, out, out_len);
}

int
esc_enveloped_decrypt_secure(const struct esc_enveloped *e, const unsigned char *cek, size_t cek_len,
    unsigned char **out, size_t *out_len)
{
	return decrypt_content(e, cek, cek_len, 1, out, out_len);
}

int
esc_enveloped_is_auth(const struct esc_enveloped *e)
{
	return e != NULL && e->auth;
}
