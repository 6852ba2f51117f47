/*
 * signer.c - delegated signers: short-lived keys that our CA certifies for
 * one job (answering OCSP, signing audit checkpoints), so that the CA key
 * signs their certificate once per renewal and nothing else of that job.
 *
 * Entry points (ca_local.h): ca_signer_issue(), ca_signer_save(),
 * ca_signer_load(), ca_signer_due(), ca_signer_ensure().  What differs
 * between kinds (subject, extra extensions, where the store keeps them)
 * is a struct ca_signer_kind; ocsp_signer.c and audit_ckpt.c hold theirs.
 *
 * Profile common to all: subject O of the CA plus CN "<O><suffix>",
 * basicConstraints cA FALSE (critical), keyUsage digitalSignature
 * (critical), SKI, AKI, validity from BACKDATE before now for the lifetime
 * (never past the CA's notAfter).  The key is kept like the CA key (PKCS#8,
 * scrypt, AES-256-CBC under the CA passphrase), the certificate in PEM,
 * both in the meta table.
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

/* notBefore this far back: a client whose clock runs a little slow still accepts a new signer. */
#define BACKDATE 300

int
ca_signer_subject(const struct ca_signer_kind *kind, X509 *ca_cert, X509_NAME **out)
{
	const X509_NAME *ca_name = X509_get_subject_name(ca_cert);
	X509_NAME *n = NULL;
	unsigned char *org = NULL;
	char cn[4 * CA_UB_NAME + 1];
	int i, len, rc;

	*out = NULL;
	if ((n = X509_NAME_new()) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "%s subject", kind->what);
	snprintf(cn, sizeof(cn), "%s", kind->cn_suffix + 1);
	if ((i = X509_NAME_get_index_by_NID(ca_name, NID_organizationName, -1)) >= 0) {
		if (!X509_NAME_add_entry(n, X509_NAME_get_entry(ca_name, i), -1, 0)) {
			rc = kms_fail_openssl(KMS_ERR_NOMEM, "%s subject", kind->what);
			goto out;
		}
		len = ASN1_STRING_to_UTF8(&org, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(ca_name, i)));
		/* "<org><suffix>" when it fits in ub-common-name, else the suffix alone. */
		if (len > 0 && ca_utf8_chars((char *)org) > 0 &&
		    ca_utf8_chars((char *)org) + (long)strlen(kind->cn_suffix) <= CA_UB_NAME)
			snprintf(cn, sizeof(cn), "%s%s", (char *)org, kind->cn_suffix);
		ERR_clear_error();
	}
	if (!X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "%s common name", kind->what);
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

/* Names and validity: issuer the CA, from BACKDATE ago for lifetime, never past the CA. */
static int
set_names_validity(const struct ca_signer_kind *kind, X509 *x, X509 *ca_cert, long lifetime)
{
	time_t now = time(NULL);

	if (!X509_set_issuer_name(x, X509_get_subject_name(ca_cert)) ||
	    X509_time_adj_ex(X509_getm_notBefore(x), 0, -BACKDATE, &now) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), 0, lifetime, &now) == NULL)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "%s names and validity", kind->what);
	if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca_cert)) > 0 &&
	    !X509_set1_notAfter(x, X509_get0_notAfter(ca_cert)))
		return kms_fail_openssl(KMS_ERR_CRYPTO, "notAfter");
	return 0;
}

int
ca_signer_issue(const struct ca_signer_kind *kind, const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out)
{
	static const int ku[] = { CA_KU_DIGITAL_SIGNATURE };
	X509_NAME *subject = NULL;
	X509 *x = NULL;
	int rc;

	*out = NULL;
	if (ca == NULL || ca->cert == NULL || ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded: no %s can be issued", kind->what);
	if (pubkey == NULL)
		return kms_fail(KMS_ERR_INVALID, "no key for the %s", kind->what);
	if (lifetime < 3600 || lifetime > 90L * 86400)
		return kms_fail(KMS_ERR_INVALID, "%s lifetime of %ld s is out of range (1 h to 90 days)", kind->what,
		    lifetime);
	if ((rc = ca_signer_subject(kind, ca->cert, &subject)) != 0 || (rc = ca_cert_begin(subject, pubkey, 1, &x)) != 0 ||
	    (rc = set_names_validity(kind, x, ca->cert, lifetime)) != 0)
		goto out;
	if ((rc = ca_add_basic_constraints(x, 0)) != 0 || (rc = ca_add_key_usage(x, ku, 1)) != 0 ||
	    (kind->add_extensions != NULL && (rc = kind->add_extensions(x)) != 0) ||
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
ca_signer_save(const struct ca_signer_kind *kind, struct kms_store *st, X509 *cert, EVP_PKEY *key,
    const char *passphrase)
{
	char *kpem = NULL, *cpem = NULL;
	size_t klen = 0;
	BIO *b = NULL;
	long n;
	char *data;
	int rc;

	if (cert == NULL || key == NULL || passphrase == NULL)
		return kms_fail(KMS_ERR_INVALID, "%s: no certificate, key or passphrase", kind->what);
	if ((rc = ca_key_encrypt(key, passphrase, &kpem, &klen)) != 0)
		goto out;
	if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, cert) ||
	    (n = BIO_get_mem_data(b, &data)) <= 0 || (cpem = strndup(data, (size_t)n)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "%s certificate", kind->what);
		goto out;
	}
	if ((rc = kms_store_begin(st)) != 0)
		goto out;
	if ((rc = kms_store_meta_set(st, kind->meta_cert, cpem)) != 0 ||
	    (rc = kms_store_meta_set(st, kind->meta_key, kpem)) != 0) {
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
ca_signer_load(const struct ca_signer_kind *kind, struct kms_store *st, X509 *ca_cert, const char *passphrase,
    X509 **cert, EVP_PKEY **key)
{
	char *cpem = NULL, *kpem = NULL;
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	BIO *b = NULL;
	int rc;

	*cert = NULL;
	*key = NULL;
	if ((rc = kms_store_meta_get(st, kind->meta_cert, &cpem)) != 0 ||
	    (rc = kms_store_meta_get(st, kind->meta_key, &kpem)) != 0)
		goto out;
	if ((b = BIO_new_mem_buf(cpem, -1)) == NULL || (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored %s certificate", kind->what);
		goto out;
	}
	/* Issued by this CA (not one replaced since), and the key is its key. */
	if (ca_cert != NULL && (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca_cert)) != 0 ||
	    X509_verify(x, X509_get0_pubkey(ca_cert)) != 1)) {
		rc = kms_fail_openssl(KMS_ERR_STATE, "the stored %s was not issued by this CA", kind->what);
		goto out;
	}
	if ((rc = ca_key_decrypt(kpem, strlen(kpem), passphrase, &k)) != 0)
		goto out;
	if (X509_check_private_key(x, k) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored %s key does not match its certificate", kind->what);
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
ca_signer_due(X509 *cert, long lifetime, time_t now)
{
	time_t nb, na;

	if (cert == NULL || ca_asn1_time_to_time(X509_get0_notBefore(cert), &nb) != 0 ||
	    ca_asn1_time_to_time(X509_get0_notAfter(cert), &na) != 0)
		return 1;
	/* Renew at half of the configured lifetime, or at once if it is shorter than that. */
	return now + lifetime / 2 >= na || na - nb > lifetime + BACKDATE + 60;
}

int
ca_signer_ensure(const struct ca_signer_kind *kind, struct kms_store *st, const struct ca *ca,
    const char *passphrase, const char *key_type, long lifetime, time_t now, X509 **cert, EVP_PKEY **key,
    int *renewed)
{
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	int rc;

	*cert = NULL;
	*key = NULL;
	*renewed = 0;
	if (ca == NULL || ca->cert == NULL)
		return kms_fail(KMS_ERR_STATE, "no CA");
	rc = ca_signer_load(kind, st, ca->cert, passphrase, &x, &k);
	if (rc == KMS_ERR_PERM)
		return rc;      /* a wrong passphrase: never silently replace the signer */
	if (rc == 0 && !ca_signer_due(x, lifetime, now))
		goto done;
	if (rc != 0 && rc != KMS_ERR_NOTFOUND)
		kms_log(KMS_LOG_WARNING, "%s: %s; issuing a new one", kind->what, kms_last_error());
	X509_free(x);
	EVP_PKEY_free(k);
	x = NULL;
	k = NULL;
	if ((rc = ca_keygen(key_type, &k)) != 0 || (rc = ca_signer_issue(kind, ca, k, lifetime, &x)) != 0 ||
	    (rc = ca_signer_save(kind, st, x, k, passphrase)) != 0)
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
