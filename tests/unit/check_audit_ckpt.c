/*
 * check_audit_ckpt.c - unit suite for signed audit checkpoints
 * (ca/audit_ckpt.c, ca/audit_verify.c, ca/signer.c): the audit signer's
 * profile and storage, when checkpoints are due, and verification against
 * the attacks a bare hash chain misses (a row rewritten with the chain
 * recomputed, checkpoints deleted, edited or signed by another key, the
 * checkpoint table stripped), on a real SQLite store and a real CA.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#define PASS "correct horse battery staple"
#define EVERY 5
#define INTERVAL 600

static char *dir;
static struct kms_store *st;
static struct ca *ca, *other_ca;
static X509 *signer;
static EVP_PKEY *signer_key;
static struct ca_audit_ckpt known;
/* Row i is written at T0 + i: now, so that the signer's certificate is valid then. */
static time_t T0;

static struct kms_store *
open_store(const char *name)
{
	struct kms_store *s = NULL;
	char *path = kms_path_join(dir, name);

	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE, &s), 0);
	free(path);
	return s;
}

static void
setup(void)
{
	int renewed = 0;

	T0 = time(NULL);
	dir = tu_tmpdir();
	st = open_store("kms.db");
	ck_assert_int_eq(ca_create_root("Example Org", "test-ca", "ec:p384", 365, &ca), 0);
	ck_assert_int_eq(ca_create_root("Other Org", "other-ca", "ec:p384", 365, &other_ca), 0);
	ck_assert_int_eq(ca_audit_signer_ensure(st, ca, PASS, "ec:p256", 30 * 86400, time(NULL), &signer, &signer_key,
	    &renewed), 0);
	ck_assert_int_eq(renewed, 1);
	memset(&known, 0, sizeof(known));
}

static void
teardown(void)
{
	X509_free(signer);
	EVP_PKEY_free(signer_key);
	ca_free(ca);
	ca_free(other_ca);
	kms_store_close(st);
	tu_rmtree(dir);
	free(dir);
}

/* Row i of the trail (1-based), at T0 + i; detail as given (NULL for none). */
static void
append_row(struct kms_store *s, int i, const char *detail)
{
	char target[32];
	struct kms_audit_rec r = {
		.time = T0 + i, .uid = 0, .user = "root", .role = "admin", .cmd = "enroll", .target = target,
		.outcome = "ok", .detail = detail,
	};

	snprintf(target, sizeof(target), "user%d@example.org", i);
	ck_assert_int_eq(kms_audit_append(s, &r), 0);
}

static void
append_rows(struct kms_store *s, int from, int to)
{
	for (int i = from; i <= to; i++)
		append_row(s, i, NULL);
}

/* A checkpoint attempt at T0 + at; the number made (0 for none). */
static long long
checkpoint_at(long long at)
{
	struct ca_audit_ckpt made;

	ck_assert_int_eq(ca_audit_checkpoint(st, signer, signer_key, &known, EVERY, INTERVAL, T0 + at, &made), 0);
	return made.no;
}

static int
verify(struct kms_store *s, const struct ca_audit_ckpt *k, long long at, struct ca_audit_report *rep)
{
	return ca_audit_verify(s, ca->cert, k, EVERY, INTERVAL, T0 + at, rep);
}

static void
sql(struct kms_store *s, const char *q)
{
	ck_assert_int_eq(sqlite3_exec(kms_store_db(s), q, NULL, NULL, NULL), SQLITE_OK);
}

/* Rows 1..12 with checkpoints #1 (row 1), #2 (row 6), #3 (row 11); row 12 unsigned. */
static void
trail_with_checkpoints(void)
{
	append_row(st, 1, NULL);
	ck_assert_int_eq(checkpoint_at(1), 1);
	append_rows(st, 2, 6);
	ck_assert_int_eq(checkpoint_at(6), 2);
	append_rows(st, 7, 11);
	ck_assert_int_eq(checkpoint_at(11), 3);
	append_row(st, 12, NULL);
}

START_TEST(test_signer_is_issued_by_our_ca_with_its_own_profile)
{
	const X509_NAME *n = X509_get_subject_name(signer);
	char cn[128] = "";
	char *pem = NULL;

	X509_NAME_get_text_by_NID((X509_NAME *)n, NID_commonName, cn, sizeof(cn));
	ck_assert_str_eq(cn, "Example Org Audit Signer");
	ck_assert_int_eq(ca_audit_signer_check(signer, ca->cert, time(NULL)), 0);
	ck_assert_int_eq(X509_get_key_usage(signer), KU_DIGITAL_SIGNATURE);
	ck_assert_int_lt(X509_get_ext_by_NID(signer, NID_ext_key_usage, -1), 0);
	ck_assert_int_lt(X509_get_ext_by_NID(signer, NID_subject_alt_name, -1), 0);
	ck_assert_int_eq(X509_check_ca(signer), 0);
	/* Its key at rest: encrypted PKCS#8 like the CA key, opened only by the CA passphrase. */
	ck_assert_int_eq(kms_store_meta_get(st, "audit_signer_key", &pem), 0);
	ck_assert_ptr_nonnull(strstr(pem, "-----BEGIN ENCRYPTED PRIVATE KEY-----"));
	free(pem);
	{
		X509 *x = NULL;
		EVP_PKEY *k = NULL;
		int renewed = 1;

		ck_assert_int_eq(ca_audit_signer_ensure(st, ca, "wrong passphrase", "ec:p256", 30 * 86400, time(NULL), &x,
		    &k, &renewed), KMS_ERR_PERM);
		ck_assert_int_eq(ca_audit_signer_ensure(st, ca, PASS, "ec:p256", 30 * 86400, time(NULL), &x, &k, &renewed), 0);
		ck_assert_int_eq(renewed, 0);
		ck_assert_int_eq(X509_cmp(x, signer), 0);
		/* Renewed at half of its life. */
		ck_assert_int_eq(ca_audit_signer_due(x, 30 * 86400, time(NULL)), 0);
		ck_assert_int_eq(ca_audit_signer_due(x, 30 * 86400, time(NULL) + 16 * 86400), 1);
		X509_free(x);
		EVP_PKEY_free(k);
	}
}
END_TEST

START_TEST(test_other_certificates_are_not_audit_signers)
{
	struct ca_issue_req req = { .usage = CA_USAGE_SIGN, .email = "alice@example.org", .days = 30 };
	X509 *user = NULL, *ocsp = NULL, *foreign = NULL;
	EVP_PKEY *k = NULL;

	ck_assert_int_eq(ca_keygen("ec:p256", &k), 0);
	req.pubkey = k;
	ck_assert_int_eq(ca_issue(ca, &req, &user), 0);
	ck_assert_int_eq(ca_audit_signer_check(user, ca->cert, time(NULL)), KMS_ERR_INVALID);
	ck_assert_str_eq(kms_last_error(), "the signer certificate is not an audit signer's");
	ck_assert_int_eq(ca_ocsp_issue_signer(ca, k, 86400, &ocsp), 0);
	ck_assert_int_eq(ca_audit_signer_check(ocsp, ca->cert, time(NULL)), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_audit_issue_signer(other_ca, k, 86400, &foreign), 0);
	ck_assert_int_eq(ca_audit_signer_check(foreign, ca->cert, time(NULL)), KMS_ERR_INVALID);
	ck_assert_str_eq(kms_last_error(), "the signer certificate was not issued by our CA");
	ck_assert_int_eq(ca_audit_signer_check(signer, ca->cert, time(NULL) + 31 * 86400), KMS_ERR_INVALID);
	X509_free(user);
	X509_free(ocsp);
	X509_free(foreign);
	EVP_PKEY_free(k);
}
END_TEST

START_TEST(test_checkpoints_come_every_n_rows_and_after_the_interval)
{
	ck_assert_int_eq(checkpoint_at(0), 0);                 /* nothing to sign */
	append_row(st, 1, NULL);
	ck_assert_int_eq(checkpoint_at(1), 1);                 /* the first at once */
	append_rows(st, 2, 5);
	ck_assert_int_eq(checkpoint_at(5), 0);                 /* 4 rows, not due */
	append_row(st, 6, NULL);
	ck_assert_int_eq(checkpoint_at(6), 2);                 /* 5 rows */
	ck_assert_int_eq(known.seq, 6);
	append_row(st, 7, NULL);
	ck_assert_int_eq(checkpoint_at(7 + INTERVAL - 2), 0);
	ck_assert_int_eq(checkpoint_at(6 + INTERVAL), 3);      /* the interval */
	ck_assert_int_eq(checkpoint_at(6 + 5 * INTERVAL), 0);  /* no new rows: nothing */
}
END_TEST

START_TEST(test_signature_covers_every_field)
{
	struct ca_audit_ckpt ck = { .no = 4, .seq = 17, .time = T0 };
	unsigned char *sig = NULL;
	size_t len = 0;

	memset(ck.head, 'a', 64);
	ck_assert_int_eq(ca_audit_ckpt_sign(&ck, signer_key, &sig, &len), 0);
	ck_assert_int_eq(ca_audit_ckpt_check_sig(&ck, X509_get0_pubkey(signer), sig, len), 1);
	ck.no++;
	ck_assert_int_eq(ca_audit_ckpt_check_sig(&ck, X509_get0_pubkey(signer), sig, len), 0);
	ck.no--;
	ck.seq++;
	ck_assert_int_eq(ca_audit_ckpt_check_sig(&ck, X509_get0_pubkey(signer), sig, len), 0);
	ck.seq--;
	ck.head[10] = 'b';
	ck_assert_int_eq(ca_audit_ckpt_check_sig(&ck, X509_get0_pubkey(signer), sig, len), 0);
	ck.head[10] = 'a';
	ck.time++;
	ck_assert_int_eq(ca_audit_ckpt_check_sig(&ck, X509_get0_pubkey(signer), sig, len), 0);
	OPENSSL_free(sig);
}
END_TEST

START_TEST(test_verify_reports_the_last_signed_row)
{
	struct ca_audit_report rep;

	trail_with_checkpoints();
	ck_assert_int_eq(verify(st, &known, 12, &rep), 0);
	ck_assert_int_eq(rep.rows, 12);
	ck_assert_int_eq(rep.checkpoints, 3);
	ck_assert_int_eq(rep.last.no, 3);
	ck_assert_int_eq(rep.last.seq, 11);
	ck_assert_int_eq(rep.last.time, T0 + 11);
	ck_assert_int_eq(rep.unsigned_rows, 1);
}
END_TEST

START_TEST(test_rewritten_row_with_recomputed_chain_fails)
{
	struct kms_store *forged = open_store("forged.db");
	struct ca_audit_report rep;
	long long bad = 0, rows = 0;
	char q[512];

	trail_with_checkpoints();
	/* The same trail with row 4's detail changed, its chain and head computed by kms_audit_append itself. */
	append_rows(forged, 1, 3);
	append_row(forged, 4, "nothing to see here");
	append_rows(forged, 5, 12);
	snprintf(q, sizeof(q), "ATTACH '%s/kms.db' AS orig; INSERT INTO audit_checkpoints SELECT * FROM "
	    "orig.audit_checkpoints; DETACH orig;", dir);
	sql(forged, q);
	ck_assert_int_eq(kms_audit_verify(forged, &bad, &rows), 0);      /* the chain alone sees nothing */
	ck_assert_int_eq(verify(forged, NULL, 12, &rep), KMS_ERR_CORRUPT);
	ck_assert_int_eq(rep.bad_checkpoint, 2);
	ck_assert_int_eq(rep.bad_seq, 2);
	ck_assert_str_eq(kms_last_error(), "audit rows 2 to 6 were rewritten: the chain hash of row 6 is not the one "
	    "signed checkpoint #2 holds");
	kms_store_close(forged);
}
END_TEST

START_TEST(test_deleted_checkpoint_fails)
{
	struct ca_audit_report rep;

	trail_with_checkpoints();
	sql(st, "DELETE FROM audit_checkpoints WHERE no = 2");
	ck_assert_int_eq(verify(st, NULL, 12, &rep), KMS_ERR_CORRUPT);
	ck_assert_int_eq(rep.bad_checkpoint, 2);
	ck_assert_str_eq(kms_last_error(), "audit checkpoint #2 is missing (deleted): #3 follows #1");
}
END_TEST

START_TEST(test_newest_checkpoint_deleted_is_found_by_its_signer)
{
	struct ca_audit_report rep;
	struct ca_audit_ckpt made;

	trail_with_checkpoints();
	sql(st, "DELETE FROM audit_checkpoints WHERE no = 3");
	ck_assert_int_eq(verify(st, NULL, 12, &rep), 0);      /* the store alone cannot tell */
	ck_assert_int_eq(verify(st, &known, 12, &rep), KMS_ERR_CORRUPT);
	ck_assert_int_eq(rep.bad_checkpoint, 3);
	/* ... and the signer refuses to sign on top of what is left. */
	append_rows(st, 13, 20);
	ck_assert_int_eq(ca_audit_checkpoint(st, signer, signer_key, &known, EVERY, INTERVAL, T0 + 20, &made),
	    KMS_ERR_CORRUPT);
	ck_assert_int_eq(made.no, 0);
}
END_TEST

START_TEST(test_signer_refuses_a_chain_rewritten_under_its_checkpoint)
{
	struct ca_audit_ckpt made;

	trail_with_checkpoints();
	sql(st, "UPDATE audit SET hash = '00' || substr(hash, 3) WHERE seq = 11");
	append_rows(st, 13, 20);
	ck_assert_int_eq(ca_audit_checkpoint(st, signer, signer_key, &known, EVERY, INTERVAL, T0 + 20, &made),
	    KMS_ERR_CORRUPT);
	ck_assert_str_eq(kms_last_error(), "audit row 11 no longer has the hash checkpoint #3 signed: rows up to it "
	    "were rewritten");
}
END_TEST

START_TEST(test_edited_checkpoint_fails)
{
	struct ca_audit_report rep;

	trail_with_checkpoints();
	sql(st, "UPDATE audit_checkpoints SET time = time + 1 WHERE no = 2");
	ck_assert_int_eq(verify(st, NULL, 12, &rep), KMS_ERR_CORRUPT);
	ck_assert_int_eq(rep.bad_checkpoint, 2);
	ck_assert_str_eq(kms_last_error(), "audit checkpoint #2: the signature does not verify (the checkpoint was edited)");
}
END_TEST

START_TEST(test_checkpoint_signed_by_a_user_key_fails)
{
	struct ca_issue_req req = { .usage = CA_USAGE_SIGN, .email = "mallory@example.org", .days = 30 };
	struct ca_audit_ckpt ck = { .no = 1, .seq = 3, .time = T0 + 3 };
	struct ca_audit_report rep;
	sqlite3_stmt *s = NULL;
	unsigned char *sig = NULL, *der = NULL;
	size_t siglen = 0;
	X509 *user = NULL;
	EVP_PKEY *k = NULL;
	int n;

	append_rows(st, 1, 3);
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "SELECT hash FROM audit WHERE seq = 3", -1, &s, NULL),
	    SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	snprintf(ck.head, sizeof(ck.head), "%s", (const char *)sqlite3_column_text(s, 0));
	sqlite3_finalize(s);
	s = NULL;
	ck_assert_int_eq(ca_keygen("ec:p256", &k), 0);
	req.pubkey = k;
	ck_assert_int_eq(ca_issue(ca, &req, &user), 0);
	ck_assert_int_eq(ca_audit_ckpt_sign(&ck, k, &sig, &siglen), 0);
	n = i2d_X509(user, &der);
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "INSERT INTO audit_checkpoints VALUES (1, 3, ?, ?, ?, ?)",
	    -1, &s, NULL), SQLITE_OK);
	sqlite3_bind_text(s, 1, ck.head, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (long long)ck.time);
	sqlite3_bind_blob(s, 3, der, n, SQLITE_STATIC);
	sqlite3_bind_blob(s, 4, sig, (int)siglen, SQLITE_STATIC);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
	ck_assert_int_eq(verify(st, NULL, 3, &rep), KMS_ERR_CORRUPT);
	ck_assert_str_eq(kms_last_error(), "audit checkpoint #1: the signer certificate is not an audit signer's");
	OPENSSL_free(sig);
	OPENSSL_free(der);
	X509_free(user);
	EVP_PKEY_free(k);
}
END_TEST

START_TEST(test_stripped_checkpoint_table_fails_once_rows_are_overdue)
{
	struct ca_audit_report rep;

	trail_with_checkpoints();
	append_rows(st, 13, 30);
	sql(st, "DELETE FROM audit_checkpoints");
	/* Recent rows may wait for their checkpoint; more than 2 * EVERY older than 2 * INTERVAL may not. */
	ck_assert_int_eq(verify(st, NULL, 30, &rep), 0);
	ck_assert_int_eq(rep.unsigned_rows, 30);
	ck_assert_int_eq(verify(st, NULL, 1 + 2 * INTERVAL + 1, &rep), KMS_ERR_CORRUPT);
	ck_assert_int_eq(rep.bad_seq, 1);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "30 audit rows follow the last signed checkpoint (#0, row 0)"));
	/* Rows written before checkpoints existed (a store from an older version) are not overdue. */
	sql(st, "UPDATE meta SET value = '30' WHERE key = 'audit_ckpt_start'");
	ck_assert_int_eq(verify(st, NULL, 1 + 2 * INTERVAL + 1, &rep), 0);
}
END_TEST

START_TEST(test_without_a_ca_only_the_chain_is_verified)
{
	struct ca_audit_report rep;

	append_rows(st, 1, 30);
	ck_assert_int_eq(ca_audit_verify(st, NULL, NULL, EVERY, INTERVAL, T0 + 10 * INTERVAL, &rep), 0);
	ck_assert_int_eq(rep.rows, 30);
	ck_assert_int_eq(rep.checkpoints, 0);
	ck_assert_int_eq(rep.unsigned_rows, 30);
}
END_TEST

START_TEST(test_rows_from_before_checkpoints_are_signed_by_the_first)
{
	struct ca_audit_report rep;
	char *path = kms_path_join(dir, "old.db"), *v = NULL;

	/* A store of schema 8 (no checkpoints) with three rows, opened by this version. */
	kms_store_close(st);
	ck_assert_int_eq(kms_store_open_version(path, KMS_STORE_CREATE, 8, &st), 0);
	append_rows(st, 1, 3);
	kms_store_close(st);
	ck_assert_int_eq(kms_store_open(path, 0, &st), 0);
	free(path);
	ck_assert_int_eq(kms_store_meta_get(st, "audit_ckpt_start", &v), 0);
	ck_assert_str_eq(v, "3");
	free(v);
	ck_assert_int_eq(verify(st, NULL, 100 * INTERVAL, &rep), 0);
	ck_assert_int_eq(rep.unsigned_rows, 3);
	ck_assert_int_eq(checkpoint_at(100 * INTERVAL), 1);
	ck_assert_int_eq(known.seq, 3);
	ck_assert_int_eq(verify(st, &known, 100 * INTERVAL, &rep), 0);
	ck_assert_int_eq(rep.unsigned_rows, 0);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("audit_ckpt");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_signer_is_issued_by_our_ca_with_its_own_profile);
	tcase_add_test(tc, test_other_certificates_are_not_audit_signers);
	tcase_add_test(tc, test_checkpoints_come_every_n_rows_and_after_the_interval);
	tcase_add_test(tc, test_signature_covers_every_field);
	tcase_add_test(tc, test_verify_reports_the_last_signed_row);
	tcase_add_test(tc, test_rewritten_row_with_recomputed_chain_fails);
	tcase_add_test(tc, test_deleted_checkpoint_fails);
	tcase_add_test(tc, test_newest_checkpoint_deleted_is_found_by_its_signer);
	tcase_add_test(tc, test_signer_refuses_a_chain_rewritten_under_its_checkpoint);
	tcase_add_test(tc, test_edited_checkpoint_fails);
	tcase_add_test(tc, test_checkpoint_signed_by_a_user_key_fails);
	tcase_add_test(tc, test_stripped_checkpoint_table_fails_once_rows_are_overdue);
	tcase_add_test(tc, test_without_a_ca_only_the_chain_is_verified);
	tcase_add_test(tc, test_rows_from_before_checkpoints_are_signed_by_the_first);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
