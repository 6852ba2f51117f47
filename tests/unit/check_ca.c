/*
 * check_ca.c - unit suite for the core of libkmsca: key generation and the
 * CA key at rest, the root profile, every issued profile parsed back with
 * OpenSSL field by field (RSA and EC users, RSA and P-384 CAs), chain
 * verification for S/MIME, CSRs (good, forged, weak, without an address),
 * the certs table on a real SQLite file, and PKCS#12 in both encodings read
 * back by our reader and by OpenSSL's, with their algorithms checked.
 *
 * Keys are made once per process (main) and shared: RSA-3072 costs a good
 * fraction of a second.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#define ORG "Example Org"
#define CRL_URL "http://127.0.0.1:8480/crl/kms-ca.crl"

/* Shared, made once in main(). */
static struct ca *rsa_ca;       /* RSA-3072 root */
static struct ca *ec_ca;        /* P-384 root */
static EVP_PKEY *rsa_user_a, *rsa_user_b, *ec_user_a, *ec_user_b;
static time_t t_start;

/* ------------------------------------------------------------ helpers */

static time_t
asn1_to_time(const ASN1_TIME *t)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	ck_assert_int_eq(ASN1_TIME_to_tm(t, &tm), 1);
	return timegm(&tm);
}

/* Value of the first name entry with nid as UTF-8, or NULL; caller frees with OPENSSL_free. */
static char *
name_entry(const X509_NAME *n, int nid)
{
	int i = X509_NAME_get_index_by_NID(n, nid, -1);
	unsigned char *s = NULL;

	if (i < 0)
		return NULL;
	ck_assert_int_ge(ASN1_STRING_to_UTF8(&s, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i))), 0);
	return (char *)s;
}

static void
assert_name_entry(const X509_NAME *n, int nid, const char *want)
{
	char *got = name_entry(n, nid);

	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, want);
	OPENSSL_free(got);
}

/* The serial is positive, 16 octets in DER, with a non-zero first octet. */
static void
assert_serial_128(X509 *x)
{
	const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
	const unsigned char *d = ASN1_STRING_get0_data(sn);
	BIGNUM *bn = ASN1_INTEGER_to_BN(sn, NULL);

	ck_assert_int_eq(ASN1_STRING_type(sn), V_ASN1_INTEGER);       /* not V_ASN1_NEG_INTEGER */
	ck_assert_int_eq(ASN1_STRING_length(sn), 16);
	ck_assert_int_ne(d[0], 0);
	ck_assert_int_lt(d[0], 0x80);
	ck_assert_ptr_nonnull(bn);
	ck_assert(!BN_is_negative(bn));
	ck_assert_int_gt(BN_num_bits(bn), 120);
	ck_assert_int_le(BN_num_bits(bn), 127);
	BN_free(bn);
}

/* keyUsage is critical and has exactly the bits in want (a mask of 1 << bit). */
static void
assert_key_usage(X509 *x, unsigned want)
{
	int crit = -1;
	ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);

	ck_assert_ptr_nonnull(ku);
	ck_assert_int_eq(crit, 1);
	for (int bit = 0; bit < 9; bit++)
		ck_assert_msg(ASN1_BIT_STRING_get_bit(ku, bit) == !!(want & (1u << bit)),
		    "keyUsage bit %d is %d", bit, ASN1_BIT_STRING_get_bit(ku, bit));
	ASN1_BIT_STRING_free(ku);
}

static void
assert_basic_constraints(X509 *x, int is_ca)
{
	int crit = -1;
	BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);

	ck_assert_ptr_nonnull(bc);
	ck_assert_int_eq(crit, 1);
	ck_assert_int_eq(!!bc->ca, is_ca);
	ck_assert_ptr_null(bc->pathlen);
	BASIC_CONSTRAINTS_free(bc);
}

/* SKI present, not critical, the SHA-1 of the public key; AKI keyid only, equal to want. */
static void
assert_key_ids(X509 *x, const ASN1_OCTET_STRING *want_akid)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int crit = -1;
	ASN1_OCTET_STRING *ski = X509_get_ext_d2i(x, NID_subject_key_identifier, &crit, NULL);
	AUTHORITY_KEYID *aki;

	ck_assert_ptr_nonnull(ski);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(X509_pubkey_digest(x, EVP_sha1(), md, &mdlen), 1);
	ck_assert_int_eq(ASN1_STRING_length(ski), (int)mdlen);
	ck_assert_mem_eq(ASN1_STRING_get0_data(ski), md, mdlen);
	aki = X509_get_ext_d2i(x, NID_authority_key_identifier, &crit, NULL);
	ck_assert_ptr_nonnull(aki);
	ck_assert_int_eq(crit, 0);
	ck_assert_ptr_nonnull(aki->keyid);
	ck_assert_ptr_null(aki->issuer);
	ck_assert_ptr_null(aki->serial);
	ck_assert_int_eq(ASN1_OCTET_STRING_cmp(aki->keyid, want_akid ? want_akid : ski), 0);
	ASN1_OCTET_STRING_free(ski);
	AUTHORITY_KEYID_free(aki);
}

static void
assert_eku_email_protection(X509 *x)
{
	int crit = -1;
	EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, &crit, NULL);

	ck_assert_ptr_nonnull(eku);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(sk_ASN1_OBJECT_num(eku), 1);
	ck_assert_int_eq(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)), NID_email_protect);
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
}

static void
assert_san_email(X509 *x, const char *email)
{
	int crit = -1, type;
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
	ASN1_IA5STRING *ia5;

	ck_assert_ptr_nonnull(gens);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(sk_GENERAL_NAME_num(gens), 1);
	ia5 = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(gens, 0), &type);
	ck_assert_int_eq(type, GEN_EMAIL);
	ck_assert_int_eq(ASN1_STRING_length(ia5), (int)strlen(email));
	ck_assert_mem_eq(ASN1_STRING_get0_data(ia5), email, strlen(email));
	GENERAL_NAMES_free(gens);
}

static void
assert_crl_dp(X509 *x, const char *url)
{
	int crit = -1, type;
	CRL_DIST_POINTS *cdp = X509_get_ext_d2i(x, NID_crl_distribution_points, &crit, NULL);
	DIST_POINT *dp;
	ASN1_IA5STRING *uri;

	if (url == NULL) {
		ck_assert_ptr_null(cdp);
		ck_assert_int_lt(X509_get_ext_by_NID(x, NID_crl_distribution_points, -1), 0);
		return;
	}
	ck_assert_ptr_nonnull(cdp);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(sk_DIST_POINT_num(cdp), 1);
	dp = sk_DIST_POINT_value(cdp, 0);
	ck_assert_ptr_nonnull(dp->distpoint);
	ck_assert_int_eq(dp->distpoint->type, 0);
	ck_assert_ptr_null(dp->reasons);
	ck_assert_ptr_null(dp->CRLissuer);
	ck_assert_int_eq(sk_GENERAL_NAME_num(dp->distpoint->name.fullname), 1);
	uri = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(dp->distpoint->name.fullname, 0), &type);
	ck_assert_int_eq(type, GEN_URI);
	ck_assert_int_eq(ASN1_STRING_length(uri), (int)strlen(url));
	ck_assert_mem_eq(ASN1_STRING_get0_data(uri), url, strlen(url));
	CRL_DIST_POINTS_free(cdp);
}

/*
 * Every field and extension of an issued end-entity certificate: what
 * DESIGN section 4 and ca.h promise, and nothing else.
 */
static void
check_user_cert(X509 *x, const struct ca *ca, enum ca_usage usage, EVP_PKEY *key, const char *email,
    const char *cn, int days, const char *crl_url)
{
	const X509_NAME *subj = X509_get_subject_name(x);
	char *org = name_entry(X509_get_subject_name(ca->cert), NID_organizationName);
	time_t nb = asn1_to_time(X509_get0_notBefore(x)), na = asn1_to_time(X509_get0_notAfter(x));
	time_t now = time(NULL);
	unsigned ku;
	int nexts;

	ck_assert_int_eq(X509_get_version(x), X509_VERSION_3);
	assert_serial_128(x);
	ck_assert_int_eq(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca->cert)), 0);
	/* Subject: O of the CA, CN, emailAddress (not for the KRK), nothing else. */
	ck_assert_ptr_nonnull(org);
	assert_name_entry(subj, NID_organizationName, org);
	OPENSSL_free(org);
	assert_name_entry(subj, NID_commonName, cn);
	if (usage == CA_USAGE_KRK) {
		ck_assert_int_eq(X509_NAME_entry_count(subj), 2);
		ck_assert_int_lt(X509_NAME_get_index_by_NID(subj, NID_pkcs9_emailAddress, -1), 0);
	} else {
		ck_assert_int_eq(X509_NAME_entry_count(subj), 3);
		assert_name_entry(subj, NID_pkcs9_emailAddress, email);
		ck_assert_int_eq(ASN1_STRING_type(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj,
		    X509_NAME_get_index_by_NID(subj, NID_pkcs9_emailAddress, -1)))), V_ASN1_IA5STRING);
	}
	/* Validity: from now, for days. */
	ck_assert_int_le(llabs((long long)(nb - now)), 5);
	ck_assert_int_eq((long long)(na - nb), (long long)days * 86400);
	/* Signed by the CA with the digest that goes with its key. */
	ck_assert_int_eq(X509_verify(x, X509_get0_pubkey(ca->cert)), 1);
	if (EVP_PKEY_get_base_id(ca->key) == EVP_PKEY_EC)
		ck_assert_int_eq(X509_get_signature_nid(x), NID_ecdsa_with_SHA384);
	else
		ck_assert_int_eq(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
	ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(x), key), 1);
	/* Extensions. */
	assert_basic_constraints(x, 0);
	switch (usage) {
	case CA_USAGE_SIGN:
		ku = 1u << 0 | 1u << 1;         /* digitalSignature, nonRepudiation */
		break;
	case CA_USAGE_ENC:
		ku = EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? 1u << 4 : 1u << 2;
		break;
	default:
		ku = 1u << 2;                   /* keyEncipherment */
		break;
	}
	assert_key_usage(x, ku);
	if (usage == CA_USAGE_KRK) {
		ck_assert_int_lt(X509_get_ext_by_NID(x, NID_ext_key_usage, -1), 0);
		ck_assert_int_lt(X509_get_ext_by_NID(x, NID_subject_alt_name, -1), 0);
	} else {
		assert_eku_email_protection(x);
		assert_san_email(x, email);
	}
	assert_key_ids(x, X509_get0_subject_key_id(ca->cert));
	assert_crl_dp(x, crl_url);
	nexts = 4 + (usage != CA_USAGE_KRK ? 2 : 0) + (crl_url ? 1 : 0);
	ck_assert_int_eq(X509_get_ext_count(x), nexts);
}

static X509 *
issue(const struct ca *ca, enum ca_usage usage, EVP_PKEY *key, const char *email, const char *name,
    int days, const char *crl_url)
{
	struct ca_issue_req req = { usage, key, email, name, days, crl_url, NULL, NULL, NULL, NULL };
	X509 *x = NULL;

	ck_assert_msg(ca_issue(ca, &req, &x) == 0, "ca_issue: %s", kms_last_error());
	ck_assert_ptr_nonnull(x);
	return x;
}

static int
issue_rc(const struct ca *ca, enum ca_usage usage, EVP_PKEY *key, const char *email, const char *name,
    int days, const char *crl_url)
{
	struct ca_issue_req req = { usage, key, email, name, days, crl_url, NULL, NULL, NULL, NULL };
	X509 *x = NULL;
	int rc = ca_issue(ca, &req, &x);

	if (rc != 0)
		ck_assert_ptr_null(x);
	X509_free(x);
	return rc;
}

/* Verify x against ca's root alone, for purpose (0: none). */
static int
verify_chain(X509 *root, X509 *x, int purpose)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int ok;

	ck_assert_int_eq(X509_STORE_add_cert(store, root), 1);
	ck_assert_int_eq(X509_STORE_CTX_init(ctx, store, x, NULL), 1);
	if (purpose)
		ck_assert_int_eq(X509_STORE_CTX_set_purpose(ctx, purpose), 1);
	ok = X509_verify_cert(ctx);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	ERR_clear_error();
	return ok;
}

/* ---------------------------------------------------------------- keys */

START_TEST(test_key_type_names_accepted_and_refused)
{
	const char *good[] = { "rsa:2048", "rsa:3072", "rsa:4096", "ec:p256", "ec:p384" };
	const char *bad[] = { "rsa:1024", "rsa:2047", "ec:p521", "ec:P256", "RSA:2048", "", "rsa" };

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(ca_key_type_valid(good[i]), "%s refused", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!ca_key_type_valid(bad[i]), "%s accepted", bad[i]);
	ck_assert(!ca_key_type_valid(NULL));
}
END_TEST

START_TEST(test_keygen_makes_the_type_asked_for)
{
	const char *types[] = { "ec:p256", "ec:p384", "rsa:2048" };
	char buf[32];

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		EVP_PKEY *k = NULL;

		ck_assert_int_eq(ca_keygen(types[i], &k), 0);
		ck_assert_ptr_nonnull(k);
		ck_assert_str_eq(ca_key_type_of(k, buf, sizeof(buf)), types[i]);
		EVP_PKEY_free(k);
	}
	ck_assert_str_eq(ca_key_type_of(rsa_ca->key, buf, sizeof(buf)), "rsa:3072");
	ck_assert_str_eq(ca_key_type_of(ec_ca->key, buf, sizeof(buf)), "ec:p384");
}
END_TEST

START_TEST(test_keygen_unknown_type_is_invalid)
{
	EVP_PKEY *k = (EVP_PKEY *)1;

	ck_assert_int_eq(ca_keygen("dsa:1024", &k), KMS_ERR_INVALID);
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "dsa:1024"));
}
END_TEST

/* The PEM holds PBES2 with scrypt (N=2^14, r=8, p=1) and AES-256-CBC. */
static void
assert_scrypt_pem(const char *pem, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	X509_SIG *sig = PEM_read_bio_PKCS8(b, NULL, NULL, NULL);
	const X509_ALGOR *alg;
	const ASN1_OBJECT *oid;
	const void *pval;
	int ptype;
	PBE2PARAM *pbe2;
	SCRYPT_PARAMS *sp;

	ck_assert_ptr_nonnull(sig);
	X509_SIG_get0(sig, &alg, NULL);
	X509_ALGOR_get0(&oid, &ptype, &pval, alg);
	ck_assert_int_eq(OBJ_obj2nid(oid), NID_pbes2);
	pbe2 = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter);
	ck_assert_ptr_nonnull(pbe2);
	ck_assert_int_eq(OBJ_obj2nid(pbe2->keyfunc->algorithm), NID_id_scrypt);
	ck_assert_int_eq(OBJ_obj2nid(pbe2->encryption->algorithm), NID_aes_256_cbc);
	sp = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(SCRYPT_PARAMS), pbe2->keyfunc->parameter);
	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(ASN1_INTEGER_get(sp->costParameter), 16384);
	ck_assert_int_eq(ASN1_INTEGER_get(sp->blockSize), 8);
	ck_assert_int_eq(ASN1_INTEGER_get(sp->parallelizationParameter), 1);
	ck_assert_int_ge(ASN1_STRING_length(sp->salt), 16);
	SCRYPT_PARAMS_free(sp);
	PBE2PARAM_free(pbe2);
	X509_SIG_free(sig);
	BIO_free(b);
}

/* The private halves are the same: PKCS#8 DER of both keys compares equal. */
static void
assert_same_private_key(EVP_PKEY *a, EVP_PKEY *b)
{
	unsigned char *da = NULL, *db = NULL;
	int la = i2d_PrivateKey(a, &da), lb = i2d_PrivateKey(b, &db);

	ck_assert_int_gt(la, 0);
	ck_assert_int_eq(la, lb);
	ck_assert_mem_eq(da, db, (size_t)la);
	OPENSSL_clear_free(da, (size_t)la);
	OPENSSL_clear_free(db, (size_t)lb);
}

START_TEST(test_ca_key_round_trip_under_scrypt)
{
	EVP_PKEY *keys[] = { rsa_ca->key, ec_ca->key };

	for (size_t i = 0; i < 2; i++) {
		char *pem = NULL;
		size_t len = 0;
		EVP_PKEY *back = NULL;

		ck_assert_int_eq(ca_key_encrypt(keys[i], "correct horse", &pem, &len), 0);
		ck_assert_uint_eq(strlen(pem), len);
		ck_assert_ptr_nonnull(strstr(pem, "-----BEGIN ENCRYPTED PRIVATE KEY-----"));
		assert_scrypt_pem(pem, len);
		ck_assert_int_eq(ca_key_decrypt(pem, len, "correct horse", &back), 0);
		assert_same_private_key(keys[i], back);
		EVP_PKEY_free(back);
		free(pem);
	}
}
END_TEST

START_TEST(test_ca_key_wrong_passphrase_is_perm)
{
	char *pem = NULL;
	size_t len = 0;
	EVP_PKEY *back = (EVP_PKEY *)1;

	ck_assert_int_eq(ca_key_encrypt(ec_ca->key, "right", &pem, &len), 0);
	ck_assert_int_eq(ca_key_decrypt(pem, len, "wrong", &back), KMS_ERR_PERM);
	ck_assert_ptr_null(back);
	ck_assert_int_eq(ca_key_decrypt(pem, len, "", &back), KMS_ERR_PERM);
	ck_assert_int_eq(ERR_peek_error(), 0);
	free(pem);
}
END_TEST

START_TEST(test_ca_key_garbage_and_plain_keys_refused)
{
	const char *junk = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
	EVP_PKEY *back = NULL;
	BIO *b = BIO_new(BIO_s_mem());
	char *plain;
	long plen;
	char *pem = NULL;
	size_t len;

	ck_assert_int_eq(ca_key_decrypt(junk, strlen(junk), "x", &back), KMS_ERR_CORRUPT);
	ck_assert_int_eq(PEM_write_bio_PrivateKey(b, ec_ca->key, NULL, NULL, 0, NULL, NULL), 1);
	plen = BIO_get_mem_data(b, &plain);
	ck_assert_int_eq(ca_key_decrypt(plain, (size_t)plen, "x", &back), KMS_ERR_CORRUPT);
	ck_assert_ptr_null(back);
	BIO_free(b);
	ck_assert_int_eq(ca_key_encrypt(ec_ca->key, "", &pem, &len), KMS_ERR_INVALID);
	ck_assert_ptr_null(pem);
}
END_TEST

/* ---------------------------------------------------------------- root */

static void
check_root(const struct ca *ca, int nid_sig, const char *key_type)
{
	X509 *x = ca->cert;
	char buf[32];
	time_t nb = asn1_to_time(X509_get0_notBefore(x)), na = asn1_to_time(X509_get0_notAfter(x));

	ck_assert_int_eq(X509_get_version(x), X509_VERSION_3);
	assert_serial_128(x);
	assert_name_entry(X509_get_subject_name(x), NID_organizationName, ORG);
	assert_name_entry(X509_get_subject_name(x), NID_commonName, ORG " S/MIME CA");
	ck_assert_int_eq(X509_NAME_entry_count(X509_get_subject_name(x)), 2);
	ck_assert_int_eq(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
	ck_assert_int_eq(X509_verify(x, X509_get0_pubkey(x)), 1);
	ck_assert_int_eq(X509_check_private_key(x, ca->key), 1);
	ck_assert_int_eq(X509_get_signature_nid(x), nid_sig);
	ck_assert_str_eq(ca_key_type_of(X509_get0_pubkey(x), buf, sizeof(buf)), key_type);
	/* Made in main(), set back by the largest notBefore margin of a user certificate. */
	ck_assert_int_ge(nb, t_start - CA_MAX_NOT_BEFORE_MARGIN);
	ck_assert_int_le(nb, time(NULL) - CA_MAX_NOT_BEFORE_MARGIN);
	ck_assert_int_eq((long long)(na - nb), 3650LL * 86400 + CA_MAX_NOT_BEFORE_MARGIN);
	assert_basic_constraints(x, 1);
	assert_key_usage(x, 1u << 5 | 1u << 6);         /* keyCertSign, cRLSign */
	assert_key_ids(x, NULL);                        /* AKI repeats the SKI */
	ck_assert_int_lt(X509_get_ext_by_NID(x, NID_ext_key_usage, -1), 0);
	ck_assert_int_eq(X509_get_ext_count(x), 4);
	ck_assert_str_eq(ca->name, "kms-ca");
	ck_assert_int_eq(X509_check_ca(x), 1);
}

START_TEST(test_root_rsa_3072_profile)
{
	check_root(rsa_ca, NID_sha256WithRSAEncryption, "rsa:3072");
}
END_TEST

START_TEST(test_root_ec_p384_signs_with_sha384)
{
	check_root(ec_ca, NID_ecdsa_with_SHA384, "ec:p384");
}
END_TEST

START_TEST(test_root_refuses_bad_arguments)
{
	struct ca *ca = (struct ca *)1;
	char longorg[80];

	memset(longorg, 'x', 55);
	longorg[55] = '\0';     /* 55 + " S/MIME CA" = 65 characters: one too many */
	ck_assert_int_eq(ca_create_root(longorg, "kms-ca", "ec:p384", 30, &ca), KMS_ERR_INVALID);
	ck_assert_ptr_null(ca);
	ck_assert_int_eq(ca_create_root("", "kms-ca", "ec:p384", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root("Bad\nOrg", "kms-ca", "ec:p384", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root(ORG, "../etc", "ec:p384", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root(ORG, "", "ec:p384", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root(ORG, "kms-ca", "rsa:2048", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root(ORG, "kms-ca", "ec:p256", 30, &ca), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_create_root(ORG, "kms-ca", "ec:p384", 0, &ca), KMS_ERR_INVALID);
	ck_assert_ptr_null(ca);
}
END_TEST

START_TEST(test_root_utf8_organization_kept)
{
	struct ca *ca = NULL;
	const char *org = "B\xc3\xbcro M\xc3\xbcller GmbH";        /* "Büro Müller GmbH" */
	const X509_NAME *n;

	ck_assert_int_eq(ca_create_root(org, "kms-ca", "ec:p384", 30, &ca), 0);
	n = X509_get_subject_name(ca->cert);
	assert_name_entry(n, NID_organizationName, org);
	ck_assert_int_eq(ASN1_STRING_type(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, 0))), V_ASN1_UTF8STRING);
	ca_free(ca);
}
END_TEST

/* ------------------------------------------------------------- issuing */

START_TEST(test_sign_cert_for_rsa_user_has_full_profile)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "alice@example.org", "Alice Liddell", 365, CRL_URL);

	check_user_cert(x, rsa_ca, CA_USAGE_SIGN, rsa_user_a, "alice@example.org", "Alice Liddell", 365, CRL_URL);
	X509_free(x);
}
END_TEST

START_TEST(test_enc_cert_for_rsa_user_has_key_encipherment_only)
{
	X509 *x = issue(rsa_ca, CA_USAGE_ENC, rsa_user_b, "alice@example.org", "Alice Liddell", 365, CRL_URL);

	check_user_cert(x, rsa_ca, CA_USAGE_ENC, rsa_user_b, "alice@example.org", "Alice Liddell", 365, CRL_URL);
	ck_assert_uint_eq(X509_get_key_usage(x), KU_KEY_ENCIPHERMENT);
	X509_free(x);
}
END_TEST

START_TEST(test_sign_cert_for_ec_user_has_full_profile)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "bob@example.org", "Bob", 200, CRL_URL);

	check_user_cert(x, rsa_ca, CA_USAGE_SIGN, ec_user_a, "bob@example.org", "Bob", 200, CRL_URL);
	ck_assert_uint_eq(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION);
	X509_free(x);
}
END_TEST

START_TEST(test_enc_cert_for_ec_user_has_key_agreement_only)
{
	X509 *x = issue(rsa_ca, CA_USAGE_ENC, ec_user_b, "bob@example.org", "Bob", 200, CRL_URL);

	check_user_cert(x, rsa_ca, CA_USAGE_ENC, ec_user_b, "bob@example.org", "Bob", 200, CRL_URL);
	ck_assert_uint_eq(X509_get_key_usage(x), KU_KEY_AGREEMENT);
	X509_free(x);
}
END_TEST

START_TEST(test_p384_ca_issues_with_sha384_for_rsa_and_ec_users)
{
	X509 *a = issue(ec_ca, CA_USAGE_SIGN, rsa_user_a, "carol@example.org", NULL, 825, CRL_URL);
	X509 *b = issue(ec_ca, CA_USAGE_ENC, ec_user_b, "carol@example.org", NULL, 825, CRL_URL);

	/* No name: the address is the common name. */
	check_user_cert(a, ec_ca, CA_USAGE_SIGN, rsa_user_a, "carol@example.org", "carol@example.org", 825, CRL_URL);
	check_user_cert(b, ec_ca, CA_USAGE_ENC, ec_user_b, "carol@example.org", "carol@example.org", 825, CRL_URL);
	X509_free(a);
	X509_free(b);
}
END_TEST

START_TEST(test_krk_cert_has_key_encipherment_and_no_eku_or_san)
{
	X509 *x = issue(rsa_ca, CA_USAGE_KRK, rsa_user_b, NULL, "Example Org key recovery", 3000, CRL_URL);

	check_user_cert(x, rsa_ca, CA_USAGE_KRK, rsa_user_b, NULL, "Example Org key recovery", 3000, CRL_URL);
	ck_assert_ptr_null(ca_cert_email(x));
	X509_free(x);
}
END_TEST

START_TEST(test_krk_refuses_ec_key_and_missing_name)
{
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_KRK, ec_user_a, NULL, "KRK", 3650, NULL), KMS_ERR_INVALID);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_KRK, rsa_user_a, NULL, NULL, 3650, NULL), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_no_crl_url_means_no_distribution_point)
{
	X509 *a = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "dave@example.org", "Dave", 30, NULL);
	X509 *b = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "dave@example.org", "Dave", 30, "");

	check_user_cert(a, rsa_ca, CA_USAGE_SIGN, ec_user_a, "dave@example.org", "Dave", 30, NULL);
	check_user_cert(b, rsa_ca, CA_USAGE_SIGN, ec_user_a, "dave@example.org", "Dave", 30, NULL);
	X509_free(a);
	X509_free(b);
}
END_TEST

START_TEST(test_not_before_is_set_back_by_the_cas_margin)
{
	struct ca margin = { rsa_ca->cert, rsa_ca->key, rsa_ca->name, 300 };
	X509 *x = issue(&margin, CA_USAGE_SIGN, ec_user_a, "ivan@example.org", "Ivan", 30, NULL);
	struct tm tm;
	time_t nb, na, now = time(NULL);

	ck_assert_int_eq(ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm), 1);
	nb = timegm(&tm);
	ck_assert_int_eq(ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm), 1);
	na = timegm(&tm);
	/* Five minutes back; the end stays days after the moment of issue. */
	ck_assert_int_le(llabs((long long)(now - 300 - nb)), 5);
	ck_assert_int_le(llabs((long long)(na - now - 30 * 86400LL)), 5);
	X509_free(x);
	/* The largest margin still starts no earlier than the CA. */
	margin.not_before_margin = CA_MAX_NOT_BEFORE_MARGIN;
	x = issue(&margin, CA_USAGE_SIGN, ec_user_a, "ivan@example.org", "Ivan", 30, NULL);
	ck_assert_int_ge(ASN1_TIME_compare(X509_get0_notBefore(x), X509_get0_notBefore(rsa_ca->cert)), 0);
	X509_free(x);
	margin.not_before_margin = CA_MAX_NOT_BEFORE_MARGIN + 1;
	ck_assert_int_eq(issue_rc(&margin, CA_USAGE_SIGN, ec_user_a, "ivan@example.org", "Ivan", 30, NULL), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_subject_serial_number_sets_generations_apart)
{
	struct ca_issue_req r = { .usage = CA_USAGE_SIGN, .pubkey = ec_user_a, .email = "judy@example.org",
		.name = "Judy", .days = 30, .subject_serial = "3f2a9c01" };
	X509 *a = NULL, *b = NULL, *c = NULL;

	ck_assert_int_eq(ca_issue(rsa_ca, &r, &a), 0);
	r.usage = CA_USAGE_ENC;
	r.pubkey = ec_user_b;
	ck_assert_int_eq(ca_issue(rsa_ca, &r, &b), 0);
	r.subject_serial = "77e0d412";
	ck_assert_int_eq(ca_issue(rsa_ca, &r, &c), 0);
	/* One pair, one subject (gpgsm's identity); another generation, another subject (NSS's nickname). */
	ck_assert_int_eq(X509_NAME_cmp(X509_get_subject_name(a), X509_get_subject_name(b)), 0);
	ck_assert_int_ne(X509_NAME_cmp(X509_get_subject_name(b), X509_get_subject_name(c)), 0);
	assert_name_entry(X509_get_subject_name(a), NID_serialNumber, "3f2a9c01");
	ck_assert_int_eq(X509_NAME_entry_count(X509_get_subject_name(a)), 4);
	X509_free(a);
	X509_free(b);
	X509_free(c);
	r.subject_serial = "";
	ck_assert_int_eq(ca_issue(rsa_ca, &r, &a), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_serials_are_distinct)
{
	char *seen[24];

	for (int i = 0; i < 24; i++) {
		X509 *x = issue(ec_ca, CA_USAGE_SIGN, ec_user_a, "erin@example.org", NULL, 30, NULL);

		assert_serial_128(x);
		seen[i] = ca_serial_hex(X509_get0_serialNumber(x));
		for (int j = 0; j < i; j++)
			ck_assert_str_ne(seen[i], seen[j]);
		X509_free(x);
	}
	for (int i = 0; i < 24; i++)
		free(seen[i]);
}
END_TEST

START_TEST(test_issued_certs_verify_against_root_for_smime)
{
	X509 *rs = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "frank@example.org", "Frank", 365, CRL_URL);
	X509 *re = issue(rsa_ca, CA_USAGE_ENC, rsa_user_b, "frank@example.org", "Frank", 365, CRL_URL);
	X509 *es = issue(ec_ca, CA_USAGE_SIGN, ec_user_a, "frank@example.org", "Frank", 365, CRL_URL);
	X509 *ee = issue(ec_ca, CA_USAGE_ENC, ec_user_b, "frank@example.org", "Frank", 365, CRL_URL);

	ck_assert_int_eq(verify_chain(rsa_ca->cert, rs, X509_PURPOSE_SMIME_SIGN), 1);
	ck_assert_int_eq(verify_chain(rsa_ca->cert, re, X509_PURPOSE_SMIME_ENCRYPT), 1);
	ck_assert_int_eq(verify_chain(ec_ca->cert, es, X509_PURPOSE_SMIME_SIGN), 1);
	/*
	 * OpenSSL's smimeencrypt purpose demands keyEncipherment, which an EC
	 * key (keyAgreement) cannot have: check the chain and the EKU instead.
	 */
	ck_assert_int_eq(verify_chain(ec_ca->cert, ee, 0), 1);
	ck_assert_int_ne(X509_get_extended_key_usage(ee) & XKU_SMIME, 0);
	/* Purpose checks bite: an encryption certificate is no signing one, and the wrong root fails. */
	ck_assert_int_ne(verify_chain(rsa_ca->cert, re, X509_PURPOSE_SMIME_SIGN), 1);
	ck_assert_int_ne(verify_chain(ec_ca->cert, rs, X509_PURPOSE_SMIME_SIGN), 1);
	X509_free(rs);
	X509_free(re);
	X509_free(es);
	X509_free(ee);
}
END_TEST

START_TEST(test_validity_over_825_days_refused)
{
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "g@example.org", NULL, 826, NULL), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "825"));
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "g@example.org", NULL, 0, NULL), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_cert_never_outlives_its_ca)
{
	struct ca *shortca = NULL;
	X509 *x;

	ck_assert_int_eq(ca_create_root(ORG, "kms-ca", "ec:p384", 30, &shortca), 0);
	x = issue(shortca, CA_USAGE_SIGN, ec_user_a, "h@example.org", NULL, 365, NULL);
	ck_assert_int_eq(ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(shortca->cert)), 0);
	X509_free(x);
	ca_free(shortca);
}
END_TEST

/* A valid address of exactly len characters (len 70 to 300): 64-character local part, labels of 50. */
static void
make_address(char *out, size_t len)
{
	size_t o = 0, label = 0;

	memset(out, 'u', 64);
	o = 64;
	out[o++] = '@';
	while (o < len - 4) {
		if (label >= 50 && o < len - 5) {
			out[o++] = '.';
			label = 0;
			continue;
		}
		out[o++] = 'd';
		label++;
	}
	memcpy(out + o, ".org", 4);
	out[len] = '\0';
}

/*
 * kmsd checks an address with kms_addr_valid before it asks the CA; the CA
 * used to stop at 128 characters, so kmsd took addresses it then could not
 * certify.  Now the CA certifies every address kms_addr_valid accepts: one
 * of 254 characters goes in the SAN (too long for subject emailAddress,
 * ub 128, and CN, ub 64), and the certificate verifies for S/MIME.
 */
START_TEST(test_ca_certifies_every_address_kmsd_accepts)
{
	char addr[KMS_ADDR_MAX + 1];
	X509 *x;
	char *san;
	X509_EXTENSION *ext;

	make_address(addr, KMS_ADDR_MAX);
	ck_assert_uint_eq(strlen(addr), 254);
	ck_assert_int_eq(kms_addr_valid(addr), 1);
	x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, addr, NULL, 30, NULL);
	san = ca_cert_email(x);
	ck_assert_str_eq(san, addr);
	free(san);
	ck_assert_ptr_null(name_entry(X509_get_subject_name(x), NID_pkcs9_emailAddress));
	ck_assert_ptr_null(name_entry(X509_get_subject_name(x), NID_commonName));
	/* The subject keeps O, so the SAN need not be critical. */
	ck_assert_int_gt(X509_NAME_entry_count(X509_get_subject_name(x)), 0);
	ext = X509_get_ext(x, X509_get_ext_by_NID(x, NID_subject_alt_name, -1));
	ck_assert_int_eq(X509_EXTENSION_get_critical(ext), 0);
	ck_assert_int_eq(verify_chain(rsa_ca->cert, x, X509_PURPOSE_SMIME_SIGN), 1);
	X509_free(x);

	/* With a name, the name is the CN; an address of 128 still fits emailAddress. */
	make_address(addr, 128);
	x = issue(rsa_ca, CA_USAGE_ENC, rsa_user_a, addr, "Long Address", 30, NULL);
	san = name_entry(X509_get_subject_name(x), NID_pkcs9_emailAddress);
	ck_assert_str_eq(san, addr);
	OPENSSL_free(san);
	san = name_entry(X509_get_subject_name(x), NID_commonName);
	ck_assert_str_eq(san, "Long Address");
	OPENSSL_free(san);
	X509_free(x);
}
END_TEST

START_TEST(test_bad_addresses_refused)
{
	const char *bad[] = {
		"no-at-sign", "a@b@example.org", "a b@example.org", "@example.org", "a@",
		"a@example.org,DNS:evil.example", "a@localhost", "\xc3\xbc@example.org",
		".a@example.org", "a..b@example.org", "a@example..org", "a@-example.org",
		"a@example.org\n", "\"quoted\"@example.org",
	};
	char longaddr[300];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, bad[i], NULL, 30, NULL) == KMS_ERR_INVALID,
		    "accepted %s", bad[i]);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, NULL, "Name", 30, NULL), KMS_ERR_INVALID);
	/* A local part of 65 characters (RFC 5321 allows 64). */
	memset(longaddr, 'a', 65);
	snprintf(longaddr + 65, sizeof(longaddr) - 65, "@example.org");
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, longaddr, "Name", 30, NULL), KMS_ERR_INVALID);
	/* 255 characters in all. */
	make_address(longaddr, 255);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, longaddr, "Name", 30, NULL), KMS_ERR_INVALID);
	/* And the odd-looking but valid ones pass. */
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "o'brien+tag@mail.example-corp.org", NULL, 30,
	    NULL), 0);
}
END_TEST

START_TEST(test_bad_names_and_urls_refused)
{
	char longname[80];

	memset(longname, 'n', 65);
	longname[65] = '\0';
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", longname, 30, NULL), KMS_ERR_INVALID);
	longname[64] = '\0';
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", longname, 30, NULL), 0);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", "Tab\there", 30, NULL), KMS_ERR_INVALID);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", "\xff\xfe", 30, NULL), KMS_ERR_INVALID);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", NULL, 30, "ldap://x/crl"), KMS_ERR_INVALID);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_SIGN, ec_user_a, "i@example.org", NULL, 30, "http://x/a b"), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_issue_needs_the_ca_key)
{
	struct ca nokey = { rsa_ca->cert, NULL, rsa_ca->name, 0 };

	ck_assert_int_eq(issue_rc(&nokey, CA_USAGE_SIGN, ec_user_a, "j@example.org", NULL, 30, NULL), KMS_ERR_STATE);
}
END_TEST

START_TEST(test_issue_refuses_weak_user_keys)
{
	EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *k1 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "secp256k1");

	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_ENC, weak, "k@example.org", NULL, 30, NULL), KMS_ERR_INVALID);
	ck_assert_int_eq(issue_rc(rsa_ca, CA_USAGE_ENC, k1, "k@example.org", NULL, 30, NULL), KMS_ERR_INVALID);
	EVP_PKEY_free(weak);
	EVP_PKEY_free(k1);
}
END_TEST

/* ----------------------------------------------------------------- CSR */

static X509_EXTENSION *
san_ext(int type, const char *value)
{
	GENERAL_NAMES *gens = GENERAL_NAMES_new();
	GENERAL_NAME *g = GENERAL_NAME_new();
	ASN1_IA5STRING *s = ASN1_IA5STRING_new();
	X509_EXTENSION *ext;

	ck_assert_int_eq(ASN1_STRING_set(s, value, (int)strlen(value)), 1);
	GENERAL_NAME_set0_value(g, type, s);
	sk_GENERAL_NAME_push(gens, g);
	ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
	ck_assert_ptr_nonnull(ext);
	GENERAL_NAMES_free(gens);
	return ext;
}

/* A CSR signed by key; any of cn, org, subj_email, san_email may be NULL. */
static X509_REQ *
make_csr(EVP_PKEY *key, const char *cn, const char *org, const char *subj_email, const char *san_email)
{
	X509_REQ *r = X509_REQ_new();
	X509_NAME *n = X509_REQ_get_subject_name(r);

	ck_assert_int_eq(X509_REQ_set_version(r, X509_REQ_VERSION_1), 1);
	if (org)
		ck_assert_int_eq(X509_NAME_add_entry_by_NID(n, NID_organizationName, MBSTRING_UTF8,
		    (const unsigned char *)org, -1, -1, 0), 1);
	if (cn)
		ck_assert_int_eq(X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8,
		    (const unsigned char *)cn, -1, -1, 0), 1);
	if (subj_email)
		ck_assert_int_eq(X509_NAME_add_entry_by_NID(n, NID_pkcs9_emailAddress, MBSTRING_ASC,
		    (const unsigned char *)subj_email, -1, -1, 0), 1);
	ck_assert_int_eq(X509_REQ_set_pubkey(r, key), 1);
	if (san_email) {
		STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();

		sk_X509_EXTENSION_push(exts, san_ext(GEN_EMAIL, san_email));
		ck_assert_int_eq(X509_REQ_add_extensions(r, exts), 1);
		sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	}
	ck_assert_int_gt(X509_REQ_sign(r, key, EVP_sha256()), 0);
	return r;
}

START_TEST(test_csr_with_san_gets_signing_cert)
{
	X509_REQ *r = make_csr(ec_user_a, "Whatever I Like", "Evil Corp", NULL, "grace@example.org");
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_msg(ca_issue_csr(rsa_ca, r, 365, CRL_URL, NULL, &x, &email) == 0, "%s", kms_last_error());
	ck_assert_str_eq(email, "grace@example.org");
	/* Only the address is validated: it is the common name, and O is the CA's. */
	check_user_cert(x, rsa_ca, CA_USAGE_SIGN, ec_user_a, "grace@example.org", "grace@example.org", 365, CRL_URL);
	ck_assert_int_eq(verify_chain(rsa_ca->cert, x, X509_PURPOSE_SMIME_SIGN), 1);
	free(email);
	X509_free(x);
	X509_REQ_free(r);
}
END_TEST

START_TEST(test_csr_subject_email_used_without_san)
{
	X509_REQ *r = make_csr(rsa_user_a, "Heidi", NULL, "heidi@example.org", NULL);
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_msg(ca_issue_csr(ec_ca, r, 100, CRL_URL, NULL, &x, &email) == 0, "%s", kms_last_error());
	ck_assert_str_eq(email, "heidi@example.org");
	check_user_cert(x, ec_ca, CA_USAGE_SIGN, rsa_user_a, "heidi@example.org", "heidi@example.org", 100, CRL_URL);
	free(email);
	X509_free(x);
	X509_REQ_free(r);
}
END_TEST

START_TEST(test_csr_san_wins_over_subject_email)
{
	X509_REQ *r = make_csr(ec_user_a, NULL, NULL, "other@example.org", "ivan@example.org");
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_int_eq(ca_issue_csr(rsa_ca, r, 30, NULL, NULL, &x, &email), 0);
	ck_assert_str_eq(email, "ivan@example.org");
	assert_san_email(x, "ivan@example.org");
	free(email);
	X509_free(x);
	X509_REQ_free(r);
}
END_TEST

START_TEST(test_csr_with_broken_signature_refused)
{
	X509_REQ *r = make_csr(rsa_user_a, NULL, NULL, NULL, "judy@example.org"), *bad;
	unsigned char *der = NULL;
	const unsigned char *p;
	int len = i2d_X509_REQ(r, &der);
	X509 *x = (X509 *)1;
	char *email = (char *)1;

	ck_assert_int_gt(len, 0);
	der[len - 1] ^= 0x01;           /* last byte of the RSA signature */
	p = der;
	bad = d2i_X509_REQ(NULL, &p, len);
	ck_assert_ptr_nonnull(bad);
	ck_assert_int_eq(ca_issue_csr(rsa_ca, bad, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_null(x);
	ck_assert_ptr_null(email);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "self-signature"));
	OPENSSL_free(der);
	X509_REQ_free(bad);
	X509_REQ_free(r);
}
END_TEST

START_TEST(test_csr_signed_by_another_key_refused)
{
	/* The CSR carries rsa_user_a's public key but is signed by rsa_user_b. */
	X509_REQ *r = make_csr(rsa_user_b, NULL, NULL, NULL, "kim@example.org");
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_int_eq(X509_REQ_set_pubkey(r, rsa_user_a), 1);
	ck_assert_int_eq(ca_issue_csr(rsa_ca, r, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_null(x);
	X509_REQ_free(r);
}
END_TEST

START_TEST(test_csr_with_weak_key_refused)
{
	EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *p521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	X509_REQ *r1 = make_csr(weak, NULL, NULL, NULL, "leo@example.org");
	X509_REQ *r2 = make_csr(p521, NULL, NULL, NULL, "leo@example.org");
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_int_eq(ca_issue_csr(rsa_ca, r1, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "1024"));
	ck_assert_int_eq(ca_issue_csr(rsa_ca, r2, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "curve"));
	ck_assert_ptr_null(x);
	ck_assert_ptr_null(email);
	X509_REQ_free(r1);
	X509_REQ_free(r2);
	EVP_PKEY_free(weak);
	EVP_PKEY_free(p521);
}
END_TEST

START_TEST(test_csr_without_address_refused)
{
	X509_REQ *r = make_csr(ec_user_a, "No Address", "Org", NULL, NULL);
	X509_REQ *r2 = make_csr(ec_user_a, NULL, NULL, NULL, "not an address");
	X509 *x = NULL;
	char *email = NULL;

	ck_assert_int_eq(ca_issue_csr(rsa_ca, r, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "no email address"));
	ck_assert_int_eq(ca_issue_csr(rsa_ca, r2, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "not an address"));
	ck_assert_ptr_null(x);
	ck_assert_ptr_null(email);
	X509_REQ_free(r);
	X509_REQ_free(r2);
}
END_TEST

START_TEST(test_csr_with_dns_san_only_refused)
{
	X509_REQ *r = X509_REQ_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509 *x = NULL;
	char *email = NULL;

	X509_REQ_set_pubkey(r, ec_user_a);
	sk_X509_EXTENSION_push(exts, san_ext(GEN_DNS, "www.example.org"));
	X509_REQ_add_extensions(r, exts);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	ck_assert_int_gt(X509_REQ_sign(r, ec_user_a, EVP_sha256()), 0);
	ck_assert_int_eq(ca_issue_csr(rsa_ca, r, 30, NULL, NULL, &x, &email), KMS_ERR_INVALID);
	X509_REQ_free(r);
}
END_TEST

/* ------------------------------------------------------- small helpers */

START_TEST(test_serial_hex_is_lowercase_without_leading_zeros)
{
	ASN1_INTEGER *ai = ASN1_INTEGER_new();
	BIGNUM *bn = NULL;
	char *s;

	ck_assert_int_eq(BN_hex2bn(&bn, "0A0BFF"), 6);
	ck_assert_ptr_nonnull(BN_to_ASN1_INTEGER(bn, ai));
	s = ca_serial_hex(ai);
	ck_assert_str_eq(s, "a0bff");
	free(s);
	ASN1_INTEGER_set(ai, 0);
	s = ca_serial_hex(ai);
	ck_assert_str_eq(s, "0");
	free(s);
	ck_assert_ptr_null(ca_serial_hex(NULL));
	BN_free(bn);
	ASN1_INTEGER_free(ai);
}
END_TEST

START_TEST(test_fingerprint_is_sha256_of_der)
{
	unsigned char *der = NULL, md[32];
	int len = i2d_X509(rsa_ca->cert, &der);
	char *fp = ca_cert_fingerprint(rsa_ca->cert), *want;

	ck_assert_int_eq(EVP_Digest(der, (size_t)len, md, NULL, EVP_sha256(), NULL), 1);
	want = kms_hex(md, 32);
	ck_assert_str_eq(fp, want);
	ck_assert_uint_eq(strlen(fp), 64);
	free(fp);
	free(want);
	OPENSSL_free(der);
}
END_TEST

START_TEST(test_cert_email_reads_san_else_subject)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "Mallory@Example.org", NULL, 30, NULL);
	char *e = ca_cert_email(x);

	ck_assert_str_eq(e, "Mallory@Example.org");
	free(e);
	/* Without a SAN, the subject emailAddress is used. */
	X509_EXTENSION_free(X509_delete_ext(x, X509_get_ext_by_NID(x, NID_subject_alt_name, -1)));
	e = ca_cert_email(x);
	ck_assert_str_eq(e, "Mallory@Example.org");
	free(e);
	ck_assert_ptr_null(ca_cert_email(rsa_ca->cert));
	X509_free(x);
	ck_assert_str_eq(ca_usage_name(CA_USAGE_SIGN), "sign");
	ck_assert_str_eq(ca_usage_name(CA_USAGE_ENC), "enc");
	ck_assert_str_eq(ca_usage_name(CA_USAGE_KRK), "krk");
}
END_TEST

/* --------------------------------------------------------------- store */

static char *dir;
static struct kms_store *st;

static void
store_setup(void)
{
	char *path;

	dir = tu_tmpdir();
	path = kms_path_join(dir, KMS_STORE_FILE);
	ck_assert_msg(kms_store_open(path, KMS_STORE_CREATE, &st) == 0, "%s", kms_last_error());
	free(path);
}

static void
store_teardown(void)
{
	kms_store_close(st);
	st = NULL;
	tu_rmtree(dir);
	free(dir);
}

static void
assert_row_matches(const struct ca_cert_row *r, X509 *x, const char *email, const char *name,
    const char *usage, const char *origin, const char *issued_by)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(x)), kt[32];
	unsigned char *der = NULL;
	int len = i2d_X509(x, &der);

	ck_assert_str_eq(r->serial, serial);
	ck_assert_str_eq(r->email, email);
	ck_assert_str_eq(r->name, name);
	ck_assert_str_eq(r->usage, usage);
	ck_assert_str_eq(r->origin, origin);
	ck_assert_str_eq(r->issued_by, issued_by);
	ck_assert_str_eq(r->key_type, ca_key_type_of(X509_get0_pubkey(x), kt, sizeof(kt)));
	ck_assert_ptr_nonnull(strstr(r->subject, "CN="));
	ck_assert_ptr_nonnull(strstr(r->subject, "O=" ORG));
	ck_assert_int_eq(r->not_before, asn1_to_time(X509_get0_notBefore(x)));
	ck_assert_int_eq(r->not_after, asn1_to_time(X509_get0_notAfter(x)));
	ck_assert_int_le(llabs((long long)(r->issued - time(NULL))), 5);
	ck_assert_uint_eq(r->der_len, (size_t)len);
	ck_assert_mem_eq(r->der, der, (size_t)len);
	free(serial);
	OPENSSL_free(der);
}

START_TEST(test_store_ca_save_and_load_round_trip)
{
	struct ca *loaded = (struct ca *)1;
	char *pem = NULL;
	size_t len;

	ck_assert_int_eq(ca_store_load(st, NULL, NULL, &loaded), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(loaded);
	ck_assert_int_eq(ca_key_encrypt(ec_ca->key, "pass phrase", &pem, &len), 0);
	ck_assert_msg(ca_store_save(st, ec_ca, pem, "ec:p384") == 0, "%s", kms_last_error());
	ck_assert_int_eq(ca_store_save(st, ec_ca, pem, "ec:p384"), KMS_ERR_EXISTS);
	/* Certificate only. */
	ck_assert_int_eq(ca_store_load(st, "kms-ca", NULL, &loaded), 0);
	ck_assert_int_eq(X509_cmp(loaded->cert, ec_ca->cert), 0);
	ck_assert_ptr_null(loaded->key);
	ck_assert_str_eq(loaded->name, "kms-ca");
	ca_free(loaded);
	/* With the key. */
	ck_assert_int_eq(ca_store_load(st, NULL, "pass phrase", &loaded), 0);
	assert_same_private_key(loaded->key, ec_ca->key);
	ca_free(loaded);
	ck_assert_int_eq(ca_store_load(st, "kms-ca", "wrong", &loaded), KMS_ERR_PERM);
	ck_assert_ptr_null(loaded);
	ck_assert_int_eq(ca_store_load(st, "other-ca", NULL, &loaded), KMS_ERR_STATE);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "other-ca"));
	free(pem);
}
END_TEST

START_TEST(test_store_refuses_unencrypted_ca_key)
{
	ck_assert_int_eq(ca_store_save(st, ec_ca, "-----BEGIN PRIVATE KEY-----\n", "ec:p384"), KMS_ERR_INVALID);
}
END_TEST

START_TEST(test_store_find_by_address_is_case_insensitive_newest_first)
{
	X509 *s = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "Alice@Example.org", "Alice", 365, CRL_URL);
	X509 *e = issue(rsa_ca, CA_USAGE_ENC, rsa_user_b, "Alice@Example.org", "Alice", 365, CRL_URL);
	struct ca_cert_row *rows = NULL;
	size_t n = 0;

	ck_assert_int_eq(ca_store_add_cert(st, s, "Alice@Example.org", "Alice", CA_USAGE_SIGN, "enroll", "root"), 0);
	ck_assert_int_eq(ca_store_add_cert(st, e, "Alice@Example.org", "Alice", CA_USAGE_ENC, "enroll", "root"), 0);
	ck_assert_int_eq(ca_store_find(st, "alice@EXAMPLE.ORG", &rows, &n), 0);
	ck_assert_uint_eq(n, 2);
	assert_row_matches(&rows[0], e, "Alice@Example.org", "Alice", "enc", "enroll", "root");
	assert_row_matches(&rows[1], s, "Alice@Example.org", "Alice", "sign", "enroll", "root");
	ck_assert_int_eq(rows[0].revoked_at, 0);
	ck_assert_int_eq(rows[0].reason, -1);
	ck_assert_int_eq(rows[0].invalidity, 0);
	ca_cert_rows_free(rows, n);
	ck_assert_int_eq(ca_store_find(st, "nobody@example.org", &rows, &n), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(rows);
	ck_assert_uint_eq(n, 0);
	X509_free(s);
	X509_free(e);
}
END_TEST

START_TEST(test_store_display_name_is_the_newest_enrolled_one)
{
	X509 *a = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "kim@example.org", "Kim Old", 365, NULL);
	X509 *b = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "kim@example.org", "Kim Example", 365, NULL);
	X509 *c = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "kim@example.org", NULL, 365, NULL);
	char *name = NULL;

	ck_assert_int_eq(ca_store_display_name(st, "kim@example.org", &name), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(name);
	ck_assert_int_eq(ca_store_add_cert(st, a, "kim@example.org", "Kim Old", CA_USAGE_SIGN, "enroll", "root"), 0);
	sqlite3_exec(kms_store_db(st), "UPDATE certs SET issued = issued - 100", NULL, NULL, NULL);
	ck_assert_int_eq(ca_store_add_cert(st, b, "kim@example.org", "Kim Example", CA_USAGE_SIGN, "enroll", "root"), 0);
	/* A CSR certificate carries no display name: it does not count. */
	ck_assert_int_eq(ca_store_add_cert(st, c, "kim@example.org", "", CA_USAGE_SIGN, "csr", "root"), 0);
	ck_assert_int_eq(ca_store_display_name(st, "KIM@example.org", &name), 0);
	ck_assert_str_eq(name, "Kim Example");
	free(name);
	X509_free(a);
	X509_free(b);
	X509_free(c);
}
END_TEST

START_TEST(test_store_find_by_serial_any_case_with_colons)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "bob@example.org", "Bob", 365, NULL);
	const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
	char *hex = ca_serial_hex(sn), colons[128], zeros[80];
	struct ca_cert_row *rows = NULL;
	size_t n = 0, o = 0;

	ck_assert_int_eq(ca_store_add_cert(st, x, "bob@example.org", "Bob", CA_USAGE_SIGN, "csr", "admin"), 0);
	/* "7F:0A:..." : upper case, colons, every octet with its leading zero. */
	for (int i = 0; i < ASN1_STRING_length(sn); i++)
		o += (size_t)snprintf(colons + o, sizeof(colons) - o, "%s%02X", i ? ":" : "",
		    ASN1_STRING_get0_data(sn)[i]);
	ck_assert_int_eq(ca_store_find(st, colons, &rows, &n), 0);
	ck_assert_uint_eq(n, 1);
	assert_row_matches(&rows[0], x, "bob@example.org", "Bob", "sign", "csr", "admin");
	ca_cert_rows_free(rows, n);
	snprintf(zeros, sizeof(zeros), "00%s", hex);
	ck_assert_int_eq(ca_store_find(st, zeros, &rows, &n), 0);
	ca_cert_rows_free(rows, n);
	ck_assert_int_eq(ca_store_find(st, hex, &rows, &n), 0);
	ca_cert_rows_free(rows, n);
	ck_assert_int_eq(ca_store_find(st, "abcdef", &rows, &n), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_store_find(st, "xyz!", &rows, &n), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_find(st, "::", &rows, &n), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_find(st, "", &rows, &n), KMS_ERR_INVALID);
	free(hex);
	X509_free(x);
}
END_TEST

START_TEST(test_store_has_valid_ignores_revoked_and_expired)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "carol@example.org", NULL, 30, NULL);
	char *serial = ca_serial_hex(X509_get0_serialNumber(x)), sql[256];
	struct ca_cert_row *rows = NULL;
	size_t n = 0;
	time_t now = time(NULL);

	ck_assert_int_eq(ca_store_has_valid(st, "carol@example.org", now), 0);
	ck_assert_int_eq(ca_store_knows_email(st, "carol@example.org"), 0);
	ck_assert_int_eq(ca_store_add_cert(st, x, "carol@example.org", "", CA_USAGE_SIGN, "enroll", "root"), 0);
	ck_assert_int_eq(ca_store_has_valid(st, "CAROL@example.org", now), 1);
	ck_assert_int_eq(ca_store_has_valid(st, "carol@example.org", now + 31 * 86400), 0);
	ck_assert_int_eq(ca_store_knows_email(st, "Carol@Example.Org"), 1);
	ck_assert_int_eq(ca_store_knows_email(st, "dave@example.org"), 0);
	/* Revoked by hand, as ca_store_revoke would. */
	snprintf(sql, sizeof(sql), "UPDATE certs SET revoked_at = %lld, reason = 1, invalidity = %lld "
	    "WHERE serial = '%s'", (long long)now, (long long)now - 3600, serial);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), sql, NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(ca_store_has_valid(st, "carol@example.org", now), 0);
	ck_assert_int_eq(ca_store_knows_email(st, "carol@example.org"), 1);
	ck_assert_int_eq(ca_store_find(st, serial, &rows, &n), 0);
	ck_assert_int_eq(rows[0].revoked_at, now);
	ck_assert_int_eq(rows[0].reason, 1);
	ck_assert_int_eq(rows[0].invalidity, now - 3600);
	ca_cert_rows_free(rows, n);
	free(serial);
	X509_free(x);
}
END_TEST

START_TEST(test_store_list_orders_by_email_and_filters_revoked)
{
	const char *emails[] = { "zed@example.org", "amy@example.org", "Mia@example.org" };
	struct ca_cert_row *rows = NULL;
	size_t n = 0;

	for (int i = 0; i < 3; i++) {
		X509 *x = issue(ec_ca, CA_USAGE_SIGN, ec_user_a, emails[i], NULL, 30, NULL);

		ck_assert_int_eq(ca_store_add_cert(st, x, emails[i], NULL, CA_USAGE_SIGN, "enroll", NULL), 0);
		X509_free(x);
	}
	ck_assert_int_eq(ca_store_list(st, 0, &rows, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(rows[0].email, "amy@example.org");
	ck_assert_str_eq(rows[1].email, "Mia@example.org");
	ck_assert_str_eq(rows[2].email, "zed@example.org");
	ck_assert_str_eq(rows[0].name, "");
	ck_assert_str_eq(rows[0].issued_by, "");
	ca_cert_rows_free(rows, n);
	ck_assert_int_eq(ca_store_list(st, 1, &rows, &n), 0);
	ck_assert_uint_eq(n, 0);
	ca_cert_rows_free(rows, n);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "UPDATE certs SET revoked_at = 1, reason = 0 "
	    "WHERE email = 'mia@example.org'", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(ca_store_list(st, 1, &rows, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(rows[0].email, "Mia@example.org");
	ck_assert_int_eq(rows[0].reason, 0);
	ca_cert_rows_free(rows, n);
}
END_TEST

START_TEST(test_store_find_cert_by_issuer_serial_and_by_ski)
{
	X509 *x = issue(rsa_ca, CA_USAGE_ENC, rsa_user_b, "erin@example.org", NULL, 30, NULL), *got = NULL;
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
	ASN1_OCTET_STRING *other = ASN1_OCTET_STRING_new();
	ASN1_INTEGER *one = ASN1_INTEGER_new();
	sqlite3_stmt *s;
	char *hex = kms_hex(ASN1_STRING_get0_data(ski), (size_t)ASN1_STRING_length(ski));

	ck_assert_int_eq(ca_store_add_cert(st, x, NULL, NULL, CA_USAGE_ENC, "enroll", "root"), 0);
	/* The address defaults to the certificate's, the ski column is filled. */
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "SELECT email, ski FROM certs", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "erin@example.org");
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 1), hex);
	sqlite3_finalize(s);

	ck_assert_int_eq(ca_store_find_cert(st, X509_get_issuer_name(x), X509_get0_serialNumber(x), NULL, &got), 0);
	ck_assert_int_eq(X509_cmp(got, x), 0);
	X509_free(got);
	ck_assert_int_eq(ca_store_find_cert(st, NULL, X509_get0_serialNumber(x), NULL, &got), 0);
	X509_free(got);
	/* Right serial, another issuer: not ours. */
	ck_assert_int_eq(ca_store_find_cert(st, X509_get_subject_name(x), X509_get0_serialNumber(x),
	    NULL, &got), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(got);
	ck_assert_int_eq(ca_store_find_cert(st, NULL, NULL, ski, &got), 0);
	ck_assert_int_eq(X509_cmp(got, x), 0);
	X509_free(got);
	ASN1_OCTET_STRING_set(other, (const unsigned char *)"not a key id", 12);
	ASN1_INTEGER_set(one, 1);
	ck_assert_int_eq(ca_store_find_cert(st, NULL, one, other, &got), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_store_find_cert(st, NULL, NULL, NULL, &got), KMS_ERR_INVALID);
	/* Rows from before schema 5 have no ski: still found. */
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "UPDATE certs SET ski = NULL", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(ca_store_find_cert(st, NULL, NULL, ski, &got), 0);
	ck_assert_int_eq(X509_cmp(got, x), 0);
	X509_free(got);
	free(hex);
	ASN1_OCTET_STRING_free(other);
	ASN1_INTEGER_free(one);
	X509_free(x);
}
END_TEST

START_TEST(test_store_add_cert_joins_the_callers_transaction)
{
	X509 *x = issue(rsa_ca, CA_USAGE_SIGN, ec_user_a, "frank@example.org", NULL, 30, NULL);
	struct ca_cert_row *rows = NULL;
	size_t n = 0;

	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(ca_store_add_cert(st, x, "frank@example.org", NULL, CA_USAGE_SIGN, "enroll", NULL), 0);
	ck_assert_int_eq(sqlite3_get_autocommit(kms_store_db(st)), 0);       /* still inside */
	kms_store_rollback(st);
	ck_assert_int_eq(ca_store_find(st, "frank@example.org", &rows, &n), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(ca_store_add_cert(st, x, "frank@example.org", NULL, CA_USAGE_SIGN, "enroll", NULL), 0);
	ck_assert_int_eq(kms_store_commit(st), 0);
	ck_assert_int_eq(ca_store_find(st, "frank@example.org", &rows, &n), 0);
	ck_assert_uint_eq(n, 1);
	ca_cert_rows_free(rows, n);
	/* Outside a transaction it commits on its own; a second insert of the same serial is refused. */
	ck_assert_int_eq(ca_store_add_cert(st, x, "frank@example.org", NULL, CA_USAGE_SIGN, "enroll", NULL),
	    KMS_ERR_EXISTS);
	ck_assert_int_eq(ca_store_add_cert(st, x, "frank@example.org", NULL, CA_USAGE_SIGN, "bogus", NULL),
	    KMS_ERR_INVALID);
	X509_free(x);
}
END_TEST

START_TEST(test_store_keeps_krk_without_address)
{
	X509 *x = issue(rsa_ca, CA_USAGE_KRK, rsa_user_b, NULL, "Key recovery", 3650, NULL);
	struct ca_cert_row *rows = NULL;
	size_t n = 0;
	char *serial = ca_serial_hex(X509_get0_serialNumber(x));

	ck_assert_int_eq(ca_store_add_cert(st, x, NULL, "Key recovery", CA_USAGE_KRK, "init", "root"), 0);
	ck_assert_int_eq(ca_store_find(st, serial, &rows, &n), 0);
	ck_assert_str_eq(rows[0].usage, "krk");
	ck_assert_str_eq(rows[0].email, "");
	ck_assert_str_eq(rows[0].key_type, "rsa:2048");
	ca_cert_rows_free(rows, n);
	free(serial);
	X509_free(x);
}
END_TEST

/* ------------------------------------------------------------- PKCS#12 */

struct p12_fixture {
	X509 *sign, *enc;
	STACK_OF(X509) *chain;
	struct ca_p12_item items[2];
};

static void
p12_make(struct p12_fixture *f, EVP_PKEY *sk, EVP_PKEY *ek)
{
	f->sign = issue(rsa_ca, CA_USAGE_SIGN, sk, "alice@example.org", "Alice", 365, CRL_URL);
	f->enc = issue(rsa_ca, CA_USAGE_ENC, ek, "alice@example.org", "Alice", 365, CRL_URL);
	f->chain = sk_X509_new_null();
	sk_X509_push(f->chain, rsa_ca->cert);
	f->items[0].key = sk;
	f->items[0].cert = f->sign;
	f->items[0].friendly_name = "Alice (signing)";
	f->items[1].key = ek;
	f->items[1].cert = f->enc;
	f->items[1].friendly_name = "Alice (encryption)";
}

static void
p12_done(struct p12_fixture *f)
{
	X509_free(f->sign);
	X509_free(f->enc);
	sk_X509_free(f->chain);
}

static unsigned char *
p12_build(struct p12_fixture *f, enum ca_p12_format fmt, const char *pw, size_t *len)
{
	unsigned char *der = NULL;

	ck_assert_msg(ca_p12_build(f->items, 2, f->chain, pw, fmt, 2048, &der, len) == 0, "%s", kms_last_error());
	ck_assert_ptr_nonnull(der);
	return der;
}

/* ca_p12_read gives back both items, paired, named, and the root as chain. */
static void
check_read_back(struct p12_fixture *f, const unsigned char *der, size_t len, const char *pw)
{
	struct ca_p12_contents *c = NULL;

	ck_assert_msg(ca_p12_read(der, len, pw, &c) == 0, "%s", kms_last_error());
	ck_assert_uint_eq(c->n, 2);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_ptr_nonnull(c->keys[i]);
		ck_assert_int_eq(X509_check_private_key(c->certs[i], c->keys[i]), 1);
		ck_assert_int_eq(X509_cmp(c->certs[i], f->items[i].cert), 0);
		ck_assert_str_eq(c->names[i], f->items[i].friendly_name);
		assert_same_private_key(c->keys[i], f->items[i].key);
	}
	ck_assert_int_eq(sk_X509_num(c->others), 1);
	ck_assert_int_eq(X509_cmp(sk_X509_value(c->others, 0), rsa_ca->cert), 0);
	ca_p12_contents_free(c);
}

/* OpenSSL's own reader: MAC, then PKCS12_parse (one key, the rest as CA certs). */
static void
check_openssl_reads(const unsigned char *der, size_t len, const char *pw)
{
	const unsigned char *p = der;
	PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	STACK_OF(X509) *ca = NULL;

	ck_assert_ptr_nonnull(p12);
	ck_assert_int_eq(PKCS12_verify_mac(p12, pw, -1), 1);
	ck_assert_int_eq(PKCS12_verify_mac(p12, "not the password", -1), 0);
	ck_assert_int_eq(PKCS12_parse(p12, pw, &key, &cert, &ca), 1);
	ck_assert_ptr_nonnull(key);
	ck_assert_ptr_nonnull(cert);
	ck_assert_int_eq(X509_check_private_key(cert, key), 1);
	ck_assert_int_eq(sk_X509_num(ca), 2);      /* the other item's certificate and the root */
	EVP_PKEY_free(key);
	X509_free(cert);
	sk_X509_pop_free(ca, X509_free);
	PKCS12_free(p12);
	ERR_clear_error();
}

/* The PBES2 parameters of alg: KDF PBKDF2 with HMAC-SHA256, AES-256-CBC. */
static void
assert_pbes2_aes256_pbkdf2_sha256(const X509_ALGOR *alg)
{
	PBE2PARAM *pbe2;
	PBKDF2PARAM *kdf;

	ck_assert_int_eq(OBJ_obj2nid(alg->algorithm), NID_pbes2);
	pbe2 = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter);
	ck_assert_ptr_nonnull(pbe2);
	ck_assert_int_eq(OBJ_obj2nid(pbe2->keyfunc->algorithm), NID_id_pbkdf2);
	ck_assert_int_eq(OBJ_obj2nid(pbe2->encryption->algorithm), NID_aes_256_cbc);
	kdf = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter);
	ck_assert_ptr_nonnull(kdf);
	ck_assert_ptr_nonnull(kdf->prf);       /* absent would mean HMAC-SHA1 */
	ck_assert_int_eq(OBJ_obj2nid(kdf->prf->algorithm), NID_hmacWithSHA256);
	ck_assert_int_eq(ASN1_INTEGER_get(kdf->iter), 2048);
	PBKDF2PARAM_free(kdf);
	PBE2PARAM_free(pbe2);
}

struct p12_layout {
	int mac_nid;
	int plain_safes, encrypted_safes;
	int cert_bags_plain, cert_bags_encrypted;
	int key_bags, key_alg_nid;
	int key_bags_linked;            /* key bags whose localKeyID matches a certificate bag's */
	int max_bags_per_plain_cert_safe;
};

/* Walk the file as a client would and note what protects what. */
static void
p12_inspect(const unsigned char *der, size_t len, const char *pw, struct p12_layout *l)
{
	const unsigned char *p = der;
	PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
	const X509_ALGOR *macalg = NULL;
	const ASN1_INTEGER *iter = NULL;
	STACK_OF(PKCS7) *safes;
	const ASN1_TYPE *cert_ids[8];
	int ncert_ids = 0;
	STACK_OF(PKCS12_SAFEBAG) *all_bags[8];
	int nall = 0;

	memset(l, 0, sizeof(*l));
	ck_assert_ptr_nonnull(p12);
	PKCS12_get0_mac(NULL, &macalg, NULL, &iter, p12);
	ck_assert_ptr_nonnull(macalg);
	l->mac_nid = OBJ_obj2nid(macalg->algorithm);
	ck_assert_int_eq(ASN1_INTEGER_get(iter), 2048);
	safes = PKCS12_unpack_authsafes(p12);
	ck_assert_ptr_nonnull(safes);
	for (int i = 0; i < sk_PKCS7_num(safes); i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags;
		int enc = OBJ_obj2nid(p7->type) == NID_pkcs7_encrypted;

		if (enc) {
			l->encrypted_safes++;
			bags = PKCS12_unpack_p7encdata(p7, pw, -1);
		} else {
			ck_assert_int_eq(OBJ_obj2nid(p7->type), NID_pkcs7_data);
			l->plain_safes++;
			bags = PKCS12_unpack_p7data(p7);
		}
		ck_assert_ptr_nonnull(bags);
		if (!enc && PKCS12_SAFEBAG_get_nid(sk_PKCS12_SAFEBAG_value(bags, 0)) == NID_certBag &&
		    sk_PKCS12_SAFEBAG_num(bags) > l->max_bags_per_plain_cert_safe)
			l->max_bags_per_plain_cert_safe = sk_PKCS12_SAFEBAG_num(bags);
		ck_assert_int_lt(nall, 8);
		all_bags[nall++] = bags;
		for (int j = 0; j < sk_PKCS12_SAFEBAG_num(bags); j++) {
			PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, j);
			const X509_ALGOR *alg;

			switch (PKCS12_SAFEBAG_get_nid(bag)) {
			case NID_certBag:
				if (enc)
					l->cert_bags_encrypted++;
				else
					l->cert_bags_plain++;
				if (PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID) != NULL && ncert_ids < 8)
					cert_ids[ncert_ids++] = PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID);
				break;
			case NID_pkcs8ShroudedKeyBag:
				l->key_bags++;
				X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
				l->key_alg_nid = OBJ_obj2nid(alg->algorithm);
				break;
			default:
				ck_abort_msg("unexpected bag type %d", PKCS12_SAFEBAG_get_nid(bag));
			}
		}
	}
	/* Each key bag's localKeyID is one of the certificate bags'. */
	for (int b = 0; b < nall; b++)
		for (int j = 0; j < sk_PKCS12_SAFEBAG_num(all_bags[b]); j++) {
			PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(all_bags[b], j);
			const ASN1_TYPE *id = PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID);

			if (PKCS12_SAFEBAG_get_nid(bag) != NID_pkcs8ShroudedKeyBag || id == NULL)
				continue;
			for (int k = 0; k < ncert_ids; k++)
				if (ASN1_TYPE_cmp(id, cert_ids[k]) == 0)
					l->key_bags_linked++;
		}
	for (int b = 0; b < nall; b++)
		sk_PKCS12_SAFEBAG_pop_free(all_bags[b], PKCS12_SAFEBAG_free);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	PKCS12_free(p12);
}

/* Every encrypted safe and every key bag of a modern file: PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC. */
static void
p12_check_modern_algorithms(const unsigned char *der, size_t len, const char *pw)
{
	const unsigned char *p = der;
	PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
	STACK_OF(PKCS7) *safes = PKCS12_unpack_authsafes(p12);
	int saw_enc = 0, saw_key = 0;

	for (int i = 0; i < sk_PKCS7_num(safes); i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags;

		if (OBJ_obj2nid(p7->type) == NID_pkcs7_encrypted) {
			assert_pbes2_aes256_pbkdf2_sha256(p7->d.encrypted->enc_data->algorithm);
			saw_enc++;
			bags = PKCS12_unpack_p7encdata(p7, pw, -1);
		} else {
			bags = PKCS12_unpack_p7data(p7);
		}
		for (int j = 0; j < sk_PKCS12_SAFEBAG_num(bags); j++) {
			PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, j);
			const X509_ALGOR *alg;

			if (PKCS12_SAFEBAG_get_nid(bag) != NID_pkcs8ShroudedKeyBag)
				continue;
			X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
			assert_pbes2_aes256_pbkdf2_sha256(alg);
			saw_key++;
		}
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	ck_assert_int_eq(saw_enc, 1);
	ck_assert_int_eq(saw_key, 2);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	PKCS12_free(p12);
}

START_TEST(test_p12_modern_round_trips_and_uses_aes_pbkdf2_sha256)
{
	struct p12_fixture f;
	struct p12_layout l;
	size_t len = 0;
	unsigned char *der;

	p12_make(&f, rsa_user_a, rsa_user_b);
	der = p12_build(&f, CA_P12_MODERN, "s3cret pass", &len);
	check_read_back(&f, der, len, "s3cret pass");
	check_openssl_reads(der, len, "s3cret pass");
	p12_inspect(der, len, "s3cret pass", &l);
	ck_assert_int_eq(l.mac_nid, NID_sha256);
	ck_assert_int_eq(l.encrypted_safes, 1);         /* the certificates */
	ck_assert_int_eq(l.cert_bags_encrypted, 3);
	ck_assert_int_eq(l.cert_bags_plain, 0);
	ck_assert_int_eq(l.key_bags, 2);
	ck_assert_int_eq(l.key_alg_nid, NID_pbes2);
	ck_assert_int_eq(l.key_bags_linked, 2);
	p12_check_modern_algorithms(der, len, "s3cret pass");
	free(der);
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_compat_round_trips_with_3des_keys_plain_certs_sha1_mac)
{
	struct p12_fixture f;
	struct p12_layout l;
	size_t len = 0;
	unsigned char *der;

	p12_make(&f, rsa_user_a, rsa_user_b);
	der = p12_build(&f, CA_P12_COMPAT, "s3cret pass", &len);
	check_read_back(&f, der, len, "s3cret pass");
	check_openssl_reads(der, len, "s3cret pass");
	p12_inspect(der, len, "s3cret pass", &l);
	ck_assert_int_eq(l.mac_nid, NID_sha1);
	ck_assert_int_eq(l.encrypted_safes, 0);         /* certificates are not encrypted */
	ck_assert_int_eq(l.plain_safes, 4);             /* one per certificate (gpgsm 2.2), one for the keys */
	ck_assert_int_eq(l.cert_bags_plain, 3);
	ck_assert_int_eq(l.max_bags_per_plain_cert_safe, 1);
	ck_assert_int_eq(l.key_bags, 2);
	ck_assert_int_eq(l.key_alg_nid, NID_pbe_WithSHA1And3_Key_TripleDES_CBC);
	ck_assert_int_eq(l.key_bags_linked, 2);
	free(der);
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_ec_keys_round_trip_in_both_encodings)
{
	struct p12_fixture f;
	enum ca_p12_format fmts[] = { CA_P12_MODERN, CA_P12_COMPAT };

	p12_make(&f, ec_user_a, ec_user_b);
	for (int i = 0; i < 2; i++) {
		size_t len = 0;
		unsigned char *der = p12_build(&f, fmts[i], "pw", &len);

		check_read_back(&f, der, len, "pw");
		check_openssl_reads(der, len, "pw");
		free(der);
	}
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_wrong_password_fails)
{
	struct p12_fixture f;
	enum ca_p12_format fmts[] = { CA_P12_MODERN, CA_P12_COMPAT };

	p12_make(&f, ec_user_a, ec_user_b);
	for (int i = 0; i < 2; i++) {
		size_t len = 0;
		unsigned char *der = p12_build(&f, fmts[i], "right", &len);
		struct ca_p12_contents *c = (struct ca_p12_contents *)1;
		const unsigned char *p = der;
		PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
		EVP_PKEY *key = NULL;
		X509 *cert = NULL;

		ck_assert_int_eq(ca_p12_read(der, len, "wrong", &c), KMS_ERR_PERM);
		ck_assert_ptr_null(c);
		ck_assert_int_eq(ca_p12_read(der, len, "", &c), KMS_ERR_PERM);
		ck_assert_int_eq(PKCS12_parse(p12, "wrong", &key, &cert, NULL), 0);
		ck_assert_ptr_null(key);
		ERR_clear_error();
		PKCS12_free(p12);
		free(der);
	}
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_refuses_key_that_does_not_match_its_cert)
{
	struct p12_fixture f;
	unsigned char *der = NULL;
	size_t len = 0;

	p12_make(&f, ec_user_a, ec_user_b);
	f.items[1].key = ec_user_a;
	ck_assert_int_eq(ca_p12_build(f.items, 2, f.chain, "pw", CA_P12_MODERN, 0, &der, &len), KMS_ERR_INVALID);
	ck_assert_ptr_null(der);
	ck_assert_int_eq(ca_p12_build(f.items, 2, f.chain, NULL, CA_P12_MODERN, 0, &der, &len), KMS_ERR_INVALID);
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_compat_password_limited_to_31_bytes_for_gpgsm)
{
	struct p12_fixture f;
	unsigned char *der = NULL;
	size_t len = 0;
	const char *pw31 = "0123456789012345678901234567890", *pw32 = "01234567890123456789012345678901";

	p12_make(&f, rsa_user_a, rsa_user_b);
	ck_assert_int_eq(ca_p12_build(f.items, 2, f.chain, pw32, CA_P12_COMPAT, 0, &der, &len), KMS_ERR_INVALID);
	ck_assert_ptr_null(der);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "31"));
	ck_assert_int_eq(ca_p12_build(f.items, 2, f.chain, pw31, CA_P12_COMPAT, 0, &der, &len), 0);
	check_read_back(&f, der, len, pw31);
	free(der);
	/* modern has no such limit. */
	ck_assert_int_eq(ca_p12_build(f.items, 2, f.chain, pw32, CA_P12_MODERN, 0, &der, &len), 0);
	free(der);
	p12_done(&f);
}
END_TEST

START_TEST(test_p12_cert_without_key_and_garbage)
{
	struct ca_p12_item item = { NULL, rsa_ca->cert, "Example Org CA" };
	struct ca_p12_contents *c = NULL;
	unsigned char *der = NULL, junk[64];
	size_t len = 0;
	enum ca_p12_format fmt;

	ck_assert_int_eq(ca_p12_build(&item, 1, NULL, "pw", CA_P12_COMPAT, 0, &der, &len), 0);
	ck_assert_int_eq(ca_p12_read(der, len, "pw", &c), 0);
	ck_assert_uint_eq(c->n, 1);
	ck_assert_ptr_null(c->keys[0]);
	ck_assert_str_eq(c->names[0], "Example Org CA");
	ck_assert_int_eq(sk_X509_num(c->others), 0);
	ca_p12_contents_free(c);
	free(der);
	memset(junk, 0x30, sizeof(junk));
	ck_assert_int_eq(ca_p12_read(junk, sizeof(junk), "pw", &c), KMS_ERR_CORRUPT);
	ck_assert_int_eq(ca_p12_format_from_name("modern", &fmt), 0);
	ck_assert_int_eq(fmt, CA_P12_MODERN);
	ck_assert_int_eq(ca_p12_format_from_name("compat", &fmt), 0);
	ck_assert_int_eq(fmt, CA_P12_COMPAT);
	ck_assert_int_eq(ca_p12_format_from_name("legacy", &fmt), KMS_ERR_INVALID);
}
END_TEST

/* userSMIMECertificate: signed by the user's signing key, capabilities and key preference, kept by serial. */
START_TEST(test_smime_value_is_signed_by_the_user_and_kept_by_serial)
{
	X509 *s = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "a@example.org", NULL, 30, NULL);
	X509 *e = issue(rsa_ca, CA_USAGE_ENC, rsa_user_b, "a@example.org", NULL, 30, NULL);
	X509 *other = issue(rsa_ca, CA_USAGE_SIGN, rsa_user_a, "b@example.org", NULL, 30, NULL);
	unsigned char *der = NULL, *back = NULL, *pref = NULL;
	const unsigned char *p;
	size_t blen = 0;
	int len = 0, i;
	CMS_ContentInfo *cms;
	CMS_SignerInfo *si;
	X509_STORE *trust = X509_STORE_new();
	BIO *empty = BIO_new_mem_buf("", 0);
	STACK_OF(X509) *certs;
	X509_ATTRIBUTE *a;
	ASN1_TYPE *t;

	ck_assert_int_eq(ca_smime_signed_der(s, rsa_user_a, e, rsa_ca->cert, &der, &len), 0);
	p = der;
	ck_assert_ptr_nonnull(cms = d2i_CMS_ContentInfo(NULL, &p, len));
	ck_assert_ptr_null(CMS_get0_content(cms) ? *CMS_get0_content(cms) : NULL);      /* detached */
	certs = CMS_get1_certs(cms);
	ck_assert_int_eq(sk_X509_num(certs), 3);
	sk_X509_pop_free(certs, X509_free);
	X509_STORE_add_cert(trust, rsa_ca->cert);
	ck_assert_int_eq(CMS_verify(cms, NULL, trust, empty, NULL, CMS_BINARY), 1);
	si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
	ck_assert_int_eq(CMS_SignerInfo_cert_cmp(si, s), 0);
	ck_assert_int_ge(CMS_signed_get_attr_by_NID(si, NID_SMIMECapabilities, -1), 0);
	/* The preference is [0] IssuerAndSerialNumber of the encryption certificate. */
	ck_assert_int_ge(i = CMS_signed_get_attr_by_NID(si, NID_id_smime_aa_encrypKeyPref, -1), 0);
	a = CMS_signed_get_attr(si, i);
	t = X509_ATTRIBUTE_get0_type(a, 0);
	ck_assert_ptr_nonnull(t);
	{
		unsigned char *issuer = NULL, *serial = NULL;
		int il = i2d_X509_NAME(X509_get_issuer_name(e), &issuer), sl = i2d_ASN1_INTEGER(X509_get_serialNumber(e), &serial);
		int tl = i2d_ASN1_TYPE(t, &pref);

		ck_assert_int_eq(pref[0], 0xa0);
		ck_assert_int_eq(tl, 2 + il + sl);
		ck_assert_int_eq(memcmp(pref + 2, issuer, (size_t)il), 0);
		ck_assert_int_eq(memcmp(pref + 2 + il, serial, (size_t)sl), 0);
		OPENSSL_free(issuer);
		OPENSSL_free(serial);
	}
	/* No key, no value. */
	ck_assert_int_eq(ca_smime_signed_der(s, NULL, e, rsa_ca->cert, &back, &i), KMS_ERR_INVALID);
	ck_assert_ptr_null(back);
	/* Kept by the signing certificate's serial. */
	ck_assert_int_eq(ca_store_get_smime(st, s, &back, &blen), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_store_put_smime(st, s, der, (size_t)len), 0);
	ck_assert_int_eq(ca_store_get_smime(st, s, &back, &blen), 0);
	ck_assert_int_eq(blen, (size_t)len);
	ck_assert_int_eq(memcmp(back, der, blen), 0);
	OPENSSL_free(back);
	ck_assert_int_eq(ca_store_get_smime(st, other, &back, &blen), KMS_ERR_NOTFOUND);
	kms_clear_error();
	OPENSSL_free(pref);
	OPENSSL_free(der);
	BIO_free(empty);
	X509_STORE_free(trust);
	CMS_ContentInfo_free(cms);
	X509_free(s);
	X509_free(e);
	X509_free(other);
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *
ca_suite(void)
{
	Suite *s = suite_create("ca");
	TCase *tc;

	tc = tcase_create("keys");
	tcase_add_test(tc, test_key_type_names_accepted_and_refused);
	tcase_add_test(tc, test_keygen_makes_the_type_asked_for);
	tcase_add_test(tc, test_keygen_unknown_type_is_invalid);
	tcase_add_test(tc, test_ca_key_round_trip_under_scrypt);
	tcase_add_test(tc, test_ca_key_wrong_passphrase_is_perm);
	tcase_add_test(tc, test_ca_key_garbage_and_plain_keys_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("root");
	tcase_add_test(tc, test_root_rsa_3072_profile);
	tcase_add_test(tc, test_root_ec_p384_signs_with_sha384);
	tcase_add_test(tc, test_root_refuses_bad_arguments);
	tcase_add_test(tc, test_root_utf8_organization_kept);
	suite_add_tcase(s, tc);

	tc = tcase_create("issue");
	tcase_add_test(tc, test_sign_cert_for_rsa_user_has_full_profile);
	tcase_add_test(tc, test_enc_cert_for_rsa_user_has_key_encipherment_only);
	tcase_add_test(tc, test_sign_cert_for_ec_user_has_full_profile);
	tcase_add_test(tc, test_enc_cert_for_ec_user_has_key_agreement_only);
	tcase_add_test(tc, test_p384_ca_issues_with_sha384_for_rsa_and_ec_users);
	tcase_add_test(tc, test_krk_cert_has_key_encipherment_and_no_eku_or_san);
	tcase_add_test(tc, test_krk_refuses_ec_key_and_missing_name);
	tcase_add_test(tc, test_no_crl_url_means_no_distribution_point);
	tcase_add_test(tc, test_serials_are_distinct);
	tcase_add_test(tc, test_not_before_is_set_back_by_the_cas_margin);
	tcase_add_test(tc, test_subject_serial_number_sets_generations_apart);
	tcase_add_test(tc, test_issued_certs_verify_against_root_for_smime);
	tcase_add_test(tc, test_validity_over_825_days_refused);
	tcase_add_test(tc, test_cert_never_outlives_its_ca);
	tcase_add_test(tc, test_bad_addresses_refused);
	tcase_add_test(tc, test_ca_certifies_every_address_kmsd_accepts);
	tcase_add_test(tc, test_bad_names_and_urls_refused);
	tcase_add_test(tc, test_issue_needs_the_ca_key);
	tcase_add_test(tc, test_issue_refuses_weak_user_keys);
	suite_add_tcase(s, tc);

	tc = tcase_create("csr");
	tcase_add_test(tc, test_csr_with_san_gets_signing_cert);
	tcase_add_test(tc, test_csr_subject_email_used_without_san);
	tcase_add_test(tc, test_csr_san_wins_over_subject_email);
	tcase_add_test(tc, test_csr_with_broken_signature_refused);
	tcase_add_test(tc, test_csr_signed_by_another_key_refused);
	tcase_add_test(tc, test_csr_with_weak_key_refused);
	tcase_add_test(tc, test_csr_without_address_refused);
	tcase_add_test(tc, test_csr_with_dns_san_only_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("helpers");
	tcase_add_test(tc, test_serial_hex_is_lowercase_without_leading_zeros);
	tcase_add_test(tc, test_fingerprint_is_sha256_of_der);
	tcase_add_test(tc, test_cert_email_reads_san_else_subject);
	suite_add_tcase(s, tc);

	tc = tcase_create("store");
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_smime_value_is_signed_by_the_user_and_kept_by_serial);
	tcase_add_test(tc, test_store_ca_save_and_load_round_trip);
	tcase_add_test(tc, test_store_refuses_unencrypted_ca_key);
	tcase_add_test(tc, test_store_find_by_address_is_case_insensitive_newest_first);
	tcase_add_test(tc, test_store_find_by_serial_any_case_with_colons);
	tcase_add_test(tc, test_store_display_name_is_the_newest_enrolled_one);
	tcase_add_test(tc, test_store_has_valid_ignores_revoked_and_expired);
	tcase_add_test(tc, test_store_list_orders_by_email_and_filters_revoked);
	tcase_add_test(tc, test_store_find_cert_by_issuer_serial_and_by_ski);
	tcase_add_test(tc, test_store_add_cert_joins_the_callers_transaction);
	tcase_add_test(tc, test_store_keeps_krk_without_address);
	suite_add_tcase(s, tc);

	tc = tcase_create("pkcs12");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_p12_modern_round_trips_and_uses_aes_pbkdf2_sha256);
	tcase_add_test(tc, test_p12_compat_round_trips_with_3des_keys_plain_certs_sha1_mac);
	tcase_add_test(tc, test_p12_ec_keys_round_trip_in_both_encodings);
	tcase_add_test(tc, test_p12_wrong_password_fails);
	tcase_add_test(tc, test_p12_refuses_key_that_does_not_match_its_cert);
	tcase_add_test(tc, test_p12_compat_password_limited_to_31_bytes_for_gpgsm);
	tcase_add_test(tc, test_p12_cert_without_key_and_garbage);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	t_start = time(NULL);
	if (ca_create_root(ORG, "kms-ca", NULL, 3650, &rsa_ca) != 0 ||
	    ca_create_root(ORG, "kms-ca", "ec:p384", 3650, &ec_ca) != 0 ||
	    ca_keygen("rsa:2048", &rsa_user_a) != 0 || ca_keygen("rsa:2048", &rsa_user_b) != 0 ||
	    ca_keygen("ec:p256", &ec_user_a) != 0 || ca_keygen("ec:p256", &ec_user_b) != 0) {
		fprintf(stderr, "setup: %s\n", kms_last_error());
		return 1;
	}
	sr = srunner_create(ca_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	ca_free(rsa_ca);
	ca_free(ec_ca);
	EVP_PKEY_free(rsa_user_a);
	EVP_PKEY_free(rsa_user_b);
	EVP_PKEY_free(ec_user_a);
	EVP_PKEY_free(ec_user_b);
	return failed == 0 ? 0 : 1;
}
