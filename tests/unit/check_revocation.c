/*
 * check_revocation.c - unit suite for revocation, CRLs, the revocation
 * index and CRL fetching (ca/revoke.c, ca/crl.c, ca/revidx.c, ca/fetch.c).
 *
 * Test CAs and CRLs of other CAs are made here directly with OpenSSL; our
 * CRLs are parsed back with d2i_X509_CRL and checked field by field, and
 * OpenSSL's own chain verification with CRL checking is run over them.
 */
#include "config.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

static char *dir;
static struct kms_store *st;

/* Keys made once per process: key generation is the slow part. */
static EVP_PKEY *rsa_key, *p384_key, *p256_key, *other_key;

static EVP_PKEY *
keygen(const char *alg, const char *param)
{
	EVP_PKEY *k = NULL;

	if (strcmp(alg, "RSA") == 0)
		k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	else
		k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", param);
	if (k == NULL)
		abort();   /* runs before the tests: no Check assertions here */
	return k;
}

static void
keys_once(void)
{
	if (rsa_key != NULL)
		return;
	rsa_key = keygen("RSA", NULL);
	p384_key = keygen("EC", "P-384");
	p256_key = keygen("EC", "P-256");
	other_key = keygen("EC", "P-256");
}

static void
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	ck_assert_ptr_nonnull(ext);
	ck_assert_int_eq(X509_add_ext(cert, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

static const EVP_MD *
md_for(EVP_PKEY *k)
{
	return EVP_PKEY_get_bits(k) == 384 ? EVP_sha384() : EVP_sha256();
}

/* A self-signed CA certificate "O=<org>, CN=<org> S/MIME CA" with SKI. */
static X509 *
mk_ca_cert(EVP_PKEY *key, const char *org)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	char cn[128];

	snprintf(cn, sizeof(cn), "%s S/MIME CA", org);
	ck_assert_int_eq(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, n);
	X509_NAME_free(n);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
	X509_set_pubkey(x, key);
	add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
	add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	add_ext(x, x, NID_subject_key_identifier, "hash");
	ck_assert_int_gt(X509_sign(x, key, md_for(key)), 0);
	return x;
}

/* A user certificate with the given serial (hex) issued by ca. */
static X509 *
mk_user_cert(X509 *ca, EVP_PKEY *cakey, EVP_PKEY *key, const char *serial_hex)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	BIGNUM *bn = NULL;

	X509_set_version(x, 2);
	ck_assert_int_gt(BN_hex2bn(&bn, serial_hex), 0);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	BN_free(bn);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"user", -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_NAME_free(n);
	X509_set_issuer_name(x, X509_get_subject_name(ca));
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
	X509_set_pubkey(x, key);
	add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
	add_ext(x, ca, NID_authority_key_identifier, "keyid");
	ck_assert_int_gt(X509_sign(x, cakey, md_for(cakey)), 0);
	return x;
}

static struct ca *
mk_ca(EVP_PKEY *key, const char *org)
{
	struct ca *ca = calloc(1, sizeof(*ca));

	ca->cert = mk_ca_cert(key, org);
	EVP_PKEY_up_ref(key);
	ca->key = key;
	ca->name = strdup("test-ca");
	return ca;
}

static void
free_ca(struct ca *ca)
{
	if (ca == NULL)
		return;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	free(ca->name);
	free(ca);
}

/* Insert a certs row directly (the certs API belongs to another file). */
static void
add_row(const char *serial, time_t not_after)
{
	sqlite3_stmt *s;

	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, cert, issued) "
	    "VALUES (?, 'u@example.org', 'sign', 'ec:p256', 'enroll', 'CN=u', 0, ?, x'00', 0)", -1, &s, NULL),
	    SQLITE_OK);
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)not_after);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
}

static void
do_revoke(const char *serial, int reason, time_t when, time_t inval)
{
	int already = -1;

	ck_assert_int_eq(ca_store_revoke(st, serial, when, reason, inval, &already), 0);
	ck_assert_int_eq(already, 0);
}

static X509_CRL *
parse(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)len);

	ck_assert_ptr_nonnull(crl);
	ck_assert_ptr_eq(p, der + len);
	return crl;
}

static ASN1_INTEGER *
asn1_serial(const char *hex)
{
	BIGNUM *bn = NULL;
	ASN1_INTEGER *a;

	ck_assert_int_gt(BN_hex2bn(&bn, hex), 0);
	a = BN_to_ASN1_INTEGER(bn, NULL);
	BN_free(bn);
	return a;
}

static X509_REVOKED *
find_entry(X509_CRL *crl, const char *hex)
{
	ASN1_INTEGER *a = asn1_serial(hex);
	X509_REVOKED *r = NULL;
	int found = X509_CRL_get0_by_serial(crl, &r, a);

	ASN1_INTEGER_free(a);
	return found ? r : NULL;
}

/* Number of entries; OpenSSL has no list at all for an empty CRL. */
static int
nrev(X509_CRL *crl)
{
	int n = sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl));

	return n < 0 ? 0 : n;
}

static time_t
t_of(const ASN1_TIME *t)
{
	struct tm tm;

	ck_assert_int_eq(ASN1_TIME_to_tm(t, &tm), 1);
	return timegm(&tm);
}

static void
setup(void)
{
	char *path;

	keys_once();
	dir = tu_tmpdir();
	path = kms_path_join(dir, "kms.db");
	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE, &st), 0);
	free(path);
}

static void
teardown(void)
{
	kms_store_close(st);
	st = NULL;
	tu_rmtree(dir);
	free(dir);
}

static const struct ca_crl_opts opts24 = { 24, 0, "http://127.0.0.1:8480/crl/test-ca.crl", NULL };
static const struct ca_crl_opts opts_delta = { 24, 1, "http://127.0.0.1:8480/crl/test-ca.crl",
	"http://127.0.0.1:8480/crl/test-ca-delta.crl" };

/* ------------------------------------------------------------- revocation */

START_TEST(test_reason_names_are_rfc5280_and_round_trip)
{
	static const char *names[] = { "unspecified", "keyCompromise", "cACompromise", "affiliationChanged",
		"superseded", "cessationOfOperation", "certificateHold", NULL, "removeFromCRL",
		"privilegeWithdrawn", "aACompromise" };

	for (int i = 0; i < 11; i++) {
		if (names[i] == NULL)
			continue;
		ck_assert_int_eq(ca_reason_from_name(names[i]), i);
		ck_assert_str_eq(ca_reason_name(i), names[i]);
	}
	ck_assert_int_eq(ca_reason_from_name("keycompromise"), 1);
	ck_assert_int_eq(ca_reason_from_name("stolen"), -1);
	ck_assert_int_eq(ca_reason_from_name(""), -1);
	ck_assert_int_eq(ca_reason_from_name(NULL), -1);
	ck_assert_str_eq(ca_reason_name(7), "unspecified");
	ck_assert_str_eq(ca_reason_name(99), "unspecified");
	ck_assert_str_eq(ca_reason_name(-1), "unspecified");
}
END_TEST

START_TEST(test_revoke_twice_reports_already_and_changes_nothing)
{
	sqlite3_stmt *s;
	int already = -1;

	add_row("a1b2c3", time(NULL) + 86400);
	ck_assert_int_eq(kms_store_begin(st), 0);
	/* Any case, colons and leading zeros name the same serial. */
	ck_assert_int_eq(ca_store_revoke(st, "00:A1:B2:C3", 1000, 1, 900, &already), 0);
	ck_assert_int_eq(already, 0);
	ck_assert_int_eq(kms_store_commit(st), 0);
	ck_assert_int_eq(ca_store_revoke(st, "a1b2c3", 2000, 4, 0, &already), 0);
	ck_assert_int_eq(already, 1);

	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st),
	    "SELECT revoked_at, reason, invalidity FROM certs WHERE serial = 'a1b2c3'", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int64(s, 0), 1000);
	ck_assert_int_eq(sqlite3_column_int(s, 1), 1);
	ck_assert_int_eq(sqlite3_column_int64(s, 2), 900);
	sqlite3_finalize(s);
}
END_TEST

START_TEST(test_revoke_by_address_takes_valid_certificates_in_one_transaction)
{
	struct ca_revoke_result res;
	time_t now = time(NULL);
	size_t done = 0, already = 0, skipped = 0;

	add_row("a1", now + 86400);
	add_row("b2", now - 10);                /* expired: left alone by address */
	add_row("c3", now + 86400);
	do_revoke("c3", 1, now - 100, 0);
	ck_assert_int_eq(ca_revoke_target(st, "u@example.org", now, 4, 0, &res), 0);
	ck_assert_uint_eq(res.n, 3);
	for (size_t i = 0; i < res.n; i++) {
		if (strcmp(res.rows[i].serial, "a1") == 0) {
			ck_assert_int_eq(res.outcome[i], CA_REVOKE_DONE);
			done++;
		} else if (strcmp(res.rows[i].serial, "b2") == 0) {
			ck_assert_int_eq(res.outcome[i], CA_REVOKE_SKIPPED);
			skipped++;
		} else {
			ck_assert_int_eq(res.outcome[i], CA_REVOKE_ALREADY);
			already++;
		}
	}
	ck_assert_uint_eq(done + skipped + already, 3);
	ck_assert_uint_eq(res.nrevoked, 1);
	ck_assert_uint_eq(res.nalready, 1);
	ca_revoke_result_free(&res);
	/* By serial, an expired certificate is revoked too. */
	ck_assert_int_eq(ca_revoke_target(st, "b2", now, 1, 0, &res), 0);
	ck_assert_uint_eq(res.nrevoked, 1);
	ca_revoke_result_free(&res);
	ck_assert_int_eq(ca_revoke_target(st, "nobody@example.org", now, 1, 0, &res), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(res.rows);
	ck_assert_int_eq(sqlite3_get_autocommit(kms_store_db(st)), 1);
}
END_TEST

START_TEST(test_revoke_refuses_the_key_recovery_key)
{
	struct ca_revoke_result res;

	ck_assert_int_eq(sqlite3_exec(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, cert, issued) "
	    "VALUES ('d4', '', 'krk', 'rsa:3072', 'init', 'CN=Key Recovery Key', 0, 4102444800, x'00', 0)",
	    NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(ca_revoke_target(st, "d4", time(NULL), 1, 0, &res), KMS_ERR_INVALID);
	ck_assert_ptr_null(res.rows);
	ck_assert_int_eq(sqlite3_get_autocommit(kms_store_db(st)), 1);
}
END_TEST

START_TEST(test_revoke_unknown_serial_and_bad_input_fail)
{
	int already = 0;

	add_row("abc", time(NULL) + 86400);
	ck_assert_int_eq(ca_store_revoke(st, "abd", 1000, 1, 0, &already), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_store_revoke(st, "xyz", 1000, 1, 0, &already), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_revoke(st, "", 1000, 1, 0, &already), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_revoke(st, "abc", 1000, 7, 0, &already), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_revoke(st, "abc", 1000, 11, 0, &already), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_store_revoke(st, "abc", 1000, 8, 0, &already), KMS_ERR_INVALID);
	/* Odd-length hex (no leading zeros) is a valid key. */
	ck_assert_int_eq(ca_store_revoke(st, "0abc", 1000, 0, 0, &already), 0);
	ck_assert_int_eq(already, 0);
}
END_TEST

/* -------------------------------------------------------------------- CRL */

static void
check_crl_fields(EVP_PKEY *key, int want_sig_nid)
{
	struct ca *ca = mk_ca(key, "Example Org");
	struct ca_crl_set *set = NULL;
	X509_CRL *crl;
	X509_REVOKED *r;
	ASN1_ENUMERATED *reason;
	ASN1_GENERALIZEDTIME *inval;
	AUTHORITY_KEYID *aki;
	ASN1_INTEGER *num;
	time_t now = time(NULL);
	int crit;

	add_row("1001", now + 86400);           /* keyCompromise + invalidity date */
	add_row("8f00000000000000000000000000000a", now + 86400);   /* unspecified, high bit set */
	add_row("1003", now + 86400);           /* superseded */
	add_row("1004", now + 86400);           /* never revoked */
	add_row("1005", now - 10);              /* revoked but expired: left out */
	do_revoke("1001", 1, now - 100, now - 5000);
	do_revoke("8f00000000000000000000000000000a", 0, now - 50, 0);
	do_revoke("1003", 4, now - 20, 0);
	do_revoke("1005", 1, now - 20, 0);

	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), 0);
	ck_assert_ptr_null(set->delta_der);
	ck_assert_int_eq(set->full_number, 1);
	crl = parse(set->full_der, set->full_len);

	ck_assert_int_eq(X509_CRL_get_version(crl), 1);   /* v2 */
	ck_assert_int_eq(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca->cert)), 0);
	ck_assert_int_eq(X509_CRL_get_signature_nid(crl), want_sig_nid);
	ck_assert_int_eq(X509_CRL_verify(crl, key), 1);
	ck_assert_int_ne(X509_CRL_verify(crl, other_key), 1);
	ERR_clear_error();

	ck_assert_int_le(llabs((long long)(t_of(X509_CRL_get0_lastUpdate(crl)) - now)), 2);
	ck_assert_int_le(llabs((long long)(t_of(X509_CRL_get0_nextUpdate(crl)) - (now + 24 * 3600))), 2);
	ck_assert_int_eq(t_of(X509_CRL_get0_lastUpdate(crl)), set->this_update);
	ck_assert_int_eq(t_of(X509_CRL_get0_nextUpdate(crl)), set->next_update);

	aki = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, &crit, NULL);
	ck_assert_ptr_nonnull(aki);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(ASN1_OCTET_STRING_cmp(aki->keyid, X509_get0_subject_key_id(ca->cert)), 0);
	AUTHORITY_KEYID_free(aki);
	num = X509_CRL_get_ext_d2i(crl, NID_crl_number, &crit, NULL);
	ck_assert_ptr_nonnull(num);
	ck_assert_int_eq(ASN1_INTEGER_get(num), 1);
	ASN1_INTEGER_free(num);
	ck_assert_int_lt(X509_CRL_get_ext_by_NID(crl, NID_delta_crl, -1), 0);
	ck_assert_int_lt(X509_CRL_get_ext_by_NID(crl, NID_freshest_crl, -1), 0);

	ck_assert_int_eq(nrev(crl), 3);
	ck_assert_ptr_null(find_entry(crl, "1004"));
	ck_assert_ptr_null(find_entry(crl, "1005"));

	r = find_entry(crl, "1001");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(t_of(X509_REVOKED_get0_revocationDate(r)), now - 100);
	reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, NULL);
	ck_assert_ptr_nonnull(reason);
	ck_assert_int_eq(ASN1_ENUMERATED_get(reason), 1);
	ASN1_ENUMERATED_free(reason);
	inval = X509_REVOKED_get_ext_d2i(r, NID_invalidity_date, &crit, NULL);
	ck_assert_ptr_nonnull(inval);
	ck_assert_int_eq(ASN1_STRING_type(inval), V_ASN1_GENERALIZEDTIME);
	ck_assert_int_eq(t_of(inval), now - 5000);
	ASN1_GENERALIZEDTIME_free(inval);

	/* Unspecified: no reasonCode at all (RFC 5280 5.3.1), no extensions. */
	r = find_entry(crl, "8f00000000000000000000000000000a");
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(X509_REVOKED_get_ext_count(r), 0);
	ck_assert_int_eq(t_of(X509_REVOKED_get0_revocationDate(r)), now - 50);

	r = find_entry(crl, "1003");
	ck_assert_ptr_nonnull(r);
	reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, NULL);
	ck_assert_int_eq(ASN1_ENUMERATED_get(reason), 4);
	ASN1_ENUMERATED_free(reason);
	ck_assert_ptr_null(X509_REVOKED_get_ext_d2i(r, NID_invalidity_date, &crit, NULL));

	/* The DER is canonical: OpenSSL re-encodes it byte for byte. */
	{
		unsigned char *re = NULL;
		int n;

		X509_CRL_free(crl);
		crl = parse(set->full_der, set->full_len);
		n = i2d_X509_CRL(crl, &re);
		ck_assert_int_eq(n, (int)set->full_len);
		ck_assert_int_eq(memcmp(re, set->full_der, set->full_len), 0);
		OPENSSL_free(re);
	}
	X509_CRL_free(crl);
	ca_crl_set_free(set);
	free_ca(ca);
}

START_TEST(test_crl_rsa_every_field_parses_back_and_verifies)
{
	check_crl_fields(rsa_key, NID_sha256WithRSAEncryption);
}
END_TEST

START_TEST(test_crl_p384_signed_with_sha384_and_verifies)
{
	check_crl_fields(p384_key, NID_ecdsa_with_SHA384);
}
END_TEST

START_TEST(test_crl_without_revocations_has_no_entry_list)
{
	struct ca *ca = mk_ca(p256_key, "Empty Org");
	struct ca_crl_set *set = NULL;
	X509_CRL *crl;

	add_row("42", time(NULL) + 86400);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), 0);
	crl = parse(set->full_der, set->full_len);
	ck_assert_int_eq(nrev(crl), 0);
	ck_assert_int_eq(X509_CRL_get_signature_nid(crl), NID_ecdsa_with_SHA256);
	ck_assert_int_eq(X509_CRL_verify(crl, p256_key), 1);
	X509_CRL_free(crl);
	ca_crl_set_free(set);
	free_ca(ca);
}
END_TEST

START_TEST(test_crl_number_increases_across_issues)
{
	struct ca *ca = mk_ca(p256_key, "Count Org");
	long long last = 0;

	for (int i = 0; i < 4; i++) {
		struct ca_crl_set *set = NULL;
		X509_CRL *crl;

		ck_assert_int_eq(ca_crl_issue(st, ca, i % 2 ? &opts_delta : &opts24, &set), 0);
		ck_assert_int_gt(set->full_number, last);
		crl = parse(set->full_der, set->full_len);
		ck_assert_int_eq(ca_crl_number(crl), set->full_number);
		X509_CRL_free(crl);
		last = set->full_number;
		if (set->delta_der != NULL) {
			ck_assert_int_eq(set->delta_number, set->full_number + 1);
			last = set->delta_number;
		}
		ca_crl_set_free(set);
	}
	ck_assert_int_eq(last, 6);
	free_ca(ca);
}
END_TEST

static long long
delta_base(X509_CRL *crl, int *crit)
{
	ASN1_INTEGER *b = X509_CRL_get_ext_d2i(crl, NID_delta_crl, crit, NULL);
	long long v;

	ck_assert_ptr_nonnull(b);
	v = ASN1_INTEGER_get(b);
	ASN1_INTEGER_free(b);
	return v;
}

START_TEST(test_delta_lists_exactly_the_new_revocations)
{
	struct ca *ca = mk_ca(p256_key, "Delta Org");
	struct ca_crl_set *set = NULL;
	X509_CRL *full, *delta;
	STACK_OF(DIST_POINT) *fresh;
	DIST_POINT *dp;
	GENERAL_NAME *gn;
	time_t now = time(NULL);
	int crit = 0;

	add_row("a1", now + 86400);
	add_row("a2", now + 86400);
	add_row("a3", now + 86400);
	do_revoke("a1", 1, now - 10, 0);

	/* First issue: no earlier full CRL, so the delta is based on this one and lists nothing. */
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	ck_assert_int_eq(set->full_number, 1);
	ck_assert_int_eq(set->delta_number, 2);
	delta = parse(set->delta_der, set->delta_len);
	ck_assert_int_eq(delta_base(delta, &crit), 1);
	ck_assert_int_eq(crit, 1);
	ck_assert_int_eq(nrev(delta), 0);
	X509_CRL_free(delta);
	ca_crl_set_free(set);

	do_revoke("a2", 5, now - 5, 0);
	do_revoke("a3", 3, now - 4, now - 1000);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	ck_assert_int_eq(set->full_number, 3);
	ck_assert_int_eq(set->delta_number, 4);
	full = parse(set->full_der, set->full_len);
	delta = parse(set->delta_der, set->delta_len);
	ck_assert_int_eq(X509_CRL_verify(delta, p256_key), 1);
	ck_assert_int_eq(nrev(full), 3);
	ck_assert_int_eq(nrev(delta), 2);
	ck_assert_ptr_nonnull(find_entry(delta, "a2"));
	ck_assert_ptr_nonnull(find_entry(delta, "a3"));
	ck_assert_ptr_null(find_entry(delta, "a1"));
	ck_assert_int_eq(delta_base(delta, &crit), 1);
	ck_assert_int_eq(crit, 1);
	ck_assert_int_eq(ca_crl_number(delta), 4);
	ck_assert_int_lt(X509_CRL_get_ext_by_NID(full, NID_delta_crl, -1), 0);
	ck_assert_int_lt(X509_CRL_get_ext_by_NID(delta, NID_freshest_crl, -1), 0);

	/* The full CRL points at the delta (Freshest CRL, not critical). */
	fresh = X509_CRL_get_ext_d2i(full, NID_freshest_crl, &crit, NULL);
	ck_assert_ptr_nonnull(fresh);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(sk_DIST_POINT_num(fresh), 1);
	dp = sk_DIST_POINT_value(fresh, 0);
	ck_assert_int_eq(dp->distpoint->type, 0);
	gn = sk_GENERAL_NAME_value(dp->distpoint->name.fullname, 0);
	ck_assert_int_eq(gn->type, GEN_URI);
	ck_assert_str_eq((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier),
	    "http://127.0.0.1:8480/crl/test-ca-delta.crl");
	sk_DIST_POINT_pop_free(fresh, DIST_POINT_free);
	X509_CRL_free(full);
	X509_CRL_free(delta);
	ca_crl_set_free(set);

	/* Nothing new: the next delta (base 3) is empty again. */
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	delta = parse(set->delta_der, set->delta_len);
	ck_assert_int_eq(delta_base(delta, &crit), 3);
	ck_assert_int_eq(nrev(delta), 0);
	X509_CRL_free(delta);
	ca_crl_set_free(set);
	free_ca(ca);
}
END_TEST

START_TEST(test_delta_takes_revocations_older_than_their_stamp_once)
{
	struct ca *ca = mk_ca(p256_key, "Legacy Org");
	struct ca_crl_set *set = NULL;
	X509_CRL *delta;
	time_t now = time(NULL);

	add_row("b1", now + 86400);
	add_row("b2", now + 86400);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	ca_crl_set_free(set);
	/* A row revoked by an older version: no stamp. */
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st),
	    "UPDATE certs SET revoked_at = 100, reason = 1, crl_number = NULL WHERE serial = 'b1'", NULL, NULL, NULL),
	    SQLITE_OK);
	do_revoke("b2", 4, now - 1, 0);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	delta = parse(set->delta_der, set->delta_len);
	ck_assert_int_eq(nrev(delta), 2);
	X509_CRL_free(delta);
	ca_crl_set_free(set);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	delta = parse(set->delta_der, set->delta_len);
	ck_assert_int_eq(nrev(delta), 0);
	X509_CRL_free(delta);
	{
		X509_CRL *full = parse(set->full_der, set->full_len);

		ck_assert_int_eq(nrev(full), 2);
		X509_CRL_free(full);
	}
	ca_crl_set_free(set);
	free_ca(ca);
}
END_TEST

START_TEST(test_crl_query_reads_the_covering_index)
{
	sqlite3_stmt *s;
	int covered = 0;

	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "EXPLAIN QUERY PLAN "
	    "SELECT serial, revoked_at, reason, invalidity FROM certs WHERE revoked_at IS NOT NULL AND not_after >= 0 "
	    "ORDER BY serial", -1, &s, NULL), SQLITE_OK);
	while (sqlite3_step(s) == SQLITE_ROW) {
		const char *d = (const char *)sqlite3_column_text(s, 3);

		if (strstr(d, "COVERING INDEX certs_crl") != NULL)
			covered = 1;
		ck_assert_ptr_null(strstr(d, "TEMP B-TREE"));
	}
	sqlite3_finalize(s);
	ck_assert_int_eq(covered, 1);
}
END_TEST

START_TEST(test_openssl_crl_check_reports_revoked_user)
{
	struct ca *ca = mk_ca(p256_key, "Verify Org");
	struct ca_crl_set *set = NULL;
	X509 *good = mk_user_cert(ca->cert, p256_key, other_key, "0b0b");
	X509 *bad = mk_user_cert(ca->cert, p256_key, other_key, "0bad");
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	X509_CRL *crl;

	add_row("b0b", time(NULL) + 86400);
	add_row("bad", time(NULL) + 86400);
	do_revoke("bad", 1, time(NULL) - 10, 0);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), 0);
	crl = parse(set->full_der, set->full_len);
	X509_STORE_add_cert(store, ca->cert);
	X509_STORE_add_crl(store, crl);
	X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);

	ck_assert_int_eq(X509_STORE_CTX_init(ctx, store, bad, NULL), 1);
	ck_assert_int_eq(X509_verify_cert(ctx), 0);
	ck_assert_int_eq(X509_STORE_CTX_get_error(ctx), X509_V_ERR_CERT_REVOKED);
	X509_STORE_CTX_cleanup(ctx);
	ck_assert_int_eq(X509_STORE_CTX_init(ctx, store, good, NULL), 1);
	ck_assert_int_eq(X509_verify_cert(ctx), 1);

	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	X509_CRL_free(crl);
	X509_free(good);
	X509_free(bad);
	ca_crl_set_free(set);
	free_ca(ca);
}
END_TEST

START_TEST(test_crl_with_many_entries_lists_every_serial)
{
	struct ca *ca = mk_ca(p256_key, "Many Org");
	struct ca_crl_set *set = NULL;
	X509_CRL *crl;
	char serials[3000][40];
	time_t now = time(NULL);

	ck_assert_int_eq(kms_store_begin(st), 0);
	for (int i = 0; i < 3000; i++) {
		unsigned char r[16];
		char *h;
		int already;

		RAND_bytes(r, sizeof(r));
		r[0] &= 0x7f;
		if (i % 3 == 0)
			r[0] |= 0x40;
		h = kms_hex(r, sizeof(r));
		snprintf(serials[i], sizeof(serials[i]), "%s", h + strspn(h, "0"));
		free(h);
		add_row(serials[i], now + 86400);
		ck_assert_int_eq(ca_store_revoke(st, serials[i], now - i, (i % 11 == 7 || i % 11 == 8) ? 0 : i % 11, 0, &already), 0);
	}
	ck_assert_int_eq(kms_store_commit(st), 0);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), 0);
	crl = parse(set->full_der, set->full_len);
	ck_assert_int_eq(X509_CRL_verify(crl, p256_key), 1);
	ck_assert_int_eq(nrev(crl), 3000);
	for (int i = 0; i < 3000; i += 7) {
		X509_REVOKED *r = find_entry(crl, serials[i]);

		ck_assert_ptr_nonnull(r);
		ck_assert_int_eq(t_of(X509_REVOKED_get0_revocationDate(r)), now - i);
	}
	X509_CRL_free(crl);
	ca_crl_set_free(set);
	free_ca(ca);
}
END_TEST

START_TEST(test_crl_latest_and_publish_write_what_was_issued)
{
	struct ca *ca = mk_ca(p256_key, "Publish Org");
	struct ca_crl_set *set = NULL, *latest = NULL;
	unsigned char *buf;
	size_t len;
	char *pub = kms_path_join(dir, "pub"), *p;
	X509_CRL *crl;
	X509 *cert;
	FILE *fp;

	ck_assert_int_eq(ca_crl_latest(st, &latest), KMS_ERR_NOTFOUND);
	add_row("77", time(NULL) + 86400);
	do_revoke("77", 1, time(NULL) - 1, 0);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	ca_crl_set_free(set);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts_delta, &set), 0);
	ck_assert_int_eq(ca_crl_latest(st, &latest), 0);
	ck_assert_int_eq(latest->full_number, set->full_number);
	ck_assert_int_eq(latest->delta_number, set->delta_number);
	ck_assert_int_eq(latest->full_len, set->full_len);
	ck_assert_int_eq(memcmp(latest->full_der, set->full_der, set->full_len), 0);
	ck_assert_int_eq(memcmp(latest->delta_der, set->delta_der, set->delta_len), 0);
	ck_assert_int_eq(latest->next_update, set->next_update);

	ck_assert_int_eq(ca_crl_publish(pub, "test-ca", latest, ca->cert), 0);
	p = kms_path_join(pub, "test-ca.crl");
	ck_assert_int_eq(kms_read_file(p, 1 << 20, &buf, &len), 0);
	ck_assert_int_eq(len, set->full_len);
	ck_assert_int_eq(memcmp(buf, set->full_der, len), 0);
	free(buf);
	free(p);
	p = kms_path_join(pub, "test-ca.crl.pem");
	fp = fopen(p, "r");
	ck_assert_ptr_nonnull(fp);
	crl = PEM_read_X509_CRL(fp, NULL, NULL, NULL);
	fclose(fp);
	free(p);
	ck_assert_ptr_nonnull(crl);
	ck_assert_int_eq(ca_crl_number(crl), set->full_number);
	X509_CRL_free(crl);
	p = kms_path_join(pub, "test-ca-delta.crl");
	ck_assert_int_eq(access(p, F_OK), 0);
	free(p);
	p = kms_path_join(pub, "test-ca.crt.pem");
	fp = fopen(p, "r");
	ck_assert_ptr_nonnull(fp);
	cert = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	free(p);
	ck_assert_int_eq(X509_cmp(cert, ca->cert), 0);
	X509_free(cert);

	/* Deltas switched off: the stale delta files go. */
	ca_crl_set_free(set);
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), 0);
	ck_assert_int_eq(ca_crl_publish(pub, "test-ca", set, NULL), 0);
	p = kms_path_join(pub, "test-ca-delta.crl");
	ck_assert_int_ne(access(p, F_OK), 0);
	free(p);
	ck_assert_int_eq(ca_crl_publish(pub, "../evil", set, NULL), KMS_ERR_INVALID);

	ca_crl_set_free(set);
	ca_crl_set_free(latest);
	free(pub);
	free_ca(ca);
}
END_TEST

START_TEST(test_crl_issue_needs_the_ca_key)
{
	struct ca *ca = mk_ca(p256_key, "Keyless Org");
	struct ca_crl_set *set = NULL;
	struct ca_crl_opts bad = opts24;
	EVP_PKEY *k = ca->key;

	ca->key = NULL;
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts24, &set), KMS_ERR_STATE);
	ca->key = k;
	bad.next_update_hours = 0;
	ck_assert_int_eq(ca_crl_issue(st, ca, &bad, &set), KMS_ERR_INVALID);
	bad.next_update_hours = 241;
	ck_assert_int_eq(ca_crl_issue(st, ca, &bad, &set), KMS_ERR_INVALID);
	ck_assert_ptr_null(set);
	free_ca(ca);
}
END_TEST

/* ------------------------------------------------------------------ index */

/* A CRL of another CA made with OpenSSL: serials (hex) revoked with reason. */
static X509_CRL *
mk_ext_crl(X509 *issuer, EVP_PKEY *signer, const char *const *serials, int n, int reason, time_t last,
    time_t next)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();

	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer));
	ASN1_TIME_set(t, last);
	X509_CRL_set1_lastUpdate(crl, t);
	ASN1_TIME_set(t, next);
	X509_CRL_set1_nextUpdate(crl, t);
	for (int i = 0; i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_INTEGER *a = asn1_serial(serials[i]);
		ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();

		X509_REVOKED_set_serialNumber(r, a);
		ASN1_TIME_set(t, last - 60);
		X509_REVOKED_set_revocationDate(r, t);
		ASN1_ENUMERATED_set(e, reason);
		X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0);
		X509_CRL_add0_revoked(crl, r);
		ASN1_INTEGER_free(a);
		ASN1_ENUMERATED_free(e);
	}
	ASN1_TIME_free(t);
	X509_CRL_sort(crl);
	ck_assert_int_gt(X509_CRL_sign(crl, signer, EVP_sha256()), 0);
	return crl;
}

START_TEST(test_index_lookups_hit_and_miss)
{
	struct ca *ca = mk_ca(p256_key, "Index Org");
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	ASN1_INTEGER *a;
	time_t now = time(NULL);

	add_row("c0ffee", now + 86400);
	add_row("c0ffef", now + 86400);
	add_row("1", now + 86400);
	do_revoke("c0ffee", 1, now - 30, now - 900);
	do_revoke("1", 6, now - 20, 0);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_store(b, st, ca->cert), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_count(idx), 2);

	a = asn1_serial("C0FFEE");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 1);
	ck_assert_int_eq(info.revoked_at, now - 30);
	ck_assert_int_eq(info.reason, 1);
	ck_assert_int_eq(info.invalidity, now - 900);
	ck_assert_int_eq(info.stale, 0);
	ASN1_INTEGER_free(a);
	a = asn1_serial("01");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 1);
	ck_assert_int_eq(info.reason, 6);
	ASN1_INTEGER_free(a);
	a = asn1_serial("c0ffef");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 0);
	ASN1_INTEGER_free(a);
	a = asn1_serial("c0ffee00");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 0);
	ASN1_INTEGER_free(a);
	ck_assert_int_eq(ca_revidx_issuer_state(idx, X509_get_subject_name(ca->cert)), 0);
	ck_assert_int_eq(ca_revidx_lookup(NULL, X509_get_subject_name(ca->cert), a, &info), 0);

	ca_revidx_unref(idx);
	free_ca(ca);
}
END_TEST

START_TEST(test_index_two_issuers_with_the_same_serial_are_kept_apart)
{
	struct ca *ca = mk_ca(p256_key, "First Org");
	X509 *ext = mk_ca_cert(other_key, "Second Org");
	X509 *third = mk_ca_cert(p384_key, "Third Org");
	static const char *const sers[] = { "abcd", "0100" };
	X509_CRL *crl = mk_ext_crl(ext, other_key, sers, 2, 5, time(NULL) - 60, time(NULL) + 3600);
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	ASN1_INTEGER *a = asn1_serial("abcd");

	add_row("abcd", time(NULL) + 86400);
	do_revoke("abcd", 1, time(NULL) - 30, 0);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_store(b, st, ca->cert), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ext, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_count(idx), 3);

	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 1);
	ck_assert_int_eq(info.reason, 1);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ext), a, &info), 1);
	ck_assert_int_eq(info.reason, 5);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(third), a, &info), 0);
	ck_assert_int_eq(ca_revidx_issuer_state(idx, X509_get_subject_name(third)), -1);
	ASN1_INTEGER_free(a);
	a = asn1_serial("0100");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info), 0);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ext), a, &info), 1);
	ASN1_INTEGER_free(a);

	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	X509_free(ext);
	X509_free(third);
	free_ca(ca);
}
END_TEST

START_TEST(test_index_matches_issuer_name_in_another_string_encoding)
{
	X509 *ca = mk_ca_cert(other_key, "Encoding Org");
	static const char *const sers[] = { "77" };
	X509_CRL *crl = mk_ext_crl(ca, other_key, sers, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	X509_NAME *n = X509_NAME_new();
	ASN1_INTEGER *a = asn1_serial("77");

	/* The CA's name is UTF8String; the same name as PrintableString. */
	X509_NAME_add_entry_by_txt(n, "O", V_ASN1_PRINTABLESTRING, (const unsigned char *)"Encoding Org", -1, -1, 0);
	X509_NAME_add_entry_by_txt(n, "CN", V_ASN1_PRINTABLESTRING,
	    (const unsigned char *)"Encoding Org S/MIME CA", -1, -1, 0);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ca, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_lookup(idx, n, a, NULL), 1);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ca), a, NULL), 1);
	ca_revidx_unref(idx);
	X509_NAME_free(n);
	ASN1_INTEGER_free(a);
	X509_CRL_free(crl);
	X509_free(ca);
}
END_TEST

START_TEST(test_index_external_crl_with_bad_signature_is_refused_and_adds_nothing)
{
	X509 *ext = mk_ca_cert(other_key, "Ext Org");
	static const char *const sers[] = { "abcd" };
	/* Claims Ext Org as issuer but is signed with another key. */
	X509_CRL *crl = mk_ext_crl(ext, p256_key, sers, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	ASN1_INTEGER *a = asn1_serial("abcd");

	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ext, time(NULL)), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "signature"));
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_count(idx), 0);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ext), a, NULL), 0);
	ck_assert_int_eq(ca_revidx_issuer_state(idx, X509_get_subject_name(ext)), -1);
	ca_revidx_unref(idx);
	ASN1_INTEGER_free(a);
	X509_CRL_free(crl);
	X509_free(ext);
}
END_TEST

START_TEST(test_index_crl_of_another_issuer_or_from_the_future_is_refused)
{
	X509 *ext = mk_ca_cert(other_key, "Ext Org");
	X509 *mine = mk_ca_cert(p256_key, "Mine Org");
	static const char *const sers[] = { "abcd" };
	X509_CRL *future = mk_ext_crl(ext, other_key, sers, 1, 1, time(NULL) + 3600, time(NULL) + 7200);
	X509_CRL *good = mk_ext_crl(ext, other_key, sers, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	struct ca_revidx_builder *b = NULL;
	int stale;

	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, future, ext, time(NULL)), KMS_ERR_CORRUPT);
	ck_assert_int_eq(ca_revidx_add_crl(b, good, mine, time(NULL)), KMS_ERR_CORRUPT);
	ck_assert_int_eq(ca_crl_check(good, ext, time(NULL), &stale), 0);
	ck_assert_int_eq(stale, 0);
	ca_revidx_builder_free(b);
	X509_CRL_free(future);
	X509_CRL_free(good);
	X509_free(ext);
	X509_free(mine);
}
END_TEST

START_TEST(test_index_crl_past_next_update_is_marked_stale)
{
	X509 *ext = mk_ca_cert(other_key, "Stale Org");
	static const char *const sers[] = { "51" };
	X509_CRL *crl = mk_ext_crl(ext, other_key, sers, 1, 9, time(NULL) - 7200, time(NULL) - 3600);
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	ASN1_INTEGER *a = asn1_serial("51");
	X509_NAME *n = X509_NAME_new();

	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Kept Copy CA", -1, -1, 0);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ext, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_mark_stale(b, n), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(ext), a, &info), 1);
	ck_assert_int_eq(info.stale, 1);
	ck_assert_int_eq(info.reason, 9);
	ck_assert_int_eq(ca_revidx_issuer_state(idx, X509_get_subject_name(ext)), 1);
	ck_assert_int_eq(ca_revidx_issuer_state(idx, n), 1);
	ca_revidx_unref(idx);
	X509_NAME_free(n);
	ASN1_INTEGER_free(a);
	X509_CRL_free(crl);
	X509_free(ext);
}
END_TEST

START_TEST(test_index_with_is_visible_at_once_and_leaves_base_alone)
{
	struct ca *ca = mk_ca(p256_key, "With Org");
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *base = NULL, *next = NULL, *cur;
	struct ca_rev_info info = { 1234, 1, 0, 0 }, got;
	ASN1_INTEGER *a = asn1_serial("beef"), *old = asn1_serial("cafe");
	const X509_NAME *iss = X509_get_subject_name(ca->cert);

	add_row("cafe", time(NULL) + 86400);
	do_revoke("cafe", 4, time(NULL) - 5, 0);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_store(b, st, ca->cert), 0);
	ck_assert_int_eq(ca_revidx_build(b, &base), 0);
	ca_revidx_builder_free(b);

	ck_assert_int_eq(ca_revidx_with(base, iss, a, &info, &next), 0);
	ck_assert_int_eq(ca_revidx_lookup(next, iss, a, &got), 1);
	ck_assert_int_eq(got.revoked_at, 1234);
	ck_assert_int_eq(ca_revidx_lookup(next, iss, old, &got), 1);
	ck_assert_int_eq(got.reason, 4);
	ck_assert_int_eq(ca_revidx_lookup(base, iss, a, &got), 0);
	ck_assert_int_eq(ca_revidx_count(base), 1);
	ck_assert_int_eq(ca_revidx_count(next), 2);
	/* The same entry again changes nothing in the count. */
	cur = next;
	ck_assert_int_eq(ca_revidx_with(cur, iss, a, &info, &next), 0);
	ck_assert_int_eq(ca_revidx_count(next), 2);
	ca_revidx_unref(cur);
	ca_revidx_unref(base);   /* next still shares base's bulk */
	ck_assert_int_eq(ca_revidx_lookup(next, iss, old, &got), 1);
	ca_revidx_unref(next);

	/* From no index at all. */
	ck_assert_int_eq(ca_revidx_with(NULL, iss, a, &info, &next), 0);
	ck_assert_int_eq(ca_revidx_lookup(next, iss, a, NULL), 1);
	ck_assert_int_eq(ca_revidx_count(next), 1);
	ca_revidx_unref(next);
	ASN1_INTEGER_free(a);
	ASN1_INTEGER_free(old);
	free_ca(ca);
}
END_TEST

START_TEST(test_index_with_many_additions_folds_overlay_and_keeps_all)
{
	X509 *ca = mk_ca_cert(p256_key, "Fold Org");
	X509 *ext = mk_ca_cert(other_key, "Fold Ext");
	struct ca_revidx *idx = NULL, *next;
	struct ca_rev_info info = { 1, 1, 0, 0 };

	for (int i = 1; i <= 1500; i++) {
		ASN1_INTEGER *a = ASN1_INTEGER_new();

		ASN1_INTEGER_set(a, i);
		info.revoked_at = i;
		ck_assert_int_eq(ca_revidx_with(idx, X509_get_subject_name(i % 2 ? ca : ext), a, &info, &next), 0);
		ca_revidx_unref(idx);
		idx = next;
		ASN1_INTEGER_free(a);
	}
	ck_assert_int_eq(ca_revidx_count(idx), 1500);
	for (int i = 1; i <= 1500; i++) {
		ASN1_INTEGER *a = ASN1_INTEGER_new();
		struct ca_rev_info got;

		ASN1_INTEGER_set(a, i);
		ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(i % 2 ? ca : ext), a, &got), 1);
		ck_assert_int_eq(got.revoked_at, i);
		ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(i % 2 ? ext : ca), a, &got), 0);
		ASN1_INTEGER_free(a);
	}
	ca_revidx_unref(idx);
	X509_free(ca);
	X509_free(ext);
}
END_TEST

/* Readers take the current snapshot, look up, drop it, while a writer swaps. */
struct hammer {
	struct ca_revholder *h;
	X509 *ca;
	volatile int stop;
	long lookups;
	int bad;
};

static void *
reader(void *arg)
{
	struct hammer *hm = arg;
	ASN1_INTEGER *first = ASN1_INTEGER_new();
	size_t seen = 0;

	ASN1_INTEGER_set(first, 1);
	while (!hm->stop) {
		struct ca_revidx *idx = ca_revholder_get(hm->h);
		struct ca_rev_info info;

		if (idx == NULL)
			continue;
		/* Snapshots only grow, and entry 1 is in every one. */
		if (ca_revidx_count(idx) < seen || ca_revidx_lookup(idx, X509_get_subject_name(hm->ca), first, &info) != 1)
			__atomic_add_fetch(&hm->bad, 1, __ATOMIC_RELAXED);
		seen = ca_revidx_count(idx);
		ca_revidx_unref(idx);
		__atomic_add_fetch(&hm->lookups, 1, __ATOMIC_RELAXED);
	}
	ASN1_INTEGER_free(first);
	return NULL;
}

START_TEST(test_holder_swap_under_concurrent_readers)
{
	struct hammer hm = { 0 };
	pthread_t th[4];
	struct ca_revidx *idx = NULL, *next;
	struct ca_rev_info info = { 1, 1, 0, 0 };
	ASN1_INTEGER *a = ASN1_INTEGER_new();

	hm.ca = mk_ca_cert(p256_key, "Hammer Org");
	ck_assert_int_eq(ca_revholder_new(&hm.h), 0);
	ck_assert_ptr_null(ca_revholder_get(hm.h));
	ASN1_INTEGER_set(a, 1);
	ck_assert_int_eq(ca_revidx_with(NULL, X509_get_subject_name(hm.ca), a, &info, &idx), 0);
	ca_revholder_set(hm.h, ca_revidx_ref(idx));
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader, &hm), 0);
	for (int i = 2; i <= 3000; i++) {
		ASN1_INTEGER_set(a, i);
		ck_assert_int_eq(ca_revidx_with(idx, X509_get_subject_name(hm.ca), a, &info, &next), 0);
		ca_revidx_unref(idx);
		idx = next;
		ca_revholder_set(hm.h, ca_revidx_ref(idx));
	}
	hm.stop = 1;
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(hm.bad, 0);
	ck_assert_int_gt(hm.lookups, 0);
	next = ca_revholder_get(hm.h);
	ck_assert_ptr_eq(next, idx);
	ck_assert_int_eq(ca_revidx_count(next), 3000);
	ca_revidx_unref(next);
	ca_revidx_unref(idx);
	ca_revholder_free(hm.h);
	ASN1_INTEGER_free(a);
	X509_free(hm.ca);
}
END_TEST

/* ------------------------------------------------------------------ fetch */

static char *
write_crl_file(const char *name, X509_CRL *crl, int pem)
{
	char *p = kms_path_join(dir, name);
	FILE *fp = fopen(p, "w");

	ck_assert_ptr_nonnull(fp);
	if (pem)
		ck_assert_int_eq(PEM_write_X509_CRL(fp, crl), 1);
	else
		ck_assert_int_eq(i2d_X509_CRL_fp(fp, crl), 1);
	fclose(fp);
	return p;
}

static void
set_number(X509_CRL *crl, long n, EVP_PKEY *signer)
{
	ASN1_INTEGER *a = ASN1_INTEGER_new();

	ASN1_INTEGER_set(a, n);
	X509_CRL_add1_ext_i2d(crl, NID_crl_number, a, 0, X509V3_ADD_REPLACE);
	ASN1_INTEGER_free(a);
	ck_assert_int_gt(X509_CRL_sign(crl, signer, EVP_sha256()), 0);
}

START_TEST(test_fetch_good_crl_replaces_copy_and_bad_one_keeps_last_good)
{
	X509 *ca = mk_ca_cert(other_key, "Fetch Org");
	static const char *const one[] = { "01" }, *const two[] = { "01", "02" };
	X509_CRL *c1 = mk_ext_crl(ca, other_key, one, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	X509_CRL *c2 = mk_ext_crl(ca, other_key, two, 2, 1, time(NULL) - 60, time(NULL) + 3600);
	X509_CRL *forged = mk_ext_crl(ca, p256_key, two, 2, 1, time(NULL) - 60, time(NULL) + 3600);
	X509_CRL *old = mk_ext_crl(ca, other_key, one, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	X509_CRL *expired = mk_ext_crl(ca, other_key, two, 2, 1, time(NULL) - 7200, time(NULL) - 3600);
	STACK_OF(X509) *cas = sk_X509_new_null();
	char *out = kms_path_join(dir, "replica"), *src, *dst, url[4096];
	unsigned char *before, *after;
	size_t blen, alen;
	long long number;
	X509_CRL *got;

	set_number(c1, 5, other_key);
	set_number(c2, 6, other_key);
	set_number(old, 4, other_key);
	set_number(expired, 7, other_key);
	sk_X509_push(cas, ca);

	src = write_crl_file("upstream.crl", c1, 0);
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), 0);
	ck_assert_int_eq(number, 5);
	dst = kms_path_join(out, "upstream.crl");
	ck_assert_int_eq(kms_read_file(dst, 1 << 20, &before, &blen), 0);
	ck_assert_int_eq(ca_crl_parse(before, blen, &got), 0);
	ck_assert_int_eq(ca_crl_number(got), 5);
	X509_CRL_free(got);
	free(before);
	free(src);

	/* A newer one (as PEM, by file:// URL) replaces it. */
	src = write_crl_file("upstream.crl", c2, 1);
	snprintf(url, sizeof(url), "file://%s", src);
	ck_assert_int_eq(ca_crl_fetch_to_dir(url, cas, out, 5, &number), 0);
	ck_assert_int_eq(number, 6);
	ck_assert_int_eq(kms_read_file(dst, 1 << 20, &before, &blen), 0);
	free(src);

	/* Forged, replayed-older and expired CRLs all leave the good copy as it was. */
	src = write_crl_file("upstream.crl", forged, 0);
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), KMS_ERR_CORRUPT);
	free(src);
	src = write_crl_file("upstream.crl", old, 0);
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), KMS_ERR_STATE);
	free(src);
	src = write_crl_file("upstream.crl", expired, 0);
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), KMS_ERR_EXPIRED);
	free(src);
	src = tu_write(dir, "upstream.crl", "this is not a CRL");
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), KMS_ERR_CORRUPT);
	free(src);
	src = kms_path_join(dir, "missing.crl");
	ck_assert_int_eq(ca_crl_fetch_to_dir(src, cas, out, 5, &number), KMS_ERR_NOTFOUND);
	free(src);
	ck_assert_int_eq(ca_crl_fetch_to_dir("ftp://example.org/x.crl", cas, out, 5, &number), KMS_ERR_INVALID);

	ck_assert_int_eq(kms_read_file(dst, 1 << 20, &after, &alen), 0);
	ck_assert_int_eq(alen, blen);
	ck_assert_int_eq(memcmp(after, before, blen), 0);
	free(before);
	free(after);

	sk_X509_free(cas);
	X509_CRL_free(c1);
	X509_CRL_free(c2);
	X509_CRL_free(forged);
	X509_CRL_free(old);
	X509_CRL_free(expired);
	X509_free(ca);
	free(out);
	free(dst);
}
END_TEST

START_TEST(test_fetch_bounds_size_and_names_files_safely)
{
	X509 *ca = mk_ca_cert(other_key, "Bound Org");
	static const char *const sers[] = { "01", "02", "03" };
	X509_CRL *c = mk_ext_crl(ca, other_key, sers, 3, 1, time(NULL) - 60, time(NULL) + 3600), *got = NULL;
	char *src = write_crl_file("b.crl", c, 0), name[64];

	ck_assert_int_eq(ca_crl_fetch(src, 5, -1, 64, NULL, &got, NULL, NULL), KMS_ERR_TOOBIG);
	ck_assert_ptr_null(got);
	ck_assert_int_eq(ca_crl_fetch(src, 5, -1, 0, NULL, &got, NULL, NULL), 0);
	ck_assert_ptr_nonnull(got);
	X509_CRL_free(got);

	ck_assert_int_eq(ca_crl_file_name("http://h:1/crl/kms-ca.crl?after=3", name, sizeof(name)), 0);
	ck_assert_str_eq(name, "kms-ca.crl");
	ck_assert_int_eq(ca_crl_file_name("http://h/", name, sizeof(name)), 0);
	ck_assert_str_eq(name, "crl.crl");
	ck_assert_int_eq(ca_crl_file_name("http://h/..", name, sizeof(name)), 0);
	ck_assert_int_ne(name[0], '.');
	ck_assert_ptr_null(strchr(name, '/'));
	ck_assert_int_eq(ca_crl_file_name("http://h/list", name, sizeof(name)), 0);
	ck_assert_str_eq(name, "list.crl");
	free(src);
	X509_CRL_free(c);
	X509_free(ca);
}
END_TEST

START_TEST(test_load_cas_reads_every_certificate)
{
	X509 *a = mk_ca_cert(other_key, "A Org"), *b = mk_ca_cert(p256_key, "B Org");
	char *p = kms_path_join(dir, "cas.pem");
	FILE *fp = fopen(p, "w");
	STACK_OF(X509) *sk = NULL;
	static const char *const sers[] = { "01" };
	X509_CRL *crl = mk_ext_crl(b, p256_key, sers, 1, 1, time(NULL) - 60, time(NULL) + 3600);
	X509 *who;
	int stale;

	PEM_write_X509(fp, a);
	PEM_write_X509(fp, b);
	fclose(fp);
	ck_assert_int_eq(ca_crl_load_cas(p, &sk), 0);
	ck_assert_int_eq(sk_X509_num(sk), 2);
	ck_assert_int_eq(ca_crl_find_issuer(crl, sk, time(NULL), &who, &stale), 0);
	ck_assert_int_eq(X509_cmp(who, b), 0);
	sk_X509_pop_free(sk, X509_free);
	free(p);
	p = tu_write(dir, "empty.pem", "nothing here\n");
	ck_assert_int_eq(ca_crl_load_cas(p, &sk), KMS_ERR_INVALID);
	free(p);
	X509_CRL_free(crl);
	X509_free(a);
	X509_free(b);
}
END_TEST

/* ------------------------------------------- CRLs of other CAs (RFC 5280 6.3) */

/* A certificate "CN=<cn>" issued by issuer (NULL: self-signed) with the given extensions. */
static X509 *
mk_cert(X509 *issuer, EVP_PKEY *ikey, EVP_PKEY *key, const char *cn, long serial, int is_ca, const char *ku,
    const char *cdp)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
	X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"Partner", -1, -1, 0);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509_NAME_free(n);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
	X509_set_pubkey(x, key);
	add_ext(x, issuer ? issuer : x, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
	if (ku != NULL)
		add_ext(x, issuer ? issuer : x, NID_key_usage, ku);
	add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
	if (issuer != NULL)
		add_ext(x, issuer, NID_authority_key_identifier, "keyid");
	if (cdp != NULL)
		add_ext(x, issuer ? issuer : x, NID_crl_distribution_points, cdp);
	ck_assert_int_gt(X509_sign(x, issuer ? ikey : key, EVP_sha256()), 0);
	return x;
}

struct crl_spec {
	time_t last, next;
	long number;            /* -1 none */
	long delta_base;        /* -1: not a delta */
	int only_user, only_ca, indirect, some_reasons;
	const char *idp_uri;
	int unknown_critical, unknown_critical_entry;
};

struct crl_ent {
	const char *serial;
	int reason;             /* -1 none */
	X509 *cert_issuer;      /* indirect: certificateIssuer of this entry */
	const char *uri_issuer; /* a certificateIssuer that is a URI, not a directory name */
};

static X509_CRL *
mk_crl(const X509_NAME *issuer, EVP_PKEY *signer, const struct crl_spec *sp, const struct crl_ent *ents, int n)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();

	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, issuer);
	ASN1_TIME_set(t, sp->last);
	X509_CRL_set1_lastUpdate(crl, t);
	ASN1_TIME_set(t, sp->next);
	X509_CRL_set1_nextUpdate(crl, t);
	if (sp->number >= 0) {
		ASN1_INTEGER *a = ASN1_INTEGER_new();

		ASN1_INTEGER_set(a, sp->number);
		X509_CRL_add1_ext_i2d(crl, NID_crl_number, a, 0, 0);
		if (sp->delta_base >= 0) {
			ASN1_INTEGER_set(a, sp->delta_base);
			X509_CRL_add1_ext_i2d(crl, NID_delta_crl, a, 1, 0);
		}
		ASN1_INTEGER_free(a);
	}
	if (sp->only_user || sp->only_ca || sp->indirect || sp->some_reasons || sp->idp_uri) {
		ISSUING_DIST_POINT *idp = ISSUING_DIST_POINT_new();

		idp->onlyuser = sp->only_user ? 0xff : -1;
		idp->onlyCA = sp->only_ca ? 0xff : -1;
		idp->indirectCRL = sp->indirect ? 0xff : -1;
		if (sp->some_reasons) {
			idp->onlysomereasons = ASN1_BIT_STRING_new();
			ASN1_BIT_STRING_set_bit(idp->onlysomereasons, 1, 1);
		}
		if (sp->idp_uri) {
			GENERAL_NAME *g = GENERAL_NAME_new();
			ASN1_IA5STRING *u = ASN1_IA5STRING_new();

			ASN1_STRING_set(u, sp->idp_uri, -1);
			GENERAL_NAME_set0_value(g, GEN_URI, u);
			idp->distpoint = DIST_POINT_NAME_new();
			idp->distpoint->type = 0;
			idp->distpoint->name.fullname = sk_GENERAL_NAME_new_null();
			sk_GENERAL_NAME_push(idp->distpoint->name.fullname, g);
		}
		ck_assert_int_eq(X509_CRL_add1_ext_i2d(crl, NID_issuing_distribution_point, idp, 1, 0), 1);
		ISSUING_DIST_POINT_free(idp);
	}
	if (sp->unknown_critical) {
		ASN1_OBJECT *o = OBJ_txt2obj("1.3.6.1.4.1.99999.1", 1);
		ASN1_OCTET_STRING *v = ASN1_OCTET_STRING_new();
		X509_EXTENSION *ext;

		ASN1_OCTET_STRING_set(v, (const unsigned char *)"\x05\x00", 2);
		ext = X509_EXTENSION_create_by_OBJ(NULL, o, 1, v);
		X509_CRL_add_ext(crl, ext, -1);
		X509_EXTENSION_free(ext);
		ASN1_OBJECT_free(o);
		ASN1_OCTET_STRING_free(v);
	}
	for (int i = 0; i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_INTEGER *a = asn1_serial(ents[i].serial);

		X509_REVOKED_set_serialNumber(r, a);
		ASN1_TIME_set(t, sp->last - 3600);
		X509_REVOKED_set_revocationDate(r, t);
		if (ents[i].reason >= 0) {
			ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();

			ASN1_ENUMERATED_set(e, ents[i].reason);
			X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0);
			ASN1_ENUMERATED_free(e);
		}
		if (ents[i].cert_issuer != NULL || ents[i].uri_issuer != NULL) {
			GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
			GENERAL_NAME *g = GENERAL_NAME_new();

			if (ents[i].cert_issuer != NULL) {
				GENERAL_NAME_set0_value(g, GEN_DIRNAME,
				    X509_NAME_dup(X509_get_subject_name(ents[i].cert_issuer)));
			} else {
				ASN1_IA5STRING *u = ASN1_IA5STRING_new();

				ASN1_STRING_set(u, ents[i].uri_issuer, -1);
				GENERAL_NAME_set0_value(g, GEN_URI, u);
			}
			sk_GENERAL_NAME_push(gens, g);
			X509_REVOKED_add1_ext_i2d(r, NID_certificate_issuer, gens, 1, 0);
			GENERAL_NAMES_free(gens);
		}
		if (sp->unknown_critical_entry && i == 0) {
			ASN1_OBJECT *o = OBJ_txt2obj("1.3.6.1.4.1.99999.2", 1);
			ASN1_OCTET_STRING *v = ASN1_OCTET_STRING_new();
			X509_EXTENSION *ext;

			ASN1_OCTET_STRING_set(v, (const unsigned char *)"\x05\x00", 2);
			ext = X509_EXTENSION_create_by_OBJ(NULL, o, 1, v);
			X509_REVOKED_add_ext(r, ext, -1);
			X509_EXTENSION_free(ext);
			ASN1_OBJECT_free(o);
			ASN1_OCTET_STRING_free(v);
		}
		X509_CRL_add0_revoked(crl, r);
		ASN1_INTEGER_free(a);
	}
	ASN1_TIME_free(t);
	ck_assert_int_gt(X509_CRL_sign(crl, signer, EVP_sha256()), 0);
	return crl;
}

/* A small partner PKI: root -> intermediate -> users 0x10, 0x11; root's CRL key is p256_key. */
struct pki {
	X509 *root, *inter, *inter_nocrlsign, *ee, *ee2, *other_root;
	X509_STORE *anchors;
	STACK_OF(X509) *inter_sk;
};

static void
pki_make(struct pki *p)
{
	memset(p, 0, sizeof(*p));
	p->root = mk_cert(NULL, NULL, p256_key, "Partner Root", 1, 1, "critical,keyCertSign,cRLSign", NULL);
	p->inter = mk_cert(p->root, p256_key, other_key, "Partner Issuing CA", 2, 1, "critical,keyCertSign,cRLSign",
	    "URI:http://127.0.0.1:1/root.crl");
	p->inter_nocrlsign = mk_cert(p->root, p256_key, other_key, "Partner Issuing CA", 3, 1, "critical,keyCertSign",
	    NULL);
	p->ee = mk_cert(p->inter, other_key, rsa_key, "alice", 0x10, 0, "critical,digitalSignature",
	    "URI:http://127.0.0.1:1/inter.crl");
	p->ee2 = mk_cert(p->inter, other_key, rsa_key, "bob", 0x11, 0, "critical,digitalSignature",
	    "URI:http://127.0.0.1:1/inter.crl");
	p->other_root = mk_cert(NULL, NULL, p384_key, "Other Root", 9, 1, "critical,keyCertSign,cRLSign", NULL);
	p->anchors = X509_STORE_new();
	X509_STORE_add_cert(p->anchors, p->root);
	X509_STORE_add_cert(p->anchors, p->other_root);
	p->inter_sk = sk_X509_new_null();
	sk_X509_push(p->inter_sk, p->inter);
}

static void
pki_free(struct pki *p)
{
	X509_free(p->root);
	X509_free(p->inter);
	X509_free(p->inter_nocrlsign);
	X509_free(p->ee);
	X509_free(p->ee2);
	X509_free(p->other_root);
	X509_STORE_free(p->anchors);
	sk_X509_free(p->inter_sk);
}

/* Validate crl against the PKI and build an index of it (with delta when given); the index or NULL. */
static struct ca_revidx *
index_of(struct pki *p, X509_CRL *crl, X509_CRL *delta, int *rc_out)
{
	struct ca_crl_meta m, dm;
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	X509 *signer = NULL;
	time_t now = time(NULL);
	int rc;

	memset(&dm, 0, sizeof(dm));
	rc = ca_crl_validate_chain(crl, p->anchors, p->inter_sk, now, &signer, &m);
	*rc_out = rc;
	if (rc != 0 && rc != KMS_ERR_EXPIRED)
		return NULL;
	if (delta != NULL) {
		int drc = ca_crl_validate_chain(delta, p->anchors, p->inter_sk, now, &signer, &dm);

		ck_assert_msg(drc == 0, "delta: %s", kms_last_error());
	}
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	rc = ca_revidx_add_valid(b, crl, &m, delta, delta ? &dm : NULL, now);
	ck_assert_msg(rc == 0, "add_valid: %s", kms_last_error());
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ca_crl_meta_clear(&m);
	ca_crl_meta_clear(&dm);
	return idx;
}

static const struct crl_spec spec_plain = { 0, 0, 5, -1, 0, 0, 0, 0, NULL, 0, 0 };

static struct crl_spec
spec_now(void)
{
	struct crl_spec s = spec_plain;

	s.last = time(NULL) - 600;
	s.next = time(NULL) + 86400;
	return s;
}

START_TEST(test_intermediate_crl_revokes_its_user_with_date_and_reason)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	const struct crl_ent ents[] = { { "10", 1, NULL, NULL } };
	X509_CRL *crl;
	struct ca_revidx *idx;
	struct ca_rev_info info;
	int rc;

	pki_make(&p);
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_msg(rc == 0, "%s", kms_last_error());
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
	ck_assert_int_eq(info.reason, 1);
	ck_assert_int_eq(info.revoked_at, sp.last - 3600);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 0);
	/* The intermediate itself: the root's CRL is not loaded, so its status is unknown. */
	ck_assert_int_eq(ca_revidx_check(idx, p.inter, &info), -1);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	pki_free(&p);
}
END_TEST

START_TEST(test_crl_signed_by_an_intermediate_without_a_path_is_refused)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	X509_CRL *crl;
	X509 *signer = NULL;
	struct ca_crl_meta m;
	STACK_OF(X509) *none = sk_X509_new_null();

	pki_make(&p);
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, NULL, 0);
	/* The intermediate is known but its root is not an anchor here. */
	X509_STORE *lonely = X509_STORE_new();

	X509_STORE_add_cert(lonely, p.other_root);
	ck_assert_int_eq(ca_crl_validate_chain(crl, lonely, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, none, time(NULL), &signer, &m), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), 0);
	ck_assert_ptr_eq(signer, p.inter);
	ca_crl_meta_clear(&m);
	X509_STORE_free(lonely);
	sk_X509_free(none);
	X509_CRL_free(crl);
	pki_free(&p);
}
END_TEST

START_TEST(test_unusable_crls_are_refused_with_their_reason)
{
	struct pki p;
	struct crl_spec sp;
	const struct crl_ent ents[] = { { "10", 1, NULL, NULL } };
	X509_CRL *crl;
	X509 *signer;
	struct ca_crl_meta m;
	STACK_OF(X509) *c = sk_X509_new_null();
	int rc;

	pki_make(&p);
	/* Bad signature: signed by another key. */
	sp = spec_now();
	crl = mk_crl(X509_get_subject_name(p.inter), p384_key, &sp, ents, 1);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "signature"));
	X509_CRL_free(crl);
	/* Wrong issuer: a name nobody trusted carries. */
	{
		X509_NAME *n = X509_NAME_new();

		X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Stranger", -1, -1, 0);
		crl = mk_crl(n, other_key, &sp, ents, 1);
		X509_NAME_free(n);
		ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_NOTFOUND);
		X509_CRL_free(crl);
	}
	/* A signer whose keyUsage lacks cRLSign. */
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	sk_X509_push(c, p.inter_nocrlsign);
	ck_assert_int_eq(ca_crl_validate(crl, c, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "cRLSign"));
	X509_CRL_free(crl);
	/*
	 * Signed by the key without cRLSign while a CA of the same name (another
	 * key) is a candidate too: refused, and the reason told is the cRLSign
	 * one, whichever candidate comes first.
	 */
	{
		X509 *root_named = mk_cert(p.root, p256_key, rsa_key, "Partner Issuing CA", 4, 1,
		    "critical,keyCertSign,cRLSign", NULL);

		crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
		sk_X509_push(c, root_named);
		ck_assert_int_eq(ca_crl_validate(crl, c, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
		ck_assert_msg(strstr(kms_last_error(), "cRLSign") != NULL, "%s", kms_last_error());
		sk_X509_set(c, 0, root_named);
		sk_X509_set(c, 1, p.inter_nocrlsign);
		ck_assert_int_eq(ca_crl_validate(crl, c, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
		ck_assert_msg(strstr(kms_last_error(), "cRLSign") != NULL, "%s", kms_last_error());
		sk_X509_pop(c);
		sk_X509_set(c, 0, p.inter_nocrlsign);
		X509_free(root_named);
		X509_CRL_free(crl);
	}
	/* Unknown critical extension, on the CRL and on an entry. */
	sp.unknown_critical = 1;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "unknown critical"));
	X509_CRL_free(crl);
	sp = spec_now();
	sp.unknown_critical_entry = 1;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
	X509_CRL_free(crl);
	/* Not yet valid. */
	sp = spec_now();
	sp.last = time(NULL) + 7200;
	sp.next = time(NULL) + 86400;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "not valid yet"));
	X509_CRL_free(crl);
	/* Expired: its entries still revoke, but nothing unlisted is known good. */
	sp = spec_now();
	sp.last = time(NULL) - 7200;
	sp.next = time(NULL) - 3600;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	{
		struct ca_revidx *idx = index_of(&p, crl, NULL, &rc);
		struct ca_rev_info info;

		ck_assert_int_eq(rc, KMS_ERR_EXPIRED);
		ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
		ck_assert_int_eq(info.stale, 1);
		ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), -1);
		ck_assert_int_eq(info.stale, 1);
		ca_revidx_unref(idx);
	}
	X509_CRL_free(crl);
	sk_X509_free(c);
	pki_free(&p);
}
END_TEST

START_TEST(test_idp_scope_decides_which_certificates_a_crl_speaks_for)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	const struct crl_ent ents[] = { { "10", 1, NULL, NULL }, { "2", 2, NULL, NULL } };
	X509_CRL *crl;
	struct ca_revidx *idx;
	struct ca_rev_info info;
	int rc;

	pki_make(&p);
	/* The intermediate's CRL for CA certificates only: alice is listed, but it does not speak for her. */
	sp.only_ca = 1;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), -1);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), -1);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	/* The root's CRL for CA certificates: the intermediate is revoked. */
	crl = mk_crl(X509_get_subject_name(p.root), p256_key, &sp, ents + 1, 1);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(ca_revidx_check(idx, p.inter, &info), 1);
	ck_assert_int_eq(info.reason, 2);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	/* User certificates only: alice revoked, bob good. */
	sp.only_ca = 0;
	sp.only_user = 1;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 0);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	/* A partition: covers only certificates naming its distribution point. */
	sp.only_user = 0;
	sp.idp_uri = "http://127.0.0.1:1/other-partition.crl";
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, NULL, 0);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), -1);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	sp.idp_uri = "http://127.0.0.1:1/inter.crl";
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, NULL, 0);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 0);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	/* Only some reasons: a listed certificate is revoked, an unlisted one is not known good. */
	sp.idp_uri = NULL;
	sp.some_reasons = 1;
	crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), -1);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	pki_free(&p);
}
END_TEST

START_TEST(test_delta_on_base_adds_and_removes_from_crl)
{
	struct pki p;
	struct crl_spec sp = spec_now(), dsp;
	const struct crl_ent base_ents[] = { { "10", 6, NULL, NULL } };          /* alice on hold */
	const struct crl_ent delta_ents[] = { { "10", 8, NULL, NULL }, { "11", 1, NULL, NULL } };
	X509_CRL *base, *delta, *old_base;
	struct ca_revidx *idx;
	struct ca_rev_info info;
	struct ca_revidx_builder *b = NULL;
	struct ca_crl_meta m, dm;
	X509 *signer;
	int rc;

	pki_make(&p);
	sp.number = 7;
	base = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, base_ents, 1);
	dsp = sp;
	dsp.number = 8;
	dsp.delta_base = 7;
	delta = mk_crl(X509_get_subject_name(p.inter), other_key, &dsp, delta_ents, 2);
	idx = index_of(&p, base, NULL, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
	ck_assert_int_eq(info.reason, 6);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 0);
	ca_revidx_unref(idx);
	/* With the delta: alice off hold (removeFromCRL), bob revoked. */
	idx = index_of(&p, base, delta, &rc);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 0);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 1);
	ck_assert_int_eq(info.reason, 1);
	ca_revidx_unref(idx);
	/* A delta needs a base at least as new as its BaseCRLNumber. */
	sp.number = 6;
	old_base = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, base_ents, 1);
	ck_assert_int_eq(ca_crl_validate_chain(old_base, p.anchors, p.inter_sk, time(NULL), &signer, &m), 0);
	ck_assert_int_eq(ca_crl_validate_chain(delta, p.anchors, p.inter_sk, time(NULL), &signer, &dm), 0);
	ck_assert_int_eq(dm.delta, 1);
	ck_assert_int_eq(dm.base, 7);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_valid(b, old_base, &m, delta, &dm, time(NULL)), KMS_ERR_CORRUPT);
	/* And a delta alone is not a CRL to use. */
	ck_assert_int_eq(ca_revidx_add_valid(b, delta, &dm, NULL, NULL, time(NULL)), KMS_ERR_INVALID);
	ca_revidx_builder_free(b);
	ca_crl_meta_clear(&m);
	ca_crl_meta_clear(&dm);
	X509_CRL_free(old_base);
	X509_CRL_free(base);
	X509_CRL_free(delta);
	pki_free(&p);
}
END_TEST

/* A user of the intermediate whose distribution point names crl_issuer as its cRLIssuer (and uri, if given). */
static X509 *
mk_cert_crlissuer(struct pki *p, const char *cn, long serial, X509 *crl_issuer, const char *uri)
{
	X509 *x = mk_cert(p->inter, other_key, rsa_key, cn, serial, 0, "critical,digitalSignature", NULL);
	CRL_DIST_POINTS *dps = sk_DIST_POINT_new_null();
	DIST_POINT *dp = DIST_POINT_new();
	GENERAL_NAME *g = GENERAL_NAME_new();

	GENERAL_NAME_set0_value(g, GEN_DIRNAME, X509_NAME_dup(X509_get_subject_name(crl_issuer)));
	dp->CRLissuer = sk_GENERAL_NAME_new_null();
	sk_GENERAL_NAME_push(dp->CRLissuer, g);
	if (uri != NULL) {
		ASN1_IA5STRING *u = ASN1_IA5STRING_new();

		ASN1_STRING_set(u, uri, -1);
		g = GENERAL_NAME_new();
		GENERAL_NAME_set0_value(g, GEN_URI, u);
		dp->distpoint = DIST_POINT_NAME_new();
		dp->distpoint->type = 0;
		dp->distpoint->name.fullname = sk_GENERAL_NAME_new_null();
		sk_GENERAL_NAME_push(dp->distpoint->name.fullname, g);
	}
	sk_DIST_POINT_push(dps, dp);
	ck_assert_int_eq(X509_add1_ext_i2d(x, NID_crl_distribution_points, dps, 0, 0), 1);
	CRL_DIST_POINTS_free(dps);
	ck_assert_int_gt(X509_sign(x, other_key, EVP_sha256()), 0);
	return x;
}

START_TEST(test_indirect_crl_speaks_only_for_certificates_naming_its_issuer)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	X509_CRL *crl;
	struct ca_revidx *idx;
	struct ca_rev_info info;
	X509 *carol, *dave, *frank, *gina;
	int rc;

	pki_make(&p);
	carol = mk_cert_crlissuer(&p, "carol", 0x12, p.root, NULL);
	dave = mk_cert_crlissuer(&p, "dave", 0x13, p.root, NULL);
	frank = mk_cert_crlissuer(&p, "frank", 0x14, p.root, NULL);
	gina = mk_cert_crlissuer(&p, "gina", 0x15, p.root, NULL);
	/*
	 * The root's indirect CRL.  Each certificateIssuer holds for its entry
	 * and the following ones (RFC 5280 5.3.3); before the first, entries
	 * are the root's own.
	 */
	{
		const struct crl_ent ents[] = {
			{ "02", 2, NULL, NULL },        /* the root's: the intermediate */
			{ "10", 4, p.inter, NULL },     /* alice: her certificate does not name the root */
			{ "12", 1, NULL, NULL },        /* still the intermediate's: carol */
			{ "13", 1, NULL, "http://127.0.0.1:1/not-a-name" },     /* no directory name ... */
			{ "14", 1, NULL, NULL },        /* ... nor for this one (frank's serial) */
			{ "15", 1, p.root, NULL },      /* the root's own serial 0x15, not gina's */
		};

		sp.indirect = 1;
		crl = mk_crl(X509_get_subject_name(p.root), p256_key, &sp, ents, 6);
	}
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_msg(rc == 0, "%s", kms_last_error());
	ck_assert_int_eq(ca_revidx_check(idx, p.inter, &info), 1);
	ck_assert_int_eq(info.reason, 2);
	/* Alice's distribution point names no cRLIssuer: the root's indirect CRL does not speak for her. */
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), -1);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), -1);
	/* Carol names the root: the entry after the intermediate's certificateIssuer is hers. */
	ck_assert_int_eq(ca_revidx_check(idx, carol, &info), 1);
	ck_assert_int_eq(info.reason, 1);
	/* Entries after a certificateIssuer that is not a directory name belong to nobody we know. */
	ck_assert_int_eq(ca_revidx_check(idx, dave, &info), 0);
	ck_assert_int_eq(ca_revidx_check(idx, frank, &info), 0);
	/* A certificateIssuer naming the root again: serial 0x15 is the root's, gina is good. */
	ck_assert_int_eq(ca_revidx_check(idx, gina, &info), 0);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);

	/* A CRL that is not indirect may not name another certificate issuer: it is refused. */
	{
		const struct crl_ent ents[] = { { "12", 1, p.inter, NULL } };
		struct ca_crl_meta m;
		X509 *signer;

		sp.indirect = 0;
		crl = mk_crl(X509_get_subject_name(p.root), p256_key, &sp, ents, 1);
		ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m),
		    KMS_ERR_CORRUPT);
		ck_assert_ptr_nonnull(strstr(kms_last_error(), "not indirect"));
		X509_CRL_free(crl);
	}
	X509_free(carol);
	X509_free(dave);
	X509_free(frank);
	X509_free(gina);
	pki_free(&p);
}
END_TEST

START_TEST(test_partitioned_indirect_crl_covers_only_its_distribution_point)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	X509_CRL *crl;
	struct ca_revidx *idx;
	struct ca_rev_info info;
	X509 *in_part, *other_part, *whole;
	int rc;

	pki_make(&p);
	in_part = mk_cert_crlissuer(&p, "carol", 0x20, p.root, "http://127.0.0.1:1/indirect-a.crl");
	other_part = mk_cert_crlissuer(&p, "dave", 0x21, p.root, "http://127.0.0.1:1/indirect-b.crl");
	whole = mk_cert_crlissuer(&p, "erin", 0x12, p.root, "http://127.0.0.1:1/indirect-b.crl");
	sp.indirect = 1;
	sp.idp_uri = "http://127.0.0.1:1/indirect-a.crl";
	{
		const struct crl_ent ents[] = { { "12", 1, p.inter, NULL } };

		crl = mk_crl(X509_get_subject_name(p.root), p256_key, &sp, ents, 1);
	}
	idx = index_of(&p, crl, NULL, &rc);
	ck_assert_msg(rc == 0, "%s", kms_last_error());
	/* The partition it names is covered: good. */
	ck_assert_int_eq(ca_revidx_check(idx, in_part, &info), 0);
	/* Another partition of the same indirect CRL issuer: unknown, not good. */
	ck_assert_int_eq(ca_revidx_check(idx, other_part, &info), -1);
	/* A listed serial of a certificate naming the root as cRLIssuer is revoked by the root's word. */
	ck_assert_int_eq(ca_revidx_check(idx, whole, &info), 1);
	ca_revidx_unref(idx);
	X509_CRL_free(crl);
	X509_free(in_part);
	X509_free(other_part);
	X509_free(whole);
	pki_free(&p);
}
END_TEST

START_TEST(test_checked_list_path_claims_nothing_for_deltas_or_other_issuers)
{
	struct pki p;
	struct crl_spec sp = spec_now();
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	X509_CRL *delta, *named;
	ASN1_INTEGER *a;

	pki_make(&p);
	/* A delta taken as a plain list ([crl] external pointing at one): bob revoked, alice not known good. */
	{
		const struct crl_ent ents[] = { { "11", 1, NULL, NULL } };

		sp.number = 8;
		sp.delta_base = 7;
		delta = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
	}
	/* A CRL with a certificateIssuer entry: entries from there on are another CA's, not the root's. */
	{
		const struct crl_ent ents[] = { { "05", 1, NULL, NULL }, { "20", 1, p.inter, NULL },
			{ "21", 1, NULL, NULL } };

		sp.number = 3;
		sp.delta_base = -1;
		named = mk_crl(X509_get_subject_name(p.root), p256_key, &sp, ents, 3);
	}
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_checked_crl(b, delta, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_add_checked_crl(b, named, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 1);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), -1);
	a = asn1_serial("05");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(p.root), a, NULL), 1);
	ASN1_INTEGER_free(a);
	a = asn1_serial("20");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(p.root), a, NULL), 0);
	ASN1_INTEGER_free(a);
	a = asn1_serial("21");
	ck_assert_int_eq(ca_revidx_lookup(idx, X509_get_subject_name(p.root), a, NULL), 0);
	ASN1_INTEGER_free(a);
	ca_revidx_unref(idx);
	X509_CRL_free(delta);
	X509_CRL_free(named);
	pki_free(&p);
}
END_TEST

START_TEST(test_thousand_issuers_are_found_by_hash)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	X509 *ee;
	struct pki p;
	struct crl_spec sp = spec_now();

	pki_make(&p);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	/* A thousand other CAs with revocation data, then the partner's. */
	for (int i = 0; i < 1000; i++) {
		X509_NAME *n = X509_NAME_new();
		char cn[32];

		snprintf(cn, sizeof(cn), "CA %d", i);
		X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"Partner", -1, -1, 0);
		X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
		ck_assert_int_eq(ca_revidx_mark_stale(b, n), 0);
		X509_NAME_free(n);
	}
	{
		const struct crl_ent ents[] = { { "10", 3, NULL, NULL } };
		X509_CRL *crl = mk_crl(X509_get_subject_name(p.inter), other_key, &sp, ents, 1);
		struct ca_crl_meta m;
		X509 *signer;

		ck_assert_int_eq(ca_crl_validate_chain(crl, p.anchors, p.inter_sk, time(NULL), &signer, &m), 0);
		ck_assert_int_eq(ca_revidx_add_valid(b, crl, &m, NULL, NULL, time(NULL)), 0);
		ca_crl_meta_clear(&m);
		X509_CRL_free(crl);
	}
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee, &info), 1);
	ck_assert_int_eq(info.reason, 3);
	ck_assert_int_eq(ca_revidx_check(idx, p.ee2, &info), 0);
	ee = mk_cert(p.other_root, p384_key, rsa_key, "dave", 0x10, 0, NULL, NULL);
	ck_assert_int_eq(ca_revidx_check(idx, ee, &info), -1);
	X509_free(ee);
	ca_revidx_unref(idx);
	pki_free(&p);
}
END_TEST

static Suite *
revocation_suite(void)
{
	Suite *s = suite_create("revocation");
	TCase *tc;

	tc = tcase_create("revoke");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_reason_names_are_rfc5280_and_round_trip);
	tcase_add_test(tc, test_revoke_twice_reports_already_and_changes_nothing);
	tcase_add_test(tc, test_revoke_unknown_serial_and_bad_input_fail);
	tcase_add_test(tc, test_revoke_by_address_takes_valid_certificates_in_one_transaction);
	tcase_add_test(tc, test_revoke_refuses_the_key_recovery_key);
	suite_add_tcase(s, tc);

	tc = tcase_create("crl");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_crl_rsa_every_field_parses_back_and_verifies);
	tcase_add_test(tc, test_crl_p384_signed_with_sha384_and_verifies);
	tcase_add_test(tc, test_crl_without_revocations_has_no_entry_list);
	tcase_add_test(tc, test_crl_number_increases_across_issues);
	tcase_add_test(tc, test_delta_lists_exactly_the_new_revocations);
	tcase_add_test(tc, test_delta_takes_revocations_older_than_their_stamp_once);
	tcase_add_test(tc, test_crl_query_reads_the_covering_index);
	tcase_add_test(tc, test_openssl_crl_check_reports_revoked_user);
	tcase_add_test(tc, test_crl_with_many_entries_lists_every_serial);
	tcase_add_test(tc, test_crl_latest_and_publish_write_what_was_issued);
	tcase_add_test(tc, test_crl_issue_needs_the_ca_key);
	suite_add_tcase(s, tc);

	tc = tcase_create("index");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_index_lookups_hit_and_miss);
	tcase_add_test(tc, test_index_two_issuers_with_the_same_serial_are_kept_apart);
	tcase_add_test(tc, test_index_matches_issuer_name_in_another_string_encoding);
	tcase_add_test(tc, test_index_external_crl_with_bad_signature_is_refused_and_adds_nothing);
	tcase_add_test(tc, test_index_crl_of_another_issuer_or_from_the_future_is_refused);
	tcase_add_test(tc, test_index_crl_past_next_update_is_marked_stale);
	tcase_add_test(tc, test_index_with_is_visible_at_once_and_leaves_base_alone);
	tcase_add_test(tc, test_index_with_many_additions_folds_overlay_and_keeps_all);
	tcase_add_test(tc, test_holder_swap_under_concurrent_readers);
	suite_add_tcase(s, tc);

	tc = tcase_create("other CAs");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_intermediate_crl_revokes_its_user_with_date_and_reason);
	tcase_add_test(tc, test_crl_signed_by_an_intermediate_without_a_path_is_refused);
	tcase_add_test(tc, test_unusable_crls_are_refused_with_their_reason);
	tcase_add_test(tc, test_idp_scope_decides_which_certificates_a_crl_speaks_for);
	tcase_add_test(tc, test_delta_on_base_adds_and_removes_from_crl);
	tcase_add_test(tc, test_indirect_crl_speaks_only_for_certificates_naming_its_issuer);
	tcase_add_test(tc, test_partitioned_indirect_crl_covers_only_its_distribution_point);
	tcase_add_test(tc, test_checked_list_path_claims_nothing_for_deltas_or_other_issuers);
	tcase_add_test(tc, test_thousand_issuers_are_found_by_hash);
	suite_add_tcase(s, tc);

	tc = tcase_create("fetch");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_fetch_good_crl_replaces_copy_and_bad_one_keeps_last_good);
	tcase_add_test(tc, test_fetch_bounds_size_and_names_files_safely);
	tcase_add_test(tc, test_load_cas_reads_every_certificate);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(revocation_suite());
	int failed;

	keys_once();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(p384_key);
	EVP_PKEY_free(p256_key);
	EVP_PKEY_free(other_key);
	return failed == 0 ? 0 : 1;
}
