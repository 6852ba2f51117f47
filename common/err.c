/*
 * err.c - error codes, their text and wire names, and the per-thread detail
 * message that gives a caller (and the control client) a clear reason.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "common/common.h"

static _Thread_local char last_error[1024];

static const struct {
	int code;
	const char *name;
	const char *text;
} errors[] = {
	{ KMS_OK, "ok", "success" },
	{ KMS_ERR_NOMEM, "internal", "out of memory" },
	{ KMS_ERR_IO, "io", "input/output error" },
	{ KMS_ERR_INVALID, "bad_args", "invalid argument" },
	{ KMS_ERR_CRYPTO, "crypto", "cryptographic operation failed" },
	{ KMS_ERR_DB, "store", "store error" },
	{ KMS_ERR_NOTFOUND, "not_found", "not found" },
	{ KMS_ERR_EXISTS, "exists", "already exists" },
	{ KMS_ERR_TOOBIG, "too_large", "input too large" },
	{ KMS_ERR_CORRUPT, "corrupt", "data failed integrity checks" },
	{ KMS_ERR_PERM, "forbidden", "not permitted" },
	{ KMS_ERR_STATE, "bad_state", "not possible in the current state" },
	{ KMS_ERR_CONFIG, "config", "configuration error" },
	{ KMS_ERR_TIMEOUT, "timeout", "timed out" },
	{ KMS_ERR_PROTO, "protocol", "protocol error" },
	{ KMS_ERR_EXPIRED, "expired", "expired" },
};

const char *
kms_strerror(int err)
{
	for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
		if (errors[i].code == err)
			return errors[i].text;
	return "unknown error";
}

const char *
kms_err_code_name(int err)
{
	for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
		if (errors[i].code == err)
			return errors[i].name;
	return "internal";
}

int
kms_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err;
}

int
kms_fail_openssl(int err, const char *fmt, ...)
{
	va_list ap;
	size_t len;
	unsigned long e;
	int first = 1;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	len = strlen(last_error);
	while ((e = ERR_get_error()) != 0) {
		char buf[256];

		ERR_error_string_n(e, buf, sizeof(buf));
		if (len + 4 < sizeof(last_error)) {
			snprintf(last_error + len, sizeof(last_error) - len, "%s%s",
			    first ? ": " : "; ", ERR_reason_error_string(e) ?
			    ERR_reason_error_string(e) : buf);
			len = strlen(last_error);
		}
		first = 0;
	}
	return err;
}

const char *
kms_last_error(void)
{
	return last_error;
}

void
kms_clear_error(void)
{
	last_error[0] = '\0';
}
