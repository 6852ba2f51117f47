/*
 * offline.c - `kmsd -t`: check message files with the milter's own code.
 *
 *   kmsd -t [-c FILE] [--trust PEM]... [--crl FILE]... [--out DIR] MESSAGE...
 *
 * Entry point: mlt_offline_main (returns the exit status).
 *
 * Trust anchors are the --trust files when given, else [milter] trust_file
 * and our CA certificate from the store (when the state directory has
 * one).  Revocation comes from the --crl files (PEM or DER, each checked
 * against the trust anchors) when given, else from the store.  Each file
 * is read as SMTP would carry it (bare LF made CRLF), checked with
 * mlt_check_message, planned with mlt_rewrite_plan, and reported as
 *
 *   FILE: smime=<result> (<verdict>: <detail>)
 *
 * followed by the header fields the milter would add or change (the new
 * value), one per line, folds shown as they would be written.  With
 * --out, each message is also written to DIR under its own file name as
 * the MTA would pass it on (header edits applied, the new body if any;
 * CRLF line ends).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "milter/milter.h"

struct offline {
	struct kms_config *cfg;
	struct kms_store *st;
	X509_STORE *trust;
	unsigned long trust_gen;        /* trust is set before the first message and never changes */
	STACK_OF(X509) *anchors;        /* the same certificates, for CRL issuers */
	struct ca_revidx *rev;
	const char *outdir;             /* --out, or NULL */
};

static void
usage(FILE *fp)
{
	fprintf(fp, "usage: kmsd -t [-c FILE] [--trust PEM]... [--crl FILE]... [--out DIR] MESSAGE...\n");
}

static int
add_anchor(struct offline *o, X509 *x)
{
	if (!X509_STORE_add_cert(o->trust, x)) {
		/* The same certificate twice is fine. */
		unsigned long e = ERR_peek_last_error();

		if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "cannot add a trust anchor");
		ERR_clear_error();
	}
	if (!sk_X509_push(o->anchors, x))
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	X509_up_ref(x);
	return 0;
}

static int
load_anchors(struct offline *o, const char *path)
{
	STACK_OF(X509) *certs = NULL;
	int rc;

	if ((rc = ca_crl_load_cas(path, &certs)) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		return kms_fail(rc, "%s: %s", path, why);
	}
	for (int i = 0; rc == 0 && i < sk_X509_num(certs); i++)
		rc = add_anchor(o, sk_X509_value(certs, i));
	sk_X509_pop_free(certs, X509_free);
	return rc;
}

/* Our store, if the state directory has one (read-only). */
static void
open_store(struct offline *o)
{
	char *path = kms_path_join(o->cfg->kmsd.state_dir, KMS_STORE_FILE);

	if (path != NULL && access(path, R_OK) == 0 && kms_store_open(path, KMS_STORE_READONLY, &o->st) != 0) {
		fprintf(stderr, "kmsd: note: cannot open the store %s: %s\n", path, kms_last_error());
		o->st = NULL;
	}
	free(path);
}

static int
load_crl(struct offline *o, struct ca_revidx_builder *b, const char *path)
{
	unsigned char *buf = NULL;
	size_t len = 0;
	X509_CRL *crl = NULL;
	X509 *issuer = NULL;
	int rc, stale = 0;
	char why[256];

	if ((rc = kms_read_file(path, 512u * 1024 * 1024, &buf, &len)) != 0)
		return rc;      /* the detail names the file */
	if ((rc = ca_crl_parse(buf, len, &crl)) != 0) {
		rc = kms_fail(rc, "--crl %s: not a CRL (PEM or DER)", path);
		goto out;
	}
	if ((rc = ca_crl_find_issuer(crl, o->anchors, time(NULL), &issuer, &stale)) != 0) {
		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(rc, "--crl %s: no trust anchor issued it, or it fails its checks: %s", path, why);
		goto out;
	}
	if ((rc = ca_revidx_add_crl(b, crl, issuer, time(NULL))) != 0) {
		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(rc, "--crl %s: %s", path, why);
	}
out:
	X509_CRL_free(crl);
	free(buf);
	return rc;
}

static int
find_cert_store(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid,
    X509 **out)
{
	struct offline *o = arg;

	*out = NULL;
	if (o->st == NULL)
		return KMS_ERR_NOTFOUND;
	return ca_store_find_cert(o->st, issuer, serial, skid, out);
}

/* Write msg as rewritten by rw to dir, under the base name of path. */
static int
write_out(const char *dir, const char *path, const unsigned char *msg, size_t len, const struct mlt_rewrite *rw)
{
	const char *base = strrchr(path, '/');
	unsigned char *out = NULL;
	size_t outlen = 0;
	char *dest;
	int rc;

	base = base ? base + 1 : path;
	if ((dest = kms_path_join(dir, base)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	if ((rc = mlt_rewrite_apply(msg, len, rw, &out, &outlen)) == 0)
		rc = kms_write_file_atomic(dest, out, outlen, 0644);
	free(out);
	free(dest);
	return rc;
}

/* Print one file's line and the fields it would get.  0, or an error reading it. */
static int
check_file(struct offline *o, const char *path)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;
	struct mlt_rewrite *rw = NULL;
	unsigned char *raw = NULL, *msg = NULL;
	size_t rawlen = 0, len = 0, max = (size_t)o->cfg->milter.max_message_size;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	ctx.trust = o->trust;
	ctx.trust_gen = o->trust_gen;
	ctx.rev = o->rev;
	ctx.find_cert = find_cert_store;
	ctx.find_cert_arg = o;
	ctx.authserv_id = o->cfg->kmsd.authserv_id;
	mlt_limits_from_config(o->cfg, &ctx.limits);

	rc = kms_read_file(path, max, &raw, &rawlen);
	if (rc == KMS_ERR_TOOBIG) {
		char why[160];

		snprintf(why, sizeof(why), "message is over [milter] max_message_size (%zu): not checked", max);
		rc = mlt_result_error(ctx.authserv_id, why, &res);
	} else if (rc == 0 && (rc = mlt_canon_crlf(raw, rawlen, &msg, &len)) == 0) {
		rc = mlt_check_message(&ctx, msg, len, &res);
	} else if (rc != 0) {
		fprintf(stderr, "%s: cannot read: %s\n", path, kms_last_error());
		goto out;
	}
	if (rc != 0) {
		printf("%s: smime=temperror (error: internal error: %s)\n", path, kms_last_error());
		rc = 0;
		goto out;
	}
	printf("%s: smime=%s (%s: %s)\n", path, pol_verdict_ar_result(res->verdict), pol_verdict_name(res->verdict),
	    res->detail ? res->detail : "");
	if (mlt_rewrite_plan(o->cfg, ctx.authserv_id, res, msg, len, &rw) == 0) {
		/* In the order they stand in the header: insertions at the top (the last one first), then the rest. */
		for (size_t i = rw->nedits; i-- > 0;)
			if (rw->edits[i].op == MLT_HDR_INSERT)
				printf("%s: %s\n", rw->edits[i].name, rw->edits[i].value);
		for (size_t i = 0; i < rw->nedits; i++) {
			const struct mlt_hdr_edit *e = &rw->edits[i];

			if ((e->op == MLT_HDR_ADD || e->op == MLT_HDR_CHANGE) && strncasecmp(e->name, "Content-", 8) != 0 &&
			    strcasecmp(e->name, "MIME-Version") != 0)
				printf("%s: %s\n", e->name, e->value);
		}
		if (rw->action != KMS_ACT_ACCEPT)
			printf("  (policy: %s)\n", kms_action_name(rw->action));
		if (o->outdir != NULL && (rc = write_out(o->outdir, path, msg, len, rw)) != 0) {
			fprintf(stderr, "%s: %s\n", path, kms_last_error());
			goto out;
		}
	}
out:
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(raw);
	free(msg);
	fflush(stdout);
	return rc;
}

int
mlt_offline_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "trust", required_argument, NULL, 'T' },
		{ "crl", required_argument, NULL, 'C' },
		{ "out", required_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct offline o;
	struct ca_revidx_builder *b = NULL;
	const char *config_path = NULL;
	char **trust = NULL, **crls = NULL;
	size_t ntrust = 0, ncrl = 0;
	int c, status = 2, unreadable = 0;

	memset(&o, 0, sizeof(o));
	mlt_smime_init();
	if ((trust = calloc((size_t)argc + 1, sizeof(*trust))) == NULL ||
	    (crls = calloc((size_t)argc + 1, sizeof(*crls))) == NULL) {
		fprintf(stderr, "kmsd: out of memory\n");
		goto out;
	}
	optind = 1;
	while ((c = getopt_long(argc, argv, "tc:h", longopts, NULL)) != -1) {
		switch (c) {
		case 't': break;
		case 'c': config_path = optarg; break;
		case 'T': trust[ntrust++] = optarg; break;
		case 'C': crls[ncrl++] = optarg; break;
		case 'O': o.outdir = optarg; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); goto out;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		goto out;
	}
	if (kms_config_load(config_path, &o.cfg) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		goto out;
	}
	if ((o.trust = X509_STORE_new()) == NULL || (o.anchors = sk_X509_new_null()) == NULL) {
		fprintf(stderr, "kmsd: out of memory\n");
		goto out;
	}
	open_store(&o);
	if (ntrust > 0) {
		for (size_t i = 0; i < ntrust; i++) {
			if (load_anchors(&o, trust[i]) != 0) {
				fprintf(stderr, "kmsd: %s\n", kms_last_error());
				goto out;
			}
		}
	} else {
		struct ca *ca = NULL;

		if (o.cfg->milter.trust_file[0] != '\0' && load_anchors(&o, o.cfg->milter.trust_file) != 0) {
			fprintf(stderr, "kmsd: [milter] trust_file: %s\n", kms_last_error());
			goto out;
		}
		if (o.st != NULL && ca_store_load(o.st, o.cfg->ca.name, NULL, &ca) == 0) {
			if (add_anchor(&o, ca->cert) != 0) {
				ca_free(ca);
				fprintf(stderr, "kmsd: %s\n", kms_last_error());
				goto out;
			}
			ca_free(ca);
		}
	}
	if (sk_X509_num(o.anchors) == 0)
		fprintf(stderr, "kmsd: note: no trust anchors (no --trust, no [milter] trust_file, no CA in the store)\n");
	o.trust_gen = mlt_generation_next();

	if (ca_revidx_builder_new(&b) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		goto out;
	}
	if (ncrl > 0) {
		for (size_t i = 0; i < ncrl; i++) {
			if (load_crl(&o, b, crls[i]) != 0) {
				fprintf(stderr, "kmsd: %s\n", kms_last_error());
				goto out;
			}
		}
	} else if (o.st != NULL) {
		struct ca *ca = NULL;

		if (ca_store_load(o.st, o.cfg->ca.name, NULL, &ca) == 0) {
			if (ca_revidx_add_store(b, o.st, ca->cert) != 0)
				fprintf(stderr, "kmsd: note: revocations from the store not loaded: %s\n", kms_last_error());
			ca_free(ca);
		}
	}
	if (ca_revidx_build(b, &o.rev) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		goto out;
	}
	for (int i = optind; i < argc; i++)
		if (check_file(&o, argv[i]) != 0)
			unreadable = 1;
	status = unreadable ? 1 : 0;
out:
	ca_revidx_builder_free(b);
	if (o.rev != NULL)
		ca_revidx_unref(o.rev);
	sk_X509_pop_free(o.anchors, X509_free);
	X509_STORE_free(o.trust);
	if (o.st != NULL)
		kms_store_close(o.st);
	if (o.cfg != NULL)
		kms_config_unref(o.cfg);
	free(trust);
	free(crls);
	ERR_clear_error();
	return status;
}
