/*
 * cmd_escrow.c - recovery requests and their approvals, fetching recovered
 * keys, KRK rotation, and releasing single content-encryption keys for
 * compliance decryption.
 *
 * A request's record and its approvals are in the store; the shares given
 * so far, and after completion the recovered keys, live only in this
 * process's locked memory (struct kmsd_pending), wiped on expiry, close, fetch,
 * failure and shutdown.  When a request reaches M distinct shares the KRK
 * is rebuilt, checked against its certificate, used, and wiped at once.
 *
 * Entry points: the cmd_recover_*, kmsd_cmd_escrow_rotate and
 * kmsd_cmd_archive_release handlers, kmsd_recovery_expire(), kmsd_recovery_abort_all().
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "archive/archive.h"
#include "kmsd/commands.h"

#define MAX_WHY ESC_MAX_WHY
#define MAX_SHARE_TEXT (64 * 1024)

/* What only memory holds about a request. */
struct kmsd_pending {
	char id[32];
	struct esc_share *shares;       /* given so far */
	size_t nshares;
	struct esc_recovered rec;       /* recovered keys, current first */
	char *share_dir;                /* rotation: where the new shares go */
	char *pass_dir;
	struct esc_share_dest dest;     /* rotation: those directories, opened for the requester at request time */
	int has_dest;
	struct kmsd_pending *next;
};

/* Our part of the process state: kmsd_state.rec (kmsd/state.c). */
#define E kmsd_state.rec

/* ---------------------------------------------------------------- memory */

static void
pending_wipe(struct kmsd_pending *p)
{
	esc_shares_free(p->shares, p->nshares);
	p->shares = NULL;
	p->nshares = 0;
	esc_recovered_free(&p->rec);
}

static struct kmsd_pending *
pending_find(const char *id, int create)
{
	struct kmsd_pending *p;

	for (p = E.pendings; p; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	if (!create)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	snprintf(p->id, sizeof(p->id), "%s", id);
	p->dest.dirfd = p->dest.passfd = -1;
	p->next = E.pendings;
	E.pendings = p;
	return p;
}

static void
pending_drop(const char *id)
{
	struct kmsd_pending **pp = &E.pendings;

	while (*pp) {
		if (strcmp((*pp)->id, id) == 0) {
			struct kmsd_pending *p = *pp;

			*pp = p->next;
			pending_wipe(p);
			free(p->share_dir);
			free(p->pass_dir);
			esc_share_dest_close(&p->dest);
			free(p);
			return;
		}
		pp = &(*pp)->next;
	}
}

/* ----------------------------------------------------------------- store */

static void
set_state(struct kms_store *st, const char *id, const char *state, const char *detail)
{
	if (esc_request_set_state(st, id, state, detail, time(NULL)) != 0)
		kms_log(KMS_LOG_ERR, "recovery %s: cannot record state %s: %s", id, state, kms_last_error());
}

/* ---------------------------------------------------------------- request */

/* Record a new request; a rotation's destination (NULL: kmsd's own share_dir) is taken over. */
static json_t *
open_request(struct kmsd_req *req, const char *purpose, const char *email, const char *why,
    const char *share_dir, const char *pass_dir, struct esc_share_dest *dest)
{
	const struct kms_config *cfg = req->env->cfg;
	struct esc_krk *krk = NULL;
	char id[ESC_REQUEST_ID_MAX], t[32];
	time_t now = time(NULL), expires = now + (time_t)cfg->escrow.request_ttl;
	int rc;
	json_t *reply;

	if ((rc = esc_store_current_krk(req->st, &krk)) != 0) {
		if (dest)
			esc_share_dest_close(dest);
		return rc == KMS_ERR_NOTFOUND ? kms_reply_error("bad_state", "escrow is not initialised (kmsctl init)") :
		    kmsd_reply_fail(rc);
	}
	{
		struct esc_request_new nr = { .purpose = purpose, .email = email, .why = why,
			.requester_uid = req->uid, .requester = req->user, .krk_id = krk->id, .now = now,
			.expires = expires, .share_dir = share_dir, .pass_dir = pass_dir };

		if ((rc = esc_request_open(req->st, &nr, id)) != 0) {
			esc_krk_free(krk);
			if (dest)
				esc_share_dest_close(dest);
			return kmsd_reply_fail(rc);
		}
	}
	if (share_dir) {
		struct kmsd_pending *p;

		pthread_mutex_lock(&E.lock);
		p = pending_find(id, 1);
		if (p) {
			p->share_dir = strdup(share_dir);
			p->pass_dir = pass_dir ? strdup(pass_dir) : NULL;
			if (dest) {
				p->dest = *dest;
				p->has_dest = 1;
				dest->dirfd = dest->passfd = -1;
			}
		}
		pthread_mutex_unlock(&E.lock);
		if (dest)
			esc_share_dest_close(dest);
	}
	snprintf(req->request_id, sizeof(req->request_id), "%s", id);
	snprintf(req->detail, sizeof(req->detail), "%s request; why: %.400s", purpose, why);
	reply = kms_reply_ok(json_pack("{s:s,s:s,s:s,s:s,s:I,s:s}", "id", id, "purpose", purpose, "email", email,
	    "expires", kms_time_format(expires, t, sizeof(t)), "threshold", (json_int_t)krk->threshold,
	    "state", "open"));
	esc_krk_free(krk);
	return reply;
}

json_t *
kmsd_cmd_recover_request(struct kmsd_req *req)
{
	static const char *const allowed[] = { "email", "why", "purpose", NULL };
	const char *email, *why, *purpose;
	json_t *reply = NULL;
	struct esc_entry *e = NULL;
	size_t n = 0;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	email = kmsd_arg_str(req, "email", 1, KMS_ADDR_MAX, &reply);
	why = kmsd_arg_str(req, "why", 1, MAX_WHY, &reply);
	purpose = kmsd_arg_str(req, "purpose", 0, 16, &reply);
	if (reply)
		return reply;
	kms_sanitize(email, KMS_ADDR_MAX, req->target, sizeof(req->target));
	if (purpose == NULL || *purpose == '\0')
		purpose = "key";
	if (strcmp(purpose, "key") != 0 && strcmp(purpose, "archive") != 0)
		return kms_reply_error("bad_args", "recover request: --purpose is key or archive");
	rc = esc_store_get_user(req->st, email, &e, &n);
	esc_entries_free(e, n);
	if (rc == KMS_ERR_NOTFOUND)
		return kms_reply_error("not_found", "recover request: no escrowed key for %s", req->target);
	if (rc != 0)
		return kmsd_reply_fail(rc);
	return open_request(req, purpose, email, why, NULL, NULL, NULL);
}

json_t *
kmsd_cmd_escrow_rotate(struct kmsd_req *req)
{
	static const char *const allowed[] = { "share_dir", "share_passphrase_dir", "why", NULL };
	const char *dir, *pdir, *why;
	json_t *reply = NULL;
	struct esc_share_dest dest = { -1, -1, 0, (uid_t)-1 };
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	dir = kmsd_arg_str(req, "share_dir", 0, 1024, &reply);
	pdir = kmsd_arg_str(req, "share_passphrase_dir", 0, 1024, &reply);
	why = kmsd_arg_str(req, "why", 0, MAX_WHY, &reply);
	if (reply)
		return reply;
	if ((dir && dir[0] != '/') || (pdir && pdir[0] != '/'))
		return kms_reply_error("bad_args", "escrow rotate: directories must be absolute paths");
	snprintf(req->target, sizeof(req->target), "key-recovery key");
	/* The requester's directories are checked now; the files are written there when officers approve. */
	if (dir && *dir && (rc = esc_share_dest_open(dir, pdir, req->uid, geteuid() == 0 ? (uid_t)-1 : geteuid(),
	    &dest)) != 0)
		return kmsd_reply_fail(rc);
	return open_request(req, "rotate", "", why && *why ? why : "KRK rotation",
	    dir && *dir ? dir : req->env->cfg->escrow.share_dir, pdir && *pdir ? pdir : NULL,
	    dir && *dir ? &dest : NULL);
}

/* ---------------------------------------------------------------- approve */

/* Rotation: a new KRK and shares; every envelope re-wrapped in one transaction. */
static int
rotate(struct kmsd_req *req, EVP_PKEY *old_krk, const struct esc_krk *old, struct kmsd_pending *p,
    char *summary, size_t sumlen)
{
	const struct kms_config *cfg = req->env->cfg;
	struct esc_rotate_req rr = { .key_type = cfg->escrow.krk_key, .days = (int)cfg->ca.ca_validity_days,
		.crl_url = cfg->crl.url, .shares = (int)cfg->escrow.shares, .threshold = (int)cfg->escrow.threshold,
		.share_dir = p->share_dir, .pass_dir = p->pass_dir, .dest = p->has_dest ? &p->dest : NULL,
		.user = req->user, .now = time(NULL) };
	struct esc_rotate_result res;
	int rc;

	if ((rc = esc_krk_rotate(req->st, kmsd_ca(), &rr, old_krk, old, &res)) != 0)
		return rc;
	kmsd_krk_forget();
	snprintf(summary, sumlen, "new key-recovery key %.16s..., %zu escrowed keys re-wrapped, %d new shares in %s",
	    res.fingerprint, res.rewrapped, res.files.n, p->share_dir);
	esc_share_files_free(&res.files);
	return 0;
}

/* At M shares: rebuild, use, wipe.  Returns the reply. */
static json_t *
complete(struct kmsd_req *req, struct esc_request *rq, struct kmsd_pending *p)
{
	struct esc_krk *krk = NULL;
	EVP_PKEY *key = NULL;
	char officers[KMSD_PART_TEXT], summary[KMSD_PART_TEXT] = "";
	int rc, rotating = strcmp(rq->purpose, "rotate") == 0;

	esc_request_officers(rq, officers, sizeof(officers));
	if ((rc = esc_store_krk_by_id(req->st, rq->krk_id, &krk)) != 0)
		goto fail;
	if (rotating) {
		rc = esc_krk_rebuild(p->shares, p->nshares, krk->cert, &key);
	} else {
		/* The same recovery sequence as kmsctl recover --offline. */
		rc = esc_recover_keys(req->st, krk, p->shares, p->nshares, rq->email, &p->rec);
		if (rc == 0)
			snprintf(summary, sizeof(summary), "%zu key(s) of %s recovered into locked memory", p->rec.n,
			    rq->email);
	}
	/* The shares have done their job either way. */
	esc_shares_free(p->shares, p->nshares);
	p->shares = NULL;
	p->nshares = 0;
	if (rc == 0 && rotating)
		rc = rotate(req, key, krk, p, summary, sizeof(summary));
	EVP_PKEY_free(key);         /* the rebuilt KRK is gone from here on */
	key = NULL;
	if (rc != 0)
		goto fail;
	set_state(req->st, rq->id, rotating ? "done" : "approved", summary);
	snprintf(req->detail, sizeof(req->detail), "threshold reached; approved by %s; %s", officers, summary);
	kms_log(KMS_LOG_INFO, "recovery %s: %s", rq->id, summary);
	{
		json_t *r = json_pack("{s:s,s:s,s:I,s:I,s:s}", "id", rq->id, "state", rotating ? "done" : "approved",
		    "approvals", (json_int_t)rq->napprovals, "threshold", (json_int_t)krk->threshold, "summary", summary);

		esc_krk_free(krk);
		return kms_reply_ok(r);
	}
fail:
	{
		char why[KMSD_ERR_TEXT];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		set_state(req->st, rq->id, "failed", why);
		snprintf(req->detail, sizeof(req->detail), "approved by %s; failed: %s", officers, why);
	}
	pending_wipe(p);
	EVP_PKEY_free(key);
	esc_krk_free(krk);
	return kmsd_reply_fail(rc);
}

/*
 * May this share count for rq?  The request is open, the share belongs to
 * its KRK and is the one made at init (digest), and policy allows this
 * officer (never the requester, one share each).  *krk get1 on success.
 */
static int
approval_allowed(struct kmsd_req *req, const struct esc_request *rq, const struct esc_share *share,
    const struct esc_share_meta *meta, struct esc_krk **krk)
{
	struct pol_approval pa[ESC_MAX_APPROVALS];
	struct pol_request pr = { .requester = rq->requester_uid, .expires = rq->expires, .approvals = pa,
		.napprovals = rq->napprovals };
	char *digest = NULL;
	int rc;

	*krk = NULL;
	for (size_t i = 0; i < rq->napprovals; i++)
		pa[i] = (struct pol_approval){ .officer = rq->approvals[i].officer_uid,
			.share_index = rq->approvals[i].share_index };
	if ((rc = esc_store_krk_by_id(req->st, rq->krk_id, krk)) != 0)
		return rc;
	pr.threshold = (*krk)->threshold;
	if (strcmp(rq->state, "expired") == 0) {
		rc = kms_fail(KMS_ERR_EXPIRED, "request %s has expired", rq->id);
	} else if (strcmp(rq->state, "open") != 0) {
		rc = kms_fail(KMS_ERR_STATE, "request %s is %s: it takes no more approvals", rq->id, rq->state);
	} else if (strcmp(meta->krk_fingerprint, (*krk)->fingerprint) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "this share belongs to another key-recovery key (%.16s...), "
		    "not to the one of request %s (%.16s...)", meta->krk_fingerprint, rq->id, (*krk)->fingerprint);
	} else if ((digest = esc_share_digest(share)) == NULL) {
		rc = KMS_ERR_NOMEM;
	} else if (esc_store_check_share(req->st, (*krk)->id, share->index, digest) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "share %d does not match the share made for this key-recovery "
		    "key (edited or damaged file)", share->index);
	} else {
		rc = pol_approval_check(&pr, req->uid, share->index, time(NULL));
	}
	free(digest);
	if (rc != 0) {
		esc_krk_free(*krk);
		*krk = NULL;
	}
	return rc;
}

json_t *
kmsd_cmd_recover_approve(struct kmsd_req *req)
{
	static const char *const allowed[] = { "id", "share", "passphrase", NULL };
	const char *id, *text, *pass;
	json_t *reply = NULL;
	struct esc_request rq;
	struct esc_krk *krk = NULL;
	struct esc_share share = { 0 };
	struct esc_share_meta meta;
	struct kmsd_pending *p;
	char officers[KMSD_PART_TEXT];
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	id = kmsd_arg_str(req, "id", 1, 31, &reply);
	text = kmsd_arg_str(req, "share", 1, MAX_SHARE_TEXT, &reply);
	pass = kmsd_arg_str(req, "passphrase", 0, 1024, &reply);
	if (reply)
		return reply;
	kms_sanitize(id, 31, req->target, sizeof(req->target));
	snprintf(req->request_id, sizeof(req->request_id), "%s", req->target);
	/*
	 * The passphrase's key derivation is the costly step (bounded by
	 * esc_share_decode): it runs before the lock, so one officer's share
	 * never holds up the other requests.
	 */
	if ((rc = esc_share_decode(text, strlen(text), pass, &share, &meta)) != 0)
		return kmsd_reply_fail(rc);
	pthread_mutex_lock(&E.lock);
	if ((rc = esc_request_load(req->st, id, &rq)) != 0)
		goto fail;
	if ((rc = approval_allowed(req, &rq, &share, &meta, &krk)) != 0)
		goto fail;
	p = pending_find(rq.id, 1);
	if (p == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	{
		struct esc_share *ns = realloc(p->shares, (p->nshares + 1) * sizeof(*ns));

		if (ns == NULL) {
			rc = KMS_ERR_NOMEM;
			goto fail;
		}
		p->shares = ns;
		if ((rc = esc_request_add_approval(req->st, &rq, req->uid, req->user, share.index, time(NULL))) != 0)
			goto fail;
		p->shares[p->nshares++] = share;       /* the pending entry owns it now */
		memset(&share, 0, sizeof(share));
	}
	if ((int)rq.napprovals >= krk->threshold) {
		reply = complete(req, &rq, p);
		if (!json_is_true(json_object_get(reply, "ok")) || strcmp(rq.purpose, "rotate") == 0)
			pending_drop(rq.id);
	} else {
		esc_request_officers(&rq, officers, sizeof(officers));
		snprintf(req->detail, sizeof(req->detail), "share %d accepted (%zu of %d); approved so far by %s",
		    rq.approvals[rq.napprovals - 1].share_index, rq.napprovals, krk->threshold, officers);
		reply = kms_reply_ok(json_pack("{s:s,s:s,s:I,s:I}", "id", rq.id, "state", "open",
		    "approvals", (json_int_t)rq.napprovals, "threshold", (json_int_t)krk->threshold));
	}
	pthread_mutex_unlock(&E.lock);
	esc_krk_free(krk);
	return reply;
fail:
	pthread_mutex_unlock(&E.lock);
	esc_share_clear(&share);
	esc_krk_free(krk);
	return kmsd_reply_fail(rc);
}

/* ------------------------------------------------------ list, close, fetch */

/* One request as JSON, appended to the array arg. */
static int
request_json(void *arg, const struct esc_request_row *r)
{
	char c[32], e[32];
	json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s}", "id", r->id,
	    "purpose", r->purpose, "email", r->email, "why", r->why, "requester", r->requester,
	    "created", kms_time_format(r->created, c, sizeof(c)), "expires", kms_time_format(r->expires, e, sizeof(e)),
	    "state", r->state, "detail", r->detail, "threshold", (json_int_t)r->threshold,
	    "approvals", (json_int_t)r->napprovals, "officers", r->officers,
	    "share_dir", r->share_dir, "share_passphrase_dir", r->pass_dir);

	if (o == NULL || json_array_append_new(arg, o) != 0)
		return KMS_ERR_NOMEM;
	return 0;
}

json_t *
kmsd_cmd_recover_list(struct kmsd_req *req)
{
	static const char *const allowed[] = { "all", NULL };
	json_t *reply = NULL, *arr;
	int all, rc;

	if (kmsd_args_only(req, allowed, &reply) != 0 || kmsd_arg_bool(req, "all", 0, &all, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "requests");
	if ((arr = json_array()) == NULL)
		return kmsd_reply_fail(KMS_ERR_NOMEM);
	if ((rc = esc_request_list(req->st, all, time(NULL), request_json, arr)) != 0) {
		json_decref(arr);
		return kmsd_reply_fail(rc);
	}
	return kms_reply_ok(json_pack("{s:o}", "requests", arr));
}

json_t *
kmsd_cmd_recover_close(struct kmsd_req *req)
{
	static const char *const allowed[] = { "id", NULL };
	const char *id;
	json_t *reply = NULL;
	struct esc_request rq;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	id = kmsd_arg_str(req, "id", 1, 31, &reply);
	if (reply)
		return reply;
	kms_sanitize(id, 31, req->target, sizeof(req->target));
	snprintf(req->request_id, sizeof(req->request_id), "%s", req->target);
	pthread_mutex_lock(&E.lock);
	if ((rc = esc_request_load(req->st, id, &rq)) != 0) {
		pthread_mutex_unlock(&E.lock);
		return kmsd_reply_fail(rc);
	}
	if (rq.requester_uid != req->uid && !(req->roles & POL_ROLE_ADMIN)) {
		pthread_mutex_unlock(&E.lock);
		return kms_reply_error("forbidden", "request %s belongs to %s: only they or an admin may close it",
		    rq.id, rq.requester);
	}
	if (strcmp(rq.state, "open") != 0 && strcmp(rq.state, "approved") != 0) {
		pthread_mutex_unlock(&E.lock);
		return kms_reply_error("bad_state", "request %s is already %s", rq.id, rq.state);
	}
	pending_drop(rq.id);
	rc = esc_request_set_state(req->st, rq.id, "closed", "closed by its owner", time(NULL));
	pthread_mutex_unlock(&E.lock);
	if (rc != 0)
		return kmsd_reply_fail(rc);
	snprintf(req->detail, sizeof(req->detail), "closed; recovered keys wiped");
	return kms_reply_ok(json_pack("{s:s,s:s}", "id", rq.id, "state", "closed"));
}

/* Load a request that the caller may use for its purpose; lock held on success. */
static int
usable_request(struct kmsd_req *req, const char *id, const char *purpose, struct esc_request *rq, struct kmsd_pending **p)
{
	int rc;

	pthread_mutex_lock(&E.lock);
	if ((rc = esc_request_load(req->st, id, rq)) != 0)
		goto fail;
	if (rq->requester_uid != req->uid) {
		rc = kms_fail(KMS_ERR_PERM, "request %s belongs to %s: only the requester may use it", rq->id, rq->requester);
		goto fail;
	}
	if (strcmp(rq->purpose, purpose) != 0) {
		rc = kms_fail(KMS_ERR_STATE, "request %s is a %s request, not %s", rq->id, rq->purpose,
		    strcmp(purpose, "key") == 0 ? "a key recovery (recover fetch)" : "an archive request");
		goto fail;
	}
	if (time(NULL) >= rq->expires && strcmp(rq->state, "approved") == 0) {
		pending_drop(rq->id);
		set_state(req->st, rq->id, "expired", NULL);
		snprintf(rq->state, sizeof(rq->state), "expired");
	}
	if (strcmp(rq->state, "approved") != 0) {
		rc = kms_fail(strcmp(rq->state, "expired") == 0 ? KMS_ERR_EXPIRED : KMS_ERR_STATE,
		    "request %s is %s%s", rq->id, rq->state,
		    strcmp(rq->state, "open") == 0 ? " (waiting for officer approvals)" :
		    strcmp(rq->state, "fetched") == 0 ? " (its keys were already fetched once)" : "");
		goto fail;
	}
	*p = pending_find(rq->id, 0);
	if (*p == NULL || (*p)->rec.n == 0) {
		set_state(req->st, rq->id, "failed", "recovered keys lost (kmsd restarted)");
		rc = kms_fail(KMS_ERR_STATE, "request %s has lost its recovered keys (kmsd restarted): open a new one", rq->id);
		goto fail;
	}
	return 0;
fail:
	pthread_mutex_unlock(&E.lock);
	return rc;
}

json_t *
kmsd_cmd_recover_fetch(struct kmsd_req *req)
{
	static const char *const allowed[] = { "id", "password", NULL };
	const struct ca *ca = kmsd_ca();
	const char *id, *password;
	json_t *reply = NULL, *res = NULL;
	struct esc_request rq;
	struct kmsd_pending *p;
	char officers[KMSD_PART_TEXT];
	size_t nkeys = 0;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	id = kmsd_arg_str(req, "id", 1, 31, &reply);
	password = kmsd_arg_str(req, "password", 0, 1024, &reply);
	if (reply)
		return reply;
	kms_sanitize(id, 31, req->target, sizeof(req->target));
	snprintf(req->request_id, sizeof(req->request_id), "%s", req->target);
	if (password && strlen(password) < 8)
		return kms_reply_error("bad_args", "recover fetch: the password must have at least 8 characters");
	if ((rc = usable_request(req, id, "key", &rq, &p)) != 0)
		return kmsd_reply_fail(rc);
	nkeys = p->rec.n;
	res = json_pack("{s:s,s:s,s:I}", "id", rq.id, "email", rq.email, "keys", (json_int_t)nkeys);
	if (res == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	if ((rc = kmsd_p12_recovered_into(res, &p->rec, rq.email, ca ? ca->cert : NULL, password,
	    req->env->cfg)) != 0)
		goto fail;
	/* Given once: the keys leave memory now. */
	pending_drop(rq.id);
	set_state(req->st, rq.id, "fetched", NULL);
	esc_request_officers(&rq, officers, sizeof(officers));
	snprintf(req->detail, sizeof(req->detail), "%zu key(s) of %s handed over as PKCS#12; approved by %s",
	    nkeys, rq.email, officers);
	pthread_mutex_unlock(&E.lock);
	reply = kms_reply_ok(res);
	res = NULL;
	goto out;
fail:
	pthread_mutex_unlock(&E.lock);
	reply = kmsd_reply_fail(rc);
out:
	json_decref(res);
	return reply;
}

/* ---------------------------------------------------------------- release */

#define MAX_RELEASE_BATCH 256
#define MAX_RELEASE_THREADS 8

/* One key release of a batch: what came in, what came out. */
struct release {
	json_t *item;
	unsigned char *cek;         /* secure heap */
	size_t ceklen, which;
	int rc;
	char err[KMSD_ERR_TEXT];
};

struct release_work {
	struct release *r;
	size_t n, next;
	pthread_mutex_t lock;
	EVP_PKEY **keys;
	X509 **certs;
	size_t nkeys;
};

static void
release_compute(struct release_work *w, struct release *r)
{
	const char *ri64 = json_string_value(json_object_get(r->item, "recipient_info"));
	const char *msgid = json_string_value(json_object_get(r->item, "message_id"));
	const char *date = json_string_value(json_object_get(r->item, "date"));
	unsigned char *ri = NULL;
	size_t rilen = 0;

	if (!json_is_object(r->item) || ri64 == NULL || strlen(ri64) > 64 * 1024 ||
	    (msgid && strlen(msgid) > 998) || (date && strlen(date) > 200)) {
		r->rc = kms_fail(KMS_ERR_INVALID, "each item is {recipient_info: base64, message_id, date}");
	} else if ((r->rc = kms_b64_decode(ri64, strlen(ri64), &ri, &rilen)) == 0) {
		r->rc = esc_release_cek(ri, rilen, w->keys, w->certs, w->nkeys, &r->cek, &r->ceklen, &r->which);
	}
	if (r->rc != 0)
		snprintf(r->err, sizeof(r->err), "%s", kms_last_error()[0] ? kms_last_error() : kms_strerror(r->rc));
	free(ri);
}

/* Worker: take the next unclaimed release until none is left. */
static void *
release_worker(void *arg)
{
	struct release_work *w = arg;

	for (;;) {
		size_t i;

		pthread_mutex_lock(&w->lock);
		i = w->next++;
		pthread_mutex_unlock(&w->lock);
		if (i >= w->n)
			return NULL;
		release_compute(w, &w->r[i]);
	}
}

/* The private-key work of a batch, spread over the CPUs. */
static void
release_all(struct release_work *w)
{
	pthread_t t[MAX_RELEASE_THREADS];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	size_t nt = ncpu > 1 ? (size_t)ncpu : 1, started = 0;

	if (nt > MAX_RELEASE_THREADS)
		nt = MAX_RELEASE_THREADS;
	if (nt > w->n)
		nt = w->n;
	for (size_t i = 1; i < nt; i++)
		if (pthread_create(&t[started], NULL, release_worker, w) == 0)
			started++;
	release_worker(w);
	for (size_t i = 0; i < started; i++)
		pthread_join(t[i], NULL);
}

/* Audit one release (in the batch's transaction) and describe it for the reply. */
static json_t *
release_record(struct kmsd_req *req, struct esc_request *rq, struct release_work *w, struct release *r, int *released)
{
	const char *msgid = json_string_value(json_object_get(r->item, "message_id"));
	const char *date = json_string_value(json_object_get(r->item, "date"));
	char cm[KMSD_MSGID_TEXT], cd[KMSD_DATE_TEXT], detail[KMSD_PART_TEXT], *serial = NULL, *cek64 = NULL;
	struct kms_audit_rec rec = { .time = time(NULL), .uid = req->uid, .user = req->user, .role = req->role,
		.cmd = "archive.release", .target = cm, .request_id = rq->id, .detail = detail };
	json_t *res;
	int rc = r->rc;

	kms_sanitize(msgid && *msgid ? msgid : "(no Message-ID)", 998, cm, sizeof(cm));
	kms_sanitize(date ? date : "", 100, cd, sizeof(cd));
	if (rc == 0) {
		serial = ca_serial_hex(X509_get0_serialNumber(w->certs[r->which]));
		cek64 = kms_b64_encode(r->cek, r->ceklen);
		if (serial == NULL || cek64 == NULL) {
			rc = KMS_ERR_NOMEM;
			snprintf(r->err, sizeof(r->err), "out of memory");
		}
	}
	if (rc == 0) {
		snprintf(detail, sizeof(detail), "key release: %s's key %s; message date %s", rq->email, serial, cd);
		rec.outcome = "ok";
		if ((rc = kms_audit_append(req->st, &rec)) != 0)
			snprintf(r->err, sizeof(r->err), "cannot audit the release");
	}
	if (rc == 0) {
		res = json_pack("{s:b,s:s,s:s}", "ok", 1, "cek", cek64, "key_serial", serial);
		(*released)++;
	} else {
		snprintf(detail, sizeof(detail), "no key released: %.300s", r->err);
		rec.outcome = kms_err_code_name(rc);
		kms_audit_append(req->st, &rec);
		res = json_pack("{s:b,s:s,s:s}", "ok", 0, "code", kms_err_code_name(rc), "message", r->err);
	}
	if (cek64) {
		kms_wipe(cek64, strlen(cek64));
		free(cek64);
	}
	free(serial);
	return res;
}

/*
 * Release the content-encryption keys of a batch of messages.  The RSA or
 * ECDH work runs on every CPU without holding the request lock or a
 * transaction; then, with the request checked again, each release gets
 * its own audit row (request, Message-ID, date, key) in one transaction,
 * and only what was audited is answered.
 */
json_t *
kmsd_cmd_archive_release(struct kmsd_req *req)
{
	static const char *const allowed[] = { "id", "items", NULL };
	const char *id;
	json_t *reply = NULL, *items, *results = NULL, *item;
	struct esc_request rq;
	struct kmsd_pending *p;
	struct release_work w = { .lock = PTHREAD_MUTEX_INITIALIZER };
	size_t i;
	int rc, released = 0;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	id = kmsd_arg_str(req, "id", 1, 31, &reply);
	if (reply)
		return reply;
	items = json_object_get(req->args, "items");
	if (!json_is_array(items) || json_array_size(items) == 0 || json_array_size(items) > MAX_RELEASE_BATCH)
		return kms_reply_error("bad_args", "archive release: items must be an array of 1 to %d RecipientInfos",
		    MAX_RELEASE_BATCH);
	kms_sanitize(id, 31, req->request_id, sizeof(req->request_id));
	snprintf(req->target, sizeof(req->target), "%zu message(s)", json_array_size(items));
	if ((rc = usable_request(req, id, "archive", &rq, &p)) != 0)
		return kmsd_reply_fail(rc);
	/* Our own references to the keys, so that the lock can go during the work. */
	w.nkeys = p->rec.n;
	w.keys = calloc(w.nkeys, sizeof(*w.keys));
	w.certs = calloc(w.nkeys, sizeof(*w.certs));
	w.n = json_array_size(items);
	w.r = calloc(w.n, sizeof(*w.r));
	if (w.keys == NULL || w.certs == NULL || w.r == NULL) {
		pthread_mutex_unlock(&E.lock);
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	for (i = 0; i < w.nkeys; i++) {
		EVP_PKEY_up_ref(p->rec.keys[i]);
		w.keys[i] = p->rec.keys[i];
		X509_up_ref(p->rec.certs[i]);
		w.certs[i] = p->rec.certs[i];
	}
	pthread_mutex_unlock(&E.lock);
	json_array_foreach(items, i, item)
		w.r[i].item = item;
	release_all(&w);

	/* Still usable?  A close or expiry during the work releases nothing. */
	if ((rc = usable_request(req, id, "archive", &rq, &p)) != 0)
		goto fail;
	if ((rc = kms_store_begin(req->st)) != 0) {
		pthread_mutex_unlock(&E.lock);
		goto fail;
	}
	results = json_array();
	for (i = 0; i < w.n; i++)
		json_array_append_new(results, release_record(req, &rq, &w, &w.r[i], &released));
	pthread_mutex_unlock(&E.lock);
	if ((rc = kms_store_commit(req->st)) != 0)
		goto fail;
	snprintf(req->detail, sizeof(req->detail), "%d of %zu key release(s) for %s", released, w.n, rq.email);
	reply = kms_reply_ok(json_pack("{s:o,s:s}", "results", results, "email", rq.email));
	results = NULL;
	goto out;
fail:
	reply = kmsd_reply_fail(rc);
out:
	/* Unaudited keys never leave: scrub what is not in the reply. */
	json_decref(results);
	for (i = 0; w.r && i < w.n; i++)
		if (w.r[i].cek)
			OPENSSL_secure_clear_free(w.r[i].cek, w.r[i].ceklen);
	for (i = 0; i < w.nkeys; i++) {
		if (w.keys)
			EVP_PKEY_free(w.keys[i]);
		if (w.certs)
			X509_free(w.certs[i]);
	}
	free(w.keys);
	free(w.certs);
	free(w.r);
	pthread_mutex_destroy(&w.lock);
	return reply;
}

/* ----------------------------------------------------------------- timers */

/* Requests expired per timer tick at most; the rest wait for the next tick. */
#define EXPIRE_BATCH 64

void
kmsd_recovery_expire(struct kms_store *st, time_t now)
{
	char ids[EXPIRE_BATCH][ESC_REQUEST_ID_MAX];
	int n = 0;

	if (esc_request_due(st, now, ids, EXPIRE_BATCH, &n) != 0)
		return;
	for (int i = 0; i < n; i++) {
		pthread_mutex_lock(&E.lock);
		pending_drop(ids[i]);
		set_state(st, ids[i], "expired", NULL);
		pthread_mutex_unlock(&E.lock);
		kms_log(KMS_LOG_INFO, "recovery %s expired: shares and recovered keys wiped", ids[i]);
	}
}

void
kmsd_recovery_abort_all(struct kms_store *st, const char *why)
{
	int had;

	pthread_mutex_lock(&E.lock);
	had = E.pendings != NULL;
	while (E.pendings)
		pending_drop(E.pendings->id);
	if (st && esc_request_fail_open(st, "kmsd stopped: shares and recovered keys were only in memory",
	    time(NULL)) != 0)
		kms_log(KMS_LOG_ERR, "recovery requests: cannot mark them failed: %s", kms_last_error());
	pthread_mutex_unlock(&E.lock);
	if (why && had)
		kms_log(KMS_LOG_INFO, "recovery requests: %s", why);
}
