/*
 * smime.c - the userSMIMECertificate value of a user (RFC 2798): a CMS
 * SignedData with no content, signed by the user's own signing key the
 * way Outlook publishes it, carrying the user's certificates and the CA
 * certificate, and as signed attributes SMIMECapabilities (RFC 8551
 * 2.5.2: the content encryption algorithms to use) and
 * SMIMEEncryptionKeyPreference (RFC 8551 2.5.3: which certificate to
 * encrypt to, since signing and encryption keys are separate).
 *
 * Entry points: ca_smime_signed_der() builds it while the signing key is
 * in memory (enrollment); ca_store_put_smime() keeps it with the signing
 * certificate; ca_store_get_smime() gives it back for the directory.
 * Who else could sign it: the CA key is certified for keyCertSign and
 * cRLSign only, and a publisher certificate would assert the user's
 * preferences on their behalf; the user's signature is what clients expect.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/x509.h>
#include <sqlite3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

/* SMIMEEncryptionKeyPreference ::= CHOICE { issuerAndSerialNumber [0] IssuerAndSerialNumber, ... } */
static int
add_key_preference(CMS_SignerInfo *si, X509 *ecert)
{
	unsigned char *issuer = NULL, *serial = NULL, *val = NULL, *p;
	int ilen, slen, inner, hdr, rc = 0;

	ilen = i2d_X509_NAME(X509_get_issuer_name(ecert), &issuer);
	slen = i2d_ASN1_INTEGER(X509_get_serialNumber(ecert), &serial);
	if (ilen <= 0 || slen <= 0)
		goto out;
	inner = ilen + slen;
	/* [0] IMPLICIT SEQUENCE: constructed context tag 0 in place of the SEQUENCE tag. */
	hdr = ASN1_object_size(1, inner, 0) - inner;
	if ((val = OPENSSL_malloc((size_t)(hdr + inner))) == NULL)
		goto out;
	p = val;
	ASN1_put_object(&p, 1, inner, 0, V_ASN1_CONTEXT_SPECIFIC);
	memcpy(p, issuer, (size_t)ilen);
	memcpy(p + ilen, serial, (size_t)slen);
	rc = CMS_signed_add1_attr_by_NID(si, NID_id_smime_aa_encrypKeyPref, V_ASN1_SEQUENCE, val, hdr + inner);
out:
	OPENSSL_free(issuer);
	OPENSSL_free(serial);
	OPENSSL_free(val);
	return rc;
}

int
ca_smime_signed_der(X509 *scert, EVP_PKEY *skey, X509 *ecert, X509 *ca_cert, unsigned char **der, int *len)
{
	const unsigned int flags = CMS_DETACHED | CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP;
	/* What every S/MIME client decrypts (RFC 8551 2.7 MUST/SHOULD+), strongest first. */
	static const int caps_nids[] = { NID_aes_256_cbc, NID_aes_192_cbc, NID_aes_128_cbc };
	CMS_ContentInfo *cms = NULL;
	CMS_SignerInfo *si;
	STACK_OF(X509_ALGOR) *caps = NULL;
	BIO *empty = NULL;
	int rc = KMS_ERR_CRYPTO;

	*der = NULL;
	*len = 0;
	if (scert == NULL || skey == NULL || ecert == NULL)
		return kms_fail(KMS_ERR_INVALID, "userSMIMECertificate needs the signing key and both certificates");
	if ((cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
	    (si = CMS_add1_signer(cms, scert, skey, EVP_sha256(), flags)) == NULL)
		goto out;
	for (size_t i = 0; i < sizeof(caps_nids) / sizeof(caps_nids[0]); i++)
		if (!CMS_add_simple_smimecap(&caps, caps_nids[i], -1))
			goto out;
	if (!CMS_add_smimecap(si, caps) || !add_key_preference(si, ecert))
		goto out;
	if (!CMS_add1_cert(cms, ecert) || (ca_cert && !CMS_add1_cert(cms, ca_cert)))
		goto out;
	/* The signed content is empty and left out (RFC 2798: consumers ignore it). */
	if ((empty = BIO_new_mem_buf("", 0)) == NULL || !CMS_final(cms, empty, NULL, flags))
		goto out;
	if ((*len = i2d_CMS_ContentInfo(cms, der)) <= 0) {
		*der = NULL;
		*len = 0;
		goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "signing the userSMIMECertificate value");
	sk_X509_ALGOR_pop_free(caps, X509_ALGOR_free);
	BIO_free(empty);
	CMS_ContentInfo_free(cms);
	return rc;
}

int
ca_store_put_smime(struct kms_store *st, X509 *scert, const unsigned char *der, size_t len)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(scert));
	sqlite3_stmt *s = NULL;
	int rc;

	if (serial == NULL)
		return KMS_ERR_NOMEM;
	if (sqlite3_prepare_v2(kms_store_db(st), "INSERT OR REPLACE INTO smime(serial, der) VALUES (?, ?)", -1, &s,
	    NULL) != SQLITE_OK) {
		free(serial);
		return kms_store_fail(st, "record userSMIMECertificate");
	}
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	sqlite3_bind_blob(s, 2, der, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, "record userSMIMECertificate");
	sqlite3_finalize(s);
	free(serial);
	return rc;
}

int
ca_store_get_smime(struct kms_store *st, X509 *scert, unsigned char **der, size_t *len)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(scert));
	sqlite3_stmt *s = NULL;
	int rc, step;

	*der = NULL;
	*len = 0;
	if (serial == NULL)
		return KMS_ERR_NOMEM;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT der FROM smime WHERE serial = ?", -1, &s, NULL) != SQLITE_OK) {
		free(serial);
		return kms_store_fail(st, "read userSMIMECertificate");
	}
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	step = sqlite3_step(s);
	if (step == SQLITE_ROW && sqlite3_column_bytes(s, 0) > 0) {
		*len = (size_t)sqlite3_column_bytes(s, 0);
		if ((*der = OPENSSL_memdup(sqlite3_column_blob(s, 0), *len)) == NULL) {
			*len = 0;
			rc = KMS_ERR_NOMEM;
		} else {
			rc = 0;
		}
	} else if (step == SQLITE_ROW || step == SQLITE_DONE) {
		rc = KMS_ERR_NOTFOUND;
	} else {
		rc = kms_store_fail(st, "read userSMIMECertificate");
	}
	sqlite3_finalize(s);
	free(serial);
	return rc;
}
