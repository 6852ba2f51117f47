/*
 * buf.c - the one growable buffer of smime-kms (in the spirit of OpenSSH's
 * sshbuf and Postfix's VSTRING) and the one growth rule behind it.
 *
 *   kms_buf_init(), kms_buf_init_secret()  an empty buffer with a bound
 *   kms_buf_reserve()                      room for n more bytes
 *   kms_buf_append(), kms_buf_appendf()    add bytes or formatted text
 *   kms_buf_steal()                        hand the bytes to the caller
 *   kms_buf_reset(), kms_buf_free()        empty it, release it
 *   kms_array_reserve()                    the same growth for arrays of structs
 *
 * Every size computation is overflow-checked; a buffer never grows past its
 * bound (KMS_ERR_TOOBIG), so hostile input costs at most that much memory.
 * A secret buffer wipes every copy it leaves behind (old storage on growth,
 * the bytes on reset and free).
 */
#include "config.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

/* Capacity of a buffer's first allocation (bytes or elements). */
#define GROW_FIRST 64

/*
 * The growth rule: the smallest doubling of max(cur, GROW_FIRST) that holds
 * need, clamped to limit.  0 when need is over limit or the product would
 * overflow.
 */
static size_t
grow_to(size_t cur, size_t need, size_t limit)
{
	size_t n = cur > GROW_FIRST ? cur : GROW_FIRST;

	if (need > limit)
		return 0;
	while (n < need) {
		if (n > SIZE_MAX / 2) {
			n = need;
			break;
		}
		n *= 2;
	}
	return n > limit ? limit : n;
}

int
kms_array_reserve(void *arrp, size_t *cap, size_t need, size_t elsize, size_t max_elems)
{
	void **arr = arrp;
	size_t limit = max_elems, ncap;
	void *np;

	if (need <= *cap)
		return 0;
	if (elsize == 0)
		return kms_fail(KMS_ERR_INVALID, "array of zero-sized elements");
	if (limit > SIZE_MAX / elsize)
		limit = SIZE_MAX / elsize;
	if (need > limit)
		return kms_fail(KMS_ERR_TOOBIG, "more than %zu elements", limit);
	ncap = grow_to(*cap, need, limit);
	if ((np = realloc(*arr, ncap * elsize)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	*arr = np;
	*cap = ncap;
	return 0;
}

void
kms_buf_init(struct kms_buf *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

void
kms_buf_init_secret(struct kms_buf *b, size_t max)
{
	kms_buf_init(b, max);
	b->secret = 1;
}

int
kms_buf_reserve(struct kms_buf *b, size_t n)
{
	size_t need, ncap;
	unsigned char *np;

	if (n > b->max || b->len > b->max - n)
		return kms_fail(KMS_ERR_TOOBIG, "over the %zu-byte bound", b->max);
	need = b->len + n + 1;    /* +1: the NUL kept after the bytes */
	if (need <= b->cap)
		return 0;
	ncap = grow_to(b->cap, need, b->max == SIZE_MAX ? SIZE_MAX : b->max + 1);
	if (ncap == 0)
		return kms_fail(KMS_ERR_TOOBIG, "over the %zu-byte bound", b->max);
	if (b->secret) {
		/* realloc may leave a copy behind: move by hand and wipe the old one. */
		if ((np = malloc(ncap)) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		if (b->data != NULL) {
			memcpy(np, b->data, b->len + 1);
			kms_wipe(b->data, b->cap);
			free(b->data);
		}
	} else if ((np = realloc(b->data, ncap)) == NULL) {
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	if (b->data == NULL)
		np[0] = '\0';
	b->data = np;
	b->cap = ncap;
	return 0;
}

int
kms_buf_append(struct kms_buf *b, const void *p, size_t n)
{
	int rc;

	if ((rc = kms_buf_reserve(b, n)) != 0)
		return rc;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

int
kms_buf_append_str(struct kms_buf *b, const char *s)
{
	return kms_buf_append(b, s, strlen(s));
}

int
kms_buf_vappendf(struct kms_buf *b, const char *fmt, va_list ap)
{
	va_list aq;
	int n, rc;

	va_copy(aq, ap);
	n = vsnprintf(NULL, 0, fmt, aq);
	va_end(aq);
	if (n < 0)
		return kms_fail(KMS_ERR_INVALID, "bad format");
	if ((rc = kms_buf_reserve(b, (size_t)n)) != 0)
		return rc;
	vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
	return 0;
}

int
kms_buf_appendf(struct kms_buf *b, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = kms_buf_vappendf(b, fmt, ap);
	va_end(ap);
	return rc;
}

void *
kms_buf_steal(struct kms_buf *b, size_t *len)
{
	unsigned char *p = b->data;

	if (len != NULL)
		*len = b->len;
	if (p == NULL && (p = calloc(1, 1)) == NULL) {
		kms_fail(KMS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void
kms_buf_reset(struct kms_buf *b)
{
	if (b->data != NULL) {
		if (b->secret)
			kms_wipe(b->data, b->len);
		b->data[0] = '\0';
	}
	b->len = 0;
}

void
kms_buf_free(struct kms_buf *b)
{
	if (b == NULL)
		return;
	if (b->data != NULL && b->secret)
		kms_wipe(b->data, b->cap);
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
