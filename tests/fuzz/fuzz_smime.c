/*
 * fuzz_smime.c - libFuzzer harness for the mail side's entry point: raw
 * message bytes through mlt_check_message (MIME walk, CMS parsing and
 * verification, certificate judging), mlt_rewrite_plan and
 * mlt_rewrite_apply, as the milter runs them at end of message.
 *
 * Trust anchors and the revocation index are the test CA of
 * tests/data/smime (KMS_FUZZ_DATA names that directory; default
 * tests/data/smime under the working directory).  Built with clang only,
 * by tests/fuzz/build-smime.sh; not part of make check.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "milter/milter.h"

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

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("KMS_FUZZ_DATA");
	struct ca_revidx_builder *b;
	X509 *ca, *dave;
	struct ca_rev_info info = { .revoked_at = 1767225600, .reason = 1 };

	(void)argc;
	(void)argv;
	if (dir == NULL)
		dir = "tests/data/smime";
	mlt_smime_init();
	if (kms_config_load(NULL, &cfg) != 0)
		exit(1);
	ca = load(dir, "ca.pem");
	dave = load(dir, "dave.pem");
	trust = X509_STORE_new();
	X509_STORE_add_cert(trust, ca);
	if (ca_revidx_builder_new(&b) != 0 || ca_revidx_build(b, &rev) != 0)
		exit(1);
	ca_revidx_builder_free(b);
	{
		struct ca_revidx *r2 = NULL;

		if (ca_revidx_with(rev, X509_get_issuer_name(dave), X509_get0_serialNumber(dave), &info, &r2) != 0)
			exit(1);
		ca_revidx_unref(rev);
		rev = r2;
	}
	X509_free(ca);
	X509_free(dave);
	return 0;
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
	if (mlt_check_message(&ctx, data, size, &res) == 0) {
		if (res->verdict >= POL_V_COUNT)
			abort();
		/* Warn for every verdict, so that the wrapper runs on everything. */
		cfg->policy.on_pass = cfg->policy.on_fail = cfg->policy.on_revoked = KMS_ACT_WARN;
		cfg->policy.on_mismatch = cfg->policy.on_untrusted = cfg->policy.on_none = KMS_ACT_WARN;
		if (mlt_rewrite_plan(cfg, ctx.authserv_id, res, data, size, &rw) == 0 &&
		    mlt_rewrite_apply(data, size, rw, &out, &outlen) == 0)
			free(out);
		mlt_rewrite_free(rw);
		if (res->ar_value != NULL && strchr(res->ar_value, '\r') != NULL)
			abort();        /* header values never carry CR */
	}
	mlt_result_free(res);
	ERR_clear_error();
	return 0;
}
