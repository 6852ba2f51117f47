/*
 * testutil.h - fixtures shared by the Check suites: a private temp
 * directory per test, file helpers.
 */
#ifndef KMS_TESTUTIL_H
#define KMS_TESTUTIL_H

#include <stddef.h>

/* Make a fresh temp directory; returns its path (static per process slot). */
char *tu_tmpdir(void);
/* Remove a directory tree made by tu_tmpdir(). */
void tu_rmtree(const char *path);
/* Write text to dir/name; returns the malloc'd full path. */
char *tu_write(const char *dir, const char *name, const char *text);
/* Path of a file in tests/data (srcdir aware); malloc'd. */
char *tu_datafile(const char *name);

#endif
