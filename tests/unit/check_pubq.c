/*
 * check_pubq.c - unit suite for the publication queue (ca/pubq.c and the
 * triggers of store migration 8) on a real SQLite file: nothing is queued
 * while publishing is off; issuing, revoking and a new full CRL queue
 * their entry in the same transaction (a rollback leaves nothing); a newer
 * change replaces the older row with a higher seq, so done() of a
 * delivered seq never drops a change made meanwhile; defer() hides a row
 * until its time and counts the failure; resync and the expiry sweep
 * queue what they should, once.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

static struct ca *ca;           /* made once in main() */
static EVP_PKEY *ukey;
static char *dir;
static struct kms_store *st;

static void
setup(void)
{
	char *path;

	dir = tu_tmpdir();
	path = kms_path_join(dir, "kms.db");
	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE, &st), 0);
	free(path);
}

static void
teardown(void)
{
	kms_store_close(st);
	tu_rmtree(dir);
	free(dir);
}

/* Deliver (forget) every due row. */
static void
drain(void)
{
	struct ca_pubq_item *items = NULL;
	size_t n = 0;

	ck_assert_int_eq(ca_pubq_next(st, time(NULL) + 86400, 1000, &items, &n), 0);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(ca_pubq_done(st, &items[i].seq, 1), 0);
	ca_pubq_items_free(items, n);
}

/* Publishing on, and the rows that turning it on queued (the CA entry) delivered. */
static void
enable(void)
{
	int newly = -1;

	ck_assert_int_eq(ca_pubq_set_enabled(st, 1, &newly), 0);
	ck_assert_int_eq(newly, 1);
	drain();
}

/* Issue and store one certificate for email; returns its serial (malloc'd). */
static char *
add_cert(const char *email, enum ca_usage usage)
{
	struct ca_issue_req r = { .usage = usage, .pubkey = ukey, .email = email, .name = email, .days = 30 };
	X509 *x = NULL;
	char *serial;

	ck_assert_int_eq(ca_issue(ca, &r, &x), 0);
	ck_assert_int_eq(ca_store_add_cert(st, x, email, email, usage, "enroll", "test"), 0);
	serial = ca_serial_hex(X509_get0_serialNumber(x));
	X509_free(x);
	return serial;
}

static long long
count_rows(void)
{
	struct ca_pubq_stats s;

	ck_assert_int_eq(ca_pubq_stats(st, &s), 0);
	return s.length;
}

/* The due rows, with their kinds and keys checked against want ("user:a@x", "ca:"). */
static struct ca_pubq_item *
next_all(size_t *n)
{
	struct ca_pubq_item *items = NULL;

	ck_assert_int_eq(ca_pubq_next(st, time(NULL), 100, &items, n), 0);
	return items;
}

START_TEST(test_nothing_is_queued_while_publishing_is_off)
{
	free(add_cert("alice@example.org", CA_USAGE_SIGN));
	ck_assert_int_eq(count_rows(), 0);
}
END_TEST

START_TEST(test_issuing_queues_the_user_in_the_same_transaction)
{
	struct ca_pubq_item *items;
	size_t n;

	enable();
	ck_assert_int_eq(kms_store_begin(st), 0);
	free(add_cert("alice@example.org", CA_USAGE_SIGN));
	kms_store_rollback(st);
	ck_assert_int_eq(count_rows(), 0);

	ck_assert_int_eq(kms_store_begin(st), 0);
	free(add_cert("alice@example.org", CA_USAGE_SIGN));
	free(add_cert("alice@example.org", CA_USAGE_ENC));
	ck_assert_int_eq(kms_store_commit(st), 0);
	items = next_all(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(items[0].kind, CA_PUBQ_USER);
	ck_assert_str_eq(items[0].key, "alice@example.org");
	ca_pubq_items_free(items, n);
}
END_TEST

START_TEST(test_a_newer_change_replaces_the_row_with_a_higher_seq)
{
	struct ca_pubq_item *a, *b;
	size_t na, nb;
	long long seq;

	enable();
	free(add_cert("alice@example.org", CA_USAGE_SIGN));
	free(add_cert("bob@example.org", CA_USAGE_SIGN));
	a = next_all(&na);
	ck_assert_uint_eq(na, 2);
	ck_assert_str_eq(a[0].key, "alice@example.org");
	seq = a[0].seq;
	/* A change to alice while her first row is being delivered. */
	free(add_cert("ALICE@example.org", CA_USAGE_ENC));
	ck_assert_int_eq(count_rows(), 2);
	ck_assert_int_eq(ca_pubq_done(st, &seq, 1), 0);
	b = next_all(&nb);
	/* Delivering the old row did not drop the new change; order is now bob, alice. */
	ck_assert_uint_eq(nb, 2);
	ck_assert_str_eq(b[0].key, "bob@example.org");
	ck_assert_int_eq(strcasecmp(b[1].key, "alice@example.org"), 0);
	ck_assert_int_gt(b[1].seq, seq);
	ca_pubq_items_free(a, na);
	ca_pubq_items_free(b, nb);
}
END_TEST

START_TEST(test_revocation_queues_the_user)
{
	struct ca_pubq_item *items;
	size_t n;
	int already = 0;
	char *serial = add_cert("carol@example.org", CA_USAGE_ENC);
	int newly = 0;

	ck_assert_int_eq(ca_pubq_set_enabled(st, 1, &newly), 0);
	ck_assert_int_eq(count_rows(), 2);      /* enabling queued the CA and her */
	drain();
	ck_assert_int_eq(count_rows(), 0);

	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(ca_store_revoke(st, serial, time(NULL), 1, 0, &already), 0);
	kms_store_rollback(st);
	ck_assert_int_eq(count_rows(), 0);
	ck_assert_int_eq(ca_store_revoke(st, serial, time(NULL), 1, 0, &already), 0);
	items = next_all(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(items[0].key, "carol@example.org");
	ca_pubq_items_free(items, n);
	free(serial);
}
END_TEST

START_TEST(test_a_new_crl_queues_the_ca_entry)
{
	struct ca_crl_opts o = { .next_update_hours = 24, .delta = 1 };
	struct ca_crl_set *set = NULL;
	struct ca_pubq_item *items;
	size_t n;

	enable();
	ck_assert_int_eq(ca_crl_issue(st, ca, &o, &set), 0);
	ca_crl_set_free(set);
	ck_assert_int_eq(ca_crl_issue(st, ca, &o, &set), 0);
	ca_crl_set_free(set);
	items = next_all(&n);
	ck_assert_uint_eq(n, 1);        /* full and delta, twice: one row */
	ck_assert_str_eq(items[0].kind, CA_PUBQ_CA);
	ck_assert_str_eq(items[0].key, "");
	ca_pubq_items_free(items, n);
}
END_TEST

START_TEST(test_defer_hides_a_row_until_its_time_and_counts_it)
{
	struct ca_pubq_item *items;
	struct ca_pubq_stats s;
	size_t n;
	time_t now = time(NULL);

	enable();
	free(add_cert("alice@example.org", CA_USAGE_SIGN));
	free(add_cert("bob@example.org", CA_USAGE_SIGN));
	items = next_all(&n);
	ck_assert_int_eq(ca_pubq_defer(st, items[0].seq, now + 60, "Insufficient access (50)"), 0);
	ca_pubq_items_free(items, n);
	items = next_all(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(items[0].key, "bob@example.org");
	ca_pubq_items_free(items, n);
	ck_assert_int_eq(ca_pubq_next(st, now + 61, 10, &items, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(items[0].key, "alice@example.org");
	ck_assert_int_eq(items[0].attempts, 1);
	ck_assert_str_eq(items[0].last_error, "Insufficient access (50)");
	ca_pubq_items_free(items, n);
	ck_assert_int_eq(ca_pubq_stats(st, &s), 0);
	ck_assert_int_eq(s.length, 2);
	ck_assert_int_eq(s.retrying, 1);
	ck_assert_int_eq(s.enabled, 1);
}
END_TEST

START_TEST(test_next_honours_its_bound)
{
	struct ca_pubq_item *items;
	size_t n;

	enable();
	free(add_cert("a@example.org", CA_USAGE_SIGN));
	free(add_cert("b@example.org", CA_USAGE_SIGN));
	free(add_cert("c@example.org", CA_USAGE_SIGN));
	ck_assert_int_eq(ca_pubq_next(st, time(NULL), 2, &items, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(items[0].key, "a@example.org");
	ck_assert_str_eq(items[1].key, "b@example.org");
	ca_pubq_items_free(items, n);
}
END_TEST

START_TEST(test_enabling_queues_everything_and_disabling_empties)
{
	int newly = 0;

	free(add_cert("a@example.org", CA_USAGE_SIGN));
	free(add_cert("b@example.org", CA_USAGE_ENC));
	ck_assert_int_eq(ca_pubq_set_enabled(st, 1, &newly), 0);
	ck_assert_int_eq(newly, 1);
	ck_assert_int_eq(count_rows(), 3);      /* the CA and both users */
	ck_assert_int_eq(ca_pubq_set_enabled(st, 1, &newly), 0);
	ck_assert_int_eq(newly, 0);
	ck_assert_int_eq(count_rows(), 3);
	ck_assert_int_eq(ca_pubq_set_enabled(st, 0, &newly), 0);
	ck_assert_int_eq(count_rows(), 0);
	free(add_cert("c@example.org", CA_USAGE_SIGN));
	ck_assert_int_eq(count_rows(), 0);
}
END_TEST

START_TEST(test_resync_queues_the_ca_and_every_address_once)
{
	enable();
	free(add_cert("a@example.org", CA_USAGE_SIGN));
	free(add_cert("a@example.org", CA_USAGE_ENC));
	free(add_cert("b@example.org", CA_USAGE_ENC));
	ck_assert_int_eq(ca_pubq_resync(st), 0);
	ck_assert_int_eq(count_rows(), 3);
	ck_assert_int_eq(ca_pubq_resync(st), 0);
	ck_assert_int_eq(count_rows(), 3);
}
END_TEST

START_TEST(test_the_expiry_sweep_queues_expired_certificates_once)
{
	struct ca_pubq_item *items;
	size_t n;
	long long q = -1, seq;
	time_t now = time(NULL);
	char *serial;
	sqlite3_stmt *s;

	enable();
	serial = add_cert("old@example.org", CA_USAGE_ENC);
	free(add_cert("new@example.org", CA_USAGE_ENC));
	drain();
	/* The first sweep starts from the epoch: nothing has expired yet. */
	ck_assert_int_eq(ca_pubq_sweep_expired(st, now, &q), 0);
	ck_assert_int_eq(q, 0);
	/* old's certificate runs out. */
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "UPDATE certs SET not_after = ? WHERE serial = ?", -1,
	    &s, NULL), SQLITE_OK);
	sqlite3_bind_int64(s, 1, now + 5);
	sqlite3_bind_text(s, 2, serial, -1, SQLITE_STATIC);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
	ck_assert_int_eq(ca_pubq_sweep_expired(st, now + 10, &q), 0);
	ck_assert_int_eq(q, 1);
	items = next_all(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(items[0].key, "old@example.org");
	seq = items[0].seq;
	ca_pubq_items_free(items, n);
	ck_assert_int_eq(ca_pubq_done(st, &seq, 1), 0);
	ck_assert_int_eq(ca_pubq_sweep_expired(st, now + 20, &q), 0);
	ck_assert_int_eq(q, 0);
	free(serial);
}
END_TEST

START_TEST(test_bad_entries_are_refused)
{
	enable();
	ck_assert_int_eq(ca_pubq_add(st, "user", ""), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_pubq_add(st, "ca", "x"), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_pubq_add(st, "group", "x"), KMS_ERR_INVALID);
	ck_assert_int_eq(ca_pubq_add(st, CA_PUBQ_USER, "a@example.org"), 0);
	ck_assert_int_eq(count_rows(), 1);
}
END_TEST

/* [crl] ldap_url: the distribution point names the CRL twice, http first. */
START_TEST(test_the_ldap_url_is_a_second_name_of_the_distribution_point)
{
	static const char *const http = "http://127.0.0.1:8480/crl/kms-ca.crl";
	static const char *const ldap = "ldap://127.0.0.1:389/cn=kms-ca,dc=example,dc=org?certificateRevocationList;binary";
	struct ca_issue_req r = { .usage = CA_USAGE_ENC, .pubkey = ukey, .email = "a@example.org", .days = 30,
		.crl_url = http, .crl_ldap_url = ldap };
	CRL_DIST_POINTS *cdp;
	GENERAL_NAMES *names;
	X509 *x = NULL;
	int type;
	ASN1_IA5STRING *u;

	ck_assert_int_eq(ca_issue(ca, &r, &x), 0);
	cdp = X509_get_ext_d2i(x, NID_crl_distribution_points, NULL, NULL);
	ck_assert_ptr_nonnull(cdp);
	ck_assert_int_eq(sk_DIST_POINT_num(cdp), 1);
	names = sk_DIST_POINT_value(cdp, 0)->distpoint->name.fullname;
	ck_assert_int_eq(sk_GENERAL_NAME_num(names), 2);
	u = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(names, 0), &type);
	ck_assert_int_eq(type, GEN_URI);
	ck_assert_str_eq((const char *)ASN1_STRING_get0_data(u), http);
	u = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(names, 1), &type);
	ck_assert_int_eq(type, GEN_URI);
	ck_assert_str_eq((const char *)ASN1_STRING_get0_data(u), ldap);
	CRL_DIST_POINTS_free(cdp);
	X509_free(x);
	/* Only ldap:// is accepted as the second name. */
	r.crl_ldap_url = "http://example.org/x.crl";
	x = NULL;
	ck_assert_int_eq(ca_issue(ca, &r, &x), KMS_ERR_INVALID);
	ck_assert_ptr_null(x);
}
END_TEST

static Suite *
pubq_suite(void)
{
	Suite *s = suite_create("pubq");
	TCase *tc = tcase_create("queue");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_nothing_is_queued_while_publishing_is_off);
	tcase_add_test(tc, test_issuing_queues_the_user_in_the_same_transaction);
	tcase_add_test(tc, test_a_newer_change_replaces_the_row_with_a_higher_seq);
	tcase_add_test(tc, test_revocation_queues_the_user);
	tcase_add_test(tc, test_a_new_crl_queues_the_ca_entry);
	tcase_add_test(tc, test_defer_hides_a_row_until_its_time_and_counts_it);
	tcase_add_test(tc, test_next_honours_its_bound);
	tcase_add_test(tc, test_enabling_queues_everything_and_disabling_empties);
	tcase_add_test(tc, test_resync_queues_the_ca_and_every_address_once);
	tcase_add_test(tc, test_the_expiry_sweep_queues_expired_certificates_once);
	tcase_add_test(tc, test_bad_entries_are_refused);
	tcase_add_test(tc, test_the_ldap_url_is_a_second_name_of_the_distribution_point);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(pubq_suite());
	int failed;

	if (ca_create_root("Queue Test", "kms-ca", "ec:p384", 30, &ca) != 0 || ca_keygen("ec:p256", &ukey) != 0) {
		fprintf(stderr, "check_pubq: cannot make the test CA: %s\n", kms_last_error());
		return 1;
	}
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	ca_free(ca);
	EVP_PKEY_free(ukey);
	return failed == 0 ? 0 : 1;
}
