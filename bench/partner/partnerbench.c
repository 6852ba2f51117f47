/*
 * partnerbench.c - the driver of bench/partner/run: the per-message cost of
 * kmsd's verification path (mlt_check_message, every certificate of the
 * chain looked up) with the revocation data of 0, 10, 100 and 1,000 other
 * CAs loaded besides the partner's own CRLs.
 *
 *   partnerbench ROOT.crt ROUNDS SECONDS TOTAL CRL... -- MSG...
 *       ROOT.crt is the partner's root (the trust anchor); each CRL (PEM
 *       or DER) is one of the partner's CAs, validated once here as kmsd
 *       does (ca_crl_validate_chain, the message's chain giving the
 *       intermediates); MSG are messages signed by partner users who are
 *       not revoked, whose status every CRL establishes (verdict pass
 *       without "revocation unknown", checked on every call).
 *       For K in 0, 10, 100, 1000 an index is built with the partner's
 *       CRLs plus K synthetic CAs sharing TOTAL revoked entries (random
 *       128-bit serials, K=0: none).  Then, in ROUNDS rounds of about
 *       SECONDS per index, each round starting with the next index, the
 *       messages go through mlt_check_message.  Prints per index
 *         "index cas=K entries=N build_s=..."
 *       and per index
 *         "row cas=K entries=N msgs=M cpu_us=... wall_us=... ratio=R"
 *       with medians over the rounds per message; ratio is cpu_us over
 *       that of K=0 in the same run.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "milter/milter.h"

#define NIDX 4
#define MAX_ROUNDS 64
#define CHUNK 100000

static const int ncas[NIDX] = { 0, 10, 100, 1000 };

struct msg {
	unsigned char *data;
	size_t len;
};

static void
die(const char *what)
{
	fprintf(stderr, "partnerbench: %s\n", what);
	exit(1);
}

static double
clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static X509_CRL *
read_crl(const char *path)
{
	unsigned char *buf = NULL;
	size_t len;
	X509_CRL *crl = NULL;

	if (kms_read_file(path, 512u * 1024 * 1024, &buf, &len) != 0 || ca_crl_parse(buf, len, &crl) != 0)
		die(kms_last_error());
	free(buf);
	return crl;
}

/* Every certificate the messages carry (the chains' intermediates). */
static STACK_OF(X509) *
message_certs(const struct msg *m, int n)
{
	STACK_OF(X509) *all = sk_X509_new_null();

	for (int i = 0; i < n; i++) {
		BIO *in = BIO_new_mem_buf(m[i].data, (int)m[i].len), *dcont = NULL;
		CMS_ContentInfo *cms = SMIME_read_CMS(in, &dcont);
		STACK_OF(X509) *c;

		if (cms == NULL || (c = CMS_get1_certs(cms)) == NULL)
			die("a message is not S/MIME signed with certificates");
		for (int k = 0; k < sk_X509_num(c); k++) {
			X509_up_ref(sk_X509_value(c, k));
			sk_X509_push(all, sk_X509_value(c, k));
		}
		sk_X509_pop_free(c, X509_free);
		CMS_ContentInfo_free(cms);
		BIO_free(dcont);
		BIO_free(in);
	}
	return all;
}

/* A synthetic CRL of the CA named name with n random serials, as if validated (meta). */
static X509_CRL *
synthetic_crl(const X509_NAME *name, long n, time_t now, struct ca_crl_meta *m)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *when = ASN1_TIME_set(NULL, now - 86400);
	ASN1_ENUMERATED *reason = ASN1_ENUMERATED_new();

	if (crl == NULL || when == NULL || reason == NULL || !ASN1_ENUMERATED_set(reason, 1) ||
	    !X509_CRL_set_version(crl, X509_CRL_VERSION_2) || !X509_CRL_set_issuer_name(crl, name))
		die("cannot make a CRL");
	for (long i = 0; i < n; i++) {
		unsigned char b[16];
		X509_REVOKED *r = X509_REVOKED_new();
		BIGNUM *bn;
		ASN1_INTEGER *s;

		if (RAND_bytes(b, sizeof(b)) != 1)
			die("RAND_bytes");
		b[0] = (unsigned char)((b[0] & 0x7f) | 0x01);
		if ((bn = BN_bin2bn(b, sizeof(b), NULL)) == NULL || (s = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
			die("out of memory");
		BN_free(bn);
		if (r == NULL || !X509_REVOKED_set_serialNumber(r, s) || !X509_REVOKED_set_revocationDate(r, when) ||
		    !X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, reason, 0, 0) || !X509_CRL_add0_revoked(crl, r))
			die("cannot add a CRL entry");
		ASN1_INTEGER_free(s);
	}
	ASN1_TIME_free(when);
	ASN1_ENUMERATED_free(reason);
	memset(m, 0, sizeof(*m));
	m->covers = CA_CRL_COVERS_USER | CA_CRL_COVERS_CA;
	m->number = m->base = -1;
	m->this_update = now - 3600;
	m->next_update = now + 7 * 86400;
	return crl;
}

static struct ca_revidx *
make_index(int k, long total, X509_CRL **crls, struct ca_crl_meta *metas, int ncrl)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	time_t now = time(NULL);
	double t0 = clock_s(CLOCK_MONOTONIC);

	if (ca_revidx_builder_new(&b) != 0)
		die(kms_last_error());
	for (int i = 0; i < ncrl; i++)
		if (ca_revidx_add_valid(b, crls[i], &metas[i], NULL, NULL, now) != 0)
			die(kms_last_error());
	for (int c = 0; c < k; c++) {
		X509_NAME *name = X509_NAME_new();
		char cn[64];
		long left = total / k + (c < total % k ? 1 : 0);

		snprintf(cn, sizeof(cn), "Other Organisation %d Issuing CA", c);
		X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Other", -1, -1, 0);
		X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
		for (; left > 0; left -= CHUNK) {
			struct ca_crl_meta m;
			X509_CRL *crl = synthetic_crl(name, left < CHUNK ? left : CHUNK, now, &m);

			if (ca_revidx_add_valid(b, crl, &m, NULL, NULL, now) != 0)
				die(kms_last_error());
			X509_CRL_free(crl);
		}
		X509_NAME_free(name);
	}
	if (ca_revidx_build(b, &idx) != 0)
		die(kms_last_error());
	ca_revidx_builder_free(b);
	printf("index cas=%d entries=%zu build_s=%.2f\n", k, ca_revidx_count(idx), clock_s(CLOCK_MONOTONIC) - t0);
	fflush(stdout);
	return idx;
}

static void
check_one(const struct kms_config *cfg, X509_STORE *trust, const struct ca_revidx *idx, const struct msg *m)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;

	memset(&ctx, 0, sizeof(ctx));
	ctx.trust = trust;
	ctx.rev = idx;
	ctx.authserv_id = cfg->kmsd.authserv_id;
	mlt_limits_from_config(cfg, &ctx.limits);
	if (mlt_check_message(&ctx, m->data, m->len, &res) != 0)
		die(kms_last_error());
	if (res->verdict != POL_V_PASS || res->nsigs != 1 || res->sigs[0].rev_unknown) {
		fprintf(stderr, "partnerbench: verdict %s (%s)\n", pol_verdict_name(res->verdict), res->detail);
		exit(1);
	}
	mlt_result_free(res);
}

int
main(int argc, char **argv)
{
	struct kms_config *cfg = NULL;
	X509_STORE *trust;
	X509 *root;
	FILE *fp;
	struct msg *msgs;
	X509_CRL **crls;
	struct ca_crl_meta *metas;
	struct ca_revidx *idx[NIDX];
	STACK_OF(X509) *inter;
	double cpu[NIDX][MAX_ROUNDS], wall[NIDX][MAX_ROUNDS], base = 0;
	long count[NIDX] = { 0 }, rounds, total;
	double secs;
	int sep = -1, ncrl, nmsg;

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--") == 0)
			sep = i;
	if (argc < 7 || sep < 6 || sep == argc - 1) {
		fprintf(stderr, "usage: partnerbench ROOT.crt ROUNDS SECONDS TOTAL CRL... -- MSG...\n");
		return 2;
	}
	rounds = strtol(argv[2], NULL, 10);
	secs = strtod(argv[3], NULL);
	total = strtol(argv[4], NULL, 10);
	if (rounds < 1 || rounds > MAX_ROUNDS || secs <= 0 || total < 0)
		die("bad ROUNDS, SECONDS or TOTAL");
	ncrl = sep - 5;
	nmsg = argc - sep - 1;
	mlt_smime_init();
	if (kms_config_load(NULL, &cfg) != 0)
		die(kms_last_error());
	if ((fp = fopen(argv[1], "r")) == NULL || (root = PEM_read_X509(fp, NULL, NULL, NULL)) == NULL)
		die("cannot read the root certificate");
	fclose(fp);
	if ((trust = X509_STORE_new()) == NULL || !X509_STORE_add_cert(trust, root))
		die("trust store");
	msgs = calloc((size_t)nmsg, sizeof(*msgs));
	crls = calloc((size_t)ncrl, sizeof(*crls));
	metas = calloc((size_t)ncrl, sizeof(*metas));
	if (msgs == NULL || crls == NULL || metas == NULL)
		die("out of memory");
	for (int i = 0; i < nmsg; i++) {
		unsigned char *raw = NULL;
		size_t rawlen;

		if (kms_read_file(argv[sep + 1 + i], 64u * 1024 * 1024, &raw, &rawlen) != 0 ||
		    mlt_canon_crlf(raw, rawlen, &msgs[i].data, &msgs[i].len) != 0)
			die(kms_last_error());
		free(raw);
	}
	inter = message_certs(msgs, nmsg);
	for (int i = 0; i < ncrl; i++) {
		X509 *signer;

		crls[i] = read_crl(argv[5 + i]);
		if (ca_crl_validate_chain(crls[i], trust, inter, time(NULL), &signer, &metas[i]) != 0)
			die(kms_last_error());
	}
	for (int k = 0; k < NIDX; k++)
		idx[k] = make_index(ncas[k], ncas[k] ? total : 0, crls, metas, ncrl);
	/* Warm up, then alternate: each round starts with the next index. */
	for (int k = 0; k < NIDX; k++)
		for (int i = 0; i < nmsg; i++)
			check_one(cfg, trust, idx[k], &msgs[i]);
	for (long r = 0; r < rounds; r++) {
		for (int j = 0; j < NIDX; j++) {
			int k = (int)((j + r) % NIDX);
			double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), w1;
			long n = 0;

			do {
				for (int i = 0; i < nmsg; i++)
					check_one(cfg, trust, idx[k], &msgs[i]);
				n += nmsg;
				w1 = clock_s(CLOCK_MONOTONIC);
			} while (w1 - w0 < secs);
			cpu[k][r] = (clock_s(CLOCK_THREAD_CPUTIME_ID) - c0) / (double)n;
			wall[k][r] = (w1 - w0) / (double)n;
			count[k] += n;
		}
	}
	for (int k = 0; k < NIDX; k++) {
		double c = median(cpu[k], (int)rounds), w = median(wall[k], (int)rounds);

		if (k == 0)
			base = c;
		printf("row cas=%d entries=%zu msgs=%ld cpu_us=%.1f wall_us=%.1f ratio=%.3f\n", ncas[k],
		    ca_revidx_count(idx[k]), count[k], c * 1e6, w * 1e6, c / base);
	}
	for (int k = 0; k < NIDX; k++)
		ca_revidx_unref(idx[k]);
	for (int i = 0; i < ncrl; i++) {
		X509_CRL_free(crls[i]);
		ca_crl_meta_clear(&metas[i]);
	}
	for (int i = 0; i < nmsg; i++)
		free(msgs[i].data);
	free(msgs);
	free(crls);
	free(metas);
	sk_X509_pop_free(inter, X509_free);
	X509_STORE_free(trust);
	X509_free(root);
	kms_config_unref(cfg);
	return 0;
}
