/*
 * crlcheck.c - validating a CRL of any CA, ours or another organisation's,
 * as RFC 5280 section 6.3.3 says, once, before its entries go into the
 * revocation index.
 *
 * Entry points: ca_crl_validate() (one CRL against candidate signers that
 * the caller has already validated), ca_crl_validate_chain() (the same,
 * the candidates being trust anchors and intermediates that are validated
 * here up to an anchor), ca_crl_meta_clear(), ca_cert_crl_urls(),
 * ca_cert_delta_urls() and ca_crl_delta_urls() (Freshest CRL pointers).
 *
 * What makes a CRL unusable: no candidate whose subject is the CRL issuer
 * (and whose subject key identifier is the CRL's authority key identifier
 * when both are present); a signer whose keyUsage lacks cRLSign; a
 * signature that does not verify; a critical extension, on the CRL or on
 * an entry, that we do not process; an issuing distribution point that
 * covers only attribute certificates; a certificateIssuer entry extension
 * in a CRL that is not indirect, or one we cannot read; a thisUpdate in
 * the future.  A CRL
 * past its nextUpdate is valid but expired (KMS_ERR_EXPIRED, meta filled):
 * its entries still say "revoked", but it no longer establishes that an
 * unlisted certificate is good.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

/* Tolerated clock skew for thisUpdate. */
#define CRL_SKEW 300
/* Most distribution point names kept from one IDP or one certificate. */
#define MAX_DP_NAMES 8
/* Longest distribution point URI kept. */
#define MAX_DP_URI 1024

void
ca_crl_meta_clear(struct ca_crl_meta *m)
{
	if (m == NULL)
		return;
	kms_strv_free(m->dp_names);
	memset(m, 0, sizeof(*m));
}

static int
crl_ext_known(int nid)
{
	return nid == NID_crl_number || nid == NID_authority_key_identifier || nid == NID_delta_crl ||
	    nid == NID_issuing_distribution_point || nid == NID_freshest_crl || nid == NID_info_access;
}

static int
entry_ext_known(int nid)
{
	return nid == NID_crl_reason || nid == NID_invalidity_date || nid == NID_certificate_issuer ||
	    nid == NID_hold_instruction_code;
}

/* Append the URIs of a distribution point name (fullName only) to a NULL-terminated list. */
static int
add_uris(const DIST_POINT_NAME *dpn, char ***v, size_t *n)
{
	if (dpn == NULL || dpn->type != 0 || dpn->name.fullname == NULL)
		return 0;
	for (int i = 0; i < sk_GENERAL_NAME_num(dpn->name.fullname); i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(dpn->name.fullname, i);
		const unsigned char *p;
		int len;
		char **nv;

		if (g->type != GEN_URI || *n >= MAX_DP_NAMES)
			continue;
		p = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
		len = ASN1_STRING_length(g->d.uniformResourceIdentifier);
		if (p == NULL || len <= 0 || len > MAX_DP_URI || memchr(p, '\0', (size_t)len) != NULL)
			continue;
		if ((nv = realloc(*v, (*n + 2) * sizeof(*nv))) == NULL)
			return KMS_ERR_NOMEM;
		*v = nv;
		if ((nv[*n] = strndup((const char *)p, (size_t)len)) == NULL)
			return KMS_ERR_NOMEM;
		nv[++*n] = NULL;
	}
	return 0;
}

static int
scheme_wanted(const char *url, int schemes)
{
	if (schemes == 0)
		return 1;
	if ((schemes & CA_URL_HTTP) && strncasecmp(url, "http://", 7) == 0)
		return 1;
	if ((schemes & CA_URL_LDAP) && (strncasecmp(url, "ldap://", 7) == 0 || strncasecmp(url, "ldaps://", 8) == 0))
		return 1;
	return 0;
}

/* The URIs of distribution points that give the whole status, of the schemes asked for. */
static int
dps_urls(CRL_DIST_POINTS *dps, int schemes, char ***out)
{
	char **v = NULL;
	size_t n = 0, o = 0;
	int rc = 0;

	*out = NULL;
	for (int i = 0; rc == 0 && i < sk_DIST_POINT_num(dps); i++) {
		DIST_POINT *dp = sk_DIST_POINT_value(dps, i);

		/* A distribution point for some reasons only does not give the whole status. */
		if (dp->reasons != NULL)
			continue;
		rc = add_uris(dp->distpoint, &v, &n);
	}
	if (rc != 0) {
		kms_strv_free(v);
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		if (scheme_wanted(v[i], schemes))
			v[o++] = v[i];
		else
			free(v[i]);
	}
	if (o == 0) {
		free(v);
		return 0;
	}
	v[o] = NULL;
	*out = v;
	return 0;
}

/* The URLs of a decoded CRLDistributionPoints or FreshestCRL extension (none when dps is NULL); frees dps. */
static int
ext_urls(CRL_DIST_POINTS *dps, int schemes, char ***out)
{
	int rc;

	*out = NULL;
	if (dps == NULL) {
		ERR_clear_error();
		return 0;
	}
	rc = dps_urls(dps, schemes, out);
	CRL_DIST_POINTS_free(dps);
	return rc;
}

int
ca_cert_crl_urls(X509 *cert, int schemes, char ***out)
{
	return ext_urls(X509_get_ext_d2i(cert, NID_crl_distribution_points, NULL, NULL), schemes, out);
}

int
ca_cert_delta_urls(X509 *cert, int schemes, char ***out)
{
	return ext_urls(X509_get_ext_d2i(cert, NID_freshest_crl, NULL, NULL), schemes, out);
}

int
ca_crl_delta_urls(X509_CRL *crl, int schemes, char ***out)
{
	return ext_urls(X509_CRL_get_ext_d2i(crl, NID_freshest_crl, NULL, NULL), schemes, out);
}

/* The IDP's scope into m; KMS_ERR_CORRUPT for what we cannot use. */
static int
read_idp(X509_CRL *crl, struct ca_crl_meta *m)
{
	ISSUING_DIST_POINT *idp;
	int crit = -1, rc = 0;
	size_t n = 0;

	m->covers = CA_CRL_COVERS_USER | CA_CRL_COVERS_CA;
	if ((idp = X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, &crit, NULL)) == NULL) {
		ERR_clear_error();
		if (crit != -1)
			return kms_fail(KMS_ERR_CORRUPT, "CRL issuing distribution point unreadable");
		return 0;
	}
	if (idp->onlyattr > 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL covers only attribute certificates");
		goto out;
	}
	if (idp->onlyuser > 0 && idp->onlyCA > 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL issuing distribution point says both only user and only CA");
		goto out;
	}
	if (idp->onlyuser > 0)
		m->covers = CA_CRL_COVERS_USER;
	if (idp->onlyCA > 0)
		m->covers = CA_CRL_COVERS_CA;
	if (idp->onlysomereasons != NULL)
		m->some_reasons = 1;
	if (idp->indirectCRL > 0)
		m->indirect = 1;
	if (idp->distpoint != NULL) {
		if (idp->distpoint->type != 0) {
			/* nameRelativeToCRLIssuer: we match full URIs only. */
			rc = kms_fail(KMS_ERR_CORRUPT, "CRL distribution point name relative to the issuer is not supported");
			goto out;
		}
		if ((rc = add_uris(idp->distpoint, &m->dp_names, &n)) != 0)
			goto out;
		if (n == 0) {
			rc = kms_fail(KMS_ERR_CORRUPT, "CRL distribution point names no URI");
			goto out;
		}
	}
out:
	ISSUING_DIST_POINT_free(idp);
	return rc;
}

/* Unknown critical extensions on the CRL or any entry make it unusable (RFC 5280 5.2, 5.3). */
static int
check_critical(X509_CRL *crl)
{
	STACK_OF(X509_REVOKED) *revs;

	for (int i = 0; i < X509_CRL_get_ext_count(crl); i++) {
		X509_EXTENSION *ext = X509_CRL_get_ext(crl, i);

		if (X509_EXTENSION_get_critical(ext) && !crl_ext_known(OBJ_obj2nid(X509_EXTENSION_get_object(ext))))
			return kms_fail(KMS_ERR_CORRUPT, "CRL has an unknown critical extension");
	}
	revs = X509_CRL_get_REVOKED(crl);
	for (int i = 0; i < sk_X509_REVOKED_num(revs); i++) {
		const STACK_OF(X509_EXTENSION) *exts = X509_REVOKED_get0_extensions(sk_X509_REVOKED_value(revs, i));

		for (int j = 0; j < sk_X509_EXTENSION_num(exts); j++) {
			X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, j);

			if (X509_EXTENSION_get_critical(ext) &&
			    !entry_ext_known(OBJ_obj2nid(X509_EXTENSION_get_object(ext))))
				return kms_fail(KMS_ERR_CORRUPT, "CRL entry has an unknown critical extension");
		}
	}
	return 0;
}

/*
 * A certificateIssuer entry extension says whose certificate an entry is
 * (RFC 5280 5.3.3): it has a meaning only in an indirect CRL, and one we
 * cannot read would leave that entry and the following ones to the wrong
 * issuer.  Either makes the CRL unusable.
 */
static int
check_entry_issuers(X509_CRL *crl, const struct ca_crl_meta *m)
{
	STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);

	for (int i = 0; i < sk_X509_REVOKED_num(revs); i++) {
		X509_REVOKED *r = sk_X509_REVOKED_value(revs, i);
		GENERAL_NAMES *gens;
		int crit = -1;

		if (X509_REVOKED_get_ext_by_NID(r, NID_certificate_issuer, -1) < 0)
			continue;
		if (!m->indirect)
			return kms_fail(KMS_ERR_CORRUPT, "CRL entry names a certificate issuer but the CRL is not indirect");
		if ((gens = X509_REVOKED_get_ext_d2i(r, NID_certificate_issuer, &crit, NULL)) == NULL) {
			ERR_clear_error();
			return kms_fail(KMS_ERR_CORRUPT, "CRL entry's certificate issuer unreadable");
		}
		GENERAL_NAMES_free(gens);
	}
	return 0;
}

static long long
int_ext(X509_CRL *crl, int nid, int *present)
{
	ASN1_INTEGER *num;
	int64_t v = -1;
	int crit = -1;

	*present = 0;
	if ((num = X509_CRL_get_ext_d2i(crl, nid, &crit, NULL)) == NULL) {
		ERR_clear_error();
		if (crit != -1)
			*present = -1;          /* there, but unreadable */
		return -1;
	}
	*present = 1;
	if (ASN1_INTEGER_get_int64(&v, num) != 1 || v < 0)
		v = -1;
	ASN1_INTEGER_free(num);
	ERR_clear_error();
	return (long long)v;
}

/* Is cand the CRL's issuer by name and, when both say, by key identifier? */
static int
names_signer(X509_CRL *crl, X509 *cand)
{
	AUTHORITY_KEYID *akid;
	const ASN1_OCTET_STRING *skid;
	int ok = 1;

	if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(cand)) != 0)
		return 0;
	if ((akid = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL)) == NULL) {
		ERR_clear_error();
		return 1;
	}
	if (akid->keyid != NULL && (skid = X509_get0_subject_key_id(cand)) != NULL)
		ok = ASN1_OCTET_STRING_cmp(akid->keyid, skid) == 0;
	AUTHORITY_KEYID_free(akid);
	return ok;
}

/*
 * The checks of one CRL against its would-be signer; *signed_by says
 * whether the signature verified with its key (so that what else is wrong
 * with it is the reason worth telling).
 */
static int
check_with(X509_CRL *crl, X509 *signer, int *signed_by)
{
	EVP_PKEY *pub;

	*signed_by = 0;
	if ((pub = X509_get0_pubkey(signer)) == NULL)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "CRL signer's public key");
	if (X509_CRL_verify(crl, pub) != 1)
		return kms_fail_openssl(KMS_ERR_CORRUPT, "CRL signature does not verify with its issuer's key");
	*signed_by = 1;
	/* A certificate with keyUsage must say cRLSign; one without must at least be a CA. */
	if (X509_get_extension_flags(signer) & EXFLAG_KUSAGE) {
		if (!(X509_get_key_usage(signer) & KU_CRL_SIGN))
			return kms_fail(KMS_ERR_CORRUPT, "the CRL's signer may not sign CRLs (no cRLSign key usage)");
	} else if (X509_check_ca(signer) == 0) {
		return kms_fail(KMS_ERR_CORRUPT, "the CRL's signer is not a CA");
	}
	return 0;
}

int
ca_crl_validate(X509_CRL *crl, STACK_OF(X509) *cands, time_t now, X509 **signer, struct ca_crl_meta *m)
{
	X509 *found = NULL;
	int rc = 0, named = 0, present, signed_by, why_signed = 0;
	char why[256] = "";

	*signer = NULL;
	memset(m, 0, sizeof(*m));
	m->number = m->base = -1;
	if (crl == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CRL");
	for (int i = 0; i < sk_X509_num(cands); i++) {
		X509 *c = sk_X509_value(cands, i);

		if (!names_signer(crl, c))
			continue;
		named = 1;
		if ((rc = check_with(crl, c, &signed_by)) == 0) {
			found = c;
			break;
		}
		/* The certificate whose key made the signature says best why the CRL is refused. */
		if (!why_signed || signed_by)
			snprintf(why, sizeof(why), "%s", kms_last_error());
		why_signed |= signed_by;
	}
	ERR_clear_error();
	if (found == NULL) {
		char name[256];

		if (named)
			return kms_fail(rc ? rc : KMS_ERR_CORRUPT, "%s", why);
		X509_NAME_oneline(X509_CRL_get_issuer(crl), name, sizeof(name));
		return kms_fail(KMS_ERR_NOTFOUND, "no trusted certificate of the CRL issuer %s", name);
	}
	if ((rc = check_critical(crl)) != 0 || (rc = read_idp(crl, m)) != 0 || (rc = check_entry_issuers(crl, m)) != 0)
		goto fail;
	m->number = int_ext(crl, NID_crl_number, &present);
	if (present < 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL number unreadable");
		goto fail;
	}
	m->base = int_ext(crl, NID_delta_crl, &present);
	if (present != 0) {
		if (present < 0 || m->base < 0 || m->number < 0) {
			rc = kms_fail(KMS_ERR_CORRUPT, "delta CRL without a readable base or CRL number");
			goto fail;
		}
		m->delta = 1;
	}
	if (ca_asn1_time_to_time(X509_CRL_get0_lastUpdate(crl), &m->this_update) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL thisUpdate unreadable");
		goto fail;
	}
	if (X509_CRL_get0_nextUpdate(crl) != NULL &&
	    ca_asn1_time_to_time(X509_CRL_get0_nextUpdate(crl), &m->next_update) != 0) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL nextUpdate unreadable");
		goto fail;
	}
	if (m->this_update > now + CRL_SKEW) {
		rc = kms_fail(KMS_ERR_CORRUPT, "CRL is not valid yet (thisUpdate in the future)");
		goto fail;
	}
	*signer = found;
	if (m->next_update != 0 && now > m->next_update)
		return kms_fail(KMS_ERR_EXPIRED, "CRL expired (past its nextUpdate)");
	return 0;
fail:
	ca_crl_meta_clear(m);
	m->number = m->base = -1;
	return rc;
}

/* Is cand a valid CA certificate under anchors at now (intermediates may help)? */
static int
chain_ok(X509 *cand, X509_STORE *anchors, STACK_OF(X509) *inter, time_t now)
{
	X509_STORE_CTX *sctx = X509_STORE_CTX_new();
	int ok = 0;

	if (sctx != NULL && X509_STORE_CTX_init(sctx, anchors, cand, inter) == 1) {
		X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(sctx), now);
		X509_VERIFY_PARAM_clear_flags(X509_STORE_CTX_get0_param(sctx),
		    X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
		ok = X509_verify_cert(sctx) == 1;
	}
	X509_STORE_CTX_free(sctx);
	ERR_clear_error();
	return ok;
}

int
ca_crl_validate_chain(X509_CRL *crl, X509_STORE *anchors, STACK_OF(X509) *inter, time_t now, X509 **signer,
    struct ca_crl_meta *m)
{
	STACK_OF(X509) *all = NULL, *cands = NULL;
	int rc;

	*signer = NULL;
	memset(m, 0, sizeof(*m));
	m->number = m->base = -1;
	if ((cands = sk_X509_new_null()) == NULL)
		return KMS_ERR_NOMEM;
	if (anchors != NULL && (all = X509_STORE_get1_all_certs(anchors)) == NULL) {
		sk_X509_free(cands);
		return KMS_ERR_NOMEM;
	}
	/* Anchors are trusted as they are; an intermediate only with a valid path to one. */
	for (int i = 0; i < sk_X509_num(all); i++)
		if (X509_NAME_cmp(X509_get_subject_name(sk_X509_value(all, i)), X509_CRL_get_issuer(crl)) == 0)
			sk_X509_push(cands, sk_X509_value(all, i));
	for (int i = 0; i < sk_X509_num(inter); i++) {
		X509 *c = sk_X509_value(inter, i);

		if (X509_NAME_cmp(X509_get_subject_name(c), X509_CRL_get_issuer(crl)) == 0 &&
		    chain_ok(c, anchors, inter, now))
			sk_X509_push(cands, c);
	}
	rc = ca_crl_validate(crl, cands, now, signer, m);
	sk_X509_free(cands);
	sk_X509_pop_free(all, X509_free);
	/* *signer is borrowed from anchors or inter: they outlive the call. */
	return rc;
}
