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

/* Bytes asked of read() at a time when reading a whole file. */
#define READ_CHUNK 65536

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
	if (kms_write_all(fd, data, len) != 0)
		return kms_fail(KMS_ERR_IO, "write %s: %s", path, strerror(errno));
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
	struct kms_buf buf;
	struct stat sb;
	int fd, rc;

	*out = NULL;
	*outlen = 0;
	/* What is read may be a secret (passphrase, share): wipe what we drop. */
	kms_buf_init_secret(&buf, max);
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
	/* A regular file's size is known: one allocation. */
	if (S_ISREG(sb.st_mode) && (rc = kms_buf_reserve(&buf, (size_t)sb.st_size)) != 0)
		goto out;
	for (;;) {
		/* One more byte than max is room enough to see a file grow past it. */
		size_t room = buf.len < max ? max - buf.len : 0;
		ssize_t r;

		if (room > READ_CHUNK)
			room = READ_CHUNK;
		if (room == 0) {
			char c;

			if ((r = read(fd, &c, 1)) > 0) {
				rc = kms_fail(KMS_ERR_TOOBIG, "%s: larger than %zu bytes", path, max);
				goto out;
			}
		} else {
			if ((rc = kms_buf_reserve(&buf, room)) != 0)
				goto out;
			r = read(fd, buf.data + buf.len, room);
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = kms_fail(KMS_ERR_IO, "read %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		buf.len += (size_t)r;
	}
	if ((*out = kms_buf_steal(&buf, outlen)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	(*out)[*outlen] = '\0';
	rc = 0;
out:
	kms_buf_free(&buf);
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
			if (mkdir(buf, mode) == 0) {
				/* The mode asked for, whatever the umask (published directories are read by others). */
				if (chmod(buf, mode) != 0)
					return kms_fail(KMS_ERR_IO, "chmod %s: %s", buf, strerror(errno));
			} else if (errno != EEXIST) {
				return kms_fail(KMS_ERR_IO, "mkdir %s: %s", buf, strerror(errno));
			}
			buf[i] = c;
		}
	}
	return 0;
}

/* ------------------------------------------------ paths named by a client */

/* Is uid one of the two accepted owners (alt (uid_t)-1: none)? */
static int
owned_by(uid_t uid, uid_t owner, uid_t alt)
{
	return uid == owner || (alt != (uid_t)-1 && uid == alt);
}

static int
fd_check_dir(int fd, const char *what, uid_t owner, uid_t alt, int final)
{
	struct stat sb;

	if (fstat(fd, &sb) != 0)
		return kms_fail(KMS_ERR_IO, "%s: %s", what, strerror(errno));
	if (!S_ISDIR(sb.st_mode))
		return kms_fail(KMS_ERR_PERM, "%s is not a directory", what);
	/* The directory itself is the requester's; above it, root's or theirs. */
	if (final ? !owned_by(sb.st_uid, owner, alt) : sb.st_uid != 0 && !owned_by(sb.st_uid, owner, alt))
		return kms_fail(KMS_ERR_PERM, "%s belongs to uid %u, not to the requester (uid %u)%s", what,
		    (unsigned)sb.st_uid, (unsigned)owner, final ? "" : " nor to root");
	/* Others may not swap what is in it; a sticky ancestor (/tmp) keeps them from our entries. */
	if ((sb.st_mode & (S_IWGRP | S_IWOTH)) && (final || !(sb.st_mode & S_ISVTX)))
		return kms_fail(KMS_ERR_PERM, "%s is writable by %s (mode %04o): chmod go-w it", what,
		    (sb.st_mode & S_IWOTH) ? "every user" : "its group", (unsigned)(sb.st_mode & 07777));
	return 0;
}

int
kms_dir_open_checked(const char *path, uid_t owner, uid_t alt, int *dirfd)
{
	char buf[PATH_MAX], *comp[PATH_MAX / 2], *save = NULL, *t;
	size_t n = 0;
	int fd, rc;

	*dirfd = -1;
	if (path == NULL || path[0] != '/')
		return kms_fail(KMS_ERR_INVALID, "directory \"%.200s\" is not an absolute path", path ? path : "");
	if (strlen(path) >= sizeof(buf))
		return kms_fail(KMS_ERR_INVALID, "directory path too long");
	memcpy(buf, path, strlen(path) + 1);
	for (t = strtok_r(buf, "/", &save); t != NULL; t = strtok_r(NULL, "/", &save)) {
		if (strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
			return kms_fail(KMS_ERR_INVALID, "directory %.200s: \".\" and \"..\" are not allowed in it", path);
		comp[n++] = t;
	}
	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return kms_fail(KMS_ERR_IO, "open /: %s", strerror(errno));
	if ((rc = fd_check_dir(fd, "/", owner, alt, n == 0)) != 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		int nfd = openat(fd, comp[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

		if (nfd < 0) {
			int e = errno;
			struct stat lsb;

			/* O_NOFOLLOW|O_DIRECTORY on a link gives ELOOP or ENOTDIR: say which it was. */
			if ((e == ELOOP || e == ENOTDIR) && fstatat(fd, comp[i], &lsb, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISLNK(lsb.st_mode))
				rc = kms_fail(KMS_ERR_PERM, "%.200s: \"%.100s\" is a symbolic link; name the real directory",
				    path, comp[i]);
			else
				rc = kms_fail(e == ENOENT ? KMS_ERR_NOTFOUND : e == EACCES ? KMS_ERR_PERM : KMS_ERR_INVALID,
				    "%.200s: %s%s", path, strerror(e), e == ENOENT ?
				    " (the directory must exist before kmsd is asked to use it)" : "");
			goto fail;
		}
		close(fd);
		fd = nfd;
		if ((rc = fd_check_dir(fd, i + 1 == n ? path : comp[i], owner, alt, i + 1 == n)) != 0)
			goto fail;
	}
	*dirfd = fd;
	return 0;
fail:
	close(fd);
	return rc;
}

int
kms_write_file_at_excl(int dirfd, const char *name, uid_t owner, const void *data, size_t len, mode_t mode)
{
	int fd, rc;

	if (strchr(name, '/') != NULL || name[0] == '\0' || name[0] == '.')
		return kms_fail(KMS_ERR_INVALID, "bad file name \"%.100s\"", name);
	fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return kms_fail(errno == EEXIST ? KMS_ERR_EXISTS : KMS_ERR_IO, "create %s: %s", name, strerror(errno));
	if (fchmod(fd, mode) != 0) {
		rc = kms_fail(KMS_ERR_IO, "chmod %s: %s", name, strerror(errno));
		goto fail;
	}
	/* Root writes it for the requester, who must be able to read it; others cannot chown. */
	if (geteuid() == 0 && owner != 0 && fchown(fd, owner, (gid_t)-1) != 0) {
		rc = kms_fail(KMS_ERR_IO, "chown %s: %s", name, strerror(errno));
		goto fail;
	}
	if ((rc = write_fd(fd, data, len, name)) != 0)
		goto fail;
	if (close(fd) != 0) {
		fd = -1;
		rc = kms_fail(KMS_ERR_IO, "close %s: %s", name, strerror(errno));
		goto fail;
	}
	fsync(dirfd);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlinkat(dirfd, name, 0);
	return rc;
}

void
kms_unlink_at(int dirfd, const char *name)
{
	if (dirfd >= 0 && name != NULL && strchr(name, '/') == NULL)
		unlinkat(dirfd, name, 0);
}

int
kms_read_secret_file_at(int dirfd, const char *name, uid_t owner, uid_t alt, char **out)
{
	struct stat sb;
	char buf[4097];
	size_t len = 0, n;
	int fd, rc;

	*out = NULL;
	if (strchr(name, '/') != NULL || name[0] == '\0')
		return kms_fail(KMS_ERR_INVALID, "bad file name \"%.100s\"", name);
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		return kms_fail(e == ENOENT ? KMS_ERR_NOTFOUND : e == ELOOP ? KMS_ERR_PERM : KMS_ERR_IO, "%s: %s", name,
		    e == ELOOP ? "a symbolic link (refused: name the real file)" : strerror(e));
	}
	/* A regular file of the requester's own, with no other name (no hard link to another's file). */
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		rc = kms_fail(KMS_ERR_PERM, "%s: not a regular file", name);
		goto out;
	}
	if (!owned_by(sb.st_uid, owner, alt)) {
		rc = kms_fail(KMS_ERR_PERM, "%s belongs to uid %u, not to the requester (uid %u)", name,
		    (unsigned)sb.st_uid, (unsigned)owner);
		goto out;
	}
	if (sb.st_nlink != 1) {
		rc = kms_fail(KMS_ERR_PERM, "%s has %lu names (hard links): refused", name, (unsigned long)sb.st_nlink);
		goto out;
	}
	if (sb.st_size > 4096) {
		rc = kms_fail(KMS_ERR_TOOBIG, "%s: larger than 4096 bytes", name);
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = kms_fail(KMS_ERR_IO, "read %s: %s", name, strerror(errno));
			goto out;
		}
		if (r == 0 || (len += (size_t)r) == sizeof(buf) - 1)
			break;
	}
	buf[len] = '\0';
	n = strcspn(buf, "\r\n");
	buf[n] = '\0';
	if (n == 0) {
		rc = kms_fail(KMS_ERR_INVALID, "%s: empty first line", name);
		goto out;
	}
	if ((*out = strdup(buf)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	rc = 0;
out:
	kms_wipe(buf, sizeof(buf));
	close(fd);
	return rc;
}

int
kms_check_private(const char *path, int is_dir)
{
	struct stat sb;
	mode_t bad = is_dir ? (S_IWGRP | S_IROTH | S_IWOTH) : (S_IRWXG | S_IRWXO);

	if (lstat(path, &sb) != 0)
		return errno == ENOENT ? KMS_ERR_NOTFOUND : kms_fail(KMS_ERR_IO, "%s: %s", path, strerror(errno));
	if (S_ISLNK(sb.st_mode))
		return kms_fail(KMS_ERR_PERM, "%s is a symbolic link: give the real path", path);
	if (sb.st_mode & bad)
		return kms_fail(KMS_ERR_PERM, "%s is open to other users (mode %04o): kmsd will not run on it; "
		    "fix it with: chmod %s %s", path, (unsigned)(sb.st_mode & 07777),
		    is_dir ? "g-w,o-rwx" : "600", path);
	return 0;
}
