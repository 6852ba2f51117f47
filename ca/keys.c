/*
 * keys.c - key pairs: generation for every supported type, a short name
 * for a key's type, and the CA key encrypted at rest.
 *
 * Entry points: ca_key_type_valid(), ca_keygen(), ca_key_type_of(),
 * ca_key_encrypt(), ca_key_decrypt().
 *
 * The CA key is kept as PEM "ENCRYPTED PRIVATE KEY" (PKCS#8, PBES2) with
 * scrypt (N=2^14, r=8, p=1) and AES-256-CBC.  scrypt rather than PBKDF2
 * because it is memory-hard: a stolen store costs an attacker 16 MiB of
 * memory per guess, not a few hash blocks.  N=2^15 would need a little
 * over 32 MiB, past the cap OpenSSL applies to scrypt in PKCS#8: it
 * refuses to write or read such a key (here and in openssl(1)).
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

#define SCRYPT_N (1 << 14)
#define SCRYPT_R 8
#define SCRYPT_P 1
#define SCRYPT_SALT_LEN 16

static const struct key_type {
	const char *name;
	const char *alg;         /* "RSA" or "EC" */
	size_t bits;             /* RSA modulus size */
	const char *group;       /* EC named group */
} key_types[] = {
	{ "rsa:2048", "RSA", 2048, NULL },
	{ "rsa:3072", "RSA", 3072, NULL },
	{ "rsa:4096", "RSA", 4096, NULL },
	{ "ec:p256", "EC", 0, "P-256" },
	{ "ec:p384", "EC", 0, "P-384" },
};

static const struct key_type *
find_type(const char *type)
{
	if (type == NULL)
		return NULL;
	for (size_t i = 0; i < sizeof(key_types) / sizeof(key_types[0]); i++)
		if (strcmp(key_types[i].name, type) == 0)
			return &key_types[i];
	return NULL;
}

int
ca_key_type_valid(const char *type)
{
	return find_type(type) != NULL;
}

int
ca_keygen(const char *type, EVP_PKEY **out)
{
	const struct key_type *kt = find_type(type);
	EVP_PKEY *key;

	*out = NULL;
	if (kt == NULL)
		return kms_fail(KMS_ERR_INVALID, "unknown key type \"%s\" (rsa:2048, rsa:3072, rsa:4096, "
		    "ec:p256 or ec:p384)", type ? type : "(none)");
	if (kt->group == NULL)
		key = EVP_PKEY_Q_keygen(NULL, NULL, kt->alg, kt->bits);
	else
		key = EVP_PKEY_Q_keygen(NULL, NULL, kt->alg, kt->group);
	if (key == NULL)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "%s key generation failed", kt->name);
	*out = key;
	return 0;
}

const char *
ca_key_type_of(const EVP_PKEY *key, char *buf, size_t len)
{
	if (len == 0)
		return buf;
	if (key == NULL) {
		snprintf(buf, len, "none");
		return buf;
	}
	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA:
		snprintf(buf, len, "rsa:%d", EVP_PKEY_get_bits(key));
		break;
	case EVP_PKEY_RSA_PSS:
		snprintf(buf, len, "rsa-pss:%d", EVP_PKEY_get_bits(key));
		break;
	case EVP_PKEY_EC:
		switch (ca_ec_curve_nid(key)) {
		case NID_X9_62_prime256v1:
			snprintf(buf, len, "ec:p256");
			break;
		case NID_secp384r1:
			snprintf(buf, len, "ec:p384");
			break;
		case NID_secp521r1:
			snprintf(buf, len, "ec:p521");
			break;
		default:
			snprintf(buf, len, "ec:other");
			break;
		}
		break;
	case EVP_PKEY_ED25519:
		snprintf(buf, len, "ed25519");
		break;
	case EVP_PKEY_ED448:
		snprintf(buf, len, "ed448");
		break;
	default:
		snprintf(buf, len, "unknown");
		break;
	}
	return buf;
}

int
ca_key_encrypt(EVP_PKEY *key, const char *passphrase, char **pem, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	X509_ALGOR *pbe = NULL;
	X509_SIG *sig = NULL;
	BIO *mem = NULL;
	unsigned char salt[SCRYPT_SALT_LEN];
	char *data;
	long dlen;
	int rc;

	*pem = NULL;
	*len = 0;
	if (key == NULL || passphrase == NULL || *passphrase == '\0')
		return kms_fail(KMS_ERR_INVALID, "a key and a non-empty passphrase are needed");
	if (strlen(passphrase) > 1024)
		return kms_fail(KMS_ERR_INVALID, "passphrase over 1024 bytes");
	if (RAND_bytes(salt, sizeof(salt)) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "random salt");
		goto out;
	}
	if ((pbe = PKCS5_pbe2_set_scrypt(EVP_aes_256_cbc(), salt, sizeof(salt), NULL,
	    SCRYPT_N, SCRYPT_R, SCRYPT_P)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "scrypt parameters");
		goto out;
	}
	if ((p8 = EVP_PKEY2PKCS8(key)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "key to PKCS#8");
		goto out;
	}
	if ((sig = PKCS8_set0_pbe(passphrase, (int)strlen(passphrase), p8, pbe)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encrypting the key");
		goto out;
	}
	pbe = NULL;     /* owned by sig now */
	if ((mem = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_PKCS8(mem, sig)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "writing the encrypted key");
		goto out;
	}
	dlen = BIO_get_mem_data(mem, &data);
	if (dlen <= 0 || (*pem = malloc((size_t)dlen + 1)) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "encrypted key");
		goto out;
	}
	memcpy(*pem, data, (size_t)dlen);
	(*pem)[dlen] = '\0';
	*len = (size_t)dlen;
	rc = 0;
out:
	/* PKCS8_PRIV_KEY_INFO_free clears the key octets it holds. */
	PKCS8_PRIV_KEY_INFO_free(p8);
	X509_ALGOR_free(pbe);
	X509_SIG_free(sig);
	BIO_free(mem);
	return rc;
}

int
ca_key_decrypt(const char *pem, size_t len, const char *passphrase, EVP_PKEY **out)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	X509_SIG *sig = NULL;
	EVP_PKEY *key = NULL;
	BIO *mem = NULL;
	int rc;

	*out = NULL;
	if (pem == NULL || passphrase == NULL)
		return kms_fail(KMS_ERR_INVALID, "no key or no passphrase");
	if (len > 1024 * 1024 || len > INT_MAX)
		return kms_fail(KMS_ERR_TOOBIG, "encrypted key over 1 MiB");
	if ((mem = BIO_new_mem_buf(pem, (int)len)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "key buffer");
		goto out;
	}
	if ((sig = PEM_read_bio_PKCS8(mem, NULL, NULL, NULL)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the CA key is not an encrypted PKCS#8 PEM key");
		goto out;
	}
	/*
	 * A wrong passphrase shows up as a padding error, or (1 time in 256)
	 * as garbage that fails to parse: both are failures of this call.
	 */
	if ((p8 = PKCS8_decrypt(sig, passphrase, (int)strlen(passphrase))) == NULL) {
		ERR_clear_error();
		rc = kms_fail(KMS_ERR_PERM, "wrong passphrase for the CA key");
		goto out;
	}
	if ((key = EVP_PKCS82PKEY(p8)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "the decrypted CA key does not parse");
		goto out;
	}
	*out = key;
	rc = 0;
out:
	PKCS8_PRIV_KEY_INFO_free(p8);
	X509_SIG_free(sig);
	BIO_free(mem);
	return rc;
}
