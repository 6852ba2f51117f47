/*
 * roles.c - who the control socket's peer is.  [roles] lists user names,
 * numeric uids and @group names; they are resolved when the config is
 * loaded (an unknown name is a config error), and a peer's roles come from
 * its uid, its user name and every group it belongs to.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy/policy.h"

#define MAX_GROUPS 256

struct role_set {
	uid_t *uids;
	size_t nuids;
	gid_t *gids;
	size_t ngids;
};

struct pol_roles {
	struct role_set set[4];     /* admin, officer, compliance, auditor */
};

static int
add_uid(struct role_set *rs, unsigned long v)
{
	uid_t *n = realloc(rs->uids, (rs->nuids + 1) * sizeof(*n));

	if (n == NULL)
		return KMS_ERR_NOMEM;
	n[rs->nuids++] = (uid_t)v;
	rs->uids = n;
	return 0;
}

static int
add_gid(struct role_set *rs, unsigned long v)
{
	gid_t *n = realloc(rs->gids, (rs->ngids + 1) * sizeof(*n));

	if (n == NULL)
		return KMS_ERR_NOMEM;
	n[rs->ngids++] = (gid_t)v;
	rs->gids = n;
	return 0;
}

static int
all_digits(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return 0;
	return 1;
}

static int
compile_one(const char *role, const char *list, uid_t self, struct role_set *rs)
{
	char **items = kms_split_list(list);
	int rc = 0;

	if (items == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; items[i] && rc == 0; i++) {
		const char *it = items[i];

		if (it[0] == '@') {
			struct group *gr = getgrnam(it + 1);

			if (all_digits(it + 1))
				rc = add_gid(rs, strtoul(it + 1, NULL, 10));
			else if (gr == NULL)
				rc = kms_fail(KMS_ERR_CONFIG, "[roles] %s: no such group \"%.64s\"", role, it + 1);
			else
				rc = add_gid(rs, gr->gr_gid);
		} else if (strcmp(it, "self") == 0) {
			rc = add_uid(rs, self);
		} else if (all_digits(it)) {
			rc = add_uid(rs, strtoul(it, NULL, 10));
		} else {
			struct passwd *pw = getpwnam(it);

			if (pw == NULL)
				rc = kms_fail(KMS_ERR_CONFIG, "[roles] %s: no such user \"%.64s\"", role, it);
			else
				rc = add_uid(rs, pw->pw_uid);
		}
	}
	kms_strv_free(items);
	return rc;
}

void
pol_roles_free(struct pol_roles *r)
{
	if (r == NULL)
		return;
	for (int i = 0; i < 4; i++) {
		free(r->set[i].uids);
		free(r->set[i].gids);
	}
	free(r);
}

int
pol_roles_compile(const struct kms_config *cfg, uid_t self, struct pol_roles **out)
{
	struct pol_roles *r;
	const char *lists[4] = { cfg->roles.admin, cfg->roles.officer, cfg->roles.compliance, cfg->roles.auditor };
	static const char *names[4] = { "admin", "officer", "compliance", "auditor" };
	int rc;

	*out = NULL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return KMS_ERR_NOMEM;
	for (int i = 0; i < 4; i++) {
		if ((rc = compile_one(names[i], lists[i], self, &r->set[i])) != 0) {
			pol_roles_free(r);
			return rc;
		}
	}
	*out = r;
	return 0;
}

static int
has_uid(const struct role_set *rs, uid_t uid)
{
	for (size_t i = 0; i < rs->nuids; i++)
		if (rs->uids[i] == uid)
			return 1;
	return 0;
}

static int
has_gid(const struct role_set *rs, const gid_t *gids, int ngids)
{
	for (size_t i = 0; i < rs->ngids; i++)
		for (int j = 0; j < ngids; j++)
			if (rs->gids[i] == gids[j])
				return 1;
	return 0;
}

unsigned
pol_roles_of(const struct pol_roles *r, uid_t uid, gid_t gid)
{
	gid_t groups[MAX_GROUPS];
	int ngroups = 1;
	unsigned roles = 0;
	struct passwd pw, *pwp = NULL;
	char buf[4096];

	groups[0] = gid;
	/* Supplementary groups of the peer's user, as the system knows them now. */
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp) == 0 && pwp != NULL) {
		int n = MAX_GROUPS - 1;

		if (getgrouplist(pw.pw_name, pw.pw_gid, groups + 1, &n) >= 0)
			ngroups = 1 + n;
	}
	for (int i = 0; i < 4; i++)
		if (has_uid(&r->set[i], uid) || has_gid(&r->set[i], groups, ngroups))
			roles |= 1u << i;
	return roles;
}
