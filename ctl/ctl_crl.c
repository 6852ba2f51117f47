/*
 * ctl_crl.c - kmsctl revoke, kmsctl crl (the current CRL), and kmsctl crl
 * fetch (a client-side replica of a published CRL for offline checking).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ca/ca.h"
#include "ctl/ctl.h"

static void
print_revoke(json_t *r)
{
	json_t *v;
	size_t i;

	json_array_foreach(json_object_get(r, "revoked"), i, v)
		printf("revoked %s (%s)\n", json_string_value(v), ctl_str(r, "reason"));
	json_array_foreach(json_object_get(r, "already_revoked"), i, v)
		printf("already revoked %s on %s (%s); nothing changed\n", ctl_str(v, "serial"), ctl_str(v, "revoked_at"),
		    ctl_str(v, "reason"));
	if (json_array_size(json_object_get(r, "revoked")) == 0 && json_array_size(json_object_get(r, "already_revoked")) == 0)
		printf("%s has no valid certificate to revoke\n", ctl_str(r, "target"));
	else if (json_array_size(json_object_get(r, "revoked")) > 0)
		printf("a new CRL has been signed and published\n");
}

int
ctl_cmd_revoke(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "reason", required_argument, NULL, 'r' },
		{ "invalidity-date", required_argument, NULL, 'i' },
		{ NULL, 0, NULL, 0 },
	};
	const char *reason = NULL, *inv = NULL;
	json_t *args, *reply;
	int c, human, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'r': reason = optarg; break;
		case 'i': inv = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("revoke: give one address or serial");
	if (reason && ca_reason_from_name(reason) < 0)
		return ctl_usage_error("revoke: unknown reason \"%s\" (keyCompromise, affiliationChanged, superseded, "
		    "cessationOfOperation, ...)", reason);
	args = json_pack("{s:s}", "target", argv[optind]);
	if (reason)
		json_object_set_new(args, "reason", json_string(reason));
	if (inv)
		json_object_set_new(args, "invalidity_date", json_string(inv));
	reply = ctl_call(ctl, "revoke", args);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	rc = ctl_finish(ctl, reply, &human);
	if (human)
		print_revoke(json_object_get(reply, "result"));
	json_decref(reply);
	return rc;
}

static int
crl_fetch(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ca", required_argument, NULL, 'c' },
		{ "out", required_argument, NULL, 'o' },
		{ "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cafile = NULL, *outdir = NULL;
	STACK_OF(X509) *cas = NULL;
	long timeout = 30;
	long long number = -1;
	char name[256];
	int c, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c': cafile = optarg; break;
		case 'o': outdir = optarg; break;
		case 't': timeout = strtol(optarg, NULL, 10); break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1 || cafile == NULL || outdir == NULL)
		return ctl_usage_error("crl fetch: give the URL, --ca CAFILE and --out DIR");
	if (timeout < 1 || timeout > 600)
		return ctl_usage_error("crl fetch: --timeout is 1 to 600 seconds");
	if (ca_crl_load_cas(cafile, &cas) != 0)
		return ctl_fail(CTL_ERR_USAGE, "crl fetch: cannot read the CA certificates");
	if (ca_crl_file_name(argv[optind], name, sizeof(name)) != 0)
		snprintf(name, sizeof(name), "crl");
	rc = ca_crl_fetch_to_dir(argv[optind], cas, outdir, (int)timeout, &number);
	sk_X509_pop_free(cas, X509_free);
	if (rc != 0) {
		fprintf(stderr, "kmsctl: crl fetch: %s; the previous copy in %s (if any) is kept\n", kms_last_error(), outdir);
		return CTL_ERR_REPLY;
	}
	printf("CRL number %lld from %s checked against %s and saved in %s as %s\n", number, argv[optind], cafile,
	    outdir, name);
	return CTL_OK;
}

/* kmsctl crl list-external: one block per distribution point kmsd follows. */
static int
crl_list_external(struct ctl *ctl, int argc, char **argv)
{
	json_t *reply, *arr;
	int rc, human;

	(void)argv;
	if (argc > 1)
		return ctl_usage_error("crl list-external takes no arguments");
	if ((reply = ctl_call(ctl, "crl.list_external", json_object())) == NULL)
		return CTL_ERR_USAGE;
	rc = ctl_finish(ctl, reply, &human);
	arr = json_object_get(json_object_get(reply, "result"), "crls");
	if (human && json_array_size(arr) == 0)
		printf("no external CRL followed yet\n");
	for (size_t i = 0; human && i < json_array_size(arr); i++) {
		json_t *e = json_array_get(arr, i);
		const char *err = ctl_str(e, "error");

		printf("%s\n  issuer: %s\n", ctl_str(e, "url"), ctl_str(e, "issuer"));
		if (json_is_true(json_object_get(e, "delta")) && json_integer_value(json_object_get(e, "delta_base")) >= 0)
			printf("  delta CRL on base CRL %lld\n", (long long)json_integer_value(json_object_get(e, "delta_base")));
		else if (json_is_true(json_object_get(e, "delta")))
			printf("  delta CRL (Freshest CRL)\n");
		if (json_is_true(json_object_get(e, "have_copy")))
			printf("  thisUpdate: %s  nextUpdate: %s  entries: %lld  number: %lld\n", ctl_str(e, "this_update"),
			    ctl_str(e, "next_update"), (long long)json_integer_value(json_object_get(e, "entries")),
			    (long long)json_integer_value(json_object_get(e, "number")));
		else
			printf("  no good copy yet\n");
		printf("  last attempt: %s  last success: %s  next fetch: %s\n", ctl_str(e, "last_attempt")[0] ?
		    ctl_str(e, "last_attempt") : "-", ctl_str(e, "last_success")[0] ? ctl_str(e, "last_success") : "-",
		    ctl_str(e, "next_fetch"));
		printf("  last error: %s\n", err[0] ? err : "none");
	}
	json_decref(reply);
	return rc;
}

static const char *
crl_pem(json_t *result)
{
	return ctl_str(result, "pem");
}

int
ctl_cmd_crl(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "new", no_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = NULL;
	json_t *reply, *r;
	int c, human, rc, fresh = 0, fd = -1, werr;

	if (argc > 1 && strcmp(argv[1], "fetch") == 0)
		return crl_fetch(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "list-external") == 0)
		return crl_list_external(ctl, argc - 1, argv + 1);
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 'n': fresh = 1; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind < argc)
		return ctl_usage_error("crl: unexpected argument \"%s\"", argv[optind]);
	if (out && (fd = ctl_reserve_output(out, 0644)) < 0)
		return CTL_ERR_USAGE;
	reply = ctl_call_to_file(ctl, "crl", json_pack("{s:b}", "new", fresh), fd, out, crl_pem, &werr);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	if (werr) {
		json_decref(reply);
		return CTL_ERR_REPLY;
	}
	r = json_object_get(reply, "result");
	rc = ctl_finish(ctl, reply, &human);
	if (human) {
		if (out)
			printf("CRL number %lld (%lld entries, next update %s) written to %s\n",
			    (long long)json_integer_value(json_object_get(r, "number")),
			    (long long)json_integer_value(json_object_get(r, "entries")), ctl_str(r, "next_update"), out);
		else
			fputs(ctl_str(r, "pem"), stdout);
	}
	json_decref(reply);
	return rc;
}
