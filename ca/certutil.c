/*
 * certutil.c - the building blocks that root.c and issue.c assemble
 * certificates from: random serials, validity, the extensions every
 * profile shares, the signature digest, and small conversions.
 *
 * Entry points (ca_local.h): ca_rand_serial(), ca_cert_begin(),
 * ca_add_key_usage(), ca_add_basic_constraints(), ca_add_key_ids(),
 * ca_ec_curve_nid(), ca_sign_digest(), ca_sign(), ca_name_oneline(),
 * ca_asn1_time_to_time(), ca_utf8_chars(), ca_cert_ski_hex().
 *
 * Extensions are built from their structures, never from OpenSSL's config
 * strings, so that no caller-supplied text can add a value of its own.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

#define SERIAL_LEN 16

int
ca_rand_serial(ASN1_INTEGER **out)
{
	unsigned char b[SERIAL_LEN];
	ASN1_INTEGER *ai = NULL;
	BIGNUM *bn = NULL;
	int rc;

	*out = NULL;
	/*
	 * Rejection sampling keeps every accepted value equally likely: a
	 * first octet of 0 would shorten the DER encoding, a set top bit
	 * would make it negative.
	 */
	do {
		if (RAND_bytes(b, sizeof(b)) != 1) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "random serial");
			goto out;
		}
		b[0] &= 0x7f;
	} while (b[0] == 0);
	if ((bn = BN_bin2bn(b, sizeof(b), NULL)) == NULL || (ai = BN_to_ASN1_INTEGER(bn, NULL)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "serial");
		goto out;
	}
	*out = ai;
	ai = NULL;
	rc = 0;
out:
	BN_free(bn);
	ASN1_INTEGER_free(ai);
	return rc;
}

int
ca_cert_begin(const X509_NAME *subject, EVP_PKEY *pubkey, int days, X509 **out)
{
	ASN1_INTEGER *serial = NULL;
	X509 *x = NULL;
	time_t now = time(NULL);
	int rc;

	*out = NULL;
	if (days < 1 || days > 36500)
		return kms_fail(KMS_ERR_INVALID, "validity of %d days is out of range (1 to 36500)", days);
	if ((rc = ca_rand_serial(&serial)) != 0)
		goto out;
	if ((x = X509_new()) == NULL ||
	    !X509_set_version(x, X509_VERSION_3) ||
	    !X509_set_serialNumber(x, serial) ||
	    !X509_set_subject_name(x, subject) ||
	    !X509_set_pubkey(x, pubkey) ||
	    X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &now) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), days, 0, &now) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "new certificate");
		goto out;
	}
	*out = x;
	x = NULL;
	rc = 0;
out:
	ASN1_INTEGER_free(serial);
	X509_free(x);
	return rc;
}

int
ca_add_key_usage(X509 *x, const int *bits, size_t n)
{
	ASN1_BIT_STRING *ku;
	int rc = 0;

	if ((ku = ASN1_BIT_STRING_new()) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "keyUsage");
	for (size_t i = 0; i < n; i++) {
		if (!ASN1_BIT_STRING_set_bit(ku, bits[i], 1)) {
			rc = kms_fail_openssl(KMS_ERR_NOMEM, "keyUsage");
			goto out;
		}
	}
	if (X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding keyUsage");
out:
	ASN1_BIT_STRING_free(ku);
	return rc;
}

int
ca_add_basic_constraints(X509 *x, int is_ca)
{
	BASIC_CONSTRAINTS *bc;
	int rc = 0;

	if ((bc = BASIC_CONSTRAINTS_new()) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "basicConstraints");
	bc->ca = is_ca ? 0xff : 0;
	if (X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding basicConstraints");
	BASIC_CONSTRAINTS_free(bc);
	return rc;
}

int
ca_add_key_ids(X509 *x, const ASN1_OCTET_STRING *issuer_skid)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	ASN1_OCTET_STRING *ski = NULL;
	AUTHORITY_KEYID *aki = NULL;
	int rc;

	if (!X509_pubkey_digest(x, EVP_sha1(), md, &mdlen)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "subject key identifier");
		goto out;
	}
	if ((ski = ASN1_OCTET_STRING_new()) == NULL || !ASN1_OCTET_STRING_set(ski, md, (int)mdlen) ||
	    (aki = AUTHORITY_KEYID_new()) == NULL ||
	    (aki->keyid = ASN1_OCTET_STRING_dup(issuer_skid ? issuer_skid : ski)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "key identifiers");
		goto out;
	}
	if (X509_add1_ext_i2d(x, NID_subject_key_identifier, ski, 0, X509V3_ADD_REPLACE) != 1 ||
	    X509_add1_ext_i2d(x, NID_authority_key_identifier, aki, 0, X509V3_ADD_REPLACE) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding key identifiers");
		goto out;
	}
	rc = 0;
out:
	ASN1_OCTET_STRING_free(ski);
	AUTHORITY_KEYID_free(aki);
	return rc;
}

int
ca_ec_curve_nid(const EVP_PKEY *key)
{
	char group[64];
	size_t glen = 0;
	int nid;

	if (!EVP_PKEY_get_group_name(key, group, sizeof(group), &glen))
		return NID_undef;
	if ((nid = OBJ_sn2nid(group)) == NID_undef && (nid = OBJ_ln2nid(group)) == NID_undef)
		nid = EC_curve_nist2nid(group);
	return nid;
}

const EVP_MD *
ca_sign_digest(const EVP_PKEY *key)
{
	if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC && EVP_PKEY_get_bits(key) >= 384)
		return EVP_sha384();
	return EVP_sha256();
}

int
ca_sign(X509 *x, EVP_PKEY *key)
{
	if (X509_sign(x, key, ca_sign_digest(key)) <= 0)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "signing the certificate");
	return 0;
}

char *
ca_name_oneline(const X509_NAME *n)
{
	BIO *mem = BIO_new(BIO_s_mem());
	char *data, *s = NULL;
	long len;

	if (mem == NULL)
		return NULL;
	if (X509_NAME_print_ex(mem, n, 0, XN_FLAG_RFC2253) >= 0 && (len = BIO_get_mem_data(mem, &data)) >= 0 &&
	    (s = malloc((size_t)len + 1)) != NULL) {
		memcpy(s, data, (size_t)len);
		s[len] = '\0';
	}
	BIO_free(mem);
	return s;
}

int
ca_asn1_time_to_time(const ASN1_TIME *t, time_t *out)
{
	struct tm tm;

	*out = 0;
	memset(&tm, 0, sizeof(tm));
	if (t == NULL || !ASN1_TIME_to_tm(t, &tm)) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "bad certificate time");
	}
	*out = timegm(&tm);
	return 0;
}

long
ca_utf8_chars(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	long n = 0;

	while (*p) {
		size_t more;
		unsigned long cp;

		if (*p < 0x80) {
			if (*p < 0x20 || *p == 0x7f)
				return -1;
			p++;
			n++;
			continue;
		}
		if ((*p & 0xe0) == 0xc0) {
			more = 1;
			cp = *p & 0x1f;
		} else if ((*p & 0xf0) == 0xe0) {
			more = 2;
			cp = *p & 0x0f;
		} else if ((*p & 0xf8) == 0xf0) {
			more = 3;
			cp = *p & 0x07;
		} else {
			return -1;
		}
		p++;
		for (size_t i = 0; i < more; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				return -1;
			cp = (cp << 6) | (*p & 0x3f);
		}
		/* Overlong forms, surrogates, beyond Unicode, C1 controls. */
		if ((more == 1 && cp < 0x80) || (more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || (cp >= 0x80 && cp < 0xa0))
			return -1;
		n++;
	}
	return n;
}

char *
ca_cert_ski_hex(X509 *cert)
{
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(cert);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (ski != NULL)
		return kms_hex(ASN1_STRING_get0_data(ski), (size_t)ASN1_STRING_length(ski));
	ERR_clear_error();
	if (!X509_pubkey_digest(cert, EVP_sha1(), md, &mdlen)) {
		ERR_clear_error();
		return NULL;
	}
	return kms_hex(md, mdlen);
}
