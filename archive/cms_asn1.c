/*
 * cms_asn1.c - libkmsarchive internal: ASN.1 templates for the CMS
 * structures that release.c and enveloped.c take apart themselves
 * (RecipientInfo, EnvelopedData, AuthEnvelopedData, RSAES-OAEP and GCM
 * parameters, ECC-CMS-SharedInfo), and the small matching helpers both
 * need.  OpenSSL's decoder does the BER work (indefinite lengths,
 * constructed strings, nesting bounds); everything here only says what
 * shape to expect.
 */
#include "config.h"

#include <limits.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "archive/cms_asn1.h"

ASN1_SEQUENCE(ESC_ISSUER_SERIAL) = {
	ASN1_SIMPLE(ESC_ISSUER_SERIAL, issuer, X509_NAME),
	ASN1_SIMPLE(ESC_ISSUER_SERIAL, serial, ASN1_INTEGER)
} ASN1_SEQUENCE_END(ESC_ISSUER_SERIAL)

ASN1_CHOICE(ESC_RID) = {
	ASN1_SIMPLE(ESC_RID, d.iasn, ESC_ISSUER_SERIAL),
	ASN1_IMP(ESC_RID, d.ski, ASN1_OCTET_STRING, 0)
} ASN1_CHOICE_END(ESC_RID)

ASN1_SEQUENCE(ESC_KTRI) = {
	ASN1_SIMPLE(ESC_KTRI, version, ASN1_INTEGER),
	ASN1_SIMPLE(ESC_KTRI, rid, ESC_RID),
	ASN1_SIMPLE(ESC_KTRI, alg, X509_ALGOR),
	ASN1_SIMPLE(ESC_KTRI, ek, ASN1_OCTET_STRING)
} ASN1_SEQUENCE_END(ESC_KTRI)

ASN1_SEQUENCE(ESC_ORIG_PUBKEY) = {
	ASN1_SIMPLE(ESC_ORIG_PUBKEY, alg, X509_ALGOR),
	ASN1_SIMPLE(ESC_ORIG_PUBKEY, pub, ASN1_BIT_STRING)
} ASN1_SEQUENCE_END(ESC_ORIG_PUBKEY)

ASN1_CHOICE(ESC_ORIGINATOR) = {
	ASN1_SIMPLE(ESC_ORIGINATOR, d.iasn, ESC_ISSUER_SERIAL),
	ASN1_IMP(ESC_ORIGINATOR, d.ski, ASN1_OCTET_STRING, 0),
	ASN1_IMP(ESC_ORIGINATOR, d.key, ESC_ORIG_PUBKEY, 1)
} ASN1_CHOICE_END(ESC_ORIGINATOR)

ASN1_SEQUENCE(ESC_OTHER_KEY_ATTR) = {
	ASN1_SIMPLE(ESC_OTHER_KEY_ATTR, id, ASN1_OBJECT),
	ASN1_OPT(ESC_OTHER_KEY_ATTR, attr, ASN1_ANY)
} ASN1_SEQUENCE_END(ESC_OTHER_KEY_ATTR)

ASN1_SEQUENCE(ESC_RKEYID) = {
	ASN1_SIMPLE(ESC_RKEYID, ski, ASN1_OCTET_STRING),
	ASN1_OPT(ESC_RKEYID, date, ASN1_GENERALIZEDTIME),
	ASN1_OPT(ESC_RKEYID, other, ESC_OTHER_KEY_ATTR)
} ASN1_SEQUENCE_END(ESC_RKEYID)

ASN1_CHOICE(ESC_KARID) = {
	ASN1_SIMPLE(ESC_KARID, d.iasn, ESC_ISSUER_SERIAL),
	ASN1_IMP(ESC_KARID, d.rkeyid, ESC_RKEYID, 0)
} ASN1_CHOICE_END(ESC_KARID)

ASN1_SEQUENCE(ESC_REK) = {
	ASN1_SIMPLE(ESC_REK, rid, ESC_KARID),
	ASN1_SIMPLE(ESC_REK, ek, ASN1_OCTET_STRING)
} ASN1_SEQUENCE_END(ESC_REK)

ASN1_SEQUENCE(ESC_KARI) = {
	ASN1_SIMPLE(ESC_KARI, version, ASN1_INTEGER),
	ASN1_EXP(ESC_KARI, originator, ESC_ORIGINATOR, 0),
	ASN1_EXP_OPT(ESC_KARI, ukm, ASN1_OCTET_STRING, 1),
	ASN1_SIMPLE(ESC_KARI, alg, X509_ALGOR),
	ASN1_SEQUENCE_OF(ESC_KARI, reks, ESC_REK)
} ASN1_SEQUENCE_END(ESC_KARI)

ASN1_CHOICE(ESC_RI) = {
	ASN1_SIMPLE(ESC_RI, d.ktri, ESC_KTRI),
	ASN1_IMP(ESC_RI, d.kari, ESC_KARI, 1),
	ASN1_IMP(ESC_RI, d.other, ASN1_SEQUENCE, 2),
	ASN1_IMP(ESC_RI, d.other, ASN1_SEQUENCE, 3),
	ASN1_IMP(ESC_RI, d.other, ASN1_SEQUENCE, 4)
} ASN1_CHOICE_END(ESC_RI)

ASN1_SEQUENCE(ESC_ECI) = {
	ASN1_SIMPLE(ESC_ECI, type, ASN1_OBJECT),
	ASN1_SIMPLE(ESC_ECI, alg, X509_ALGOR),
	ASN1_IMP_OPT(ESC_ECI, content, ASN1_OCTET_STRING, 0)
} ASN1_SEQUENCE_END(ESC_ECI)

ASN1_SEQUENCE(ESC_ENV) = {
	ASN1_SIMPLE(ESC_ENV, version, ASN1_INTEGER),
	ASN1_IMP_OPT(ESC_ENV, originator_info, ASN1_SEQUENCE, 0),
	ASN1_SET_OF(ESC_ENV, ris, ESC_RI),
	ASN1_SIMPLE(ESC_ENV, eci, ESC_ECI),
	ASN1_IMP_OPT(ESC_ENV, unprot_attrs, ASN1_SEQUENCE, 1)
} ASN1_SEQUENCE_END(ESC_ENV)

ASN1_SEQUENCE(ESC_AUTHENV) = {
	ASN1_SIMPLE(ESC_AUTHENV, version, ASN1_INTEGER),
	ASN1_IMP_OPT(ESC_AUTHENV, originator_info, ASN1_SEQUENCE, 0),
	ASN1_SET_OF(ESC_AUTHENV, ris, ESC_RI),
	ASN1_SIMPLE(ESC_AUTHENV, eci, ESC_ECI),
	ASN1_IMP_OPT(ESC_AUTHENV, auth_attrs, ASN1_SEQUENCE, 1),
	ASN1_SIMPLE(ESC_AUTHENV, mac, ASN1_OCTET_STRING),
	ASN1_IMP_OPT(ESC_AUTHENV, unauth_attrs, ASN1_SEQUENCE, 2)
} ASN1_SEQUENCE_END(ESC_AUTHENV)

ASN1_SEQUENCE(ESC_CONTENT_INFO) = {
	ASN1_SIMPLE(ESC_CONTENT_INFO, type, ASN1_OBJECT),
	ASN1_EXP(ESC_CONTENT_INFO, content, ASN1_ANY, 0)
} ASN1_SEQUENCE_END(ESC_CONTENT_INFO)

ASN1_SEQUENCE(ESC_OAEP_PARAMS) = {
	ASN1_EXP_OPT(ESC_OAEP_PARAMS, hash, X509_ALGOR, 0),
	ASN1_EXP_OPT(ESC_OAEP_PARAMS, mgf, X509_ALGOR, 1),
	ASN1_EXP_OPT(ESC_OAEP_PARAMS, psource, X509_ALGOR, 2)
} ASN1_SEQUENCE_END(ESC_OAEP_PARAMS)

ASN1_SEQUENCE(ESC_GCM_PARAMS) = {
	ASN1_SIMPLE(ESC_GCM_PARAMS, nonce, ASN1_OCTET_STRING),
	ASN1_OPT(ESC_GCM_PARAMS, icvlen, ASN1_INTEGER)
} ASN1_SEQUENCE_END(ESC_GCM_PARAMS)

ASN1_SEQUENCE(ESC_SHARED_INFO) = {
	ASN1_SIMPLE(ESC_SHARED_INFO, key_info, X509_ALGOR),
	ASN1_EXP_OPT(ESC_SHARED_INFO, entity_uinfo, ASN1_OCTET_STRING, 0),
	ASN1_EXP(ESC_SHARED_INFO, supp_pub_info, ASN1_OCTET_STRING, 2)
} ASN1_SEQUENCE_END(ESC_SHARED_INFO)

void *
esc_asn1_decode_exact(const ASN1_ITEM *it, const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	ASN1_VALUE *v;

	if (der == NULL || len == 0 || len > LONG_MAX)
		return NULL;
	v = ASN1_item_d2i(NULL, &p, (long)len, it);
	if (v != NULL && p != der + len) {
		ASN1_item_free(v, it);
		return NULL;
	}
	return v;
}

void *
esc_asn1_decode_params(const ASN1_ITEM *it, const X509_ALGOR *alg)
{
	const ASN1_OBJECT *obj;
	const void *pval;
	const ASN1_STRING *s;
	int ptype;

	X509_ALGOR_get0(&obj, &ptype, &pval, alg);
	if (ptype != V_ASN1_SEQUENCE || pval == NULL)
		return NULL;
	s = pval;
	if (s->length <= 0)
		return NULL;
	return esc_asn1_decode_exact(it, s->data, (size_t)s->length);
}

int
esc_asn1_params_empty(const X509_ALGOR *alg)
{
	const ASN1_OBJECT *obj;
	const void *pval;
	int ptype;

	X509_ALGOR_get0(&obj, &ptype, &pval, alg);
	return ptype == V_ASN1_UNDEF || ptype == V_ASN1_NULL;
}

int
esc_iasn_matches(const ESC_ISSUER_SERIAL *iasn, X509 *cert)
{
	if (iasn == NULL || cert == NULL)
		return 0;
	return X509_NAME_cmp(iasn->issuer, X509_get_issuer_name(cert)) == 0 &&
	    ASN1_INTEGER_cmp(iasn->serial, X509_get0_serialNumber(cert)) == 0;
}

int
esc_ski_matches(const ASN1_OCTET_STRING *ski, X509 *cert)
{
	const ASN1_OCTET_STRING *own;

	if (ski == NULL || cert == NULL)
		return 0;
	own = X509_get0_subject_key_id(cert);
	return own != NULL && ASN1_OCTET_STRING_cmp(ski, own) == 0;
}

static int
karid_matches(const ESC_KARID *rid, X509 *cert)
{
	if (rid == NULL)
		return 0;
	if (rid->type == ESC_KARID_ISSUER_SERIAL)
		return esc_iasn_matches(rid->d.iasn, cert);
	if (rid->type == ESC_KARID_RKEYID)
		return rid->d.rkeyid != NULL && esc_ski_matches(rid->d.rkeyid->ski, cert);
	return 0;
}

int
esc_ri_matches(const ESC_RI *ri, X509 *cert)
{
	if (ri == NULL || cert == NULL)
		return 0;
	if (ri->type == ESC_RI_KTRI) {
		const ESC_RID *rid = ri->d.ktri->rid;

		if (rid->type == ESC_RID_ISSUER_SERIAL)
			return esc_iasn_matches(rid->d.iasn, cert);
		if (rid->type == ESC_RID_SKI)
			return esc_ski_matches(rid->d.ski, cert);
		return 0;
	}
	if (ri->type == ESC_RI_KARI) {
		for (int i = 0; i < sk_ESC_REK_num(ri->d.kari->reks); i++)
			if (karid_matches(sk_ESC_REK_value(ri->d.kari->reks, i)->rid, cert))
				return 1;
	}
	return 0;
}
