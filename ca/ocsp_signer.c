/*
 * ocsp_signer.c - the delegated OCSP signer: its certificate profile, and
 * keeping it (certificate and encrypted key) in the store.
 *
 * Entry points: ca_ocsp_issue_signer(), ca_ocsp_signer_load(),
 * ca_ocsp_signer_save(), ca_ocsp_signer_ensure(), ca_ocsp_signer_due(),
 * ca_ocsp_signer_check(), ca_key_fingerprint(), ca_ocsp_replica_key(),
 * ca_ocsp_replica_cert_save(), ca_ocsp_replica_cert_load().
 *
 * The CA key signs the signer's certificate and nothing else of OCSP's
 * (RFC 6960 4.2.2.2): responses are signed by a short-lived key of their
 * own, so the CA key is needed once per renewal, not per response.
 * Profile: basicConstraints cA FALSE (critical), keyUsage digitalSignature
 * (critical), extKeyUsage id-kp-OCSPSigning, id-pkix-ocsp-nocheck (clients
 * do not ask about the signer itself: it lives too short for that to
 * matter), SKI, AKI; no CRL distribution point and no AIA.
 *
 * The signer's key is kept like the CA key (PKCS#8, scrypt, AES-256-CBC,
 * under the CA passphrase), its certificate in PEM, both in the meta table
 * (signer.c does that, and the profile common to every delegated signer).
 * Replicas' signers outlive a restart of either side: the primary keeps
 * each certificate it issued to a replica (the replica's key never leaves
 * the replica), the replica its key (encrypted) and the certificate it
 * fetched, so a replica restarted while the primary is down still signs.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

#define META_CERT "ocsp_signer_cert"
#define META_KEY "ocsp_signer_key"
#define META_REPLICA_KEY "ocsp_replica_key"
#define META_REPLICA_CERT "ocsp_replica_cert"
#define META_REPLICA_SIGNER "ocsp_replica_signer:"
#define SIGNER_CN_SUFFIX " OCSP Responder"

static int
add_ocsp_extensions(X509 *x)
{
	EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
	ASN1_NULL *nocheck = ASN1_NULL_new();
	int rc = 0;

	if (eku == NULL || nocheck == NULL || !sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_OCSP_sign)))
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "OCSP signer extensions");
	else if (X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_REPLACE) != 1 ||
	    X509_add1_ext_i2d(x, NID_id_pkix_OCSP_noCheck, nocheck, 0, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding the OCSP signer extensions");
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
	ASN1_NULL_free(nocheck);
	return rc;
}

static const struct ca_signer_kind ocsp_kind = {
	.what = "OCSP signer", .cn_suffix = SIGNER_CN_SUFFIX, .meta_cert = META_CERT, .meta_key = META_KEY,
	.add_extensions = add_ocsp_extensions,
};

int
ca_ocsp_issue_signer(const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out)
{
	return ca_signer_issue(&ocsp_kind, ca, pubkey, lifetime, out);
}

int
ca_ocsp_signer_save(struct kms_store *st, X509 *cert, EVP_PKEY *key, const char *passphrase)
{
	return ca_signer_save(&ocsp_kind, st, cert, key, passphrase);
}

int
ca_ocsp_signer_load(struct kms_store *st, X509 *ca_cert, const char *passphrase, X509 **cert, EVP_PKEY **key)
{
	return ca_signer_load(&ocsp_kind, st, ca_cert, passphrase, cert, key);
}

int
ca_ocsp_signer_due(X509 *cert, long lifetime, time_t now)
{
	return ca_signer_due(cert, lifetime, now);
}

int
ca_ocsp_signer_ensure(struct kms_store *st, const struct ca *ca, const char *passphrase, const char *key_type,
    long lifetime, time_t now, X509 **cert, EVP_PKEY **key, int *renewed)
{
	return ca_signer_ensure(&ocsp_kind, st, ca, passphrase, key_type, lifetime, now, cert, key, renewed);
}

char *
ca_key_fingerprint(EVP_PKEY *key)
{
	unsigned char *der = NULL, md[32];
	unsigned int mdlen = 0;
	char *hex = NULL;
	int n;

	if (key == NULL || (n = i2d_PUBKEY(key, &der)) <= 0)
		goto out;
	if (EVP_Digest(der, (size_t)n, md, &mdlen, EVP_sha256(), NULL))
		hex = kms_hex(md, mdlen);
out:
	ERR_clear_error();
	OPENSSL_free(der);
	return hex;
}

int
ca_ocsp_signer_check(X509 *cert, X509 *ca_cert, EVP_PKEY *key, time_t now)
{
	time_t nb, na;

	if (cert == NULL || ca_cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "no signer or CA certificate");
	if (X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca_cert)) != 0 ||
	    X509_verify(cert, X509_get0_pubkey(ca_cert)) != 1) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "the OCSP signer certificate was not issued by our CA");
	}
	if (!(X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) || !(X509_get_extended_key_usage(cert) & XKU_OCSP_SIGN))
		return kms_fail(KMS_ERR_INVALID, "the OCSP signer certificate lacks id-kp-OCSPSigning");
	if (key != NULL && !EVP_PKEY_eq(X509_get0_pubkey(cert), key)) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "the OCSP signer certificate is for another key");
	}
	if (ca_asn1_time_to_time(X509_get0_notBefore(cert), &nb) != 0 ||
	    ca_asn1_time_to_time(X509_get0_notAfter(cert), &na) != 0 || now < nb || now >= na)
		return kms_fail(KMS_ERR_INVALID, "the OCSP signer certificate is not valid now");
	return 0;
}

int
ca_ocsp_replica_key(struct kms_store *st, const char *passphrase, const char *key_type, EVP_PKEY **out,
    int *created)
{
	char *pem = NULL;
	size_t len = 0;
	EVP_PKEY *k = NULL;
	int rc;

	*out = NULL;
	*created = 0;
	rc = kms_store_meta_get(st, META_REPLICA_KEY, &pem);
	if (rc == 0) {
		rc = ca_key_decrypt(pem, strlen(pem), passphrase, out);
		free(pem);
		return rc;
	}
	if (rc != KMS_ERR_NOTFOUND)
		return rc;
	if ((rc = ca_keygen(key_type, &k)) != 0 || (rc = ca_key_encrypt(k, passphrase, &pem, &len)) != 0 ||
	    (rc = kms_store_meta_set(st, META_REPLICA_KEY, pem)) != 0) {
		EVP_PKEY_free(k);
		free(pem);
		return rc;
	}
	free(pem);
	*out = k;
	*created = 1;
	return 0;
}

/* The meta key of a stored signer certificate: "ocsp_replica_signer:<fp>" on a primary, "ocsp_replica_cert" on a replica. */
static int
cert_meta_key(const char *fp, char *buf, size_t size)
{
	int n;

	if (fp == NULL)
		n = snprintf(buf, size, "%s", META_REPLICA_CERT);
	else if (strlen(fp) != 64 || strspn(fp, "0123456789abcdef") != 64)
		return kms_fail(KMS_ERR_INVALID, "not a key fingerprint");
	else
		n = snprintf(buf, size, "%s%s", META_REPLICA_SIGNER, fp);
	return n < 0 || (size_t)n >= size ? kms_fail(KMS_ERR_TOOBIG, "meta key") : 0;
}

int
ca_ocsp_replica_cert_save(struct kms_store *st, const char *fp, X509 *cert)
{
	char key[128], *data, *pem = NULL;
	BIO *b = NULL;
	long n;
	int rc;

	if (st == NULL || cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "no store or certificate");
	if ((rc = cert_meta_key(fp, key, sizeof(key))) != 0)
		return rc;
	if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, cert) ||
	    (n = BIO_get_mem_data(b, &data)) <= 0 || (pem = strndup(data, (size_t)n)) == NULL) {
		BIO_free(b);
		return kms_fail_openssl(KMS_ERR_NOMEM, "OCSP signer certificate");
	}
	BIO_free(b);
	rc = kms_store_meta_set(st, key, pem);
	free(pem);
	return rc;
}

int
ca_ocsp_replica_cert_load(struct kms_store *st, const char *fp, X509 **out)
{
	char key[128], *pem = NULL;
	BIO *b = NULL;
	int rc;

	*out = NULL;
	if ((rc = cert_meta_key(fp, key, sizeof(key))) != 0 || (rc = kms_store_meta_get(st, key, &pem)) != 0)
		return rc;
	if ((b = BIO_new_mem_buf(pem, -1)) == NULL || (*out = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL)
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored OCSP signer certificate %s", key);
	BIO_free(b);
	free(pem);
	return rc;
}
