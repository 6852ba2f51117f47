/*
 * ctl_audit.c - kmsctl audit [--since TIME] and kmsctl audit verify.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"

static void
print_rows(json_t *r)
{
	json_t *row;
	size_t i;

	if (json_is_true(json_object_get(r, "truncated")))
		printf("(older rows left out: use --since)\n");
	json_array_foreach(json_object_get(r, "rows"), i, row) {
		printf("%6lld %s %s(uid %lld) %s%s%s %s -> %s", (long long)json_integer_value(json_object_get(row, "seq")),
		    ctl_str(row, "time"), ctl_str(row, "user"), (long long)json_integer_value(json_object_get(row, "uid")),
		    ctl_str(row, "role")[0] ? "as " : "", ctl_str(row, "role"), ctl_str(row, "role")[0] ? ": " : ": ",
		    ctl_str(row, "cmd"), ctl_str(row, "outcome"));
		if (ctl_str(row, "target")[0])
			printf(" [%s]", ctl_str(row, "target"));
		if (json_object_get(row, "request_id"))
			printf(" request=%s", ctl_str(row, "request_id"));
		if (json_object_get(row, "detail"))
			printf(" (%s)", ctl_str(row, "detail"));
		putchar('\n');
	}
}

static long long
num(json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

static void
print_verified(json_t *r)
{
	printf("audit trail intact: %lld rows, hash chain verified\n", num(r, "rows"));
	if (num(r, "checkpoints") > 0)
		printf("%lld signed checkpoints verified; last signed row %lld (%s); %lld rows after it not signed yet\n",
		    num(r, "checkpoints"), num(r, "signed_row"), ctl_str(r, "signed_time"), num(r, "unsigned_rows"));
	else
		printf("no signed checkpoint yet: %lld rows not signed\n", num(r, "unsigned_rows"));
}

int
ctl_cmd_audit(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "since", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	const char *since = NULL;
	json_t *reply, *args;
	int c, human, rc, verify = 0;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 's')
			return CTL_ERR_USAGE;
		since = optarg;
	}
	if (optind < argc && strcmp(argv[optind], "verify") == 0) {
		verify = 1;
		optind++;
	}
	if (optind < argc || (verify && since))
		return ctl_usage_error("audit: use \"audit [--since TIME]\" or \"audit verify\"");
	args = json_object();
	if (since)
		json_object_set_new(args, "since", json_string(since));
	reply = ctl_call(ctl, verify ? "audit.verify" : "audit", args);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	rc = ctl_finish(ctl, reply, &human);
	if (human && verify)
		print_verified(json_object_get(reply, "result"));
	else if (human)
		print_rows(json_object_get(reply, "result"));
	json_decref(reply);
	return rc;
}
