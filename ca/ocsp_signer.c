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
 * under the CA passphrase), its certificate in PEM, both in the meta table.
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
/* notBefore this far back: a client whose clock runs a little slow still accepts a new signer. */
#define BACKDATE 300

static int
signer_subject(X509 *ca_cert, X509_NAME **out)
{
	const X509_NAME *ca_name = X509_get_subject_name(ca_cert);
	X509_NAME *n = NULL;
	unsigned char *org = NULL;
	char cn[4 * CA_UB_NAME + 1];
	int i, len, rc;

	*out = NULL;
	if ((n = X509_NAME_new()) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "OCSP signer subject");
	snprintf(cn, sizeof(cn), "OCSP Responder");
	if ((i = X509_NAME_get_index_by_NID(ca_name, NID_organizationName, -1)) >= 0) {
		if (!X509_NAME_add_entry(n, X509_NAME_get_entry(ca_name, i), -1, 0)) {
			rc = kms_fail_openssl(KMS_ERR_NOMEM, "OCSP signer subject");
			goto out;
		}
		len = ASN1_STRING_to_UTF8(&org, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(ca_name, i)));
		/* "<org> OCSP Responder" when it fits in ub-common-name, else the plain name. */
		if (len > 0 && ca_utf8_chars((char *)org) > 0 &&
		    ca_utf8_chars((char *)org) + (long)strlen(SIGNER_CN_SUFFIX) <= CA_UB_NAME)
			snprintf(cn, sizeof(cn), "%s%s", (char *)org, SIGNER_CN_SUFFIX);
		ERR_clear_error();
	}
	if (!X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "OCSP signer common name");
		goto out;
	}
	*out = n;
	n = NULL;
	rc = 0;
out:
	OPENSSL_free(org);
	X509_NAME_free(n);
	return rc;
}

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

int
ca_ocsp_issue_signer(const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out)
{
	static const int ku[] = { CA_KU_DIGITAL_SIGNATURE };
	X509_NAME *subject = NULL;
	X509 *x = NULL;
	time_t now = time(NULL);
	int rc;

	*out = NULL;
	if (ca == NULL || ca->cert == NULL || ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded: no OCSP signer can be issued");
	if (pubkey == NULL)
		return kms_fail(KMS_ERR_INVALID, "no key for the OCSP signer");
	if (lifetime < 3600 || lifetime > 90L * 86400)
		return kms_fail(KMS_ERR_INVALID, "OCSP signer lifetime of %ld s is out of range (1 h to 90 days)",
		    lifetime);
	if ((rc = signer_subject(ca->cert, &subject)) != 0 || (rc = ca_cert_begin(subject, pubkey, 1, &x)) != 0)
		goto out;
	if (!X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
	    X509_time_adj_ex(X509_getm_notBefore(x), 0, -BACKDATE, &now) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), 0, lifetime, &now) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "OCSP signer names and validity");
		goto out;
	}
	if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca->cert)) > 0 &&
	    !X509_set1_notAfter(x, X509_get0_notAfter(ca->cert))) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "notAfter");
		goto out;
	}
	if ((rc = ca_add_basic_constraints(x, 0)) != 0 || (rc = ca_add_key_usage(x, ku, 1)) != 0 ||
	    (rc = add_ocsp_extensions(x)) != 0 ||
	    (rc = ca_add_key_ids(x, X509_get0_subject_key_id(ca->cert))) != 0 ||
	    (rc = ca_sign(x, ca->key)) != 0)
		goto out;
	if (X509_verify(x, X509_get0_pubkey(ca->cert)) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "the CA key does not match the CA certificate");
		goto out;
	}
	*out = x;
	x = NULL;
	rc = 0;
out:
	X509_NAME_free(subject);
	X509_free(x);
	return rc;
}

int
ca_ocsp_signer_save(struct kms_store *st, X509 *cert, EVP_PKEY *key, const char *passphrase)
{
	char *kpem = NULL, *cpem = NULL;
	size_t klen = 0;
	BIO *b = NULL;
	long n;
	char *data;
	int rc;

	if (cert == NULL || key == NULL || passphrase == NULL)
		return kms_fail(KMS_ERR_INVALID, "OCSP signer: no certificate, key or passphrase");
	if ((rc = ca_key_encrypt(key, passphrase, &kpem, &klen)) != 0)
		goto out;
	if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, cert) ||
	    (n = BIO_get_mem_data(b, &data)) <= 0 || (cpem = strndup(data, (size_t)n)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "OCSP signer certificate");
		goto out;
	}
	if ((rc = kms_store_begin(st)) != 0)
		goto out;
	if ((rc = kms_store_meta_set(st, META_CERT, cpem)) != 0 || (rc = kms_store_meta_set(st, META_KEY, kpem)) != 0) {
		kms_store_rollback(st);
		goto out;
	}
	rc = kms_store_commit(st);
out:
	BIO_free(b);
	free(cpem);
	free(kpem);
	return rc;
}

int
ca_ocsp_signer_load(struct kms_store *st, X509 *ca_cert, const char *passphrase, X509 **cert, EVP_PKEY **key)
{
	char *cpem = NULL, *kpem = NULL;
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	BIO *b = NULL;
	int rc;

	*cert = NULL;
	*key = NULL;
	if ((rc = kms_store_meta_get(st, META_CERT, &cpem)) != 0 || (rc = kms_store_meta_get(st, META_KEY, &kpem)) != 0)
		goto out;
	if ((b = BIO_new_mem_buf(cpem, -1)) == NULL || (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored OCSP signer certificate");
		goto out;
	}
	/* Issued by this CA (not one replaced since), and the key is its key. */
	if (ca_cert != NULL && (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca_cert)) != 0 ||
	    X509_verify(x, X509_get0_pubkey(ca_cert)) != 1)) {
		rc = kms_fail_openssl(KMS_ERR_STATE, "the stored OCSP signer was not issued by this CA");
		goto out;
	}
	if ((rc = ca_key_decrypt(kpem, strlen(kpem), passphrase, &k)) != 0)
		goto out;
	if (X509_check_private_key(x, k) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored OCSP signer key does not match its certificate");
		goto out;
	}
	*cert = x;
	*key = k;
	x = NULL;
	k = NULL;
	rc = 0;
out:
	BIO_free(b);
	free(cpem);
	free(kpem);
	X509_free(x);
	EVP_PKEY_free(k);
	return rc;
}

int
ca_ocsp_signer_due(X509 *cert, long lifetime, time_t now)
{
	time_t nb, na;

	if (cert == NULL || ca_asn1_time_to_time(X509_get0_notBefore(cert), &nb) != 0 ||
	    ca_asn1_time_to_time(X509_get0_notAfter(cert), &na) != 0)
		return 1;
	/* Renew at half of the configured lifetime, or at once if it is shorter than that. */
	return now + lifetime / 2 >= na || na - nb > lifetime + BACKDATE + 60;
}

int
ca_ocsp_signer_ensure(struct kms_store *st, const struct ca *ca, const char *passphrase, const char *key_type,
    long lifetime, time_t now, X509 **cert, EVP_PKEY **key, int *renewed)
{
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	int rc;

	*cert = NULL;
	*key = NULL;
	*renewed = 0;
	if (ca == NULL || ca->cert == NULL)
		return kms_fail(KMS_ERR_STATE, "no CA");
	rc = ca_ocsp_signer_load(st, ca->cert, passphrase, &x, &k);
	if (rc == KMS_ERR_PERM)
		return rc;      /* a wrong passphrase: never silently replace the signer */
	if (rc == 0 && !ca_ocsp_signer_due(x, lifetime, now))
		goto done;
	if (rc != 0 && rc != KMS_ERR_NOTFOUND)
		kms_log(KMS_LOG_WARNING, "OCSP signer: %s; issuing a new one", kms_last_error());
	X509_free(x);
	EVP_PKEY_free(k);
	x = NULL;
	k = NULL;
	if ((rc = ca_keygen(key_type, &k)) != 0 || (rc = ca_ocsp_issue_signer(ca, k, lifetime, &x)) != 0 ||
	    (rc = ca_ocsp_signer_save(st, x, k, passphrase)) != 0)
		goto out;
	*renewed = 1;
done:
	*cert = x;
	*key = k;
	return 0;
out:
	X509_free(x);
	EVP_PKEY_free(k);
	return rc;
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
