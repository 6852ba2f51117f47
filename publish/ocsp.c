/*
 * ocsp.c - the OCSP responder's HTTP side (RFC 6960 appendix A, RFC 5019
 * section 5): POST application/ocsp-request to /ocsp, and GET
 * /ocsp/<url-encoded base64 of the DER request>.  Responses come from
 * ca_ocsp_respond() with the revocation index of the moment.
 *
 * Entry points (pubint.h): pub_ocsp_path(), pub_ocsp_serve(),
 * pub_ocsp_done().  Owns the POST body of a request in flight (bounded by
 * [ocsp] max_request_size: the body is dropped, not stored, past it).
 *
 * GET answers without a nonce carry RFC 5019 6.2's caching headers: ETag,
 * Last-Modified (producedAt), Expires (nextUpdate) and Cache-Control
 * max-age up to nextUpdate, and honour If-None-Match.  POST answers and
 * nonce answers are not for caches.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>

#include "publish/publish.h"
#include "publish/pubint.h"

#define CT_OCSP_REQ "application/ocsp-request"
#define CT_OCSP_RESP "application/ocsp-response"

struct post_body {
	struct kms_buf buf;         /* bounded by [ocsp] max_request_size */
	int too_big;
};

/*
 * *req_cls of a GET or HEAD between MHD's first call (the headers) and
 * its second: a response queued at the first call makes MHD close the
 * connection after it (it takes the request as not read to its end), which
 * would cost every GET client a new connection.
 */
static char get_seen;

int
pub_ocsp_path(const char *url)
{
	return strcmp(url, "/ocsp") == 0 || strncmp(url, "/ocsp/", 6) == 0;
}

void
pub_ocsp_done(void **req_cls)
{
	struct post_body *pb = *req_cls;

	if (pb == NULL || *req_cls == &get_seen) {
		*req_cls = NULL;
		return;
	}
	kms_buf_free(&pb->buf);
	free(pb);
	*req_cls = NULL;
}

static void
blob_free_cb(void *arg)
{
	ca_ocsp_blob_unref(arg);
}

static void
add_validators(struct MHD_Response *resp, const struct ca_ocsp_blob *b, time_t now)
{
	char date[64], cc[96];
	long long age = b->next_update > now ? (long long)(b->next_update - now) : 0;

	MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, b->etag);
	pub_http_date(b->produced, date, sizeof(date));
	MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, date);
	pub_http_date(b->next_update, date, sizeof(date));
	MHD_add_response_header(resp, MHD_HTTP_HEADER_EXPIRES, date);
	snprintf(cc, sizeof(cc), "public, max-age=%lld, no-transform, must-revalidate", age);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, cc);
}

/* Queue b (takes the reference) with the right headers for how it was asked. */
static enum MHD_Result
reply(struct MHD_Connection *c, struct ca_ocsp_blob *b, unsigned status, int get)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	time_t now = time(NULL);
	int cacheable = get && status == MHD_HTTP_OK && b->status == 0 && b->http_cacheable;
	const char *inm;

	if (cacheable && (inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH)) != NULL &&
	    pub_etag_listed(inm, b->etag)) {
		if ((resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)) == NULL) {
			ca_ocsp_blob_unref(b);
			return MHD_NO;
		}
		add_validators(resp, b, now);
		ca_ocsp_blob_unref(b);
		ret = MHD_queue_response(c, MHD_HTTP_NOT_MODIFIED, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	resp = MHD_create_response_from_buffer_with_free_callback_cls(b->len, b->der, blob_free_cb, b);
	if (resp == NULL) {
		ca_ocsp_blob_unref(b);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CT_OCSP_RESP);
	if (cacheable)
		add_validators(resp, b, now);
	else
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache, no-store");
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result
reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD, POST");
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* An OCSP malformedRequest, with HTTP status (413/414 for a request over its bound, else 200). */
static enum MHD_Result
reply_malformed(struct MHD_Connection *c, struct ca_ocsp *r, unsigned status)
{
	struct ca_ocsp_blob *b = NULL;

	/* The responder's own answer to an empty request is the malformedRequest response. */
	if (ca_ocsp_respond(r, NULL, NULL, 0, time(NULL), &b) != 0)
		return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	return reply(c, b, status, 0);
}

static enum MHD_Result
answer(struct MHD_Connection *c, struct ca_ocsp *r, struct ca_revholder *rev, const unsigned char *der, size_t len,
    int get)
{
	struct ca_revidx *idx = ca_revholder_get(rev);
	struct ca_ocsp_blob *b = NULL;
	int rc;

	rc = ca_ocsp_respond(r, idx, der, len, time(NULL), &b);
	ca_revidx_unref(idx);
	if (rc != 0) {
		kms_log(KMS_LOG_ERR, "OCSP: %s", kms_last_error());
		return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error\n");
	}
	return reply(c, b, MHD_HTTP_OK, get);
}

/*
 * GET /ocsp/<base64>: MHD has undone the %-escapes of the path.  A '+'
 * some encoder turned into a space is put back; base64url and missing
 * padding are accepted as well (RFC 5019 5: clients get this wrong).
 */
static enum MHD_Result
serve_get(struct MHD_Connection *c, struct ca_ocsp *r, struct ca_revholder *rev, size_t max, const char *url)
{
	const char *s = url[5] == '/' ? url + 6 : url + 5;
	size_t n = strlen(s), k = 0;
	unsigned char *der = NULL;
	size_t len = 0;
	char *b64;
	enum MHD_Result ret;

	if (n == 0)
		return reply_malformed(c, r, MHD_HTTP_OK);
	if (n > (max / 3 + 1) * 4)
		return reply_malformed(c, r, MHD_HTTP_URI_TOO_LONG);
	if ((b64 = malloc(n + 4)) == NULL)
		return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];

		if (ch == ' ' || ch == '-')
			ch = '+';
		else if (ch == '_')
			ch = '/';
		b64[k++] = ch;
	}
	while (k % 4 != 0)
		b64[k++] = '=';
	if (kms_b64_decode(b64, k, &der, &len) != 0) {
		kms_clear_error();
		free(b64);
		return reply_malformed(c, r, MHD_HTTP_OK);
	}
	free(b64);
	ret = answer(c, r, rev, der, len, 1);
	free(der);
	return ret;
}

/* POST: called once for the headers, once per piece of body, once at its end. */
static enum MHD_Result
serve_post(struct MHD_Connection *c, struct ca_ocsp *r, struct ca_revholder *rev, size_t max,
    const char *upload_data, size_t *upload_size, void **req_cls)
{
	struct post_body *pb = *req_cls;
	const char *cl;

	if (pb == NULL) {
		cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		/* Refused before a byte of it is read. */
		if (cl != NULL && (strlen(cl) > 18 || strtoull(cl, NULL, 10) > max))
			return reply_malformed(c, r, MHD_HTTP_CONTENT_TOO_LARGE);
		if ((pb = calloc(1, sizeof(*pb))) == NULL)
			return MHD_NO;
		kms_buf_init(&pb->buf, max);
		*req_cls = pb;
		return MHD_YES;
	}
	if (*upload_size > 0) {
		/* Past the bound the rest is read and dropped, never stored. */
		if (!pb->too_big) {
			int rc = kms_buf_append(&pb->buf, upload_data, *upload_size);

			if (rc == KMS_ERR_TOOBIG) {
				pb->too_big = 1;
				kms_buf_free(&pb->buf);
			} else if (rc != 0) {
				return MHD_NO;
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (pb->too_big)
		return reply_malformed(c, r, MHD_HTTP_CONTENT_TOO_LARGE);
	return answer(c, r, rev, pb->buf.data, pb->buf.len, 0);
}

static int
has_body(struct MHD_Connection *c)
{
	const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

	return (cl != NULL && strspn(cl, "0") != strlen(cl)) ||
	    MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
}

enum MHD_Result
pub_ocsp_serve(struct MHD_Connection *c, struct ca_ocsp *r, struct ca_revholder *rev, size_t max, const char *url,
    const char *method, const char *upload_data, size_t *upload_size, void **req_cls)
{
	int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;

	if (!post && strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "OCSP takes GET and POST\n");
	if (r == NULL)
		return reply_text(c, MHD_HTTP_NOT_FOUND, "no OCSP responder here\n");
	if (post)
		return serve_post(c, r, rev, max, upload_data, upload_size, req_cls);
	/*
	 * A GET with a body is answered (from its URL) at the first call, so
	 * that MHD reads none of the body and closes the connection after the
	 * answer; MHD takes an answer only then or once a body is read whole.
	 */
	if (*req_cls == NULL && !has_body(c)) {
		*req_cls = &get_seen;
		return MHD_YES;
	}
	return serve_get(c, r, rev, max, url);
}
