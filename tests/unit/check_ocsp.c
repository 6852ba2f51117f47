/*
 * check_ocsp.c - unit suite for OCSP (ca/ocsp.c, ca/ocsp_signer.c,
 * ca/serialset.c): the delegated signer's profile and storage, the issued
 * serial set, and responses read back and verified with OpenSSL's own OCSP
 * client functions (OCSP_basic_verify, OCSP_resp_find_status,
 * OCSP_check_nonce) against a real CA, a real SQLite store and the real
 * revocation index.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#define PASS "correct horse battery staple"

static char *dir;
static struct kms_store *st;
static struct ca *ca, *other_ca;
static X509 *user1, *user2, *stranger;
static X509 *signer_cert;
static EVP_PKEY *signer_key;
/* Clock skew status_of() accepts (tests that answer at a later "now" widen it). */
static long skew = 300;

static X509 *
issue_user(struct ca *c, const char *email)
{
	EVP_PKEY *k = NULL;
	X509 *x = NULL;
	struct ca_issue_req req = { .usage = CA_USAGE_SIGN, .email = email, .days = 30 };

	ck_assert_int_eq(ca_keygen("ec:p256", &k), 0);
	req.pubkey = k;
	ck_assert_int_eq(ca_issue(c, &req, &x), 0);
	EVP_PKEY_free(k);
	return x;
}

static void
setup(void)
{
	char *path;
	int renewed;

	skew = 300;
	dir = tu_tmpdir();
	path = kms_path_join(dir, "kms.db");
	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE, &st), 0);
	free(path);
	ck_assert_int_eq(ca_create_root("Example Org", "test-ca", "ec:p384", 365, &ca), 0);
	ck_assert_int_eq(ca_create_root("Other Org", "other-ca", "ec:p384", 365, &other_ca), 0);
	user1 = issue_user(ca, "alice@example.org");
	user2 = issue_user(ca, "bob@example.org");
	stranger = issue_user(other_ca, "mallory@example.net");
	ck_assert_int_eq(ca_store_add_cert(st, user1, "alice@example.org", "", CA_USAGE_SIGN, "enroll", "t"), 0);
	ck_assert_int_eq(ca_store_add_cert(st, user2, "bob@example.org", "", CA_USAGE_SIGN, "enroll", "t"), 0);
	ck_assert_int_eq(ca_ocsp_signer_ensure(st, ca, PASS, "ec:p256", 86400, time(NULL), &signer_cert, &signer_key,
	    &renewed), 0);
	ck_assert_int_eq(renewed, 1);
}

static void
teardown(void)
{
	X509_free(user1);
	X509_free(user2);
	X509_free(stranger);
	X509_free(signer_cert);
	EVP_PKEY_free(signer_key);
	ca_free(ca);
	ca_free(other_ca);
	kms_store_close(st);
	st = NULL;
	tu_rmtree(dir);
	free(dir);
}

/* The index as kmsd builds it: every revoked certificate of the store. */
static struct ca_revidx *
index_now(void)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;

	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_store(b, st, ca->cert), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	return idx;
}

static struct ca_ocsp *
responder(int know_issued, size_t max_certids)
{
	struct ca_ocsp_opts o = { .validity = 3600, .max_request = 65536, .max_certids = max_certids,
		.cache_max = 1000, .know_issued = know_issued };
	struct ca_ocsp *r = NULL;

	ck_assert_int_eq(ca_ocsp_new(ca->cert, &o, &r), 0);
	ck_assert_int_eq(ca_ocsp_set_signer(r, signer_cert, signer_key), 0);
	ck_assert_int_eq(ca_ocsp_load_issued(r, st), 0);
	return r;
}

/* DER of a request for certs (each with md), with a nonce when nonce is set. */
static unsigned char *
request(X509 *const *certs, X509 *issuer, const EVP_MD *md, int n, int nonce, size_t *len, OCSP_REQUEST **keep)
{
	OCSP_REQUEST *req = OCSP_REQUEST_new();
	unsigned char *der = NULL;
	int l;

	ck_assert_ptr_nonnull(req);
	for (int i = 0; i < n; i++) {
		OCSP_CERTID *id = OCSP_cert_to_id(md, certs[i], issuer);

		ck_assert_ptr_nonnull(id);
		ck_assert_ptr_nonnull(OCSP_request_add0_id(req, id));
	}
	if (nonce)
		ck_assert_int_eq(OCSP_request_add1_nonce(req, NULL, 16), 1);
	l = i2d_OCSP_REQUEST(req, &der);
	ck_assert_int_gt(l, 0);
	*len = (size_t)l;
	if (keep != NULL)
		*keep = req;
	else
		OCSP_REQUEST_free(req);
	return der;
}

static struct ca_ocsp_blob *
ask(struct ca_ocsp *r, const struct ca_revidx *idx, const unsigned char *der, size_t len, time_t now)
{
	struct ca_ocsp_blob *b = NULL;

	ck_assert_int_eq(ca_ocsp_respond(r, idx, der, len, now, &b), 0);
	ck_assert_ptr_nonnull(b);
	return b;
}

/* Parse and verify a successful response against our CA; the basic response. */
static OCSP_BASICRESP *
verified(const struct ca_ocsp_blob *b)
{
	const unsigned char *p = b->der;
	OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)b->len);
	OCSP_BASICRESP *bs;
	X509_STORE *store = X509_STORE_new();

	ck_assert_ptr_nonnull(resp);
	ck_assert_ptr_eq(p, b->der + b->len);
	ck_assert_int_eq(OCSP_response_status(resp), OCSP_RESPONSE_STATUS_SUCCESSFUL);
	bs = OCSP_response_get1_basic(resp);
	ck_assert_ptr_nonnull(bs);
	X509_STORE_add_cert(store, ca->cert);
	/* OpenSSL's client check: delegated signer with id-kp-OCSPSigning, issued by the CA. */
	ck_assert_int_eq(OCSP_basic_verify(bs, NULL, store, 0), 1);
	X509_STORE_free(store);
	OCSP_RESPONSE_free(resp);
	return bs;
}

static int
error_status(const struct ca_ocsp_blob *b)
{
	const unsigned char *p = b->der;
	OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)b->len);
	int s;

	ck_assert_ptr_nonnull(resp);
	s = OCSP_response_status(resp);
	ck_assert_int_eq(s, b->status);
	ck_assert_ptr_null(OCSP_response_get1_basic(resp));
	OCSP_RESPONSE_free(resp);
	ERR_clear_error();
	return s;
}

static int
status_of(OCSP_BASICRESP *bs, X509 *cert, X509 *issuer, const EVP_MD *md, int *reason, time_t *revtime)
{
	OCSP_CERTID *id = OCSP_cert_to_id(md, cert, issuer);
	ASN1_GENERALIZEDTIME *rt = NULL, *tu = NULL, *nu = NULL;
	int status = -1, r = -1;

	ck_assert_int_eq(OCSP_resp_find_status(bs, id, &status, &r, &rt, &tu, &nu), 1);
	ck_assert_ptr_nonnull(tu);
	ck_assert_ptr_nonnull(nu);
	ck_assert_int_eq(OCSP_check_validity(tu, nu, skew, -1), 1);
	if (reason)
		*reason = r;
	if (revtime && rt) {
		struct tm tm;

		ck_assert_int_eq(ASN1_TIME_to_tm(rt, &tm), 1);
		*revtime = timegm(&tm);
	}
	OCSP_CERTID_free(id);
	return status;
}

static void
revoke(X509 *cert, time_t when, int reason, struct ca_revidx **idx)
{
	char *hex = ca_serial_hex(X509_get0_serialNumber(cert));
	struct ca_rev_info info = { .revoked_at = when, .reason = reason };
	struct ca_revidx *next = NULL;
	int already;

	ck_assert_int_eq(ca_store_revoke(st, hex, when, reason, 0, &already), 0);
	free(hex);
	/* As kmsd does: the running index is extended at once, not rebuilt. */
	ck_assert_int_eq(ca_revidx_with(*idx, X509_get_issuer_name(cert), X509_get0_serialNumber(cert), &info, &next), 0);
	ca_revidx_unref(*idx);
	*idx = next;
}

/* ------------------------------------------------------------------ signer */

START_TEST(test_signer_profile_is_a_delegated_ocsp_signer)
{
	EXTENDED_KEY_USAGE *eku;
	BASIC_CONSTRAINTS *bc;
	ASN1_BIT_STRING *ku;
	int crit = -1;
	time_t nb, na;
	struct tm tm;

	ck_assert_int_eq(X509_NAME_cmp(X509_get_issuer_name(signer_cert), X509_get_subject_name(ca->cert)), 0);
	ck_assert_int_eq(X509_verify(signer_cert, X509_get0_pubkey(ca->cert)), 1);
	eku = X509_get_ext_d2i(signer_cert, NID_ext_key_usage, &crit, NULL);
	ck_assert_ptr_nonnull(eku);
	ck_assert_int_eq(sk_ASN1_OBJECT_num(eku), 1);
	ck_assert_int_eq(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)), NID_OCSP_sign);
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
	ck_assert_int_ge(X509_get_ext_by_NID(signer_cert, NID_id_pkix_OCSP_noCheck, -1), 0);
	ku = X509_get_ext_d2i(signer_cert, NID_key_usage, &crit, NULL);
	ck_assert_ptr_nonnull(ku);
	ck_assert_int_eq(crit, 1);
	ck_assert_int_eq(ASN1_BIT_STRING_get_bit(ku, 0), 1);        /* digitalSignature */
	ck_assert_int_eq(ASN1_BIT_STRING_get_bit(ku, 5), 0);        /* never keyCertSign */
	ASN1_BIT_STRING_free(ku);
	bc = X509_get_ext_d2i(signer_cert, NID_basic_constraints, &crit, NULL);
	ck_assert_ptr_nonnull(bc);
	ck_assert_int_eq(bc->ca, 0);
	BASIC_CONSTRAINTS_free(bc);
	ck_assert_int_eq(ASN1_TIME_to_tm(X509_get0_notBefore(signer_cert), &tm), 1);
	nb = timegm(&tm);
	ck_assert_int_eq(ASN1_TIME_to_tm(X509_get0_notAfter(signer_cert), &tm), 1);
	na = timegm(&tm);
	/* Short-lived: the configured day, plus the few minutes of back-dating. */
	ck_assert_int_le(na - nb, 86400 + 600);
	ck_assert_int_ge(na - nb, 86400);
	/* Not the CA's key. */
	ck_assert_int_ne(EVP_PKEY_eq(signer_key, ca->key), 1);
}
END_TEST

START_TEST(test_signer_is_kept_encrypted_and_renewed_only_when_due)
{
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	char *pem = NULL;
	int renewed = -1;

	/* Stored encrypted: the key PEM is PKCS#8 ciphertext. */
	ck_assert_int_eq(kms_store_meta_get(st, "ocsp_signer_key", &pem), 0);
	ck_assert_ptr_nonnull(strstr(pem, "ENCRYPTED PRIVATE KEY"));
	free(pem);
	ck_assert_int_eq(ca_ocsp_signer_load(st, ca->cert, "wrong passphrase", &x, &k), KMS_ERR_PERM);
	ck_assert_ptr_null(x);
	/* A wrong passphrase never replaces the signer. */
	ck_assert_int_eq(ca_ocsp_signer_ensure(st, ca, "wrong passphrase", "ec:p256", 86400, time(NULL), &x, &k,
	    &renewed), KMS_ERR_PERM);
	ck_assert_int_eq(ca_ocsp_signer_ensure(st, ca, PASS, "ec:p256", 86400, time(NULL), &x, &k, &renewed), 0);
	ck_assert_int_eq(renewed, 0);
	ck_assert_int_eq(X509_cmp(x, signer_cert), 0);
	ck_assert_int_eq(ca_ocsp_signer_due(x, 86400, time(NULL)), 0);
	X509_free(x);
	EVP_PKEY_free(k);
	/* Past half its life it is replaced by a new key and certificate. */
	ck_assert_int_eq(ca_ocsp_signer_due(signer_cert, 86400, time(NULL) + 43200 + 600), 1);
	ck_assert_int_eq(ca_ocsp_signer_ensure(st, ca, PASS, "ec:p256", 86400, time(NULL) + 50000, &x, &k, &renewed), 0);
	ck_assert_int_eq(renewed, 1);
	ck_assert_int_ne(X509_cmp(x, signer_cert), 0);
	ck_assert_int_ne(EVP_PKEY_eq(k, signer_key), 1);
	X509_free(x);
	EVP_PKEY_free(k);
	/* Another CA's signer is refused as this CA's. */
	ck_assert_int_eq(ca_ocsp_signer_load(st, other_ca->cert, PASS, &x, &k), KMS_ERR_STATE);
}
END_TEST

START_TEST(test_signer_not_issued_by_our_ca_is_refused)
{
	struct ca_ocsp *r = responder(1, 10);
	EVP_PKEY *k = NULL;
	X509 *x = NULL;

	ck_assert_int_eq(ca_keygen("ec:p256", &k), 0);
	ck_assert_int_eq(ca_ocsp_issue_signer(other_ca, k, 86400, &x), 0);
	ck_assert_int_eq(ca_ocsp_set_signer(r, x, k), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_ocsp_set_signer(r, signer_cert, k), KMS_ERR_INVALID);
	X509_free(x);
	EVP_PKEY_free(k);
	ca_ocsp_free(r);
}
END_TEST

/* -------------------------------------------------------------------- AIA */

START_TEST(test_issued_certificates_carry_aia_ocsp_then_ca_issuers)
{
	struct ca_issue_req req = { .usage = CA_USAGE_SIGN, .email = "erin@example.org", .days = 30,
		.ocsp_url = "http://pki.example.org/ocsp", .issuer_url = "http://pki.example.org/ca/test-ca.crt" };
	AUTHORITY_INFO_ACCESS *aia;
	EVP_PKEY *k = NULL;
	X509 *x = NULL;
	int crit = -1, type;

	ck_assert_int_eq(ca_keygen("ec:p256", &k), 0);
	req.pubkey = k;
	ck_assert_int_eq(ca_issue(ca, &req, &x), 0);
	aia = X509_get_ext_d2i(x, NID_info_access, &crit, NULL);
	ck_assert_ptr_nonnull(aia);
	ck_assert_int_eq(crit, 0);
	ck_assert_int_eq(sk_ACCESS_DESCRIPTION_num(aia), 2);
	ck_assert_int_eq(OBJ_obj2nid(sk_ACCESS_DESCRIPTION_value(aia, 0)->method), NID_ad_OCSP);
	ck_assert_str_eq((const char *)ASN1_STRING_get0_data(GENERAL_NAME_get0_value(
	    sk_ACCESS_DESCRIPTION_value(aia, 0)->location, &type)), "http://pki.example.org/ocsp");
	ck_assert_int_eq(type, GEN_URI);
	ck_assert_int_eq(OBJ_obj2nid(sk_ACCESS_DESCRIPTION_value(aia, 1)->method), NID_ad_ca_issuers);
	ck_assert_str_eq((const char *)ASN1_STRING_get0_data(GENERAL_NAME_get0_value(
	    sk_ACCESS_DESCRIPTION_value(aia, 1)->location, &type)), "http://pki.example.org/ca/test-ca.crt");
	AUTHORITY_INFO_ACCESS_free(aia);
	X509_free(x);
	x = NULL;
	/* No URLs: no AIA at all. */
	req.ocsp_url = req.issuer_url = NULL;
	ck_assert_int_eq(ca_issue(ca, &req, &x), 0);
	ck_assert_int_lt(X509_get_ext_by_NID(x, NID_info_access, -1), 0);
	X509_free(x);
	x = NULL;
	/* A URL that is not plain printable http(s) is refused, not written. */
	req.ocsp_url = "http://pki.example.org/oc sp";
	ck_assert_int_eq(ca_issue(ca, &req, &x), KMS_ERR_INVALID);
	ck_assert_ptr_null(x);
	req.ocsp_url = "ldap://pki.example.org/";
	ck_assert_int_eq(ca_issue(ca, &req, &x), KMS_ERR_INVALID);
	EVP_PKEY_free(k);
}
END_TEST

/* ------------------------------------------------------------ issued set */

START_TEST(test_serial_set_holds_exactly_what_was_added)
{
	struct ca_serialset *set = NULL;
	ASN1_INTEGER *a = ASN1_INTEGER_new();
	unsigned char b[16];

	ck_assert_int_eq(ca_serialset_new(&set), 0);
	for (unsigned i = 0; i < 100000; i++) {
		memset(b, 0x5a, sizeof(b));
		memcpy(b, &i, sizeof(i));
		ck_assert_int_eq(ASN1_STRING_set(a, b, sizeof(b)), 1);
		ck_assert_int_eq(ca_serialset_add(set, a), 0);
	}
	ck_assert_uint_eq(ca_serialset_count(set), 100000);
	for (unsigned i = 0; i < 100000; i++) {
		memset(b, 0x5a, sizeof(b));
		memcpy(b, &i, sizeof(i));
		ASN1_STRING_set(a, b, sizeof(b));
		ck_assert_int_eq(ca_serialset_has(set, a), 1);
		b[15] = 0xa5;
		ASN1_STRING_set(a, b, sizeof(b));
		ck_assert_int_eq(ca_serialset_has(set, a), 0);
	}
	/* Leading zero octets do not make another serial; a negative one is never ours. */
	ck_assert_int_eq(ASN1_INTEGER_set(a, 77), 1);
	ck_assert_int_eq(ca_serialset_add(set, a), 0);
	ck_assert_int_eq(ASN1_STRING_set(a, "\0\0\x4d", 3), 1);
	ck_assert_int_eq(ca_serialset_has(set, a), 1);
	ck_assert_int_eq(ASN1_INTEGER_set(a, -77), 1);
	ck_assert_int_eq(ca_serialset_has(set, a), 0);
	ck_assert_int_eq(ca_serialset_add(set, a), KMS_ERR_INVALID);
	ASN1_INTEGER_free(a);
	ca_serialset_free(set);
}
END_TEST

/* --------------------------------------------------------------- answers */

START_TEST(test_good_revoked_unknown_from_the_index)
{
	struct ca_ocsp *r = responder(1, 10);
	struct ca_revidx *idx = index_now();
	X509 *never = issue_user(ca, "carol@example.org");     /* signed by us, never recorded */
	X509 *certs[3] = { user1, user2, never };
	struct ca_ocsp_blob *b;
	OCSP_BASICRESP *bs;
	unsigned char *der;
	size_t len;
	time_t when = time(NULL) - 5, rt = 0;
	int reason = -1;

	der = request(certs, ca->cert, EVP_sha1(), 3, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, user1, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	ck_assert_int_eq(status_of(bs, user2, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	ck_assert_int_eq(status_of(bs, never, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_UNKNOWN);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);

	revoke(user2, when, 1, &idx);
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, user1, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	ck_assert_int_eq(status_of(bs, user2, ca->cert, EVP_sha1(), &reason, &rt), V_OCSP_CERTSTATUS_REVOKED);
	ck_assert_int_eq(reason, 1);     /* keyCompromise */
	ck_assert_int_eq(rt, when);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);

	/* A serial issued after start-up is known once noted. */
	ck_assert_int_eq(ca_ocsp_add_issued(r, X509_get0_serialNumber(never)), 0);
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, never, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	X509_free(never);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_sha256_certid_and_signer_not_ca_key)
{
	struct ca_ocsp *r = responder(1, 10);
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *b;
	OCSP_BASICRESP *bs;
	X509 *signer = NULL;
	unsigned char *der;
	size_t len;

	der = request(&user1, ca->cert, EVP_sha256(), 1, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, user1, ca->cert, EVP_sha256(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	/* Signed by the delegated signer, found by key hash in the response's certificates. */
	ck_assert_int_eq(OCSP_resp_get0_signer(bs, &signer, NULL), 1);
	ck_assert_int_eq(X509_cmp(signer, signer_cert), 0);
	ck_assert_int_ne(EVP_PKEY_eq(X509_get0_pubkey(signer), X509_get0_pubkey(ca->cert)), 1);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_nonce_is_echoed_and_not_cached)
{
	struct ca_ocsp *r = responder(1, 10);
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *b;
	OCSP_REQUEST *req = NULL;
	OCSP_BASICRESP *bs;
	unsigned char *der;
	size_t len;

	der = request(&user1, ca->cert, EVP_sha1(), 1, 1, &len, &req);
	b = ask(r, idx, der, len, time(NULL));
	ck_assert_int_eq(b->http_cacheable, 0);
	bs = verified(b);
	ck_assert_int_eq(OCSP_check_nonce(req, bs), 1);
	ck_assert_uint_eq(ca_ocsp_cached(r), 0);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);
	OCSP_REQUEST_free(req);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_presigned_answer_is_reused_until_half_life_and_replaced_on_revocation)
{
	struct ca_ocsp *r = responder(1, 10);
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *a, *b, *c, *d;
	OCSP_BASICRESP *bs;
	unsigned char *der;
	size_t len;
	time_t now = time(NULL);

	der = request(&user1, ca->cert, EVP_sha1(), 1, 0, &len, NULL);
	a = ask(r, idx, der, len, now);
	b = ask(r, idx, der, len, now + 10);
	ck_assert_ptr_eq(a, b);                 /* the same pre-signed bytes */
	ck_assert_int_eq(a->http_cacheable, 1);
	ck_assert_int_eq(a->next_update - a->produced, 3600);
	ck_assert_uint_eq(ca_ocsp_cached(r), 1);
	c = ask(r, idx, der, len, now + 1801);  /* past half-life: signed again */
	ck_assert_ptr_ne(c, a);
	ck_assert_int_eq(c->produced, now + 1801);
	/* A revocation shows at the very next request, although "good" was cached. */
	revoke(user1, now, 4, &idx);
	skew = 4000;
	d = ask(r, idx, der, len, now + 1802);
	bs = verified(d);
	ck_assert_int_eq(status_of(bs, user1, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_REVOKED);
	OCSP_BASICRESP_free(bs);
	ck_assert_str_ne(d->etag, c->etag);
	ca_ocsp_blob_unref(a);
	ca_ocsp_blob_unref(b);
	ca_ocsp_blob_unref(c);
	ca_ocsp_blob_unref(d);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_other_issuer_is_unauthorized)
{
	struct ca_ocsp *r = responder(1, 10);
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *b;
	unsigned char *der;
	size_t len;

	der = request(&stranger, other_ca->cert, EVP_sha1(), 1, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_UNAUTHORIZED);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	/* Our CA's name with another key is not our CA either. */
	der = request(&user1, other_ca->cert, EVP_sha256(), 1, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_UNAUTHORIZED);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_hostile_requests_get_malformed_and_the_next_is_answered)
{
	static const unsigned char garbage[] = { 0x30, 0x82, 0xff, 0xff, 0x02, 0x01, 0x00 };
	static const unsigned char wrong_asn1[] = { 0x30, 0x03, 0x02, 0x01, 0x05 };
	struct ca_ocsp *r = responder(1, 100);
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *b;
	X509 **many = calloc(10000, sizeof(*many));
	unsigned char *der, *big, *padded;
	size_t len, blen;
	OCSP_BASICRESP *bs;

	der = request(&user1, ca->cert, EVP_sha1(), 1, 0, &len, NULL);
	/* Truncated at every length. */
	for (size_t cut = 0; cut < len; cut++) {
		b = ask(r, idx, der, cut, time(NULL));
		ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
		ca_ocsp_blob_unref(b);
	}
	/* Trailing bytes after the request. */
	padded = malloc(len + 1);
	memcpy(padded, der, len);
	padded[len] = 0;
	b = ask(r, idx, padded, len + 1, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
	ca_ocsp_blob_unref(b);
	free(padded);
	b = ask(r, idx, garbage, sizeof(garbage), time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
	ca_ocsp_blob_unref(b);
	b = ask(r, idx, wrong_asn1, sizeof(wrong_asn1), time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
	ca_ocsp_blob_unref(b);
	/* 101 CertIDs (bound 100), then 10,000. */
	for (int i = 0; i < 10000; i++)
		many[i] = user1;
	big = request(many, ca->cert, EVP_sha1(), 101, 0, &blen, NULL);
	b = ask(r, idx, big, blen, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(big);
	big = request(many, ca->cert, EVP_sha1(), 10000, 0, &blen, NULL);
	b = ask(r, idx, big, blen, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_MALFORMEDREQUEST);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(big);
	/* 100 is within the bound. */
	big = request(many, ca->cert, EVP_sha1(), 100, 0, &blen, NULL);
	b = ask(r, idx, big, blen, time(NULL));
	ck_assert_int_eq(b->status, OCSP_RESPONSE_STATUS_SUCCESSFUL);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(big);
	/* And an honest request after all that. */
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, user1, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);
	free(many);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_no_signer_or_no_index_is_try_later)
{
	struct ca_ocsp_opts o = { .validity = 3600, .max_request = 65536, .max_certids = 10, .cache_max = 10,
		.know_issued = 1 };
	struct ca_ocsp *r = NULL;
	struct ca_revidx *idx = index_now();
	struct ca_ocsp_blob *b;
	unsigned char *der;
	size_t len;

	ck_assert_int_eq(ca_ocsp_new(ca->cert, &o, &r), 0);
	der = request(&user1, ca->cert, EVP_sha1(), 1, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_TRYLATER);
	ca_ocsp_blob_unref(b);
	ck_assert_int_eq(ca_ocsp_set_signer(r, signer_cert, signer_key), 0);
	b = ask(r, NULL, der, len, time(NULL));
	ck_assert_int_eq(error_status(b), OCSP_RESPONSE_STATUS_TRYLATER);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

START_TEST(test_replica_without_issued_set_answers_good_unless_revoked)
{
	struct ca_ocsp *r = responder(0, 10);
	struct ca_revidx *idx = index_now();
	X509 *never = issue_user(ca, "dave@example.org");
	struct ca_ocsp_blob *b;
	OCSP_BASICRESP *bs;
	unsigned char *der;
	size_t len;

	der = request(&never, ca->cert, EVP_sha1(), 1, 0, &len, NULL);
	b = ask(r, idx, der, len, time(NULL));
	bs = verified(b);
	ck_assert_int_eq(status_of(bs, never, ca->cert, EVP_sha1(), NULL, NULL), V_OCSP_CERTSTATUS_GOOD);
	OCSP_BASICRESP_free(bs);
	ca_ocsp_blob_unref(b);
	OPENSSL_free(der);
	X509_free(never);
	ca_revidx_unref(idx);
	ca_ocsp_free(r);
}
END_TEST

static Suite *
ocsp_suite(void)
{
	Suite *s = suite_create("ocsp");
	TCase *tc;

	tc = tcase_create("signer");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_signer_profile_is_a_delegated_ocsp_signer);
	tcase_add_test(tc, test_signer_is_kept_encrypted_and_renewed_only_when_due);
	tcase_add_test(tc, test_signer_not_issued_by_our_ca_is_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("aia");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_issued_certificates_carry_aia_ocsp_then_ca_issuers);
	suite_add_tcase(s, tc);

	tc = tcase_create("issued");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_serial_set_holds_exactly_what_was_added);
	suite_add_tcase(s, tc);

	tc = tcase_create("respond");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_good_revoked_unknown_from_the_index);
	tcase_add_test(tc, test_sha256_certid_and_signer_not_ca_key);
	tcase_add_test(tc, test_nonce_is_echoed_and_not_cached);
	tcase_add_test(tc, test_presigned_answer_is_reused_until_half_life_and_replaced_on_revocation);
	tcase_add_test(tc, test_other_issuer_is_unauthorized);
	tcase_add_test(tc, test_hostile_requests_get_malformed_and_the_next_is_answered);
	tcase_add_test(tc, test_no_signer_or_no_index_is_try_later);
	tcase_add_test(tc, test_replica_without_issued_set_answers_good_unless_revoked);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(ocsp_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
