/*
 * release.c - compliance decryption, kmsd side: the content-encryption key
 * (CEK) of one S/MIME RecipientInfo, decrypted with one of a user's
 * recovered keys.  The message itself never comes here.
 *
 * Entry point: esc_release_cek().
 *
 * OpenSSL decrypts whole messages but has no call that returns a CEK, so
 * the RecipientInfo is taken apart with our own templates (cms_asn1.c) and
 * the key is opened with EVP primitives:
 *   KeyTransRecipientInfo   rsaEncryption (PKCS#1 v1.5) or RSAES-OAEP with
 *                           its hash, MGF1 hash and label (RFC 8017, 4055)
 *   KeyAgreeRecipientInfo   ephemeral-static ECDH (RFC 5753):
 *                           dhSinglePass-stdDH / cofactorDH with the X9.63
 *                           KDF over ECC-CMS-SharedInfo, then AES key wrap
 * Unknown algorithms are KMS_ERR_INVALID with the algorithm named; KEK,
 * password and other recipients name no key of ours (KMS_ERR_NOTFOUND).  The CEK and
 * every intermediate secret (ECDH output, key-encryption key) live in the
 * secure heap and are wiped.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "archive/archive.h"
#include "archive/cms_asn1.h"

/* A RecipientInfo is an issuer name, a serial and a few hundred key bytes. */
#define MAX_RI (64 * 1024)
/* CEK lengths we hand out: DES (8) up to 512-bit keys. */
#define MIN_CEK 8
#define MAX_CEK 64
/* RSA output for keys up to 16384 bits. */
#define MAX_RSA_OUT 2048

struct release_out {
	unsigned char *cek;
	size_t len;
	size_t which;
};

/* "name (1.2.3)" or "1.2.3" for an algorithm in an error message. */
static void
oid_text(const ASN1_OBJECT *obj, char *buf, size_t size)
{
	char num[80];
	int nid = obj ? OBJ_obj2nid(obj) : NID_undef;

	if (obj == NULL || OBJ_obj2txt(num, sizeof(num), obj, 1) <= 0)
		snprintf(buf, size, "(unknown)");
	else if (nid != NID_undef)
		snprintf(buf, size, "%s (%s)", OBJ_nid2sn(nid), num);
	else
		snprintf(buf, size, "%s", num);
}

static int
unsupported(const char *what, const X509_ALGOR *alg)
{
	const ASN1_OBJECT *obj = NULL;
	char txt[160];

	if (alg != NULL)
		X509_ALGOR_get0(&obj, NULL, NULL, alg);
	oid_text(obj, txt, sizeof(txt));
	return kms_fail(KMS_ERR_INVALID, "unsupported %s %s", what, txt);
}

static int
alg_nid(const X509_ALGOR *alg)
{
	const ASN1_OBJECT *obj = NULL;

	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	return obj ? OBJ_obj2nid(obj) : NID_undef;
}

/* The SHA hashes CMS may name for OAEP, MGF1 and the X9.63 KDF. */
static const EVP_MD *
sha_md(int nid)
{
	switch (nid) {
	case NID_sha1:
		return EVP_sha1();
	case NID_sha224:
		return EVP_sha224();
	case NID_sha256:
		return EVP_sha256();
	case NID_sha384:
		return EVP_sha384();
	case NID_sha512:
		return EVP_sha512();
	default:
		return NULL;
	}
}

/* A hash AlgorithmIdentifier with absent or NULL parameters; NULL alg is SHA-1 (the OAEP default). */
static const EVP_MD *
hash_alg(const X509_ALGOR *alg)
{
	if (alg == NULL)
		return EVP_sha1();
	if (!esc_asn1_params_empty(alg))
		return NULL;
	return sha_md(alg_nid(alg));
}

/* Hand out a plausible CEK in the secure heap. */
static int
finish_cek(unsigned char *buf, size_t len, size_t cap, struct release_out *out)
{
	if (len < MIN_CEK || len > MAX_CEK) {
		OPENSSL_secure_clear_free(buf, cap);
		return kms_fail(KMS_ERR_CRYPTO, "cannot decrypt the content-encryption key "
		    "(wrong key or damaged RecipientInfo)");
	}
	if (len < cap)
		OPENSSL_cleanse(buf + len, cap - len);
	out->cek = buf;
	out->len = len;
	return 0;
}

/* ------------------------------------------------------------- key transport */

struct oaep {
	const EVP_MD *md, *mgf1;
	unsigned char *label;           /* OPENSSL_malloc'd, NULL for none */
	size_t label_len;
};

static int
parse_oaep(const X509_ALGOR *alg, struct oaep *o)
{
	ESC_OAEP_PARAMS *p = NULL;
	int rc = 0;

	memset(o, 0, sizeof(*o));
	o->md = o->mgf1 = EVP_sha1();
	if (esc_asn1_params_empty(alg))
		return 0;               /* every field takes its default */
	p = esc_asn1_decode_params(ASN1_ITEM_rptr(ESC_OAEP_PARAMS), alg);
	if (p == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "malformed RSAES-OAEP parameters");
	}
	if ((o->md = hash_alg(p->hash)) == NULL) {
		rc = unsupported("RSAES-OAEP hash", p->hash);
		goto out;
	}
	if (p->mgf != NULL) {
		X509_ALGOR *mh;

		if (alg_nid(p->mgf) != NID_mgf1) {
			rc = unsupported("RSAES-OAEP mask generation function", p->mgf);
			goto out;
		}
		mh = esc_asn1_decode_params(ASN1_ITEM_rptr(X509_ALGOR), p->mgf);
		if (mh == NULL) {
			ERR_clear_error();
			rc = kms_fail(KMS_ERR_INVALID, "malformed MGF1 parameters");
			goto out;
		}
		o->mgf1 = hash_alg(mh);
		if (o->mgf1 == NULL)
			rc = unsupported("MGF1 hash", mh);
		X509_ALGOR_free(mh);
		if (rc != 0)
			goto out;
	} else {
		o->mgf1 = EVP_sha1();
	}
	if (p->psource != NULL) {
		const ASN1_OBJECT *obj;
		const void *pval;
		int ptype;

		if (alg_nid(p->psource) != NID_pSpecified) {
			rc = unsupported("RSAES-OAEP label source", p->psource);
			goto out;
		}
		X509_ALGOR_get0(&obj, &ptype, &pval, p->psource);
		if (ptype != V_ASN1_OCTET_STRING || pval == NULL) {
			rc = kms_fail(KMS_ERR_INVALID, "malformed RSAES-OAEP label");
			goto out;
		}
		if (ASN1_STRING_length(pval) > 0) {
			o->label_len = (size_t)ASN1_STRING_length(pval);
			o->label = OPENSSL_memdup(ASN1_STRING_get0_data(pval), o->label_len);
			if (o->label == NULL) {
				rc = KMS_ERR_NOMEM;
				goto out;
			}
		}
	}
out:
	ASN1_item_free((ASN1_VALUE *)p, ASN1_ITEM_rptr(ESC_OAEP_PARAMS));
	return rc;
}

/* Index of the user's key the KeyTransRecipientInfo names (nkeys when none). */
static size_t
ktri_recipient(const ESC_KTRI *ktri, X509 *const *certs, size_t nkeys)
{
	const ESC_RID *rid = ktri->rid;
	size_t i;

	for (i = 0; i < nkeys; i++)
		if (rid->type == ESC_RID_ISSUER_SERIAL ? esc_iasn_matches(rid->d.iasn, certs[i]) :
		    rid->type == ESC_RID_SKI && esc_ski_matches(rid->d.ski, certs[i]))
			break;
	return i;
}

/* A decryption context for key with the padding nid asks for (OAEP parameters in oaep; the label moves to it). */
static int
ktri_ctx(EVP_PKEY *key, int nid, struct oaep *oaep, EVP_PKEY_CTX **out)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
	int rc = 0;

	*out = NULL;
	if (ctx == NULL || EVP_PKEY_decrypt_init(ctx) <= 0)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "RSA decryption");
	else if (nid == NID_rsaEncryption && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "RSA decryption");
	else if (nid != NID_rsaEncryption && (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, oaep->md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, oaep->mgf1) <= 0))
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "RSA-OAEP decryption");
	else if (nid != NID_rsaEncryption && oaep->label != NULL) {
		if (EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, oaep->label, (int)oaep->label_len) <= 0)
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "RSA-OAEP label");
		else
			oaep->label = NULL;     /* the context owns it now */
	}
	if (rc != 0) {
		EVP_PKEY_CTX_free(ctx);
		return rc;
	}
	*out = ctx;
	return 0;
}

/* RSA-decrypt the encrypted key into the secure heap and hand it to finish_cek. */
static int
ktri_decrypt(EVP_PKEY_CTX *ctx, const ASN1_OCTET_STRING *ek, struct release_out *out)
{
	const unsigned char *in = ASN1_STRING_get0_data(ek);
	size_t inlen = (size_t)ASN1_STRING_length(ek), cap = 0, olen;
	unsigned char *buf;

	if (EVP_PKEY_decrypt(ctx, NULL, &cap, in, inlen) <= 0 || cap == 0 || cap > MAX_RSA_OUT)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "RSA decryption");
	if ((buf = OPENSSL_secure_malloc(cap)) == NULL)
		return KMS_ERR_NOMEM;
	olen = cap;
	if (EVP_PKEY_decrypt(ctx, buf, &olen, in, inlen) <= 0) {
		/* One message for every failure: no padding oracle in the reply. */
		ERR_clear_error();
		OPENSSL_secure_clear_free(buf, cap);
		return kms_fail(KMS_ERR_CRYPTO, "cannot decrypt the content-encryption key "
		    "(wrong key or damaged RecipientInfo)");
	}
	return finish_cek(buf, olen, cap, out);
}

static int
release_ktri(const ESC_KTRI *ktri, EVP_PKEY *const *keys, X509 *const *certs, size_t nkeys,
    struct release_out *out)
{
	struct oaep oaep = { NULL, NULL, NULL, 0 };
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *key;
	size_t i = ktri_recipient(ktri, certs, nkeys);
	long version;
	int nid, rc;

	if (i == nkeys)
		return kms_fail(KMS_ERR_NOTFOUND, "the RecipientInfo is not addressed to any of this user's keys");
	key = keys[i];
	version = ASN1_INTEGER_get(ktri->version);
	if (version != 0 && version != 2)
		return kms_fail(KMS_ERR_INVALID, "KeyTransRecipientInfo version %ld", version);
	if (!EVP_PKEY_is_a(key, "RSA"))
		return kms_fail(KMS_ERR_INVALID, "key transport to a key that is not RSA");
	nid = alg_nid(ktri->alg);
	if (nid == NID_rsaEncryption) {
		if (!esc_asn1_params_empty(ktri->alg))
			return kms_fail(KMS_ERR_INVALID, "rsaEncryption with parameters");
	} else if (nid == NID_rsaesOaep) {
		if ((rc = parse_oaep(ktri->alg, &oaep)) != 0)
			return rc;
	} else {
		return unsupported("key transport algorithm", ktri->alg);
	}
	if (ASN1_STRING_length(ktri->ek) != EVP_PKEY_get_size(key))
		rc = kms_fail(KMS_ERR_INVALID, "encrypted key of %d bytes for a %d-byte RSA key",
		    ASN1_STRING_length(ktri->ek), EVP_PKEY_get_size(key));
	else if ((rc = ktri_ctx(key, nid, &oaep, &ctx)) == 0 && (rc = ktri_decrypt(ctx, ktri->ek, out)) == 0)
		out->which = i;
	OPENSSL_free(oaep.label);
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* ------------------------------------------------------------- key agreement */

static const struct {
	int nid;
	int cofactor;
	int md_nid;
	const char *md_name;
} kari_kdfs[] = {
	{ NID_dhSinglePass_stdDH_sha1kdf_scheme, 0, NID_sha1, "SHA1" },
	{ NID_dhSinglePass_stdDH_sha224kdf_scheme, 0, NID_sha224, "SHA224" },
	{ NID_dhSinglePass_stdDH_sha256kdf_scheme, 0, NID_sha256, "SHA256" },
	{ NID_dhSinglePass_stdDH_sha384kdf_scheme, 0, NID_sha384, "SHA384" },
	{ NID_dhSinglePass_stdDH_sha512kdf_scheme, 0, NID_sha512, "SHA512" },
	{ NID_dhSinglePass_cofactorDH_sha1kdf_scheme, 1, NID_sha1, "SHA1" },
	{ NID_dhSinglePass_cofactorDH_sha224kdf_scheme, 1, NID_sha224, "SHA224" },
	{ NID_dhSinglePass_cofactorDH_sha256kdf_scheme, 1, NID_sha256, "SHA256" },
	{ NID_dhSinglePass_cofactorDH_sha384kdf_scheme, 1, NID_sha384, "SHA384" },
	{ NID_dhSinglePass_cofactorDH_sha512kdf_scheme, 1, NID_sha512, "SHA512" },
};

static const EVP_CIPHER *
wrap_cipher(int nid)
{
	switch (nid) {
	case NID_id_aes128_wrap:
		return EVP_aes_128_wrap();
	case NID_id_aes192_wrap:
		return EVP_aes_192_wrap();
	case NID_id_aes256_wrap:
		return EVP_aes_256_wrap();
	default:
		return NULL;
	}
}

/* The originator's ephemeral public key, on the curve of our key. */
static int
originator_key(const ESC_ORIGINATOR *orig, EVP_PKEY *key, EVP_PKEY **peer)
{
	const ESC_ORIG_PUBKEY *opk;
	const ASN1_OBJECT *obj;
	const void *pval;
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = NULL;
	char group[80];
	size_t glen = 0;
	int ptype, rc;

	*peer = NULL;
	if (orig->type != ESC_ORIG_KEY)
		return kms_fail(KMS_ERR_INVALID, "key agreement with a static originator key is not supported");
	opk = orig->d.key;
	X509_ALGOR_get0(&obj, &ptype, &pval, opk->alg);
	if (OBJ_obj2nid(obj) != NID_X9_62_id_ecPublicKey)
		return unsupported("originator key algorithm", opk->alg);
	if (EVP_PKEY_get_group_name(key, group, sizeof(group), &glen) != 1) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "the recipient key has no named curve");
	}
	/* Parameters absent, NULL, or the recipient's own named curve. */
	if (ptype == V_ASN1_OBJECT) {
		if (OBJ_obj2nid(pval) != OBJ_txt2nid(group))
			return kms_fail(KMS_ERR_INVALID, "originator key is on another curve than the recipient's");
	} else if (ptype != V_ASN1_UNDEF && ptype != V_ASN1_NULL) {
		return kms_fail(KMS_ERR_INVALID, "originator key with explicit curve parameters");
	}
	if ((opk->pub->flags & ASN1_STRING_FLAG_BITS_LEFT) && (opk->pub->flags & 0x07) != 0)
		return kms_fail(KMS_ERR_INVALID, "originator public key is not a whole number of bytes");
	if (opk->pub->length < 1 || opk->pub->length > 256)
		return kms_fail(KMS_ERR_INVALID, "originator public key of bad length");

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, opk->pub->data,
	    (size_t)opk->pub->length);
	params[2] = OSSL_PARAM_construct_end();
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, peer, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		ERR_clear_error();
		rc = kms_fail(KMS_ERR_INVALID, "originator public key is not a point on the recipient's curve");
	} else {
		rc = 0;
	}
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* ECDH shared secret Z (secure heap). */
static int
ecdh(EVP_PKEY *key, EVP_PKEY *peer, int cofactor, unsigned char **z, size_t *zlen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
	unsigned char *buf = NULL;
	size_t cap = 0, n;
	int rc = KMS_ERR_CRYPTO;

	*z = NULL;
	*zlen = 0;
	if (ctx == NULL || EVP_PKEY_derive_init(ctx) <= 0 ||
	    (cofactor && EVP_PKEY_CTX_set_ecdh_cofactor_mode(ctx, 1) <= 0)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "ECDH");
		goto out;
	}
	if (EVP_PKEY_derive_set_peer_ex(ctx, peer, 1) <= 0) {
		ERR_clear_error();
		rc = kms_fail(KMS_ERR_INVALID, "originator public key rejected");
		goto out;
	}
	if (EVP_PKEY_derive(ctx, NULL, &cap) <= 0 || cap == 0 || cap > 256) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "ECDH");
		goto out;
	}
	buf = OPENSSL_secure_malloc(cap);
	if (buf == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	n = cap;
	if (EVP_PKEY_derive(ctx, buf, &n) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "ECDH");
		goto out;
	}
	*z = buf;
	*zlen = n;
	buf = NULL;
	rc = 0;
out:
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, cap);
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* DER of ECC-CMS-SharedInfo for wrap_nid, ukm and a KEK of keklen bytes. */
static int
shared_info(int wrap_nid, const ASN1_OCTET_STRING *ukm, size_t keklen, unsigned char **der, int *len)
{
	ESC_SHARED_INFO *si = (ESC_SHARED_INFO *)ASN1_item_new(ASN1_ITEM_rptr(ESC_SHARED_INFO));
	unsigned char bits[4];
	size_t nbits = keklen * 8;
	int rc = KMS_ERR_NOMEM;

	*der = NULL;
	*len = 0;
	if (si == NULL)
		return KMS_ERR_NOMEM;
	bits[0] = (unsigned char)(nbits >> 24);
	bits[1] = (unsigned char)(nbits >> 16);
	bits[2] = (unsigned char)(nbits >> 8);
	bits[3] = (unsigned char)nbits;
	/* keyInfo: the wrap algorithm, parameters absent (RFC 5753 7.2). */
	if (X509_ALGOR_set0(si->key_info, OBJ_nid2obj(wrap_nid), V_ASN1_UNDEF, NULL) != 1)
		goto out;
	if (ukm != NULL && (si->entity_uinfo = ASN1_OCTET_STRING_dup(ukm)) == NULL)
		goto out;
	if (ASN1_OCTET_STRING_set(si->supp_pub_info, bits, sizeof(bits)) != 1)
		goto out;
	*len = ASN1_item_i2d((ASN1_VALUE *)si, der, ASN1_ITEM_rptr(ESC_SHARED_INFO));
	if (*len <= 0) {
		*der = NULL;
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encode ECC-CMS-SharedInfo");
		goto out;
	}
	rc = 0;
out:
	ASN1_item_free((ASN1_VALUE *)si, ASN1_ITEM_rptr(ESC_SHARED_INFO));
	return rc;
}

static int
x963_kdf(const char *md_name, const unsigned char *z, size_t zlen, const unsigned char *info, size_t ilen,
    unsigned char *kek, size_t keklen)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[4];
	int rc = 0;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md_name, 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)z, zlen);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, ilen);
	params[3] = OSSL_PARAM_construct_end();
	if (kctx == NULL || EVP_KDF_derive(kctx, kek, keklen, params) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "X9.63 KDF");
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return rc;
}

/* AES key unwrap (RFC 3394) of ek under kek into the secure heap. */
static int
unwrap(const EVP_CIPHER *cipher, const unsigned char *kek, const ASN1_OCTET_STRING *ek,
    struct release_out *out)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int eklen = ASN1_STRING_length(ek), ol = 0, fl = 0, rc;
	unsigned char *buf = NULL;
	size_t cap;

	if (c == NULL)
		return KMS_ERR_NOMEM;
	if (eklen < MIN_CEK + 8 || eklen > MAX_CEK + 8 || eklen % 8 != 0) {
		rc = kms_fail(KMS_ERR_INVALID, "wrapped key of bad length (%d bytes)", eklen);
		goto out;
	}
	cap = (size_t)eklen + 16;
	buf = OPENSSL_secure_malloc(cap);
	if (buf == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_DecryptInit_ex(c, cipher, NULL, kek, NULL) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "AES key unwrap");
		goto out;
	}
	if (EVP_DecryptUpdate(c, buf, &ol, ASN1_STRING_get0_data(ek), eklen) != 1 || ol <= 0 ||
	    EVP_DecryptFinal_ex(c, buf + ol, &fl) != 1) {
		ERR_clear_error();
		rc = kms_fail(KMS_ERR_CRYPTO, "cannot decrypt the content-encryption key "
		    "(wrong key or damaged RecipientInfo)");
		goto out;
	}
	rc = finish_cek(buf, (size_t)ol + (size_t)fl, cap, out);
	buf = NULL;
out:
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, cap);
	EVP_CIPHER_CTX_free(c);
	return rc;
}

static int
release_kari(const ESC_KARI *kari, EVP_PKEY *const *keys, X509 *const *certs, size_t nkeys,
    struct release_out *out)
{
	const ESC_REK *rek = NULL;
	const EVP_CIPHER *wrap;
	X509_ALGOR *walg = NULL;
	EVP_PKEY *peer = NULL;
	unsigned char *z = NULL, *kek = NULL, *info = NULL;
	size_t i = 0, zlen = 0, keklen = 0, k;
	int nkdf = -1, nid, wrap_nid, ilen = 0, rc;

	for (int r = 0; r < sk_ESC_REK_num(kari->reks) && rek == NULL; r++) {
		const ESC_REK *cand = sk_ESC_REK_value(kari->reks, r);

		for (i = 0; i < nkeys; i++) {
			const ESC_KARID *rid = cand->rid;

			if (rid->type == ESC_KARID_ISSUER_SERIAL ? esc_iasn_matches(rid->d.iasn, certs[i]) :
			    rid->type == ESC_KARID_RKEYID && esc_ski_matches(rid->d.rkeyid->ski, certs[i])) {
				rek = cand;
				break;
			}
		}
	}
	if (rek == NULL)
		return kms_fail(KMS_ERR_NOTFOUND, "the RecipientInfo is not addressed to any of this user's keys");

	if (ASN1_INTEGER_get(kari->version) != 3)
		return kms_fail(KMS_ERR_INVALID, "KeyAgreeRecipientInfo version %ld",
		    ASN1_INTEGER_get(kari->version));
	if (!EVP_PKEY_is_a(keys[i], "EC"))
		return kms_fail(KMS_ERR_INVALID, "key agreement to a key that is not EC");
	nid = alg_nid(kari->alg);
	for (k = 0; k < sizeof(kari_kdfs) / sizeof(kari_kdfs[0]); k++)
		if (kari_kdfs[k].nid == nid)
			nkdf = (int)k;
	if (nkdf < 0)
		return unsupported("key agreement algorithm", kari->alg);
	walg = esc_asn1_decode_params(ASN1_ITEM_rptr(X509_ALGOR), kari->alg);
	if (walg == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "malformed key wrap algorithm in the key agreement parameters");
	}
	wrap_nid = alg_nid(walg);
	if ((wrap = wrap_cipher(wrap_nid)) == NULL) {
		rc = unsupported("key wrap algorithm", walg);
		goto out;
	}
	if (!esc_asn1_params_empty(walg)) {
		rc = kms_fail(KMS_ERR_INVALID, "AES key wrap with parameters");
		goto out;
	}
	keklen = (size_t)EVP_CIPHER_get_key_length(wrap);

	if ((rc = originator_key(kari->originator, keys[i], &peer)) != 0)
		goto out;
	if ((rc = ecdh(keys[i], peer, kari_kdfs[nkdf].cofactor, &z, &zlen)) != 0)
		goto out;
	if ((rc = shared_info(wrap_nid, kari->ukm, keklen, &info, &ilen)) != 0)
		goto out;
	kek = OPENSSL_secure_malloc(keklen);
	if (kek == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if ((rc = x963_kdf(kari_kdfs[nkdf].md_name, z, zlen, info, (size_t)ilen, kek, keklen)) != 0)
		goto out;
	if ((rc = unwrap(wrap, kek, rek->ek, out)) != 0)
		goto out;
	out->which = i;
out:
	X509_ALGOR_free(walg);
	EVP_PKEY_free(peer);
	if (z != NULL)
		OPENSSL_secure_clear_free(z, zlen);
	if (kek != NULL)
		OPENSSL_secure_clear_free(kek, keklen);
	OPENSSL_free(info);
	return rc;
}

/* ------------------------------------------------------------------ entry */

int
esc_release_cek(const unsigned char *ri_der, size_t ri_len, EVP_PKEY *const *keys, X509 *const *certs,
    size_t nkeys, unsigned char **cek, size_t *cek_len, size_t *which)
{
	struct release_out out = { NULL, 0, 0 };
	ESC_RI *ri;
	int rc;

	*cek = NULL;
	*cek_len = 0;
	*which = 0;
	if (ri_der == NULL || ri_len == 0)
		return kms_fail(KMS_ERR_INVALID, "no RecipientInfo");
	if (ri_len > MAX_RI)
		return kms_fail(KMS_ERR_TOOBIG, "RecipientInfo too large (%zu bytes)", ri_len);
	if (nkeys > 0 && (keys == NULL || certs == NULL))
		return kms_fail(KMS_ERR_INVALID, "no keys");
	for (size_t i = 0; i < nkeys; i++)
		if (keys[i] == NULL || certs[i] == NULL)
			return kms_fail(KMS_ERR_INVALID, "key %zu has no key or no certificate", i);
	ri = esc_asn1_decode_exact(ASN1_ITEM_rptr(ESC_RI), ri_der, ri_len);
	if (ri == NULL) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "not a valid RecipientInfo");
	}
	switch (ri->type) {
	case ESC_RI_KTRI:
		rc = release_ktri(ri->d.ktri, keys, certs, nkeys, &out);
		break;
	case ESC_RI_KARI:
		rc = release_kari(ri->d.kari, keys, certs, nkeys, &out);
		break;
	/* These name a shared key, a password or something else: never one of the user's keys. */
	case ESC_RI_KEKRI:
		rc = kms_fail(KMS_ERR_NOTFOUND, "a KEK recipient (shared symmetric key) is not addressed to a user's key");
		break;
	case ESC_RI_PWRI:
		rc = kms_fail(KMS_ERR_NOTFOUND, "a password recipient is not addressed to a user's key");
		break;
	default:
		rc = kms_fail(KMS_ERR_NOTFOUND, "an OtherRecipientInfo is not addressed to a user's key");
		break;
	}
	ASN1_item_free((ASN1_VALUE *)ri, ASN1_ITEM_rptr(ESC_RI));
	if (rc != 0)
		return rc;
	*cek = out.cek;
	*cek_len = out.len;
	*which = out.which;
	return 0;
}
