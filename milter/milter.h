/*
 * milter.h - the public header of libkmsmilter, the mail path as a
 * library: finding and verifying S/MIME signatures, deciding what the
 * recipient sees, the libmilter callbacks and `kmsd -t`.
 *
 * The core does not touch kmsd's globals: the caller describes everything
 * a check needs in a struct mlt_check_ctx (trust anchors, revocation
 * index, certificate lookup, bounds, authserv-id, the time), calls
 * mlt_check_message() over the raw message bytes, then mlt_rewrite_plan()
 * for the header edits, the new body and the reply the policy asks for.
 * The milter callbacks and `kmsd -t` both go through these two calls.
 *
 * Raw message bytes are what the MTA sent: header fields, an empty line,
 * the body, lines ending in CRLF.  mlt_canon_crlf() turns a message file
 * with bare LF line ends into that form (what SMTP transport does to it).
 */
#ifndef MLT_MILTER_H
#define MLT_MILTER_H

#include <stddef.h>
#include <time.h>

#include <openssl/x509.h>

#include "ca/ca.h"
#include "common/common.h"
#include "policy/policy.h"

/* ================================================================ checking */

/*
 * Find a certificate that a signature names but does not carry (issuer and
 * serial, or subject key identifier; either may be NULL).  0 with *out
 * (get1), KMS_ERR_NOTFOUND, or another error.  kmsd passes a lookup in
 * its store.
 */
typedef int (*mlt_find_cert_fn)(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const ASN1_OCTET_STRING *skid, X509 **out);

struct mlt_limits {
	size_t max_message_size;        /* larger: verdict error, not parsed */
	long max_headers;               /* header fields per header block */
	long max_parts;                 /* MIME entities per message */
	long max_depth;                 /* MIME nesting */
};

/*
 * The revocation status of chain[depth] (a trusted chain) is unknown: no
 * usable CRL covers it.  The daemon hands the chain to its background
 * fetcher without waiting and returns NULL; `kmsd -t` may load CRLs at
 * once and return the newer index (get1) to use instead.  *since: when a
 * fetch for this certificate's CRL was first asked for (0: none pending).
 */
typedef struct ca_revidx *(*mlt_rev_unknown_fn)(void *arg, STACK_OF(X509) *chain, int depth, time_t *since);

struct mlt_check_ctx {
	X509_STORE *trust;              /* borrowed: trust anchors (may be empty, not NULL) */
	/*
	 * borrowed: configured intermediates ([milter] intermediates_file),
	 * used to build chains beside the certificates a message carries;
	 * NULL when none.  Part of the trust generation below.
	 */
	STACK_OF(X509) *inter;
	const struct ca_revidx *rev;    /* borrowed: revocation index, NULL when none is loaded */
	mlt_rev_unknown_fn rev_unknown; /* NULL: nobody to tell */
	void *rev_unknown_arg;
	mlt_find_cert_fn find_cert;     /* NULL: only certificates in the message */
	void *find_cert_arg;
	struct mlt_limits limits;
	const char *authserv_id;        /* for Authentication-Results */
	time_t now;                     /* verification time; 0 means time(NULL) */
	/*
	 * Generation of trust (mlt_generation_next() when the store and
	 * the intermediates were made; new ones, a new number): chain results are cached per
	 * generation.  0: nothing is cached for this context.
	 */
	unsigned long trust_gen;
};

/* A new generation number, larger than every one handed out before (thread-safe). */
unsigned long mlt_generation_next(void);

/* Fill limits from [milter] of cfg. */
void mlt_limits_from_config(const struct kms_config *cfg, struct mlt_limits *lim);

enum mlt_sig_kind {
	MLT_SIG_DETACHED = 0,           /* multipart/signed */
	MLT_SIG_OPAQUE,                 /* application/pkcs7-mime signed-data */
};

/* One signer of one signed entity. */
struct mlt_sig {
	enum pol_verdict verdict;       /* fail .. pass */
	enum mlt_sig_kind kind;
	char *part;                     /* where the signed entity sits: "1", "1.2" ("" for the whole message) */
	char *detail;                   /* one line, printable ASCII, for logs and comments */
	char *signer;                   /* the address that matched From, else the certificate's first; may be NULL */
	char *serial;                   /* signer certificate serial, lowercase hex; NULL without certificate */
	char *issuer;                   /* its issuer, RFC 2253 one line; NULL without certificate */
	time_t signing_time;            /* signingTime attribute (a claim), 0 if absent */
	time_t not_after;               /* signer certificate's notAfter, 0 unknown */
	int revoked;                    /* 1: info below is set */
	int revoked_ca;                 /* 1: the revoked certificate is a CA in the chain, not the signer's */
	struct ca_rev_info rev;
	int stale;                      /* revocation data for the chain is past its nextUpdate */
	int rev_unknown;                /* no usable CRL covers a certificate of the (trusted) chain */
	int rev_unknown_ca;             /* ... and that certificate is a CA's, not the signer's */
	const char *rev_unknown_why;    /* ... why, a static string ("no CRL of its issuer is loaded"...) */
	time_t rev_pending_since;       /* when the fetch of its CRL was first asked for; 0: none pending */
};

struct mlt_result {
	enum pol_verdict verdict;       /* the most severe over all signatures, else encrypted/none/error */
	char *detail;                   /* one line, printable ASCII */
	struct mlt_sig *sigs;           /* every signer found, in message order */
	size_t nsigs;
	size_t main;                    /* index of the signature that decided the verdict (nsigs: none) */
	int nencrypted;                 /* encrypted entities found */
	char *from;                     /* the From address (lowercase as written), NULL if none/several */
	/*
	 * The Authentication-Results value: "authserv-id;\n\tsmime=... ...",
	 * folded with "\n\t" (libmilter's convention).  NULL for verdict
	 * none: unsigned mail gets no header.
	 */
	char *ar_value;
};

void mlt_result_free(struct mlt_result *res);

/*
 * Check every S/MIME entity of the raw message msg (len bytes, CRLF line
 * ends).  0 with *out for every outcome that depends on the message,
 * including malformed input and messages over the bounds (verdict error,
 * detail says which bound); a negative KMS_ERR_* only for internal trouble
 * (memory), which the caller answers with [policy] on_error.
 */
int mlt_check_message(const struct mlt_check_ctx *ctx, const unsigned char *msg, size_t len,
    struct mlt_result **out);

/*
 * A result for a message that was not checked (over max_message_size,
 * collection failed): verdict error with detail, and its
 * Authentication-Results value.  0 or KMS_ERR_NOMEM.
 */
int mlt_result_error(const char *authserv_id, const char *detail, struct mlt_result **out);

/* Initialise GMime once per process (thread-safe; called by the entry points below too). */
void mlt_smime_init(void);

/*
 * Copy buf with every bare LF turned into CRLF (a message file as SMTP
 * would carry it).  *out malloc'd.
 */
int mlt_canon_crlf(const unsigned char *buf, size_t len, unsigned char **out, size_t *outlen);

/* ================================================================ rewriting */

enum mlt_hdr_op {
	MLT_HDR_DELETE = 0,             /* the index-th field called name (1-based, case-insensitive) */
	MLT_HDR_CHANGE,                 /* replace the index-th field's value */
	MLT_HDR_ADD,                    /* append a new field */
	MLT_HDR_INSERT,                 /* a new field at the top of the header (smfi_insheader index 0) */
};

struct mlt_hdr_edit {
	enum mlt_hdr_op op;
	char *name;
	int index;                      /* DELETE, CHANGE */
	char *value;                    /* CHANGE, ADD: no leading space, folds as "\n\t" */
};

struct mlt_rewrite {
	int action;                     /* enum kms_action decided by [policy] */
	enum pol_verdict verdict;
	/*
	 * Header edits, to be applied in this order (deletions of the same
	 * name come highest index first, so earlier ones never shift later
	 * ones).
	 */
	struct mlt_hdr_edit *edits;
	size_t nedits;
	unsigned char *body;            /* the new body (CRLF), NULL: body unchanged */
	size_t body_len;
	/* REJECT and TEMPFAIL: SMTP reply ("550", "5.7.1", text without CR, LF or '%'). */
	const char *rcode;
	const char *xcode;
	char *reply;
	char *quarantine_reason;        /* QUARANTINE */
};

void mlt_rewrite_free(struct mlt_rewrite *rw);

/*
 * Decide what to do with a checked message: the action [policy] names for
 * res->verdict (pol_decide), the removal of forged Authentication-Results
 * (those carrying our authserv-id) and of X-KMS-Warning fields, the new
 * Authentication-Results, and for WARN on revoked the subject tag, the
 * X-KMS-Warning field and the multipart/mixed wrapper with the notice
 * from [policy] notice.  msg is the same raw message that was checked.
 * res may be NULL for an internal error (action [policy] on_error, no
 * edits).  *out is the caller's (mlt_rewrite_free).
 */
int mlt_rewrite_plan(const struct kms_config *cfg, const char *authserv_id, const struct mlt_result *res,
    const unsigned char *msg, size_t len, struct mlt_rewrite **out);

/*
 * Apply the edits and new body to msg the way an MTA does (for `kmsd -t`
 * and the tests): deleted fields go, changed ones keep their place, added
 * ones come last; values are written as "Name: value" with CRLF folds.
 * *out malloc'd.
 */
int mlt_rewrite_apply(const unsigned char *msg, size_t len, const struct mlt_rewrite *rw,
    unsigned char **out, size_t *outlen);

/*
 * Does the Authentication-Results value v (as written, may be folded)
 * carry authserv_id (token after any comments, case-insensitive, quoted
 * or not)?  1 or 0.  A value whose leading comments nest deeper than 64
 * is 1: it hides its authserv-id, and is removed like a forged one.
 */
int mlt_ar_is_ours(const char *v, size_t vlen, const char *authserv_id);

/*
 * Expand the [policy] notice template: %{signer} %{serial} %{revoked_at}
 * %{reason} %{signed_claim}; an unknown %{name} and a lone % stay as
 * written; values are not expanded again.  *out malloc'd (LF line ends).
 */
int mlt_notice_expand(const char *tmpl, const struct mlt_sig *sig, char **out);

/* ========================================================== message buffer */

/*
 * A message as it arrives through the milter: kept in memory up to
 * max_memory bytes, then in an unlinked temp file in tempdir (created
 * O_TMPFILE, mode 0600).  Bytes past max_size are counted but not kept.
 */
struct mlt_msgbuf;

int mlt_msgbuf_new(size_t max_memory, size_t max_size, const char *tempdir, struct mlt_msgbuf **out);
/* Append n bytes.  0, or KMS_ERR_IO (temp file) / KMS_ERR_NOMEM; over max_size is not an error. */
int mlt_msgbuf_append(struct mlt_msgbuf *mb, const void *p, size_t n);
/*
 * The size the sender declared (ESMTP SIZE, a hint only: a lie costs
 * nothing but this): room for it is taken at once, or, past max_memory,
 * the temp file is opened before the first byte, so that a large message
 * is not grown and copied in memory first.  0 or an error from the spill.
 */
int mlt_msgbuf_expect(struct mlt_msgbuf *mb, size_t declared);
/* Append a header field from libmilter: "name:" value CRLF, lone LF made CRLF; lead_space adds " ". */
int mlt_msgbuf_add_header(struct mlt_msgbuf *mb, const char *name, const char *value, int lead_space);
/* Bytes appended in all, kept or not. */
size_t mlt_msgbuf_total(const struct mlt_msgbuf *mb);
/* Did the message outgrow max_size?  Did it spill to a file? */
int mlt_msgbuf_too_big(const struct mlt_msgbuf *mb);
int mlt_msgbuf_spilled(const struct mlt_msgbuf *mb);
/*
 * The kept bytes, contiguous (the file is mapped read-only): valid until
 * mlt_msgbuf_free.  0 or KMS_ERR_IO.
 */
int mlt_msgbuf_data(struct mlt_msgbuf *mb, const unsigned char **data, size_t *len);
/* Free memory, unmap and close the file (NULL is fine). */
void mlt_msgbuf_free(struct mlt_msgbuf *mb);

/* ================================================================= kmsd */

/*
 * What the callbacks ask of the program that hosts them (kmsd), so that
 * the milter library never reaches into the daemon's state.
 *
 * settings_get takes a reference to the settings in force and fills view
 * (valid until settings_put of the handle it returns; NULL when out of
 * memory).  A connection keeps one reference from its first callback to
 * close, so a reload never changes a message half-way.  revidx_get gives
 * the current revocation index (get1; NULL when none is loaded), taken
 * again for every message so that a revocation counts at once.
 * find_cert looks up a certificate a signature names but does not carry.
 */
struct mlt_view {
	const struct kms_config *cfg;
	X509_STORE *trust;
	STACK_OF(X509) *inter;          /* configured intermediates, NULL when none */
	unsigned long trust_gen;        /* mlt_generation_next() of trust and inter; 0: no caching */
};

struct mlt_host {
	void *(*settings_get)(struct mlt_view *view);
	void (*settings_put)(void *handle);
	struct ca_revidx *(*revidx_get)(void);
	mlt_find_cert_fn find_cert;
	void *find_cert_arg;
	mlt_rev_unknown_fn rev_unknown;         /* NULL: nobody to tell */
	void *rev_unknown_arg;
};

/*
 * Register the milter with libmilter (smfi_register): name "kmsd", the
 * flags SMFIF_ADDHDRS|SMFIF_CHGHDRS|SMFIF_CHGBODY|SMFIF_QUARANTINE.  The
 * caller then runs smfi_setconn/smfi_opensocket/smfi_main.  host is
 * borrowed and must outlive the milter.  0 or KMS_ERR_STATE.
 */
int mlt_milter_register(const struct mlt_host *host);

/*
 * `kmsd -t [-c FILE] [--trust PEM]... [--crl FILE]... MESSAGE...`: check
 * message files offline with the same code, print per file
 * "FILE: smime=<result> (<verdict>: <detail>)" and the header fields it
 * would add.  Returns the exit status: 0 when every file was read, 1 if
 * one could not be, 2 on a usage or set-up error.
 */
int mlt_offline_main(int argc, char **argv);

#endif /* MLT_MILTER_H */
