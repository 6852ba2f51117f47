/*
 * rewrite.c - what the recipient sees: the header edits, the new body and
 * the SMTP reply for a checked message (DESIGN section 10).
 *
 * Entry points: mlt_rewrite_plan (decide, with pol_decide, and describe
 * the edits the way libmilter applies them), mlt_rewrite_apply (apply a
 * plan to the raw message, for kmsd -t and the tests), mlt_rewrite_free,
 * mlt_ar_is_ours (the forged-header test), mlt_notice_expand.
 *
 * For every verdict: Authentication-Results fields that carry our
 * authserv-id and X-KMS-Warning fields came from outside and are removed.
 * Every verdict but none adds our Authentication-Results, at the top of the
 * header (smfi_insheader at index 0) next to the MTA's trace fields, where
 * readers and the other authentication milters expect it (RFC 8601
 * section 5).  WARN adds the subject tag (to every Subject field not
 * already starting with it; not for partial, which is no revoked sender)
 * and X-KMS-Warning; on a revoked signer it also wraps
 * the message: the top-level Content-* fields and the body, byte for byte,
 * become the second part of a multipart/mixed whose first part is the
 * notice, so that the original signature still verifies.
 *
 * Unsigned mail (verdict none) gets no new header at all: the issue asks
 * for it to pass untouched, and an "smime=none" on most mail says nothing.
 * Forged fields are still removed, because a downstream filter that trusts
 * our authserv-id would otherwise believe them (RFC 8601 section 5).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include "milter/mime.h"
#include "milter/milter.h"
#include "milter/smime_int.h"

/* Header fields looked at (and edits made) at most, whatever max_headers says. */
#define MAX_SCAN_FIELDS 100000
/* Nested comments followed at most in an Authentication-Results value. */
#define MAX_COMMENT_DEPTH 64

void
mlt_rewrite_free(struct mlt_rewrite *rw)
{
	if (rw == NULL)
		return;
	for (size_t i = 0; i < rw->nedits; i++) {
		free(rw->edits[i].name);
		free(rw->edits[i].value);
	}
	free(rw->edits);
	free(rw->body);
	free(rw->reply);
	free(rw->quarantine_reason);
	free(rw);
}

/* ------------------------------------------------------------ small parts */

/*
 * Skip white space, folds and (nested) comments from p; returns the new
 * position, or SIZE_MAX when comments nest deeper than MAX_COMMENT_DEPTH.
 */
static size_t
skip_cfws(const char *v, size_t n, size_t p)
{
	int depth = 0;

	while (p < n) {
		char c = v[p];

		if (depth > 0) {
			if (c == '\\' && p + 1 < n)
				p++;
			else if (c == '(' && ++depth > MAX_COMMENT_DEPTH)
				return SIZE_MAX;
			else if (c == ')')
				depth--;
			p++;
		} else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			p++;
		} else if (c == '(') {
			depth = 1;
			p++;
		} else {
			break;
		}
	}
	return p;
}

int
mlt_ar_is_ours(const char *v, size_t n, const char *authserv_id)
{
	size_t p = skip_cfws(v, n, 0), idlen = strlen(authserv_id), o = 0;
	char tok[512];

	if (idlen == 0)
		return 0;
	/*
	 * Comments nested deeper than any real header hide the authserv-id
	 * from us but maybe not from a later reader: such a field is treated
	 * as ours, so that it is removed.
	 */
	if (p == SIZE_MAX)
		return 1;
	if (p >= n)
		return 0;
	if (v[p] == '"') {
		for (p++; p < n && v[p] != '"'; p++) {
			if (v[p] == '\\' && p + 1 < n)
				p++;
			if (v[p] == '\r' || v[p] == '\n')
				continue;
			if (o + 1 >= sizeof(tok))
				return 0;
			tok[o++] = v[p];
		}
	} else {
		for (; p < n && strchr(" \t\r\n;(", v[p]) == NULL; p++) {
			if (o + 1 >= sizeof(tok))
				return 0;
			tok[o++] = v[p];
		}
	}
	tok[o] = '\0';
	return o == idlen && strncasecmp(tok, authserv_id, idlen) == 0;
}

static const char *
claim_text(const struct mlt_sig *sig, char *buf, size_t len)
{
	char t[32];

	if (sig->signing_time == 0) {
		snprintf(buf, len, "does not say when it was signed");
	} else {
		snprintf(buf, len, "claims to have been signed on %s, %s the certificate was revoked",
		    kms_time_format(sig->signing_time, t, sizeof(t)),
		    mlt_claim_word(sig, 1));
	}
	return buf;
}

int
mlt_notice_expand(const char *tmpl, const struct mlt_sig *sig, char **out)
{
	static const char *const names[] = { "signer", "serial", "revoked_at", "reason", "signed_claim" };
	char *s = NULL, t[32], claim[128];
	const char *p = tmpl ? tmpl : "";
	int rc = 0;

	*out = NULL;
	while (*p && rc == 0) {
		const char *val = NULL;
		size_t k, nl = 0;

		if (p[0] == '%' && p[1] == '{') {
			for (k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
				nl = strlen(names[k]);
				if (strncmp(p + 2, names[k], nl) == 0 && p[2 + nl] == '}')
					break;
			}
			switch (k) {
			case 0: val = sig && sig->signer ? sig->signer : "(unknown)"; break;
			case 1: val = sig && sig->serial ? sig->serial : "(unknown)"; break;
			case 2: val = sig && sig->revoked ? kms_time_format(sig->rev.revoked_at, t, sizeof(t)) : "(unknown)"; break;
			case 3: val = sig && sig->revoked ? ca_reason_name(sig->rev.reason) : "(unknown)"; break;
			case 4: val = sig ? claim_text(sig, claim, sizeof(claim)) : "does not say when it was signed"; break;
			default: break;
			}
		}
		if (val != NULL) {
			/* Values come from certificates: printable ASCII only, bounded. */
			char *c = kms_sanitize_new(val, strlen(val), MLT_MAX_TEXT);

			rc = c ? mlt_strcatf(&s, "%s", c) : kms_fail(KMS_ERR_NOMEM, "out of memory");
			free(c);
			p += 3 + nl;
		} else {
			size_t run = 1 + strcspn(p + 1, "%");

			rc = mlt_strcatf(&s, "%.*s", (int)run, p);
			p += run;
		}
	}
	if (rc == 0 && s == NULL)
		rc = mlt_strcatf(&s, "%s", "");
	if (rc != 0) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

static int
add_edit(struct mlt_rewrite *rw, enum mlt_hdr_op op, const char *name, int index, const char *value)
{
	struct mlt_hdr_edit *nv, *e;

	if ((nv = realloc(rw->edits, (rw->nedits + 1) * sizeof(*nv))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	rw->edits = nv;
	e = &nv[rw->nedits];
	memset(e, 0, sizeof(*e));
	e->op = op;
	e->index = index;
	if ((e->name = strdup(name)) == NULL || (value != NULL && (e->value = strdup(value)) == NULL)) {
		free(e->name);
		free(e->value);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	rw->nedits++;
	return 0;
}

/* A header field name as written, into a new string. */
static char *
field_name(const unsigned char *buf, const struct mlt_field *f)
{
	char *s = malloc(f->name_len + 1);

	if (s != NULL) {
		memcpy(s, buf + f->start, f->name_len);
		s[f->name_len] = '\0';
	}
	return s;
}

/* Printable-ASCII text without '%', CR or LF, for SMTP replies and header values. */
static char *
reply_text(const char *s, size_t max)
{
	char *t = kms_sanitize_new(s, strlen(s), max);

	for (char *p = t; p && *p; p++)
		if (*p == '%')
			*p = '?';
	return t;
}

/* --------------------------------------------------------------- the scan */

struct top_field {
	struct mlt_field f;
	int index;              /* among fields of the same name, 1-based */
};

struct top {
	struct top_field *v;
	size_t n;
	size_t body;            /* start of the body */
};

/* A header field name in lowercase, as a key. */
static char *
name_key(const unsigned char *msg, const struct mlt_field *f)
{
	char *k = malloc(f->name_len + 1);

	if (k == NULL)
		return NULL;
	for (size_t i = 0; i < f->name_len; i++) {
		unsigned char c = msg[f->start + i];

		k[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
	}
	k[f->name_len] = '\0';
	return k;
}

/*
 * The fields of the top-level header block (at most max) with their
 * per-name index, and where the body starts.
 */
static int
scan_top(const unsigned char *msg, size_t len, size_t max, struct top *t)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	GHashTable *counts;
	size_t cap = 0;
	int rc = 0;

	memset(t, 0, sizeof(t[0]));
	if ((counts = g_hash_table_new_full(g_str_hash, g_str_equal, free, NULL)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	mlt_hdr_begin(&it, msg, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		char *key;
		int idx;

		if (rc != 0 || t->n >= max)
			continue;       /* still read to the body */
		if ((rc = kms_array_reserve(&t->v, &cap, t->n + 1, sizeof(*t->v), SIZE_MAX)) != 0)
			continue;
		if ((key = name_key(msg, &f)) == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			continue;
		}
		idx = GPOINTER_TO_INT(g_hash_table_lookup(counts, key)) + 1;
		g_hash_table_replace(counts, key, GINT_TO_POINTER(idx));
		t->v[t->n].f = f;
		t->v[t->n].index = idx;
		t->n++;
	}
	g_hash_table_destroy(counts);
	t->body = it.pos;
	if (rc != 0) {
		free(t->v);
		t->v = NULL;
		t->n = 0;
	}
	return rc;
}

/* Delete every field called name whose value passes keep() == 0, highest index first. */
static int
delete_fields(struct mlt_rewrite *rw, const unsigned char *msg, const struct top *t, const char *name,
    const char *authserv_id)
{
	for (size_t i = t->n; i-- > 0;) {
		const struct mlt_field *f = &t->v[i].f;

		if (!mlt_field_is(msg, f, name))
			continue;
		if (authserv_id != NULL &&
		    !mlt_ar_is_ours((const char *)msg + f->value, f->vend - f->value, authserv_id))
			continue;
		if (add_edit(rw, MLT_HDR_DELETE, name, t->v[i].index, NULL) != 0)
			return KMS_ERR_NOMEM;
	}
	return 0;
}

static const struct top_field *
find_field(const unsigned char *msg, const struct top *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (mlt_field_is(msg, &t->v[i].f, name))
			return &t->v[i];
	return NULL;
}

/* ------------------------------------------------------------ subject tag */

static int
is_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80 || (unsigned char)*s < 0x20)
			return 0;
	return 1;
}

/* Does the field's value, as written, start with tag (exactly)? */
static int
starts_with_tag(const unsigned char *msg, const struct mlt_field *f, const char *tag)
{
	size_t p = f->value, e = f->vend, n = strlen(tag);

	while (p < e && (msg[p] == ' ' || msg[p] == '\t'))
		p++;
	return e - p >= n && memcmp(msg + p, tag, n) == 0;
}

/*
 * Prefix every Subject field with the tag: clients differ in which of two
 * Subject fields they show, so each gets it.  A field that already starts
 * with our exact tag keeps its one; a tag elsewhere in the value (or in
 * another case) is the sender's text and proves nothing.
 */
static int
tag_subject(struct mlt_rewrite *rw, const struct kms_config *cfg, const unsigned char *msg, const struct top *t)
{
	const char *tag = cfg->policy.subject_tag;
	char *etag = NULL, *nv = NULL;
	int rc = 0, found = 0;

	if (tag == NULL || *tag == '\0')
		return 0;
	if (is_ascii(tag)) {
		etag = strdup(tag);
	} else {
		/* RFC 2047 encoded word for a tag outside ASCII. */
		char *b64 = kms_b64_encode((const unsigned char *)tag, strlen(tag));

		if (b64 != NULL)
			mlt_strcatf(&etag, "=?UTF-8?B?%s?=", b64);
		free(b64);
	}
	if (etag == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	for (size_t k = 0; k < t->n && rc == 0; k++) {
		const struct top_field *sf = &t->v[k];
		size_t p, e;

		if (!mlt_field_is(msg, &sf->f, "Subject"))
			continue;
		found = 1;
		if (starts_with_tag(msg, &sf->f, etag))
			continue;
		/* Keep the value as written (folds included), minus leading white space. */
		p = sf->f.value;
		e = sf->f.vend;
		while (p < e && (msg[p] == ' ' || msg[p] == '\t'))
			p++;
		rc = mlt_strcatf(&nv, "%s ", etag);
		for (size_t i = p; rc == 0 && i < e; i++) {
			if (msg[i] == '\r')
				continue;
			rc = mlt_strcatf(&nv, "%c", msg[i] ? msg[i] : ' ');
		}
		if (rc == 0)
			rc = add_edit(rw, MLT_HDR_CHANGE, "Subject", sf->index, nv);
		free(nv);
		nv = NULL;
	}
	if (rc == 0 && !found)
		rc = add_edit(rw, MLT_HDR_ADD, "Subject", 0, etag);
	free(etag);
	return rc;
}

/* ---------------------------------------------------------------- wrapper */

/* Quoted-printable for a notice that is not ASCII (or has lines over 998 bytes). */
static int
qp_encode(const char *s, char **out)
{
	char *o = NULL;
	int col = 0, rc = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p && rc == 0; p++) {
		char enc[4];
		int w;

		if (*p == '\r')
			continue;
		if (*p == '\n') {
			rc = mlt_strcatf(&o, "\r\n");
			col = 0;
			continue;
		}
		if ((*p >= 33 && *p <= 126 && *p != '=') ||
		    ((*p == ' ' || *p == '\t') && p[1] != '\n' && p[1] != '\r' && p[1] != '\0')) {
			enc[0] = (char)*p;
			enc[1] = '\0';
			w = 1;
		} else {
			snprintf(enc, sizeof(enc), "=%02X", *p);
			w = 3;
		}
		if (col + w > 75) {
			rc = mlt_strcatf(&o, "=\r\n");
			col = 0;
		}
		if (rc == 0)
			rc = mlt_strcatf(&o, "%s", enc);
		col += w;
	}
	if (rc == 0 && o == NULL)
		rc = mlt_strcatf(&o, "%s", "");
	if (rc != 0) {
		free(o);
		return rc;
	}
	*out = o;
	return 0;
}

/* The notice as a body part: *text (CRLF) and its transfer encoding. */
static int
notice_part(const struct kms_config *cfg, const struct mlt_sig *sig, char **text, const char **cte)
{
	char *raw = NULL, *o = NULL;
	int plain = 1, rc;
	size_t col = 0;

	*text = NULL;
	if ((rc = mlt_notice_expand(cfg->policy.notice, sig, &raw)) != 0)
		return rc;
	for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
		if (*p == '\n') {
			col = 0;
			continue;
		}
		if (*p >= 0x80 || (*p < 0x20 && *p != '\t' && *p != '\r') || ++col > 998)
			plain = 0;
	}
	if (plain) {
		*cte = "7bit";
		for (const char *p = raw; *p && rc == 0; p++) {
			if (*p == '\r')
				continue;
			rc = *p == '\n' ? mlt_strcatf(&o, "\r\n") : mlt_strcatf(&o, "%c", *p);
		}
		if (rc == 0 && o == NULL)
			rc = mlt_strcatf(&o, "%s", "");
	} else {
		*cte = "quoted-printable";
		rc = qp_encode(raw, &o);
	}
	free(raw);
	if (rc != 0) {
		free(o);
		return rc;
	}
	*text = o;
	return 0;
}

static int
buf_add(unsigned char **b, size_t *n, size_t *cap, const void *p, size_t len)
{
	int rc;

	if (len > SIZE_MAX - *n - 1)
		return kms_fail(KMS_ERR_TOOBIG, "message too large");
	if ((rc = kms_array_reserve(b, cap, *n + len + 1, 1, SIZE_MAX)) != 0)
		return rc;
	if (len > 0)
		memcpy(*b + *n, p, len);
	*n += len;
	return 0;
}

static int
has_bytes(const unsigned char *hay, size_t n, const char *needle)
{
	return memmem(hay, n, needle, strlen(needle)) != NULL;
}

/*
 * A boundary found in neither the message nor the notice, derived from the
 * body so that the same message always gives the same output.
 */
static int
wrap_boundary(const unsigned char *msg, size_t len, const struct top *t, const char *notice, char *boundary,
    size_t size)
{
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256(msg + t->body, len - t->body, md);
	for (int tries = 0;; tries++) {
		char *hex = kms_hex(md, 16);

		if (hex == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		snprintf(boundary, size, "=_kms_%s", hex);
		free(hex);
		if (tries > 8 || (!has_bytes(msg, len, boundary) && strstr(notice, boundary) == NULL))
			return 0;
		SHA256(md, sizeof(md), md);
	}
}

/* The outer transfer encoding must cover the inner one (RFC 2045 6.4): "8bit", "binary" or NULL. */
static int
wrap_outer_cte(const unsigned char *msg, const struct top *t, const char **outer)
{
	const struct top_field *cte = find_field(msg, t, "Content-Transfer-Encoding");
	char *v;

	*outer = NULL;
	if (cte == NULL)
		return 0;
	if ((v = mlt_field_value(msg, &cte->f, 256)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	if (strncasecmp(v, "8bit", 4) == 0)
		*outer = "8bit";
	else if (strncasecmp(v, "binary", 6) == 0)
		*outer = "binary";
	free(v);
	return 0;
}

/* The new body: the notice first, then the original entity, its Content-* fields as written and its body. */
static int
wrap_body(struct kms_buf *b, const unsigned char *msg, size_t len, const struct top *t, const char *boundary,
    const char *notice, const char *ncte)
{
	int rc = kms_buf_appendf(b, "This is a multi-part message in MIME format.\r\n\r\n--%s\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: %s\r\n"
	    "Content-Disposition: inline\r\n\r\n", boundary, ncte);

	if (rc == 0)
		rc = kms_buf_append_str(b, notice);
	if (rc == 0)
		rc = kms_buf_appendf(b, "\r\n--%s\r\n", boundary);
	for (size_t i = 0; rc == 0 && i < t->n; i++) {
		const struct mlt_field *f = &t->v[i].f;

		if (f->name_len > 8 && strncasecmp((const char *)msg + f->start, "Content-", 8) == 0)
			rc = kms_buf_append(b, msg + f->start, f->end - f->start);
	}
	if (rc == 0)
		rc = kms_buf_append(b, "\r\n", 2);
	if (rc == 0)
		rc = kms_buf_append(b, msg + t->body, len - t->body);
	if (rc == 0)
		rc = kms_buf_appendf(b, "\r\n--%s--\r\n", boundary);
	return rc;
}

/* Top level: Content-Type changed in place, every other Content-* field gone. */
static int
wrap_edits(struct mlt_rewrite *rw, const unsigned char *msg, const struct top *t, const char *boundary,
    const char *outer_cte)
{
	char *ct = NULL;
	int rc, have_ct = 0;

	if ((rc = mlt_strcatf(&ct, "multipart/mixed; boundary=\"%s\"", boundary)) != 0)
		return rc;
	for (size_t i = t->n; rc == 0 && i-- > 0;) {
		const struct mlt_field *f = &t->v[i].f;
		char *name;

		if (f->name_len <= 8 || strncasecmp((const char *)msg + f->start, "Content-", 8) != 0)
			continue;
		if ((name = field_name(msg, f)) == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			break;
		}
		if (t->v[i].index == 1 && strcasecmp(name, "Content-Type") == 0) {
			rc = add_edit(rw, MLT_HDR_CHANGE, "Content-Type", 1, ct);
			have_ct = 1;
		} else if (t->v[i].index == 1 && outer_cte != NULL && strcasecmp(name, "Content-Transfer-Encoding") == 0) {
			rc = add_edit(rw, MLT_HDR_CHANGE, "Content-Transfer-Encoding", 1, outer_cte);
		} else {
			rc = add_edit(rw, MLT_HDR_DELETE, name, t->v[i].index, NULL);
		}
		free(name);
	}
	if (rc == 0 && !have_ct)
		rc = add_edit(rw, MLT_HDR_ADD, "Content-Type", 0, ct);
	if (rc == 0 && find_field(msg, t, "MIME-Version") == NULL)
		rc = add_edit(rw, MLT_HDR_ADD, "MIME-Version", 0, "1.0");
	free(ct);
	return rc;
}

/* Wrap the message: the new body, and the edits that make the top level a multipart/mixed. */
static int
wrap(struct mlt_rewrite *rw, const struct kms_config *cfg, const struct mlt_sig *sig,
    const unsigned char *msg, size_t len, const struct top *t)
{
	char boundary[80], *notice = NULL;
	const char *ncte, *outer_cte = NULL;
	struct kms_buf b;
	int rc;

	kms_buf_init(&b, SIZE_MAX - 1);
	if ((rc = notice_part(cfg, sig, &notice, &ncte)) != 0)
		return rc;
	if ((rc = wrap_boundary(msg, len, t, notice, boundary, sizeof(boundary))) == 0 &&
	    (rc = wrap_outer_cte(msg, t, &outer_cte)) == 0 &&
	    (rc = wrap_body(&b, msg, len, t, boundary, notice, ncte)) == 0 &&
	    (rc = wrap_edits(rw, msg, t, boundary, outer_cte)) == 0) {
		if ((rw->body = kms_buf_steal(&b, &rw->body_len)) == NULL)
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	kms_buf_free(&b);
	free(notice);
	return rc;
}

/* ------------------------------------------------------------------- plan */

static int
warning_text(const struct mlt_result *res, char **out)
{
	const struct mlt_sig *s = res->main < res->nsigs ? &res->sigs[res->main] : NULL;
	char t[32], *v = NULL;
	int rc;

	*out = NULL;
	if (res->verdict == POL_V_REVOKED && s != NULL && s->revoked) {
		rc = mlt_strcatf(&v, "signer certificate of %s (serial %s) was revoked on %s, reason %s",
		    s->signer ? s->signer : "the signer", s->serial ? s->serial : "unknown",
		    kms_time_format(s->rev.revoked_at, t, sizeof(t)), ca_reason_name(s->rev.reason));
	} else {
		rc = mlt_strcatf(&v, "S/MIME %s: %s", pol_verdict_name(res->verdict), res->detail ? res->detail : "");
	}
	if (rc != 0)
		return rc;
	*out = reply_text(v, 600);
	free(v);
	return *out ? 0 : kms_fail(KMS_ERR_NOMEM, "out of memory");
}

/*
 * The strictest [policy] on_revocation_unknown action over the good
 * signatures (pass, or a good chain whose addresses do not match) whose
 * chain has an unknown revocation status; -1 when there is none.
 * *unknown: 1 when there is one.
 */
static int
unknown_action(const struct kms_config *cfg, const struct mlt_result *res, int *unknown)
{
	time_t now = time(NULL);
	int a = -1;

	*unknown = 0;
	if (res->verdict == POL_V_ERROR)
		return -1;
	for (size_t i = 0; i < res->nsigs; i++) {
		const struct mlt_sig *g = &res->sigs[i];

		if (!g->rev_unknown || g->revoked || (g->verdict != POL_V_PASS && g->verdict != POL_V_MISMATCH))
			continue;
		*unknown = 1;
		a = a < 0 ? pol_decide_revocation_unknown(cfg, g->rev_pending_since, now) :
		    pol_action_stricter(a, pol_decide_revocation_unknown(cfg, g->rev_pending_since, now));
	}
	return a;
}

int
mlt_rewrite_plan(const struct kms_config *cfg, const char *authserv_id, const struct mlt_result *res,
    const unsigned char *msg, size_t len, struct mlt_rewrite **out)
{
	struct mlt_rewrite *rw;
	struct top t;
	char *text = NULL, *warn = NULL;
	int rc = 0, unknown = 0;

	*out = NULL;
	memset(&t, 0, sizeof(t));
	if ((rw = calloc(1, sizeof(*rw))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	rw->verdict = res ? res->verdict : POL_V_ERROR;
	rw->action = pol_decide_message(cfg, rw->verdict, res ? unknown_action(cfg, res, &unknown) : -1);
	if ((rc = mlt_strcatf(&text, "S/MIME %s: %s", pol_verdict_name(rw->verdict),
	    res && res->detail ? res->detail : "internal error while checking the message")) != 0)
		goto out;
	switch (rw->action) {
	case KMS_ACT_REJECT:
		rw->rcode = "550";
		rw->xcode = "5.7.1";
		if ((rw->reply = reply_text(text, 400)) == NULL)
			goto nomem;
		goto done;      /* the message goes nowhere: nothing to edit */
	case KMS_ACT_TEMPFAIL:
		rw->rcode = "451";
		rw->xcode = "4.7.1";
		if ((rw->reply = reply_text(text, 400)) == NULL)
			goto nomem;
		goto done;
	case KMS_ACT_QUARANTINE:
		if ((rw->quarantine_reason = reply_text(text, 400)) == NULL)
			goto nomem;
		break;
	default:
		break;
	}
	if (res == NULL || msg == NULL)
		goto done;
	if ((rc = scan_top(msg, len, cfg->milter.max_headers > 0 ? (size_t)cfg->milter.max_headers : MAX_SCAN_FIELDS,
	    &t)) != 0)
		goto out;
	if (authserv_id != NULL && *authserv_id != '\0' &&
	    (rc = delete_fields(rw, msg, &t, "Authentication-Results", authserv_id)) != 0)
		goto out;
	if ((rc = delete_fields(rw, msg, &t, "X-KMS-Warning", NULL)) != 0)
		goto out;
	if (rw->action == KMS_ACT_WARN) {
		/*
		 * The tag says "revoked sender": a partial signature, or a good one
		 * whose revocation status is only unknown, gets the warning field only.
		 */
		if (rw->verdict != POL_V_PARTIAL && !(unknown && rw->verdict == POL_V_PASS) &&
		    (rc = tag_subject(rw, cfg, msg, &t)) != 0)
			goto out;
		if ((rc = warning_text(res, &warn)) != 0 || (rc = add_edit(rw, MLT_HDR_ADD, "X-KMS-Warning", 0, warn)) != 0)
			goto out;
		if (res->verdict == POL_V_REVOKED && res->main < res->nsigs &&
		    (rc = wrap(rw, cfg, &res->sigs[res->main], msg, len, &t)) != 0)
			goto out;
	}
	if (res->ar_value != NULL && (rc = add_edit(rw, MLT_HDR_INSERT, "Authentication-Results", 0, res->ar_value)) != 0)
		goto out;
done:
	*out = rw;
	rw = NULL;
	goto out;
nomem:
	rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
out:
	free(t.v);
	free(text);
	free(warn);
	mlt_rewrite_free(rw);
	return rc;
}

/* ------------------------------------------------------------------ apply */

/* Write "Name: value" with "\n" folds as CRLF. */
static int
put_field(unsigned char **b, size_t *n, size_t *cap, const char *name, const char *value)
{
	int rc = buf_add(b, n, cap, name, strlen(name));

	if (rc == 0)
		rc = buf_add(b, n, cap, ": ", 2);
	for (const char *p = value; rc == 0 && *p; p++) {
		if (*p == '\r')
			continue;
		rc = *p == '\n' ? buf_add(b, n, cap, "\r\n", 2) : buf_add(b, n, cap, p, 1);
	}
	return rc ? rc : buf_add(b, n, cap, "\r\n", 2);
}

int
mlt_rewrite_apply(const unsigned char *msg, size_t len, const struct mlt_rewrite *rw,
    unsigned char **out, size_t *outlen)
{
	struct top t;
	GHashTable *byname = NULL;
	unsigned char *b = NULL;
	size_t n = 0, cap = 0;
	int rc;

	*out = NULL;
	*outlen = 0;
	if ((rc = scan_top(msg, len, MAX_SCAN_FIELDS, &t)) != 0)
		return rc;
	/* Edits by "name\nindex", so that each field costs one lookup. */
	byname = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	for (size_t k = 0; k < rw->nedits; k++) {
		const struct mlt_hdr_edit *e = &rw->edits[k];

		/* Names match case-insensitively, as the MTA matches them. */
		if (e->op == MLT_HDR_DELETE || e->op == MLT_HDR_CHANGE) {
			char *lower = g_ascii_strdown(e->name, -1);

			g_hash_table_replace(byname, g_strdup_printf("%s\n%d", lower, e->index), (gpointer)e);
			g_free(lower);
		}
	}
	/* Each insertion at index 0 goes above the ones before it. */
	for (size_t k = rw->nedits; rc == 0 && k-- > 0;)
		if (rw->edits[k].op == MLT_HDR_INSERT)
			rc = put_field(&b, &n, &cap, rw->edits[k].name, rw->edits[k].value);
	for (size_t i = 0; rc == 0 && i < t.n; i++) {
		const struct mlt_field *f = &t.v[i].f;
		const struct mlt_hdr_edit *hit;
		char *key = name_key(msg, f), *k2;

		if (key == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			break;
		}
		k2 = g_strdup_printf("%s\n%d", key, t.v[i].index);
		hit = g_hash_table_lookup(byname, k2);
		g_free(k2);
		free(key);
		if (hit == NULL)
			rc = buf_add(&b, &n, &cap, msg + f->start, f->end - f->start);
		else if (hit->op == MLT_HDR_CHANGE)
			rc = put_field(&b, &n, &cap, hit->name, hit->value);
	}
	for (size_t k = 0; rc == 0 && k < rw->nedits; k++)
		if (rw->edits[k].op == MLT_HDR_ADD)
			rc = put_field(&b, &n, &cap, rw->edits[k].name, rw->edits[k].value);
	if (rc == 0)
		rc = buf_add(&b, &n, &cap, "\r\n", 2);
	if (rc == 0) {
		if (rw->body != NULL)
			rc = buf_add(&b, &n, &cap, rw->body, rw->body_len);
		else
			rc = buf_add(&b, &n, &cap, msg + t.body, len - t.body);
	}
	g_hash_table_destroy(byname);
	free(t.v);
	if (rc != 0) {
		free(b);
		return rc;
	}
	*out = b;
	*outlen = n;
	return 0;
}
