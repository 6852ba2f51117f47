/*
 * ctl_publish.c - kmsctl publish status|resync (the LDAP directory) and
 * kmsctl cert EMAIL [--out FILE] (a user's current certificates).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"

void
ctl_print_ldap(json_t *l)
{
	const char *err;

	if (l == NULL)
		return;
	if (!json_is_true(json_object_get(l, "enabled"))) {
		printf("Directory: not configured ([ldap] uri)\n");
		return;
	}
	printf("Directory: %s (%s), %s, %lld queued%s%s\n", ctl_str(l, "uri"), ctl_str(l, "base_dn"),
	    ctl_str(l, "state"), (long long)json_integer_value(json_object_get(l, "queue")),
	    json_object_get(l, "oldest_queued") ? " since " : "", ctl_str(l, "oldest_queued"));
	printf("           last success %s, %lld entries written since start\n",
	    json_object_get(l, "last_success") ? ctl_str(l, "last_success") : "never",
	    (long long)json_integer_value(json_object_get(l, "delivered")));
	err = ctl_str(l, "last_error");
	if (err[0])
		printf("           last error %s: %s%s%s\n", ctl_str(l, "last_error_time"), err,
		    json_object_get(l, "next_retry") ? "; next try " : "", ctl_str(l, "next_retry"));
}

static void
print_status(json_t *r)
{
	ctl_print_ldap(json_object_get(r, "ldap"));
}

static void
print_resync(json_t *r)
{
	printf("%lld entries queued for rewriting\n", (long long)json_integer_value(json_object_get(r, "queued")));
}

int
ctl_cmd_publish(struct ctl *ctl, int argc, char **argv)
{
	if (argc != 2)
		return ctl_usage_error("publish: use \"publish status\" or \"publish resync\"");
	if (strcmp(argv[1], "status") == 0)
		return ctl_run(ctl, "publish.status", NULL, print_status);
	if (strcmp(argv[1], "resync") == 0)
		return ctl_run(ctl, "publish.resync", NULL, print_resync);
	return ctl_usage_error("publish: unknown subcommand \"%s\"", argv[1]);
}

/* The encryption certificate is what a correspondent needs; signing-only users get that one. */
static const char *
cert_pem(json_t *result)
{
	const char *pem = ctl_str(result, "encryption");

	return pem[0] != '\0' ? pem : ctl_str(result, "signing");
}

int
ctl_cmd_cert(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = NULL, *email, *pem;
	json_t *reply;
	int c, human, rc, fd = -1, werr;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("cert: give one address (cert EMAIL [--out FILE])");
	email = argv[optind];
	if (out && (fd = ctl_reserve_output(out, 0644)) < 0)
		return CTL_ERR_USAGE;
	reply = ctl_call_to_file(ctl, "cert", json_pack("{s:s}", "email", email), fd, out, cert_pem, &werr);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	if (werr) {
		json_decref(reply);
		return CTL_ERR_REPLY;
	}
	pem = cert_pem(json_object_get(reply, "result"));
	rc = ctl_finish(ctl, reply, &human);
	if (human) {
		if (out)
			printf("certificate of %s written to %s\n", email, out);
		else
			fputs(pem, stdout);
	}
	json_decref(reply);
	return rc;
}
