/*
 * rights.c - the role each control command needs.  One table: adding a
 * command without naming its role is impossible, and an unknown command is
 * refused before anything runs.
 */
#include "config.h"

#include <string.h>

#include "policy/policy.h"

#define ADM POL_ROLE_ADMIN
#define OFF POL_ROLE_OFFICER
#define CMP POL_ROLE_COMPLIANCE
#define AUD POL_ROLE_AUDITOR

static const struct pol_cmd commands[] = {
	{ "status",          POL_ROLE_ANY,    0 },
	{ "init",            ADM,             1 },
	{ "enroll",          ADM,             1 },
	{ "issue",           ADM,             1 },
	{ "list",            ADM | AUD | CMP, 0 },
	{ "show",            ADM | AUD | CMP, 0 },
	{ "revoke",          ADM,             1 },
	{ "crl",             ADM,             1 },
	{ "crl.list_external", ADM | AUD,     0 },
	{ "recover.request", ADM | CMP,       1 },
	{ "recover.approve", OFF,             1 },
	{ "recover.list",    POL_ROLE_ANY,    0 },
	{ "recover.close",   ADM | CMP,       1 },
	{ "recover.fetch",   ADM | CMP,       1 },
	{ "escrow.rotate",   ADM,             1 },
	{ "archive.release", ADM | CMP,       1 },
	{ "audit",           AUD,             0 },
	{ "audit.verify",    AUD,             0 },
	{ "publish.status",  ADM | AUD,       0 },
	{ "publish.resync",  ADM,             1 },
	{ "cert",            POL_ROLE_ANY,    0 },
};

const struct pol_cmd *
pol_cmd_find(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

const char *
pol_role_name(unsigned role)
{
	switch (role) {
	case POL_ROLE_ADMIN: return "admin";
	case POL_ROLE_OFFICER: return "officer";
	case POL_ROLE_COMPLIANCE: return "compliance";
	case POL_ROLE_AUDITOR: return "auditor";
	default: return "";
	}
}

int
pol_authorize(const struct pol_cmd *cmd, unsigned roles, const char **role_used)
{
	/* The role a command runs under: the first the peer holds, in this order. */
	static const unsigned order[] = { POL_ROLE_ADMIN, POL_ROLE_OFFICER, POL_ROLE_COMPLIANCE, POL_ROLE_AUDITOR };

	*role_used = "";
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		if ((cmd->roles & order[i]) && (roles & order[i])) {
			*role_used = pol_role_name(order[i]);
			return 0;
		}
	}
	return KMS_ERR_PERM;
}
