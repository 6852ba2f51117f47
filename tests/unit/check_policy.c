/*
 * check_policy.c - unit suite for libkmspolicy: verdict severity and the
 * action for each, roles from [roles], the command table, and the M-of-N
 * approval rules (distinct officers, distinct shares, expiry, closing).
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "policy/policy.h"
#include "tests/unit/testutil.h"

START_TEST(test_worst_verdict_follows_severity_order)
{
	/* revoked > fail > untrusted > expired > mismatch > partial > pass: a broken signature never hides a revoked one */
	static const enum pol_verdict order[] = { POL_V_REVOKED, POL_V_FAIL, POL_V_UNTRUSTED,
		POL_V_EXPIRED, POL_V_MISMATCH, POL_V_PARTIAL, POL_V_PASS };
	const size_t n = sizeof(order) / sizeof(order[0]);

	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++)
			ck_assert_int_eq(pol_verdict_worst(order[i], order[j]), order[i < j ? i : j]);
	ck_assert_int_eq(pol_verdict_worst(POL_V_FAIL, POL_V_REVOKED), POL_V_REVOKED);
	ck_assert_str_eq(pol_verdict_name(POL_V_REVOKED), "revoked");
	ck_assert_str_eq(pol_verdict_name(POL_V_PARTIAL), "partial");
	ck_assert_str_eq(pol_verdict_ar_result(POL_V_PARTIAL), "policy");
	ck_assert_int_eq(pol_verdict_from_name("mismatch"), POL_V_MISMATCH);
	ck_assert_int_eq(pol_verdict_from_name("bogus"), -1);
	ck_assert_str_eq(pol_verdict_ar_result(POL_V_PASS), "pass");
	ck_assert_str_eq(pol_verdict_ar_result(POL_V_REVOKED), "fail");
	ck_assert_str_eq(pol_verdict_ar_result(POL_V_ERROR), "temperror");
}
END_TEST

START_TEST(test_decide_uses_configured_action_per_verdict)
{
	struct kms_config *cfg;
	char *dir = tu_tmpdir(), *p;

	ck_assert_int_eq(kms_config_load(NULL, &cfg), 0);
	ck_assert_int_eq(pol_decide(cfg, POL_V_REVOKED), KMS_ACT_WARN);
	ck_assert_int_eq(pol_decide(cfg, POL_V_PASS), KMS_ACT_ACCEPT);
	ck_assert_int_eq(pol_decide(cfg, POL_V_FAIL), KMS_ACT_ACCEPT);
	ck_assert_int_eq(pol_decide(cfg, POL_V_ERROR), KMS_ACT_TEMPFAIL);
	ck_assert_int_eq(pol_decide(cfg, POL_V_PARTIAL), KMS_ACT_WARN);
	kms_config_unref(cfg);
	p = tu_write(dir, "k.conf", "[policy]\non_revoked = reject\non_fail = quarantine\non_error = accept\n"
	    "on_untrusted = tempfail\non_partial = reject\n");
	ck_assert_int_eq(kms_config_load(p, &cfg), 0);
	ck_assert_int_eq(pol_decide(cfg, POL_V_REVOKED), KMS_ACT_REJECT);
	ck_assert_int_eq(pol_decide(cfg, POL_V_FAIL), KMS_ACT_QUARANTINE);
	ck_assert_int_eq(pol_decide(cfg, POL_V_UNTRUSTED), KMS_ACT_TEMPFAIL);
	ck_assert_int_eq(pol_decide(cfg, POL_V_ERROR), KMS_ACT_ACCEPT);
	ck_assert_int_eq(pol_decide(cfg, POL_V_PARTIAL), KMS_ACT_REJECT);
	kms_config_unref(cfg);
	free(p);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(test_unknown_revocation_combines_with_every_on_pass)
{
	struct kms_config *cfg;
	char *dir = tu_tmpdir(), *p;
	time_t now = 1700000000;

	ck_assert_int_eq(pol_action_stricter(KMS_ACT_ACCEPT, KMS_ACT_WARN), KMS_ACT_WARN);
	ck_assert_int_eq(pol_action_stricter(KMS_ACT_QUARANTINE, KMS_ACT_TEMPFAIL), KMS_ACT_TEMPFAIL);
	ck_assert_int_eq(pol_action_stricter(KMS_ACT_REJECT, KMS_ACT_TEMPFAIL), KMS_ACT_REJECT);
	ck_assert_int_eq(pol_action_stricter(KMS_ACT_WARN, KMS_ACT_QUARANTINE), KMS_ACT_QUARANTINE);
	p = tu_write(dir, "k.conf", "[policy]\non_pass = warn\non_revocation_unknown = tempfail\n"
	    "revocation_unknown_wait = 10m\non_revoked = accept\non_mismatch = quarantine\n");
	ck_assert_int_eq(kms_config_load(p, &cfg), 0);
	/* Strict checking holds the first message of a new partner even when on_pass is not accept. */
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_PASS, pol_decide_revocation_unknown(cfg, now - 5, now)),
	    KMS_ACT_TEMPFAIL);
	/* Past the wait, or with no fetch pending: warn, and on_pass still counts. */
	ck_assert_int_eq(pol_decide_revocation_unknown(cfg, now - 601, now), KMS_ACT_WARN);
	ck_assert_int_eq(pol_decide_revocation_unknown(cfg, 0, now), KMS_ACT_WARN);
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_PASS, KMS_ACT_WARN), KMS_ACT_WARN);
	/* The stricter of the verdict's own action and the unknown status's. */
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_MISMATCH, KMS_ACT_WARN), KMS_ACT_QUARANTINE);
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_MISMATCH, KMS_ACT_TEMPFAIL), KMS_ACT_TEMPFAIL);
	/* A known revocation always takes on_revoked alone. */
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_REVOKED, KMS_ACT_TEMPFAIL), KMS_ACT_ACCEPT);
	/* No unknown status: the verdict's action. */
	ck_assert_int_eq(pol_decide_message(cfg, POL_V_PASS, -1), KMS_ACT_WARN);
	kms_config_unref(cfg);
	free(p);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

static struct pol_roles *
roles_from(const char *text)
{
	char *dir = tu_tmpdir(), *p = tu_write(dir, "k.conf", text);
	struct kms_config *cfg;
	struct pol_roles *r = NULL;

	ck_assert_int_eq(kms_config_load(p, &cfg), 0);
	if (pol_roles_compile(cfg, 4242, &r) != 0)
		r = NULL;
	kms_config_unref(cfg);
	free(p);
	tu_rmtree(dir);
	free(dir);
	return r;
}

START_TEST(test_roles_by_name_uid_group_and_self)
{
	struct pol_roles *r = roles_from("[roles]\nadmin = root, self\nofficer = 1001, 1002\n"
	    "compliance = @root\nauditor = 1003\n");

	ck_assert_ptr_nonnull(r);
	/* root: admin by name, compliance through group 0. */
	ck_assert_uint_eq(pol_roles_of(r, 0, 0), POL_ROLE_ADMIN | POL_ROLE_COMPLIANCE);
	ck_assert_uint_eq(pol_roles_of(r, 4242, 4242), POL_ROLE_ADMIN);
	ck_assert_uint_eq(pol_roles_of(r, 1001, 5000), POL_ROLE_OFFICER);
	ck_assert_uint_eq(pol_roles_of(r, 1003, 5000), POL_ROLE_AUDITOR);
	/* A stranger in group 0 is compliance only through the group. */
	ck_assert_uint_eq(pol_roles_of(r, 54321, 0), POL_ROLE_COMPLIANCE);
	ck_assert_uint_eq(pol_roles_of(r, 54321, 54321), 0);
	pol_roles_free(r);
}
END_TEST

START_TEST(test_roles_unknown_user_or_group_is_config_error)
{
	ck_assert_ptr_null(roles_from("[roles]\nofficer = no-such-user-kms\n"));
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "no-such-user-kms"));
	ck_assert_ptr_null(roles_from("[roles]\nofficer = @no-such-group-kms\n"));
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "no-such-group-kms"));
}
END_TEST

START_TEST(test_command_table_names_roles)
{
	const struct pol_cmd *c;
	const char *role;

	ck_assert_ptr_null(pol_cmd_find("format-disk"));
	c = pol_cmd_find("recover.approve");
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_ADMIN, &role), KMS_ERR_PERM);
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_ADMIN | POL_ROLE_OFFICER, &role), 0);
	ck_assert_str_eq(role, "officer");
	c = pol_cmd_find("enroll");
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_AUDITOR, &role), KMS_ERR_PERM);
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_ADMIN, &role), 0);
	ck_assert_str_eq(role, "admin");
	c = pol_cmd_find("audit.verify");
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_ADMIN, &role), KMS_ERR_PERM);
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_AUDITOR, &role), 0);
	c = pol_cmd_find("status");
	ck_assert_int_eq(pol_authorize(c, 0, &role), KMS_ERR_PERM);
	ck_assert_int_eq(pol_authorize(c, POL_ROLE_OFFICER, &role), 0);
}
END_TEST

START_TEST(test_approvals_need_distinct_officers_and_shares)
{
	struct pol_approval a[3] = { { 1001, 1 } };
	struct pol_request req = { .requester = 1000, .expires = 1000, .threshold = 3, .approvals = a, .napprovals = 1 };

	ck_assert_int_eq(pol_approval_check(&req, 1001, 2, 10), KMS_ERR_EXISTS);   /* same officer */
	ck_assert_int_eq(pol_approval_check(&req, 1002, 1, 10), KMS_ERR_EXISTS);   /* same share */
	ck_assert_int_eq(pol_approval_check(&req, 1002, 2, 10), 0);
	a[1] = (struct pol_approval){ 1002, 2 };
	req.napprovals = 2;
	ck_assert_int_eq(pol_approval_complete(&req), 0);
	ck_assert_int_eq(pol_approval_check(&req, 1003, 3, 10), 0);
	a[2] = (struct pol_approval){ 1003, 3 };
	req.napprovals = 3;
	ck_assert_int_eq(pol_approval_complete(&req), 1);
	ck_assert_int_eq(pol_approval_check(&req, 1004, 4, 10), KMS_ERR_STATE);     /* already complete */
}
END_TEST

START_TEST(test_approvals_refused_after_expiry_or_close)
{
	struct pol_request req = { .requester = 1000, .expires = 1000, .threshold = 2 };

	ck_assert_int_eq(pol_approval_check(&req, 1001, 1, 999), 0);
	ck_assert_int_eq(pol_approval_check(&req, 1001, 1, 1000), KMS_ERR_EXPIRED);
	req.closed = 1;
	ck_assert_int_eq(pol_approval_check(&req, 1001, 1, 10), KMS_ERR_STATE);
}
END_TEST

START_TEST(test_requester_never_approves_own_request)
{
	struct pol_approval a[2] = { { 1001, 1 } };
	struct pol_request req = { .requester = 1005, .expires = 1000, .threshold = 2, .approvals = a, .napprovals = 1 };

	/* Whatever roles the requester holds: refused before any other rule. */
	ck_assert_int_eq(pol_approval_check(&req, 1005, 2, 10), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "separation of duties"));
	req.requester = 0;      /* root asked: root may not approve either */
	ck_assert_int_eq(pol_approval_check(&req, 0, 2, 10), KMS_ERR_PERM);
	ck_assert_int_eq(pol_approval_check(&req, 1005, 2, 10), 0);
	/* Even on an expired or closed request, the reason given is the duty rule. */
	req.requester = 1005;
	ck_assert_int_eq(pol_approval_check(&req, 1005, 2, 2000), KMS_ERR_PERM);
}
END_TEST

static Suite *
policy_suite(void)
{
	Suite *s = suite_create("policy");
	TCase *tc = tcase_create("policy");

	tcase_add_test(tc, test_worst_verdict_follows_severity_order);
	tcase_add_test(tc, test_decide_uses_configured_action_per_verdict);
	tcase_add_test(tc, test_unknown_revocation_combines_with_every_on_pass);
	tcase_add_test(tc, test_roles_by_name_uid_group_and_self);
	tcase_add_test(tc, test_roles_unknown_user_or_group_is_config_error);
	tcase_add_test(tc, test_command_table_names_roles);
	tcase_add_test(tc, test_approvals_need_distinct_officers_and_shares);
	tcase_add_test(tc, test_approvals_refused_after_expiry_or_close);
	tcase_add_test(tc, test_requester_never_approves_own_request);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(policy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
