/*
 * testutil.c - fixtures shared by the Check suites.
 */
#include "config.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/testutil.h"

char *
tu_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char *tmpl;

	if (base == NULL || *base == '\0')
		base = "/tmp";
	tmpl = malloc(strlen(base) + 32);
	if (tmpl == NULL)
		abort();
	snprintf(tmpl, strlen(base) + 32, "%s/kmstest.XXXXXX", base);
	if (mkdtemp(tmpl) == NULL)
		abort();
	return tmpl;
}

void
tu_rmtree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (d == NULL) {
		unlink(path);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		char *p;
		struct stat sb;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		p = malloc(strlen(path) + strlen(e->d_name) + 2);
		if (p == NULL)
			abort();
		snprintf(p, strlen(path) + strlen(e->d_name) + 2, "%s/%s", path, e->d_name);
		if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
			tu_rmtree(p);
		else
			unlink(p);
		free(p);
	}
	closedir(d);
	rmdir(path);
}

char *
tu_write(const char *dir, const char *name, const char *text)
{
	char *p = malloc(strlen(dir) + strlen(name) + 2);
	FILE *fp;

	if (p == NULL)
		abort();
	snprintf(p, strlen(dir) + strlen(name) + 2, "%s/%s", dir, name);
	fp = fopen(p, "w");
	if (fp == NULL)
		abort();
	fputs(text, fp);
	fclose(fp);
	return p;
}

char *
tu_datafile(const char *name)
{
	const char *srcdir = getenv("srcdir");
	char *p;

	if (srcdir == NULL)
		srcdir = ".";
	p = malloc(strlen(srcdir) + strlen(name) + 16);
	if (p == NULL)
		abort();
	snprintf(p, strlen(srcdir) + strlen(name) + 16, "%s/tests/data/%s", srcdir, name);
	return p;
}
