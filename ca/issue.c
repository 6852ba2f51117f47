/*
 * issue.c - issuing end-entity certificates: the user's signing and
 * encryption certificates, the key-recovery key's certificate, signing
 * certificates for a user's own CSR; and reading a certificate's serial,
 * fingerprint and address back.
 *
 * Entry points: ca_usage_name(), ca_issue(), ca_issue_csr(), ca_issue_csr_aia(),
 * ca_serial_hex(), ca_cert_fingerprint(), ca_cert_email().
 *
 * Profiles follow the CA/Browser Forum S/MIME Baseline Requirements,
 * strict generation, where they apply to a private CA:
 *   - X.509 v3; serial positive, 16 octets, 127 bits from the CSPRNG;
 *   - RSA PKCS#1 v1.5 with SHA-256, ECDSA P-384 with SHA-384;
 *   - subscriber keys RSA 2048 to 8192 bits (a multiple of 8, odd e) or
 *     EC P-256/P-384, each passing OpenSSL's public key check;
 *   - validity at most 825 days, never past the CA's own notAfter;
 *   - basicConstraints cA FALSE; keyUsage critical: digitalSignature and
 *     nonRepudiation for signing, keyEncipherment (RSA) or keyAgreement
 *     (EC) for encryption, never both (no dual use in strict);
 *   - extKeyUsage id-kp-emailProtection only;
 *   - subjectAltName: exactly one rfc822Name (ASCII mailbox, kms_addr_valid),
 *     not critical unless the subject is empty (RFC 5280 4.2.1.6);
 *     subject emailAddress equal to it when it fits ub-emailaddress (128),
 *     CN the given name, else the address when it fits ub-common-name (64);
 *   - authorityKeyIdentifier keyIdentifier only, equal to the CA's SKI;
 *     subjectKeyIdentifier present; cRLDistributionPoints with one HTTP
 *     URI whenever a CRL URL is configured;
 *   - authorityInformationAccess with the OCSP responder (id-ad-ocsp) and
 *     the CA certificate (id-ad-caIssuers), plain HTTP URIs, whenever
 *     they are configured: Thunderbird (NSS) checks revocation only
 *     through the OCSP URL, and clients build the chain from caIssuers.
 * The CABF certificatePolicies OIDs are left out: a private CA is not
 * audited against the BR and must not claim it.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

/* S/MIME BR 6.3.2: subscriber certificates of the strict profiles. */
#define MAX_USER_DAYS 825
/*
 * ub-emailaddress as OpenSSL applies it to the subject emailAddress.  A
 * longer address (up to KMS_ADDR_MAX) is certified in the SAN alone.
 */
#define CA_UB_EMAIL 128
#define MAX_URL_LEN 2048
#define MAX_RSA_BITS 8192

const char *
ca_usage_name(enum ca_usage u)
{
	switch (u) {
	case CA_USAGE_SIGN:
		return "sign";
	case CA_USAGE_ENC:
		return "enc";
	case CA_USAGE_KRK:
		return "krk";
	}
	return "unknown";
}

static int
ldap_url_valid(const char *url)
{
	if (strlen(url) > MAX_URL_LEN || strncasecmp(url, "ldap://", 7) != 0)
		return 0;
	for (const char *p = url; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return 0;
	return 1;
}

static int
url_valid(const char *url)
{
	size_t len = strlen(url);

	if (len > MAX_URL_LEN)
		return 0;
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
		return 0;
	for (const char *p = url; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return 0;
	return 1;
}

/* Refuse keys the profiles do not allow, with a reason a user can act on. */
static int
key_acceptable(EVP_PKEY *key, enum ca_usage usage)
{
	EVP_PKEY_CTX *ctx = NULL;
	int bits = EVP_PKEY_get_bits(key), nid, rc = 0;

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA:
		if (bits < 2048)
			return kms_fail(KMS_ERR_INVALID, "RSA key of %d bits is too weak (at least 2048)", bits);
		if (bits > MAX_RSA_BITS || bits % 8 != 0)
			return kms_fail(KMS_ERR_INVALID, "RSA key of %d bits not allowed (a multiple of 8, "
			    "at most %d)", bits, MAX_RSA_BITS);
		break;
	case EVP_PKEY_EC:
		if (usage == CA_USAGE_KRK)
			return kms_fail(KMS_ERR_INVALID, "the key-recovery key must be RSA (key transport)");
		nid = ca_ec_curve_nid(key);
		if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1)
			return kms_fail(KMS_ERR_INVALID, "EC curve %s not allowed (P-256 or P-384)",
			    nid == NID_undef ? "(unnamed)" : OBJ_nid2sn(nid));
		break;
	default:
		return kms_fail(KMS_ERR_INVALID, "key algorithm %s not allowed (RSA or EC P-256/P-384)",
		    EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "unknown");
	}
	if ((ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL)) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "key check");
	if (EVP_PKEY_public_check(ctx) != 1)
		rc = kms_fail_openssl(KMS_ERR_INVALID, "the public key fails its consistency check");
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* The CA's key identifier: its SKI extension, else the RFC 5280 method 1 hash. */
static ASN1_OCTET_STRING *
issuer_key_id(X509 *ca_cert)
{
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ca_cert);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	ASN1_OCTET_STRING *id;

	if (ski != NULL)
		return ASN1_OCTET_STRING_dup(ski);
	if (!X509_pubkey_digest(ca_cert, EVP_sha1(), md, &mdlen) || (id = ASN1_OCTET_STRING_new()) == NULL)
		return NULL;
	if (!ASN1_OCTET_STRING_set(id, md, (int)mdlen)) {
		ASN1_OCTET_STRING_free(id);
		return NULL;
	}
	return id;
}

/*
 * O copied from the CA's subject, CN unless cn is NULL, serialNumber unless
 * sn is NULL, and emailAddress unless email is NULL or longer than
 * ub-emailaddress.  kmsd gives each enrollment's pair a serialNumber of its
 * own: Mozilla NSS keys nicknames by subject, so a renewal with the old
 * subject would take the old nicknames; within one pair the subject is
 * shared, which is how gpgsm tells one identity's signing and encryption
 * certificates from two identities.  The subject may come out empty (no O,
 * an address too long for CN and emailAddress): the SAN then carries the
 * identity and is marked critical.
 */
static int
user_subject(X509 *ca_cert, const char *cn, const char *sn, const char *email, X509_NAME **out)
{
	const X509_NAME *ca_name = X509_get_subject_name(ca_cert);
	X509_NAME *n;
	int i, rc;

	*out = NULL;
	if ((n = X509_NAME_new()) == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "subject");
	if ((i = X509_NAME_get_index_by_NID(ca_name, NID_organizationName, -1)) >= 0 &&
	    !X509_NAME_add_entry(n, X509_NAME_get_entry(ca_name, i), -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "subject organization");
		goto out;
	}
	if (cn != NULL &&
	    !X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "subject common name");
		goto out;
	}
	if (sn != NULL && !X509_NAME_add_entry_by_NID(n, NID_serialNumber, MBSTRING_ASC, (const unsigned char *)sn,
	    -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "subject serialNumber");
		goto out;
	}
	if (email != NULL && strlen(email) <= CA_UB_EMAIL && !X509_NAME_add_entry_by_NID(n, NID_pkcs9_emailAddress, MBSTRING_ASC,
	    (const unsigned char *)email, -1, -1, 0)) {
		rc = kms_fail_openssl(KMS_ERR_INVALID, "subject emailAddress");
		goto out;
	}
	*out = n;
	n = NULL;
	rc = 0;
out:
	X509_NAME_free(n);
	return rc;
}

/* A GENERAL_NAMES holding one IA5String name of type (GEN_EMAIL, GEN_URI). */
static GENERAL_NAMES *
one_general_name(int type, const char *value)
{
	GENERAL_NAMES *gens;
	GENERAL_NAME *g;
	ASN1_IA5STRING *ia5;

	if (value == NULL)
		return NULL;
	gens = GENERAL_NAMES_new();
	g = GENERAL_NAME_new();
	ia5 = ASN1_IA5STRING_new();
	if (gens == NULL || g == NULL || ia5 == NULL || !ASN1_STRING_set(ia5, value, (int)strlen(value)))
		goto fail;
	GENERAL_NAME_set0_value(g, type, ia5);
	ia5 = NULL;
	if (!sk_GENERAL_NAME_push(gens, g))
		goto fail;
	return gens;
fail:
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(g);
	GENERAL_NAMES_free(gens);
	return NULL;
}

static int
add_email_protection(X509 *x)
{
	EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
	int rc = 0;

	if (eku == NULL || !sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_email_protect)))
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "extKeyUsage");
	else if (X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding extKeyUsage");
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
	return rc;
}

/* The SAN, critical when it is all that names the subject (RFC 5280 4.2.1.6). */
static int
add_san_email(X509 *x, const char *email)
{
	GENERAL_NAMES *gens = one_general_name(GEN_EMAIL, email);
	int critical = X509_NAME_entry_count(X509_get_subject_name(x)) == 0;
	int rc = 0;

	if (gens == NULL)
		return kms_fail_openssl(KMS_ERR_NOMEM, "subjectAltName");
	if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, critical, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding subjectAltName");
	GENERAL_NAMES_free(gens);
	return rc;
}

/*
 * One distribution point whose fullName is the http URL and, when given,
 * the ldap URL: two names of the same CRL (RFC 5280 4.2.1.13), so a
 * client may fetch either.
 */
static int
add_crl_dp(X509 *x, const char *url, const char *ldap_url)
{
	CRL_DIST_POINTS *cdp = CRL_DIST_POINTS_new();
	DIST_POINT *dp = DIST_POINT_new();
	GENERAL_NAMES *more = NULL;
	int rc = 0;

	if (cdp == NULL || dp == NULL || (dp->distpoint = DIST_POINT_NAME_new()) == NULL ||
	    (dp->distpoint->name.fullname = one_general_name(GEN_URI, url)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "cRLDistributionPoints");
		goto out;
	}
	if (ldap_url != NULL && *ldap_url != '\0') {
		if ((more = one_general_name(GEN_URI, ldap_url)) == NULL ||
		    !sk_GENERAL_NAME_push(dp->distpoint->name.fullname, sk_GENERAL_NAME_value(more, 0))) {
			rc = kms_fail_openssl(KMS_ERR_NOMEM, "cRLDistributionPoints");
			goto out;
		}
		(void)sk_GENERAL_NAME_pop(more);        /* now owned by the distribution point */
	}
	dp->distpoint->type = 0;        /* fullName */
	if (!sk_DIST_POINT_push(cdp, dp)) {
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "cRLDistributionPoints");
		goto out;
	}
	dp = NULL;
	if (X509_add1_ext_i2d(x, NID_crl_distribution_points, cdp, 0, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding cRLDistributionPoints");
out:
	GENERAL_NAMES_free(more);
	DIST_POINT_free(dp);
	CRL_DIST_POINTS_free(cdp);
	return rc;
}

static int
add_access(AUTHORITY_INFO_ACCESS *aia, int method, const char *url)
{
	ACCESS_DESCRIPTION *ad;
	GENERAL_NAMES *gens;

	if (url == NULL || *url == '\0')
		return 0;
	if ((ad = ACCESS_DESCRIPTION_new()) == NULL || (gens = one_general_name(GEN_URI, url)) == NULL) {
		ACCESS_DESCRIPTION_free(ad);
		return KMS_ERR_NOMEM;
	}
	GENERAL_NAME_free(ad->location);
	ad->location = sk_GENERAL_NAME_shift(gens);
	GENERAL_NAMES_free(gens);
	ASN1_OBJECT_free(ad->method);
	ad->method = OBJ_nid2obj(method);
	if (!sk_ACCESS_DESCRIPTION_push(aia, ad)) {
		ACCESS_DESCRIPTION_free(ad);
		return KMS_ERR_NOMEM;
	}
	return 0;
}

/* RFC 5280 4.2.2.1, not critical: the OCSP responder first, then the CA certificate. */
static int
add_aia(X509 *x, const char *ocsp_url, const char *issuer_url)
{
	AUTHORITY_INFO_ACCESS *aia = sk_ACCESS_DESCRIPTION_new_null();
	int rc = 0;

	if (aia == NULL || add_access(aia, NID_ad_OCSP, ocsp_url) != 0 || add_access(aia, NID_ad_ca_issuers, issuer_url) != 0)
		rc = kms_fail_openssl(KMS_ERR_NOMEM, "authorityInfoAccess");
	else if (sk_ACCESS_DESCRIPTION_num(aia) > 0 && X509_add1_ext_i2d(x, NID_info_access, aia, 0, X509V3_ADD_REPLACE) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "adding authorityInfoAccess");
	AUTHORITY_INFO_ACCESS_free(aia);
	return rc;
}

static int
add_usage_extensions(X509 *x, const struct ca_issue_req *req)
{
	static const int ku_sign[] = { CA_KU_DIGITAL_SIGNATURE, CA_KU_NON_REPUDIATION };
	static const int ku_ke[] = { CA_KU_KEY_ENCIPHERMENT };
	static const int ku_ka[] = { CA_KU_KEY_AGREEMENT };
	int rc;

	if ((rc = ca_add_basic_constraints(x, 0)) != 0)
		return rc;
	switch (req->usage) {
	case CA_USAGE_SIGN:
		rc = ca_add_key_usage(x, ku_sign, 2);
		break;
	case CA_USAGE_ENC:
		if (EVP_PKEY_get_base_id(req->pubkey) == EVP_PKEY_EC)
			rc = ca_add_key_usage(x, ku_ka, 1);
		else
			rc = ca_add_key_usage(x, ku_ke, 1);
		break;
	case CA_USAGE_KRK:
		return ca_add_key_usage(x, ku_ke, 1);
	}
	if (rc != 0)
		return rc;
	if ((rc = add_email_protection(x)) != 0)
		return rc;
	return add_san_email(x, req->email);
}

/* Check a request before anything is built; fills *cn with the common name to use (NULL: none). */
static int
check_request(const struct ca *ca, const struct ca_issue_req *req, const char **cn)
{
	long chars;
	int rc;

	*cn = NULL;
	if (ca == NULL || ca->cert == NULL || ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded (no passphrase?)");
	if (req == NULL || req->pubkey == NULL)
		return kms_fail(KMS_ERR_INVALID, "no key to certify");
	if (req->usage != CA_USAGE_SIGN && req->usage != CA_USAGE_ENC && req->usage != CA_USAGE_KRK)
		return kms_fail(KMS_ERR_INVALID, "unknown certificate usage %d", (int)req->usage);
	if (req->usage != CA_USAGE_KRK) {
		if (!kms_addr_valid(req->email)) {
			char clean[80];

			return kms_fail(KMS_ERR_INVALID, "\"%s\" is not a mailbox address we can certify "
			    "(ASCII local@domain, at most %d characters)",
			    kms_sanitize(req->email ? req->email : "", KMS_ADDR_MAX + 1, clean, sizeof(clean)),
			    KMS_ADDR_MAX);
		}
		if (req->days > MAX_USER_DAYS)
			return kms_fail(KMS_ERR_INVALID, "validity of %d days is over the %d allowed for "
			    "S/MIME certificates", req->days, MAX_USER_DAYS);
	}
	if (req->days < 1)
		return kms_fail(KMS_ERR_INVALID, "validity of %d days", req->days);
	if ((rc = key_acceptable(req->pubkey, req->usage)) != 0)
		return rc;
	if (req->name != NULL && *req->name != '\0')
		*cn = req->name;
	else if (req->email != NULL && strlen(req->email) <= CA_UB_NAME)
		*cn = req->email;
	else if (req->usage == CA_USAGE_KRK)
		return kms_fail(KMS_ERR_INVALID, "the key-recovery certificate needs a name");
	if (*cn != NULL && ((chars = ca_utf8_chars(*cn)) <= 0 || chars > CA_UB_NAME))
		return kms_fail(KMS_ERR_INVALID, "the name must be 1 to %d characters of UTF-8 text without "
		    "control characters", CA_UB_NAME);
	if (req->crl_url != NULL && *req->crl_url != '\0' && !url_valid(req->crl_url))
		return kms_fail(KMS_ERR_INVALID, "the CRL URL must be an http:// or https:// URL of printable ASCII");
	if (req->crl_ldap_url != NULL && *req->crl_ldap_url != '\0' && !ldap_url_valid(req->crl_ldap_url))
		return kms_fail(KMS_ERR_INVALID, "the CRL's LDAP URL must be an ldap:// URL of printable ASCII");
	if ((req->ocsp_url != NULL && *req->ocsp_url != '\0' && !url_valid(req->ocsp_url)) ||
	    (req->issuer_url != NULL && *req->issuer_url != '\0' && !url_valid(req->issuer_url)))
		return kms_fail(KMS_ERR_INVALID, "the OCSP and CA certificate URLs must be http:// or https:// URLs "
		    "of printable ASCII");
	return 0;
}

int
ca_issue(const struct ca *ca, const struct ca_issue_req *req, X509 **out)
{
	ASN1_OCTET_STRING *akid = NULL;
	X509_NAME *subject = NULL;
	X509 *x = NULL;
	const char *cn;
	time_t nb;
	int rc;

	*out = NULL;
	if ((rc = check_request(ca, req, &cn)) != 0)
		return rc;
	if (ca->not_before_margin < 0 || ca->not_before_margin > CA_MAX_NOT_BEFORE_MARGIN)
		return kms_fail(KMS_ERR_INVALID, "notBefore margin of %d s out of range", ca->not_before_margin);
	if (req->subject_serial != NULL && (strlen(req->subject_serial) == 0 || strlen(req->subject_serial) > 64))
		return kms_fail(KMS_ERR_INVALID, "subject serialNumber of 1 to 64 characters");
	if ((rc = user_subject(ca->cert, cn, req->subject_serial, req->usage == CA_USAGE_KRK ? NULL : req->email,
	    &subject)) != 0)
		goto out;
	if ((rc = ca_cert_begin(subject, req->pubkey, req->days, &x)) != 0)
		goto out;
	/* Recipients whose clock is a little behind must not see a new certificate as not yet valid. */
	nb = time(NULL) - ca->not_before_margin;
	if (ca->not_before_margin > 0 && X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &nb) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "notBefore");
		goto out;
	}
	if (!X509_set_issuer_name(x, X509_get_subject_name(ca->cert))) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "issuer name");
		goto out;
	}
	/* Never outlive the CA: a chain is only as valid as its shortest link. */
	if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca->cert)) > 0 &&
	    !X509_set1_notAfter(x, X509_get0_notAfter(ca->cert))) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "notAfter");
		goto out;
	}
	if ((akid = issuer_key_id(ca->cert)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "the CA's key identifier");
		goto out;
	}
	if ((rc = add_usage_extensions(x, req)) != 0 || (rc = ca_add_key_ids(x, akid)) != 0)
		goto out;
	if (req->crl_url != NULL && *req->crl_url != '\0' && (rc = add_crl_dp(x, req->crl_url, req->crl_ldap_url)) != 0)
		goto out;
	if (req->usage != CA_USAGE_KRK && (rc = add_aia(x, req->ocsp_url, req->issuer_url)) != 0)
		goto out;
	if ((rc = ca_sign(x, ca->key)) != 0)
		goto out;
	/* A key that does not match the CA certificate must not produce a certificate. */
	if (X509_verify(x, X509_get0_pubkey(ca->cert)) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "the CA key does not match the CA certificate");
		goto out;
	}
	*out = x;
	x = NULL;
	rc = 0;
out:
	ASN1_OCTET_STRING_free(akid);
	X509_NAME_free(subject);
	X509_free(x);
	return rc;
}

/* The first rfc822Name of a SAN as a new string; NULL if none.  *bad set when one is malformed. */
static char *
san_email(const GENERAL_NAMES *gens, int *bad)
{
	for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		int type;
		const ASN1_IA5STRING *ia5 = GENERAL_NAME_get0_value(g, &type);
		const char *data;
		size_t len;
		char *s;

		if (type != GEN_EMAIL || ia5 == NULL)
			continue;
		data = (const char *)ASN1_STRING_get0_data(ia5);
		len = (size_t)ASN1_STRING_length(ia5);
		if (memchr(data, '\0', len) != NULL) {
			*bad = 1;
			return NULL;
		}
		if ((s = malloc(len + 1)) == NULL)
			return NULL;
		memcpy(s, data, len);
		s[len] = '\0';
		return s;
	}
	return NULL;
}

/* The subject emailAddress as a new string; NULL if none. */
static char *
subject_email(const X509_NAME *n, int *bad)
{
	int i = X509_NAME_get_index_by_NID(n, NID_pkcs9_emailAddress, -1);
	unsigned char *utf8 = NULL;
	int len;
	char *s;

	if (i < 0)
		return NULL;
	len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)));
	if (len < 0) {
		ERR_clear_error();
		*bad = 1;
		return NULL;
	}
	if (memchr(utf8, '\0', (size_t)len) != NULL) {
		*bad = 1;
		OPENSSL_free(utf8);
		return NULL;
	}
	s = strdup((char *)utf8);
	OPENSSL_free(utf8);
	return s;
}

char *
ca_cert_email(X509 *cert)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	char *s = NULL;
	int bad = 0;

	if (gens != NULL) {
		s = san_email(gens, &bad);
		GENERAL_NAMES_free(gens);
	}
	ERR_clear_error();
	if (s == NULL && !bad)
		s = subject_email(X509_get_subject_name(cert), &bad);
	return s;
}

/* The address a CSR asks for: requested SAN rfc822Name, else subject emailAddress. */
static int
csr_email(X509_REQ *csr, char **out)
{
	STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr);
	GENERAL_NAMES *gens = NULL;
	char *s = NULL, clean[80];
	int bad = 0, rc;

	*out = NULL;
	if (exts != NULL)
		gens = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
	ERR_clear_error();
	if (gens != NULL)
		s = san_email(gens, &bad);
	if (s == NULL && !bad)
		s = subject_email(X509_REQ_get_subject_name(csr), &bad);
	if (bad) {
		rc = kms_fail(KMS_ERR_INVALID, "the CSR's email address holds a NUL byte or bad text");
		goto out;
	}
	if (s == NULL) {
		rc = kms_fail(KMS_ERR_INVALID, "the CSR names no email address (neither a subjectAltName "
		    "rfc822Name nor a subject emailAddress)");
		goto out;
	}
	if (!kms_addr_valid(s)) {
		rc = kms_fail(KMS_ERR_INVALID, "the CSR's address \"%s\" is not a mailbox we can certify",
		    kms_sanitize(s, strlen(s), clean, sizeof(clean)));
		goto out;
	}
	*out = s;
	s = NULL;
	rc = 0;
out:
	free(s);
	GENERAL_NAMES_free(gens);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	return rc;
}

int
ca_issue_csr(const struct ca *ca, X509_REQ *csr, int days, const char *crl_url, const char *crl_ldap_url,
    X509 **out, char **email_out)
{
	return ca_issue_csr_aia(ca, csr, days, crl_url, crl_ldap_url, NULL, NULL, out, email_out);
}

int
ca_issue_csr_aia(const struct ca *ca, X509_REQ *csr, int days, const char *crl_url, const char *crl_ldap_url,
    const char *ocsp_url, const char *issuer_url, X509 **out, char **email_out)
{
	struct ca_issue_req req;
	EVP_PKEY *pub;
	char *email = NULL;
	int rc;

	*out = NULL;
	*email_out = NULL;
	if (csr == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CSR");
	if ((pub = X509_REQ_get0_pubkey(csr)) == NULL)
		return kms_fail_openssl(KMS_ERR_INVALID, "the CSR holds no public key this CA can read");
	if (X509_REQ_verify(csr, pub) != 1)
		return kms_fail_openssl(KMS_ERR_INVALID, "the CSR's self-signature does not verify "
		    "(corrupted, or made without the private key)");
	if ((rc = key_acceptable(pub, CA_USAGE_SIGN)) != 0)
		return rc;
	if ((rc = csr_email(csr, &email)) != 0)
		return rc;
	/*
	 * The common name is the verified address, not the CSR's subject:
	 * only the mailbox is validated (the BR's mailbox-validated subject).
	 */
	memset(&req, 0, sizeof(req));
	req.usage = CA_USAGE_SIGN;
	req.pubkey = pub;
	req.email = email;
	req.name = NULL;
	req.days = days;
	req.crl_url = crl_url;
	req.crl_ldap_url = crl_ldap_url;
	req.ocsp_url = ocsp_url;
	req.issuer_url = issuer_url;
	if ((rc = ca_issue(ca, &req, out)) != 0) {
		free(email);
		return rc;
	}
	*email_out = email;
	return 0;
}

char *
ca_serial_hex(const ASN1_INTEGER *serial)
{
	BIGNUM *bn = NULL;
	char *hex = NULL, *s = NULL;
	const char *p;
	size_t i = 0, len;

	if (serial == NULL || (bn = ASN1_INTEGER_to_BN(serial, NULL)) == NULL || (hex = BN_bn2hex(bn)) == NULL)
		goto out;
	if ((s = malloc(strlen(hex) + 1)) == NULL)
		goto out;
	p = hex;
	if (*p == '-')
		s[i++] = *p++;
	while (p[0] == '0' && p[1] != '\0')
		p++;
	len = strlen(p);
	for (size_t j = 0; j < len; j++)
		s[i++] = (p[j] >= 'A' && p[j] <= 'F') ? (char)(p[j] - 'A' + 'a') : p[j];
	s[i] = '\0';
out:
	ERR_clear_error();
	OPENSSL_free(hex);
	BN_free(bn);
	return s;
}

char *
ca_cert_fingerprint(X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (cert == NULL || !X509_digest(cert, EVP_sha256(), md, &len)) {
		ERR_clear_error();
		return NULL;
	}
	return kms_hex(md, len);
}
