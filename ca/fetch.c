/*
 * fetch.c - getting CRLs from elsewhere: over http(s) with libcurl (with the
 * ?after= long poll of our own distribution point), or from a local file;
 * checking them against a CA certificate; keeping a local copy that is only
 * ever replaced by a newer good one.
 *
 * Entry points: ca_crl_fetch(), ca_crl_parse(), ca_crl_number(),
 * ca_crl_load_cas(), ca_crl_find_issuer(), ca_crl_save(),
 * ca_crl_fetch_to_dir() (kmsctl crl fetch).  ca_crl_check() is in revidx.c.
 *
 * Every download is bounded in size (CA_CRL_FETCH_MAX unless the caller
 * says less) and time, follows at most three redirects, and speaks only
 * http and https.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/crlint.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void
curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct body {
	struct kms_buf buf;     /* bounded by the caller's max */
	int toobig;
};

static size_t
body_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;
	int rc = kms_buf_append(&b->buf, data, n);

	if (rc == KMS_ERR_TOOBIG)
		b->toobig = 1;
	return rc == 0 ? n : 0;
}

static int
is_http(const char *url)
{
	return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

int
ca_crl_parse(const unsigned char *buf, size_t len, X509_CRL **out)
{
	const unsigned char *p = buf;
	X509_CRL *crl = NULL;

	*out = NULL;
	if (buf == NULL || len == 0 || len > LONG_MAX)
		return kms_fail(KMS_ERR_CORRUPT, "empty CRL");
	if (len > 10 && memmem(buf, len < 4096 ? len : 4096, "-----BEGIN", 10) != NULL) {
		BIO *b = BIO_new_mem_buf(buf, (int)(len > INT_MAX ? INT_MAX : len));

		if (b == NULL)
			return KMS_ERR_NOMEM;
		crl = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL);
		BIO_free(b);
	} else {
		crl = d2i_X509_CRL(NULL, &p, (long)len);
		if (crl != NULL && p != buf + len) {
			X509_CRL_free(crl);
			return kms_fail(KMS_ERR_CORRUPT, "trailing data after the CRL");
		}
	}
	if (crl == NULL)
		return kms_fail_openssl(KMS_ERR_CORRUPT, "not a CRL (DER or PEM)");
	*out = crl;
	return 0;
}

long long
ca_crl_number(X509_CRL *crl)
{
	ASN1_INTEGER *num;
	long long v = -1;
	int64_t i64;

	if (crl == NULL || (num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL)) == NULL)
		return -1;
	if (ASN1_INTEGER_get_int64(&i64, num) == 1 && i64 >= 0)
		v = (long long)i64;
	ASN1_INTEGER_free(num);
	return v;
}

/* libcurl's progress callback: a non-zero return aborts the transfer. */
static int
progress_cancel(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	const int *cancel = arg;

	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	return __atomic_load_n(cancel, __ATOMIC_ACQUIRE) ? 1 : 0;
}

/* Keep one response header value (trimmed, bounded) when its name matches. */
static void
header_take(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), o = 0;
	const char *p;

	if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
		return;
	p = line + nl + 1;
	n -= nl + 1;
	while (n > 0 && (*p == ' ' || *p == '\t')) {
		p++;
		n--;
	}
	while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' '))
		n--;
	if (n >= outlen)
		return;         /* too long to send back: no validator */
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
			return;
		out[o++] = p[i];
	}
	out[o] = '\0';
}

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *arg)
{
	struct ca_fetch_cond *c = arg;
	size_t n = size * nmemb;

	/* A new response (after a redirect) starts over. */
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		c->etag_out[0] = '\0';
		c->last_modified_out[0] = '\0';
	}
	header_take(data, n, "ETag", c->etag_out, sizeof(c->etag_out));
	header_take(data, n, "Last-Modified", c->last_modified_out, sizeof(c->last_modified_out));
	return n;
}

static int
fetch_http(const char *url, int timeout, long long after, size_t max, const int *cancel, struct body *b,
    long *status, struct ca_fetch_cond *cond)
{
	struct curl_slist *hdrs = NULL;
	CURL *c = NULL;
	CURLcode cc;
	char *full = NULL, errbuf[CURL_ERROR_SIZE] = "";
	size_t n;
	int rc;

	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return kms_fail(KMS_ERR_IO, "libcurl initialisation failed");
	n = strlen(url) + 32;
	if ((full = malloc(n)) == NULL)
		return KMS_ERR_NOMEM;
	if (after >= 0)
		snprintf(full, n, "%s%cafter=%lld", url, strchr(url, '?') ? '&' : '?', after);
	else
		snprintf(full, n, "%s", url);
	if ((c = curl_easy_init()) == NULL) {
		free(full);
		return KMS_ERR_NOMEM;
	}
	curl_easy_setopt(c, CURLOPT_URL, full);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)(timeout > 0 ? timeout : 30));
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)(timeout > 0 && timeout < 10 ? timeout : 10));
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
	curl_easy_setopt(c, CURLOPT_USERAGENT, PACKAGE_NAME "/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	if (cond != NULL) {
		char h[320];

		cond->etag_out[0] = cond->last_modified_out[0] = '\0';
		if (cond->etag != NULL && cond->etag[0] != '\0' && strlen(cond->etag) < 256) {
			snprintf(h, sizeof(h), "If-None-Match: %s", cond->etag);
			hdrs = curl_slist_append(hdrs, h);
		}
		if (cond->last_modified != NULL && cond->last_modified[0] != '\0' && strlen(cond->last_modified) < 64) {
			snprintf(h, sizeof(h), "If-Modified-Since: %s", cond->last_modified);
			hdrs = curl_slist_append(hdrs, h);
		}
		if (hdrs != NULL)
			curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
		curl_easy_setopt(c, CURLOPT_HEADERDATA, cond);
	}
	if (cancel != NULL) {
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress_cancel);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)(uintptr_t)cancel);
	}
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK) {
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
		rc = 0;
	} else if (b->toobig || cc == CURLE_FILESIZE_EXCEEDED) {
		rc = kms_fail(KMS_ERR_TOOBIG, "%s: CRL larger than %zu bytes", url, max);
	} else if (cc == CURLE_ABORTED_BY_CALLBACK) {
		rc = kms_fail(KMS_ERR_STATE, "%s: cancelled", url);
	} else if (cc == CURLE_OPERATION_TIMEDOUT) {
		rc = kms_fail(KMS_ERR_TIMEOUT, "%s: timed out after %d s", url, timeout);
	} else {
		rc = kms_fail(KMS_ERR_IO, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(cc));
	}
	curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	free(full);
	return rc;
}

int
ca_crl_fetch(const char *url, int timeout, long long after, size_t max, const int *cancel, X509_CRL **crl,
    unsigned char **der, size_t *derlen)
{
	return ca_crl_fetch_cond(url, timeout, after, max, cancel, NULL, crl, der, derlen);
}

int
ca_crl_fetch_cond(const char *url, int timeout, long long after, size_t max, const int *cancel,
    struct ca_fetch_cond *cond, X509_CRL **crl, unsigned char **der, size_t *derlen)
{
	struct body b = { 0 };
	unsigned char *data = NULL;
	size_t len = 0;
	long status = 0;
	int rc;
	const char *path = url;

	*crl = NULL;
	if (der != NULL) {
		*der = NULL;
		*derlen = 0;
	}
	if (url == NULL || url[0] == '\0')
		return kms_fail(KMS_ERR_INVALID, "no CRL URL");
	if (max == 0 || max > CA_CRL_FETCH_MAX)
		max = CA_CRL_FETCH_MAX;
	kms_buf_init(&b.buf, max);
	if (is_http(url)) {
		if ((rc = fetch_http(url, timeout, after, max, cancel, &b, &status, cond)) != 0)
			goto out;
		if (status == 304) {
			rc = 0;
			goto out;
		}
		if (status == 404) {
			rc = kms_fail(KMS_ERR_NOTFOUND, "%s: 404 not found", url);
			goto out;
		}
		if (status != 200) {
			rc = kms_fail(KMS_ERR_PROTO, "%s: HTTP status %ld", url, status);
			goto out;
		}
		data = b.buf.data;
		len = b.buf.len;
	} else {
		if (strncasecmp(url, "file://", 7) == 0)
			path = url + 7;
		else if (strstr(url, "://") != NULL)
			return kms_fail(KMS_ERR_INVALID, "%s: only http, https and local files are supported", url);
		if ((rc = kms_read_file(path, max, &data, &len)) != 0)
			goto out;
	}
	if ((rc = ca_crl_parse(data, len, crl)) != 0) {
		char why[512];

		/* kms_fail() writes the buffer kms_last_error() returns: copy first. */
		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(rc, "%s: %s", url, why);
		goto out;
	}
	if (der != NULL) {
		int n;

		if ((n = i2d_X509_CRL(*crl, der)) <= 0) {
			X509_CRL_free(*crl);
			*crl = NULL;
			*der = NULL;
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encode CRL");
			goto out;
		}
		*derlen = (size_t)n;
	}
out:
	if (data != b.buf.data)
		free(data);
	kms_buf_free(&b.buf);
	return rc;
}

int
ca_http_get(const char *url, int timeout, size_t max, unsigned char **body, size_t *len)
{
	struct body b = { 0 };
	long status = 0;
	int rc;

	*body = NULL;
	*len = 0;
	if (url == NULL || !is_http(url))
		return kms_fail(KMS_ERR_INVALID, "not an http(s) URL");
	kms_buf_init(&b.buf, max);
	if ((rc = fetch_http(url, timeout, -1, max, NULL, &b, &status, NULL)) != 0)
		goto out;
	if (status == 404)
		rc = kms_fail(KMS_ERR_NOTFOUND, "%s: 404 not found", url);
	else if (status != 200)
		rc = kms_fail(KMS_ERR_PROTO, "%s: HTTP status %ld", url, status);
	if (rc != 0)
		goto out;
	if ((*body = kms_buf_steal(&b.buf, len)) == NULL)
		rc = KMS_ERR_NOMEM;
out:
	kms_buf_free(&b.buf);
	return rc;
}

int
ca_crl_load_cas(const char *path, STACK_OF(X509) **out)
{
	STACK_OF(X509) *sk = NULL;
	BIO *b = NULL;
	X509 *x;
	int rc;

	*out = NULL;
	if ((b = BIO_new_file(path, "r")) == NULL)
		return kms_fail_openssl(KMS_ERR_IO, "cannot read %s", path);
	if ((sk = sk_X509_new_null()) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(sk, x)) {
			X509_free(x);
			rc = KMS_ERR_NOMEM;
			goto out;
		}
	}
	ERR_clear_error();   /* the end of the file reads as "no start line" */
	if (sk_X509_num(sk) == 0) {
		rc = kms_fail(KMS_ERR_INVALID, "%s holds no PEM certificate", path);
		goto out;
	}
	*out = sk;
	sk = NULL;
	rc = 0;
out:
	sk_X509_pop_free(sk, X509_free);
	BIO_free(b);
	return rc;
}

int
ca_crl_find_issuer(X509_CRL *crl, STACK_OF(X509) *cas, time_t now, X509 **issuer, int *stale)
{
	int rc = KMS_ERR_NOTFOUND, found = 0;
	char err[256] = "";

	*issuer = NULL;
	*stale = 0;
	for (int i = 0; i < sk_X509_num(cas); i++) {
		X509 *ca = sk_X509_value(cas, i);

		if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0)
			continue;
		found = 1;
		if ((rc = ca_crl_check(crl, ca, now, stale)) == 0) {
			*issuer = ca;
			return 0;
		}
		snprintf(err, sizeof(err), "%s", kms_last_error());
	}
	if (!found) {
		char name[256];

		X509_NAME_oneline(X509_CRL_get_issuer(crl), name, sizeof(name));
		return kms_fail(KMS_ERR_NOTFOUND, "no trusted CA certificate for the CRL issuer %s", name);
	}
	return kms_fail(rc, "%s", err);
}

/* "<dir>/<name>": the file must not exist or hold an older CRL of the same CA. */
static int
check_not_older(const char *path, X509_CRL *crl, X509 *issuer)
{
	unsigned char *buf = NULL;
	size_t len;
	X509_CRL *old = NULL;
	long long on, nn;
	int rc, stale;

	if (kms_read_file(path, CA_CRL_FETCH_MAX, &buf, &len) != 0) {
		kms_clear_error();
		return 0;
	}
	if (ca_crl_parse(buf, len, &old) != 0 || ca_crl_check(old, issuer, time(NULL), &stale) != 0) {
		/* Not a good copy of this CA's CRL: nothing to protect. */
		kms_clear_error();
		rc = 0;
		goto out;
	}
	on = ca_crl_number(old);
	nn = ca_crl_number(crl);
	if (on >= 0 && nn >= 0 && nn < on)
		rc = kms_fail(KMS_ERR_STATE, "refusing CRL number %lld: the local copy already has number %lld",
		    nn, on);
	else
		rc = 0;
out:
	X509_CRL_free(old);
	free(buf);
	return rc;
}

int
ca_crl_save(const char *dir, const char *name, X509_CRL *crl, X509 *issuer)
{
	unsigned char *der = NULL;
	char *path = NULL, *pempath = NULL, *pem = NULL, pemname[300];
	size_t pemlen;
	int n, rc;

	if (dir == NULL || name == NULL || name[0] == '\0' || name[0] == '.' || strchr(name, '/') != NULL)
		return kms_fail(KMS_ERR_INVALID, "bad CRL file name");
	if ((rc = kms_mkdir_p(dir, 0755)) != 0)
		return rc;
	snprintf(pemname, sizeof(pemname), "%s.pem", name);
	if ((path = kms_path_join(dir, name)) == NULL || (pempath = kms_path_join(dir, pemname)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if (issuer != NULL && (rc = check_not_older(path, crl, issuer)) != 0)
		goto out;
	if ((n = i2d_X509_CRL(crl, &der)) <= 0) {
		der = NULL;
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encode CRL");
		goto out;
	}
	if ((rc = ca_pem_encode("X509 CRL", der, (size_t)n, &pem, &pemlen)) != 0)
		goto out;
	if ((rc = kms_write_file_atomic(path, der, (size_t)n, 0644)) != 0)
		goto out;
	rc = kms_write_file_atomic(pempath, pem, pemlen, 0644);
out:
	OPENSSL_free(der);
	free(pem);
	free(path);
	free(pempath);
	return rc;
}

int
ca_crl_file_name(const char *url, char *out, size_t outlen)
{
	const char *end, *start;
	size_t o = 0;

	if (outlen < 16)
		return KMS_ERR_INVALID;
	end = url + strcspn(url, "?#");
	start = end;
	while (start > url && start[-1] != '/')
		start--;
	for (const char *p = start; p < end && o + 5 < outlen; p++) {
		char c = *p;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || (c == '.' && o > 0))
			out[o++] = c;
		else
			out[o++] = '_';
	}
	out[o] = '\0';
	if (o == 0) {
		snprintf(out, outlen, "crl.crl");
		return 0;
	}
	if (o < 4 || strcmp(out + o - 4, ".crl") != 0)
		snprintf(out + o, outlen - o, ".crl");
	return 0;
}

int
ca_crl_fetch_to_dir(const char *url, STACK_OF(X509) *cas, const char *dir, int timeout, long long *number)
{
	X509_CRL *crl = NULL;
	X509 *issuer;
	char name[128];
	int rc, stale;

	*number = -1;
	if ((rc = ca_crl_fetch(url, timeout, -1, 0, NULL, &crl, NULL, NULL)) != 0)
		return rc;
	if (crl == NULL)
		return kms_fail(KMS_ERR_PROTO, "%s: no CRL in the answer", url);
	if ((rc = ca_crl_find_issuer(crl, cas, time(NULL), &issuer, &stale)) != 0) {
		char why[512];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(rc, "%s: %s; the local copy is kept", url, why);
		goto out;
	}
	if (stale) {
		rc = kms_fail(KMS_ERR_EXPIRED, "%s: the CRL is past its nextUpdate; the local copy is kept", url);
		goto out;
	}
	ca_crl_file_name(url, name, sizeof(name));
	if ((rc = ca_crl_save(dir, name, crl, issuer)) != 0)
		goto out;
	*number = ca_crl_number(crl);
out:
	X509_CRL_free(crl);
	return rc;
}
