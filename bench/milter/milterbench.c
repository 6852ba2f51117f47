/*
 * milterbench.c - the driver of bench/milter/run: times a batch of mail
 * through Postfix until smtp-sink has it all, and measures kmsd's
 * verification path in-process against a bare CMS_verify loop.
 *
 *   milterbench drive SINKOUT COUNT TIMEOUT -- CMD...
 *       SINKOUT is the output file of a running `smtp-sink -c`.  Runs CMD
 *       (smtp-source) and waits until the sink's message counter has grown
 *       by COUNT (or TIMEOUT seconds have passed), then prints
 *       "accept_s=... deliver_s=... delivered=N busy=F src_cpu_s=C rc=R":
 *       the time until CMD ended (every message accepted), the time until
 *       the last one arrived at the sink, how many arrived, how busy all
 *       CPUs were meanwhile (from /proc/stat, 1.00 = every core all the
 *       time), and the CPU time CMD used.
 *
 *   milterbench probe PORT
 *       exit 0 when something accepts TCP connections on 127.0.0.1:PORT,
 *       1 otherwise.
 *
 *   milterbench verify CAFILE ROUNDS SECONDS BIGN NAME=DIR...
 *       Each DIR holds signed messages (*.eml, bare LF or CRLF) of one
 *       size; NAME labels them.  Every message is read into memory as SMTP
 *       carries it (CRLF), then, in ROUNDS alternating rounds of about
 *       SECONDS each per variant, the same messages go through
 *         bare    SMIME_read_CMS + CMS_verify against the trust store,
 *                 flags 0 (what `openssl cms -verify` does: the content is
 *                 canonicalised line by line while it is digested)
 *         barebin the same with CMS_BINARY (the content digested as it
 *                 is: right here, since it already has CRLF line ends)
 *         der     d2i_CMS_ContentInfo + CMS_verify (CMS_BINARY) over the
 *                 signature and the signed content taken out of each
 *                 message beforehand: the floor without any MIME parsing
 *         norev   mlt_check_message, no revocation index
 *         rev10   mlt_check_message, a 10-entry revocation index
 *         revbig  mlt_check_message, a BIGN-entry revocation index
 *         plan10  rev10 plus mlt_rewrite_plan (all of kmsd's work at end
 *                 of message but the replies to the MTA)
 *         nocache rev10 with the caches off (trust generation 0, the
 *                 certificate table emptied before each message): every
 *                 certificate decoded and every chain built again
 *       The mlt_check_message variants run with a trust generation, as in
 *       kmsd: certificates and chains come from the caches after the
 *       first message (the messages of a group share one signer).
 *       The trust store holds the CA certificate (as kmsd's does).  The
 *       indexes are built with ca_revidx_builder from synthetic CRLs of the
 *       CA (random serials, reason keyCompromise), the last entry added
 *       with ca_revidx_with; the signer is checked not to be in them.
 *       Every bare verification must succeed and every verdict must be
 *       pass.  Prints per index "index entries=N build_s=..." and per NAME
 *       and variant
 *         "row NAME VARIANT msgs=N wall_us=... cpu_us=... rate=..."
 *       with the medians over the rounds (per message; rate from CPU time,
 *       so that other load on the machine counts less).  Each round starts
 *       with the next variant, so that none always runs first or last.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "milter/cache.h"
#include "milter/milter.h"

#define CRL_CHUNK 10000         /* entries per synthetic CRL */
#define MAX_ROUNDS 99

/* ----------------------------------------------------------------- helpers */

static void
die(const char *what)
{
	fprintf(stderr, "milterbench: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static double
clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long
arg_long(const char *s, long min)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < min) {
		fprintf(stderr, "milterbench: bad number %s\n", s);
		exit(2);
	}
	return v;
}

static double
arg_double(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (*s == '\0' || *end != '\0' || v <= 0) {
		fprintf(stderr, "milterbench: bad number %s\n", s);
		exit(2);
	}
	return v;
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

/* ------------------------------------------------------------------ drive */

/* The last "mesg=N" in the smtp-sink -c output file, 0 if none yet. */
static long
sink_count(const char *path)
{
	char buf[512];
	long n = 0;
	ssize_t r;
	off_t end;
	int fd;

	if ((fd = open(path, O_RDONLY)) < 0)
		return 0;
	end = lseek(fd, 0, SEEK_END);
	if (end > (off_t)sizeof(buf) - 1)
		(void)lseek(fd, end - (off_t)sizeof(buf) + 1, SEEK_SET);
	else
		(void)lseek(fd, 0, SEEK_SET);
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = '\0';
	for (char *p = buf; (p = strstr(p, "mesg=")) != NULL; p += 5)
		n = strtol(p + 5, NULL, 10);
	return n;
}

/* All CPU time and the busy part of it, in ticks, from /proc/stat. */
static void
cpu_ticks(unsigned long long *total, unsigned long long *busy)
{
	unsigned long long v[10] = { 0 };
	FILE *fp = fopen("/proc/stat", "r");

	*total = *busy = 0;
	if (fp == NULL)
		return;
	if (fscanf(fp, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
	    &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 5) {
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*busy = *total - v[3] - v[4];  /* less idle and iowait */
	}
	fclose(fp);
}

static int
cmd_drive(int argc, char **argv)
{
	const char *sinkout;
	long count, base, got = 0;
	double timeout, t0, t1 = 0, t2, last, src_cpu;
	struct rusage ru;
	unsigned long long tot0, busy0, tot1, busy1;
	int status = 0, rc = -1, done = 0;
	pid_t pid;

	if (argc < 6 || strcmp(argv[3], "--") != 0) {
		fprintf(stderr, "usage: milterbench drive SINKOUT COUNT TIMEOUT -- CMD...\n");
		return 2;
	}
	sinkout = argv[0];
	count = arg_long(argv[1], 1);
	timeout = arg_double(argv[2]);
	memset(&ru, 0, sizeof(ru));
	base = sink_count(sinkout);
	cpu_ticks(&tot0, &busy0);
	t0 = clock_s(CLOCK_MONOTONIC);
	if ((pid = fork()) < 0)
		die("fork");
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		if (fd >= 0)
			dup2(fd, STDOUT_FILENO);
		execvp(argv[4], argv + 4);
		_exit(127);
	}
	last = t0;
	for (;;) {
		double now = clock_s(CLOCK_MONOTONIC);

		if (!done && wait4(pid, &status, WNOHANG, &ru) == pid) {
			done = 1;
			t1 = now;
			rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		}
		got = sink_count(sinkout) - base;
		if (got >= count) {
			last = now;
			break;
		}
		if (now - t0 > timeout)
			break;
		last = now;
		usleep(5000);
	}
	t2 = last;
	if (!done) {
		/* Delivered before the client noticed it had finished, or timed out: wait for it. */
		if (got < count)
			kill(pid, SIGTERM);
		wait4(pid, &status, 0, &ru);
		t1 = clock_s(CLOCK_MONOTONIC);
		rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		if (t1 > t2 && got >= count)
			t1 = t2;
	}
	cpu_ticks(&tot1, &busy1);
	src_cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	    ru.ru_stime.tv_usec / 1e6;
	printf("accept_s=%.3f deliver_s=%.3f delivered=%ld busy=%.2f src_cpu_s=%.2f rc=%d\n", t1 - t0, t2 - t0, got,
	    tot1 > tot0 ? (double)(busy1 - busy0) / (double)(tot1 - tot0) : 0.0, src_cpu, rc);
	return got >= count && rc == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------ probe */

static int
cmd_probe(int argc, char **argv)
{
	struct sockaddr_in sin;
	int fd, ok;

	if (argc != 1) {
		fprintf(stderr, "usage: milterbench probe PORT\n");
		return 2;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)arg_long(argv[0], 1));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
		die("socket");
	ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
	close(fd);
	return ok ? 0 : 1;
}

/* ----------------------------------------------------------------- verify */

struct msg {
	unsigned char *data;    /* the message as SMTP carries it */
	size_t len;
	unsigned char *der;     /* its CMS signature, DER */
	size_t derlen;
	unsigned char *content; /* the signed entity, as SMIME_read_CMS gives it */
	size_t contentlen;
};

struct group {
	const char *name;
	struct msg *msgs;
	size_t n;
	size_t bytes;
};

enum variant { V_BARE = 0, V_BAREBIN, V_DER, V_NOREV, V_REV10, V_REVBIG, V_PLAN10, V_NOCACHE, V_COUNT };
static const char *const variant_name[V_COUNT] = { "bare", "barebin", "der", "norev", "rev10", "revbig", "plan10",
	"nocache" };

struct bench {
	X509_STORE *trust;
	unsigned long trust_gen;        /* as kmsd has it: the caches work; nocache runs with 0 */
	struct ca_revidx *rev10, *revbig;
	struct kms_config *cfg;
};

static int
eml_filter(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return n > 4 && strcmp(d->d_name + n - 4, ".eml") == 0;
}

/* Take the signature (DER) and the signed content out of m for the der variant. */
static void
split_message(struct msg *m)
{
	BIO *in = BIO_new_mem_buf(m->data, (int)m->len), *dcont = NULL;
	CMS_ContentInfo *cms;
	char buf[16384];
	size_t cap = 0;
	int n, len;

	if (in == NULL || (cms = SMIME_read_CMS(in, &dcont)) == NULL || dcont == NULL)
		die("a message is not S/MIME signed (multipart/signed)");
	if ((len = i2d_CMS_ContentInfo(cms, &m->der)) <= 0)
		die("i2d_CMS_ContentInfo");
	m->derlen = (size_t)len;
	while ((n = BIO_read(dcont, buf, sizeof(buf))) > 0) {
		if (m->contentlen + (size_t)n > cap) {
			unsigned char *p;

			cap = (m->contentlen + (size_t)n) * 2;
			if ((p = realloc(m->content, cap)) == NULL)
				die("out of memory");
			m->content = p;
		}
		memcpy(m->content + m->contentlen, buf, (size_t)n);
		m->contentlen += (size_t)n;
	}
	CMS_ContentInfo_free(cms);
	BIO_free(dcont);
	BIO_free(in);
}

static void
load_group(struct group *g, const char *spec)
{
	const char *eq = strchr(spec, '=');
	struct dirent **ents = NULL;
	char *name, *dir;
	int n;

	if (eq == NULL || eq == spec || eq[1] == '\0') {
		fprintf(stderr, "milterbench: expected NAME=DIR, got %s\n", spec);
		exit(2);
	}
	if ((name = strndup(spec, (size_t)(eq - spec))) == NULL)
		die("out of memory");
	dir = (char *)eq + 1;
	g->name = name;
	if ((n = scandir(dir, &ents, eml_filter, alphasort)) <= 0) {
		fprintf(stderr, "milterbench: no *.eml in %s\n", dir);
		exit(1);
	}
	if ((g->msgs = calloc((size_t)n, sizeof(*g->msgs))) == NULL)
		die("out of memory");
	for (int i = 0; i < n; i++) {
		char *path = kms_path_join(dir, ents[i]->d_name);
		unsigned char *raw = NULL;
		size_t rawlen = 0;

		if (path == NULL || kms_read_file(path, 64u * 1024 * 1024, &raw, &rawlen) != 0)
			die(kms_last_error());
		if (mlt_canon_crlf(raw, rawlen, &g->msgs[i].data, &g->msgs[i].len) != 0)
			die("out of memory");
		g->bytes += g->msgs[i].len;
		split_message(&g->msgs[i]);
		free(raw);
		free(path);
		free(ents[i]);
	}
	free(ents);
	g->n = (size_t)n;
}

/* A random positive serial of 16 bytes, as a CA would give. */
static ASN1_INTEGER *
rand_serial(void)
{
	unsigned char b[16];
	BIGNUM *bn;
	ASN1_INTEGER *s;

	if (RAND_bytes(b, sizeof(b)) != 1)
		die("RAND_bytes");
	b[0] = (unsigned char)((b[0] & 0x7f) | 0x01);
	if ((bn = BN_bin2bn(b, sizeof(b), NULL)) == NULL || (s = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
		die("out of memory");
	BN_free(bn);
	return s;
}

/*
 * A CRL of the CA with n random revoked serials (unsigned: it goes in with
 * ca_revidx_add_checked_crl, as a CRL that was checked when it came in).
 */
static X509_CRL *
synthetic_crl(X509 *ca, long n, time_t now)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *last = ASN1_TIME_set(NULL, now - 3600), *next = ASN1_TIME_set(NULL, now + 7 * 86400);
	ASN1_TIME *when = ASN1_TIME_set(NULL, now - 86400);
	ASN1_ENUMERATED *reason = ASN1_ENUMERATED_new();

	if (crl == NULL || last == NULL || next == NULL || when == NULL || reason == NULL ||
	    !ASN1_ENUMERATED_set(reason, 1) || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) || !X509_CRL_set1_lastUpdate(crl, last) ||
	    !X509_CRL_set1_nextUpdate(crl, next))
		die("cannot make a CRL");
	for (long i = 0; i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_INTEGER *s = rand_serial();

		if (r == NULL || !X509_REVOKED_set_serialNumber(r, s) || !X509_REVOKED_set_revocationDate(r, when) ||
		    !X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, reason, 0, 0) || !X509_CRL_add0_revoked(crl, r))
			die("cannot add a CRL entry");
		ASN1_INTEGER_free(s);
	}
	ASN1_TIME_free(last);
	ASN1_TIME_free(next);
	ASN1_TIME_free(when);
	ASN1_ENUMERATED_free(reason);
	return crl;
}

/*
 * A revocation index of exactly n entries for the CA: n - 1 from synthetic
 * CRLs through the builder, the last one through ca_revidx_with.  The
 * signer must not be in it; the last entry must be.
 */
static struct ca_revidx *
make_index(X509 *ca, X509 *signer, long n)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *base = NULL, *idx = NULL;
	struct ca_rev_info info = { 0 }, got;
	ASN1_INTEGER *last = rand_serial();
	time_t now = time(NULL);
	double t0 = clock_s(CLOCK_MONOTONIC);

	if (ca_revidx_builder_new(&b) != 0)
		die(kms_last_error());
	for (long left = n - 1; left > 0; left -= CRL_CHUNK) {
		X509_CRL *crl = synthetic_crl(ca, left < CRL_CHUNK ? left : CRL_CHUNK, now);

		if (ca_revidx_add_checked_crl(b, crl, now) != 0)
			die(kms_last_error());
		X509_CRL_free(crl);
	}
	if (ca_revidx_build(b, &base) != 0)
		die(kms_last_error());
	ca_revidx_builder_free(b);
	info.revoked_at = now - 60;
	info.reason = 1;
	if (ca_revidx_with(base, X509_get_subject_name(ca), last, &info, &idx) != 0)
		die(kms_last_error());
	ca_revidx_unref(base);
	if ((long)ca_revidx_count(idx) != n) {
		fprintf(stderr, "milterbench: index holds %zu entries, not %ld\n", ca_revidx_count(idx), n);
		exit(1);
	}
	if (ca_revidx_lookup(idx, X509_get_subject_name(ca), last, &got) != 1 ||
	    ca_revidx_lookup(idx, X509_get_issuer_name(signer), X509_get0_serialNumber(signer), &got) != 0 ||
	    ca_revidx_issuer_state(idx, X509_get_subject_name(ca)) != 0)
		die("the index does not hold what it should (or holds the signer, or is stale)");
	ASN1_INTEGER_free(last);
	printf("index entries=%ld build_s=%.3f\n", n, clock_s(CLOCK_MONOTONIC) - t0);
	fflush(stdout);
	return idx;
}

/* The signer certificate of the first message (to check it is not in an index). */
static X509 *
first_signer(const struct group *g)
{
	BIO *in = BIO_new_mem_buf(g->msgs[0].data, (int)g->msgs[0].len), *dcont = NULL;
	CMS_ContentInfo *cms;
	STACK_OF(X509) *signers;
	X509 *x;

	if (in == NULL || (cms = SMIME_read_CMS(in, &dcont)) == NULL)
		die("the first message is not S/MIME signed");
	if (CMS_verify(cms, NULL, NULL, dcont, NULL, CMS_NO_SIGNER_CERT_VERIFY) != 1 ||
	    (signers = CMS_get0_signers(cms)) == NULL || sk_X509_num(signers) < 1)
		die("no signer in the first message");
	x = sk_X509_value(signers, 0);
	X509_up_ref(x);
	sk_X509_free(signers);
	CMS_ContentInfo_free(cms);
	BIO_free(dcont);
	BIO_free(in);
	return x;
}

static int
bare_verify(const struct bench *bn, const struct msg *m, unsigned int flags)
{
	BIO *in = BIO_new_mem_buf(m->data, (int)m->len), *dcont = NULL;
	CMS_ContentInfo *cms = NULL;
	int ok = 0;

	if (in != NULL && (cms = SMIME_read_CMS(in, &dcont)) != NULL)
		ok = CMS_verify(cms, NULL, bn->trust, dcont, NULL, flags) == 1;
	CMS_ContentInfo_free(cms);
	BIO_free(dcont);
	BIO_free(in);
	ERR_clear_error();
	return ok;
}

static int
der_verify(const struct bench *bn, const struct msg *m)
{
	const unsigned char *p = m->der;
	CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)m->derlen);
	BIO *content = BIO_new_mem_buf(m->content, (int)m->contentlen);
	int ok = 0;

	if (cms != NULL && content != NULL)
		ok = CMS_verify(cms, NULL, bn->trust, content, NULL, CMS_BINARY) == 1;
	CMS_ContentInfo_free(cms);
	BIO_free(content);
	ERR_clear_error();
	return ok;
}

static int
kms_verify(const struct bench *bn, const struct msg *m, enum variant v)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;
	struct mlt_rewrite *rw = NULL;
	int ok;

	memset(&ctx, 0, sizeof(ctx));
	ctx.trust = bn->trust;
	ctx.trust_gen = v == V_NOCACHE ? 0 : bn->trust_gen;
	if (v == V_NOCACHE)
		mlt_certcache_clear();  /* every certificate decoded again, as before the caches */
	ctx.rev = v == V_NOREV ? NULL : v == V_REVBIG ? bn->revbig : bn->rev10;
	ctx.authserv_id = bn->cfg->kmsd.authserv_id;
	mlt_limits_from_config(bn->cfg, &ctx.limits);
	if (mlt_check_message(&ctx, m->data, m->len, &res) != 0)
		return 0;
	ok = res->verdict == POL_V_PASS;
	if (ok && v == V_PLAN10)
		ok = mlt_rewrite_plan(bn->cfg, ctx.authserv_id, res, m->data, m->len, &rw) == 0 &&
		    rw->action == KMS_ACT_ACCEPT && rw->nedits > 0;
	if (!ok)
		fprintf(stderr, "milterbench: %s: verdict %s (%s)\n", variant_name[v], pol_verdict_name(res->verdict),
		    res->detail ? res->detail : "");
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	return ok;
}

/* One variant over the group's messages (cycling) for about secs; per-message wall and CPU seconds. */
static void
run_variant(const struct bench *bn, const struct group *g, enum variant v, double secs, long *msgs,
    double *wall, double *cpu)
{
	double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), w1;
	long n = 0;

	do {
		/* Whole passes over the messages, so that every one counts the same. */
		for (size_t i = 0; i < g->n; i++) {
			int ok;

			switch (v) {
			case V_BARE: ok = bare_verify(bn, &g->msgs[i], 0); break;
			case V_BAREBIN: ok = bare_verify(bn, &g->msgs[i], CMS_BINARY); break;
			case V_DER: ok = der_verify(bn, &g->msgs[i]); break;
			default: ok = kms_verify(bn, &g->msgs[i], v); break;
			}

			if (!ok) {
				fprintf(stderr, "milterbench: %s/%s: message %zu did not verify\n", g->name,
				    variant_name[v], i);
				exit(1);
			}
		}
		n += (long)g->n;
		w1 = clock_s(CLOCK_MONOTONIC);
	} while (w1 - w0 < secs);
	*msgs = n;
	*wall = (w1 - w0) / (double)n;
	*cpu = (clock_s(CLOCK_THREAD_CPUTIME_ID) - c0) / (double)n;
}

static int
cmd_verify(int argc, char **argv)
{
	struct bench bn;
	struct group *groups;
	X509 *ca, *signer;
	FILE *fp;
	long rounds, bign;
	double secs;
	int ng;

	if (argc < 5) {
		fprintf(stderr, "usage: milterbench verify CAFILE ROUNDS SECONDS BIGN NAME=DIR...\n");
		return 2;
	}
	rounds = arg_long(argv[1], 1);
	if (rounds > MAX_ROUNDS)
		rounds = MAX_ROUNDS;
	secs = arg_double(argv[2]);
	bign = arg_long(argv[3], 11);
	ng = argc - 4;
	memset(&bn, 0, sizeof(bn));
	mlt_smime_init();
	if (kms_config_load(NULL, &bn.cfg) != 0)
		die(kms_last_error());
	if ((fp = fopen(argv[0], "r")) == NULL || (ca = PEM_read_X509(fp, NULL, NULL, NULL)) == NULL)
		die("cannot read the CA certificate");
	fclose(fp);
	bn.trust_gen = mlt_generation_next();
	if ((bn.trust = X509_STORE_new()) == NULL || !X509_STORE_add_cert(bn.trust, ca))
		die("cannot make the trust store");
	if ((groups = calloc((size_t)ng, sizeof(*groups))) == NULL)
		die("out of memory");
	for (int i = 0; i < ng; i++)
		load_group(&groups[i], argv[4 + i]);
	signer = first_signer(&groups[0]);
	bn.rev10 = make_index(ca, signer, 10);
	bn.revbig = make_index(ca, signer, bign);

	for (int gi = 0; gi < ng; gi++) {
		const struct group *g = &groups[gi];
		double wall[V_COUNT][MAX_ROUNDS], cpu[V_COUNT][MAX_ROUNDS];
		long msgs[V_COUNT] = { 0 };

		printf("group %s messages=%zu avg_bytes=%zu\n", g->name, g->n, g->bytes / g->n);
		/* Warm up (caches, lazily built OpenSSL tables), then alternate the variants round by round. */
		for (int v = 0; v < V_COUNT; v++) {
			long n;
			double w, c;

			run_variant(&bn, g, (enum variant)v, secs / 4, &n, &w, &c);
		}
		for (long r = 0; r < rounds; r++) {
			for (int k = 0; k < V_COUNT; k++) {
				int v = (int)((k + r) % V_COUNT);
				long n;

				run_variant(&bn, g, (enum variant)v, secs, &n, &wall[v][r], &cpu[v][r]);
				msgs[v] += n;
			}
		}
		for (int v = 0; v < V_COUNT; v++) {
			double mw = median(wall[v], (int)rounds), mc = median(cpu[v], (int)rounds);

			printf("row %s %s msgs=%ld wall_us=%.1f cpu_us=%.1f rate=%.1f\n", g->name, variant_name[v],
			    msgs[v], mw * 1e6, mc * 1e6, 1.0 / mc);
		}
		fflush(stdout);
	}
	for (int i = 0; i < ng; i++) {
		for (size_t k = 0; k < groups[i].n; k++) {
			free(groups[i].msgs[k].data);
			OPENSSL_free(groups[i].msgs[k].der);
			free(groups[i].msgs[k].content);
		}
		free(groups[i].msgs);
		free((char *)groups[i].name);
	}
	free(groups);
	ca_revidx_unref(bn.rev10);
	ca_revidx_unref(bn.revbig);
	X509_STORE_free(bn.trust);
	X509_free(signer);
	X509_free(ca);
	kms_config_unref(bn.cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "drive") == 0)
		return cmd_drive(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "probe") == 0)
		return cmd_probe(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "verify") == 0)
		return cmd_verify(argc - 2, argv + 2);
	fprintf(stderr, "usage: milterbench drive SINKOUT COUNT TIMEOUT -- CMD...\n"
	    "       milterbench probe PORT\n"
	    "       milterbench verify CAFILE ROUNDS SECONDS BIGN NAME=DIR...\n");
	return 2;
}
