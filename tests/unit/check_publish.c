/*
 * check_publish.c - unit suite for the HTTP distribution point
 * (publish/http.c) and CRL synchronisation (publish/crlsync.c), driven over
 * loopback with libcurl: headers, conditional GET, HEAD, 404/405, the
 * connection bound, long polls, fetching with signature checks, and a
 * replica following a primary.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "common/common.h"
#include "publish/publish.h"
#include "tests/unit/testutil.h"

static EVP_PKEY *ca_key, *bad_key;
static char *dir;
static struct kms_store *st;
static struct ca *ca;
static struct pub_http_server *srv;
static int port;
static struct ca_crl_set *cur;

static const struct ca_crl_opts opts = { 24, 1, NULL, "http://127.0.0.1/crl/test-ca-delta.crl" };

/* ------------------------------------------------------------- fixtures */

static void
add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;

	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	ck_assert_ptr_nonnull(e);
	X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
}

static X509 *
mk_ca_cert(EVP_PKEY *key)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"HTTP Test CA", -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, n);
	X509_NAME_free(n);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
	X509_set_pubkey(x, key);
	add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
	add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
	add_ext(x, NID_subject_key_identifier, "hash");
	ck_assert_int_gt(X509_sign(x, key, EVP_sha256()), 0);
	return x;
}

static void
add_revoked(const char *serial)
{
	sqlite3_stmt *s;
	int already;

	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, cert, issued) "
	    "VALUES (?, 'u@example.org', 'sign', 'ec:p256', 'enroll', 'CN=u', 0, ?, x'00', 0)", -1, &s, NULL),
	    SQLITE_OK);
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)time(NULL) + 86400);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
	ck_assert_int_eq(ca_store_revoke(st, serial, time(NULL) - 1, 1, 0, &already), 0);
}

/* Issue a new CRL set from the store and serve it. */
static void
republish(void)
{
	ca_crl_set_free(cur);
	cur = NULL;
	ck_assert_int_eq(ca_crl_issue(st, ca, &opts, &cur), 0);
	ck_assert_int_eq(pub_http_publish(srv, "test-ca", cur, ca->cert), 0);
}

static void
start_server(unsigned maxc, unsigned longpoll_ms)
{
	struct pub_http_opts o = { .max_connections = maxc, .longpoll_ms = longpoll_ms };
	int fd;

	ck_assert_int_eq(pub_http_listen("127.0.0.1:0", &fd), 0);
	port = pub_http_port(fd);
	ck_assert_int_gt(port, 0);
	ck_assert_int_eq(pub_http_start(fd, &o, &srv), 0);
}

static void
setup_with(unsigned maxc, unsigned longpoll_ms)
{
	char *p;

	dir = tu_tmpdir();
	p = kms_path_join(dir, "kms.db");
	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE, &st), 0);
	free(p);
	ca = calloc(1, sizeof(*ca));
	ca->cert = mk_ca_cert(ca_key);
	EVP_PKEY_up_ref(ca_key);
	ca->key = ca_key;
	ca->name = strdup("test-ca");
	start_server(maxc, longpoll_ms);
	add_revoked("a1");
	republish();
}

static void
setup(void)
{
	setup_with(16, 3000);
}

static void
setup_short(void)
{
	setup_with(2, 600);
}

/* Short long polls, and room for the connections a fetch test opens one after another. */
static void
setup_fetch(void)
{
	setup_with(16, 600);
}

static void
teardown(void)
{
	pub_http_stop(srv);
	srv = NULL;
	ca_crl_set_free(cur);
	cur = NULL;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	free(ca->name);
	free(ca);
	kms_store_close(st);
	tu_rmtree(dir);
	free(dir);
}

/* --------------------------------------------------------------- client */

struct resp {
	long status;
	CURLcode cc;
	char hdr[8192];
	size_t hlen;
	unsigned char *body;
	size_t blen;
	double secs;
};

static size_t
on_header(char *data, size_t size, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t len = size * n;

	if (r->hlen + len < sizeof(r->hdr)) {
		memcpy(r->hdr + r->hlen, data, len);
		r->hlen += len;
		r->hdr[r->hlen] = '\0';
	}
	return len;
}

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
	struct resp *r = arg;
	size_t len = size * n;

	r->body = realloc(r->body, r->blen + len + 1);
	memcpy(r->body + r->blen, data, len);
	r->blen += len;
	return len;
}

static double
now_secs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* method NULL is GET; "HEAD" sends HEAD; header (may be NULL) is one extra request header. */
static void
request(const char *method, const char *path, const char *header, struct resp *r)
{
	CURL *c = curl_easy_init();
	struct curl_slist *hl = NULL;
	char url[512];
	double t0 = now_secs();

	memset(r, 0, sizeof(*r));
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	if (method != NULL && strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	else if (method != NULL)
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	if (header != NULL) {
		hl = curl_slist_append(hl, header);
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	}
	r->cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	r->secs = now_secs() - t0;
	curl_slist_free_all(hl);
	curl_easy_cleanup(c);
}

/* Value of a response header (static buffer), or NULL. */
static const char *
hval(const struct resp *r, const char *name)
{
	static char v[512];
	size_t n = strlen(name);
	const char *p = r->hdr;

	while ((p = strcasestr(p, name)) != NULL) {
		if ((p == r->hdr || p[-1] == '\n') && p[n] == ':') {
			const char *e;

			p += n + 1;
			while (*p == ' ')
				p++;
			e = strpbrk(p, "\r\n");
			snprintf(v, sizeof(v), "%.*s", (int)(e ? e - p : (long)strlen(p)), p);
			return v;
		}
		p += n;
	}
	return NULL;
}

static void
resp_free(struct resp *r)
{
	free(r->body);
	r->body = NULL;
}

static char *
http_date_of(time_t t)
{
	static char buf[64];
	struct tm tm;
	static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
		"Oct", "Nov", "Dec" };

	gmtime_r(&t, &tm);
	snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", wd[tm.tm_wday], tm.tm_mday, mo[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return buf;
}

/* ---------------------------------------------------------------- tests */

START_TEST(test_full_crl_served_with_type_validators_and_cache_control)
{
	struct resp r;
	const char *v;
	long long age;

	request(NULL, "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.cc, CURLE_OK);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(hval(&r, "Content-Type"), "application/pkix-crl");
	ck_assert_int_eq(r.blen, cur->full_len);
	ck_assert_int_eq(memcmp(r.body, cur->full_der, r.blen), 0);
	ck_assert_ptr_nonnull(v = hval(&r, "ETag"));
	ck_assert_int_eq(v[0], '"');
	ck_assert_str_eq(hval(&r, "Last-Modified"), http_date_of(cur->this_update));
	ck_assert_str_eq(hval(&r, "Expires"), http_date_of(cur->next_update));
	ck_assert_ptr_nonnull(v = hval(&r, "Cache-Control"));
	ck_assert_ptr_nonnull(strstr(v, "max-age="));
	age = atoll(strstr(v, "max-age=") + 8);
	ck_assert_int_le(age, 24 * 3600);
	ck_assert_int_ge(age, 24 * 3600 - 60);
	resp_free(&r);
}
END_TEST

START_TEST(test_conditional_get_answers_304_until_a_new_crl)
{
	struct resp r;
	char etag[128], hdr[256], lm[64];

	request(NULL, "/crl/test-ca.crl", NULL, &r);
	snprintf(etag, sizeof(etag), "%s", hval(&r, "ETag"));
	snprintf(lm, sizeof(lm), "%s", hval(&r, "Last-Modified"));
	resp_free(&r);

	snprintf(hdr, sizeof(hdr), "If-None-Match: %s", etag);
	request(NULL, "/crl/test-ca.crl", hdr, &r);
	ck_assert_int_eq(r.status, 304);
	ck_assert_int_eq(r.blen, 0);
	ck_assert_str_eq(hval(&r, "ETag"), etag);
	resp_free(&r);
	snprintf(hdr, sizeof(hdr), "If-None-Match: \"other\", W/%s", etag);
	request(NULL, "/crl/test-ca.crl", hdr, &r);
	ck_assert_int_eq(r.status, 304);
	resp_free(&r);
	request(NULL, "/crl/test-ca.crl", "If-None-Match: \"other\"", &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);

	snprintf(hdr, sizeof(hdr), "If-Modified-Since: %s", lm);
	request(NULL, "/crl/test-ca.crl", hdr, &r);
	ck_assert_int_eq(r.status, 304);
	resp_free(&r);
	request(NULL, "/crl/test-ca.crl", "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT", &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
	request(NULL, "/crl/test-ca.crl", "If-Modified-Since: Saturday, 01-Jan-00 00:00:00 GMT", &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
	request(NULL, "/crl/test-ca.crl", "If-Modified-Since: garbage", &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);

	/* A new CRL: the old validator no longer matches. */
	sleep(1);
	add_revoked("a2");
	republish();
	snprintf(hdr, sizeof(hdr), "If-None-Match: %s", etag);
	request(NULL, "/crl/test-ca.crl", hdr, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_ne(hval(&r, "ETag"), etag);
	ck_assert_int_eq(r.blen, cur->full_len);
	resp_free(&r);
	snprintf(hdr, sizeof(hdr), "If-Modified-Since: %s", lm);
	request(NULL, "/crl/test-ca.crl", hdr, &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
}
END_TEST

START_TEST(test_head_gives_headers_without_body)
{
	struct resp r;
	char len[32];

	request("HEAD", "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.cc, CURLE_OK);
	ck_assert_int_eq(r.status, 200);
	ck_assert_int_eq(r.blen, 0);
	snprintf(len, sizeof(len), "%zu", cur->full_len);
	ck_assert_str_eq(hval(&r, "Content-Length"), len);
	ck_assert_str_eq(hval(&r, "Content-Type"), "application/pkix-crl");
	ck_assert_ptr_nonnull(hval(&r, "ETag"));
	resp_free(&r);
}
END_TEST

START_TEST(test_delta_and_ca_certificate_served)
{
	struct resp r;
	unsigned char *der = NULL;
	int n = i2d_X509(ca->cert, &der);

	request(NULL, "/crl/test-ca-delta.crl", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(hval(&r, "Content-Type"), "application/pkix-crl");
	ck_assert_int_eq(r.blen, cur->delta_len);
	ck_assert_int_eq(memcmp(r.body, cur->delta_der, r.blen), 0);
	resp_free(&r);
	request(NULL, "/ca/test-ca.crt", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(hval(&r, "Content-Type"), "application/pkix-cert");
	ck_assert_int_eq(r.blen, (size_t)n);
	ck_assert_int_eq(memcmp(r.body, der, r.blen), 0);
	ck_assert_ptr_nonnull(strstr(hval(&r, "Cache-Control"), "max-age="));
	resp_free(&r);
	OPENSSL_free(der);
}
END_TEST

START_TEST(test_unknown_paths_are_404_and_other_methods_405)
{
	static const char *const paths[] = { "/", "/crl/", "/crl/other.crl", "/crl/test-ca", "/crl/test-ca.crt",
		"/ca/test-ca.crl", "/crl/../crl/test-ca.crl", "/crl/.test-ca.crl", "/ca/other.crt",
		"/crl/test-ca.crl/x", "/crlx/test-ca.crl" };
	struct resp r;

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		request(NULL, paths[i], NULL, &r);
		ck_assert_msg(r.status == 404, "%s gave %ld", paths[i], r.status);
		resp_free(&r);
	}
	request("POST", "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.status, 405);
	ck_assert_str_eq(hval(&r, "Allow"), "GET, HEAD");
	resp_free(&r);
	request("DELETE", "/ca/test-ca.crt", NULL, &r);
	ck_assert_int_eq(r.status, 405);
	resp_free(&r);
	request(NULL, "/crl/test-ca.crl?after=x1", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
}
END_TEST

struct poll_arg {
	char path[128];
	struct resp r;
	struct timespec done;   /* CLOCK_MONOTONIC when the answer was in */
};

static void *
poller(void *arg)
{
	struct poll_arg *pa = arg;

	request(NULL, pa->path, NULL, &pa->r);
	clock_gettime(CLOCK_MONOTONIC, &pa->done);
	return NULL;
}

static int
ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

START_TEST(test_long_poll_returns_when_a_newer_crl_is_published)
{
	struct poll_arg pa;
	struct timespec publishing;
	pthread_t th;
	long long was = cur->full_number;
	X509_CRL *crl;

	snprintf(pa.path, sizeof(pa.path), "/crl/test-ca.crl?after=%lld", was);
	ck_assert_int_eq(pthread_create(&th, NULL, poller, &pa), 0);
	usleep(400 * 1000);
	/* The poll held until now: it answers after the new CRL, with it (checked
	 * by order, not by elapsed time, which a loaded machine stretches). */
	clock_gettime(CLOCK_MONOTONIC, &publishing);
	add_revoked("a3");
	republish();
	pthread_join(th, NULL);
	ck_assert_int_eq(pa.r.status, 200);
	ck_assert(!ts_before(&pa.done, &publishing));   /* a 304 would mean it timed out (3 s) */
	ck_assert_int_eq(ca_crl_parse(pa.r.body, pa.r.blen, &crl), 0);
	ck_assert_int_eq(ca_crl_number(crl), cur->full_number);
	ck_assert_int_gt(cur->full_number, was);
	X509_CRL_free(crl);
	resp_free(&pa.r);
}
END_TEST

START_TEST(test_long_poll_answers_at_once_when_already_newer)
{
	struct resp r;
	char path[128];

	snprintf(path, sizeof(path), "/crl/test-ca.crl?after=%lld", cur->full_number - 1);
	request(NULL, path, NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_double_lt(r.secs, 0.5);
	ck_assert_int_eq(r.blen, cur->full_len);
	resp_free(&r);
	request(NULL, "/crl/other.crl?after=1", NULL, &r);
	ck_assert_int_eq(r.status, 404);
	ck_assert_double_lt(r.secs, 0.5);
	resp_free(&r);
}
END_TEST

START_TEST(test_long_poll_times_out_with_304)
{
	struct resp r;
	char path[128];

	snprintf(path, sizeof(path), "/crl/test-ca.crl?after=%lld", cur->full_number);
	request(NULL, path, NULL, &r);
	ck_assert_int_eq(r.status, 304);
	ck_assert_double_ge(r.secs, 0.5);
	ck_assert_double_lt(r.secs, 2.0);
	ck_assert_int_eq(r.blen, 0);
	ck_assert_ptr_nonnull(hval(&r, "ETag"));
	resp_free(&r);
}
END_TEST

START_TEST(test_connections_beyond_the_bound_wait_for_a_free_slot)
{
	struct poll_arg pa[2];
	pthread_t th[2];
	struct resp r;
	struct timespec third;
	double first;

	/* Two long polls hold both connections of this server (max 2). */
	for (int i = 0; i < 2; i++) {
		snprintf(pa[i].path, sizeof(pa[i].path), "/crl/test-ca.crl?after=%lld", cur->full_number);
		ck_assert_int_eq(pthread_create(&th[i], NULL, poller, &pa[i]), 0);
	}
	usleep(200 * 1000);
	/*
	 * A third is not served while both are held: it waits in the listen
	 * queue until a long poll ends (600 ms), so it is answered after one.
	 */
	request(NULL, "/crl/test-ca.crl", NULL, &r);
	clock_gettime(CLOCK_MONOTONIC, &third);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(pa[i].r.status, 304);
		resp_free(&pa[i].r);
	}
	first = pa[0].done.tv_sec + pa[0].done.tv_nsec / 1e9;
	if (pa[1].done.tv_sec + pa[1].done.tv_nsec / 1e9 < first)
		first = pa[1].done.tv_sec + pa[1].done.tv_nsec / 1e9;
	/* (0.1 s: the poller notes its time after curl returns, the server may already have taken the third) */
	ck_assert(r.status != 200 || third.tv_sec + third.tv_nsec / 1e9 >= first - 0.1);
	resp_free(&r);
	/* Once the daemon has reaped them, connections are accepted again. */
	for (int i = 0; i < 50; i++) {
		request(NULL, "/crl/test-ca.crl", NULL, &r);
		if (r.status == 200)
			break;
		resp_free(&r);
		usleep(50 * 1000);
	}
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
}
END_TEST

/* Serve again with these bounds (the fixture's server goes). */
static void
restart_with(const struct pub_http_opts *o)
{
	int fd;

	pub_http_stop(srv);
	srv = NULL;
	ck_assert_int_eq(pub_http_listen("127.0.0.1:0", &fd), 0);
	port = pub_http_port(fd);
	ck_assert_int_eq(pub_http_start(fd, o, &srv), 0);
	ck_assert_int_eq(pub_http_publish(srv, "test-ca", cur, ca->cert), 0);
}

START_TEST(test_long_polls_over_the_pool_get_503_at_once)
{
	struct pub_http_opts o = { .max_connections = 16, .longpoll_ms = 5000, .max_longpolls = 2 };
	struct poll_arg pa[2];
	pthread_t th[2];
	struct resp r;
	char path[128];
	long long was = cur->full_number;

	restart_with(&o);
	snprintf(path, sizeof(path), "/crl/test-ca.crl?after=%lld", was);
	for (int i = 0; i < 2; i++) {
		snprintf(pa[i].path, sizeof(pa[i].path), "%s", path);
		ck_assert_int_eq(pthread_create(&th[i], NULL, poller, &pa[i]), 0);
	}
	usleep(300 * 1000);
	request(NULL, path, NULL, &r);
	ck_assert_int_eq(r.status, 503);
	ck_assert_double_lt(r.secs, 0.5);
	ck_assert_ptr_nonnull(hval(&r, "Retry-After"));
	resp_free(&r);
	/* The pool is for long polls only: a plain GET is served beside it. */
	request(NULL, "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
	/* A new CRL answers the parked ones at once. */
	add_revoked("a4");
	republish();
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(pa[i].r.status, 200);
		ck_assert_double_lt(pa[i].r.secs, 2.0);
		resp_free(&pa[i].r);
	}
	/* And their places are free again: a new long poll waits (here: answered at once, the CRL is newer). */
	request(NULL, path, NULL, &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
}
END_TEST

/* Connect and send text; the socket. */
static int
raw_connect(const char *text)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	if (text != NULL)
		ck_assert_int_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
	return fd;
}

/* Seconds until the server closes fd (reading what it sends), up to limit. */
static double
secs_to_close(int fd, double limit)
{
	double t0 = now_secs();
	char buf[4096];

	while (now_secs() - t0 < limit) {
		struct pollfd p = { fd, POLLIN, 0 };

		if (poll(&p, 1, 100) > 0 && recv(fd, buf, sizeof(buf), 0) <= 0)
			return now_secs() - t0;
	}
	return limit;
}

START_TEST(test_request_not_in_within_request_timeout_is_cut)
{
	struct pub_http_opts o = { .max_connections = 16, .longpoll_ms = 600, .request_ms = 1000, .idle_ms = 60000 };
	struct resp r;
	int slow, idle;
	double t0, t;

	restart_with(&o);
	/*
	 * Half a request line, then a byte every 200 ms: MHD's idle timeout
	 * (60 s) never fires, the request deadline (1 s from the connection)
	 * does.  Measured from the connection, with room for a loaded machine.
	 */
	t0 = now_secs();
	slow = raw_connect("GET /crl/te");
	idle = raw_connect(NULL);
	while (now_secs() - t0 < 5.0 && send(slow, "s", 1, MSG_NOSIGNAL) == 1) {
		struct pollfd p = { slow, POLLIN, 0 };

		if (poll(&p, 1, 200) > 0)
			break;
	}
	t = now_secs() - t0 + secs_to_close(slow, 5.0);
	ck_assert_double_ge(t, 0.9);
	ck_assert_double_lt(t, 4.0);
	ck_assert_double_lt(now_secs() - t0 + secs_to_close(idle, 5.0), 4.5);
	close(slow);
	close(idle);
	/* A request that comes in time is answered. */
	request(NULL, "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
}
END_TEST

START_TEST(test_slow_crowd_over_the_limit_makes_room_within_a_second)
{
	/* 50 silent sockets against a limit of 40: the deadline is 10 s, but nearly full it is 1 s. */
	struct pub_http_opts o = { .max_connections = 40, .max_per_client = 100, .threads = 2, .longpoll_ms = 600,
		.request_ms = 10000, .idle_ms = 60000 };
	struct resp r;
	int fds[50];

	restart_with(&o);
	for (int i = 0; i < 50; i++)
		fds[i] = raw_connect(NULL);
	usleep(1200 * 1000);
	request(NULL, "/crl/test-ca.crl", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_double_lt(r.secs, 3.0);
	resp_free(&r);
	for (int i = 0; i < 50; i++)
		close(fds[i]);
}
END_TEST

START_TEST(test_stop_wakes_long_polls)
{
	struct poll_arg pa;
	pthread_t th;
	double t0;

	snprintf(pa.path, sizeof(pa.path), "/crl/test-ca.crl?after=%lld", cur->full_number);
	ck_assert_int_eq(pthread_create(&th, NULL, poller, &pa), 0);
	usleep(200 * 1000);
	t0 = now_secs();
	pub_http_stop(srv);
	srv = NULL;
	pthread_join(th, NULL);
	ck_assert_double_lt(now_secs() - t0, 2.0);
	/* Answered 503, or cut by the daemon's shutdown: either way at once. */
	ck_assert(pa.r.status == 503 || pa.r.cc != CURLE_OK);
	resp_free(&pa.r);
	/* The socket is closed: a new server can take the port. */
	{
		char hp[64];
		int fd;

		snprintf(hp, sizeof(hp), "127.0.0.1:%d", port);
		ck_assert_int_eq(pub_http_listen(hp, &fd), 0);
		close(fd);
	}
}
END_TEST

START_TEST(test_listen_forms)
{
	int fd;

	ck_assert_int_eq(pub_http_listen("nonsense", &fd), KMS_ERR_CONFIG);
	ck_assert_int_eq(pub_http_listen("127.0.0.1:", &fd), KMS_ERR_CONFIG);
	ck_assert_int_eq(pub_http_listen("127.0.0.1:notaport", &fd), KMS_ERR_CONFIG);
	ck_assert_int_eq(pub_http_listen("127.0.0.1:0", &fd), 0);
	close(fd);
	if (pub_http_listen("[::1]:0", &fd) == 0) {
		ck_assert_int_gt(pub_http_port(fd), 0);
		close(fd);
	}
}
END_TEST

static STACK_OF(X509) *
cas_of(X509 *x)
{
	STACK_OF(X509) *sk = sk_X509_new_null();

	X509_up_ref(x);
	sk_X509_push(sk, x);
	return sk;
}

/* A set holding a CRL for our CA's name signed with another key. */
static struct ca_crl_set *
forged_set(long long number)
{
	struct ca_crl_set *s = calloc(1, sizeof(*s));
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();
	ASN1_INTEGER *n = ASN1_INTEGER_new();
	int len;

	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert));
	ASN1_TIME_set(t, time(NULL) - 10);
	X509_CRL_set1_lastUpdate(crl, t);
	ASN1_TIME_set(t, time(NULL) + 3600);
	X509_CRL_set1_nextUpdate(crl, t);
	ASN1_INTEGER_set(n, (long)number);
	X509_CRL_add1_ext_i2d(crl, NID_crl_number, n, 0, 0);
	ck_assert_int_gt(X509_CRL_sign(crl, bad_key, EVP_sha256()), 0);
	len = i2d_X509_CRL(crl, &s->full_der);
	s->full_len = (size_t)len;
	s->full_number = number;
	s->this_update = time(NULL) - 10;
	s->next_update = time(NULL) + 3600;
	X509_CRL_free(crl);
	ASN1_TIME_free(t);
	ASN1_INTEGER_free(n);
	return s;
}

static void
forged_free(struct ca_crl_set *s)
{
	OPENSSL_free(s->full_der);
	s->full_der = NULL;
	free(s);
}

START_TEST(test_fetch_over_http_replaces_copy_and_bad_signature_keeps_it)
{
	STACK_OF(X509) *cas = cas_of(ca->cert);
	char url[256], *out = kms_path_join(dir, "client"), *file;
	unsigned char *before, *after;
	size_t blen, alen;
	long long number;
	struct ca_crl_set *forged;
	X509_CRL *crl = NULL;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/crl/test-ca.crl", port);
	ck_assert_int_eq(ca_crl_fetch_to_dir(url, cas, out, 5, &number), 0);
	ck_assert_int_eq(number, cur->full_number);
	file = kms_path_join(out, "test-ca.crl");
	ck_assert_int_eq(kms_read_file(file, 1 << 20, &before, &blen), 0);
	ck_assert_int_eq(blen, cur->full_len);
	ck_assert_int_eq(memcmp(before, cur->full_der, blen), 0);

	/* The long-poll form: nothing newer within the server's timeout gives no CRL. */
	ck_assert_int_eq(ca_crl_fetch(url, 10, cur->full_number, 0, NULL, &crl, NULL, NULL), 0);
	ck_assert_ptr_null(crl);

	forged = forged_set(cur->full_number + 10);
	ck_assert_int_eq(pub_http_publish(srv, "test-ca", forged, NULL), 0);
	ck_assert_int_eq(ca_crl_fetch_to_dir(url, cas, out, 5, &number), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "signature"));
	ck_assert_int_eq(kms_read_file(file, 1 << 20, &after, &alen), 0);
	ck_assert_int_eq(alen, blen);
	ck_assert_int_eq(memcmp(after, before, blen), 0);
	free(after);

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/crl/missing.crl", port);
	ck_assert_msg(ca_crl_fetch_to_dir(url, cas, out, 5, &number) == KMS_ERR_NOTFOUND, "%s", kms_last_error());
	ck_assert_int_eq(ca_crl_fetch_to_dir("http://127.0.0.1:1/crl/x.crl", cas, out, 5, &number), KMS_ERR_IO);

	forged_free(forged);
	free(before);
	free(file);
	free(out);
	sk_X509_pop_free(cas, X509_free);
}
END_TEST

/* ------------------------------------------------------------ crlsync */

static pthread_mutex_t ch_mu = PTHREAD_MUTEX_INITIALIZER;
static int ch_count;

static void
on_changed(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&ch_mu);
	ch_count++;
	pthread_mutex_unlock(&ch_mu);
}

static int
wait_number(struct pub_sync *s, long long want, double limit)
{
	double t0 = now_secs();

	while (now_secs() - t0 < limit) {
		if (pub_sync_source_number(s) == want)
			return 1;
		usleep(20 * 1000);
	}
	return 0;
}

static int
index_has(struct pub_sync *s, const char *serial_hex, int *stale)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	BIGNUM *bn = NULL;
	ASN1_INTEGER *a;
	int hit;

	BN_hex2bn(&bn, serial_hex);
	a = BN_to_ASN1_INTEGER(bn, NULL);
	BN_free(bn);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(pub_sync_add_to(s, b, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	hit = ca_revidx_lookup(idx, X509_get_subject_name(ca->cert), a, &info);
	if (hit && stale)
		*stale = info.stale;
	ca_revidx_unref(idx);
	ca_revidx_builder_free(b);
	ASN1_INTEGER_free(a);
	return hit;
}

static char *
write_ca_pem(void)
{
	char *p = kms_path_join(dir, "primary-ca.pem");
	FILE *fp = fopen(p, "w");

	PEM_write_X509(fp, ca->cert);
	fclose(fp);
	return p;
}

START_TEST(test_replica_follows_primary_and_keeps_copy_when_it_is_gone)
{
	struct pub_sync_opts o = { 0 };
	struct pub_sync *s = NULL;
	char url[256], *capem = write_ca_pem(), *cache = kms_path_join(dir, "cache");
	long long n1 = cur->full_number;
	double t0;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/crl/test-ca.crl", port);
	o.source = url;
	o.source_ca = capem;
	o.longpoll_timeout = 3;
	o.cache_dir = cache;
	o.changed = on_changed;
	ck_assert_int_eq(pub_sync_start(&o, &s), 0);
	ck_assert_int_eq(wait_number(s, n1, 5.0), 1);
	ck_assert_int_eq(index_has(s, "a1", NULL), 1);
	ck_assert_int_eq(index_has(s, "a4", NULL), 0);

	/* A revocation on the primary reaches the replica within about a second. */
	usleep(300 * 1000);
	add_revoked("a4");
	t0 = now_secs();
	republish();
	ck_assert_int_eq(wait_number(s, cur->full_number, 2.0), 1);
	ck_assert_double_lt(now_secs() - t0, 2.0);
	ck_assert_int_eq(index_has(s, "a4", NULL), 1);
	for (int i = 0; i < 100; i++) {
		int n;

		pthread_mutex_lock(&ch_mu);
		n = ch_count;
		pthread_mutex_unlock(&ch_mu);
		if (n >= 2)
			break;
		usleep(20 * 1000);
	}
	pthread_mutex_lock(&ch_mu);
	ck_assert_int_ge(ch_count, 2);
	pthread_mutex_unlock(&ch_mu);

	/* A forged CRL from the "primary" is refused; the copy stays. */
	{
		struct ca_crl_set *forged = forged_set(cur->full_number + 5);

		ck_assert_int_eq(pub_http_publish(srv, "test-ca", forged, NULL), 0);
		usleep(500 * 1000);
		ck_assert_int_eq(pub_sync_source_number(s), cur->full_number);
		forged_free(forged);
	}

	/* Primary gone: the replica keeps answering from its last good copy. */
	pub_http_stop(srv);
	srv = NULL;
	usleep(300 * 1000);
	ck_assert_int_eq(pub_sync_source_number(s), cur->full_number);
	ck_assert_int_eq(index_has(s, "a4", NULL), 1);
	t0 = now_secs();
	pub_sync_stop(s);
	ck_assert_double_lt(now_secs() - t0, 3.0);

	/* Restarted while the primary is still down: the kept copy is loaded. */
	ck_assert_int_eq(pub_sync_start(&o, &s), 0);
	ck_assert_int_eq(pub_sync_source_number(s), cur->full_number);
	ck_assert_int_eq(index_has(s, "a4", NULL), 1);
	pub_sync_stop(s);
	free(capem);
	free(cache);
}
END_TEST

static void
write_file(const char *path, const unsigned char *der, size_t len)
{
	ck_assert_int_eq(kms_write_file_atomic(path, der, len, 0644), 0);
}

START_TEST(test_external_crl_bad_signature_keeps_last_good_and_stale_is_marked)
{
	struct pub_sync_opts o = { 0 };
	struct pub_sync *s = NULL;
	char *capem = write_ca_pem(), *file = kms_path_join(dir, "ext.crl"), list[600];
	struct ca_crl_set *forged;
	int stale = -1;

	write_file(file, cur->full_der, cur->full_len);
	snprintf(list, sizeof(list), "%s, http://127.0.0.1:1/unreachable.crl", file);
	o.external = list;
	o.external_ca = capem;
	o.external_refresh = 3600;
	o.changed = on_changed;
	ck_assert_int_eq(pub_sync_start(&o, &s), 0);
	/* The first refresh runs at start. */
	for (int i = 0; i < 100 && !index_has(s, "a1", NULL); i++)
		usleep(20 * 1000);
	ck_assert_int_eq(index_has(s, "a1", &stale), 1);
	ck_assert_int_eq(stale, 0);

	forged = forged_set(cur->full_number + 1);
	write_file(file, forged->full_der, forged->full_len);
	pub_sync_refresh(s);
	usleep(500 * 1000);
	ck_assert_int_eq(index_has(s, "a1", NULL), 1);
	forged_free(forged);

	/* A newer good one is taken at the next refresh. */
	add_revoked("a5");
	{
		struct ca_crl_set *set = NULL;

		ck_assert_int_eq(ca_crl_issue(st, ca, &opts, &set), 0);
		write_file(file, set->full_der, set->full_len);
		ca_crl_set_free(set);
	}
	pub_sync_refresh(s);
	for (int i = 0; i < 100 && !index_has(s, "a5", NULL); i++)
		usleep(20 * 1000);
	ck_assert_int_eq(index_has(s, "a5", NULL), 1);
	/* Seen from a day and a half later, the copy is stale but still used. */
	{
		struct ca_revidx_builder *b = NULL;
		struct ca_revidx *idx = NULL;

		ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
		ck_assert_int_eq(pub_sync_add_to(s, b, time(NULL) + 36 * 3600), 0);
		ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
		ck_assert_int_eq(ca_revidx_issuer_state(idx, X509_get_subject_name(ca->cert)), 1);
		ca_revidx_unref(idx);
		ca_revidx_builder_free(b);
	}
	pub_sync_stop(s);
	free(capem);
	free(file);
}
END_TEST

START_TEST(test_external_crl_without_external_ca_waits_for_a_trusted_issuer)
{
	struct pub_sync_opts o = { 0 };
	struct pub_sync *s = NULL;
	X509_STORE *none = X509_STORE_new(), *anchors = X509_STORE_new();
	STACK_OF(X509) *inter = sk_X509_new_null();
	char *file = kms_path_join(dir, "ext.crl");
	int changed;

	ck_assert_int_eq(X509_STORE_add_cert(anchors, ca->cert), 1);
	write_file(file, cur->full_der, cur->full_len);
	/* Without external_ca and without anchors there is nothing to check it against. */
	o.external = file;
	o.external_refresh = 3600;
	o.changed = on_changed;
	ck_assert_int_ne(pub_sync_start(&o, &s), 0);
	ck_assert_ptr_null(s);
	ck_assert(strstr(kms_last_error(), "trust anchors") != NULL);

	/* Anchors that do not hold its issuer: read, kept aside, not used. */
	o.anchors = none;
	o.inter = inter;
	ck_assert_int_eq(pub_sync_start(&o, &s), 0);
	usleep(300 * 1000);
	ck_assert_int_eq(index_has(s, "a1", NULL), 0);
	pthread_mutex_lock(&ch_mu);
	changed = ch_count;
	pthread_mutex_unlock(&ch_mu);
	/* A reload that trusts its issuer: validated again and taken, without a new fetch. */
	unlink(file);
	pub_sync_set_trust(s, anchors, inter);
	for (int i = 0; i < 100 && !index_has(s, "a1", NULL); i++)
		usleep(20 * 1000);
	ck_assert_int_eq(index_has(s, "a1", NULL), 1);
	pthread_mutex_lock(&ch_mu);
	ck_assert_int_gt(ch_count, changed);
	pthread_mutex_unlock(&ch_mu);
	pub_sync_stop(s);

	/* The anchor itself signs it: taken at the first fetch. */
	write_file(file, cur->full_der, cur->full_len);
	o.anchors = anchors;
	ck_assert_int_eq(pub_sync_start(&o, &s), 0);
	for (int i = 0; i < 100 && !index_has(s, "a1", NULL); i++)
		usleep(20 * 1000);
	ck_assert_int_eq(index_has(s, "a1", NULL), 1);
	pub_sync_stop(s);
	X509_STORE_free(none);
	X509_STORE_free(anchors);
	sk_X509_free(inter);
	free(file);
}
END_TEST

/* ------------------------------------------- distribution points seen in mail */

/* A user certificate of the test CA, serial hex, with the given distribution point (and Freshest CRL). */
static X509 *
mk_user_with_dps(const char *serial_hex, const char *cdp, const char *freshest)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	BIGNUM *bn = NULL;
	X509V3_CTX ctx;
	X509_EXTENSION *e;
	char v[300];

	X509_set_version(x, 2);
	BN_hex2bn(&bn, serial_hex);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	BN_free(bn);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"user", -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_NAME_free(n);
	X509_set_issuer_name(x, X509_get_subject_name(ca->cert));
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L);
	X509_set_pubkey(x, bad_key);
	snprintf(v, sizeof(v), "URI:%s", cdp);
	X509V3_set_ctx(&ctx, ca->cert, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, NID_crl_distribution_points, v);
	ck_assert_ptr_nonnull(e);
	X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	if (freshest != NULL) {
		snprintf(v, sizeof(v), "URI:%s", freshest);
		e = X509V3_EXT_conf_nid(NULL, &ctx, NID_freshest_crl, v);
		ck_assert_ptr_nonnull(e);
		X509_add_ext(x, e, -1);
		X509_EXTENSION_free(e);
	}
	ck_assert_int_gt(X509_sign(x, ca_key, EVP_sha256()), 0);
	return x;
}

static X509 *
mk_user_with_cdp(const char *serial_hex, const char *cdp)
{
	return mk_user_with_dps(serial_hex, cdp, NULL);
}

/* Wait until every source has been tried; the list then. */
static size_t
dp_wait_list(struct pub_dp *d, size_t want, struct pub_dp_status **v, double limit)
{
	double t0 = now_secs();
	size_t n = 0;

	for (;;) {
		int done = 1;

		ck_assert_int_eq(pub_dp_list(d, v, &n), 0);
		for (size_t i = 0; i < n; i++)
			if ((*v)[i].last_attempt == 0)
				done = 0;
		if ((done && n >= want) || now_secs() - t0 > limit)
			return n;
		free(*v);
		*v = NULL;
		usleep(20 * 1000);
	}
}

START_TEST(test_dp_fetch_validates_keeps_and_reports_errors)
{
	struct pub_dp_opts o = { 0 };
	struct pub_dp *d = NULL;
	struct pub_dp_status *v = NULL;
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	struct ca_rev_info info;
	X509_STORE *anchors = X509_STORE_new();
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509 *revoked, *good, *nowhere, *extra;
	char url[256], *cache = kms_path_join(dir, "dp");
	size_t n;
	time_t since;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/crl/test-ca.crl", port);
	revoked = mk_user_with_cdp("a1", url);
	good = mk_user_with_cdp("a2", url);
	nowhere = mk_user_with_cdp("a3", "http://127.0.0.1:1/nothing.crl");
	extra = mk_user_with_cdp("a5", "http://127.0.0.1:1/one-too-many.crl");
	X509_STORE_add_cert(anchors, ca->cert);
	o.anchors = anchors;
	o.cache_dir = cache;
	o.timeout = 5;
	o.concurrency = 2;
	o.max_sources = 2;
	o.changed = on_changed;
	ck_assert_int_eq(pub_dp_start(&o, &d), 0);

	sk_X509_push(chain, revoked);
	sk_X509_push(chain, ca->cert);
	since = pub_dp_offer(d, chain, 0);
	ck_assert_int_gt(since, 0);
	ck_assert_int_le(since, time(NULL));
	sk_X509_set(chain, 0, nowhere);
	ck_assert_int_gt(pub_dp_offer(d, chain, 0), 0);
	/* The bound on sources: a third distribution point is not followed. */
	sk_X509_set(chain, 0, extra);
	ck_assert_int_eq(pub_dp_offer(d, chain, 0), 0);
	/* A self-signed root has no distribution point: nothing to offer. */
	ck_assert_int_eq(pub_dp_offer(d, chain, 1), 0);

	n = dp_wait_list(d, 2, &v, 10.0);
	ck_assert_uint_eq(n, 2);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].url, url) == 0) {
			ck_assert_int_eq(v[i].have_copy, 1);
			ck_assert_int_eq(v[i].entries, 1);
			ck_assert_str_eq(v[i].error, "");
			ck_assert_ptr_nonnull(strstr(v[i].issuer, "HTTP Test CA"));
		} else {
			ck_assert_int_eq(v[i].have_copy, 0);
			ck_assert_str_ne(v[i].error, "");
		}
	}
	free(v);
	/* A distribution point with a good copy is no longer a pending first fetch. */
	sk_X509_set(chain, 0, good);
	ck_assert_int_eq(pub_dp_offer(d, chain, 0), 0);

	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(pub_dp_add_to(d, b, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_check(idx, revoked, &info), 1);
	ck_assert_int_eq(info.reason, 1);
	ck_assert_int_eq(ca_revidx_check(idx, good, &info), 0);
	ca_revidx_unref(idx);
	pub_dp_stop(d);

	/* A restart takes the kept copy without any fetch (the server is gone). */
	pub_http_stop(srv);
	srv = NULL;
	d = NULL;
	ck_assert_int_eq(pub_dp_start(&o, &d), 0);
	ck_assert_int_eq(pub_dp_list(d, &v, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(v[0].have_copy, 1);
	free(v);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(pub_dp_add_to(d, b, time(NULL)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	ck_assert_int_eq(ca_revidx_check(idx, revoked, &info), 1);
	ca_revidx_unref(idx);
	pub_dp_stop(d);

	sk_X509_free(chain);
	X509_free(revoked);
	X509_free(good);
	X509_free(nowhere);
	X509_free(extra);
	X509_STORE_free(anchors);
	free(cache);
}
END_TEST

/* ------------------------------------------------------------- /certs */

static int lookups;

/* Stands in for kmsd's store lookup: one known address. */
static int
fake_lookup(void *arg, const char *email, char **pem, size_t *len)
{
	(void)arg;
	lookups++;
	if (strcmp(email, "alice@example.org") != 0)
		return kms_fail(KMS_ERR_NOTFOUND, "none");
	*pem = strdup("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n");
	*len = strlen(*pem);
	return 0;
}

START_TEST(test_certs_off_by_default_then_served_with_strict_addresses)
{
	struct pub_certs *pc = NULL;
	struct resp r;

	request(NULL, "/certs/alice@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 404);
	resp_free(&r);
	ck_assert_int_eq(pub_certs_new(fake_lookup, NULL, 1000, 64, &pc), 0);
	pub_http_set_certs(srv, pc);
	lookups = 0;
	request(NULL, "/certs/alice@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(hval(&r, "Content-Type"), "application/pem-certificate-chain");
	ck_assert_str_eq(hval(&r, "Cache-Control"), "no-store");
	ck_assert_ptr_nonnull(memmem(r.body, r.blen, "BEGIN CERTIFICATE", 17));
	resp_free(&r);
	request(NULL, "/certs/alice%40example.org", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	resp_free(&r);
	request(NULL, "/certs/bob@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 404);
	resp_free(&r);
	ck_assert_int_eq(lookups, 3);
	/* Not addresses: refused before any lookup. */
	request(NULL, "/certs/alice@example.org/../x", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
	request(NULL, "/certs/alice%00@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
	/* A NUL must not cut the address short to a valid one. */
	request(NULL, "/certs/alice@example.org%00.evil", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
	request(NULL, "/certs/%22a%20b%22@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
	request(NULL, "/certs/", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	resp_free(&r);
	ck_assert_int_eq(lookups, 3);
	request("POST", "/certs/alice@example.org", NULL, &r);
	ck_assert_int_eq(r.status, 405);
	resp_free(&r);
	pub_http_set_certs(srv, NULL);
	pub_certs_free(pc);
}
END_TEST

START_TEST(test_certs_rate_limited_per_client_with_retry_after)
{
	struct pub_certs *pc = NULL;
	struct resp r;
	int ok = 0, limited = 0;

	ck_assert_int_eq(pub_certs_new(fake_lookup, NULL, 5, 64, &pc), 0);
	pub_http_set_certs(srv, pc);
	lookups = 0;
	for (int i = 0; i < 8; i++) {
		/* Bad requests and unknown addresses spend tokens too. */
		request(NULL, i % 2 ? "/certs/nobody@example.org" : "/certs/not-an-address", NULL, &r);
		if (r.status == 429) {
			limited++;
			ck_assert_str_eq(hval(&r, "Retry-After"), "60");
		} else {
			ok++;
		}
		resp_free(&r);
	}
	ck_assert_int_eq(ok, 5);
	ck_assert_int_eq(limited, 3);
	ck_assert_int_le(lookups, 3);
	pub_http_set_certs(srv, NULL);
	pub_certs_free(pc);
}
END_TEST

START_TEST(test_certs_bucket_refills_and_table_is_bounded)
{
	struct pub_certs *pc = NULL;
	unsigned char k[17][16];

	ck_assert_int_eq(pub_certs_new(fake_lookup, NULL, 60, 16, &pc), 0);
	memset(k, 0, sizeof(k));
	for (int i = 0; i < 17; i++)
		k[i][15] = (unsigned char)(i + 1);
	/* A burst of 60, then one a second. */
	for (int i = 0; i < 60; i++)
		ck_assert_int_eq(pub_certs_allow(pc, k[0], 100.0), 1);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 100.0), 0);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 100.5), 0);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 101.01), 1);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 101.02), 0);
	/* Fill the other 15 slots, each spent, k[1] least recently. */
	for (int i = 1; i < 16; i++)
		for (int j = 0; j < 60; j++)
			ck_assert_int_eq(pub_certs_allow(pc, k[i], 200.0 + i * 0.001), 1);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 200.016), 1);  /* refilled meanwhile, and now the newest */
	for (int j = 0; j < 60; j++)
		pub_certs_allow(pc, k[0], 200.016);
	/* A 17th client takes the least recent slot (k[1]'s); the others keep their state. */
	ck_assert_int_eq(pub_certs_allow(pc, k[16], 200.017), 1);
	ck_assert_int_eq(pub_certs_allow(pc, k[2], 200.018), 0);
	ck_assert_int_eq(pub_certs_allow(pc, k[0], 200.018), 0);
	/* k[1] was forgotten: it starts again with a full bucket. */
	ck_assert_int_eq(pub_certs_allow(pc, k[1], 200.019), 1);
	pub_certs_free(pc);
}
END_TEST

START_TEST(test_certs_clients_counted_by_ipv4_address_and_ipv6_64)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET }, b4 = { .sin_family = AF_INET };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6 }, b6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in6 c6 = { .sin6_family = AF_INET6 }, m6 = { .sin6_family = AF_INET6 };
	struct sockaddr un = { .sa_family = AF_UNIX };
	unsigned char ka[16], kb[16];

	inet_pton(AF_INET, "192.0.2.1", &a4.sin_addr);
	inet_pton(AF_INET, "192.0.2.2", &b4.sin_addr);
	inet_pton(AF_INET6, "2001:db8:1:2::1", &a6.sin6_addr);
	inet_pton(AF_INET6, "2001:db8:1:2:ffff::9", &b6.sin6_addr);
	inet_pton(AF_INET6, "2001:db8:1:3::1", &c6.sin6_addr);
	inet_pton(AF_INET6, "::ffff:192.0.2.1", &m6.sin6_addr);
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&a4, ka), 0);
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&b4, kb), 0);
	ck_assert_int_ne(memcmp(ka, kb, 16), 0);
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&m6, kb), 0);
	ck_assert_int_eq(memcmp(ka, kb, 16), 0);   /* IPv4 over an IPv6 socket: the same client */
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&a6, ka), 0);
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&b6, kb), 0);
	ck_assert_int_eq(memcmp(ka, kb, 16), 0);   /* one /64 */
	ck_assert_int_eq(pub_certs_client_key((struct sockaddr *)&c6, kb), 0);
	ck_assert_int_ne(memcmp(ka, kb, 16), 0);
	ck_assert_int_eq(pub_certs_client_key(&un, ka), -1);
	ck_assert_int_eq(pub_certs_client_key(NULL, ka), -1);
}
END_TEST

START_TEST(test_dp_fetch_follows_the_certificates_freshest_crl)
{
	struct pub_dp_opts o = { 0 };
	struct pub_dp *d = NULL;
	struct pub_dp_status *v = NULL;
	X509_STORE *anchors = X509_STORE_new();
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509 *user, *wrong;
	char full[256], delta[256], not_delta[300];
	size_t n;
	int seen_delta = 0, seen_wrong = 0, seen_from_crl = 0;

	snprintf(full, sizeof(full), "http://127.0.0.1:%d/crl/test-ca.crl", port);
	snprintf(delta, sizeof(delta), "http://127.0.0.1:%d/crl/test-ca-delta.crl", port);
	/* A Freshest CRL pointer at a complete CRL: the source must refuse it. */
	snprintf(not_delta, sizeof(not_delta), "http://127.0.0.1:%d/crl/test-ca.crl?as-delta", port);
	user = mk_user_with_dps("b1", full, delta);
	wrong = mk_user_with_dps("b2", full, not_delta);
	X509_STORE_add_cert(anchors, ca->cert);
	o.anchors = anchors;
	o.timeout = 5;
	o.concurrency = 2;
	ck_assert_int_eq(pub_dp_start(&o, &d), 0);
	sk_X509_push(chain, user);
	sk_X509_push(chain, ca->cert);
	pub_dp_offer(d, chain, 0);
	sk_X509_set(chain, 0, wrong);
	pub_dp_offer(d, chain, 0);
	/* The full CRL served names its delta too (Freshest CRL in the CRL): a fourth source. */
	n = dp_wait_list(d, 4, &v, 10.0);
	ck_assert_uint_eq(n, 4);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].url, delta) == 0) {
			/* Named by the certificate's Freshest CRL: a delta source, its delta CRL taken. */
			seen_delta = 1;
			ck_assert_int_eq(v[i].want_delta, 1);
			ck_assert_msg(v[i].have_copy == 1, "%s", v[i].error);
			ck_assert_int_ge(v[i].delta_base, 0);
		} else if (strcmp(v[i].url, not_delta) == 0) {
			seen_wrong = 1;
			ck_assert_int_eq(v[i].want_delta, 1);
			ck_assert_int_eq(v[i].have_copy, 0);
			ck_assert_ptr_nonnull(strstr(v[i].error, "promised a delta CRL"));
		} else if (strcmp(v[i].url, opts.delta_url) == 0) {
			seen_from_crl = 1;
			ck_assert_int_eq(v[i].want_delta, 1);
		} else {
			ck_assert_str_eq(v[i].url, full);
			ck_assert_int_eq(v[i].want_delta, 0);
			ck_assert_int_eq(v[i].delta_base, -1);
			ck_assert_int_eq(v[i].have_copy, 1);
		}
	}
	ck_assert(seen_delta && seen_wrong && seen_from_crl);
	free(v);
	pub_dp_stop(d);
	sk_X509_free(chain);
	X509_free(user);
	X509_free(wrong);
	X509_STORE_free(anchors);
}
END_TEST

static Suite *
http_suite(void)
{
	Suite *s = suite_create("http");
	TCase *tc;

	tc = tcase_create("serve");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_full_crl_served_with_type_validators_and_cache_control);
	tcase_add_test(tc, test_conditional_get_answers_304_until_a_new_crl);
	tcase_add_test(tc, test_head_gives_headers_without_body);
	tcase_add_test(tc, test_delta_and_ca_certificate_served);
	tcase_add_test(tc, test_unknown_paths_are_404_and_other_methods_405);
	tcase_add_test(tc, test_long_poll_returns_when_a_newer_crl_is_published);
	tcase_add_test(tc, test_long_poll_answers_at_once_when_already_newer);
	tcase_add_test(tc, test_stop_wakes_long_polls);
	tcase_add_test(tc, test_listen_forms);
	tcase_add_test(tc, test_replica_follows_primary_and_keeps_copy_when_it_is_gone);
	tcase_add_test(tc, test_external_crl_bad_signature_keeps_last_good_and_stale_is_marked);
	tcase_add_test(tc, test_external_crl_without_external_ca_waits_for_a_trusted_issuer);
	tcase_add_test(tc, test_dp_fetch_validates_keeps_and_reports_errors);
	tcase_add_test(tc, test_dp_fetch_follows_the_certificates_freshest_crl);
	tcase_add_test(tc, test_certs_off_by_default_then_served_with_strict_addresses);
	tcase_add_test(tc, test_certs_rate_limited_per_client_with_retry_after);
	tcase_add_test(tc, test_certs_bucket_refills_and_table_is_bounded);
	tcase_add_test(tc, test_certs_clients_counted_by_ipv4_address_and_ipv6_64);
	suite_add_tcase(s, tc);

	tc = tcase_create("short");
	tcase_add_checked_fixture(tc, setup_short, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_long_poll_times_out_with_304);
	tcase_add_test(tc, test_connections_beyond_the_bound_wait_for_a_free_slot);
	tcase_add_test(tc, test_long_polls_over_the_pool_get_503_at_once);
	tcase_add_test(tc, test_request_not_in_within_request_timeout_is_cut);
	tcase_add_test(tc, test_slow_crowd_over_the_limit_makes_room_within_a_second);
	suite_add_tcase(s, tc);

	/*
	 * Not under the 2-connection bound: a server thread still closing the
	 * previous fetch's connection on a loaded machine made the next one
	 * a refused connection (KMS_ERR_IO) instead of the 404 it tests.
	 */
	tc = tcase_create("fetch");
	tcase_add_checked_fixture(tc, setup_fetch, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_fetch_over_http_replaces_copy_and_bad_signature_keeps_it);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	bad_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (ca_key == NULL || bad_key == NULL)
		return 1;
	sr = srunner_create(http_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(bad_key);
	curl_global_cleanup();
	return failed == 0 ? 0 : 1;
}
