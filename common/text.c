/*
 * text.c - the rules for untrusted text, each written once:
 *
 *   kms_sanitize(), kms_sanitize_new()   text fit for a log line or a header
 *   kms_addr_valid()                     a mailbox address we accept anywhere
 *
 * The control commands, the CA and the milter all call these, so kmsd never
 * accepts an address the CA then refuses, and no module lets through a byte
 * another one would have cleaned.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

/* Printable ASCII only: controls, DEL and every byte >= 0x80 become '?'. */
static char
clean_char(unsigned char c)
{
	return (c >= 0x20 && c < 0x7f) ? (char)c : '?';
}

/*
 * The sanitizer: n bytes of in cleaned into out (room for outlen bytes with
 * the NUL), cut with "..." when they do not fit.  Returns the length written.
 */
static size_t
clean_into(const char *in, size_t n, char *out, size_t outlen)
{
	size_t o = 0;
	int cut = n > outlen - 1;

	if (cut)
		n = outlen > 4 ? outlen - 4 : outlen - 1;
	for (size_t i = 0; i < n; i++)
		out[o++] = clean_char((unsigned char)in[i]);
	if (cut && outlen > 4) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return o;
}

char *
kms_sanitize(const char *in, size_t inlen, char *out, size_t outlen)
{
	if (outlen == 0)
		return out;
	if (in == NULL) {
		snprintf(out, outlen, "(null)");
		return out;
	}
	clean_into(in, strnlen(in, inlen), out, outlen);
	return out;
}

char *
kms_sanitize_new(const char *in, size_t n, size_t max)
{
	size_t outlen;
	char *out;

	if (in == NULL)
		in = "", n = 0;
	outlen = (n > max ? max : n) + 1;
	if ((out = malloc(outlen)) == NULL)
		return NULL;
	clean_into(in, n, out, outlen);
	return out;
}

/* RFC 5322 atext, the characters of a dot-atom besides the dots. */
static int
is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    (c != '\0' && strchr("!#$%&'*+/=?^_`{|}~-", c) != NULL);
}

static int
is_ldh(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

/* A dot-atom: atext runs separated by single dots, no dot at either end. */
static int
local_valid(const char *s, size_t n)
{
	if (n == 0 || n > KMS_ADDR_LOCAL_MAX || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.' ? s[i + 1] == '.' : !is_atext(c))
			return 0;
	}
	return 1;
}

/* A host name: at least two labels of letters, digits and inner hyphens. */
static int
domain_valid(const char *s)
{
	size_t label = 0, labels = 0;

	for (const char *p = s;; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > KMS_ADDR_LABEL_MAX || p[-1] == '-' || p[-(long)label] == '-')
				return 0;
			labels++;
			label = 0;
			if (*p == '\0')
				break;
			continue;
		}
		if (!is_ldh((unsigned char)*p))
			return 0;
		label++;
	}
	return labels >= 2;
}

int
kms_addr_valid(const char *s)
{
	const char *at;
	size_t n;

	if (s == NULL || (n = strnlen(s, KMS_ADDR_MAX + 1)) > KMS_ADDR_MAX || n < 3)
		return 0;
	if ((at = strchr(s, '@')) == NULL || strchr(at + 1, '@') != NULL)
		return 0;
	return local_valid(s, (size_t)(at - s)) && domain_valid(at + 1);
}
