/*
 * verdict.c - judge a signer and write the result down.
 *
 * Entry points: mlt_sig_judge (one signer: its chain against the trust
 * anchors for S/MIME signing, revocation of every certificate of the chain
 * from the revocation index, its addresses against From, and the verdict
 * with the most severe finding), mlt_ar_build (the Authentication-Results
 * value, RFC 8601 with the smime method of RFC 7281), and the small text
 * helpers the mail side shares (mlt_strcatf; text is cleaned by
 * kms_sanitize_new, addresses checked by kms_addr_valid, both in common/).
 *
 * OpenSSL checks no CRL here: revocation comes from the index only, which
 * was built from CRLs whose signatures were checked once when loaded.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "milter/cache.h"
#include "milter/milter.h"
#include "milter/smime_int.h"

/* Most signatures written into one Authentication-Results field. */
#define AR_MAX_SIGS 16

int
mlt_strcatf(char **s, const char *fmt, ...)
{
	va_list ap;
	size_t old = *s ? strlen(*s) : 0;
	char tmp[512];
	int n;
	char *ns;

	/* Formatted once when it fits the stack buffer (most do), else measured then formatted. */
	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (ns = realloc(*s, old + (size_t)n + 1)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	if ((size_t)n < sizeof(tmp)) {
		memcpy(ns + old, tmp, (size_t)n + 1);
	} else {
		va_start(ap, fmt);
		vsnprintf(ns + old, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	*s = ns;
	return 0;
}

time_t
mlt_asn1_time(const ASN1_TIME *t)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
		ERR_clear_error();
		return 0;
	}
	return timegm(&tm);
}

const char *
mlt_claim_word(const struct mlt_sig *sig, int clause)
{
	/* Both times have a one-second grain: the same second is neither before nor after. */
	if (sig->signing_time < sig->rev.revoked_at)
		return "before";
	if (sig->signing_time == sig->rev.revoked_at)
		return clause ? "at the time" : "at the time of";
	return "after";
}

time_t
mlt_signing_time(CMS_SignerInfo *si)
{
	int i = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
	X509_ATTRIBUTE *a;
	ASN1_TYPE *t;

	if (i < 0 || (a = CMS_signed_get_attr(si, i)) == NULL || (t = X509_ATTRIBUTE_get0_type(a, 0)) == NULL) {
		ERR_clear_error();
		return 0;
	}
	if (t->type == V_ASN1_UTCTIME)
		return mlt_asn1_time(t->value.utctime);
	if (t->type == V_ASN1_GENERALIZEDTIME)
		return mlt_asn1_time(t->value.generalizedtime);
	return 0;
}

/* One line RFC 2253 text of a name, cleaned and bounded. */
static char *
name_text(const X509_NAME *name)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data = NULL, *s = NULL;
	long n;

	if (b == NULL)
		return NULL;
	if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0 && (n = BIO_get_mem_data(b, &data)) >= 0)
		s = kms_sanitize_new(data ? data : "", (size_t)n, MLT_MAX_TEXT);
	BIO_free(b);
	ERR_clear_error();
	return s;
}

/* Add an address from a certificate to a NULL-terminated list (at most 32). */
static int
addr_add(char ***v, size_t *n, const unsigned char *p, int len)
{
	char **nv;

	if (len <= 0 || memchr(p, '\0', (size_t)len) != NULL || *n >= 32)
		return 0;
	if ((nv = realloc(*v, (*n + 2) * sizeof(**v))) == NULL)
		return KMS_ERR_NOMEM;
	*v = nv;
	if ((nv[*n] = kms_sanitize_new((const char *)p, (size_t)len, MLT_MAX_TEXT)) == NULL)
		return KMS_ERR_NOMEM;
	nv[++*n] = NULL;
	return 0;
}

/* The certificate's addresses: every SAN rfc822Name, else every subject emailAddress. */
static int
cert_addresses(X509 *cert, char ***out)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	X509_NAME *subj = X509_get_subject_name(cert);
	char **v = NULL;
	size_t n = 0;
	int rc = 0;

	*out = NULL;
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && rc == 0; i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);

		if (g->type == GEN_EMAIL)
			rc = addr_add(&v, &n, ASN1_STRING_get0_data(g->d.rfc822Name), ASN1_STRING_length(g->d.rfc822Name));
	}
	GENERAL_NAMES_free(gens);
	for (int i = -1; n == 0 && rc == 0 && subj != NULL &&
	    (i = X509_NAME_get_index_by_NID(subj, NID_pkcs9_emailAddress, i)) >= 0;) {
		ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i));

		rc = addr_add(&v, &n, ASN1_STRING_get0_data(d), ASN1_STRING_length(d));
	}
	ERR_clear_error();
	if (rc == 0 && v == NULL && (v = calloc(1, sizeof(*v))) == NULL)
		rc = KMS_ERR_NOMEM;
	if (rc != 0) {
		kms_strv_free(v);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	*out = v;
	return 0;
}

struct chain_state {
	int untrusted, expired;
	int err;                        /* first untrusted error */
	int exp_depth;
	time_t exp_when;
	int not_yet;
};

static int
chain_cb(int ok, X509_STORE_CTX *sctx)
{
	struct chain_state *cs = X509_STORE_CTX_get_app_data(sctx);
	int err;

	if (ok || cs == NULL)
		return ok;
	err = X509_STORE_CTX_get_error(sctx);
	if (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID) {
		X509 *c = X509_STORE_CTX_get_current_cert(sctx);

		if (!cs->expired) {
			cs->expired = 1;
			cs->exp_depth = X509_STORE_CTX_get_error_depth(sctx);
			cs->not_yet = err == X509_V_ERR_CERT_NOT_YET_VALID;
			cs->exp_when = c ? mlt_asn1_time(cs->not_yet ? X509_get0_notBefore(c) : X509_get0_notAfter(c)) : 0;
		}
	} else if (!cs->untrusted) {
		cs->untrusted = 1;
		cs->err = err;
	}
	/* Go on: every finding is wanted, and the chain for revocation. */
	return 1;
}

/* Build and check the chain; *chain get1 (at least the certificate itself). */
static int
check_chain(const struct mlt_check_ctx *ctx, time_t now, X509 *cert, STACK_OF(X509) *untrusted,
    struct chain_state *cs, STACK_OF(X509) **chain)
{
	X509_STORE_CTX *sctx = NULL;
	STACK_OF(X509) *all = NULL;
	int rc = 0;

	*chain = NULL;
	memset(cs, 0, sizeof(*cs));
	/* The message's certificates first, then the configured intermediates. */
	if (ctx->inter != NULL && sk_X509_num(ctx->inter) > 0) {
		if ((all = untrusted ? sk_X509_dup(untrusted) : sk_X509_new_null()) == NULL)
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		for (int i = 0; i < sk_X509_num(ctx->inter); i++) {
			if (!sk_X509_push(all, sk_X509_value(ctx->inter, i))) {
				sk_X509_free(all);
				return kms_fail(KMS_ERR_NOMEM, "out of memory");
			}
		}
		untrusted = all;
	}
	if (ctx->trust == NULL || (sctx = X509_STORE_CTX_new()) == NULL ||
	    X509_STORE_CTX_init(sctx, ctx->trust, cert, untrusted) != 1) {
		cs->untrusted = 1;
		cs->err = X509_V_ERR_UNSPECIFIED;
		goto fallback;
	}
	X509_STORE_CTX_set_purpose(sctx, X509_PURPOSE_SMIME_SIGN);
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(sctx), now);
	/* Revocation is the index's business, never a CRL in the store. */
	X509_VERIFY_PARAM_clear_flags(X509_STORE_CTX_get0_param(sctx),
	    X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
	X509_STORE_CTX_set_app_data(sctx, cs);
	X509_STORE_CTX_set_verify_cb(sctx, chain_cb);
	if (X509_verify_cert(sctx) <= 0 && !cs->untrusted && !cs->expired) {
		cs->untrusted = 1;
		cs->err = X509_STORE_CTX_get_error(sctx);
	}
	*chain = X509_STORE_CTX_get1_chain(sctx);
fallback:
	ERR_clear_error();
	X509_STORE_CTX_free(sctx);
	sk_X509_free(all);
	if (*chain == NULL || sk_X509_num(*chain) == 0) {
		sk_X509_pop_free(*chain, X509_free);
		if ((*chain = sk_X509_new_null()) == NULL || !sk_X509_push(*chain, cert)) {
			sk_X509_free(*chain);
			*chain = NULL;
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		}
		X509_up_ref(cert);
	}
	return rc;
}

/* Why the index has no status for c (ca_revidx_check said -1). */
static const char *
unknown_why(const struct ca_revidx *rev, X509 *c, const struct ca_rev_info *info)
{
	int st = ca_revidx_issuer_state(rev, X509_get_issuer_name(c));

	if (st < 0)
		return "no CRL of its issuer is loaded";
	if (st > 0 || info->stale)
		return "the CRL of its issuer is past its next update";
	return "the CRLs of its issuer loaded here do not cover it";
}

/*
 * Look every certificate of chain up in the index (a self-signed root is
 * trusted or not; no CRL speaks for it).  A certificate no usable CRL
 * covers makes the status unknown; for a trusted chain the fetcher hears
 * of it (ctx->rev_unknown), and may hand back a newer index at once.
 */
static void
check_revocation(const struct mlt_check_ctx *ctx, STACK_OF(X509) *chain, int trusted, struct mlt_sig *sig)
{
	const struct ca_revidx *rev = ctx->rev;
	struct ca_revidx *fresh = NULL;

	if (rev == NULL)
		return;
	for (int i = 0; i < sk_X509_num(chain); i++) {
		X509 *c = sk_X509_value(chain, i);
		struct ca_rev_info info;
		int r;

		if (i > 0 && X509_check_issued(c, c) == X509_V_OK)
			continue;
		r = ca_revidx_check(rev, c, &info);
		if (r < 0 && trusted && ctx->rev_unknown != NULL) {
			time_t since = 0;
			struct ca_revidx *n = ctx->rev_unknown(ctx->rev_unknown_arg, chain, i, &since);

			if (n != NULL) {
				ca_revidx_unref(fresh);
				rev = fresh = n;
				r = ca_revidx_check(rev, c, &info);
			}
			if (r < 0 && (sig->rev_pending_since == 0 || (since != 0 && since < sig->rev_pending_since)))
				sig->rev_pending_since = since;
		}
		if (info.stale)
			sig->stale = 1;
		/* Unknown counts for a trusted chain only: an untrusted one is judged as such. */
		if (r < 0 && trusted && !sig->rev_unknown) {
			sig->rev_unknown = 1;
			sig->rev_unknown_ca = i > 0;
			sig->rev_unknown_why = unknown_why(rev, c, &info);
		}
		if (r == 1 && !sig->revoked) {
			sig->revoked = 1;
			sig->revoked_ca = i > 0;
			sig->rev = info;
		}
	}
	ca_revidx_unref(fresh);
	ERR_clear_error();
}

static const char *
tstr(time_t t, char *buf, size_t len)
{
	if (t == 0)
		return "an unknown date";
	return kms_time_format(t, buf, len);
}

/*
 * From against the signer's addresses: *mismatch says what is wrong (NULL
 * when nothing is), and sig->signer is the address the result names.
 */
static int
from_check(const struct mlt_from *from, char **addrs, struct mlt_sig *sig, char **mismatch)
{
	int rc = 0;

	if (from->nfields != 1)
		rc = mlt_strcatf(mismatch, from->nfields == 0 ? "message has no From field" :
		    "message has %zu From fields", from->nfields);
	else if (from->addrs == NULL || from->addrs[0] == NULL)
		rc = mlt_strcatf(mismatch, "From has no address");
	else if (addrs[0] == NULL)
		rc = mlt_strcatf(mismatch, "signer certificate carries no address");
	else {
		for (size_t i = 0; from->addrs[i] != NULL && rc == 0; i++) {
			const char *f = from->addrs[i];
			size_t j;

			for (j = 0; addrs[j] != NULL; j++)
				if (strcasecmp(addrs[j], f) == 0)
					break;
			if (addrs[j] == NULL) {
				char *clean = kms_sanitize_new(f, strlen(f), 80);

				if (clean == NULL)
					return kms_fail(KMS_ERR_NOMEM, "out of memory");
				rc = mlt_strcatf(mismatch, "From %s is not an address of the signer (%s)", clean, addrs[0]);
				free(clean);
				break;
			}
			if (sig->signer == NULL && (sig->signer = strdup(addrs[j])) == NULL)
				return kms_fail(KMS_ERR_NOMEM, "out of memory");
		}
	}
	if (rc != 0)
		return rc;
	/* The address matches, but the name the reader sees is another address. */
	if (*mismatch == NULL && from->note != NULL && (rc = mlt_strcatf(mismatch, "%s", from->note)) != 0)
		return rc;
	if (*mismatch != NULL) {
		free(sig->signer);
		sig->signer = NULL;
	}
	if (sig->signer == NULL && addrs[0] != NULL && (sig->signer = strdup(addrs[0])) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	return 0;
}

/* The detail text of a judged signature (verdict in sig->verdict). */
static int
judge_detail(const struct mlt_sig *sig, const struct chain_state *cs, const char *sig_why, const char *mismatch,
    char **d)
{
	const char *who = sig->signer ? sig->signer : "the signer";
	char t1[32], t2[32];
	int rc;

	switch (sig->verdict) {
	case POL_V_FAIL:
		rc = mlt_strcatf(d, "%s; signer %s", sig_why ? sig_why : "signature does not verify", who);
		break;
	case POL_V_REVOKED:
		rc = mlt_strcatf(d, "%scertificate of %s (serial %s) revoked on %s, reason %s",
		    sig->revoked_ca ? "a CA certificate in the chain of the " : "", who, sig->serial,
		    tstr(sig->rev.revoked_at, t1, sizeof(t1)), ca_reason_name(sig->rev.reason));
		if (rc == 0 && sig->signing_time != 0)
			rc = mlt_strcatf(d, "; claims to have been signed on %s, %s the revocation",
			    tstr(sig->signing_time, t2, sizeof(t2)), mlt_claim_word(sig, 0));
		break;
	case POL_V_UNTRUSTED:
		rc = mlt_strcatf(d, "certificate of %s is not from a trusted CA for S/MIME signing: %s", who,
		    X509_verify_cert_error_string(cs->err));
		break;
	case POL_V_EXPIRED:
		rc = mlt_strcatf(d, "%s of %s %s %s", cs->exp_depth > 0 ? "a CA certificate in the chain" :
		    "certificate", who, cs->not_yet ? "is not valid before" : "expired on",
		    tstr(cs->exp_when, t1, sizeof(t1)));
		break;
	case POL_V_MISMATCH:
		rc = mlt_strcatf(d, "%s", mismatch);
		break;
	default:
		rc = mlt_strcatf(d, "signed by %s", who);
		break;
	}
	if (rc == 0 && sig->rev_unknown && !sig->revoked && (sig->verdict == POL_V_PASS || sig->verdict == POL_V_MISMATCH))
		rc = mlt_strcatf(d, "; revocation unknown: no current CRL covers %s (%s%s)",
		    sig->rev_unknown_ca ? "a CA certificate of the chain" : "the certificate",
		    sig->rev_unknown_why ? sig->rev_unknown_why : "no usable CRL",
		    sig->rev_pending_since ? "; its distribution point is being fetched" : "");
	if (rc == 0 && sig->stale)
		rc = mlt_strcatf(d, "; revocation data is stale (the CRL is past its next update)");
	return rc;
}

int
mlt_sig_judge(const struct mlt_check_ctx *ctx, time_t now, const struct mlt_signed_by *by,
    const struct mlt_from *from, struct mlt_sig *sig)
{
	STACK_OF(X509) *chain = NULL;
	struct chain_state cs;
	char **addrs = NULL, *d = NULL, *mismatch = NULL;
	enum pol_verdict v = POL_V_PASS;
	unsigned char ckey[MLT_HASH_LEN];
	int rc = 0, cached;

	if (by->cert == NULL) {
		sig->verdict = by->sig_ok ? POL_V_UNTRUSTED : POL_V_FAIL;
		if (by->sig_ok)
			rc = mlt_strcatf(&d, "signer certificate neither in the message nor known here");
		else
			rc = mlt_strcatf(&d, "%s", by->sig_why ? by->sig_why : "signature does not verify");
		goto out;
	}
	if ((sig->serial = ca_serial_hex(X509_get0_serialNumber(by->cert))) == NULL ||
	    (sig->issuer = name_text(X509_get_issuer_name(by->cert))) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (strlen(sig->serial) > 64)
		sig->serial[64] = '\0';     /* RFC 5280: at most 20 octets; a longer one is cut */
	sig->not_after = mlt_asn1_time(X509_get0_notAfter(by->cert));
	if ((rc = cert_addresses(by->cert, &addrs)) != 0 || (rc = from_check(from, addrs, sig, &mismatch)) != 0)
		goto out;

	/* The chain from the cache when this signer was seen under these anchors (cache.h). */
	if ((cached = mlt_chaincache_get(ctx, now, by->cert, by->untrusted, &cs, sizeof(cs), &chain, ckey)) != 1) {
		if ((rc = check_chain(ctx, now, by->cert, by->untrusted, &cs, &chain)) != 0)
			goto out;
		if (cached == 0)
			mlt_chaincache_put(ctx, now, ckey, &cs, sizeof(cs), chain);
	}
	check_revocation(ctx, chain, !cs.untrusted && !cs.expired, sig);

	if (mismatch != NULL)
		v = pol_verdict_worst(v, POL_V_MISMATCH);
	if (cs.expired)
		v = pol_verdict_worst(v, POL_V_EXPIRED);
	if (cs.untrusted)
		v = pol_verdict_worst(v, POL_V_UNTRUSTED);
	if (sig->revoked)
		v = pol_verdict_worst(v, POL_V_REVOKED);
	if (!by->sig_ok)
		v = POL_V_FAIL;
	sig->verdict = v;
	rc = judge_detail(sig, &cs, by->sig_why, mismatch, &d);
out:
	if (rc == 0 && d != NULL) {
		if ((sig->detail = kms_sanitize_new(d, strlen(d), 2 * MLT_MAX_TEXT)) == NULL)
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	free(d);
	free(mismatch);
	kms_strv_free(addrs);
	sk_X509_pop_free(chain, X509_free);
	ERR_clear_error();
	return rc;
}

/* ------------------------------------------------- Authentication-Results */

/* Append s as an RFC 2045 quoted-string. */
static int
add_quoted(char **out, const char *s)
{
	int rc = mlt_strcatf(out, "\"");

	for (const char *p = s; rc == 0 && *p; p++) {
		if (*p == '"' || *p == '\\')
			rc = mlt_strcatf(out, "\\%c", *p);
		else
			rc = mlt_strcatf(out, "%c", *p);
	}
	return rc ? rc : mlt_strcatf(out, "\"");
}

/* Append "(verdict: text)" with the characters a comment may not hold replaced. */
static int
add_comment(char **out, enum pol_verdict v, const char *text)
{
	char *c = kms_sanitize_new(text ? text : "", text ? strlen(text) : 0, 2 * MLT_MAX_TEXT);
	int rc;

	if (c == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	for (char *p = c; *p; p++) {
		if (*p == '(')
			*p = '[';
		else if (*p == ')')
			*p = ']';
		else if (*p == '\\')
			*p = '/';
	}
	rc = mlt_strcatf(out, " (%s: %s)", pol_verdict_name(v), c);
	free(c);
	return rc;
}

int
mlt_ar_build(const char *authserv_id, struct mlt_result *res)
{
	char *s = NULL, *id;
	int rc;

	free(res->ar_value);
	res->ar_value = NULL;
	if (res->verdict == POL_V_NONE)
		return 0;
	if ((id = kms_sanitize_new(authserv_id ? authserv_id : "localhost", authserv_id ? strlen(authserv_id) : 9,
	    MLT_MAX_TEXT)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	rc = mlt_strcatf(&s, "%s", id);
	free(id);
	if (rc == 0 && (res->nsigs == 0 || res->verdict == POL_V_ERROR)) {
		rc = mlt_strcatf(&s, ";\n\tsmime=%s", pol_verdict_ar_result(res->verdict));
		if (rc == 0)
			rc = add_comment(&s, res->verdict, res->detail);
	}
	/*
	 * One result per signature (RFC 7281 allows several), in message
	 * order, at most AR_MAX_SIGS; the one that decided the verdict is
	 * always among them.
	 */
	for (size_t i = 0, shown = 0; rc == 0 && res->verdict != POL_V_ERROR && i < res->nsigs; i++) {
		const struct mlt_sig *g = &res->sigs[i];
		int main_left = res->main < res->nsigs && res->main > i;

		if (i != res->main && shown + (main_left ? 1 : 0) >= AR_MAX_SIGS)
			continue;
		shown++;
		rc = mlt_strcatf(&s, ";\n\tsmime=%s", pol_verdict_ar_result(g->verdict));
		if (rc == 0)
			rc = add_comment(&s, g->verdict, g->detail);
		if (rc == 0 && g->signer != NULL) {
			rc = mlt_strcatf(&s, "\n\tbody.smime-identifier=");
			if (rc == 0)
				rc = kms_addr_valid(g->signer) ? mlt_strcatf(&s, "%s", g->signer) : add_quoted(&s, g->signer);
		}
		if (rc == 0 && g->part != NULL && g->part[0] != '\0')
			rc = mlt_strcatf(&s, "\n\tbody.smime-part=%s", g->part);
		if (rc == 0 && g->serial != NULL)
			rc = mlt_strcatf(&s, "\n\tbody.smime-serial=%s", g->serial);
		if (rc == 0 && g->issuer != NULL) {
			rc = mlt_strcatf(&s, "\n\tbody.smime-issuer=");
			if (rc == 0)
				rc = add_quoted(&s, g->issuer);
		}
	}
	if (rc != 0) {
		free(s);
		return rc;
	}
	res->ar_value = s;
	return 0;
}
