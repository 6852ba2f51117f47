/*
 * msgbuf.c - one message as the milter receives it: header fields and body
 * chunks, in memory up to [milter] max_memory, then in an unlinked temp
 * file in [milter] tempdir, never more than [milter] max_message_size.
 *
 * Entry points: mlt_msgbuf_new, _append, _add_header, _data (one
 * contiguous view: the memory itself, or the file mapped read-only),
 * _free.  The temp file is made with O_TMPFILE (no name ever exists, so
 * nothing is left behind if kmsd dies) and mode 0600.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "milter/milter.h"

struct mlt_msgbuf {
	size_t max_memory, max_size;
	char *tempdir;
	unsigned char *mem;
	size_t len, cap;        /* bytes kept (memory or file) */
	size_t total;           /* bytes appended, kept or not */
	int fd;                 /* spilled: the temp file, else -1 */
	int too_big;
	void *map;
	size_t maplen;
};

int
mlt_msgbuf_new(size_t max_memory, size_t max_size, const char *tempdir, struct mlt_msgbuf **out)
{
	struct mlt_msgbuf *mb;

	*out = NULL;
	if ((mb = calloc(1, sizeof(*mb))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	mb->fd = -1;
	mb->max_memory = max_memory;
	mb->max_size = max_size;
	if ((mb->tempdir = strdup(tempdir && *tempdir ? tempdir : "/tmp")) == NULL) {
		free(mb);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	*out = mb;
	return 0;
}

void
mlt_msgbuf_free(struct mlt_msgbuf *mb)
{
	if (mb == NULL)
		return;
	if (mb->map != NULL)
		munmap(mb->map, mb->maplen);
	if (mb->fd >= 0)
		close(mb->fd);
	free(mb->mem);
	free(mb->tempdir);
	free(mb);
}

/* Move what is in memory to a new unlinked temp file. */
static int
spill(struct mlt_msgbuf *mb)
{
	int fd = open(mb->tempdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0) {
		/* File systems without O_TMPFILE: a named file, unlinked at once. */
		char *path = kms_path_join(mb->tempdir, "kmsd-msg.XXXXXX");

		if (path == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
		free(path);
	}
	if (fd < 0)
		return kms_fail(KMS_ERR_IO, "cannot make a temp file in %s: %s", mb->tempdir, strerror(errno));
	if (mb->len > 0 && kms_write_all(fd, mb->mem, mb->len) != 0) {
		int e = errno;

		close(fd);
		return kms_fail(KMS_ERR_IO, "cannot write a temp file in %s: %s", mb->tempdir, strerror(e));
	}
	free(mb->mem);
	mb->mem = NULL;
	mb->cap = 0;
	mb->fd = fd;
	return 0;
}

int
mlt_msgbuf_append(struct mlt_msgbuf *mb, const void *p, size_t n)
{
	int rc;

	mb->total += n;
	if (mb->too_big)
		return 0;
	if (mb->max_size > 0 && mb->len + n > mb->max_size) {
		/* Over the bound: keep nothing more (what is kept still has the header block). */
		mb->too_big = 1;
		return 0;
	}
	if (mb->map != NULL)
		return kms_fail(KMS_ERR_STATE, "message buffer already mapped");
	if (mb->fd < 0 && mb->len + n > mb->max_memory && (rc = spill(mb)) != 0)
		return rc;
	if (mb->fd >= 0) {
		if (kms_write_all(mb->fd, p, n) != 0)
			return kms_fail(KMS_ERR_IO, "cannot write a temp file in %s: %s", mb->tempdir, strerror(errno));
		mb->len += n;
		return 0;
	}
	if ((rc = kms_array_reserve(&mb->mem, &mb->cap, mb->len + n, 1, mb->max_memory)) != 0)
		return rc;
	memcpy(mb->mem + mb->len, p, n);
	mb->len += n;
	return 0;
}

/* Header room the hint adds to the declared size (the MTA's own fields come on top). */
#define EXPECT_SLACK 4096

int
mlt_msgbuf_expect(struct mlt_msgbuf *mb, size_t declared)
{
	size_t want;

	if (mb->len > 0 || mb->fd >= 0 || mb->too_big || declared == 0)
		return 0;
	if (mb->max_memory <= EXPECT_SLACK || declared > mb->max_memory - EXPECT_SLACK)
		return spill(mb);
	want = declared + EXPECT_SLACK;
	/* Room only: a failure here is no failure (the buffer grows as it would have). */
	if (kms_array_reserve(&mb->mem, &mb->cap, want, 1, mb->max_memory) != 0)
		kms_clear_error();
	return 0;
}

/* Header lines up to this long are built on the stack (longer ones: malloc). */
#define HEADER_STACK 1024

int
mlt_msgbuf_add_header(struct mlt_msgbuf *mb, const char *name, const char *value, int lead_space)
{
	char stackline[HEADER_STACK], *line = stackline;
	size_t nl = strlen(name), vl = strlen(value), o = 0, extra = 0;
	int rc;

	for (size_t i = 0; i < vl; i++)
		if (value[i] == '\n' && (i == 0 || value[i - 1] != '\r'))
			extra++;
	if (nl + vl + extra + 5 > sizeof(stackline) && (line = malloc(nl + vl + extra + 5)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	memcpy(line, name, nl);
	o = nl;
	line[o++] = ':';
	if (lead_space)
		line[o++] = ' ';
	for (size_t i = 0; i < vl; i++) {
		if (value[i] == '\n' && (i == 0 || value[i - 1] != '\r'))
			line[o++] = '\r';
		line[o++] = value[i];
	}
	line[o++] = '\r';
	line[o++] = '\n';
	rc = mlt_msgbuf_append(mb, line, o);
	if (line != stackline)
		free(line);
	return rc;
}

size_t
mlt_msgbuf_total(const struct mlt_msgbuf *mb)
{
	return mb->total;
}

int
mlt_msgbuf_too_big(const struct mlt_msgbuf *mb)
{
	return mb->too_big;
}

int
mlt_msgbuf_spilled(const struct mlt_msgbuf *mb)
{
	return mb->fd >= 0;
}

int
mlt_msgbuf_data(struct mlt_msgbuf *mb, const unsigned char **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	if (mb->fd < 0) {
		*data = mb->mem ? mb->mem : (const unsigned char *)"";
		*len = mb->len;
		return 0;
	}
	if (mb->map == NULL && mb->len > 0) {
		/* Populated at once: the walk reads all of it, so no fault per page run. */
		void *m = mmap(NULL, mb->len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, mb->fd, 0);

		if (m == MAP_FAILED)
			return kms_fail(KMS_ERR_IO, "cannot map the message temp file: %s", strerror(errno));
		mb->map = m;
		mb->maplen = mb->len;
	}
	*data = mb->map ? mb->map : (const unsigned char *)"";
	*len = mb->len;
	return 0;
}
