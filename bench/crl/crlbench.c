/*
 * crlbench.c - the driver of bench/crl/run: CRL build and sign time and
 * memory against `openssl ca -gencrl`, revocation index build time, lookup
 * cost and signature checks per lookup.
 *
 *   crlbench setup DIR N [rsa:3072|ec:p384]
 *       a store with N revoked certificates and, for OpenSSL, the same
 *       certificates in DIR/index.txt with DIR/openssl.cnf, DIR/ca.key/.pem
 *   crlbench issue DIR          sign a full CRL from the store (DIR/ours.crl)
 *   crlbench index DIR          index from the store and from ours.crl;
 *                               lookups; signature checks; OpenSSL's
 *                               per-certificate CRL check for comparison
 *   crlbench measure -- CMD...  run CMD, print "wall_s max_rss_kb"
 *
 * Linked with --as-needed and without the fetch code, so that the measured
 * process loads no more libraries than the CRL build needs.
 *
 * Signature checks are counted by interposing the verification entry
 * points our code could reach (X509_CRL_verify, EVP_DigestVerify,
 * EVP_DigestVerifyFinal, EVP_PKEY_verify): libkmsca is linked statically
 * into this program, so its calls bind to the counting wrappers here.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"

/* ------------------------------------------------- counting signature checks */

static long verify_calls;       /* every interposed verification entry point */
static long crl_verify_calls;   /* X509_CRL_verify alone: whole-CRL signature checks */

int
X509_CRL_verify(X509_CRL *crl, EVP_PKEY *pkey)
{
	int (*real)(X509_CRL *, EVP_PKEY *) = (int (*)(X509_CRL *, EVP_PKEY *))dlsym(RTLD_NEXT, "X509_CRL_verify");

	verify_calls++;
	crl_verify_calls++;
	return real(crl, pkey);
}

int
EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen)
{
	int (*real)(EVP_MD_CTX *, const unsigned char *, size_t, const unsigned char *, size_t) =
	    (int (*)(EVP_MD_CTX *, const unsigned char *, size_t, const unsigned char *, size_t))
	    dlsym(RTLD_NEXT, "EVP_DigestVerify");

	verify_calls++;
	return real(ctx, sig, siglen, tbs, tbslen);
}

int
EVP_DigestVerifyFinal(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen)
{
	int (*real)(EVP_MD_CTX *, const unsigned char *, size_t) =
	    (int (*)(EVP_MD_CTX *, const unsigned char *, size_t))dlsym(RTLD_NEXT, "EVP_DigestVerifyFinal");

	verify_calls++;
	return real(ctx, sig, siglen);
}

int
EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen)
{
	int (*real)(EVP_PKEY_CTX *, const unsigned char *, size_t, const unsigned char *, size_t) =
	    (int (*)(EVP_PKEY_CTX *, const unsigned char *, size_t, const unsigned char *, size_t))
	    dlsym(RTLD_NEXT, "EVP_PKEY_verify");

	verify_calls++;
	return real(ctx, sig, siglen, tbs, tbslen);
}

/* ----------------------------------------------------------------- helpers */

static void
die(const char *what)
{
	fprintf(stderr, "crlbench: %s: %s\n", what, kms_last_error());
	exit(1);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time of this thread: lookups are timed on it, so other load on the machine does not count. */
static double
cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *
path_in(const char *dir, const char *name)
{
	char *p = kms_path_join(dir, name);

	if (p == NULL)
		die("out of memory");
	return p;
}

static struct kms_store *
open_store(const char *dir, int create)
{
	struct kms_store *st = NULL;
	char *p = path_in(dir, "kms.db");

	if (kms_store_open(p, create ? KMS_STORE_CREATE : 0, &st) != 0)
		die(p);
	free(p);
	return st;
}

static void
add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;

	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	if ((e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)) == NULL || !X509_add_ext(x, e, -1))
		die("extension");
	X509_EXTENSION_free(e);
}

static const EVP_MD *
md_of(EVP_PKEY *k)
{
	return EVP_PKEY_get_base_id(k) == EVP_PKEY_EC && EVP_PKEY_get_bits(k) > 256 ? EVP_sha384() : EVP_sha256();
}

static struct ca *
load_ca(const char *dir)
{
	struct ca *ca = calloc(1, sizeof(*ca));
	char *kp = path_in(dir, "ca.key"), *cp = path_in(dir, "ca.pem");
	FILE *fp;

	if ((fp = fopen(kp, "r")) == NULL || (ca->key = PEM_read_PrivateKey(fp, NULL, NULL, NULL)) == NULL)
		die(kp);
	fclose(fp);
	if ((fp = fopen(cp, "r")) == NULL || (ca->cert = PEM_read_X509(fp, NULL, NULL, NULL)) == NULL)
		die(cp);
	fclose(fp);
	ca->name = strdup("bench-ca");
	free(kp);
	free(cp);
	return ca;
}

/* ------------------------------------------------------------------- setup */

static const char *const reason_names[] = { NULL, "keyCompromise", "affiliationChanged", "superseded",
	"cessationOfOperation" };
static const int reason_codes[] = { 0, 1, 3, 4, 5 };

static void
asn1_time_text(time_t t, char *buf, size_t len)
{
	struct tm tm;

	/* index.txt keeps UTCTime: two-digit years. */
	gmtime_r(&t, &tm);
	snprintf(buf, len, "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec);
}

static int
cmd_setup(const char *dir, long n, const char *keytype)
{
	struct kms_store *st;
	sqlite3_stmt *s = NULL;
	EVP_PKEY *key;
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	FILE *idx, *fp;
	char *p, exp[32], rev[32];
	time_t now = time(NULL);
	double t0 = now_s();

	if (kms_mkdir_p(dir, 0700) != 0)
		die(dir);
	if (strcmp(keytype, "ec:p384") == 0)
		key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	else
		key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	if (key == NULL)
		die("keygen");
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Bench Org", -1, -1, 0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"Bench Org S/MIME CA", -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 3650);
	X509_set_pubkey(x, key);
	add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
	add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
	add_ext(x, NID_subject_key_identifier, "hash");
	if (!X509_sign(x, key, md_of(key)))
		die("sign CA");
	p = path_in(dir, "ca.key");
	if ((fp = fopen(p, "w")) == NULL || !PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL))
		die(p);
	fclose(fp);
	free(p);
	p = path_in(dir, "ca.pem");
	if ((fp = fopen(p, "w")) == NULL || !PEM_write_X509(fp, x))
		die(p);
	fclose(fp);
	free(p);

	p = path_in(dir, "openssl.cnf");
	if ((fp = fopen(p, "w")) == NULL)
		die(p);
	fprintf(fp, "[ ca ]\ndefault_ca = bench\n[ bench ]\ndir = %s\ndatabase = $dir/index.txt\n"
	    "crlnumber = $dir/crlnumber\ncertificate = $dir/ca.pem\nprivate_key = $dir/ca.key\n"
	    "default_md = %s\ndefault_crl_hours = 24\ncrl_extensions = crl_ext\nunique_subject = no\n"
	    "[ crl_ext ]\nauthorityKeyIdentifier = keyid:always\n", dir,
	    EVP_MD_get0_name(md_of(key)));
	fclose(fp);
	free(p);
	p = path_in(dir, "crlnumber");
	kms_write_file_atomic(p, "01\n", 3, 0644);
	free(p);
	p = path_in(dir, "index.txt.attr");
	kms_write_file_atomic(p, "unique_subject = no\n", 20, 0644);
	free(p);

	/* Rows as ca_store_revoke() leaves them before any CRL (crl_number 1). */
	st = open_store(dir, 1);
	p = path_in(dir, "index.txt");
	if ((idx = fopen(p, "w")) == NULL)
		die(p);
	free(p);
	asn1_time_text(now + 86400L * 365, exp, sizeof(exp));
	if (kms_store_begin(st) != 0 || sqlite3_prepare_v2(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, cert, issued, "
	    "revoked_at, reason, crl_number) VALUES (?, 'u@example.org', 'sign', 'rsa:2048', 'enroll', 'CN=user', ?, ?, "
	    "x'00', ?, ?, ?, 1)", -1, &s, NULL) != SQLITE_OK)
		die("insert");
	for (long i = 0; i < n; i++) {
		unsigned char r[16];
		char *hex, *h;
		int k = (int)(i % 5);
		time_t when = now - 60 - i % 86400;

		RAND_bytes(r, sizeof(r));
		r[0] = (unsigned char)((r[0] & 0x7f) | 0x01);
		hex = kms_hex(r, sizeof(r));
		h = hex + strspn(hex, "0");
		sqlite3_bind_text(s, 1, h, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)now - 86400);
		sqlite3_bind_int64(s, 3, (sqlite3_int64)now + 86400L * 365);
		sqlite3_bind_int64(s, 4, (sqlite3_int64)now - 86400);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)when);
		sqlite3_bind_int(s, 6, reason_codes[k]);
		if (sqlite3_step(s) != SQLITE_DONE)
			die("insert row");
		sqlite3_reset(s);
		asn1_time_text(when, rev, sizeof(rev));
		for (char *c = h; *c; c++)
			if (*c >= 'a' && *c <= 'f')
				*c = (char)(*c - 'a' + 'A');
		/* OpenSSL's index wants an even number of hex digits. */
		fprintf(idx, "R\t%s\t%s%s%s\t%s%s\tunknown\t/CN=user%ld\n", exp, rev, reason_names[k] ? "," : "",
		    reason_names[k] ? reason_names[k] : "", strlen(h) % 2 ? "0" : "", h, i);
		free(hex);
	}
	sqlite3_finalize(s);
	if (kms_store_commit(st) != 0)
		die("commit");
	fclose(idx);
	kms_store_close(st);
	X509_free(x);
	X509_NAME_free(name);
	EVP_PKEY_free(key);
	fprintf(stderr, "setup %ld revoked in %.1f s\n", n, now_s() - t0);
	return 0;
}

/* ------------------------------------------------------------------- issue */

static int
kmsd_cmd_issue(const char *dir)
{
	struct kms_store *st = open_store(dir, 0);
	struct ca *ca = load_ca(dir);
	struct ca_crl_opts o = { 24, 0, NULL, NULL };
	struct ca_crl_set *set = NULL;
	char *p = path_in(dir, "ours.crl");

	if (ca_crl_issue(st, ca, &o, &set) != 0)
		die("ca_crl_issue");
	if (kms_write_file_atomic(p, set->full_der, set->full_len, 0644) != 0)
		die(p);
	printf("%zu\n", set->full_len);
	ca_crl_set_free(set);
	kms_store_close(st);
	free(p);
	return 0;
}

/* ------------------------------------------------------------------- index */

static ASN1_INTEGER *
serial_from_hex(const char *hex)
{
	BIGNUM *bn = NULL;
	ASN1_INTEGER *a;

	if (!BN_hex2bn(&bn, hex))
		die("serial");
	a = BN_to_ASN1_INTEGER(bn, NULL);
	BN_free(bn);
	return a;
}

static X509 *
leaf(struct ca *ca)
{
	X509 *x = X509_new();
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 424242);
	X509_set_subject_name(x, X509_get_subject_name(ca->cert));
	X509_set_issuer_name(x, X509_get_subject_name(ca->cert));
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	if (!X509_sign(x, ca->key, md_of(ca->key)))
		die("sign leaf");
	EVP_PKEY_free(k);
	return x;
}

static int
cmd_index(const char *dir)
{
	struct kms_store *st = open_store(dir, 0);
	struct ca *ca = load_ca(dir);
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *from_store = NULL, *from_der = NULL;
	sqlite3_stmt *s;
	char *p = path_in(dir, "ours.crl");
	unsigned char *der = NULL;
	size_t len, nq = 200000, nhit = 0;
	ASN1_INTEGER **q;
	X509_CRL *crl = NULL;
	double t0, t_store, t_parse, t_add, t_look, ns;
	long v0, calls_build, calls_look, iters = 0, hits = 0;
	const X509_NAME *iss = X509_get_subject_name(ca->cert);

	/* From the store. */
	t0 = now_s();
	if (ca_revidx_builder_new(&b) != 0 || ca_revidx_add_store(b, st, ca->cert) != 0 ||
	    ca_revidx_build(b, &from_store) != 0)
		die("index from store");
	t_store = now_s() - t0;
	ca_revidx_builder_free(b);

	/* From the DER CRL: parse, then check once and add. */
	if (kms_read_file(p, (size_t)1 << 30, &der, &len) != 0)
		die(p);
	t0 = now_s();
	{
		const unsigned char *dp = der;

		/* d2i directly: the fetch code (and libcurl) stays out of this program. */
		if ((crl = d2i_X509_CRL(NULL, &dp, (long)len)) == NULL)
			die("parse");
	}
	t_parse = now_s() - t0;
	v0 = crl_verify_calls;
	t0 = now_s();
	if (ca_revidx_builder_new(&b) != 0 || ca_revidx_add_crl(b, crl, ca->cert, time(NULL)) != 0 ||
	    ca_revidx_build(b, &from_der) != 0)
		die("index from DER");
	t_add = now_s() - t0;
	calls_build = crl_verify_calls - v0;
	ca_revidx_builder_free(b);
	if (ca_revidx_count(from_der) != ca_revidx_count(from_store))
		fprintf(stderr, "warning: %zu entries from DER, %zu from the store\n", ca_revidx_count(from_der),
		    ca_revidx_count(from_store));

	/* Queries: half revoked serials from the store, half random ones. */
	q = calloc(nq, sizeof(*q));
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT serial FROM certs WHERE revoked_at IS NOT NULL "
	    "ORDER BY random() LIMIT ?", -1, &s, NULL) != SQLITE_OK)
		die("select");
	sqlite3_bind_int64(s, 1, (sqlite3_int64)(nq / 2));
	while (sqlite3_step(s) == SQLITE_ROW && nhit < nq / 2)
		q[nhit++] = serial_from_hex((const char *)sqlite3_column_text(s, 0));
	sqlite3_finalize(s);
	for (size_t i = nhit; i < nq; i++) {
		unsigned char r[16];
		char *h;

		RAND_bytes(r, sizeof(r));
		r[0] |= 0x01;
		r[0] &= 0x7f;
		h = kms_hex(r, sizeof(r));
		q[i] = serial_from_hex(h);
		free(h);
	}
	/* Shuffle so hits and misses interleave. */
	for (size_t i = nq - 1; i > 0; i--) {
		size_t j = (size_t)rand() % (i + 1);
		ASN1_INTEGER *t = q[i];

		q[i] = q[j];
		q[j] = t;
	}
	v0 = verify_calls;
	t0 = cpu_s();
	do {
		for (size_t i = 0; i < nq; i++) {
			struct ca_rev_info info;

			hits += ca_revidx_lookup(from_der, iss, q[i], &info);
		}
		iters++;
	} while (cpu_s() - t0 < 0.5);
	t_look = cpu_s() - t0;
	calls_look = verify_calls - v0;
	ns = t_look * 1e9 / ((double)iters * (double)nq);
	if (hits != (long)nhit * iters)
		fprintf(stderr, "warning: %ld hits, expected %ld\n", hits, (long)nhit * iters);

	/* OpenSSL's own CRL check, per certificate, for comparison. */
	{
		X509_STORE *xs = X509_STORE_new();
		X509_STORE_CTX *ctx = X509_STORE_CTX_new();
		X509 *x = leaf(ca);
		int n = 0;
		double tt;

		X509_STORE_add_cert(xs, ca->cert);
		X509_STORE_add_crl(xs, crl);
		X509_STORE_set_flags(xs, X509_V_FLAG_CRL_CHECK);
		t0 = cpu_s();
		do {
			X509_STORE_CTX_init(ctx, xs, x, NULL);
			if (X509_verify_cert(ctx) != 1)
				fprintf(stderr, "warning: OpenSSL verify: %s\n",
				    X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
			X509_STORE_CTX_cleanup(ctx);
			n++;
		} while (cpu_s() - t0 < 1.0 && n < 200);
		tt = (cpu_s() - t0) / n;
		printf("index_store_s=%.3f parse_der_s=%.3f index_der_s=%.3f entries=%zu lookup_ns=%.0f "
		    "sigchecks_build=%ld sigchecks_per_lookup=%.6f lookups=%ld openssl_crl_check_ms=%.3f\n",
		    t_store, t_parse, t_add, ca_revidx_count(from_der), ns, calls_build,
		    (double)calls_look / ((double)iters * (double)nq), (long)iters * (long)nq, tt * 1e3);
		X509_free(x);
		X509_STORE_CTX_free(ctx);
		X509_STORE_free(xs);
	}
	for (size_t i = 0; i < nq; i++)
		ASN1_INTEGER_free(q[i]);
	free(q);
	free(der);
	free(p);
	X509_CRL_free(crl);
	ca_revidx_unref(from_store);
	ca_revidx_unref(from_der);
	kms_store_close(st);
	return 0;
}

/* ----------------------------------------------------------------- measure */

static int
cmd_measure(char **argv)
{
	struct rusage ru;
	double t0 = now_s();
	pid_t pid;
	int status;

	if ((pid = fork()) < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		execvp(argv[0], argv);
		perror(argv[0]);
		_exit(127);
	}
	if (wait4(pid, &status, 0, &ru) != pid) {
		perror("wait4");
		return 1;
	}
	printf("%.2f %ld\n", now_s() - t0, ru.ru_maxrss);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int
main(int argc, char **argv)
{
	kms_log_open("crlbench", 0, 1, KMS_LOG_WARNING);
	if (argc >= 4 && strcmp(argv[1], "setup") == 0)
		return cmd_setup(argv[2], atol(argv[3]), argc > 4 ? argv[4] : "rsa:3072");
	if (argc == 3 && strcmp(argv[1], "issue") == 0)
		return kmsd_cmd_issue(argv[2]);
	if (argc == 3 && strcmp(argv[1], "index") == 0)
		return cmd_index(argv[2]);
	if (argc >= 4 && strcmp(argv[1], "measure") == 0 && strcmp(argv[2], "--") == 0)
		return cmd_measure(argv + 3);
	fprintf(stderr, "usage: crlbench setup DIR N [rsa:3072|ec:p384] | issue DIR | index DIR | "
	    "measure -- CMD...\n");
	return 2;
}
