/*
 * approval.c - the rules of M-of-N recovery: each officer counts once,
 * each share counts once, nothing after expiry or once the request is
 * closed or complete.  Pure functions over a snapshot of the request, so
 * the rules are tested without a daemon.  Separation of duties comes
 * first: the requester of a recovery or a rotation never approves it,
 * whatever roles they hold.
 */
#include "config.h"

#include "policy/policy.h"

int
pol_approval_check(const struct pol_request *req, uid_t officer, int share_index, time_t now)
{
	if (officer == req->requester)
		return kms_fail(KMS_ERR_PERM, "uid %u asked for this request and so may not approve it "
		    "(separation of duties: another officer must)", (unsigned)officer);
	if (req->closed)
		return kms_fail(KMS_ERR_STATE, "the request is closed");
	if (now >= req->expires)
		return kms_fail(KMS_ERR_EXPIRED, "the request has expired");
	if (pol_approval_complete(req))
		return kms_fail(KMS_ERR_STATE, "the request already has the %d approvals it needs", req->threshold);
	for (size_t i = 0; i < req->napprovals; i++) {
		if (req->approvals[i].officer == officer)
			return kms_fail(KMS_ERR_EXISTS, "this officer (uid %u) has already approved this request",
			    (unsigned)officer);
		if (req->approvals[i].share_index == share_index)
			return kms_fail(KMS_ERR_EXISTS, "share %d has already been given for this request", share_index);
	}
	return 0;
}

int
pol_approval_complete(const struct pol_request *req)
{
	return req->threshold > 0 && req->napprovals >= (size_t)req->threshold;
}
