/*
 * mime.h - raw MIME helpers of the mail side (milter/mime.c), shared by
 * smime.c, verdict.c and rewrite.c.  Internal to milter/.
 *
 * Every offset points into the bytes as they arrived (CRLF line ends), so
 * that signed content is taken as sent and never re-serialised.  Header
 * field values are parsed with GMime (parameters in any order and quoting,
 * RFC 2231, addresses); the split into entities is done here, with bounds,
 * because GMime builds its whole tree in memory first (an 18 MB message of
 * tiny parts took 2.4 GB and 38 s).
 */
#ifndef MLT_MIME_H
#define MLT_MIME_H

#include <stddef.h>

#include <gmime/gmime.h>

/* One header field: [start, end) including its final CRLF. */
struct mlt_field {
	size_t start, end;
	size_t name_len;        /* name at start, without trailing white space */
	size_t value;           /* value from here to vend (after the colon, as written) */
	size_t vend;            /* end of the value: before the final CRLF */
};

struct mlt_hdr_iter {
	const unsigned char *buf;
	size_t pos, end;
	int done;
};

/* Iterate the header block starting at start (bounded by end). */
void mlt_hdr_begin(struct mlt_hdr_iter *it, const unsigned char *buf, size_t start, size_t end);
/*
 * 1 with the next field in *f; 0 at the end of the block, with it->pos at
 * the start of the body (after the empty line, or end when there is none).
 * Lines that are not fields (no colon, bad name) are skipped, so 1 is
 * returned only for real fields; *skipped counts the skipped lines.
 */
int mlt_hdr_next(struct mlt_hdr_iter *it, struct mlt_field *f, size_t *skipped);
/* Is f called name (case-insensitive)? */
int mlt_field_is(const unsigned char *buf, const struct mlt_field *f, const char *name);
/*
 * The value unfolded (CRLF removed, leading and trailing white space cut),
 * NUL-terminated, at most max bytes (longer values are cut).  malloc'd,
 * NULL on allocation failure.
 */
char *mlt_field_value(const unsigned char *buf, const struct mlt_field *f, size_t max);

/* An entity's header block, read once. */
struct mlt_entity {
	size_t start, body, end;        /* headers at start, body [body, end) */
	GMimeContentType *ct;           /* parsed Content-Type, or NULL (default text/plain) */
	char *cte;                      /* Content-Transfer-Encoding token, lowercase, or NULL */
	char *filename;                 /* Content-Disposition filename or Content-Type name, or NULL */
	long nfields;                   /* fields and skipped lines of the block */
};

/*
 * Read the header block of the entity [start, end).  max_fields bounds the
 * fields looked at: KMS_ERR_TOOBIG past it.  Clear with mlt_entity_clear.
 */
int mlt_entity_read(const unsigned char *buf, size_t start, size_t end, long max_fields, struct mlt_entity *e);
void mlt_entity_clear(struct mlt_entity *e);
/* Is the entity's type type/subtype (case-insensitive; subtype "*" matches any)? */
int mlt_entity_is(const struct mlt_entity *e, const char *type, const char *subtype);
/* A Content-Type parameter, or NULL. */
const char *mlt_entity_param(const struct mlt_entity *e, const char *name);

struct mlt_span {
	size_t start, end;
};

/*
 * Split the body [start, end) of a multipart entity at the delimiter lines
 * of boundary (RFC 2046: "--boundary", transport padding allowed, the CRLF
 * before it belongs to it).  *parts (malloc'd, *nparts entries) are the
 * body parts in order; *closed says whether the close delimiter was seen.
 * More than max parts: KMS_ERR_TOOBIG.
 */
int mlt_multipart_split(const unsigned char *buf, size_t start, size_t end, const char *boundary,
    long max, struct mlt_span **parts, size_t *nparts, int *closed);

/*
 * Undo the transfer encoding cte (NULL, 7bit, 8bit, binary: a copy;
 * base64, quoted-printable as GMime decodes them, leniently).  *out
 * malloc'd (NULL-safe for n 0).
 */
int mlt_decode_cte(const char *cte, const unsigned char *in, size_t n, unsigned char **out, size_t *outlen);

/*
 * The mailbox addresses, as written, of the From fields of the top-level
 * header block (at 0): *addrs is a NULL-terminated array (kms_strv_free),
 * *nfields the number of From fields.
 */
int mlt_from_addresses(const unsigned char *buf, size_t len, long max_fields, char ***addrs, size_t *nfields);

/* The mailbox addresses of one address-list value: *addrs NULL-terminated (kms_strv_free). */
int mlt_addr_list_parse(const char *value, char ***addrs);

/*
 * Does a From field of the top-level header block show, anywhere in its
 * text (display name quoted or not, RFC 2047 encoded word, comment; a
 * fullwidth at sign counts), an address that is none of addrs (the From
 * addresses)?  *why (malloc'd) says which, NULL if none.  0 or
 * KMS_ERR_NOMEM.
 */
int mlt_from_display_check(const unsigned char *buf, size_t len, long max_fields, char *const *addrs, char **why);

#endif /* MLT_MIME_H */
