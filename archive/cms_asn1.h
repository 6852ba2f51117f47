/*
 * cms_asn1.h - libkmsarchive internal: our own ASN.1 templates for the
 * parts of CMS (RFC 5652, 5083, 5753, 8017) that OpenSSL parses but does
 * not expose: RecipientInfo in full, EnvelopedData and AuthEnvelopedData
 * with their encrypted content, RSAES-OAEP parameters and the
 * ECC-CMS-SharedInfo of the X9.63 KDF.  Used by release.c (kmsd side),
 * enveloped.c (kmsctl side) and envelope.c (opening escrow envelopes).
 * Not part of the module's public interface.
 *
 * Type names follow the OpenSSL template macros, which need one identifier
 * per type; they are prefixed ESC_ to keep them ours.
 */
#ifndef KMS_ARCHIVE_CMS_ASN1_H
#define KMS_ARCHIVE_CMS_ASN1_H

#include <openssl/asn1.h>
#include <openssl/asn1t.h>
#include <openssl/safestack.h>
#include <openssl/x509.h>

/* IssuerAndSerialNumber */
typedef struct esc_issuer_serial {
	X509_NAME *issuer;
	ASN1_INTEGER *serial;
} ESC_ISSUER_SERIAL;

/* RecipientIdentifier ::= CHOICE { issuerAndSerialNumber, [0] subjectKeyIdentifier } */
#define ESC_RID_ISSUER_SERIAL 0
#define ESC_RID_SKI 1
typedef struct esc_rid {
	int type;
	union {
		ESC_ISSUER_SERIAL *iasn;
		ASN1_OCTET_STRING *ski;
	} d;
} ESC_RID;

/* KeyTransRecipientInfo */
typedef struct esc_ktri {
	ASN1_INTEGER *version;
	ESC_RID *rid;
	X509_ALGOR *alg;
	ASN1_OCTET_STRING *ek;
} ESC_KTRI;

/* OriginatorPublicKey */
typedef struct esc_orig_pubkey {
	X509_ALGOR *alg;
	ASN1_BIT_STRING *pub;
} ESC_ORIG_PUBKEY;

/* OriginatorIdentifierOrKey */
#define ESC_ORIG_ISSUER_SERIAL 0
#define ESC_ORIG_SKI 1
#define ESC_ORIG_KEY 2
typedef struct esc_originator {
	int type;
	union {
		ESC_ISSUER_SERIAL *iasn;
		ASN1_OCTET_STRING *ski;
		ESC_ORIG_PUBKEY *key;
	} d;
} ESC_ORIGINATOR;

/* OtherKeyAttribute */
typedef struct esc_other_key_attr {
	ASN1_OBJECT *id;
	ASN1_TYPE *attr;
} ESC_OTHER_KEY_ATTR;

/* RecipientKeyIdentifier */
typedef struct esc_rkeyid {
	ASN1_OCTET_STRING *ski;
	ASN1_GENERALIZEDTIME *date;
	ESC_OTHER_KEY_ATTR *other;
} ESC_RKEYID;

/* KeyAgreeRecipientIdentifier ::= CHOICE { issuerAndSerialNumber, [0] rKeyId } */
#define ESC_KARID_ISSUER_SERIAL 0
#define ESC_KARID_RKEYID 1
typedef struct esc_karid {
	int type;
	union {
		ESC_ISSUER_SERIAL *iasn;
		ESC_RKEYID *rkeyid;
	} d;
} ESC_KARID;

/* RecipientEncryptedKey */
typedef struct esc_rek {
	ESC_KARID *rid;
	ASN1_OCTET_STRING *ek;
} ESC_REK;
DEFINE_STACK_OF(ESC_REK)

/* KeyAgreeRecipientInfo */
typedef struct esc_kari {
	ASN1_INTEGER *version;
	ESC_ORIGINATOR *originator;
	ASN1_OCTET_STRING *ukm;
	X509_ALGOR *alg;
	STACK_OF(ESC_REK) *reks;
} ESC_KARI;

/*
 * RecipientInfo.  kekri, pwri and ori are kept in their encoded form: we
 * never decrypt them, but a message that also carries one must parse.
 */
#define ESC_RI_KTRI 0
#define ESC_RI_KARI 1
#define ESC_RI_KEKRI 2
#define ESC_RI_PWRI 3
#define ESC_RI_ORI 4
typedef struct esc_ri {
	int type;
	union {
		ESC_KTRI *ktri;
		ESC_KARI *kari;
		ASN1_STRING *other;
	} d;
} ESC_RI;
DEFINE_STACK_OF(ESC_RI)

/* EncryptedContentInfo (also AuthEnvelopedData's authEncryptedContentInfo) */
typedef struct esc_eci {
	ASN1_OBJECT *type;
	X509_ALGOR *alg;
	ASN1_OCTET_STRING *content;     /* NULL when detached */
} ESC_ECI;

/* EnvelopedData */
typedef struct esc_env {
	ASN1_INTEGER *version;
	ASN1_STRING *originator_info;   /* encoded, unused */
	STACK_OF(ESC_RI) *ris;
	ESC_ECI *eci;
	ASN1_STRING *unprot_attrs;      /* encoded, unused */
} ESC_ENV;

/* AuthEnvelopedData */
typedef struct esc_authenv {
	ASN1_INTEGER *version;
	ASN1_STRING *originator_info;   /* encoded, unused */
	STACK_OF(ESC_RI) *ris;
	ESC_ECI *eci;
	ASN1_STRING *auth_attrs;        /* encoded with its [1] tag: the AAD */
	ASN1_OCTET_STRING *mac;
	ASN1_STRING *unauth_attrs;      /* encoded, unused */
} ESC_AUTHENV;

/* ContentInfo, the content left as ANY for a second pass */
typedef struct esc_content_info {
	ASN1_OBJECT *type;
	ASN1_TYPE *content;
} ESC_CONTENT_INFO;

/* RSAES-OAEP-params (RFC 8017 A.2.1), every field DEFAULT */
typedef struct esc_oaep_params {
	X509_ALGOR *hash;
	X509_ALGOR *mgf;
	X509_ALGOR *psource;
} ESC_OAEP_PARAMS;

/* GCMParameters (RFC 5084) */
typedef struct esc_gcm_params {
	ASN1_OCTET_STRING *nonce;
	ASN1_INTEGER *icvlen;           /* NULL: DEFAULT 12 */
} ESC_GCM_PARAMS;

/* ECC-CMS-SharedInfo (RFC 5753 7.2) */
typedef struct esc_shared_info {
	X509_ALGOR *key_info;
	ASN1_OCTET_STRING *entity_uinfo;
	ASN1_OCTET_STRING *supp_pub_info;
} ESC_SHARED_INFO;

DECLARE_ASN1_ITEM(ESC_ISSUER_SERIAL)
DECLARE_ASN1_ITEM(ESC_RID)
DECLARE_ASN1_ITEM(ESC_KTRI)
DECLARE_ASN1_ITEM(ESC_ORIG_PUBKEY)
DECLARE_ASN1_ITEM(ESC_ORIGINATOR)
DECLARE_ASN1_ITEM(ESC_OTHER_KEY_ATTR)
DECLARE_ASN1_ITEM(ESC_RKEYID)
DECLARE_ASN1_ITEM(ESC_KARID)
DECLARE_ASN1_ITEM(ESC_REK)
DECLARE_ASN1_ITEM(ESC_KARI)
DECLARE_ASN1_ITEM(ESC_RI)
DECLARE_ASN1_ITEM(ESC_ECI)
DECLARE_ASN1_ITEM(ESC_ENV)
DECLARE_ASN1_ITEM(ESC_AUTHENV)
DECLARE_ASN1_ITEM(ESC_CONTENT_INFO)
DECLARE_ASN1_ITEM(ESC_OAEP_PARAMS)
DECLARE_ASN1_ITEM(ESC_GCM_PARAMS)
DECLARE_ASN1_ITEM(ESC_SHARED_INFO)

/*
 * Decode exactly len bytes of der as it (trailing bytes are an error).
 * Returns the structure or NULL, with the OpenSSL error queue left for
 * the caller to drain.
 */
void *esc_asn1_decode_exact(const ASN1_ITEM *it, const unsigned char *der, size_t len);

/* Decode the parameters of alg (a SEQUENCE) as it; NULL if absent or malformed. */
void *esc_asn1_decode_params(const ASN1_ITEM *it, const X509_ALGOR *alg);

/* Are alg's parameters absent or NULL? */
int esc_asn1_params_empty(const X509_ALGOR *alg);

/* Does rid name cert (issuer and serial, or subject key identifier)? */
int esc_iasn_matches(const ESC_ISSUER_SERIAL *iasn, X509 *cert);
int esc_ski_matches(const ASN1_OCTET_STRING *ski, X509 *cert);
int esc_ri_matches(const ESC_RI *ri, X509 *cert);

/*
 * Module-internal entry points of enveloped.c, for envelope.c: the
 * content decrypted into the secure heap (free with
 * OPENSSL_secure_clear_free), and whether the message is
 * AuthEnvelopedData.
 */
struct esc_enveloped;
int esc_enveloped_decrypt_secure(const struct esc_enveloped *e, const unsigned char *cek, size_t cek_len,
    unsigned char **out, size_t *out_len);
int esc_enveloped_is_auth(const struct esc_enveloped *e);

#endif /* KMS_ARCHIVE_CMS_ASN1_H */
