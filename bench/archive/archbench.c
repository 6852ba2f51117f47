/*
 * archbench.c - the driver of bench/archive/run: builds an archive of
 * S/MIME encrypted messages and measures the in-process floor of bare
 * CMS_decrypt() calls over it.
 *
 *   archbench gen CERT N SIZE DIR
 *       N messages, each with a SIZE-byte text/plain body of its own,
 *       encrypted with CMS_encrypt (AES-256-CBC, RSA key transport) to
 *       CERT, as DIR/eml/NNNNNN.eml and all of them as DIR/archive.mbox.
 *   archbench floor KEY CERT SIZE DIR
 *       every DIR/eml/ *.eml read into memory and parsed
 *       (SMIME_read_CMS), then CMS_decrypt() on each in a loop, timed on
 *       its own; each plaintext is checked against the one gen encrypted
 *       (SIZE as given to gen).
 *   archbench measure OUT -- CMD...
 *       run CMD, write "wall_s=... cpu_s=..." (CPU of CMD and the children
 *       it waited for) to OUT.
 *
 * The plaintext of message i is a function of i alone, so the floor checks
 * every decryption without storing the originals.
 */
#include "config.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/common.h"

#define BASE_TIME 1767258000    /* 2026-01-01 09:00:00 UTC: message i is i minutes later */

/* ----------------------------------------------------------------- helpers */

static void
die(const char *what)
{
	fprintf(stderr, "archbench: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long
arg_long(const char *s, long min)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < min) {
		fprintf(stderr, "archbench: bad number %s\n", s);
		exit(2);
	}
	return v;
}

static char *
path2(const char *dir, const char *name)
{
	char *p = kms_path_join(dir, name);

	if (p == NULL)
		die("out of memory");
	return p;
}

/* The MIME entity that message i encrypts: a text part of about size bytes. */
static char *
plaintext(long i, long size, size_t *len)
{
	static const char words[] = "quarterly numbers contract draft meeting invoice budget review minutes "
	    "shipment forecast audit schedule approval supplier payroll ";
	size_t cap = (size_t)size + 512, n = 0, w = (size_t)i * 7;
	char *p = malloc(cap);

	if (p == NULL)
		die("out of memory");
	n += (size_t)snprintf(p, cap, "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
	    "Archive benchmark message %ld.\r\n", i);
	while (n < (size_t)size && n + 80 < cap) {
		size_t col = 0;

		while (col < 70) {
			char c = words[w++ % (sizeof(words) - 1)];

			p[n++] = c;
			col++;
		}
		p[n++] = '\r';
		p[n++] = '\n';
	}
	*len = n;
	return p;
}

static X509 *
read_cert(const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *x;

	if (fp == NULL)
		die(path);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	if (x == NULL)
		die(path);
	return x;
}

/* --------------------------------------------------------------------- gen */

static void
write_all(FILE *fp, const void *p, size_t n, const char *what)
{
	if (fwrite(p, 1, n, fp) != n)
		die(what);
}

static int
cmd_gen(const char *certfile, long n, long size, const char *dir)
{
	X509 *cert = read_cert(certfile);
	STACK_OF(X509) *rcpts = sk_X509_new_null();
	char *edir = path2(dir, "eml"), *mbox = path2(dir, "archive.mbox");
	FILE *mb;

	if (rcpts == NULL || !sk_X509_push(rcpts, cert))
		die("out of memory");
	if (mkdir(edir, 0755) != 0)
		die(edir);
	if ((mb = fopen(mbox, "w")) == NULL)
		die(mbox);
	for (long i = 0; i < n; i++) {
		size_t plen, hlen;
		char *plain = plaintext(i, size, &plen), hdr[600], name[32], date[64], *path;
		BIO *in = BIO_new_mem_buf(plain, (int)plen), *out = BIO_new(BIO_s_mem());
		CMS_ContentInfo *cms;
		const char *body;
		long blen;
		time_t t = BASE_TIME + 60 * i;
		struct tm tm;
		FILE *fp;

		if (in == NULL || out == NULL)
			die("out of memory");
		cms = CMS_encrypt(rcpts, in, EVP_aes_256_cbc(), CMS_BINARY);
		if (cms == NULL || !SMIME_write_CMS(out, cms, NULL, CMS_BINARY))
			die("CMS_encrypt");
		blen = BIO_get_mem_data(out, (char **)&body);
		gmtime_r(&t, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
		hlen = (size_t)snprintf(hdr, sizeof(hdr), "From: Sender %ld <sender%ld@bench.example.org>\n"
		    "To: Alice Example <alice@bench.example.org>\nSubject: archive message %ld\nDate: %s\n"
		    "Message-ID: <%ld.archbench@bench.example.org>\n", i % 50, i % 50, i, date, i);
		snprintf(name, sizeof(name), "%06ld.eml", i);
		path = path2(edir, name);
		if ((fp = fopen(path, "w")) == NULL)
			die(path);
		write_all(fp, hdr, hlen, path);
		write_all(fp, body, (size_t)blen, path);
		if (fclose(fp) != 0)
			die(path);
		strftime(date, sizeof(date), "%a %b %e %H:%M:%S %Y", &tm);
		fprintf(mb, "From sender%ld@bench.example.org %s\n", i % 50, date);
		write_all(mb, hdr, hlen, mbox);
		write_all(mb, body, (size_t)blen, mbox);
		fputc('\n', mb);
		free(path);
		CMS_ContentInfo_free(cms);
		BIO_free(in);
		BIO_free(out);
		free(plain);
	}
	if (fclose(mb) != 0)
		die(mbox);
	free(edir);
	free(mbox);
	sk_X509_pop_free(rcpts, X509_free);
	return 0;
}

/* ------------------------------------------------------------------- floor */

struct item {
	long index;                 /* from the file name */
	unsigned char *raw;
	size_t len;
	CMS_ContentInfo *cms;
};

static int
cmp_item(const void *a, const void *b)
{
	const struct item *x = a, *y = b;

	return (x->index > y->index) - (x->index < y->index);
}

static struct item *
load_items(const char *dir, size_t *count)
{
	char *edir = path2(dir, "eml");
	DIR *d = opendir(edir);
	struct dirent *e;
	struct item *items = NULL;
	size_t n = 0, cap = 0;

	if (d == NULL)
		die(edir);
	while ((e = readdir(d)) != NULL) {
		char *p, *end;
		long idx;

		if (strlen(e->d_name) < 5 || strcmp(e->d_name + strlen(e->d_name) - 4, ".eml") != 0)
			continue;
		idx = strtol(e->d_name, &end, 10);
		if (n == cap) {
			cap = cap ? 2 * cap : 1024;
			if ((items = realloc(items, cap * sizeof(*items))) == NULL)
				die("out of memory");
		}
		p = path2(edir, e->d_name);
		items[n].index = idx;
		items[n].cms = NULL;
		if (kms_read_file(p, 64 * 1024 * 1024, &items[n].raw, &items[n].len) != 0)
			die(p);
		free(p);
		n++;
	}
	closedir(d);
	free(edir);
	qsort(items, n, sizeof(*items), cmp_item);
	*count = n;
	return items;
}

static int
cmd_floor(const char *keyfile, const char *certfile, long size, const char *dir)
{
	X509 *cert = read_cert(certfile);
	EVP_PKEY *key;
	FILE *fp = fopen(keyfile, "r");
	struct item *items;
	size_t n, ok = 0;
	double t0, parse_s, decrypt_s;

	if (fp == NULL || (key = PEM_read_PrivateKey(fp, NULL, NULL, NULL)) == NULL)
		die(keyfile);
	fclose(fp);
	items = load_items(dir, &n);
	if (n == 0)
		die("no messages");

	/* Reading the S/MIME entity (headers, base64, DER) first, on its own. */
	t0 = now_s();
	for (size_t i = 0; i < n; i++) {
		BIO *b = BIO_new_mem_buf(items[i].raw, (int)items[i].len);

		if (b == NULL || (items[i].cms = SMIME_read_CMS(b, NULL)) == NULL)
			die("SMIME_read_CMS");
		BIO_free(b);
	}
	parse_s = now_s() - t0;

	/* The floor: bare CMS_decrypt with the key and its certificate. */
	{
		BIO **outs = calloc(n, sizeof(BIO *));

		if (outs == NULL)
			die("out of memory");
		for (size_t i = 0; i < n; i++)
			if ((outs[i] = BIO_new(BIO_s_mem())) == NULL)
				die("out of memory");
		t0 = now_s();
		for (size_t i = 0; i < n; i++)
			if (CMS_decrypt(items[i].cms, key, cert, NULL, outs[i], CMS_BINARY) == 1)
				ok++;
		decrypt_s = now_s() - t0;
		ERR_clear_error();
		/* Every plaintext is the one gen encrypted. */
		for (size_t i = 0; i < n; i++) {
			const char *got;
			long glen = BIO_get_mem_data(outs[i], (char **)&got);
			size_t wlen;
			char *want = plaintext(items[i].index, size, &wlen);

			if ((size_t)glen != wlen || memcmp(got, want, wlen) != 0) {
				fprintf(stderr, "archbench: message %ld decrypts to something else\n", items[i].index);
				exit(1);
			}
			free(want);
			BIO_free(outs[i]);
		}
		free(outs);
	}
	printf("messages=%zu decrypted=%zu parse_s=%.3f decrypt_s=%.3f msgs_per_s=%.1f "
	    "msgs_per_s_with_parse=%.1f\n", n, ok, parse_s, decrypt_s, n / decrypt_s, n / (parse_s + decrypt_s));
	for (size_t i = 0; i < n; i++) {
		CMS_ContentInfo_free(items[i].cms);
		free(items[i].raw);
	}
	free(items);
	EVP_PKEY_free(key);
	X509_free(cert);
	return ok == n ? 0 : 1;
}

/* ----------------------------------------------------------------- measure */

static int
cmd_measure(const char *outfile, char **argv)
{
	struct rusage ru;
	double t0 = now_s();
	pid_t pid;
	int status;
	FILE *fp;

	if ((pid = fork()) < 0)
		die("fork");
	if (pid == 0) {
		execvp(argv[0], argv);
		perror(argv[0]);
		_exit(127);
	}
	if (wait4(pid, &status, 0, &ru) != pid)
		die("wait4");
	if ((fp = fopen(outfile, "w")) == NULL)
		die(outfile);
	fprintf(fp, "wall_s=%.3f cpu_s=%.3f\n", now_s() - t0, (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	fclose(fp);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int
main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "gen") == 0)
		return cmd_gen(argv[2], arg_long(argv[3], 1), arg_long(argv[4], 100), argv[5]);
	if (argc == 6 && strcmp(argv[1], "floor") == 0)
		return cmd_floor(argv[2], argv[3], arg_long(argv[4], 100), argv[5]);
	if (argc >= 5 && strcmp(argv[1], "measure") == 0 && strcmp(argv[3], "--") == 0)
		return cmd_measure(argv[2], argv + 4);
	fprintf(stderr, "usage: archbench gen CERT N SIZE DIR\n"
	    "       archbench floor KEY CERT SIZE DIR\n"
	    "       archbench measure OUT -- CMD...\n");
	return 2;
}
