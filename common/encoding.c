/*
 * encoding.c - hex, base64, time stamps, random passwords and digests.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/common.h"

char *
kms_hex(const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	char *s = malloc(2 * n + 1);

	if (s == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		s[2 * i] = digits[p[i] >> 4];
		s[2 * i + 1] = digits[p[i] & 15];
	}
	s[2 * n] = '\0';
	return s;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int
kms_unhex(const char *s, unsigned char **out, size_t *outlen)
{
	size_t n = strlen(s), o = 0;
	unsigned char *b;
	int hi = -1;

	*out = NULL;
	*outlen = 0;
	b = malloc(n / 2 + 1);
	if (b == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++) {
		int v;

		if (s[i] == ':' && hi < 0)
			continue;
		v = hexval((unsigned char)s[i]);
		if (v < 0) {
			free(b);
			return kms_fail(KMS_ERR_INVALID, "not a hex string");
		}
		if (hi < 0) {
			hi = v;
		} else {
			b[o++] = (unsigned char)(hi << 4 | v);
			hi = -1;
		}
	}
	if (hi >= 0 || o == 0) {
		free(b);
		return kms_fail(KMS_ERR_INVALID, "not a hex string");
	}
	*out = b;
	*outlen = o;
	return 0;
}

char *
kms_b64_encode(const unsigned char *p, size_t n)
{
	char *s;

	if (n > (size_t)1 << 30)
		return NULL;
	s = malloc(4 * ((n + 2) / 3) + 1);
	if (s == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)s, p, (int)n);
	return s;
}

int
kms_b64_decode(const char *s, size_t slen, unsigned char **out, size_t *outlen)
{
	char *clean;
	unsigned char *buf;
	size_t c = 0, pad = 0;
	int n;

	*out = NULL;
	*outlen = 0;
	if (slen > (size_t)1 << 30)
		return kms_fail(KMS_ERR_TOOBIG, "base64 input too large");
	clean = malloc(slen + 1);
	if (clean == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; i < slen; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (isspace(ch))
			continue;
		if (!(isalnum(ch) || ch == '+' || ch == '/' || ch == '=')) {
			free(clean);
			return kms_fail(KMS_ERR_INVALID, "bad base64");
		}
		clean[c++] = (char)ch;
	}
	if (c % 4 != 0) {
		free(clean);
		return kms_fail(KMS_ERR_INVALID, "bad base64 length");
	}
	if (c >= 1 && clean[c - 1] == '=')
		pad++;
	if (c >= 2 && clean[c - 2] == '=')
		pad++;
	buf = malloc(c / 4 * 3 + 1);
	if (buf == NULL) {
		free(clean);
		return KMS_ERR_NOMEM;
	}
	n = c ? EVP_DecodeBlock(buf, (unsigned char *)clean, (int)c) : 0;
	kms_wipe(clean, c);
	free(clean);
	if (n < 0 || (size_t)n < pad) {
		free(buf);
		return kms_fail(KMS_ERR_INVALID, "bad base64");
	}
	*out = buf;
	*outlen = (size_t)n - pad;
	return 0;
}

char *
kms_time_format(time_t t, char *buf, size_t buflen)
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, buflen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, buflen, "@%lld", (long long)t);
	return buf;
}

int
kms_time_parse(const char *s, time_t *out)
{
	struct tm tm;
	const char *end;
	char *e;

	if (strcmp(s, "now") == 0) {
		*out = time(NULL);
		return 0;
	}
	if (s[0] == '@') {
		long long v;

		errno = 0;
		v = strtoll(s + 1, &e, 10);
		if (errno || e == s + 1 || *e != '\0' || v < 0)
			return kms_fail(KMS_ERR_INVALID, "bad time \"%.40s\"", s);
		*out = (time_t)v;
		return 0;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%d", &tm);
	if (end == NULL)
		return kms_fail(KMS_ERR_INVALID, "bad time \"%.40s\": use YYYY-MM-DD[THH:MM[:SS]][Z]", s);
	if (*end == 'T' || *end == ' ') {
		const char *e2 = strptime(end + 1, "%H:%M:%S", &tm);

		if (e2 == NULL)
			e2 = strptime(end + 1, "%H:%M", &tm);
		if (e2 == NULL)
			return kms_fail(KMS_ERR_INVALID, "bad time \"%.40s\"", s);
		end = e2;
	}
	if (*end == 'Z')
		end++;
	if (*end != '\0')
		return kms_fail(KMS_ERR_INVALID, "bad time \"%.40s\": times are UTC (YYYY-MM-DDTHH:MM:SSZ)", s);
	*out = timegm(&tm);
	return 0;
}

int
kms_random_password(char *out, size_t len)
{
	/* 56 symbols without look-alikes (0/O, 1/l/I): 5.8 bits each. */
	static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
	const size_t na = sizeof(alphabet) - 1;
	size_t i = 0;

	if (len < 23)
		return kms_fail(KMS_ERR_INVALID, "password buffer too short");
	while (i < len - 1) {
		unsigned char r[32];

		if (RAND_priv_bytes(r, sizeof(r)) != 1)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "random");
		for (size_t j = 0; j < sizeof(r) && i < len - 1; j++)
			if (r[j] < 256 - 256 % na)      /* no modulo bias */
				out[i++] = alphabet[r[j] % na];
		kms_wipe(r, sizeof(r));
	}
	out[len - 1] = '\0';
	return 0;
}

char *
kms_sha256_hex(const unsigned char *p, size_t n)
{
	unsigned char h[32];
	unsigned int hl = 0;

	if (!EVP_Digest(p, n, h, &hl, EVP_sha256(), NULL))
		return NULL;
	return kms_hex(h, hl);
}
