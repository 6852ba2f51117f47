/*
 * fuzz_smime.c - libFuzzer harness for the mail side's entry point: raw
 * message bytes through mlt_check_message (MIME walk, CMS parsing and
 * verification by content type, one verdict per signature, what the
 * signatures cover and header protection, display-name checks,
 * certificate judging), mlt_rewrite_plan and mlt_rewrite_apply, as the
 * milter runs them at end of message; the input's own header also goes
 * through mlt_from_display_check and, field by field, mlt_ar_is_ours.
 *
 * Invariants checked (abort on breach): a revoked signature anywhere makes
 * the message revoked (nothing masks it); a pass message has only pass
 * signatures; with warn on revoked every Subject field of the output
 * starts with the tag; header values carry no CR.
 *
 * Trust anchors and the revocation index are the test CAs of
 * tests/data/smime and tests/data/hostile, each with its dave revoked
 * (KMS_FUZZ_DATA names the smime directory, default tests/data/smime under
 * the working directory; the hostile one is its sibling).  Built with
 * clang only, by tests/fuzz/build-smime.sh; not part of make check.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "milter/milter.h"
#include "milter/mime.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static X509_STORE *trust;
static struct ca_revidx *rev;
static struct kms_config *cfg;

static X509 *
load(const char *dir, const char *name)
{
	char path[4096];
	FILE *fp;
	X509 *x;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fp = fopen(path, "r")) == NULL) {
		fprintf(stderr, "fuzz_smime: cannot open %s (set KMS_FUZZ_DATA)\n", path);
		exit(1);
	}
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	return x;
}

/* Trust dir/ca.pem and revoke dir/dave.pem in *rev. */
static void
add_ca(const char *dir, struct ca_revidx **rev)
{
	struct ca_rev_info info = { .revoked_at = 1767225600, .reason = 1 };
	X509 *ca = load(dir, "ca.pem"), *dave = load(dir, "dave.pem");
	struct ca_revidx *r2 = NULL;

	if (ca == NULL || dave == NULL)
		exit(1);
	X509_STORE_add_cert(trust, ca);
	if (ca_revidx_with(*rev, X509_get_issuer_name(dave), X509_get0_serialNumber(dave), &info, &r2) != 0)
		exit(1);
	ca_revidx_unref(*rev);
	*rev = r2;
	X509_free(ca);
	X509_free(dave);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("KMS_FUZZ_DATA");
	struct ca_revidx_builder *b;
	char hostile[4096];

	(void)argc;
	(void)argv;
	if (dir == NULL)
		dir = "tests/data/smime";
	snprintf(hostile, sizeof(hostile), "%s/../hostile", dir);
	mlt_smime_init();
	if (kms_config_load(NULL, &cfg) != 0)
		exit(1);
	trust = X509_STORE_new();
	if (ca_revidx_builder_new(&b) != 0 || ca_revidx_build(b, &rev) != 0)
		exit(1);
	ca_revidx_builder_free(b);
	add_ca(dir, &rev);
	add_ca(hostile, &rev);
	return 0;
}

/* Does every Subject field of the header of msg start with tag? */
static int
subjects_tagged(const unsigned char *msg, size_t len, const char *tag)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;

	mlt_hdr_begin(&it, msg, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		char *v;
		int ok;

		if (!mlt_field_is(msg, &f, "Subject"))
			continue;
		if ((v = mlt_field_value(msg, &f, 4096)) == NULL)
			return 1;       /* out of memory: nothing to say */
		ok = strncmp(v, tag, strlen(tag)) == 0;
		free(v);
		if (!ok)
			return 0;
	}
	return 1;
}

/* The input's own header through the From display check and the forged-A-R test. */
static void
fuzz_header(const unsigned char *data, size_t size)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	char **addrs = NULL, *why = NULL;
	size_t nf = 0;
	int n = 0;

	if (mlt_from_addresses(data, size, 200, &addrs, &nf) == 0) {
		if (mlt_from_display_check(data, size, 200, addrs, &why) == 0 && why != NULL &&
		    (strchr(why, '\r') != NULL || strchr(why, '\n') != NULL))
			abort();
		free(why);
		kms_strv_free(addrs);
	}
	mlt_hdr_begin(&it, data, 0, size);
	while (mlt_hdr_next(&it, &f, NULL) && n++ < 200)
		(void)mlt_ar_is_ours((const char *)data + f.value, f.vend - f.value, "fuzz.example");
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;
	struct mlt_rewrite *rw = NULL;
	unsigned char *out = NULL;
	size_t outlen = 0;

	memset(&ctx, 0, sizeof(ctx));
	ctx.trust = trust;
	ctx.rev = rev;
	ctx.authserv_id = "fuzz.example";
	ctx.now = 1798761600;
	ctx.limits.max_message_size = 4 * 1024 * 1024;
	ctx.limits.max_headers = 200;
	ctx.limits.max_parts = 200;
	ctx.limits.max_depth = 16;
	fuzz_header(data, size);
	if (mlt_check_message(&ctx, data, size, &res) == 0) {
		int any_revoked = 0;

		if (res->verdict >= POL_V_COUNT)
			abort();
		for (size_t i = 0; i < res->nsigs; i++) {
			if (res->sigs[i].verdict >= POL_V_COUNT)
				abort();
			if (res->sigs[i].verdict == POL_V_REVOKED)
				any_revoked = 1;
			/* A pass message has no signature worse than pass. */
			if (res->verdict == POL_V_PASS && res->sigs[i].verdict != POL_V_PASS)
				abort();
		}
		/* Nothing masks a revoked signer. */
		if (any_revoked && res->verdict != POL_V_REVOKED)
			abort();
		/* Warn for every verdict, so that the wrapper runs on everything. */
		cfg->policy.on_pass = cfg->policy.on_fail = cfg->policy.on_revoked = KMS_ACT_WARN;
		cfg->policy.on_mismatch = cfg->policy.on_untrusted = cfg->policy.on_none = KMS_ACT_WARN;
		cfg->policy.on_partial = cfg->policy.on_expired = KMS_ACT_WARN;
		if (mlt_rewrite_plan(cfg, ctx.authserv_id, res, data, size, &rw) == 0 &&
		    mlt_rewrite_apply(data, size, rw, &out, &outlen) == 0) {
			/* The revoked-sender tag on every Subject field. */
			if (res->verdict == POL_V_REVOKED && !subjects_tagged(out, outlen, cfg->policy.subject_tag))
				abort();
			free(out);
		}
		mlt_rewrite_free(rw);
		if (res->ar_value != NULL && strchr(res->ar_value, '\r') != NULL)
			abort();        /* header values never carry CR */
	}
	mlt_result_free(res);
	ERR_clear_error();
	return 0;
}
