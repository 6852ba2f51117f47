/*
 * ctl_audit.c - kmsctl audit [--since TIME], kmsctl audit verify, and
 * kmsctl audit verify --offline --db FILE [--ca FILE]: the same checks as
 * kmsd's (ca_audit_verify) on a copy of the store, without kmsd, against
 * a CA certificate kept outside the store when --ca names one.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>

#include "ca/ca.h"
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
print_counts(long long rows, long long checkpoints, long long signed_row, const char *signed_time,
    long long unsigned_rows)
{
	printf("audit trail intact: %lld rows, hash chain verified\n", rows);
	if (checkpoints > 0)
		printf("%lld signed checkpoints verified; last signed row %lld (%s); %lld rows after it not signed yet\n",
		    checkpoints, signed_row, signed_time, unsigned_rows);
	else
		printf("no signed checkpoint yet: %lld rows not signed\n", unsigned_rows);
}

static void
print_verified(json_t *r)
{
	print_counts(num(r, "rows"), num(r, "checkpoints"), num(r, "signed_row"), ctl_str(r, "signed_time"),
	    num(r, "unsigned_rows"));
}

/* The CA to check checkpoints against: --ca FILE, else the store's; NULL (chain only) when neither. */
static int
offline_ca(struct kms_store *st, const char *ca_file, X509 **out)
{
	struct ca *ca = NULL;
	BIO *b;

	*out = NULL;
	if (ca_file != NULL) {
		if ((b = BIO_new_file(ca_file, "r")) != NULL)
			*out = PEM_read_bio_X509(b, NULL, NULL, NULL);
		BIO_free(b);
		return *out != NULL ? 0 : ctl_usage_error("audit verify: %s holds no PEM certificate", ca_file);
	}
	if (ca_store_load(st, NULL, NULL, &ca) == 0 && X509_up_ref(ca->cert))
		*out = ca->cert;
	ca_free(ca);
	if (*out == NULL)
		fprintf(stderr, "kmsctl: no CA in the database: only the hash chain is checked\n");
	return 0;
}

static int
offline_verify(struct ctl *ctl, const char *db, const char *ca_file)
{
	struct kms_config *cfg = NULL;
	struct kms_store *st = NULL;
	struct ca_audit_report rep;
	X509 *ca_cert = NULL;
	char t[32];
	int rc;

	if (kms_config_load(ctl->config, &cfg) != 0)
		return ctl_fail(CTL_ERR_USAGE, "cannot load the configuration");
	if (kms_store_open(db, KMS_STORE_READONLY, &st) != 0) {
		rc = ctl_fail(CTL_ERR_USAGE, "cannot open the database");
		goto out;
	}
	if ((rc = offline_ca(st, ca_file, &ca_cert)) != 0)
		goto out;
	rc = ca_audit_verify(st, ca_cert, NULL, cfg->audit.checkpoint_rows, cfg->audit.checkpoint_interval, time(NULL),
	    &rep);
	if (rc == KMS_ERR_CORRUPT) {
		fprintf(stderr, "kmsctl: audit trail tampered with: %s\n", kms_last_error());
		rc = CTL_ERR_REPLY;
	} else if (rc != 0) {
		rc = ctl_fail(CTL_ERR_REPLY, "audit verify");
	} else {
		print_counts(rep.rows, rep.checkpoints, rep.last.seq,
		    rep.last.no ? kms_time_format(rep.last.time, t, sizeof(t)) : "", rep.unsigned_rows);
	}
out:
	X509_free(ca_cert);
	kms_store_close(st);
	kms_config_unref(cfg);
	return rc;
}

int
ctl_cmd_audit(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "since", required_argument, NULL, 's' },
		{ "offline", no_argument, NULL, 'O' },
		{ "db", required_argument, NULL, 'd' },
		{ "ca", required_argument, NULL, 'a' },
		{ NULL, 0, NULL, 0 },
	};
	const char *since = NULL, *db = NULL, *ca_file = NULL;
	json_t *reply, *args;
	int c, human, rc, verify = 0, offline = 0;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 's')
			since = optarg;
		else if (c == 'O')
			offline = 1;
		else if (c == 'd')
			db = optarg;
		else if (c == 'a')
			ca_file = optarg;
		else
			return CTL_ERR_USAGE;
	}
	if (optind < argc && strcmp(argv[optind], "verify") == 0) {
		verify = 1;
		optind++;
	}
	if (optind < argc || (verify && since) || (!verify && (offline || db || ca_file)) ||
	    offline != (db != NULL) || (ca_file && !offline))
		return ctl_usage_error("audit: use \"audit [--since TIME]\", \"audit verify\" or "
		    "\"audit verify --offline --db FILE [--ca FILE]\"");
	if (offline)
		return offline_verify(ctl, db, ca_file);
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
