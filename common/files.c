/*
 * files.c - careful file I/O: exclusive creation for secrets (never follow a
 * link, never overwrite), atomic replacement for published files (temp
 * name, fsync, rename, fsync of the directory), bounded reads.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/common.h"

char *
kms_path_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p;

	if (b == 0)
		return strdup(dir);
	while (a > 1 && dir[a - 1] == '/')
		a--;
	p = malloc(a + b + 2);
	if (p == NULL)
		return NULL;
	memcpy(p, dir, a);
	p[a] = '/';
	memcpy(p + a + 1, name, b + 1);
	return p;
}

static int
write_fd(int fd, const void *data, size_t len, const char *path)
{
	const char *p = data;

	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return kms_fail(KMS_ERR_IO, "write %s: %s", path, strerror(errno));
		}
		p += w;
		len -= (size_t)w;
	}
	if (fsync(fd) != 0)
		return kms_fail(KMS_ERR_IO, "fsync %s: %s", path, strerror(errno));
	return 0;
}

static void
fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	int fd;

	if (copy == NULL)
		return;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	free(copy);
}

int
kms_write_file_excl(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd, rc;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return kms_fail(errno == EEXIST ? KMS_ERR_EXISTS : KMS_ERR_IO, "create %s: %s", path, strerror(errno));
	/* The umask may have narrowed it; never widen beyond mode. */
	if (fchmod(fd, mode) != 0) {
		rc = kms_fail(KMS_ERR_IO, "chmod %s: %s", path, strerror(errno));
		goto fail;
	}
	if ((rc = write_fd(fd, data, len, path)) != 0)
		goto fail;
	if (close(fd) != 0) {
		fd = -1;
		rc = kms_fail(KMS_ERR_IO, "close %s: %s", path, strerror(errno));
		goto fail;
	}
	fsync_dir_of(path);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(path);
	return rc;
}

int
kms_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	char tmp[PATH_MAX];
	unsigned char rnd[6];
	int fd, rc;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "random");
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp-%02x%02x%02x%02x%02x%02x", path,
	    rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]) >= sizeof(tmp))
		return kms_fail(KMS_ERR_INVALID, "path too long: %s", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return kms_fail(KMS_ERR_IO, "create %s: %s", tmp, strerror(errno));
	if (fchmod(fd, mode) != 0) {
		rc = kms_fail(KMS_ERR_IO, "chmod %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if ((rc = write_fd(fd, data, len, tmp)) != 0)
		goto fail;
	if (close(fd) != 0) {
		fd = -1;
		rc = kms_fail(KMS_ERR_IO, "close %s: %s", tmp, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		rc = kms_fail(KMS_ERR_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
		goto fail;
	}
	fsync_dir_of(path);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return rc;
}

int
kms_read_file(const char *path, size_t max, unsigned char **out, size_t *outlen)
{
	struct stat sb;
	unsigned char *buf = NULL;
	size_t len = 0, cap;
	int fd, rc;

	*out = NULL;
	*outlen = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kms_fail(errno == ENOENT ? KMS_ERR_NOTFOUND : KMS_ERR_IO, "%s: %s", path, strerror(errno));
	/* Regular files, and pipes (a password given as <(...)); never directories or devices. */
	if (fstat(fd, &sb) != 0 || !(S_ISREG(sb.st_mode) || S_ISFIFO(sb.st_mode))) {
		rc = kms_fail(KMS_ERR_INVALID, "%s: not a regular file", path);
		goto out;
	}
	if (S_ISREG(sb.st_mode) && (unsigned long long)sb.st_size > max) {
		rc = kms_fail(KMS_ERR_TOOBIG, "%s: larger than %zu bytes", path, max);
		goto out;
	}
	cap = S_ISREG(sb.st_mode) ? (size_t)sb.st_size + 1 : 4096;
	buf = malloc(cap);
	if (buf == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	for (;;) {
		ssize_t r;

		if (len + 1 >= cap) {
			unsigned char *nb;

			if (cap > max + 1) {
				rc = kms_fail(KMS_ERR_TOOBIG, "%s: larger than %zu bytes", path, max);
				goto out;
			}
			nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				rc = KMS_ERR_NOMEM;
				goto out;
			}
			buf = nb;
			cap *= 2;
		}
		r = read(fd, buf + len, cap - len - 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = kms_fail(KMS_ERR_IO, "read %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > max) {
		rc = kms_fail(KMS_ERR_TOOBIG, "%s: larger than %zu bytes", path, max);
		goto out;
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	buf = NULL;
	rc = 0;
out:
	if (buf) {
		kms_wipe(buf, cap);
		free(buf);
	}
	close(fd);
	return rc;
}

int
kms_read_secret_file(const char *path, char **out)
{
	unsigned char *data;
	size_t len, n;
	int rc;

	*out = NULL;
	if ((rc = kms_read_file(path, 4096, &data, &len)) != 0)
		return rc;
	n = strcspn((char *)data, "\r\n");
	data[n] = '\0';
	if (n == 0) {
		kms_wipe(data, len);
		free(data);
		return kms_fail(KMS_ERR_INVALID, "%s: empty first line", path);
	}
	if (n < len)
		kms_wipe(data + n, len - n);
	*out = (char *)data;
	return 0;
}

int
kms_mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return kms_fail(KMS_ERR_INVALID, "bad directory path");
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] == '/' || buf[i] == '\0') {
			char c = buf[i];

			buf[i] = '\0';
			if (mkdir(buf, mode) != 0 && errno != EEXIST)
				return kms_fail(KMS_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
			buf[i] = c;
		}
	}
	return 0;
}
