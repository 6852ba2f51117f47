/*
 * mime.c - raw MIME for the mail side: header blocks, multipart bodies and
 * transfer encodings, read from the bytes as they arrived.
 *
 * Entry points: mlt_hdr_begin/mlt_hdr_next (header fields with their exact
 * byte ranges), mlt_entity_read (the Content-* fields of one entity, parsed
 * with GMime), mlt_multipart_split (body parts between delimiter lines),
 * mlt_decode_cte, mlt_from_addresses, mlt_addr_list_parse,
 * mlt_from_display_check (display names that show another address),
 * mlt_canon_crlf.
 *
 * Nothing here allocates more than the input it is given (plus one small
 * array per multipart, bounded by the caller's part limit), and nothing
 * recurses: the walk over the entity tree, with its depth bound, is in
 * smime.c.
 */
#include "config.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "milter/mime.h"
#include "milter/milter.h"
#include "milter/smime_int.h"

/* Longest header value handed to GMime's parsers; longer ones are cut. */
#define MAX_PARSE_VALUE (16 * 1024)
/* Longest boundary we accept (RFC 2046 allows 70). */
#define MAX_BOUNDARY 256

/* Offset of the first byte after the line starting at pos (after its LF), or end. */
static size_t
line_next(const unsigned char *buf, size_t pos, size_t end)
{
	const unsigned char *nl = memchr(buf + pos, '\n', end - pos);

	return nl ? (size_t)(nl - buf) + 1 : end;
}

void
mlt_hdr_begin(struct mlt_hdr_iter *it, const unsigned char *buf, size_t start, size_t end)
{
	it->buf = buf;
	it->pos = start;
	it->end = end;
	it->done = start >= end;
}

static int
is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

int
mlt_hdr_next(struct mlt_hdr_iter *it, struct mlt_field *f, size_t *skipped)
{
	const unsigned char *b = it->buf;

	while (!it->done) {
		size_t p = it->pos, e, colon, n;

		if (p >= it->end) {
			it->done = 1;
			break;
		}
		/* The empty line ends the block. */
		if (b[p] == '\n' || (b[p] == '\r' && p + 1 < it->end && b[p + 1] == '\n')) {
			it->pos = line_next(b, p, it->end);
			it->done = 1;
			break;
		}
		/* A field: its first line, then every line starting with white space. */
		e = line_next(b, p, it->end);
		while (e < it->end && (b[e] == ' ' || b[e] == '\t'))
			e = line_next(b, e, it->end);
		it->pos = e;
		if (b[p] == ' ' || b[p] == '\t')
			goto skip;      /* continuation with no field: not a field */
		for (colon = p; colon < e && b[colon] != ':' && b[colon] != '\n'; colon++)
			;
		if (colon >= e || b[colon] != ':')
			goto skip;
		n = colon - p;
		while (n > 0 && (b[p + n - 1] == ' ' || b[p + n - 1] == '\t'))
			n--;
		if (n == 0)
			goto skip;
		for (size_t i = 0; i < n; i++)
			if (!is_ftext(b[p + i]))
				goto skip;
		f->start = p;
		f->end = e;
		f->name_len = n;
		f->value = colon + 1;
		f->vend = e;
		if (f->vend > f->value && b[f->vend - 1] == '\n')
			f->vend--;
		if (f->vend > f->value && b[f->vend - 1] == '\r')
			f->vend--;
		return 1;
	skip:
		if (skipped != NULL)
			(*skipped)++;
	}
	return 0;
}

int
mlt_field_is(const unsigned char *buf, const struct mlt_field *f, const char *name)
{
	size_t n = strlen(name);

	return f->name_len == n && strncasecmp((const char *)buf + f->start, name, n) == 0;
}

char *
mlt_field_value(const unsigned char *buf, const struct mlt_field *f, size_t max)
{
	size_t n = f->vend - f->value, o = 0;
	char *s;

	if (n > max)
		n = max;
	if ((s = malloc(n + 1)) == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = buf[f->value + i];

		if (c == '\r' || c == '\n')
			continue;
		if (c == '\0')
			c = ' ';
		s[o++] = (char)c;
	}
	while (o > 0 && (s[o - 1] == ' ' || s[o - 1] == '\t'))
		o--;
	s[o] = '\0';
	n = strspn(s, " \t");
	if (n > 0)
		memmove(s, s + n, o - n + 1);
	return s;
}

void
mlt_entity_clear(struct mlt_entity *e)
{
	if (e == NULL)
		return;
	if (e->ct != NULL)
		g_object_unref(e->ct);
	free(e->cte);
	free(e->filename);
	memset(e, 0, sizeof(*e));
}

static char *
dup_lower_token(const char *s)
{
	size_t n;
	char *t;

	s += strspn(s, " \t");
	n = strcspn(s, " \t;(");
	if ((t = malloc(n + 1)) == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		t[i] = (char)tolower((unsigned char)s[i]);
	t[n] = '\0';
	return t;
}

int
mlt_entity_read(const unsigned char *buf, size_t start, size_t end, long max_fields, struct mlt_entity *e)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	size_t skipped = 0;
	char *v = NULL, *disp_name = NULL;
	int rc = 0, have_ct = 0, have_cte = 0, have_cd = 0;

	memset(e, 0, sizeof(*e));
	e->start = start;
	e->end = end;
	mlt_hdr_begin(&it, buf, start, end);
	while (mlt_hdr_next(&it, &f, &skipped)) {
		if ((long)(++e->nfields + (long)skipped) > max_fields) {
			rc = kms_fail(KMS_ERR_TOOBIG, "more than %ld header fields in one header block", max_fields);
			goto out;
		}
		/* The first of each wins, as most mail clients do. */
		if (!have_ct && mlt_field_is(buf, &f, "Content-Type")) {
			have_ct = 1;
			if ((v = mlt_field_value(buf, &f, MAX_PARSE_VALUE)) == NULL)
				goto nomem;
			e->ct = g_mime_content_type_parse(NULL, v);
		} else if (!have_cte && mlt_field_is(buf, &f, "Content-Transfer-Encoding")) {
			have_cte = 1;
			if ((v = mlt_field_value(buf, &f, 256)) == NULL)
				goto nomem;
			if ((e->cte = dup_lower_token(v)) == NULL)
				goto nomem;
		} else if (!have_cd && mlt_field_is(buf, &f, "Content-Disposition")) {
			GMimeContentDisposition *cd;
			const char *fn;

			have_cd = 1;
			if ((v = mlt_field_value(buf, &f, MAX_PARSE_VALUE)) == NULL)
				goto nomem;
			if ((cd = g_mime_content_disposition_parse(NULL, v)) != NULL) {
				if ((fn = g_mime_content_disposition_get_parameter(cd, "filename")) != NULL &&
				    (disp_name = strdup(fn)) == NULL) {
					g_object_unref(cd);
					goto nomem;
				}
				g_object_unref(cd);
			}
		}
		free(v);
		v = NULL;
	}
	e->nfields += (long)skipped;
	if (e->nfields > max_fields) {
		rc = kms_fail(KMS_ERR_TOOBIG, "more than %ld header fields in one header block", max_fields);
		goto out;
	}
	e->body = it.pos;
	if (disp_name != NULL) {
		e->filename = disp_name;
		disp_name = NULL;
	} else if (e->ct != NULL && g_mime_content_type_get_parameter(e->ct, "name") != NULL) {
		if ((e->filename = strdup(g_mime_content_type_get_parameter(e->ct, "name"))) == NULL)
			goto nomem;
	}
	goto out;
nomem:
	rc = kms_fail(KMS_ERR_NOMEM, "out of memory reading a header block");
out:
	free(v);
	free(disp_name);
	if (rc != 0)
		mlt_entity_clear(e);
	return rc;
}

int
mlt_entity_is(const struct mlt_entity *e, const char *type, const char *subtype)
{
	const char *t = "text", *s = "plain";

	if (e->ct != NULL) {
		t = g_mime_content_type_get_media_type(e->ct);
		s = g_mime_content_type_get_media_subtype(e->ct);
		if (t == NULL || s == NULL)
			return 0;
	}
	if (strcasecmp(t, type) != 0)
		return 0;
	return strcmp(subtype, "*") == 0 || strcasecmp(s, subtype) == 0;
}

const char *
mlt_entity_param(const struct mlt_entity *e, const char *name)
{
	return e->ct != NULL ? g_mime_content_type_get_parameter(e->ct, name) : NULL;
}

/*
 * Is the line at p (bounded by end) a delimiter line of boundary b?
 * 0 no, 1 delimiter, 2 close delimiter; *next is the start of the next line.
 */
static int
delimiter_at(const unsigned char *buf, size_t p, size_t end, const char *b, size_t blen, size_t *next)
{
	size_t q = p + 2 + blen;
	int kind = 1;

	if (end - p < 2 + blen || buf[p] != '-' || buf[p + 1] != '-' || memcmp(buf + p + 2, b, blen) != 0)
		return 0;
	if (q + 1 < end && buf[q] == '-' && buf[q + 1] == '-') {
		kind = 2;
		q += 2;
	}
	while (q < end && (buf[q] == ' ' || buf[q] == '\t'))
		q++;
	if (q == end) {
		*next = end;
		return kind;
	}
	if (buf[q] == '\r' && q + 1 < end && buf[q + 1] == '\n') {
		*next = q + 2;
		return kind;
	}
	if (buf[q] == '\n') {
		*next = q + 1;
		return kind;
	}
	return 0;
}

int
mlt_multipart_split(const unsigned char *buf, size_t start, size_t end, const char *boundary,
    long max, struct mlt_span **parts, size_t *nparts, int *closed)
{
	struct mlt_span *v = NULL;
	size_t n = 0, cap = 0, blen, p = start, next, open_at = 0;
	unsigned char dash[MAX_BOUNDARY + 2];
	int in_part = 0, kind, rc = 0;

	*parts = NULL;
	*nparts = 0;
	*closed = 0;
	if (boundary == NULL || (blen = strlen(boundary)) == 0 || blen > MAX_BOUNDARY)
		return kms_fail(KMS_ERR_INVALID, "multipart without a usable boundary");
	dash[0] = dash[1] = '-';
	memcpy(dash + 2, boundary, blen);
	while (p < end) {
		/*
		 * The next line that starts with "--boundary": found with memmem
		 * rather than line by line, which for a large part was most of the
		 * split.  A hit counts only at the start of a line, as before.
		 */
		const unsigned char *hit = memmem(buf + p, end - p, dash, blen + 2);

		if (hit == NULL)
			break;
		if ((size_t)(hit - buf) != start && hit[-1] != '\n') {
			p = (size_t)(hit - buf) + 1;
			continue;
		}
		p = (size_t)(hit - buf);
		if ((kind = delimiter_at(buf, p, end, boundary, blen, &next)) == 0) {
			p = line_next(buf, p, end);
			continue;
		}
		if (in_part) {
			size_t pe = p;

			/* The line break before a delimiter belongs to the delimiter. */
			if (pe >= open_at + 2 && buf[pe - 2] == '\r' && buf[pe - 1] == '\n')
				pe -= 2;
			else if (pe >= open_at + 1 && buf[pe - 1] == '\n')
				pe -= 1;
			if ((rc = kms_array_reserve(&v, &cap, n + 1, sizeof(*v), SIZE_MAX)) != 0)
				goto out;
			v[n].start = open_at;
			v[n].end = pe;
			if ((long)++n > max) {
				rc = kms_fail(KMS_ERR_TOOBIG, "more than %ld MIME parts", max);
				goto out;
			}
		}
		if (kind == 2) {
			*closed = 1;
			in_part = 0;
			break;
		}
		in_part = 1;
		open_at = next;
		p = next;
	}
	if (in_part) {
		/* No close delimiter: the last part runs to the end (truncated message). */
		if ((rc = kms_array_reserve(&v, &cap, n + 1, sizeof(*v), SIZE_MAX)) != 0)
			goto out;
		v[n].start = open_at;
		v[n].end = end;
		if ((long)++n > max) {
			rc = kms_fail(KMS_ERR_TOOBIG, "more than %ld MIME parts", max);
			goto out;
		}
	}
	*parts = v;
	*nparts = n;
	v = NULL;
out:
	free(v);
	return rc;
}

int
mlt_decode_cte(const char *cte, const unsigned char *in, size_t n, unsigned char **out, size_t *outlen)
{
	GMimeContentEncoding enc = GMIME_CONTENT_ENCODING_DEFAULT;
	GMimeEncoding st;
	unsigned char *buf;
	size_t cap, m;

	*out = NULL;
	*outlen = 0;
	if (cte != NULL)
		enc = g_mime_content_encoding_from_string(cte);
	if (enc != GMIME_CONTENT_ENCODING_BASE64 && enc != GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE) {
		if ((buf = malloc(n ? n : 1)) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory decoding a part");
		if (n > 0)
			memcpy(buf, in, n);
		*out = buf;
		*outlen = n;
		return 0;
	}
	g_mime_encoding_init_decode(&st, enc);
	/* Decoding never grows the data; take GMime's own bound too, whichever is larger. */
	cap = g_mime_encoding_outlen(&st, n);
	if (cap < n)
		cap = n;
	cap += 8;
	if ((buf = malloc(cap)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory decoding a part");
	m = g_mime_encoding_flush(&st, (const char *)in, n, (char *)buf);
	*out = buf;
	*outlen = m;
	return 0;
}

/*
 * Append the mailbox addresses of one address-list value to *v (*n of
 * them, NULL-terminated, at most 64).  0 or KMS_ERR_NOMEM.
 */
static int
addr_list_add(const char *value, char ***v, size_t *n)
{
	InternetAddressList *list = internet_address_list_parse(NULL, value);
	GPtrArray *stack;
	int rc = 0;

	if (list == NULL)
		return 0;
	/* Flatten groups without recursion. */
	stack = g_ptr_array_new();
	g_ptr_array_add(stack, list);
	while (stack->len > 0 && rc == 0) {
		InternetAddressList *l = g_ptr_array_remove_index(stack, stack->len - 1);
		int cnt = internet_address_list_length(l);

		for (int i = 0; i < cnt && rc == 0; i++) {
			InternetAddress *a = internet_address_list_get_address(l, i);

			if (INTERNET_ADDRESS_IS_GROUP(a)) {
				InternetAddressList *m = internet_address_group_get_members((InternetAddressGroup *)a);

				if (m != NULL && stack->len < 64)
					g_ptr_array_add(stack, m);
			} else if (INTERNET_ADDRESS_IS_MAILBOX(a)) {
				const char *addr = internet_address_mailbox_get_addr((InternetAddressMailbox *)a);
				char **nv;

				if (addr == NULL || *addr == '\0' || *n >= 64)
					continue;
				if ((nv = realloc(*v, (*n + 2) * sizeof(**v))) == NULL) {
					rc = KMS_ERR_NOMEM;
					break;
				}
				*v = nv;
				if ((nv[*n] = strdup(addr)) == NULL) {
					rc = KMS_ERR_NOMEM;
					break;
				}
				nv[++*n] = NULL;
			}
		}
	}
	g_ptr_array_free(stack, TRUE);
	g_object_unref(list);
	return rc;
}

int
mlt_addr_list_parse(const char *value, char ***addrs)
{
	char **v = NULL;
	size_t n = 0;

	*addrs = NULL;
	if (addr_list_add(value, &v, &n) != 0 || (v == NULL && (v = calloc(1, sizeof(*v))) == NULL)) {
		kms_strv_free(v);
		return kms_fail(KMS_ERR_NOMEM, "out of memory reading an address list");
	}
	*addrs = v;
	return 0;
}

int
mlt_from_addresses(const unsigned char *buf, size_t len, long max_fields, char ***addrs, size_t *nfields)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	char **v = NULL, *s = NULL;
	size_t n = 0, nf = 0;
	long seen = 0;
	int rc = 0;

	*addrs = NULL;
	*nfields = 0;
	mlt_hdr_begin(&it, buf, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		if (++seen > max_fields)
			break;
		if (!mlt_field_is(buf, &f, "From"))
			continue;
		nf++;
		if ((s = mlt_field_value(buf, &f, MAX_PARSE_VALUE)) == NULL)
			goto nomem;
		rc = addr_list_add(s, &v, &n);
		free(s);
		s = NULL;
		if (rc != 0)
			goto nomem;
	}
	if (v == NULL && (v = calloc(1, sizeof(*v))) == NULL)
		goto nomem;
	*addrs = v;
	*nfields = nf;
	return 0;
nomem:
	rc = kms_fail(KMS_ERR_NOMEM, "out of memory reading From");
	free(s);
	kms_strv_free(v);
	return rc;
}

/* ------------------------------------------------ display-name spoofing */

static int
is_local_char(unsigned char c)
{
	return isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

static int
is_domain_char(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '.';
}

/*
 * Length of an "at" sign at p (bounded by end): '@', or in UTF-8 the
 * fullwidth U+FF20 and small U+FE6B forms a display name can show; 0 if none.
 */
static size_t
at_sign(const unsigned char *p, const unsigned char *end)
{
	if (*p == '@')
		return 1;
	if (end - p >= 3 && p[0] == 0xef && ((p[1] == 0xbc && p[2] == 0xa0) || (p[1] == 0xb9 && p[2] == 0xab)))
		return 3;
	return 0;
}

/*
 * The first thing in text (decoded From value) that reads as an address
 * and is none of addrs: malloc'd "local@domain", or NULL (none, or out of
 * memory: *nomem says which).
 */
static char *
foreign_address(const char *text, char *const *addrs, int *nomem)
{
	const unsigned char *t = (const unsigned char *)text, *end = t + strlen(text);

	*nomem = 0;
	for (const unsigned char *p = t; p < end; p++) {
		size_t at = at_sign(p, end);
		const unsigned char *l = p, *r = p + at;
		char *cand;
		size_t ll, rl, k;

		if (at == 0)
			continue;
		while (l > t && is_local_char(l[-1]))
			l--;
		while (r < end && is_domain_char(*r))
			r++;
		while (l < p && *l == '.')
			l++;
		while (r > p + at && r[-1] == '.')
			r--;
		ll = (size_t)(p - l);
		rl = (size_t)(r - (p + at));
		if (ll == 0 || rl == 0 || ll > 256 || rl > 256)
			continue;
		if ((cand = malloc(ll + rl + 2)) == NULL) {
			*nomem = 1;
			return NULL;
		}
		memcpy(cand, l, ll);
		cand[ll] = '@';
		memcpy(cand + ll + 1, p + at, rl);
		cand[ll + 1 + rl] = '\0';
		for (k = 0; addrs[k] != NULL; k++)
			if (strcasecmp(addrs[k], cand) == 0)
				break;
		if (addrs[k] == NULL)
			return cand;
		free(cand);
		p += at - 1;
	}
	return NULL;
}

int
mlt_from_display_check(const unsigned char *buf, size_t len, long max_fields, char *const *addrs, char **why)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	long seen = 0;
	int rc = 0;

	*why = NULL;
	if (addrs == NULL || addrs[0] == NULL)
		return 0;
	mlt_hdr_begin(&it, buf, 0, len);
	while (*why == NULL && rc == 0 && mlt_hdr_next(&it, &f, NULL)) {
		char *s, *dec, *other;
		int nomem;

		if (++seen > max_fields)
			break;
		if (!mlt_field_is(buf, &f, "From"))
			continue;
		if ((s = mlt_field_value(buf, &f, MAX_PARSE_VALUE)) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory reading From");
		/*
		 * Encoded words decoded wherever they stand (quoted strings and
		 * comments included), as mail clients show them; then every
		 * address-like text in names, comments and all is compared.
		 */
		dec = g_mime_utils_header_decode_text(NULL, s);
		other = foreign_address(dec ? dec : s, addrs, &nomem);
		if (other != NULL) {
			char *o = kms_sanitize_new(other, strlen(other), 80), *a = kms_sanitize_new(addrs[0], strlen(addrs[0]), 80);

			if (o == NULL || a == NULL ||
			    mlt_strcatf(why, "display name of From shows the address %s, not the From address %s", o, a) != 0) {
				free(*why);
				*why = NULL;
				rc = kms_fail(KMS_ERR_NOMEM, "out of memory reading From");
			}
			free(o);
			free(a);
		} else if (nomem) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory reading From");
		}
		free(other);
		g_free(dec);
		free(s);
	}
	return rc;
}

int
mlt_canon_crlf(const unsigned char *buf, size_t len, unsigned char **out, size_t *outlen)
{
	size_t extra = 0, o = 0;
	unsigned char *d;

	*out = NULL;
	*outlen = 0;
	for (size_t i = 0; i < len; i++)
		if (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r'))
			extra++;
	if (len + extra < len || (d = malloc(len + extra + 1)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < len; i++) {
		if (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r'))
			d[o++] = '\r';
		d[o++] = buf[i];
	}
	d[o] = '\0';
	*out = d;
	*outlen = o;
	return 0;
}
