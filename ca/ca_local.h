/*
 * ca_local.h - helpers private to libkmsca, shared by the files that build
 * certificates (root.c, issue.c) and read them back (certs.c).  Not part of
 * the module's interface: nothing outside ca/ includes it.
 */
#ifndef KMS_CA_LOCAL_H
#define KMS_CA_LOCAL_H

#include <time.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* Bits of the keyUsage BIT STRING (RFC 5280 4.2.1.3). */
#define CA_KU_DIGITAL_SIGNATURE 0
#define CA_KU_NON_REPUDIATION   1
#define CA_KU_KEY_ENCIPHERMENT  2
#define CA_KU_KEY_AGREEMENT     4
#define CA_KU_KEY_CERT_SIGN     5
#define CA_KU_CRL_SIGN          6

/* ub-common-name and ub-organization-name, in characters (RFC 5280 A.1). */
#define CA_UB_NAME 64

/*
 * A fresh positive serial of exactly 16 octets in DER: 127 random bits
 * with the top bit clear (so no sign octet is needed) and a non-zero first
 * octet.  *out is the caller's.
 */
int ca_rand_serial(ASN1_INTEGER **out);

/*
 * A new v3 certificate: random serial, notBefore now, notAfter now + days,
 * subject (copied), public key (get1 inside).  No extensions, unsigned.
 */
int ca_cert_begin(const X509_NAME *subject, EVP_PKEY *pubkey, int days, X509 **out);

/* Add a keyUsage extension (critical) with the given CA_KU_* bits set. */
int ca_add_key_usage(X509 *x, const int *bits, size_t n);
/* basicConstraints, critical, cA TRUE or FALSE, no pathLenConstraint. */
int ca_add_basic_constraints(X509 *x, int is_ca);
/*
 * subjectKeyIdentifier (SHA-1 of the subjectPublicKey, RFC 5280 4.2.1.2
 * method 1) and authorityKeyIdentifier keyIdentifier.  issuer_skid NULL
 * means self-signed: the AKI repeats the new SKI.
 */
int ca_add_key_ids(X509 *x, const ASN1_OCTET_STRING *issuer_skid);

/* NID of an EC key's named curve, or NID_undef. */
int ca_ec_curve_nid(const EVP_PKEY *key);
/* SHA-384 for a P-384 or larger EC key, SHA-256 otherwise. */
const EVP_MD *ca_sign_digest(const EVP_PKEY *key);
/* Sign x with key using ca_sign_digest(key). */
int ca_sign(X509 *x, EVP_PKEY *key);

/* One-line RFC 2253 form of a name, malloc'd (NULL when out of memory). */
char *ca_name_oneline(const X509_NAME *n);
/* ASN1_TIME to seconds since the epoch (UTC); 0 or KMS_ERR_INVALID. */
int ca_asn1_time_to_time(const ASN1_TIME *t, time_t *out);
/* Number of UTF-8 characters in s, or -1 if s is not valid UTF-8 or holds controls. */
long ca_utf8_chars(const char *s);
/* The subject key identifier of cert: its SKI extension, else computed; lowercase hex, malloc'd. */
char *ca_cert_ski_hex(X509 *cert);

/*
 * A kind of delegated signer (signer.c): a short-lived key our CA certifies
 * for one job.  what names it in errors; the subject is the CA's O and CN
 * "<O><cn_suffix>" (cn_suffix starts with a space; without the space when
 * there is no O or it is too long); add_extensions (may be NULL) adds what
 * the job needs; meta_cert and meta_key are where the store keeps it.
 */
struct ca;
struct kms_store;
struct ca_signer_kind {
	const char *what;
	const char *cn_suffix;
	const char *meta_cert;
	const char *meta_key;
	int (*add_extensions)(X509 *x);
};

/* The subject of a signer of this kind under ca_cert (*out the caller's). */
int ca_signer_subject(const struct ca_signer_kind *kind, X509 *ca_cert, X509_NAME **out);
/* Issue one for pubkey, valid lifetime seconds (1 h to 90 days, never past the CA). */
int ca_signer_issue(const struct ca_signer_kind *kind, const struct ca *ca, EVP_PKEY *pubkey, long lifetime,
    X509 **out);
/* Keep it in the store, the key encrypted like the CA key (ca_key_encrypt). */
int ca_signer_save(const struct ca_signer_kind *kind, struct kms_store *st, X509 *cert, EVP_PKEY *key,
    const char *passphrase);
/*
 * Load the stored one, checking that ca_cert (may be NULL) issued it and
 * that the key is its own.  KMS_ERR_NOTFOUND when there is none,
 * KMS_ERR_PERM on a wrong passphrase, KMS_ERR_STATE if another CA issued it.
 */
int ca_signer_load(const struct ca_signer_kind *kind, struct kms_store *st, X509 *ca_cert, const char *passphrase,
    X509 **cert, EVP_PKEY **key);
/* 1 when cert should be replaced now: past half of lifetime, or issued for a longer one. */
int ca_signer_due(X509 *cert, long lifetime, time_t now);
/* The stored one while not due, else a new key of key_type and certificate, saved; *renewed says which. */
int ca_signer_ensure(const struct ca_signer_kind *kind, struct kms_store *st, const struct ca *ca,
    const char *passphrase, const char *key_type, long lifetime, time_t now, X509 **cert, EVP_PKEY **key,
    int *renewed);

/* audit_ckpt.c for audit_verify.c: the chain hash of row seq (KMS_ERR_NOTFOUND: no such row). */
int ca_audit_chain_hash_at(struct kms_store *st, long long seq, char out[65]);
/* A row of SELECT no, seq, head, time ... FROM audit_checkpoints into ck. */
struct ca_audit_ckpt;
void ca_audit_ckpt_from_row(sqlite3_stmt *s, struct ca_audit_ckpt *ck);

#endif /* KMS_CA_LOCAL_H */
