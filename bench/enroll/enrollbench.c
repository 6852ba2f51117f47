/*
 * enrollbench.c - the driver of bench/enroll/run: users enrolled per second
 * through a running kmsd's control socket, against the in-process floor of
 * the same key generation and certificate signing, and the cost of each
 * step of an enrollment on its own.
 *
 *   enrollbench client SOCKET N CLIENTS PREFIX
 *       N "enroll" requests over CLIENTS concurrent connections, spoken as
 *       kmsctl speaks them (one JSON line, one reply line); every reply is
 *       checked (ok, both serials, a PKCS#12 that parses).
 *   enrollbench floor CONF N THREADS MIN_SECONDS
 *       the floor: two ca_keygen() and two ca_issue() per user with kmsd's
 *       own CA key (loaded from the store named by CONF), on THREADS
 *       threads, for N users or MIN_SECONDS, whichever is longer.
 *   enrollbench steps CONF N WORKDIR
 *       one thread, each step of kmsd_cmd_enroll() timed on its own: key pairs,
 *       certificates, escrow envelope, the store transaction and the audit
 *       row (in a scratch store in WORKDIR, synchronous=FULL like kmsd's;
 *       their CPU time apart, the rest is waiting for the disk), PKCS#12 at
 *       the configured and at one iteration, the reply JSON.
 *
 * Every mode prints one line of key=value pairs for the run script.  The
 * CA key is read from the store with the passphrase file of CONF, as kmsd
 * reads it; nothing is written to kmsd's state.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "archive/archive.h"
#include "ca/ca.h"
#include "common/common.h"

#define SECURE_HEAP_SIZE (2 * 1024 * 1024)      /* as kmsd */

/* ----------------------------------------------------------------- helpers */

static void
die(const char *what)
{
	fprintf(stderr, "enrollbench: %s: %s\n", what, kms_last_error());
	exit(1);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread: what a step costs apart from waiting for the disk. */
static double
thread_cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time (user + system) of the whole process so far. */
static double
cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	    ru.ru_stime.tv_usec / 1e6;
}

static long
arg_long(const char *s, long min)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < min) {
		fprintf(stderr, "enrollbench: bad number %s\n", s);
		exit(2);
	}
	return v;
}

static struct kms_config *
load_config(const char *path)
{
	struct kms_config *cfg = NULL;

	if (kms_config_load(path, &cfg) != 0)
		die(path);
	return cfg;
}

/* kmsd's CA, from its store, opened with its passphrase file (read-only). */
static struct ca *
load_ca(const struct kms_config *cfg)
{
	struct kms_store *st = NULL;
	struct ca *ca = NULL;
	char *db = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE), *pass = NULL;

	if (db == NULL)
		die("out of memory");
	if (kms_store_open(db, KMS_STORE_READONLY, &st) != 0)
		die(db);
	if (kms_read_secret_file(cfg->ca.passphrase_file, &pass) != 0)
		die(cfg->ca.passphrase_file);
	if (ca_store_load(st, cfg->ca.name, pass, &ca) != 0 || ca->key == NULL)
		die("loading the CA (run kmsctl init first)");
	kms_secret_free(pass);
	kms_store_close(st);
	free(db);
	return ca;
}

static void
issue_pair(const struct kms_config *cfg, const struct ca *ca, const char *email, EVP_PKEY *skey, EVP_PKEY *ekey,
    X509 **scert, X509 **ecert)
{
	struct ca_issue_req sr = { .usage = CA_USAGE_SIGN, .pubkey = skey, .email = email, .name = email,
		.days = (int)cfg->ca.user_validity_days, .crl_url = cfg->crl.url };
	struct ca_issue_req er = sr;

	er.usage = CA_USAGE_ENC;
	er.pubkey = ekey;
	if (ca_issue(ca, &sr, scert) != 0 || ca_issue(ca, &er, ecert) != 0)
		die("ca_issue");
}

/* ------------------------------------------------------------------ client */

struct client {
	const char *sock;
	const char *prefix;
	int index;
	long n;                 /* enrollments on this connection */
	double lat_sum, lat_max;
	long p12_bytes;
	pthread_t thread;
};

static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

static void
client_fail(const struct client *c, const char *what, const char *detail)
{
	pthread_mutex_lock(&err_lock);
	fprintf(stderr, "enrollbench: client %d: %s%s%s\n", c->index, what, detail ? ": " : "", detail ? detail : "");
	pthread_mutex_unlock(&err_lock);
	exit(1);
}

static int
connect_to(const char *path)
{
	struct sockaddr_un sa;
	int fd;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The reply must carry both serials and a PKCS#12 that parses. */
static void
check_reply(struct client *c, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *reply = json_loadb(line, len, 0, &jerr), *r;
	const char *b64;
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t derlen = 0;
	PKCS12 *p12;

	if (reply == NULL)
		client_fail(c, "malformed reply", jerr.text);
	if (!json_is_true(json_object_get(reply, "ok")))
		client_fail(c, "enroll refused", json_string_value(json_object_get(json_object_get(reply, "error"),
		    "message")));
	r = json_object_get(reply, "result");
	b64 = json_string_value(json_object_get(r, "pkcs12"));
	if (b64 == NULL || json_string_value(json_object_get(json_object_get(r, "signing"), "serial")) == NULL ||
	    json_string_value(json_object_get(json_object_get(r, "encryption"), "serial")) == NULL)
		client_fail(c, "reply without serials or PKCS#12", NULL);
	if (kms_b64_decode(b64, strlen(b64), &der, &derlen) != 0)
		client_fail(c, "PKCS#12 is not base64", NULL);
	p = der;
	if ((p12 = d2i_PKCS12(NULL, &p, (long)derlen)) == NULL)
		client_fail(c, "PKCS#12 does not parse", NULL);
	PKCS12_free(p12);
	c->p12_bytes += (long)derlen;
	kms_wipe(der, derlen);
	free(der);
	/* The reply holds the password and the keys: wipe what jansson keeps. */
	kms_wipe((char *)b64, strlen(b64));
	if (json_string_value(json_object_get(r, "password")))
		kms_wipe((char *)json_string_value(json_object_get(r, "password")),
		    strlen(json_string_value(json_object_get(r, "password"))));
	json_decref(reply);
}

static void *
client_main(void *arg)
{
	struct client *c = arg;
	struct kms_lines lb;
	int fd = connect_to(c->sock);

	if (fd < 0)
		client_fail(c, "cannot connect", strerror(errno));
	kms_lines_init(&lb, KMS_PROTO_MAX_REPLY);
	for (long i = 0; i < c->n; i++) {
		char email[200];
		json_t *req;
		char *line;
		size_t len;
		double t0, dt;

		snprintf(email, sizeof(email), "%s-c%d-u%ld@bench.example.org", c->prefix, c->index, i);
		req = json_pack("{s:s,s:{s:s,s:s}}", "cmd", "enroll", "args", "email", email, "name", email);
		t0 = now_s();
		if (req == NULL || kms_send_json(fd, req) != 0)
			client_fail(c, "cannot send", kms_last_error());
		json_decref(req);
		if (kms_lines_read(&lb, kms_read_fd, &fd, &line, &len) != 1)
			client_fail(c, "no reply from kmsd", kms_last_error());
		dt = now_s() - t0;
		c->lat_sum += dt;
		if (dt > c->lat_max)
			c->lat_max = dt;
		check_reply(c, line, len);
	}
	kms_lines_free(&lb);
	close(fd);
	return NULL;
}

static int
cmd_client(const char *sock, long n, long nclients, const char *prefix)
{
	struct client *cs = calloc((size_t)nclients, sizeof(*cs));
	double t0, wall, lat_sum = 0, lat_max = 0;
	long p12_bytes = 0;

	if (cs == NULL)
		die("out of memory");
	for (long i = 0; i < nclients; i++) {
		cs[i].sock = sock;
		cs[i].prefix = prefix;
		cs[i].index = (int)i;
		cs[i].n = n / nclients + (i < n % nclients ? 1 : 0);
	}
	t0 = now_s();
	for (long i = 0; i < nclients; i++)
		if (pthread_create(&cs[i].thread, NULL, client_main, &cs[i]) != 0)
			die("pthread_create");
	for (long i = 0; i < nclients; i++) {
		pthread_join(cs[i].thread, NULL);
		lat_sum += cs[i].lat_sum;
		if (cs[i].lat_max > lat_max)
			lat_max = cs[i].lat_max;
		p12_bytes += cs[i].p12_bytes;
	}
	wall = now_s() - t0;
	printf("users=%ld clients=%ld wall_s=%.3f users_per_s=%.2f lat_ms_mean=%.2f lat_ms_max=%.2f p12_bytes_mean=%ld\n",
	    n, nclients, wall, n / wall, 1000.0 * lat_sum / n, 1000.0 * lat_max, p12_bytes / n);
	free(cs);
	return 0;
}

/* ------------------------------------------------------------------- floor */

struct floor_worker {
	const struct kms_config *cfg;
	const struct ca *ca;
	int index;
	double until;           /* keep going until this time ... */
	long min_users;         /* ... and at least this many users */
	long done;
	pthread_t thread;
};

static void *
floor_main(void *arg)
{
	struct floor_worker *w = arg;

	while (w->done < w->min_users || now_s() < w->until) {
		EVP_PKEY *skey = NULL, *ekey = NULL;
		X509 *scert = NULL, *ecert = NULL;
		char email[100];

		snprintf(email, sizeof(email), "floor-t%d-u%ld@bench.example.org", w->index, w->done);
		if (ca_keygen(w->cfg->ca.user_key, &skey) != 0 || ca_keygen(w->cfg->ca.user_key, &ekey) != 0)
			die("ca_keygen");
		issue_pair(w->cfg, w->ca, email, skey, ekey, &scert, &ecert);
		X509_free(scert);
		X509_free(ecert);
		EVP_PKEY_free(skey);
		EVP_PKEY_free(ekey);
		w->done++;
	}
	return NULL;
}

static int
cmd_floor(const char *conf, long n, long nthreads, long min_s)
{
	struct kms_config *cfg = load_config(conf);
	struct ca *ca = load_ca(cfg);
	struct floor_worker *ws = calloc((size_t)nthreads, sizeof(*ws));
	double t0, c0, wall;
	long total = 0;

	if (ws == NULL)
		die("out of memory");
	t0 = now_s();
	c0 = cpu_s();
	for (long i = 0; i < nthreads; i++) {
		ws[i].cfg = cfg;
		ws[i].ca = ca;
		ws[i].index = (int)i;
		ws[i].until = t0 + (double)min_s;
		ws[i].min_users = n / nthreads + (i < n % nthreads ? 1 : 0);
		if (pthread_create(&ws[i].thread, NULL, floor_main, &ws[i]) != 0)
			die("pthread_create");
	}
	for (long i = 0; i < nthreads; i++) {
		pthread_join(ws[i].thread, NULL);
		total += ws[i].done;
	}
	wall = now_s() - t0;
	printf("users=%ld threads=%ld wall_s=%.3f users_per_s=%.2f cpu_ms_per_user=%.2f key=%s ca_key=%s\n", total,
	    nthreads, wall, total / wall, 1000.0 * (cpu_s() - c0) / total, cfg->ca.user_key, cfg->ca.key);
	free(ws);
	ca_free(ca);
	kms_config_unref(cfg);
	return 0;
}

/* ------------------------------------------------------------------- steps */

enum { S_KEYGEN, S_ISSUE, S_WRAP, S_STORE, S_AUDIT, S_P12, S_P12_ONE, S_REPLY, S_COUNT };
static const char *const step_names[S_COUNT] = { "keygen2", "issue2", "escrow", "store_tx", "audit_tx", "p12",
	"p12_iter1", "reply_json" };

/* A scratch store beside the bench data, with the KRK recorded so envelopes can be stored. */
static struct kms_store *
scratch_store(const char *workdir, X509 *krk, long long *krk_id)
{
	struct kms_store *st = NULL;
	char *db = kms_path_join(workdir, "steps.db"), *digests[5];
	char hex[65];

	if (db == NULL)
		die("out of memory");
	unlink(db);
	if (kms_store_open(db, KMS_STORE_CREATE, &st) != 0)
		die(db);
	memset(hex, 'a', 64);
	hex[64] = '\0';
	for (int i = 0; i < 5; i++)
		digests[i] = hex;
	if (esc_store_add_krk(st, krk, 5, 3, digests, krk_id) != 0)
		die("recording the KRK in the scratch store");
	free(db);
	return st;
}

static int
cmd_steps(const char *conf, long n, const char *workdir)
{
	struct kms_config *cfg = load_config(conf);
	struct ca *ca;
	struct kms_store *kst = NULL, *st;
	struct esc_krk *krk = NULL;
	enum ca_p12_format fmt;
	double sum[S_COUNT] = { 0 }, t, c, store_cpu = 0, audit_cpu = 0;
	long long krk_id = 0;
	char *db;

	/* The secure heap as kmsd sets it up: key material lands there. */
	if (kms_secmem_init(SECURE_HEAP_SIZE) != 0)
		die("secure heap");
	ca = load_ca(cfg);
	if ((db = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL ||
	    kms_store_open(db, KMS_STORE_READONLY, &kst) != 0 || esc_store_current_krk(kst, &krk) != 0)
		die("the key-recovery key (run kmsctl init first)");
	kms_store_close(kst);
	free(db);
	st = scratch_store(workdir, krk->cert, &krk_id);
	if (ca_p12_format_from_name(cfg->ca.pkcs12_format, &fmt) != 0)
		die("pkcs12_format");

	for (long i = 0; i < n; i++) {
		EVP_PKEY *skey = NULL, *ekey = NULL;
		X509 *scert = NULL, *ecert = NULL;
		unsigned char *env = NULL, *p12 = NULL;
		size_t envlen = 0, p12len = 0;
		char email[100], *serial, *b64, *js;
		struct kms_audit_rec rec = { .uid = 0, .user = "root", .role = "admin", .cmd = "enroll",
			.target = email, .outcome = "ok", .detail = "enrollment; encryption key escrowed" };
		STACK_OF(X509) *chain = sk_X509_new_null();
		json_t *res;

		snprintf(email, sizeof(email), "steps-u%ld@bench.example.org", i);
		t = now_s();
		if (ca_keygen(cfg->ca.user_key, &skey) != 0 || ca_keygen(cfg->ca.user_key, &ekey) != 0)
			die("ca_keygen");
		sum[S_KEYGEN] += now_s() - t;

		t = now_s();
		issue_pair(cfg, ca, email, skey, ekey, &scert, &ecert);
		sum[S_ISSUE] += now_s() - t;

		t = now_s();
		if (esc_wrap_key(krk->cert, ekey, &env, &envlen) != 0)
			die("esc_wrap_key");
		sum[S_WRAP] += now_s() - t;

		t = now_s();
		c = thread_cpu_s();
		if ((serial = ca_serial_hex(X509_get0_serialNumber(ecert))) == NULL || kms_store_begin(st) != 0 ||
		    ca_store_add_cert(st, scert, email, email, CA_USAGE_SIGN, "enroll", "root") != 0 ||
		    ca_store_add_cert(st, ecert, email, email, CA_USAGE_ENC, "enroll", "root") != 0 ||
		    esc_store_put(st, serial, krk_id, env, envlen) != 0 || kms_store_commit(st) != 0)
			die("store transaction");
		free(serial);
		sum[S_STORE] += now_s() - t;
		store_cpu += thread_cpu_s() - c;

		t = now_s();
		c = thread_cpu_s();
		rec.time = time(NULL);
		if (kms_audit_append(st, &rec) != 0)
			die("audit row");
		sum[S_AUDIT] += now_s() - t;
		audit_cpu += thread_cpu_s() - c;

		if (chain == NULL || !sk_X509_push(chain, ca->cert))
			die("out of memory");
		{
			struct ca_p12_item items[2] = { { skey, scert, "signing" }, { ekey, ecert, "encryption" } };
			unsigned char *one = NULL;
			size_t onelen = 0;

			t = now_s();
			if (ca_p12_build(items, 2, chain, "bench-password-1234", fmt, (int)cfg->ca.pkcs12_iterations,
			    &p12, &p12len) != 0)
				die("ca_p12_build");
			sum[S_P12] += now_s() - t;
			t = now_s();
			if (ca_p12_build(items, 2, chain, "bench-password-1234", fmt, 1, &one, &onelen) != 0)
				die("ca_p12_build");
			sum[S_P12_ONE] += now_s() - t;
			kms_wipe(one, onelen);
			free(one);
		}
		sk_X509_free(chain);

		t = now_s();
		if ((b64 = kms_b64_encode(p12, p12len)) == NULL)
			die("out of memory");
		res = json_pack("{s:b,s:{s:s,s:s,s:s}}", "ok", 1, "result", "email", email, "pkcs12", b64,
		    "password", "generated-password-24chr");
		js = res ? json_dumps(res, JSON_COMPACT) : NULL;
		if (js == NULL)
			die("reply JSON");
		sum[S_REPLY] += now_s() - t;
		kms_wipe(js, strlen(js));
		free(js);
		json_decref(res);
		kms_wipe(b64, strlen(b64));
		free(b64);
		kms_wipe(p12, p12len);
		free(p12);
		free(env);
		X509_free(scert);
		X509_free(ecert);
		EVP_PKEY_free(skey);
		EVP_PKEY_free(ekey);
	}
	{
		double total = 0;

		for (int s = 0; s < S_COUNT; s++) {
			if (s != S_P12_ONE)
				total += sum[s];
			printf("%s_ms=%.3f ", step_names[s], 1000.0 * sum[s] / n);
		}
		printf("total_ms=%.3f users_per_s=%.2f store_cpu_ms=%.3f audit_cpu_ms=%.3f iterations=%lld format=%s\n",
		    1000.0 * total / n, n / total, 1000.0 * store_cpu / n, 1000.0 * audit_cpu / n,
		    cfg->ca.pkcs12_iterations, cfg->ca.pkcs12_format);
	}
	kms_store_close(st);
	esc_krk_free(krk);
	ca_free(ca);
	kms_config_unref(cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return cmd_client(argv[2], arg_long(argv[3], 1), arg_long(argv[4], 1), argv[5]);
	if (argc == 6 && strcmp(argv[1], "floor") == 0)
		return cmd_floor(argv[2], arg_long(argv[3], 1), arg_long(argv[4], 1), arg_long(argv[5], 0));
	if (argc == 5 && strcmp(argv[1], "steps") == 0)
		return cmd_steps(argv[2], arg_long(argv[3], 1), argv[4]);
	fprintf(stderr, "usage: enrollbench client SOCKET N CLIENTS PREFIX\n"
	    "       enrollbench floor CONF N THREADS MIN_SECONDS\n"
	    "       enrollbench steps CONF N WORKDIR\n");
	return 2;
}
