/*
 * smime_int.h - what smime.c (finding and verifying signatures) and
 * verdict.c (judging the signer's certificate, the result, the
 * Authentication-Results text) share.  Internal to milter/.
 */
#ifndef MLT_SMIME_INT_H
#define MLT_SMIME_INT_H

#include <openssl/cms.h>
#include <openssl/x509.h>

#include "milter/milter.h"

/* Longest issuer, address and detail text we keep (longer ones are cut with "..."). */
#define MLT_MAX_TEXT 256

/*
 * Judge one signer whose signature has been checked (sig_ok: 1 verified,
 * 0 broken, with why in sig_why): its chain against ctx->trust for S/MIME
 * signing at now, revocation of every chain certificate in ctx->rev, its
 * addresses against From (its note, when not NULL, says why From
 * misleads anyway: a display name showing another address), and fill sig
 * (verdict, detail, signer, serial, issuer, revocation).  0 or
 * KMS_ERR_NOMEM.
 */
/* What the signature check found, for mlt_sig_judge. */
struct mlt_signed_by {
	X509 *cert;                     /* the signer's certificate, or NULL (not found) */
	STACK_OF(X509) *untrusted;      /* the certificates the message carried */
	int sig_ok;                     /* the signature verified */
	const char *sig_why;            /* why not, when it did not */
};
/* The message's From, for mlt_sig_judge. */
struct mlt_from {
	char *const *addrs;             /* the addresses of the From field */
	size_t nfields;                 /* how many From fields */
	const char *note;               /* when not NULL: why From misleads anyway */
};
int mlt_sig_judge(const struct mlt_check_ctx *ctx, time_t now, const struct mlt_signed_by *by,
    const struct mlt_from *from, struct mlt_sig *sig);

/* The signingTime attribute of si, 0 if none or unreadable. */
time_t mlt_signing_time(CMS_SignerInfo *si);
/*
 * "before", "at the time of" or "after", for the signing-time claim of sig
 * followed by a noun ("... the revocation"); with clause set, followed by
 * a clause: "at the time" ("... the certificate was revoked").
 */
const char *mlt_claim_word(const struct mlt_sig *sig, int clause);

/* An ASN1_TIME as time_t, 0 if unreadable. */
time_t mlt_asn1_time(const ASN1_TIME *t);

/* Build res->ar_value from res (NULL for verdict none).  0 or KMS_ERR_NOMEM. */
int mlt_ar_build(const char *authserv_id, struct mlt_result *res);

/* Append printf-style text to a malloc'd string (*s may be NULL). 0 or KMS_ERR_NOMEM. */
int mlt_strcatf(char **s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* MLT_SMIME_INT_H */
