/*
 * root.c - the organisation's root CA: making the self-signed root and
 * keeping it (certificate and encrypted key) in the ca table.
 *
 * Entry points: ca_create_root(), ca_free(), ca_store_save(),
 * ca_store_load().
 *
 * The root profile follows the S/MIME Baseline Requirements for a root CA
 * certificate: basicConstraints critical cA TRUE without a path length,
 * keyUsage critical keyCertSign and cRLSign, a subjectKeyIdentifier, an
 * authorityKeyIdentifier equal to it, no extendedKeyUsage, a positive
 * serial of 127 random bits.
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

#define ROOT_CN_SUFFIX " S/MIME CA"

/* [ca] name goes into file names and URLs: letters, digits, '.', '_', '-'. */
static int
name_valid(const char *name)
{
	if (name == NULL || *name == '\0' || *name == '.' || strlen(name) > 64)
		return 0;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '.' || *p == '_' || *p == '-'))
			return 0;
	return 1;
}

static int
root_subject(const char *org, X509_NAME **out)
{
	X509_NAME *n = NULL;
	char cn[4 * CA_UB_NAME + sizeof(ROOT_CN_SUFFIX)];
	long chars = ca_utf8_chars(org);
	int rc;

	*out = NULL;
	if (chars <= 0)
		return kms_fail(KMS_ERR_INVALID, "organization name is empty, not UTF-8 or holds control characters");
	if (chars + (long)strlen(ROOT_CN_SUFFIX) > CA_UB_NAME)
		return kms_fail(KMS_ERR_INVALID, "organization name over %d characters (the CA's common name "
		    "\"<org>%s\" must fit in %d)", CA_UB_NAME - (int)strlen(ROOT_CN_SUFFIX), ROOT_CN_SUFFIX,
		    CA_UB_NAME);
	snprintf(cn, sizeof(cn), "%s%s", org, ROOT_CN_SUFFIX);
	if ((n = X509_NAME_new()) == NULL ||
	    !X509_NAME_add_entry_by_NID(n, NID_organizationName, MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0) ||
	    !X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "CA subject name");
		goto out;
	}
	*out = n;
	n = NULL;
	rc = 0;
out:
	X509_NAME_free(n);
	return rc;
}

int
ca_create_root(const char *org, const char *name, const char *key_type, int days, struct ca **out)
{
	static const int ku[] = { CA_KU_KEY_CERT_SIGN, CA_KU_CRL_SIGN };
	X509_NAME *subject = NULL;
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	struct ca *ca = NULL;
	time_t nb;
	int rc;

	*out = NULL;
	if (key_type == NULL || *key_type == '\0')
		key_type = "rsa:3072";
	if (strcmp(key_type, "rsa:3072") != 0 && strcmp(key_type, "rsa:4096") != 0 &&
	    strcmp(key_type, "ec:p384") != 0)
		return kms_fail(KMS_ERR_INVALID, "CA key type \"%s\" not allowed (rsa:3072, rsa:4096 or ec:p384)",
		    key_type);
	if (!name_valid(name))
		return kms_fail(KMS_ERR_INVALID, "CA name must be 1 to 64 letters, digits, '.', '_' or '-'");
	if (org == NULL)
		return kms_fail(KMS_ERR_INVALID, "no organization name");
	if ((rc = root_subject(org, &subject)) != 0)
		goto out;
	if ((rc = ca_keygen(key_type, &key)) != 0)
		goto out;
	if ((rc = ca_cert_begin(subject, key, days, &x)) != 0)
		goto out;
	/*
	 * Set back as far as a user certificate's notBefore may be
	 * ([ca] not_before_margin at most): a recipient whose clock is behind
	 * must not find the CA of a brand-new user not yet valid, and no
	 * certificate starts before the CA that issued it.
	 */
	nb = time(NULL) - CA_MAX_NOT_BEFORE_MARGIN;
	if (X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &nb) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "CA notBefore");
		goto out;
	}
	if (!X509_set_issuer_name(x, subject)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "CA issuer name");
		goto out;
	}
	if ((rc = ca_add_basic_constraints(x, 1)) != 0 ||
	    (rc = ca_add_key_usage(x, ku, sizeof(ku) / sizeof(ku[0]))) != 0 ||
	    (rc = ca_add_key_ids(x, NULL)) != 0 ||
	    (rc = ca_sign(x, key)) != 0)
		goto out;
	if ((ca = calloc(1, sizeof(*ca))) == NULL || (ca->name = strdup(name)) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "CA");
		goto out;
	}
	ca->cert = x;
	ca->key = key;
	x = NULL;
	key = NULL;
	*out = ca;
	ca = NULL;
	rc = 0;
out:
	X509_NAME_free(subject);
	EVP_PKEY_free(key);
	X509_free(x);
	ca_free(ca);
	return rc;
}

void
ca_free(struct ca *ca)
{
	if (ca == NULL)
		return;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	free(ca->name);
	free(ca);
}

int
ca_store_save(struct kms_store *st, const struct ca *ca, const char *encrypted_key_pem, const char *key_type)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	unsigned char *der = NULL;
	char *subject = NULL, kt[32];
	int dlen, rc;

	if (ca == NULL || ca->cert == NULL || ca->name == NULL || encrypted_key_pem == NULL)
		return kms_fail(KMS_ERR_INVALID, "incomplete CA");
	if (strstr(encrypted_key_pem, "-----BEGIN ENCRYPTED PRIVATE KEY-----") == NULL)
		return kms_fail(KMS_ERR_INVALID, "the CA key must be stored encrypted");
	if (key_type == NULL)
		key_type = ca_key_type_of(X509_get0_pubkey(ca->cert), kt, sizeof(kt));
	if ((dlen = i2d_X509(ca->cert, &der)) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encoding the CA certificate");
		goto out;
	}
	if ((subject = ca_name_oneline(X509_get_subject_name(ca->cert))) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "CA subject");
		goto out;
	}
	if (sqlite3_prepare_v2(db, "INSERT INTO ca(id, name, subject, cert, key, key_type, created) "
	    "VALUES (1, ?, ?, ?, ?, ?, ?)", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "save CA");
		goto out;
	}
	sqlite3_bind_text(s, 1, ca->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, subject, -1, SQLITE_STATIC);
	sqlite3_bind_blob(s, 3, der, dlen, SQLITE_STATIC);
	sqlite3_bind_blob(s, 4, encrypted_key_pem, (int)strlen(encrypted_key_pem), SQLITE_STATIC);
	sqlite3_bind_text(s, 5, key_type, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 6, (sqlite3_int64)time(NULL));
	if (sqlite3_step(s) != SQLITE_DONE) {
		if (sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_PRIMARYKEY)
			rc = kms_fail(KMS_ERR_EXISTS, "the CA is already initialised");
		else
			rc = kms_store_fail(st, "save CA");
		goto out;
	}
	rc = 0;
out:
	sqlite3_finalize(s);
	OPENSSL_free(der);
	free(subject);
	return rc;
}

int
ca_store_load(struct kms_store *st, const char *name, const char *passphrase, struct ca **out)
{
	sqlite3_stmt *s = NULL;
	struct ca *ca = NULL;
	const unsigned char *p;
	const char *stored_name;
	int rc;

	*out = NULL;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT name, cert, key FROM ca WHERE id = 1",
	    -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "load CA");
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		rc = kms_fail(KMS_ERR_NOTFOUND, "the CA is not initialised (run kmsctl init)");
		goto out;
	}
	if (rc != SQLITE_ROW) {
		rc = kms_store_fail(st, "load CA");
		goto out;
	}
	stored_name = (const char *)sqlite3_column_text(s, 0);
	if (stored_name == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "CA name");
		goto out;
	}
	/* [ca] name changed after init: the CRL and certificate file names would no longer match. */
	if (name != NULL && strcmp(name, stored_name) != 0) {
		rc = kms_fail(KMS_ERR_STATE, "the store holds the CA \"%s\", but [ca] name says \"%s\"",
		    stored_name, name);
		goto out;
	}
	if ((ca = calloc(1, sizeof(*ca))) == NULL || (ca->name = strdup(stored_name)) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "CA");
		goto out;
	}
	p = sqlite3_column_blob(s, 1);
	if (p == NULL || (ca->cert = d2i_X509(NULL, &p, sqlite3_column_bytes(s, 1))) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored CA certificate does not parse");
		goto out;
	}
	if (passphrase != NULL) {
		if ((rc = ca_key_decrypt(sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2),
		    passphrase, &ca->key)) != 0)
			goto out;
		if (X509_check_private_key(ca->cert, ca->key) != 1) {
			rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the stored CA key does not match its certificate");
			goto out;
		}
	}
	*out = ca;
	ca = NULL;
	rc = 0;
out:
	sqlite3_finalize(s);
	ca_free(ca);
	return rc;
}
