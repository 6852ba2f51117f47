/*
 * policy.h - the public header of libkmspolicy: decisions, kept apart from the
 * code that acts on them.
 *
 *   verdicts   the milter's verdicts, their order of severity, and the
 *              action [policy] names for each
 *   roles      who the peer of the control socket is: [roles] lists of
 *              user names, uids and @groups compiled into a lookup
 *   commands   the role each control command needs
 *   approvals  the rules of M-of-N recovery approval
 */
#ifndef KMS_POL_H
#define KMS_POL_H

#include <sys/types.h>
#include <time.h>

#include "common/common.h"

/* ================================================================ verdicts */

/*
 * The verdicts.  Their order of severity is pol_verdict_worst's, not the
 * order of the values: a revoked signer outranks everything, so that no
 * other signature, broken or good, can hide it (DESIGN section 10).
 */
enum pol_verdict {
	POL_V_FAIL = 0,
	POL_V_REVOKED,
	POL_V_UNTRUSTED,
	POL_V_EXPIRED,
	POL_V_MISMATCH,
	POL_V_PARTIAL,                  /* good signature that does not cover the whole message */
	POL_V_PASS,
	POL_V_ENCRYPTED,
	POL_V_NONE,
	POL_V_ERROR,
	POL_V_COUNT
};

const char *pol_verdict_name(enum pol_verdict v);        /* "pass", "revoked", ... */
int pol_verdict_from_name(const char *name);             /* or -1 */
/*
 * The more severe of a and b: revoked > fail > untrusted > expired >
 * mismatch > partial > pass > encrypted > none > error.
 */
enum pol_verdict pol_verdict_worst(enum pol_verdict a, enum pol_verdict b);
/* The configured enum kms_action for a verdict. */
int pol_decide(const struct kms_config *cfg, enum pol_verdict v);
/*
 * The action for a good signature whose revocation status is unknown:
 * [policy] on_revocation_unknown, except that tempfail holds only while
 * a fetch of the CRL is pending (pending_since, 0 for none) and for at
 * most revocation_unknown_wait; after that it is warn.
 */
int pol_decide_revocation_unknown(const struct kms_config *cfg, time_t pending_since, time_t now);
/* The stricter of two enum kms_action: reject > tempfail > quarantine > warn > accept. */
int pol_action_stricter(int a, int b);
/*
 * The action for a whole message with verdict v when good signatures in
 * it have an unknown revocation status (unknown_action, the strictest
 * pol_decide_revocation_unknown of them; -1 when there are none): the
 * stricter of pol_decide(v) and unknown_action, whatever on_pass says,
 * except that a revoked verdict takes on_revoked alone (a revocation is
 * known, and always wins).
 */
int pol_decide_message(const struct kms_config *cfg, enum pol_verdict v, int unknown_action);
/*
 * RFC 8601/7281 result keyword for the smime method: pass, fail, neutral,
 * temperror, permerror, none, policy.
 */
const char *pol_verdict_ar_result(enum pol_verdict v);

/* =================================================================== roles */

enum pol_role {
	POL_ROLE_ADMIN = 1,
	POL_ROLE_OFFICER = 2,
	POL_ROLE_COMPLIANCE = 4,
	POL_ROLE_AUDITOR = 8,
};
#define POL_ROLE_ANY (POL_ROLE_ADMIN | POL_ROLE_OFFICER | POL_ROLE_COMPLIANCE | POL_ROLE_AUDITOR)

const char *pol_role_name(unsigned role);     /* name of a single role bit */

struct pol_roles;
/*
 * Compile [roles] from cfg.  Names are resolved now (unknown user or group
 * names are a config error naming them); "self" means the uid kmsd runs as.
 */
int pol_roles_compile(const struct kms_config *cfg, uid_t self, struct pol_roles **out);
void pol_roles_free(struct pol_roles *r);
/* Role bits of a peer: by uid, by user name of uid, by primary and supplementary groups. */
unsigned pol_roles_of(const struct pol_roles *r, uid_t uid, gid_t gid);

/* ================================================================ commands */

struct pol_cmd {
	const char *name;       /* "enroll", "recover.approve", ... */
	unsigned roles;         /* any of these may run it; 0: any peer */
	int writes;             /* changes state (for logs) */
};
/* NULL for an unknown command. */
const struct pol_cmd *pol_cmd_find(const char *name);
/*
 * May a peer with roles run cmd?  0 and *role_used (the role it runs under)
 * or KMS_ERR_PERM.
 */
int pol_authorize(const struct pol_cmd *cmd, unsigned roles, const char **role_used);

/* =============================================================== approvals */

struct pol_approval {
	uid_t officer;
	int share_index;
};

struct pol_request {
	uid_t requester;              /* who asked: never an approver of it */
	time_t expires;
	int threshold;
	int closed;                   /* closed, completed or failed */
	const struct pol_approval *approvals;
	size_t napprovals;
};

/*
 * May officer add the share with share_index to req at now?
 * 0 yes; KMS_ERR_PERM when officer is the requester (separation of
 * duties: whatever roles they hold, nobody approves their own request);
 * KMS_ERR_EXPIRED after expiry; KMS_ERR_STATE when closed or already
 * complete; KMS_ERR_EXISTS when this officer already approved or this
 * share was already given (detail says which).
 */
int pol_approval_check(const struct pol_request *req, uid_t officer, int share_index, time_t now);
/* Does req have enough distinct approvals?  1 or 0. */
int pol_approval_complete(const struct pol_request *req);

#endif /* KMS_POL_H */
