/*
 * proto.c - control-protocol framing: one JSON object per line, at most
 * KMS_PROTO_MAX_REQUEST bytes, and the reply builders shared by kmsd and
 * kmsctl.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

#define READ_CHUNK 65536

void
kms_lines_init(struct kms_lines *lb, size_t max)
{
	memset(lb, 0, sizeof(*lb));
	lb->max = max;
	/* Requests carry passwords and shares: a secret buffer wipes what it held. */
	kms_buf_init_secret(&lb->b, max > SIZE_MAX - READ_CHUNK - 1 ? SIZE_MAX - 1 : max + READ_CHUNK);
}

void
kms_lines_free(struct kms_lines *lb)
{
	kms_buf_free(&lb->b);
	memset(lb, 0, sizeof(*lb));
}

ssize_t
kms_read_fd(void *ctx, char *buf, size_t n)
{
	int fd = *(int *)ctx;
	ssize_t r;

	do
		r = read(fd, buf, n);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? KMS_ERR_TIMEOUT : KMS_ERR_IO;
	return r;
}

/* Make room for READ_CHUNK more bytes after dropping what was handed out. */
static int
make_room(struct kms_lines *lb)
{
	struct kms_buf *b = &lb->b;

	if (lb->start > 0) {
		kms_wipe(b->data, lb->start);
		memmove(b->data, b->data + lb->start, b->len - lb->start);
		b->len -= lb->start;
		kms_wipe(b->data + b->len, lb->start);
		lb->start = 0;
	}
	return kms_buf_reserve(b, READ_CHUNK);
}

int
kms_lines_read(struct kms_lines *lb, kms_read_fn readfn, void *ctx, char **line, size_t *len)
{
	int skipping = 0;

	*line = NULL;
	*len = 0;
	for (;;) {
		char *p = (char *)lb->b.data + lb->start;
		size_t avail = lb->b.len - lb->start;
		char *nl = avail ? memchr(p, '\n', avail) : NULL;
		ssize_t r;
		int rc;

		if (nl != NULL) {
			size_t n = (size_t)(nl - p);

			lb->start += n + 1;
			if (skipping || n > lb->max) {
				skipping = 0;
				return KMS_ERR_TOOBIG;
			}
			*nl = '\0';
			if (n > 0 && p[n - 1] == '\r')
				p[--n] = '\0';
			*line = p;
			*len = n;
			return 1;
		}
		if (avail > lb->max) {
			/* No end in sight within the bound: drop it and skip to its end. */
			kms_wipe(p, avail);
			lb->start = lb->b.len;
			skipping = 1;
		}
		if ((rc = make_room(lb)) != 0)
			return rc;
		r = readfn(ctx, (char *)lb->b.data + lb->b.len, READ_CHUNK);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return (lb->b.len - lb->start > 0 || skipping) ? KMS_ERR_PROTO : 0;
		lb->b.len += (size_t)r;
	}
}

json_t *
kms_reply_ok(json_t *result)
{
	json_t *o = json_object();

	if (o == NULL) {
		json_decref(result);
		return NULL;
	}
	json_object_set_new(o, "ok", json_true());
	json_object_set_new(o, "result", result ? result : json_object());
	return o;
}

json_t *
kms_reply_error(const char *code, const char *fmt, ...)
{
	json_t *o = json_object(), *e = json_object();
	char msg[1024];
	va_list ap;

	if (o == NULL || e == NULL) {
		json_decref(o);
		json_decref(e);
		return NULL;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_set_new(e, "code", json_string(code));
	json_object_set_new(e, "message", json_string(msg));
	json_object_set_new(o, "ok", json_false());
	json_object_set_new(o, "error", e);
	return o;
}

int
kms_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	struct stat sb;
	int is_sock = fstat(fd, &sb) == 0 && S_ISSOCK(sb.st_mode);

	while (len > 0) {
		ssize_t w = is_sock ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;

			kms_fail(KMS_ERR_IO, "write: %s", strerror(e));
			errno = e;      /* callers name the file with strerror(errno) */
			return KMS_ERR_IO;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int
kms_send_json(int fd, const json_t *obj)
{
	char *s;
	size_t n;
	int rc;

	s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (s == NULL)
		return KMS_ERR_NOMEM;
	n = strlen(s);
	s[n] = '\0';
	rc = kms_write_all(fd, s, n);
	if (rc == 0)
		rc = kms_write_all(fd, "\n", 1);
	kms_wipe(s, n);
	free(s);
	return rc;
}
