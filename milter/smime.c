/*
 * smime.c - find every S/MIME entity of a message and verify each signer
 * with OpenSSL CMS over the bytes as they arrived.
 *
 * Entry points: mlt_check_message (the whole check: bounds, From, the
 * walk, the verdict and the Authentication-Results text), mlt_smime_init,
 * mlt_result_free, mlt_limits_from_config.
 *
 * The walk visits the entity tree depth first, with [milter] max_parts,
 * max_depth and max_headers as bounds.  What it recognises:
 *   multipart/signed with protocol application/(x-)pkcs7-signature (or no
 *     protocol and such a second part): the first body part, headers and
 *     all, exactly as sent, is the signed content; the second is the
 *     signature.  The walk goes on into the first part.
 *   application/(x-)pkcs7-mime whatever its smime-type says, and any part
 *     named *.p7m: a CMS blob, classified by its own content type, never
 *     by the label: signed-data is verified (and its content walked),
 *     enveloped and authEnveloped data count as encrypted, anything else
 *     is named in the detail.
 *   other multiparts: each part is walked.
 * message/rfc822 parts are not walked: a forwarded message is another
 * message, with its own From, and its signature says nothing about ours.
 *
 * Every signer gets its own result.  The message verdict is the most
 * severe of them, a revoked signer first (pol_verdict_worst): no other
 * signature can hide a revocation.  What was signed is said too: a good
 * signature whose signed entity does not cover the whole message (an
 * unsigned part beside it, a third part in a multipart/signed), or whose
 * protected header fields (RFC 9788, or the message/rfc822 wrapper of RFC
 * 8551) differ from the outer From or Subject, is "partial", and the
 * detail names what is not covered.
 *
 * Every CMS blob is parsed from its decoded bytes; signatures and content
 * digests are checked per signer (CMS_SignerInfo_verify and
 * CMS_SignerInfo_verify_content), so that one bad signer among several is
 * named.  Certificates are judged in verdict.c.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/objects.h>

#include "milter/cache.h"
#include "milter/mime.h"
#include "milter/milter.h"
#include "milter/smime_int.h"

#define PATH_MAX_LEN 2048
/* Signers of one signed-data looked at, at most (more: verdict error). */
#define MAX_SIGNERS 64

/* Uncovered parts named in a detail at most (then "..."). */
#define MAX_UNCOVERED_NAMED 4

struct walk {
	const struct mlt_check_ctx *ctx;
	time_t now;
	long parts;
	char *bound;                    /* which bound was hit, NULL if none */
	struct mlt_sig *sigs;
	size_t nsigs, cap;
	int nencrypted;
	char **from;
	size_t nfrom_fields;
	char *from_note;                /* From shows another address in its display name */
	char **subjects;                /* outer Subject values, decoded and normalised */
	int inside;                     /* > 0 while walking inside signed content */
	char *uncovered;                /* parts outside every signed entity, for the detail */
	int nuncovered;
	char path[PATH_MAX_LEN];
};

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;

static void
gmime_init_once(void)
{
	g_mime_init();
}

void
mlt_smime_init(void)
{
	pthread_once(&gmime_once, gmime_init_once);
}

void
mlt_limits_from_config(const struct kms_config *cfg, struct mlt_limits *lim)
{
	lim->max_message_size = (size_t)cfg->milter.max_message_size;
	lim->max_headers = (long)cfg->milter.max_headers;
	lim->max_parts = (long)cfg->milter.max_parts;
	lim->max_depth = (long)cfg->milter.max_depth;
}

static void
sig_clear(struct mlt_sig *s)
{
	free(s->part);
	free(s->detail);
	free(s->signer);
	free(s->serial);
	free(s->issuer);
}

void
mlt_result_free(struct mlt_result *res)
{
	if (res == NULL)
		return;
	for (size_t i = 0; i < res->nsigs; i++)
		sig_clear(&res->sigs[i]);
	free(res->sigs);
	free(res->detail);
	free(res->from);
	free(res->ar_value);
	free(res);
}

/* Note the first bound hit; the walk then stops. */
static int
hit_bound(struct walk *w, const char *what)
{
	if (w->bound == NULL && (w->bound = kms_sanitize_new(what, strlen(what), MLT_MAX_TEXT)) == NULL)
		return KMS_ERR_NOMEM;
	return 0;
}

/* A new signature record at the current path, or NULL. */
static struct mlt_sig *
sig_new(struct walk *w, enum mlt_sig_kind kind)
{
	struct mlt_sig *s;

	if (kms_array_reserve(&w->sigs, &w->cap, w->nsigs + 1, sizeof(*w->sigs), SIZE_MAX) != 0)
		return NULL;
	s = &w->sigs[w->nsigs];
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->verdict = POL_V_FAIL;
	if ((s->part = strdup(w->path)) == NULL)
		return NULL;
	w->nsigs++;
	return s;
}

/* Record a signed entity that could not be checked at all (bad CMS, bad structure). */
static int
sig_broken(struct walk *w, enum mlt_sig_kind kind, const char *why)
{
	struct mlt_sig *s = sig_new(w, kind);

	if (s == NULL || (s->detail = kms_sanitize_new(why, strlen(why), MLT_MAX_TEXT)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	s->verdict = POL_V_FAIL;
	return 0;
}

static int walk_entity(struct walk *w, const unsigned char *buf, size_t start, size_t end, long depth,
    int *covered);
static int sigs_note(struct walk *w, size_t first, const char *text);

/*
 * Walk a child: extend the path with ".n" (or "n" at the top).  covered
 * (may be NULL) says whether a signature covers the whole child.
 */
static int
walk_child(struct walk *w, const unsigned char *buf, const struct mlt_span *sp, size_t n, long depth, int *covered)
{
	size_t plen = strlen(w->path);
	int rc, cov = 0;

	if (plen + 16 < sizeof(w->path))
		snprintf(w->path + plen, sizeof(w->path) - plen, "%s%zu", plen ? "." : "", n);
	rc = walk_entity(w, buf, sp->start, sp->end, depth, &cov);
	w->path[plen] = '\0';
	if (covered != NULL)
		*covered = cov;
	return rc;
}

/* Walk signed content: nothing under it is "uncovered". */
static int
walk_signed_content(struct walk *w, const unsigned char *buf, const struct mlt_span *sp, long depth)
{
	int rc;

	w->inside++;
	rc = walk_child(w, buf, sp, 1, depth, NULL);
	w->inside--;
	return rc;
}

/*
 * Note that the entity at the current path (extended by ".n" when n > 0)
 * is outside every signed entity: what, e.g. "text/html".
 */
static int
note_uncovered(struct walk *w, size_t n, const char *what)
{
	char *t = NULL, *c;
	int rc;

	if (w->inside > 0)
		return 0;
	if (++w->nuncovered > MAX_UNCOVERED_NAMED)
		return w->nuncovered == MAX_UNCOVERED_NAMED + 1 ? mlt_strcatf(&w->uncovered, ", ...") : 0;
	if (n > 0)
		rc = mlt_strcatf(&t, "part %s%s%zu (%s)", w->path, w->path[0] ? "." : "", n, what);
	else if (w->path[0])
		rc = mlt_strcatf(&t, "part %s (%s)", w->path, what);
	else
		rc = mlt_strcatf(&t, "the message body (%s)", what);
	if (rc != 0)
		return rc;
	c = kms_sanitize_new(t, strlen(t), MLT_MAX_TEXT);
	free(t);
	rc = c ? mlt_strcatf(&w->uncovered, "%s%s", w->uncovered ? ", " : "", c) : kms_fail(KMS_ERR_NOMEM, "out of memory");
	free(c);
	return rc;
}

/* The entity's type as "type/subtype" for a detail (text/plain without Content-Type). */
static void
entity_type(const struct mlt_entity *e, char *buf, size_t len)
{
	const char *t = e->ct ? g_mime_content_type_get_media_type(e->ct) : "text";
	const char *st = e->ct ? g_mime_content_type_get_media_subtype(e->ct) : "plain";

	snprintf(buf, len, "%.40s/%.60s", t ? t : "?", st ? st : "?");
}

/*
 * Digest the signed content into every digest BIO CMS_dataInit stacked on
 * top of its source (one per digestAlgorithms entry): straight from the
 * bytes where they lie, in one pass per algorithm, instead of reading the
 * content through the chain (which copied all of it once more, 16 KB at a
 * time).  The source BIO at the bottom of the chain is left unread; only
 * the digest contexts matter to CMS_SignerInfo_verify_content.
 */
static int
digest_into(BIO *cmsbio, const unsigned char *content, size_t clen)
{
	for (BIO *b = cmsbio; b != NULL; b = BIO_next(b)) {
		EVP_MD_CTX *mctx = NULL;

		if (BIO_method_type(b) != BIO_TYPE_MD)
			break;
		if (BIO_get_md_ctx(b, &mctx) != 1 || mctx == NULL || EVP_DigestUpdate(mctx, content, clen) != 1)
			return -1;
	}
	/* No digest at all: each signer's check says there is no matching one, as before. */
	return 0;
}

/* Last OpenSSL error as short text (the queue is emptied). */
static void
openssl_why(char *buf, size_t len, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	char tmp[160];

	if (e != 0) {
		ERR_error_string_n(e, tmp, sizeof(tmp));
		snprintf(buf, len, "%s (%s)", what, tmp);
	} else {
		snprintf(buf, len, "%s", what);
	}
	ERR_clear_error();
}

/* Find the certificate of si among certs, else through ctx->find_cert.  get1 or NULL. */
static X509 *
signer_cert(const struct mlt_check_ctx *ctx, CMS_SignerInfo *si, STACK_OF(X509) *certs)
{
	ASN1_OCTET_STRING *keyid = NULL;
	X509_NAME *issuer = NULL;
	ASN1_INTEGER *sno = NULL;
	X509 *x = NULL;

	for (int i = 0; certs != NULL && i < sk_X509_num(certs); i++) {
		X509 *c = sk_X509_value(certs, i);

		if (CMS_SignerInfo_cert_cmp(si, c) == 0) {
			X509_up_ref(c);
			return c;
		}
	}
	if (ctx->find_cert == NULL)
		return NULL;
	if (CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno) != 1) {
		ERR_clear_error();
		return NULL;
	}
	if (ctx->find_cert(ctx->find_cert_arg, issuer, sno, keyid, &x) != 0)
		x = NULL;
	ERR_clear_error();
	/* Only a certificate that really is the one named counts. */
	if (x != NULL && CMS_SignerInfo_cert_cmp(si, x) != 0) {
		X509_free(x);
		x = NULL;
	}
	return x;
}

/*
 * What is wrong with one signer's signature over the digested content, or
 * NULL.  With signed attributes the content digest is compared without
 * the key, so a changed message shows even when the certificate is
 * missing; without them and without the certificate there is nothing to
 * check (the signer is judged untrusted).
 */
static const char *
signer_problem(CMS_SignerInfo *si, X509 *signer, BIO *cmsbio, char *buf, size_t len)
{
	int has_attrs = CMS_signed_get_attr_count(si) >= 0;
	int r;

	if (signer == NULL && !has_attrs)
		return NULL;
	if ((r = CMS_SignerInfo_verify_content(si, cmsbio)) != 1) {
		openssl_why(buf, len, r == 0 ? "content changed after signing" : "cannot check the content digest");
		return buf;
	}
	if (has_attrs && signer != NULL && CMS_SignerInfo_verify(si) != 1) {
		openssl_why(buf, len, "signature does not verify");
		return buf;
	}
	return NULL;
}

/* Free the BIO chain CMS_dataInit made on top of dcont (popping down to it), then dcont. */
static void
free_data_bio(BIO *cmsbio, BIO *dcont)
{
	if (cmsbio != NULL) {
		if (dcont != NULL) {
			while (cmsbio != NULL && cmsbio != dcont) {
				BIO *next = BIO_pop(cmsbio);

				BIO_free(cmsbio);
				cmsbio = next;
			}
		} else {
			BIO_free_all(cmsbio);
		}
	}
	BIO_free(dcont);
}

/*
 * Verify the signed-data cms over content (detached; NULL for the
 * encapsulated content) and judge each signer.
 */
static int
verify_signed(struct walk *w, CMS_ContentInfo *cms, STACK_OF(X509) *certs, const unsigned char *content,
    size_t clen, enum mlt_sig_kind kind)
{
	STACK_OF(CMS_SignerInfo) *sis;
	BIO *dcont = NULL, *cmsbio = NULL;
	X509 **signers = NULL;
	char why[320];
	int n, rc = 0, data_ok = 0;

	if ((sis = CMS_get0_SignerInfos(cms)) == NULL || (n = sk_CMS_SignerInfo_num(sis)) <= 0) {
		ERR_clear_error();
		return sig_broken(w, kind, "signature has no signer");
	}
	if (n > MAX_SIGNERS) {
		/* A bound on work; never a silent one, or a revoked signer could hide past it. */
		char t[96];

		ERR_clear_error();
		snprintf(t, sizeof(t), "more than %d signers in one signature", MAX_SIGNERS);
		return hit_bound(w, t);
	}
	if (content == NULL && CMS_is_detached(cms)) {
		ERR_clear_error();
		return sig_broken(w, kind, "signed-data without content");
	}
	if ((signers = calloc((size_t)n, sizeof(*signers))) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, i);

		if ((signers[i] = signer_cert(w->ctx, si, certs)) != NULL)
			CMS_SignerInfo_set1_signer_cert(si, signers[i]);
	}
	if (clen > (size_t)0x7fffffff) {
		rc = sig_broken(w, kind, "signed content too large");
		goto out;
	}
	if (content == NULL) {
		/* Encapsulated: the eContent itself (present: a detached one was refused above). */
		ASN1_OCTET_STRING **pos = CMS_get0_content(cms);

		content = (const unsigned char *)"";
		clen = 0;
		if (pos != NULL && *pos != NULL) {
			content = ASN1_STRING_get0_data(*pos);
			clen = (size_t)ASN1_STRING_length(*pos);
		}
	}
	/* A source for CMS_dataInit to stack the digests on (never read: see digest_into). */
	if ((dcont = BIO_new(BIO_s_null())) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((cmsbio = CMS_dataInit(cms, dcont)) == NULL || digest_into(cmsbio, content, clen) != 0)
		openssl_why(why, sizeof(why), "cannot digest the signed content");
	else
		data_ok = 1;
	for (int i = 0; i < n; i++) {
		CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, i);
		struct mlt_sig *s;
		const char *bad;
		char sbuf[320];

		bad = data_ok ? signer_problem(si, signers[i], cmsbio, sbuf, sizeof(sbuf)) : why;
		ERR_clear_error();
		if ((s = sig_new(w, kind)) == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		s->signing_time = mlt_signing_time(si);
		{
			struct mlt_signed_by by = { signers[i], certs, bad == NULL, bad };
			struct mlt_from from = { w->from, w->nfrom_fields, w->from_note };

			if ((rc = mlt_sig_judge(w->ctx, w->now, &by, &from, s)) != 0)
				goto out;
		}
	}
out:
	free_data_bio(cmsbio, dcont);
	for (int i = 0; signers != NULL && i < n; i++)
		X509_free(signers[i]);
	free(signers);
	ERR_clear_error();
	return rc;
}

static int
cms_is_encrypted(CMS_ContentInfo *cms)
{
	int nid = OBJ_obj2nid(CMS_get0_type(cms));

	return nid == NID_pkcs7_enveloped || nid == NID_id_smime_ct_authEnvelopedData ||
	    nid == NID_pkcs7_encrypted;
}

/* Longest Subject compared, decoded. */
#define MAX_SUBJECT 4096

/*
 * A Subject value as a reader sees it: encoded words decoded, white space
 * runs made one space, none at the ends.  malloc'd, NULL when out of memory.
 */
static char *
subject_norm(const char *v)
{
	char *dec = g_mime_utils_header_decode_text(NULL, v), *o;
	const char *p = dec ? dec : v;
	size_t n = 0;

	if ((o = malloc(strlen(p) + 1)) == NULL) {
		g_free(dec);
		return NULL;
	}
	for (; *p; p++) {
		if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
			if (n > 0 && o[n - 1] != ' ')
				o[n++] = ' ';
		} else {
			o[n++] = *p;
		}
	}
	while (n > 0 && o[n - 1] == ' ')
		n--;
	o[n] = '\0';
	g_free(dec);
	return o;
}

/* Are the address lists a and b the same set (case-insensitive)? */
static int
same_addresses(char *const *a, char *const *b)
{
	for (int pass = 0; pass < 2; pass++) {
		char *const *x = pass ? b : a, *const *y = pass ? a : b;

		for (size_t i = 0; x[i] != NULL; i++) {
			size_t j;

			for (j = 0; y[j] != NULL; j++)
				if (strcasecmp(x[i], y[j]) == 0)
					break;
			if (y[j] == NULL)
				return 0;
		}
	}
	return 1;
}

/*
 * Header protection: the signed content [start, end) may carry header
 * fields of its own (RFC 9788 protected headers in the signed part's
 * header block, or the whole message in a message/rfc822 wrapper, RFC
 * 8551 section 3.1).  When its From or Subject differs from the outer one
 * a reader sees, the signatures from first on do not vouch for what is
 * shown: a good one becomes partial, and each detail says why.
 */
static int
check_protected(struct walk *w, const unsigned char *buf, size_t start, size_t end, size_t first)
{
	struct mlt_entity e;
	struct mlt_hdr_iter it;
	struct mlt_field f;
	size_t hstart = start;
	long seen = 0;
	const char *why = NULL;
	int rc;

	if (first >= w->nsigs)
		return 0;
	if ((rc = mlt_entity_read(buf, start, end, w->ctx->limits.max_headers, &e)) != 0)
		return rc == KMS_ERR_TOOBIG ? 0 : rc;   /* the walk reports the bound */
	if (mlt_entity_is(&e, "message", "rfc822"))
		hstart = e.body;
	mlt_entity_clear(&e);
	mlt_hdr_begin(&it, buf, hstart, end);
	while (why == NULL && mlt_hdr_next(&it, &f, NULL)) {
		char *v;

		if (++seen > w->ctx->limits.max_headers)
			break;
		if (mlt_field_is(buf, &f, "Subject")) {
			char *inner;

			if ((v = mlt_field_value(buf, &f, MAX_SUBJECT)) == NULL)
				return kms_fail(KMS_ERR_NOMEM, "out of memory");
			inner = subject_norm(v);
			free(v);
			if (inner == NULL)
				return kms_fail(KMS_ERR_NOMEM, "out of memory");
			for (size_t i = 0; w->subjects != NULL && w->subjects[i] != NULL; i++)
				if (strcmp(w->subjects[i], inner) != 0)
					why = "; the outer Subject is not the signed one (header protection)";
			free(inner);
		} else if (mlt_field_is(buf, &f, "From")) {
			char **inner = NULL;

			if ((v = mlt_field_value(buf, &f, 16 * 1024)) == NULL)
				return kms_fail(KMS_ERR_NOMEM, "out of memory");
			rc = mlt_addr_list_parse(v, &inner);
			free(v);
			if (rc != 0)
				return rc;
			if (w->nfrom_fields != 1 || !same_addresses(inner, w->from))
				why = "; the outer From is not the signed one (header protection)";
			kms_strv_free(inner);
		}
	}
	if (why == NULL)
		return 0;
	for (size_t i = first; i < w->nsigs; i++)
		if (w->sigs[i].verdict == POL_V_PASS)
			w->sigs[i].verdict = POL_V_PARTIAL;
	return sigs_note(w, first, why);
}

/*
 * The multipart/signed at e: verify, then walk its first part.  Without a
 * protocol parameter (proto_given 0) a second part that is no S/MIME
 * signature means the entity is not ours: 1 is returned and nothing done.
 */
static int
do_detached(struct walk *w, const unsigned char *buf, const struct mlt_entity *e, long depth, int proto_given,
    int *covered)
{
	struct mlt_span *parts = NULL;
	struct mlt_entity se;
	unsigned char *der = NULL;
	size_t nparts = 0, derlen = 0, first = w->nsigs;
	CMS_ContentInfo *cms = NULL;
	STACK_OF(X509) *certs = NULL;
	int closed, rc;

	memset(&se, 0, sizeof(se));
	*covered = 1;   /* whenever a result is recorded for this entity, it speaks for it */
	rc = mlt_multipart_split(buf, e->body, e->end, mlt_entity_param(e, "boundary"),
	    w->ctx->limits.max_parts - w->parts, &parts, &nparts, &closed);
	if (rc == KMS_ERR_TOOBIG) {
		char t[96];

		snprintf(t, sizeof(t), "more than %ld MIME parts ([milter] max_parts)", w->ctx->limits.max_parts);
		rc = hit_bound(w, t);
		goto out;
	}
	if (rc != 0 || nparts < 2) {
		if (rc != KMS_ERR_NOMEM && !proto_given) {
			rc = 1;
			goto out;
		}
		rc = rc == KMS_ERR_NOMEM ? rc : sig_broken(w, MLT_SIG_DETACHED,
		    "multipart/signed without content and signature parts");
		goto out;
	}
	if ((rc = mlt_entity_read(buf, parts[1].start, parts[1].end, w->ctx->limits.max_headers, &se)) != 0) {
		rc = rc == KMS_ERR_TOOBIG ? hit_bound(w, kms_last_error()) : rc;
		goto out;
	}
	if (!mlt_entity_is(&se, "application", "pkcs7-signature") &&
	    !mlt_entity_is(&se, "application", "x-pkcs7-signature")) {
		if (!proto_given) {
			rc = 1;
			goto out;
		}
		rc = sig_broken(w, MLT_SIG_DETACHED, "multipart/signed: second part is not an S/MIME signature");
		goto out;
	}
	if ((rc = mlt_decode_cte(se.cte, buf + se.body, se.end - se.body, &der, &derlen)) != 0)
		goto out;
	/* The certificates come from the cache (cache.h), not from the CMS. */
	if ((rc = mlt_cms_decode(der, derlen, &cms, &certs)) != 0)
		goto out;
	if (cms == NULL) {
		rc = sig_broken(w, MLT_SIG_DETACHED, "signature part is not CMS (garbage or truncated)");
		goto out;
	}
	if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
		rc = sig_broken(w, MLT_SIG_DETACHED, "signature part is not CMS signed-data");
		goto out;
	}
	w->parts++;     /* the signature part */
	if ((rc = verify_signed(w, cms, certs, buf + parts[0].start, parts[0].end - parts[0].start,
	    MLT_SIG_DETACHED)) != 0)
		goto out;
	if ((rc = check_protected(w, buf, parts[0].start, parts[0].end, first)) != 0)
		goto out;
	/* Parts after the signature are shown by some clients, and signed by no one. */
	for (size_t i = 2; i < nparts && rc == 0; i++) {
		*covered = 0;
		rc = note_uncovered(w, i + 1, "after the signature");
	}
	if (rc == 0)
		rc = walk_signed_content(w, buf, &parts[0], depth + 1);
out:
	sk_X509_pop_free(certs, X509_free);
	CMS_ContentInfo_free(cms);
	free(der);
	free(parts);
	mlt_entity_clear(&se);
	return rc;
}

/* Append text to the detail of the signatures from first on. */
static int
sigs_note(struct walk *w, size_t first, const char *text)
{
	for (size_t i = first; i < w->nsigs; i++) {
		char *d = NULL, *c;
		int rc = mlt_strcatf(&d, "%s%s", w->sigs[i].detail ? w->sigs[i].detail : "", text);

		if (rc != 0)
			return rc;
		if ((c = kms_sanitize_new(d, strlen(d), 3 * MLT_MAX_TEXT)) == NULL) {
			free(d);
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		}
		free(d);
		free(w->sigs[i].detail);
		w->sigs[i].detail = c;
	}
	return 0;
}

/*
 * A CMS blob in a part (application/(x-)pkcs7-mime or *.p7m).  The blob's
 * own content type decides, never the smime-type label: a signed-data
 * labelled enveloped-data is verified like any other.
 */
static int
do_blob(struct walk *w, const unsigned char *buf, const struct mlt_entity *e, long depth, int named_only,
    int *covered)
{
	const char *st = mlt_entity_param(e, "smime-type");
	unsigned char *der = NULL;
	size_t derlen = 0, first = w->nsigs;
	CMS_ContentInfo *cms = NULL;
	STACK_OF(X509) *certs = NULL;
	ASN1_OCTET_STRING **pos;
	char what[160];
	int rc, nid;

	*covered = 0;
	if ((rc = mlt_decode_cte(e->cte, buf + e->body, e->end - e->body, &der, &derlen)) != 0)
		return rc;
	if ((rc = mlt_cms_decode(der, derlen, &cms, &certs)) != 0)
		goto out;
	if (cms == NULL) {
		/* A file merely named .p7m that is no CMS is not our business. */
		if (named_only) {
			rc = note_uncovered(w, 0, "attachment named .p7m");
			goto out;
		}
		*covered = 1;
		rc = sig_broken(w, MLT_SIG_OPAQUE, "application/pkcs7-mime part is not CMS (garbage or truncated)");
		goto out;
	}
	nid = OBJ_obj2nid(CMS_get0_type(cms));
	if (cms_is_encrypted(cms)) {
		w->nencrypted++;
		rc = note_uncovered(w, 0, "encrypted");
		goto out;
	}
	/* certs-only is signed-data without signers: it signs nothing. */
	if (nid != NID_pkcs7_signed || sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)) <= 0) {
		ERR_clear_error();
		snprintf(what, sizeof(what), "CMS %s, nothing signed", nid == NID_pkcs7_signed ? "certs-only" :
		    nid != NID_undef ? OBJ_nid2sn(nid) : "of an unknown type");
		rc = note_uncovered(w, 0, what);
		goto out;
	}
	*covered = 1;
	if ((rc = verify_signed(w, cms, certs, NULL, 0, MLT_SIG_OPAQUE)) != 0)
		goto out;
	if (st != NULL && strcasecmp(st, "signed-data") != 0) {
		char *c = kms_sanitize_new(st, strlen(st), 40);

		if (c == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		snprintf(what, sizeof(what), " (signed-data labelled smime-type=%s)", c);
		free(c);
		if ((rc = sigs_note(w, first, what)) != 0)
			goto out;
	}
	/* Signatures and encryption inside the signed content. */
	if ((pos = CMS_get0_content(cms)) != NULL && *pos != NULL && ASN1_STRING_length(*pos) > 0) {
		struct mlt_span sp = { 0, (size_t)ASN1_STRING_length(*pos) };

		if ((rc = check_protected(w, ASN1_STRING_get0_data(*pos), sp.start, sp.end, first)) != 0)
			goto out;
		rc = walk_signed_content(w, ASN1_STRING_get0_data(*pos), &sp, depth + 1);
	}
out:
	ERR_clear_error();
	sk_X509_pop_free(certs, X509_free);
	CMS_ContentInfo_free(cms);
	free(der);
	return rc;
}

static int
name_is_p7m(const char *fn)
{
	size_t n;

	if (fn == NULL || (n = strlen(fn)) < 4)
		return 0;
	return strcasecmp(fn + n - 4, ".p7m") == 0;
}

/* The parts of a multipart, each walked; it is covered when every one of them is. */
static int
walk_multipart(struct walk *w, const unsigned char *buf, const struct mlt_entity *e, long depth, int *covered)
{
	const struct mlt_limits *lim = &w->ctx->limits;
	struct mlt_span *parts = NULL;
	size_t nparts = 0;
	int closed, all = 1, rc;

	rc = mlt_multipart_split(buf, e->body, e->end, mlt_entity_param(e, "boundary"),
	    lim->max_parts - w->parts + 1, &parts, &nparts, &closed);
	if (rc == KMS_ERR_TOOBIG) {
		char t[96];

		snprintf(t, sizeof(t), "more than %ld MIME parts ([milter] max_parts)", lim->max_parts);
		rc = hit_bound(w, t);
	} else if (rc == KMS_ERR_INVALID) {
		rc = 0;         /* a multipart without boundary: nothing inside to see */
	}
	for (size_t i = 0; rc == 0 && i < nparts && w->bound == NULL; i++) {
		int cov = 0;

		rc = walk_child(w, buf, &parts[i], i + 1, depth + 1, &cov);
		all = all && cov;
	}
	*covered = nparts > 0 && all;
	if (rc == 0 && nparts == 0) {
		char type[112];

		entity_type(e, type, sizeof(type));
		rc = note_uncovered(w, 0, type);
	}
	free(parts);
	return rc;
}

static int
walk_entity(struct walk *w, const unsigned char *buf, size_t start, size_t end, long depth, int *covered)
{
	const struct mlt_limits *lim = &w->ctx->limits;
	struct mlt_entity e;
	char type[112];
	int rc;

	*covered = 0;
	if (w->bound != NULL)
		return 0;
	if (++w->parts > lim->max_parts) {
		char t[96];

		snprintf(t, sizeof(t), "more than %ld MIME parts ([milter] max_parts)", lim->max_parts);
		return hit_bound(w, t);
	}
	if (depth > lim->max_depth) {
		char t[96];

		snprintf(t, sizeof(t), "MIME nesting deeper than %ld ([milter] max_depth)", lim->max_depth);
		return hit_bound(w, t);
	}
	if ((rc = mlt_entity_read(buf, start, end, lim->max_headers, &e)) != 0) {
		if (rc == KMS_ERR_TOOBIG) {
			char t[96];

			snprintf(t, sizeof(t), "more than %ld header fields ([milter] max_headers)", lim->max_headers);
			return hit_bound(w, t);
		}
		return rc;
	}
	if (mlt_entity_is(&e, "multipart", "signed")) {
		const char *proto = mlt_entity_param(&e, "protocol");

		if (proto == NULL || strcasecmp(proto, "application/pkcs7-signature") == 0 ||
		    strcasecmp(proto, "application/x-pkcs7-signature") == 0) {
			/* Without a protocol the second part's type decides. */
			if ((rc = do_detached(w, buf, &e, depth, proto != NULL, covered)) <= 0)
				goto out;
			*covered = 0;
		}
	}
	if (mlt_entity_is(&e, "multipart", "*")) {
		rc = walk_multipart(w, buf, &e, depth, covered);
		goto out;
	}
	/* Every pkcs7-mime part is parsed: its content type decides, not smime-type. */
	if (mlt_entity_is(&e, "application", "pkcs7-mime") || mlt_entity_is(&e, "application", "x-pkcs7-mime")) {
		rc = do_blob(w, buf, &e, depth, 0, covered);
		goto out;
	}
	if (!mlt_entity_is(&e, "message", "*") && name_is_p7m(e.filename)) {
		rc = do_blob(w, buf, &e, depth, 1, covered);
		goto out;
	}
	entity_type(&e, type, sizeof(type));
	rc = note_uncovered(w, 0, type);
out:
	mlt_entity_clear(&e);
	return rc;
}

/*
 * The message verdict from the signatures found: the most severe, a
 * revoked signer before all (even past a bound that stopped the walk).
 * covered: a signature covers the whole message; when none does, good
 * signatures become partial and every detail names what is not covered.
 */
static int
assemble(struct walk *w, struct mlt_result *res, int covered)
{
	int rc = 0;

	res->sigs = w->sigs;
	res->nsigs = w->nsigs;
	res->nencrypted = w->nencrypted;
	w->sigs = NULL;
	w->nsigs = 0;
	res->main = res->nsigs;
	if (res->nsigs > 0 && !covered && w->bound == NULL) {
		char *note = NULL;

		for (size_t i = 0; i < res->nsigs; i++)
			if (res->sigs[i].verdict == POL_V_PASS)
				res->sigs[i].verdict = POL_V_PARTIAL;
		if ((rc = mlt_strcatf(&note, "; not covered by any signature: %s",
		    w->uncovered ? w->uncovered : "part of the message")) != 0)
			return rc;
		/* sigs_note works on the walk's array: lend it back for a moment. */
		w->sigs = res->sigs;
		w->nsigs = res->nsigs;
		rc = sigs_note(w, 0, note);
		w->sigs = NULL;
		w->nsigs = 0;
		free(note);
		if (rc != 0)
			return rc;
	}
	if (res->nsigs > 0) {
		res->main = 0;
		res->verdict = res->sigs[0].verdict;
		for (size_t i = 1; i < res->nsigs; i++) {
			if (pol_verdict_worst(res->verdict, res->sigs[i].verdict) != res->verdict) {
				res->verdict = res->sigs[i].verdict;
				res->main = i;
			}
		}
	}
	if (w->bound != NULL) {
		if (res->nsigs > 0 && res->verdict == POL_V_REVOKED) {
			/* A bound never hides a revocation already seen. */
			rc = mlt_strcatf(&res->detail, "%s; the rest of the message was not checked: %s",
			    res->sigs[res->main].detail ? res->sigs[res->main].detail : "", w->bound);
			return rc;
		}
		res->verdict = POL_V_ERROR;
		res->main = res->nsigs;
		res->detail = w->bound;
		w->bound = NULL;
		return 0;
	}
	if (res->nsigs > 0) {
		res->detail = strdup(res->sigs[res->main].detail ? res->sigs[res->main].detail : "");
	} else if (res->nencrypted > 0) {
		res->verdict = POL_V_ENCRYPTED;
		res->detail = strdup("message is encrypted; its signature, if any, cannot be seen");
	} else if (w->uncovered != NULL && strstr(w->uncovered, "CMS ") != NULL) {
		/* A pkcs7-mime part that holds no signature and no encryption: say what it was. */
		res->verdict = POL_V_NONE;
		rc = mlt_strcatf(&res->detail, "no S/MIME signature; %s", w->uncovered);
		return rc;
	} else {
		res->verdict = POL_V_NONE;
		res->detail = strdup("no S/MIME signature");
	}
	return res->detail ? 0 : kms_fail(KMS_ERR_NOMEM, "out of memory");
}

int
mlt_result_error(const char *authserv_id, const char *detail, struct mlt_result **out)
{
	struct mlt_result *res;
	int rc;

	*out = NULL;
	if ((res = calloc(1, sizeof(*res))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	res->verdict = POL_V_ERROR;
	if ((res->detail = kms_sanitize_new(detail, strlen(detail), MLT_MAX_TEXT)) == NULL) {
		free(res);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	if ((rc = mlt_ar_build(authserv_id, res)) != 0) {
		mlt_result_free(res);
		return rc;
	}
	*out = res;
	return 0;
}

/* The outer Subject fields as a reader sees them (for header protection). */
static int
outer_subjects(struct walk *w, const unsigned char *msg, size_t len)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	size_t n = 0;
	long seen = 0;

	mlt_hdr_begin(&it, msg, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		char *v, **nv;

		if (++seen > w->ctx->limits.max_headers)
			break;
		if (!mlt_field_is(msg, &f, "Subject") || n >= 16)
			continue;
		if ((nv = realloc(w->subjects, (n + 2) * sizeof(*nv))) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		w->subjects = nv;
		nv[n] = NULL;
		if ((v = mlt_field_value(msg, &f, MAX_SUBJECT)) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		nv[n] = subject_norm(v);
		free(v);
		if (nv[n] == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		nv[++n] = NULL;
	}
	return 0;
}

int
mlt_check_message(const struct mlt_check_ctx *ctx, const unsigned char *msg, size_t len,
    struct mlt_result **out)
{
	struct walk w;
	struct mlt_result *res = NULL;
	int rc, covered = 0;

	*out = NULL;
	mlt_smime_init();
	memset(&w, 0, sizeof(w));
	w.ctx = ctx;
	w.now = ctx->now ? ctx->now : time(NULL);
	if ((res = calloc(1, sizeof(*res))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	if (ctx->limits.max_message_size > 0 && len > ctx->limits.max_message_size) {
		char t[128];

		snprintf(t, sizeof(t), "message of %zu bytes is over [milter] max_message_size (%zu): not checked",
		    len, ctx->limits.max_message_size);
		if ((rc = hit_bound(&w, t)) != 0)
			goto out;
	} else {
		if ((rc = mlt_from_addresses(msg, len, ctx->limits.max_headers, &w.from, &w.nfrom_fields)) != 0)
			goto out;
		if (w.nfrom_fields == 1 && w.from[0] != NULL && w.from[1] == NULL &&
		    (res->from = kms_sanitize_new(w.from[0], strlen(w.from[0]), MLT_MAX_TEXT)) == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		if (w.nfrom_fields > 0 &&
		    (rc = mlt_from_display_check(msg, len, ctx->limits.max_headers, w.from, &w.from_note)) != 0)
			goto out;
		if ((rc = outer_subjects(&w, msg, len)) != 0)
			goto out;
		if ((rc = walk_entity(&w, msg, 0, len, 0, &covered)) != 0)
			goto out;
	}
	if ((rc = assemble(&w, res, covered)) != 0)
		goto out;
	if ((rc = mlt_ar_build(ctx->authserv_id, res)) != 0)
		goto out;
	*out = res;
	res = NULL;
out:
	for (size_t i = 0; i < w.nsigs; i++)
		sig_clear(&w.sigs[i]);
	free(w.sigs);
	free(w.bound);
	free(w.from_note);
	free(w.uncovered);
	kms_strv_free(w.subjects);
	kms_strv_free(w.from);
	mlt_result_free(res);
	ERR_clear_error();
	return rc;
}
