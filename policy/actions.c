/*
 * actions.c - verdict names, their order of severity, the action configured
 * for each, and the RFC 8601 result keyword each maps to.
 */
#include "config.h"

#include <string.h>

#include "policy/policy.h"

static const struct {
	const char *name;
	const char *ar;         /* RFC 8601 / RFC 7281 result */
} verdicts[POL_V_COUNT] = {
	[POL_V_FAIL] = { "fail", "fail" },
	[POL_V_REVOKED] = { "revoked", "fail" },
	[POL_V_UNTRUSTED] = { "untrusted", "neutral" },
	[POL_V_EXPIRED] = { "expired", "neutral" },
	[POL_V_MISMATCH] = { "mismatch", "policy" },
	[POL_V_PARTIAL] = { "partial", "policy" },
	[POL_V_PASS] = { "pass", "pass" },
	[POL_V_ENCRYPTED] = { "encrypted", "none" },
	[POL_V_NONE] = { "none", "none" },
	[POL_V_ERROR] = { "error", "temperror" },
};

const char *
pol_verdict_name(enum pol_verdict v)
{
	return (unsigned)v < POL_V_COUNT ? verdicts[v].name : "error";
}

int
pol_verdict_from_name(const char *name)
{
	for (int i = 0; i < POL_V_COUNT; i++)
		if (strcmp(verdicts[i].name, name) == 0)
			return i;
	return -1;
}

const char *
pol_verdict_ar_result(enum pol_verdict v)
{
	return (unsigned)v < POL_V_COUNT ? verdicts[v].ar : "temperror";
}

/*
 * The order of severity, most severe first.  Every verdict has its place:
 * a new one that is left out fails the build, rather than ranking first
 * by default.
 */
static const enum pol_verdict severity[] = {
	POL_V_REVOKED, POL_V_FAIL, POL_V_UNTRUSTED, POL_V_EXPIRED, POL_V_MISMATCH, POL_V_PARTIAL, POL_V_PASS,
	POL_V_ENCRYPTED, POL_V_NONE, POL_V_ERROR,
};
_Static_assert(sizeof(severity) / sizeof(severity[0]) == POL_V_COUNT, "every verdict needs its place in severity[]");

static size_t
rank(enum pol_verdict v)
{
	for (size_t i = 0; i < sizeof(severity) / sizeof(severity[0]); i++)
		if (severity[i] == v)
			return i;
	return sizeof(severity) / sizeof(severity[0]);
}

enum pol_verdict
pol_verdict_worst(enum pol_verdict a, enum pol_verdict b)
{
	/*
	 * Revoked first: a broken signature beside a revoked one must never
	 * hide the revocation (the warning is additive).  Only signature
	 * verdicts (revoked .. pass) rank against each other in practice; a
	 * message with any signature outranks "encrypted", "none" and "error".
	 */
	return rank(a) <= rank(b) ? a : b;
}

int
pol_decide_revocation_unknown(const struct kms_config *cfg, time_t pending_since, time_t now)
{
	int a = (int)cfg->policy.on_revocation_unknown;

	if (a != KMS_ACT_TEMPFAIL)
		return a;
	if (pending_since > 0 && now >= pending_since && now - pending_since < cfg->policy.revocation_unknown_wait)
		return KMS_ACT_TEMPFAIL;
	return KMS_ACT_WARN;
}

int
pol_decide(const struct kms_config *cfg, enum pol_verdict v)
{
	switch (v) {
	case POL_V_PASS: return (int)cfg->policy.on_pass;
	case POL_V_FAIL: return (int)cfg->policy.on_fail;
	case POL_V_REVOKED: return (int)cfg->policy.on_revoked;
	case POL_V_EXPIRED: return (int)cfg->policy.on_expired;
	case POL_V_UNTRUSTED: return (int)cfg->policy.on_untrusted;
	case POL_V_MISMATCH: return (int)cfg->policy.on_mismatch;
	case POL_V_PARTIAL: return (int)cfg->policy.on_partial;
	case POL_V_ENCRYPTED: return (int)cfg->policy.on_encrypted;
	case POL_V_NONE: return (int)cfg->policy.on_none;
	default: return (int)cfg->policy.on_error;
	}
}

/* How strict each action is: what it withholds from the recipient. */
static int
action_rank(int a)
{
	switch (a) {
	case KMS_ACT_REJECT: return 4;
	case KMS_ACT_TEMPFAIL: return 3;
	case KMS_ACT_QUARANTINE: return 2;
	case KMS_ACT_WARN: return 1;
	default: return 0;
	}
}

int
pol_action_stricter(int a, int b)
{
	return action_rank(b) > action_rank(a) ? b : a;
}

int
pol_decide_message(const struct kms_config *cfg, enum pol_verdict v, int unknown_action)
{
	int a = pol_decide(cfg, v);

	if (v == POL_V_REVOKED || unknown_action < 0)
		return a;
	return pol_action_stricter(a, unknown_action);
}
