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

#endif /* KMS_CA_LOCAL_H */
