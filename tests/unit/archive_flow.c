/*
 * archive_flow.c - the archive module's flows at its API, without a socket
 * (part of the check_archive suite): init (CA, KRK, share files, one
 * transaction), enrollment (both certificates and the escrowed key, or
 * nothing), recovery (any M share files rebuild the KRK, fewer do not,
 * the user's keys come back matching their certificates), KRK rotation
 * (old shares stop working, the new ones recover every key), and the
 * recovery request records.
 *
 * Keys are P-256 for users and RSA-2048 for the KRK, so that a run stays
 * fast; the CA is made by ca_create_root like kmsd's init does.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pkcs12.h>

#include "archive/archive.h"
#include "common/common.h"
#include "tests/unit/testutil.h"

#include "tests/unit/archive_flow.h"

static char *fdir;
static struct kms_store *fst;

static void
flow_setup(void)
{
	char *path;

	fdir = tu_tmpdir();
	path = kms_path_join(fdir, "kms.db");
	ck_assert_msg(kms_store_open(path, KMS_STORE_CREATE, &fst) == 0, "%s", kms_last_error());
	free(path);
}

static void
flow_teardown(void)
{
	kms_store_close(fst);
	fst = NULL;
	tu_rmtree(fdir);
	free(fdir);
	fdir = NULL;
}

/* kmsd's init with 5 shares, threshold 3, into fdir/shares. */
static void
do_init(struct esc_init_result *res, const char *pass_dir)
{
	char *share_dir = kms_path_join(fdir, "shares");
	struct esc_init_req ir = { .org = "Example Org", .ca_name = "example", .ca_key_type = "ec:p384",
		.krk_key_type = "rsa:2048", .ca_days = 365, .crl_url = "http://127.0.0.1:1/crl/example.crl",
		.passphrase = "correct horse battery", .shares = 5, .threshold = 3, .share_dir = share_dir,
		.pass_dir = pass_dir, .user = "root" };

	ck_assert_msg(esc_init(fst, &ir, res) == 0, "%s", kms_last_error());
	free(share_dir);
}

static void
enroll(const struct esc_init_result *in, const char *email)
{
	struct esc_enroll_req er = { .ca = in->ca, .krk_cert = in->krk_cert, .krk_id = in->krk_id, .email = email,
		.name = "A User", .key_type = "ec:p256", .days = 30, .crl_url = "", .origin = "enroll",
		.issued_by = "root" };
	struct esc_enrollment en;

	ck_assert_msg(esc_enroll_prepare(&er, &en) == 0, "%s", kms_last_error());
	ck_assert_int_eq(kms_store_begin(fst), 0);
	ck_assert_msg(esc_enroll_record(fst, &er, &en) == 0, "%s", kms_last_error());
	ck_assert_int_eq(kms_store_commit(fst), 0);
	esc_enrollment_free(&en);
}

/* Read share files idx[0..n) of files (0-based) into shares. */
static void
read_shares(const struct esc_share_files *files, const int *idx, size_t n, const char *pass,
    struct esc_share *shares)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char *text = NULL;
		size_t len = 0;
		struct esc_share_meta meta;

		ck_assert_int_eq(kms_read_file(files->paths[idx[i]], 1 << 20, &text, &len), 0);
		ck_assert_msg(esc_share_decode((const char *)text, len, pass, &shares[i], &meta) == 0, "%s", kms_last_error());
		ck_assert_int_eq(meta.threshold, 3);
		ck_assert_int_eq(meta.total, 5);
		free(text);
	}
}

START_TEST(test_init_writes_private_share_files_and_records_ca_and_krk_together)
{
	struct esc_init_result res;
	struct esc_krk *krk = NULL;
	struct stat sb;

	do_init(&res, NULL);
	ck_assert_int_eq(res.files.n, 5);
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(stat(res.files.paths[i], &sb), 0);
		ck_assert_int_eq(sb.st_mode & 0777, 0600);
		ck_assert_int_eq(esc_store_check_share(fst, res.krk_id, i + 1, res.files.digests[i]), 0);
	}
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), 0);
	ck_assert_int_eq(krk->id, res.krk_id);
	ck_assert_int_eq(krk->threshold, 3);
	ck_assert_int_eq(X509_cmp(krk->cert, res.krk_cert), 0);
	ck_assert_ptr_nonnull(res.ca->key);
	esc_krk_free(krk);
	esc_init_result_free(&res);
}
END_TEST

START_TEST(test_init_that_cannot_write_its_shares_records_nothing)
{
	struct esc_init_result res;
	struct esc_krk *krk = NULL;
	char *blocker = tu_write(fdir, "shares", "a file where the share directory should go\n");
	struct esc_init_req ir = { .org = "Example Org", .ca_name = "example", .ca_key_type = "ec:p384",
		.krk_key_type = "rsa:2048", .ca_days = 365, .crl_url = "", .passphrase = "correct horse battery",
		.shares = 5, .threshold = 3, .share_dir = blocker, .pass_dir = NULL, .user = "root" };

	ck_assert_int_ne(esc_init(fst, &ir, &res), 0);
	ck_assert_ptr_null(res.ca);
	ck_assert_int_eq(res.files.n, 0);
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), KMS_ERR_NOTFOUND);
	/* Impossible share parameters are refused before anything is made. */
	ir.share_dir = fdir;
	ir.threshold = 6;
	ck_assert_int_eq(esc_init(fst, &ir, &res), KMS_ERR_INVALID);
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), KMS_ERR_NOTFOUND);
	free(blocker);
}
END_TEST

START_TEST(test_enrollment_records_both_certificates_and_the_escrowed_key)
{
	struct esc_init_result in;
	struct esc_entry *e = NULL;
	size_t n = 0;
	struct ca_cert_row *rows = NULL;
	size_t nrows = 0;

	do_init(&in, NULL);
	enroll(&in, "alice@example.org");
	ck_assert_int_eq(ca_store_find(fst, "alice@example.org", &rows, &nrows), 0);
	ck_assert_uint_eq(nrows, 2);
	ca_cert_rows_free(rows, nrows);
	ck_assert_int_eq(esc_store_get_user(fst, "alice@example.org", &e, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(esc_store_has_key(fst, e[0].serial), 1);
	ck_assert_int_eq(esc_store_count(fst), 1);
	esc_entries_free(e, n);
	esc_init_result_free(&in);
}
END_TEST

START_TEST(test_enrollment_whose_escrow_fails_leaves_no_certificate)
{
	struct esc_init_result in;
	struct esc_enroll_req er;
	struct esc_enrollment en;
	struct ca_cert_row *rows = NULL;
	size_t nrows = 0;

	do_init(&in, NULL);
	er = (struct esc_enroll_req){ .ca = in.ca, .krk_cert = in.krk_cert, .krk_id = in.krk_id + 99,
		.email = "bob@example.org", .name = "", .key_type = "ec:p256", .days = 30, .crl_url = "",
		.origin = "enroll", .issued_by = "root" };
	ck_assert_int_eq(esc_enroll_prepare(&er, &en), 0);
	ck_assert_int_eq(kms_store_begin(fst), 0);
	/* A KRK that is not recorded: the escrow row fails after both certificates went in. */
	ck_assert_int_eq(esc_enroll_record(fst, &er, &en), KMS_ERR_NOTFOUND);
	kms_store_rollback(fst);
	ck_assert_int_eq(ca_store_find(fst, "bob@example.org", &rows, &nrows), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_store_count(fst), 0);
	esc_enrollment_free(&en);
	/* No CA key, no KRK: refused before any key is made. */
	er.krk_cert = NULL;
	ck_assert_int_eq(esc_enroll_prepare(&er, &en), KMS_ERR_STATE);
	esc_init_result_free(&in);
}
END_TEST

START_TEST(test_any_three_share_files_recover_the_users_keys_and_two_do_not)
{
	static const int three[3] = { 4, 0, 2 }, two[2] = { 1, 3 };
	struct esc_init_result in;
	struct esc_share sh[3];
	struct esc_krk *krk = NULL;
	struct esc_recovered rec;
	EVP_PKEY *k = NULL;

	do_init(&in, NULL);
	enroll(&in, "carol@example.org");
	enroll(&in, "carol@example.org");   /* a renewal: two escrowed keys */
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), 0);

	read_shares(&in.files, two, 2, NULL, sh);
	ck_assert_int_eq(esc_krk_rebuild(sh, 2, krk->cert, &k), KMS_ERR_CORRUPT);
	ck_assert_ptr_null(k);
	esc_share_clear(&sh[0]);
	esc_share_clear(&sh[1]);

	read_shares(&in.files, three, 3, NULL, sh);
	ck_assert_msg(esc_krk_rebuild(sh, 3, krk->cert, &k) == 0, "%s", kms_last_error());
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	ck_assert_msg(esc_recover_user(fst, "carol@example.org", k, krk, &rec) == 0, "%s", kms_last_error());
	ck_assert_uint_eq(rec.n, 2);
	for (size_t i = 0; i < rec.n; i++)
		ck_assert_int_eq(esc_key_matches_cert(rec.keys[i], rec.certs[i]), 1);
	/* Current first. */
	ck_assert_int_ge(ASN1_TIME_compare(X509_get0_notBefore(rec.certs[0]), X509_get0_notBefore(rec.certs[1])), 0);
	esc_recovered_free(&rec);
	ck_assert_int_eq(esc_recover_user(fst, "nobody@example.org", k, krk, &rec), KMS_ERR_NOTFOUND);
	ck_assert_uint_eq(rec.n, 0);
	EVP_PKEY_free(k);
	esc_krk_free(krk);
	esc_init_result_free(&in);
}
END_TEST

/*
 * esc_recover_keys is the whole sequence kmsd and kmsctl recover --offline
 * run: three shares give the user's keys, two give nothing; and
 * esc_recovered_p12 packs them with the iteration count it is given (the
 * offline path used to hard-code 10000 whatever [ca] pkcs12_iterations said).
 */
START_TEST(test_recover_keys_is_one_call_from_shares_to_pkcs12)
{
	static const int three[3] = { 1, 3, 4 }, two[2] = { 0, 2 };
	struct esc_init_result in;
	struct esc_share sh[3];
	struct esc_krk *krk = NULL;
	struct esc_recovered rec;
	struct ca_p12_contents *pc = NULL;
	unsigned char *der = NULL;
	size_t len = 0;
	const unsigned char *p;
	const ASN1_INTEGER *iter = NULL;
	PKCS12 *p12;

	do_init(&in, NULL);
	enroll(&in, "frank@example.org");
	enroll(&in, "frank@example.org");
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), 0);

	read_shares(&in.files, two, 2, NULL, sh);
	ck_assert_int_eq(esc_recover_keys(fst, krk, sh, 2, "frank@example.org", &rec), KMS_ERR_CORRUPT);
	ck_assert_uint_eq(rec.n, 0);
	esc_share_clear(&sh[0]);
	esc_share_clear(&sh[1]);

	read_shares(&in.files, three, 3, NULL, sh);
	ck_assert_int_eq(esc_recover_keys(fst, krk, sh, 3, "nobody@example.org", &rec), KMS_ERR_NOTFOUND);
	ck_assert_msg(esc_recover_keys(fst, krk, sh, 3, "frank@example.org", &rec) == 0, "%s", kms_last_error());
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	ck_assert_uint_eq(rec.n, 2);

	ck_assert_msg(esc_recovered_p12(&rec, "frank@example.org", in.ca->cert, "a long password", CA_P12_MODERN, 4321,
	    &der, &len) == 0, "%s", kms_last_error());
	p = der;
	p12 = d2i_PKCS12(NULL, &p, (long)len);
	ck_assert_ptr_nonnull(p12);
	PKCS12_get0_mac(NULL, NULL, NULL, &iter, p12);
	ck_assert_int_eq(ASN1_INTEGER_get(iter), 4321);
	PKCS12_free(p12);
	ck_assert_msg(ca_p12_read(der, len, "a long password", &pc) == 0, "%s", kms_last_error());
	ck_assert_uint_eq(pc->n, 2);
	for (size_t i = 0; i < pc->n; i++) {
		ck_assert_int_eq(esc_key_matches_cert(pc->keys[i], pc->certs[i]), 1);
		ck_assert_ptr_nonnull(strstr(pc->names[i], "frank@example.org (encryption"));
	}
	ck_assert_ptr_nonnull(strstr(pc->names[0], ", current, "));
	ck_assert_int_eq(sk_X509_num(pc->others), 1);
	ca_p12_contents_free(pc);
	free(der);
	esc_recovered_free(&rec);
	esc_krk_free(krk);
	esc_init_result_free(&in);
}
END_TEST

START_TEST(test_encrypted_share_files_need_their_passphrases)
{
	static const int three[3] = { 0, 1, 2 };
	struct esc_init_result in;
	struct esc_share sh[3];
	struct esc_krk *krk = NULL;
	EVP_PKEY *k = NULL;
	char *pdir = kms_path_join(fdir, "pass");
	unsigned char *text = NULL;
	size_t len = 0;
	struct esc_share_meta meta;

	ck_assert_int_eq(mkdir(pdir, 0700), 0);
	for (int i = 1; i <= 5; i++) {
		char name[64], pass[64];

		snprintf(name, sizeof(name), "share-%d.passphrase", i);
		snprintf(pass, sizeof(pass), "officer %d passphrase\n", i);
		free(tu_write(pdir, name, pass));
	}
	do_init(&in, pdir);
	ck_assert_int_eq(kms_read_file(in.files.paths[0], 1 << 20, &text, &len), 0);
	ck_assert_int_ne(esc_share_decode((const char *)text, len, NULL, &sh[0], &meta), 0);
	ck_assert_int_ne(esc_share_decode((const char *)text, len, "officer 2 passphrase", &sh[0], &meta), 0);
	free(text);
	for (int i = 0; i < 3; i++) {
		char pass[64];

		snprintf(pass, sizeof(pass), "officer %d passphrase", i + 1);
		read_shares(&in.files, &three[i], 1, pass, &sh[i]);
	}
	ck_assert_int_eq(esc_store_current_krk(fst, &krk), 0);
	ck_assert_int_eq(esc_krk_rebuild(sh, 3, krk->cert, &k), 0);
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	EVP_PKEY_free(k);
	esc_krk_free(krk);
	esc_init_result_free(&in);
	free(pdir);
}
END_TEST

START_TEST(test_rotation_rewraps_every_key_and_retires_the_old_shares)
{
	static const int three[3] = { 0, 1, 2 };
	struct esc_init_result in;
	struct esc_share sh[3];
	struct esc_krk *old = NULL, *cur = NULL;
	struct esc_recovered rec;
	struct esc_rotate_result rot;
	EVP_PKEY *k = NULL;
	char *new_dir = kms_path_join(fdir, "new-shares");
	struct esc_rotate_req rr = { .key_type = "rsa:2048", .days = 365, .crl_url = "", .shares = 5, .threshold = 3,
		.share_dir = new_dir, .pass_dir = NULL, .user = "root", .now = time(NULL) };

	do_init(&in, NULL);
	enroll(&in, "dave@example.org");
	enroll(&in, "erin@example.org");
	ck_assert_int_eq(esc_store_current_krk(fst, &old), 0);
	read_shares(&in.files, three, 3, NULL, sh);
	ck_assert_int_eq(esc_krk_rebuild(sh, 3, old->cert, &k), 0);
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	ck_assert_msg(esc_krk_rotate(fst, in.ca, &rr, k, old, &rot) == 0, "%s", kms_last_error());
	EVP_PKEY_free(k);
	k = NULL;
	ck_assert_uint_eq(rot.rewrapped, 2);
	ck_assert_int_eq(rot.files.n, 5);
	ck_assert_int_eq(esc_store_current_krk(fst, &cur), 0);
	ck_assert_int_eq(cur->id, rot.krk_id);
	ck_assert_str_eq(cur->fingerprint, rot.fingerprint);

	/* The old shares rebuild a key that no longer opens anything... */
	read_shares(&in.files, three, 3, NULL, sh);
	ck_assert_int_eq(esc_krk_rebuild(sh, 3, cur->cert, &k), KMS_ERR_CORRUPT);
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	/* ...and the new ones recover both users. */
	read_shares(&rot.files, three, 3, NULL, sh);
	ck_assert_int_eq(esc_krk_rebuild(sh, 3, cur->cert, &k), 0);
	for (int i = 0; i < 3; i++)
		esc_share_clear(&sh[i]);
	ck_assert_int_eq(esc_recover_user(fst, "dave@example.org", k, cur, &rec), 0);
	ck_assert_uint_eq(rec.n, 1);
	esc_recovered_free(&rec);
	ck_assert_int_eq(esc_recover_user(fst, "erin@example.org", k, cur, &rec), 0);
	ck_assert_uint_eq(rec.n, 1);
	esc_recovered_free(&rec);
	EVP_PKEY_free(k);
	esc_share_files_free(&rot.files);
	esc_krk_free(old);
	esc_krk_free(cur);
	esc_init_result_free(&in);
	free(new_dir);
}
END_TEST

struct listed {
	int n;
	char ids[4][ESC_REQUEST_ID_MAX];
	char officers[4][128];
};

static int
collect(void *arg, const struct esc_request_row *r)
{
	struct listed *l = arg;

	if (l->n < 4) {
		snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", r->id);
		snprintf(l->officers[l->n], sizeof(l->officers[0]), "%s", r->officers);
		l->n++;
	}
	return 0;
}

START_TEST(test_request_records_approvals_states_and_expiry)
{
	struct esc_init_result in;
	struct esc_request rq;
	char id[ESC_REQUEST_ID_MAX], id2[ESC_REQUEST_ID_MAX], due[4][ESC_REQUEST_ID_MAX];
	time_t now = time(NULL);
	struct listed l = { 0 };
	int n = 0;

	do_init(&in, NULL);
	{
		struct esc_request_new nr = { .purpose = "key", .email = "alice@example.org", .why = "lost laptop",
			.requester_uid = 1001, .requester = "carol", .krk_id = in.krk_id, .now = now,
			.expires = now + 3600 };

		ck_assert_int_eq(esc_request_open(fst, &nr, id), 0);
		ck_assert_int_eq(strncmp(id, "R-", 2), 0);
		ck_assert_uint_eq(strlen(id), 14);
		nr.purpose = "archive";
		nr.expires = now - 1;
		ck_assert_int_eq(esc_request_open(fst, &nr, id2), 0);
		ck_assert_str_ne(id, id2);
		nr.purpose = "everything";
		ck_assert_int_eq(esc_request_open(fst, &nr, id2 + 0), KMS_ERR_INVALID);
		ck_assert_int_eq(esc_request_open(fst, &(struct esc_request_new){ .purpose = "archive",
		    .email = "alice@example.org", .why = "audit", .requester_uid = 1001, .requester = "carol",
		    .krk_id = in.krk_id, .now = now, .expires = now - 1 }, id2), 0);
	}
	ck_assert_int_eq(esc_request_load(fst, id, &rq), 0);
	ck_assert_str_eq(rq.state, "open");
	ck_assert_str_eq(rq.purpose, "key");
	ck_assert_int_eq(rq.requester_uid, 1001);
	ck_assert_uint_eq(rq.napprovals, 0);
	ck_assert_int_eq(esc_request_add_approval(fst, &rq, 2001, "dave", 3, now), 0);
	/* The same share, or the same officer, twice: the store refuses it. */
	ck_assert_int_ne(esc_request_add_approval(fst, &rq, 2002, "erin", 3, now), 0);
	ck_assert_int_ne(esc_request_add_approval(fst, &rq, 2001, "dave", 4, now), 0);
	ck_assert_int_eq(esc_request_add_approval(fst, &rq, 2003, "frank", 5, now), 0);
	ck_assert_int_eq(esc_request_load(fst, id, &rq), 0);
	ck_assert_uint_eq(rq.napprovals, 2);
	ck_assert_int_eq(rq.approvals[0].share_index, 3);
	ck_assert_str_eq(rq.approvals[1].officer, "frank");
	{
		char who[200];

		esc_request_officers(&rq, who, sizeof(who));
		ck_assert_str_eq(who, "dave (share 3), frank (share 5)");
	}
	ck_assert_int_eq(esc_request_set_state(fst, id, "approved", "2 keys", now), 0);
	ck_assert_int_eq(esc_request_set_state(fst, "R-000000000000", "approved", NULL, now), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_request_load(fst, "R-000000000000", &rq), KMS_ERR_NOTFOUND);

	ck_assert_int_eq(esc_request_due(fst, now, due, 4, &n), 0);
	/* The two archive requests that expired a second ago, not the open key request. */
	ck_assert_int_eq(n, 2);
	ck_assert_str_ne(due[0], id);
	ck_assert_str_ne(due[1], id);
	ck_assert_int_eq(esc_request_list(fst, 0, now, collect, &l), 0);
	ck_assert_int_eq(l.n, 3);
	for (int i = 0; i < l.n; i++)
		ck_assert_str_eq(l.officers[i], strcmp(l.ids[i], id) == 0 ? "dave, frank" : "");

	ck_assert_int_eq(esc_request_fail_open(fst, "kmsd stopped", now), 0);
	ck_assert_int_eq(esc_request_load(fst, id, &rq), 0);
	ck_assert_str_eq(rq.state, "failed");
	ck_assert_str_eq(rq.detail, "kmsd stopped");
	ck_assert_int_eq(esc_request_due(fst, now + 7200, due, 4, &n), 0);
	ck_assert_int_eq(n, 0);
	esc_init_result_free(&in);
}
END_TEST

void
archive_flow_tcases(Suite *s)
{
	TCase *tc = tcase_create("flows");

	tcase_add_checked_fixture(tc, flow_setup, flow_teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_init_writes_private_share_files_and_records_ca_and_krk_together);
	tcase_add_test(tc, test_init_that_cannot_write_its_shares_records_nothing);
	tcase_add_test(tc, test_enrollment_records_both_certificates_and_the_escrowed_key);
	tcase_add_test(tc, test_enrollment_whose_escrow_fails_leaves_no_certificate);
	tcase_add_test(tc, test_any_three_share_files_recover_the_users_keys_and_two_do_not);
	tcase_add_test(tc, test_recover_keys_is_one_call_from_shares_to_pkcs12);
	tcase_add_test(tc, test_encrypted_share_files_need_their_passphrases);
	tcase_add_test(tc, test_rotation_rewraps_every_key_and_retires_the_old_shares);
	tcase_add_test(tc, test_request_records_approvals_states_and_expiry);
	suite_add_tcase(s, tc);
}
