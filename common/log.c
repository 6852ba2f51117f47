/*
 * log.c - one line per event to syslog, and to stderr when kmsd runs in the
 * foreground.  Untrusted text goes through kms_sanitize() before it gets here.
 */
#include "config.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include <openssl/err.h>

#include "common/common.h"

static int log_stderr = 1;
static int log_syslog = 0;
static int log_level = KMS_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void
kms_log_open(const char *ident, int facility, int to_stderr, int level)
{
	openlog(ident, LOG_PID | LOG_NDELAY, facility);
	log_syslog = 1;
	log_stderr = to_stderr;
	log_level = level;
}

void
kms_log_set_level(int level)
{
	log_level = level;
}

int
kms_log_get_level(void)
{
	return log_level;
}

static const char *
level_name(int level)
{
	switch (level) {
	case KMS_LOG_ERR: return "error";
	case KMS_LOG_WARNING: return "warning";
	case KMS_LOG_NOTICE: return "notice";
	case KMS_LOG_INFO: return "info";
	default: return "debug";
	}
}

void
kms_vlog(int level, const char *fmt, va_list ap)
{
	char line[2048];

	if (level > log_level)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	if (log_syslog)
		syslog(level, "%s", line);
	if (log_stderr) {
		char ts[32];

		kms_time_format(time(NULL), ts, sizeof(ts));
		pthread_mutex_lock(&log_lock);
		fprintf(stderr, "%s kmsd[%s]: %s\n", ts, level_name(level), line);
		fflush(stderr);
		pthread_mutex_unlock(&log_lock);
	}
}

void
kms_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	kms_vlog(level, fmt, ap);
	va_end(ap);
}

void
kms_log_openssl(int level, const char *what)
{
	unsigned long e;
	const char *file, *data;
	int line, flags;

	kms_log(level, "%s", what);
	while ((e = ERR_get_error_all(&file, &line, NULL, &data, &flags)) != 0) {
		char buf[256];

		ERR_error_string_n(e, buf, sizeof(buf));
		kms_log(level, "  openssl: %s%s%s", buf,
		    (flags & ERR_TXT_STRING) && data && *data ? ": " : "",
		    (flags & ERR_TXT_STRING) && data ? data : "");
	}
}
