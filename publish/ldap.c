/*
 * ldap.c - the LDAP directory publisher: writes the CA entry (CA
 * certificate, CRLs) and each user's certificates to an LDAP server, in
 * the order the publication queue (ca/pubq.c) holds the changes.
 *
 * Entry points: pub_ldap_start() starts the delivery thread (its own store
 * connection, its own LDAP connection), pub_ldap_kick() wakes it,
 * pub_ldap_status() reads its state, pub_ldap_stop() ends it.
 * pub_ldap_new(), pub_ldap_deliver() and pub_ldap_free() are the same
 * work without the thread (tests, the benchmark).
 *
 * What is written:
 *   CA entry [ldap] ca_dn (objectClass cRLDistributionPoint + pkiCA):
 *     cACertificate;binary, certificateRevocationList;binary and, when
 *     deltas are on, deltaRevocationList;binary.
 *   User entry (found with [ldap] user_filter under base_dn, or named by
 *     user_dn_template, or created as mail=ADDRESS,<people_dn>):
 *     userCertificate;binary = the newest valid encryption and the newest
 *     valid signing certificate, in that order; userSMIMECertificate (Binary
 *     syntax, no ;binary) = the SignedData the user's signing key signed at
 *     enrollment (ca/smime.c: the two certificates, the CA certificate,
 *     SMIMECapabilities and the encryption key preference), or a certs-only
 *     SignedData of those certificates when there is none (issue --csr).  No
 *     valid certificate: both attributes removed.  Nothing else of a
 *     person's entry is ever changed.
 * Each entry is rewritten whole from the store, so a delivery repeated
 * after a crash, a resync or a coalesced change all end in the same state.
 *
 * Reload: pub_ldap_reconfigure() hands the thread a new config; between
 * two rounds it drops the connection and goes on with the new settings
 * (and re-reads the bind password file), cutting a back-off short.
 *
 * Failures: a connection-level error (server down, timeout, bind refused)
 * stops the round and the thread backs off (1 s doubling to [ldap]
 * retry_max); an error about one entry (access denied, schema) defers that
 * entry alone with the same back-off, and the others go on.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lber.h>
#include <ldap.h>
#include <limits.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include "publish/publish.h"


/*
 * Where each user's entry is, once found or made: a later change of the
 * same user (renewal, revocation, expiry, resync) modifies it without a
 * search.  If it was moved or deleted meanwhile the modify says "no such
 * object" and that entry is looked for again.  Bounded: at DN_MAX entries
 * the cache starts afresh.
 */
#define DN_BUCKETS 4096
#define DN_MAX 100000

struct dn_cache {
	char *email, *dn;
	struct dn_cache *next;
};

struct pub_ldap {
	const struct kms_config *cfg;       /* borrowed; outlives us (a reference is held by start) */
	struct kms_config *cfg_ref;
	struct kms_config *pending;         /* under mu: settings from a reload, taken between rounds */
	LDAP *ld;
	char *store_path;
	struct dn_cache *dns[DN_BUCKETS];   /* address -> entry DN known to exist; delivery only */
	size_t ndns;
	/* Thread state, under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t th;
	int running, stop, kicked;
	struct pub_ldap_status st;
};

/* ---------------------------------------------------------- DN cache */

static unsigned
dn_bucket(const char *email)
{
	unsigned h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)email; *p; p++)
		h = (h ^ (unsigned)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p)) * 16777619u;
	return h % DN_BUCKETS;
}

static void
dn_cache_clear(struct pub_ldap *pl)
{
	for (size_t b = 0; b < DN_BUCKETS; b++) {
		while (pl->dns[b]) {
			struct dn_cache *c = pl->dns[b];

			pl->dns[b] = c->next;
			free(c->email);
			free(c->dn);
			free(c);
		}
	}
	pl->ndns = 0;
}

static struct dn_cache **
dn_cache_find(struct pub_ldap *pl, const char *email)
{
	struct dn_cache **pp = &pl->dns[dn_bucket(email)];

	while (*pp && strcasecmp((*pp)->email, email) != 0)
		pp = &(*pp)->next;
	return pp;
}

static const char *
dn_cache_get(struct pub_ldap *pl, const char *email)
{
	struct dn_cache *c = *dn_cache_find(pl, email);

	return c ? c->dn : NULL;
}

static void
dn_cache_drop(struct pub_ldap *pl, const char *email)
{
	struct dn_cache **pp = dn_cache_find(pl, email), *c = *pp;

	if (c == NULL)
		return;
	*pp = c->next;
	free(c->email);
	free(c->dn);
	free(c);
	pl->ndns--;
}

/* Remember dn for email (a failure to remember only costs a search later). */
static void
dn_cache_put(struct pub_ldap *pl, const char *email, const char *dn)
{
	struct dn_cache *c;

	dn_cache_drop(pl, email);
	if (pl->ndns >= DN_MAX)
		dn_cache_clear(pl);
	if ((c = calloc(1, sizeof(*c))) == NULL || (c->email = strdup(email)) == NULL || (c->dn = strdup(dn)) == NULL) {
		if (c)
			free(c->email);
		free(c);
		return;
	}
	c->next = pl->dns[dn_bucket(email)];
	pl->dns[dn_bucket(email)] = c;
	pl->ndns++;
}

/* ------------------------------------------------------------ errors */

static void
set_status_error(struct pub_ldap *pl, const char *msg)
{
	pthread_mutex_lock(&pl->mu);
	snprintf(pl->st.last_error, sizeof(pl->st.last_error), "%s", msg);
	pl->st.last_error_time = time(NULL);
	pthread_mutex_unlock(&pl->mu);
}

/* Is an LDAP result code about the connection (retry later) rather than one entry? */
static int
is_connection_error(int lrc)
{
	switch (lrc) {
	case LDAP_SERVER_DOWN:
	case LDAP_TIMEOUT:
	case LDAP_CONNECT_ERROR:
	case LDAP_UNAVAILABLE:
	case LDAP_BUSY:
	case LDAP_UNWILLING_TO_PERFORM:
	case LDAP_LOCAL_ERROR:
	case LDAP_ENCODING_ERROR:
	case LDAP_DECODING_ERROR:
	case LDAP_INVALID_CREDENTIALS:
	case LDAP_INAPPROPRIATE_AUTH:
	case LDAP_STRONG_AUTH_REQUIRED:
	case LDAP_CONFIDENTIALITY_REQUIRED:
	case LDAP_AUTH_UNKNOWN:
	case LDAP_NO_MEMORY:
	case LDAP_OTHER:
		return 1;
	default:
		return 0;
	}
}

/* Record an LDAP failure as the thread's detail; KMS_ERR_IO (connection) or KMS_ERR_PROTO (entry). */
static int
ldap_fail(struct pub_ldap *pl, int lrc, const char *what, const char *dn)
{
	char *diag = NULL, clean[200] = "", cdn[200] = "";

	if (pl->ld)
		ldap_get_option(pl->ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
	if (diag && diag[0])
		kms_sanitize(diag, strlen(diag), clean, sizeof(clean));
	if (dn)
		kms_sanitize(dn, strlen(dn), cdn, sizeof(cdn));
	ldap_memfree(diag);
	return kms_fail(is_connection_error(lrc) ? KMS_ERR_IO : KMS_ERR_PROTO, "LDAP %s%s%s: %s (%d)%s%s",
	    what, dn ? " " : "", cdn, ldap_err2string(lrc), lrc, clean[0] ? ": " : "", clean);
}

/* --------------------------------------------------------- connection */

static void
disconnect(struct pub_ldap *pl)
{
	if (pl->ld) {
		ldap_unbind_ext_s(pl->ld, NULL, NULL);
		pl->ld = NULL;
	}
	pthread_mutex_lock(&pl->mu);
	pl->st.connected = 0;
	pthread_mutex_unlock(&pl->mu);
}

static int
connect_bind(struct pub_ldap *pl)
{
	const struct kms_config *cfg = pl->cfg;
	struct timeval tv = { .tv_sec = (time_t)cfg->ldap.timeout, .tv_usec = 0 };
	int version = LDAP_VERSION3, lrc, rc;
	char *pw = NULL;
	struct berval cred = { 0, NULL };

	if (pl->ld)
		return 0;
	if ((lrc = ldap_initialize(&pl->ld, cfg->ldap.uri)) != LDAP_SUCCESS) {
		pl->ld = NULL;
		return kms_fail(KMS_ERR_CONFIG, "LDAP uri %s: %s", cfg->ldap.uri, ldap_err2string(lrc));
	}
	ldap_set_option(pl->ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(pl->ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	ldap_set_option(pl->ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	ldap_set_option(pl->ld, LDAP_OPT_TIMEOUT, &tv);
	if (cfg->ldap.ca_file[0] != '\0' || cfg->ldap.starttls || strncmp(cfg->ldap.uri, "ldaps://", 8) == 0) {
		int hard = LDAP_OPT_X_TLS_HARD, zero = 0;

		if (cfg->ldap.ca_file[0] != '\0')
			ldap_set_option(pl->ld, LDAP_OPT_X_TLS_CACERTFILE, cfg->ldap.ca_file);
		ldap_set_option(pl->ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &hard);
		ldap_set_option(pl->ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
	}
	if (cfg->ldap.starttls && (lrc = ldap_start_tls_s(pl->ld, NULL, NULL)) != LDAP_SUCCESS) {
		rc = ldap_fail(pl, lrc, "StartTLS with", cfg->ldap.uri);
		goto fail;
	}
	if (strcmp(cfg->ldap.bind_method, "external") == 0) {
		lrc = ldap_sasl_bind_s(pl->ld, NULL, "EXTERNAL", &cred, NULL, NULL, NULL);
		if (lrc != LDAP_SUCCESS) {
			rc = ldap_fail(pl, lrc, "SASL EXTERNAL bind to", cfg->ldap.uri);
			goto fail;
		}
	} else if (cfg->ldap.bind_dn[0] != '\0') {
		if ((rc = kms_read_secret_file(cfg->ldap.bind_password_file, &pw)) != 0) {
			rc = kms_fail(rc, "LDAP bind_password_file %s: %s", cfg->ldap.bind_password_file, kms_last_error());
			goto fail;
		}
		cred.bv_val = pw;
		cred.bv_len = strlen(pw);
		lrc = ldap_sasl_bind_s(pl->ld, cfg->ldap.bind_dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
		kms_secret_free(pw);
		if (lrc != LDAP_SUCCESS) {
			rc = ldap_fail(pl, lrc, "bind as", cfg->ldap.bind_dn);
			goto fail;
		}
	}
	pthread_mutex_lock(&pl->mu);
	pl->st.connected = 1;
	pthread_mutex_unlock(&pl->mu);
	kms_log(KMS_LOG_INFO, "ldap: connected to %s", cfg->ldap.uri);
	return 0;
fail:
	disconnect(pl);
	return rc;
}

/* ---------------------------------------------------------- escaping */

/* RFC 4515 value escaping for a filter; malloc'd. */
static char *
filter_escape(const char *in)
{
	size_t n = strlen(in);
	char *out = malloc(n * 3 + 1), *o = out;

	if (out == NULL)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		if (*p == '*' || *p == '(' || *p == ')' || *p == '\\' || *p < 0x20 || *p >= 0x7f) {
			snprintf(o, 4, "\\%02x", *p);
			o += 3;
		} else {
			*o++ = (char)*p;
		}
	}
	*o = '\0';
	return out;
}

/* RFC 4514 attribute value escaping for a DN; malloc'd. */
static char *
dn_escape(const char *in)
{
	size_t n = strlen(in);
	char *out = malloc(n * 3 + 1), *o = out;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c < 0x20 || c >= 0x7f) {
			snprintf(o, 4, "\\%02x", c);
			o += 3;
			continue;
		}
		if (strchr(",+\"\\<>;=", c) || (i == 0 && (c == ' ' || c == '#')) || (i == n - 1 && c == ' '))
			*o++ = '\\';
		*o++ = (char)c;
	}
	*o = '\0';
	return out;
}

/*
 * Expand a template: every %s becomes value (already escaped), %u its
 * local part (escaped with esc), %% a percent sign.  malloc'd.
 */
static char *
expand(const char *tmpl, const char *email, char *(*esc)(const char *))
{
	char *full = esc(email), *local = NULL, *out = NULL, *lp = strdup(email);
	size_t cap, o = 0;

	if (full == NULL || lp == NULL)
		goto out;
	if (strrchr(lp, '@'))
		*strrchr(lp, '@') = '\0';
	if ((local = esc(lp)) == NULL)
		goto out;
	cap = strlen(tmpl) + 1;
	for (const char *p = tmpl; *p; p++)
		if (*p == '%')
			cap += strlen(full);
	if ((out = malloc(cap)) == NULL)
		goto out;
	for (const char *p = tmpl; *p; p++) {
		const char *v = NULL;

		if (*p == '%' && p[1] == 's')
			v = full;
		else if (*p == '%' && p[1] == 'u')
			v = local;
		else if (*p == '%' && p[1] == '%')
			v = "%";
		if (v) {
			memcpy(out + o, v, strlen(v));
			o += strlen(v);
			p++;
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
out:
	free(full);
	free(local);
	free(lp);
	return out;
}

/* ------------------------------------------------------------ values */

struct bv_list {
	struct berval bv[4];
	struct berval *ptrs[5];
	size_t n;
};

static void
bv_add(struct bv_list *l, unsigned char *der, int len)
{
	if (der == NULL || len <= 0 || l->n >= 4)
		return;
	l->bv[l->n].bv_val = (char *)der;
	l->bv[l->n].bv_len = (ber_len_t)len;
	l->ptrs[l->n] = &l->bv[l->n];
	l->n++;
	l->ptrs[l->n] = NULL;
}

static void
bv_free(struct bv_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		OPENSSL_free(l->bv[i].bv_val);
	l->n = 0;
	l->ptrs[0] = NULL;
}

/* The user's certificates to publish: the current signing and encryption ones. */
static int
user_certs(struct kms_store *st, const char *email, time_t now, STACK_OF(X509) **out, char **name)
{
	X509 *sign = NULL, *enc = NULL;
	STACK_OF(X509) *sk;
	int rc;

	*out = NULL;
	if ((rc = ca_store_current(st, email, now, &sign, &enc, name)) != 0)
		return rc;
	/*
	 * Encryption first: clients that take one value of userCertificate
	 * (dirmngr 2.2 hands gpgsm only the first) then get the one they can
	 * encrypt to.  OpenLDAP keeps the order values were written in.
	 */
	if ((sk = sk_X509_new_null()) == NULL)
		goto nomem;
	if (enc && !sk_X509_push(sk, enc))
		goto nomem;
	enc = NULL;
	if (sign && !sk_X509_push(sk, sign))
		goto nomem;
	*out = sk;
	return 0;
nomem:
	X509_free(sign);
	X509_free(enc);
	sk_X509_pop_free(sk, X509_free);
	free(*name);
	*name = NULL;
	return KMS_ERR_NOMEM;
}

int
pub_smime_certs_der(STACK_OF(X509) *certs, X509 *ca_cert, unsigned char **der, int *len)
{
	PKCS7 *p7 = PKCS7_new();
	int rc = KMS_ERR_CRYPTO;

	*der = NULL;
	*len = 0;
	/* Certs-only SignedData (RFC 5652 5.1 with no signers, RFC 8551 3.6). */
	if (p7 == NULL || !PKCS7_set_type(p7, NID_pkcs7_signed) || !PKCS7_content_new(p7, NID_pkcs7_data))
		goto out;
	for (int i = 0; i < sk_X509_num(certs); i++)
		if (!PKCS7_add_certificate(p7, sk_X509_value(certs, i)))
			goto out;
	if (ca_cert && !PKCS7_add_certificate(p7, ca_cert))
		goto out;
	if ((*len = i2d_PKCS7(p7, der)) <= 0) {
		*der = NULL;
		goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "building userSMIMECertificate");
	PKCS7_free(p7);
	return rc;
}

/* Does the CMS value der hold every certificate of certs? */
static int
holds_all(const unsigned char *der, size_t len, STACK_OF(X509) *certs)
{
	const unsigned char *p = der;
	CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
	STACK_OF(X509) *in = cms ? CMS_get1_certs(cms) : NULL;
	int all = in != NULL;

	for (int i = 0; all && i < sk_X509_num(certs); i++) {
		int found = 0;

		for (int j = 0; !found && j < sk_X509_num(in); j++)
			found = X509_cmp(sk_X509_value(certs, i), sk_X509_value(in, j)) == 0;
		all = found;
	}
	sk_X509_pop_free(in, X509_free);
	CMS_ContentInfo_free(cms);
	ERR_clear_error();
	return all;
}

int
pub_smime_value(struct kms_store *st, STACK_OF(X509) *certs, X509 *ca_cert, unsigned char **der, int *len)
{
	unsigned char *kept = NULL;
	size_t klen = 0;
	int rc;

	*der = NULL;
	*len = 0;
	/* Both certificates of one enrollment: [0] encryption, [1] signing. */
	if (sk_X509_num(certs) == 2) {
		rc = ca_store_get_smime(st, sk_X509_value(certs, 1), &kept, &klen);
		if (rc == 0 && klen <= INT_MAX && holds_all(kept, klen, certs)) {
			*der = kept;
			*len = (int)klen;
			return 0;
		}
		OPENSSL_free(kept);
		if (rc != 0 && rc != KMS_ERR_NOTFOUND)
			return rc;
		kms_clear_error();
	}
	/* A signing key the user holds (issue --csr), or a value from before: certificates only. */
	return pub_smime_certs_der(certs, ca_cert, der, len);
}

/* ------------------------------------------------------------ writing */

static int
add_user(struct pub_ldap *pl, const char *dn, const char *email, const char *name,
    struct bv_list *certs, struct bv_list *smime)
{
	char *oc[] = { "inetOrgPerson", NULL }, *cn[] = { (char *)(name ? name : email), NULL };
	char *mail[] = { (char *)email, NULL }, *sn[] = { NULL, NULL }, *local = strdup(email);
	LDAPMod m_oc = { LDAP_MOD_ADD, "objectClass", { oc } };
	LDAPMod m_cn = { LDAP_MOD_ADD, "cn", { cn } };
	LDAPMod m_sn = { LDAP_MOD_ADD, "sn", { sn } };
	LDAPMod m_mail = { LDAP_MOD_ADD, "mail", { mail } };
	LDAPMod m_cert = { LDAP_MOD_ADD | LDAP_MOD_BVALUES, "userCertificate;binary", { NULL } };
	LDAPMod m_smime = { LDAP_MOD_ADD | LDAP_MOD_BVALUES, "userSMIMECertificate", { NULL } };
	LDAPMod *mods[] = { &m_oc, &m_cn, &m_sn, &m_mail, &m_cert, &m_smime, NULL };
	int lrc;

	if (local == NULL)
		return KMS_ERR_NOMEM;
	if (strrchr(local, '@'))
		*strrchr(local, '@') = '\0';
	sn[0] = local;
	m_cert.mod_bvalues = certs->ptrs;
	m_smime.mod_bvalues = smime->ptrs;
	lrc = ldap_add_ext_s(pl->ld, dn, mods, NULL, NULL);
	free(local);
	if (lrc == LDAP_ALREADY_EXISTS)
		return KMS_ERR_EXISTS;
	if (lrc != LDAP_SUCCESS)
		return ldap_fail(pl, lrc, "add", dn);
	return 0;
}

static int
modify_user(struct pub_ldap *pl, const char *dn, struct bv_list *certs, struct bv_list *smime)
{
	LDAPMod m_cert = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "userCertificate;binary", { NULL } };
	LDAPMod m_smime = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "userSMIMECertificate", { NULL } };
	LDAPMod *mods[] = { &m_cert, &m_smime, NULL };
	int lrc;

	/* REPLACE with no values removes the attribute (and is fine if it is absent). */
	m_cert.mod_bvalues = certs->n ? certs->ptrs : NULL;
	m_smime.mod_bvalues = smime->n ? smime->ptrs : NULL;
	lrc = ldap_modify_ext_s(pl->ld, dn, mods, NULL, NULL);
	if (lrc == LDAP_NO_SUCH_OBJECT)
		return KMS_ERR_NOTFOUND;
	if (lrc != LDAP_SUCCESS)
		return ldap_fail(pl, lrc, "modify", dn);
	return 0;
}

/* pub_ldap_put_user() is after the batch code below: one entry is a batch of one. */

/* The CRLs of set as LDAP values (copied into OpenSSL's allocator, which bv_free uses). */
static int
crl_values(const struct ca_crl_set *set, int with_delta, struct bv_list *crl, struct bv_list *delta)
{
	unsigned char *c = OPENSSL_memdup(set->full_der, set->full_len);

	if (c == NULL)
		return KMS_ERR_NOMEM;
	bv_add(crl, c, (int)set->full_len);
	if (with_delta && set->delta_der) {
		if ((c = OPENSSL_memdup(set->delta_der, set->delta_len)) == NULL)
			return KMS_ERR_NOMEM;
		bv_add(delta, c, (int)set->delta_len);
	}
	return 0;
}

/* The value of a DN's first RDN when it is cn=NAME (malloc'd), else NULL. */
static char *
rdn_cn(const char *dn)
{
	LDAPDN parsed = NULL;
	char *cn = NULL;

	if (ldap_str2dn(dn, &parsed, LDAP_DN_FORMAT_LDAPV3) == LDAP_SUCCESS && parsed && parsed[0] && parsed[0][0] &&
	    strcasecmp(parsed[0][0]->la_attr.bv_val, "cn") == 0)
		cn = strndup(parsed[0][0]->la_value.bv_val, parsed[0][0]->la_value.bv_len);
	ldap_dnfree(parsed);
	return cn;
}

int
pub_ldap_put_ca(struct pub_ldap *pl, struct kms_store *st)
{
	const struct kms_config *cfg = pl->cfg;
	struct ca *ca = NULL;
	struct ca_crl_set *set = NULL;
	struct bv_list cacert = { .n = 0 }, crl = { .n = 0 }, delta = { .n = 0 };
	unsigned char *der = NULL;
	int rc, len, lrc;

	if ((rc = connect_bind(pl)) != 0)
		return rc;
	if ((rc = ca_store_load(st, NULL, NULL, &ca)) != 0)
		goto out;
	if ((len = i2d_X509(ca->cert, &der)) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encoding the CA certificate");
		goto out;
	}
	bv_add(&cacert, der, len);
	rc = ca_crl_latest(st, &set);
	if (rc == KMS_ERR_NOTFOUND)
		kms_clear_error();
	else if (rc != 0)
		goto out;
	if (set != NULL && (rc = crl_values(set, cfg->crl.delta, &crl, &delta)) != 0)
		goto out;
	{
		LDAPMod m_ca = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "cACertificate;binary", { NULL } };
		LDAPMod m_crl = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "certificateRevocationList;binary", { NULL } };
		LDAPMod m_delta = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "deltaRevocationList;binary", { NULL } };
		LDAPMod *mods[] = { &m_ca, &m_crl, &m_delta, NULL };

		m_ca.mod_bvalues = cacert.ptrs;
		m_crl.mod_bvalues = crl.n ? crl.ptrs : NULL;
		m_delta.mod_bvalues = delta.n ? delta.ptrs : NULL;
		lrc = ldap_modify_ext_s(pl->ld, cfg->ldap.ca_dn, mods, NULL, NULL);
		if (lrc == LDAP_NO_SUCH_OBJECT) {
			char *oc[] = { "cRLDistributionPoint", "pkiCA", NULL }, *cn[] = { NULL, NULL };
			LDAPMod a_oc = { LDAP_MOD_ADD, "objectClass", { oc } };
			LDAPMod a_cn = { LDAP_MOD_ADD, "cn", { cn } };
			LDAPMod *adds[] = { &a_oc, &a_cn, &m_ca, &m_crl, &m_delta, NULL };
			char *cnval = NULL;

			if ((cnval = rdn_cn(cfg->ldap.ca_dn)) == NULL) {
				rc = kms_fail(KMS_ERR_CONFIG, "LDAP: [ldap] ca_dn %s must start with cn=", cfg->ldap.ca_dn);
				goto out;
			}
			cn[0] = cnval;
			m_ca.mod_op = m_crl.mod_op = m_delta.mod_op = LDAP_MOD_ADD | LDAP_MOD_BVALUES;
			/* ADD with no values is an error: leave absent ones out. */
			if (crl.n == 0)
				adds[3] = adds[4] = NULL;
			else if (delta.n == 0)
				adds[4] = NULL;
			lrc = ldap_add_ext_s(pl->ld, cfg->ldap.ca_dn, adds, NULL, NULL);
			free(cnval);
			if (lrc != LDAP_SUCCESS) {
				rc = ldap_fail(pl, lrc, "add", cfg->ldap.ca_dn);
				goto out;
			}
			kms_log(KMS_LOG_INFO, "ldap: created the CA entry %s", cfg->ldap.ca_dn);
		} else if (lrc != LDAP_SUCCESS) {
			rc = ldap_fail(pl, lrc, "modify", cfg->ldap.ca_dn);
			goto out;
		}
	}
	rc = 0;
out:
	bv_free(&cacert);
	bv_free(&crl);
	bv_free(&delta);
	ca_crl_set_free(set);
	ca_free(ca);
	return rc;
}

/* ----------------------------------------------------------- delivery */

int
pub_ldap_new(const struct kms_config *cfg, struct pub_ldap **out)
{
	struct pub_ldap *pl;

	*out = NULL;
	if (cfg->ldap.uri[0] == '\0')
		return kms_fail(KMS_ERR_CONFIG, "[ldap] uri is not set");
	if ((pl = calloc(1, sizeof(*pl))) == NULL)
		return KMS_ERR_NOMEM;
	pl->cfg = cfg;
	pthread_mutex_init(&pl->mu, NULL);
	pthread_cond_init(&pl->cv, NULL);
	*out = pl;
	return 0;
}

static time_t
backoff(const struct kms_config *cfg, int attempts)
{
	time_t d = 1;

	for (int i = 1; i < attempts && d < (time_t)cfg->ldap.retry_max; i++)
		d *= 2;
	return d < (time_t)cfg->ldap.retry_max ? d : (time_t)cfg->ldap.retry_max;
}

/* --------------------------------------------------- pipelined batches */

/*
 * One user entry of a batch.  A batch is written in two pipelined steps
 * over the one connection: every search is sent before the first answer is
 * read, then every modify or add.  The entries of a batch are distinct (the
 * queue holds one row per entry), so their order does not matter; a round
 * trip per operation would (the server answers in well under a millisecond,
 * the wait for each answer is what a synchronous publisher pays).
 */
struct job {
	const struct ca_pubq_item *it;
	struct bv_list cv, sv;      /* userCertificate;binary, userSMIMECertificate */
	char *name;
	char *dn;                   /* the entry: found, templated, or NULL (make one) */
	char *newdn;                /* mail=ADDRESS,<people_dn> when there is none */
	int msgid;                  /* operation in flight, -1 none */
	int adding;
	int cached;                 /* dn came from the DN cache, not from a search */
	int rc;                     /* 0 written; KMS_ERR_PROTO: this entry failed; 1: not finished */
	char err[600];
};

static void
job_fail(struct job *j, int rc)
{
	j->rc = rc;
	snprintf(j->err, sizeof(j->err), "%s", kms_last_error());
}

static void
job_free(struct job *j)
{
	bv_free(&j->cv);
	bv_free(&j->sv);
	free(j->name);
	free(j->dn);
	free(j->newdn);
}

/* The values of j's entry, from the store (no network). */
static int
job_prepare(struct pub_ldap *pl, struct kms_store *st, X509 *ca_cert, struct job *j)
{
	STACK_OF(X509) *certs = NULL;
	unsigned char *der = NULL;
	int rc, len;

	if ((rc = user_certs(st, j->it->key, time(NULL), &certs, &j->name)) != 0)
		return rc;
	for (int i = 0; i < sk_X509_num(certs); i++) {
		der = NULL;
		if ((len = i2d_X509(sk_X509_value(certs, i), &der)) <= 0) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encoding a certificate");
			goto out;
		}
		bv_add(&j->cv, der, len);
	}
	if (sk_X509_num(certs) > 0) {
		if ((rc = pub_smime_value(st, certs, ca_cert, &der, &len)) != 0)
			goto out;
		bv_add(&j->sv, der, len);
	}
	if (pl->cfg->ldap.user_dn_template[0] != '\0' &&
	    (j->dn = expand(pl->cfg->ldap.user_dn_template, j->it->key, dn_escape)) == NULL)
		rc = KMS_ERR_NOMEM;
out:
	sk_X509_pop_free(certs, X509_free);
	return rc;
}

/* Wait for the answer to msgid; LDAP_SUCCESS and *res, or the connection's error code. */
static int
await(struct pub_ldap *pl, int msgid, LDAPMessage **res)
{
	struct timeval tv = { .tv_sec = (time_t)pl->cfg->ldap.timeout, .tv_usec = 0 };
	int r, lrc = LDAP_SERVER_DOWN;

	*res = NULL;
	r = ldap_result(pl->ld, msgid, LDAP_MSG_ALL, &tv, res);
	if (r > 0)
		return LDAP_SUCCESS;
	if (r == 0)
		return LDAP_TIMEOUT;
	ldap_get_option(pl->ld, LDAP_OPT_RESULT_CODE, &lrc);
	return lrc == LDAP_SUCCESS ? LDAP_SERVER_DOWN : lrc;
}

/* Step 1: every entry not named by a template is looked for by user_filter. */
static int
find_all(struct pub_ldap *pl, struct job *jobs, size_t n)
{
	const struct kms_config *cfg = pl->cfg;
	struct timeval tv = { .tv_sec = (time_t)cfg->ldap.timeout, .tv_usec = 0 };
	char *attrs[] = { LDAP_NO_ATTRS, NULL };
	int lrc;

	for (size_t i = 0; i < n; i++) {
		char *filter;

		jobs[i].msgid = -1;
		if (jobs[i].rc != 1 || jobs[i].dn != NULL)
			continue;
		if (dn_cache_get(pl, jobs[i].it->key) != NULL) {
			if ((jobs[i].dn = strdup(dn_cache_get(pl, jobs[i].it->key))) == NULL)
				return KMS_ERR_NOMEM;
			jobs[i].cached = 1;
			continue;
		}
		if ((filter = expand(cfg->ldap.user_filter, jobs[i].it->key, filter_escape)) == NULL)
			return KMS_ERR_NOMEM;
		lrc = ldap_search_ext(pl->ld, cfg->ldap.base_dn, LDAP_SCOPE_SUBTREE, filter, attrs, 1, NULL, NULL, &tv, 2,
		    &jobs[i].msgid);
		free(filter);
		if (lrc != LDAP_SUCCESS)
			return ldap_fail(pl, lrc, "search for", jobs[i].it->key);
	}
	for (size_t i = 0; i < n; i++) {
		LDAPMessage *res = NULL, *e;
		struct job *j = &jobs[i];
		int count, prc;
		char *d;

		if (j->msgid < 0)
			continue;
		if ((lrc = await(pl, j->msgid, &res)) != LDAP_SUCCESS)
			return ldap_fail(pl, lrc, "search for", j->it->key);
		j->msgid = -1;
		prc = ldap_parse_result(pl->ld, res, &lrc, NULL, NULL, NULL, NULL, 0);
		count = ldap_count_entries(pl->ld, res);
		if (prc != LDAP_SUCCESS || (lrc != LDAP_SUCCESS && lrc != LDAP_SIZELIMIT_EXCEEDED)) {
			int code = prc != LDAP_SUCCESS ? prc : lrc;

			ldap_msgfree(res);
			if (is_connection_error(code))
				return ldap_fail(pl, code, "search for", j->it->key);
			job_fail(j, ldap_fail(pl, code, "search for", j->it->key));
			continue;
		}
		if (lrc == LDAP_SIZELIMIT_EXCEEDED || count > 1) {
			job_fail(j, kms_fail(KMS_ERR_PROTO, "LDAP: more than one entry matches %s under %s; "
			    "make [ldap] user_filter select one", j->it->key, cfg->ldap.base_dn));
		} else if (count == 1 && (e = ldap_first_entry(pl->ld, res)) != NULL &&
		    (d = ldap_get_dn(pl->ld, e)) != NULL) {
			j->dn = strdup(d);
			ldap_memfree(d);
			if (j->dn == NULL) {
				ldap_msgfree(res);
				return KMS_ERR_NOMEM;
			}
		}
		ldap_msgfree(res);
	}
	return 0;
}

/* Send j's modify (entry known) or add (entry to make); j->msgid, or j done when there is nothing to do. */
static int
send_write(struct pub_ldap *pl, struct job *j)
{
	LDAPMod m_cert = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "userCertificate;binary", { NULL } };
	LDAPMod m_smime = { LDAP_MOD_REPLACE | LDAP_MOD_BVALUES, "userSMIMECertificate", { NULL } };
	int lrc;

	j->adding = j->dn == NULL;
	if (!j->adding) {
		LDAPMod *mods[] = { &m_cert, &m_smime, NULL };

		/* REPLACE with no values removes the attribute (and is fine if it is absent). */
		m_cert.mod_bvalues = j->cv.n ? j->cv.ptrs : NULL;
		m_smime.mod_bvalues = j->sv.n ? j->sv.ptrs : NULL;
		lrc = ldap_modify_ext(pl->ld, j->dn, mods, NULL, NULL, &j->msgid);
		return lrc == LDAP_SUCCESS ? 0 : ldap_fail(pl, lrc, "modify", j->dn);
	}
	if (j->cv.n == 0) {
		j->rc = 0;              /* nothing to publish and no entry to clean */
		return 0;
	}
	{
		const char *email = j->it->key;
		char *oc[] = { "inetOrgPerson", NULL }, *cn[] = { (char *)(j->name ? j->name : email), NULL };
		char *mail[] = { (char *)email, NULL }, *sn[] = { NULL, NULL }, *local = strdup(email), *e = dn_escape(email);
		LDAPMod m_oc = { LDAP_MOD_ADD, "objectClass", { oc } };
		LDAPMod m_cn = { LDAP_MOD_ADD, "cn", { cn } };
		LDAPMod m_sn = { LDAP_MOD_ADD, "sn", { sn } };
		LDAPMod m_mail = { LDAP_MOD_ADD, "mail", { mail } };
		LDAPMod *mods[] = { &m_oc, &m_cn, &m_sn, &m_mail, &m_cert, &m_smime, NULL };
		size_t len = e ? strlen(e) + strlen(pl->cfg->ldap.people_dn) + 8 : 0;

		if (local == NULL || e == NULL || (j->newdn = malloc(len)) == NULL) {
			free(local);
			free(e);
			return KMS_ERR_NOMEM;
		}
		snprintf(j->newdn, len, "mail=%s,%s", e, pl->cfg->ldap.people_dn);
		free(e);
		if (strrchr(local, '@'))
			*strrchr(local, '@') = '\0';
		sn[0] = local;
		m_cert.mod_op = m_smime.mod_op = LDAP_MOD_ADD | LDAP_MOD_BVALUES;
		m_cert.mod_bvalues = j->cv.ptrs;
		m_smime.mod_bvalues = j->sv.ptrs;
		lrc = ldap_add_ext(pl->ld, j->newdn, mods, NULL, NULL, &j->msgid);
		free(local);
		return lrc == LDAP_SUCCESS ? 0 : ldap_fail(pl, lrc, "add", j->newdn);
	}
}

/* Step 2: every write sent, then every answer read. */
static int
write_all(struct pub_ldap *pl, struct job *jobs, size_t n)
{
	int rc, lrc;

	for (size_t i = 0; i < n; i++)
		if (jobs[i].rc == 1 && (rc = send_write(pl, &jobs[i])) != 0)
			return rc;
	for (size_t i = 0; i < n; i++) {
		struct job *j = &jobs[i];
		LDAPMessage *res = NULL;
		const char *dn = j->adding ? j->newdn : j->dn;
		int prc;

		if (j->rc != 1 || j->msgid < 0)
			continue;
		if ((lrc = await(pl, j->msgid, &res)) != LDAP_SUCCESS)
			return ldap_fail(pl, lrc, j->adding ? "add" : "modify", dn);
		j->msgid = -1;
		prc = ldap_parse_result(pl->ld, res, &lrc, NULL, NULL, NULL, NULL, 1);
		if (prc != LDAP_SUCCESS)
			lrc = prc;
		if (lrc == LDAP_SUCCESS) {
			j->rc = 0;
			if (j->adding)
				kms_log(KMS_LOG_DEBUG, "ldap: created %s", dn);
			dn_cache_put(pl, j->it->key, dn);
			continue;
		}
		if (is_connection_error(lrc))
			return ldap_fail(pl, lrc, j->adding ? "add" : "modify", dn);
		dn_cache_drop(pl, j->it->key);
		if (j->cached && lrc == LDAP_NO_SUCH_OBJECT) {
			/* Moved or deleted behind our back: look for it again, this entry alone. */
			free(j->dn);
			j->dn = NULL;
			j->cached = 0;
			if ((rc = find_all(pl, j, 1)) != 0 || (j->rc == 1 && (rc = write_all(pl, j, 1)) != 0))
				return rc;
			continue;
		}
		/* The rare races go the synchronous way: a template's entry not made yet, an entry made since our search. */
		if (!j->adding && lrc == LDAP_NO_SUCH_OBJECT && pl->cfg->ldap.user_dn_template[0] != '\0' && j->cv.n > 0)
			rc = add_user(pl, j->dn, j->it->key, j->name, &j->cv, &j->sv);
		else if (j->adding && lrc == LDAP_ALREADY_EXISTS)
			rc = modify_user(pl, j->newdn, &j->cv, &j->sv);
		else if (!j->adding && lrc == LDAP_NO_SUCH_OBJECT && j->cv.n == 0)
			rc = 0;         /* gone, and nothing to publish */
		else
			rc = ldap_fail(pl, lrc, j->adding ? "add" : "modify", dn);
		if (rc == KMS_ERR_IO)
			return rc;
		if (rc == 0)
			j->rc = 0;
		else
			job_fail(j, rc == KMS_ERR_NOTFOUND ? KMS_ERR_PROTO : rc);
	}
	return 0;
}

/*
 * Write the user entries of jobs (rc 1 on entry: to do).  Each ends with
 * rc 0 (written) or an entry error in rc and err; a connection-level error
 * is returned and leaves the unfinished ones at 1.
 */
static int
deliver_users(struct pub_ldap *pl, struct kms_store *st, struct job *jobs, size_t n)
{
	struct ca *ca = NULL;
	int rc;

	if (n == 0)
		return 0;
	if ((rc = connect_bind(pl)) != 0)
		return rc;
	if ((rc = ca_store_load(st, NULL, NULL, &ca)) != 0)
		return rc;
	for (size_t i = 0; i < n; i++) {
		kms_clear_error();
		if ((rc = job_prepare(pl, st, ca->cert, &jobs[i])) == KMS_ERR_NOMEM)
			goto out;
		if (rc != 0)
			job_fail(&jobs[i], rc);
	}
	if ((rc = find_all(pl, jobs, n)) == 0)
		rc = write_all(pl, jobs, n);
out:
	/* On a connection error the caller drops the connection, and answers still in flight with it. */
	ca_free(ca);
	return rc;
}

int
pub_ldap_put_user(struct pub_ldap *pl, struct kms_store *st, const char *email)
{
	struct ca_pubq_item it = { .seq = 0, .kind = CA_PUBQ_USER, .key = (char *)email };
	struct job j = { .it = &it, .msgid = -1, .rc = 1 };
	int rc;

	rc = deliver_users(pl, st, &j, 1);
	if (rc == 0 && j.rc != 0)
		rc = kms_fail(j.rc, "%s", j.err);
	job_free(&j);
	return rc;
}

/* An entry that cannot be written: it waits with back-off, the others go on. */
static void
defer_entry(struct pub_ldap *pl, struct kms_store *st, const struct ca_pubq_item *it, const char *msg, time_t now)
{
	kms_log(KMS_LOG_ERR, "ldap: %s %s: %s (attempt %d; retried with back-off)",
	    it->kind, it->key[0] ? it->key : "entry", msg, it->attempts + 1);
	set_status_error(pl, msg);
	if (ca_pubq_defer(st, it->seq, now + backoff(pl->cfg, it->attempts + 1), msg) != 0)
		kms_log(KMS_LOG_ERR, "ldap: %s", kms_last_error());
}

int
pub_ldap_deliver(struct pub_ldap *pl, struct kms_store *st, size_t max, size_t *delivered)
{
	struct ca_pubq_item *items = NULL;
	struct job *jobs = NULL;
	size_t n = 0, ndone = 0, njobs = 0;
	long long *done = NULL;
	time_t now = time(NULL);
	char msg[600] = "";
	int rc, conn = 0, entry_failed = 0;

	*delivered = 0;
	if ((rc = ca_pubq_next(st, now, max, &items, &n)) != 0 || n == 0)
		return rc;
	if ((done = calloc(n, sizeof(*done))) == NULL || (jobs = calloc(n, sizeof(*jobs))) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	/* The CA entry first (rare, one operation), then the users in one pipelined round. */
	for (size_t i = 0; i < n; i++) {
		if (strcmp(items[i].kind, CA_PUBQ_CA) != 0) {
			jobs[njobs].it = &items[i];
			jobs[njobs].msgid = -1;
			jobs[njobs++].rc = 1;
			continue;
		}
		if (conn)
			continue;
		if ((rc = pub_ldap_put_ca(pl, st)) == 0) {
			done[ndone++] = items[i].seq;
		} else if (rc == KMS_ERR_IO || rc == KMS_ERR_CONFIG || rc == KMS_ERR_NOMEM) {
			conn = rc;
			snprintf(msg, sizeof(msg), "%s", kms_last_error());
		} else {
			snprintf(msg, sizeof(msg), "%s", kms_last_error());
			defer_entry(pl, st, &items[i], msg, now);
			entry_failed = rc;
		}
	}
	if (!conn && (rc = deliver_users(pl, st, jobs, njobs)) != 0) {
		conn = rc;
		snprintf(msg, sizeof(msg), "%s", kms_last_error());
	}
	for (size_t i = 0; i < njobs; i++) {
		if (jobs[i].rc == 0) {
			done[ndone++] = jobs[i].it->seq;
		} else if (jobs[i].rc != 1) {
			defer_entry(pl, st, jobs[i].it, jobs[i].err, now);
			if (!conn) {
				entry_failed = jobs[i].rc;
				snprintf(msg, sizeof(msg), "%s", jobs[i].err);
			}
		}
	}
	if (conn) {
		/* The connection (or the whole setup) failed: the rest stays queued, in order. */
		disconnect(pl);
	}
	rc = ca_pubq_done(st, done, ndone);
	if (rc == 0 && (conn || entry_failed))
		rc = kms_fail(conn ? conn : entry_failed, "%s", msg);
	*delivered = ndone;
	if (ndone > 0) {
		pthread_mutex_lock(&pl->mu);
		pl->st.last_ok = time(NULL);
		pl->st.delivered += (long long)ndone;
		pthread_mutex_unlock(&pl->mu);
	}
out:
	for (size_t i = 0; jobs && i < njobs; i++)
		job_free(&jobs[i]);
	free(jobs);
	free(done);
	ca_pubq_items_free(items, n);
	return rc;
}

void
pub_ldap_free(struct pub_ldap *pl)
{
	if (pl == NULL)
		return;
	disconnect(pl);
	dn_cache_clear(pl);
	pthread_mutex_destroy(&pl->mu);
	pthread_cond_destroy(&pl->cv);
	kms_config_unref(pl->cfg_ref);
	kms_config_unref(pl->pending);
	free(pl->store_path);
	free(pl);
}

/* ------------------------------------------------------------- thread */

static void
wait_for(struct pub_ldap *pl, time_t seconds)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += seconds;
	pthread_mutex_lock(&pl->mu);
	while (!pl->stop && !pl->kicked) {
		if (pthread_cond_timedwait(&pl->cv, &pl->mu, &ts) == ETIMEDOUT)
			break;
	}
	pl->kicked = 0;
	pthread_mutex_unlock(&pl->mu);
}

static int
stopping(struct pub_ldap *pl)
{
	int s;

	pthread_mutex_lock(&pl->mu);
	s = pl->stop;
	pthread_mutex_unlock(&pl->mu);
	return s;
}

/* Between rounds: take the settings of a reload, if any (1 when taken). */
static int
adopt_pending(struct pub_ldap *pl)
{
	struct kms_config *cfg;

	pthread_mutex_lock(&pl->mu);
	cfg = pl->pending;
	pl->pending = NULL;
	pthread_mutex_unlock(&pl->mu);
	if (cfg == NULL)
		return 0;
	disconnect(pl);
	dn_cache_clear(pl);
	kms_config_unref(pl->cfg_ref);
	pl->cfg_ref = cfg;
	pl->cfg = cfg;
	pthread_mutex_lock(&pl->mu);
	pl->st.next_retry = 0;
	pl->st.failures = 0;
	pthread_mutex_unlock(&pl->mu);
	kms_log(KMS_LOG_INFO, "ldap: settings reloaded; publishing to %s as %s", cfg->ldap.uri,
	    strcmp(cfg->ldap.bind_method, "external") == 0 ? "SASL EXTERNAL" :
	    cfg->ldap.bind_dn[0] ? cfg->ldap.bind_dn : "anonymous");
	return 1;
}

static int
reload_waiting(struct pub_ldap *pl)
{
	int r;

	pthread_mutex_lock(&pl->mu);
	r = pl->pending != NULL;
	pthread_mutex_unlock(&pl->mu);
	return r;
}

static void *
run(void *arg)
{
	struct pub_ldap *pl = arg;
	struct kms_store *st = NULL;
	int failures = 0;
	time_t last_sweep = 0;

	while (!stopping(pl)) {
		size_t done = 0;
		int rc;

		if (adopt_pending(pl))
			failures = 0;
		if (st == NULL && kms_store_open(pl->store_path, 0, &st) != 0) {
			kms_log(KMS_LOG_ERR, "ldap: cannot open the store: %s", kms_last_error());
			wait_for(pl, 5);
			continue;
		}
		if (time(NULL) - last_sweep >= 60) {
			long long q = 0;

			if (ca_pubq_sweep_expired(st, time(NULL), &q) != 0)
				kms_log(KMS_LOG_ERR, "ldap: expiry sweep: %s", kms_last_error());
			else if (q > 0)
				kms_log(KMS_LOG_INFO, "ldap: %lld entr%s with expired certificates queued", q, q == 1 ? "y" : "ies");
			last_sweep = time(NULL);
		}
		rc = pub_ldap_deliver(pl, st, PUB_LDAP_BATCH, &done);
		if (rc == 0 && done > 0) {
			failures = 0;
			continue;       /* more may be waiting */
		}
		if (rc == 0) {
			pthread_mutex_lock(&pl->mu);
			pl->st.next_retry = 0;
			pthread_mutex_unlock(&pl->mu);
			wait_for(pl, 1);        /* idle: a kick or a second, whichever comes first */
			continue;
		}
		if (rc == KMS_ERR_PROTO) {
			/* One entry deferred, the rest went: not a connection problem. */
			failures = 0;
			if (done == 0)
				wait_for(pl, 1);
			continue;
		}
		{
			time_t d = backoff(pl->cfg, ++failures);
			char msg[600];

			snprintf(msg, sizeof(msg), "%s", kms_last_error());
			if (failures == 1 || failures % 10 == 0)
				kms_log(KMS_LOG_ERR, "ldap: %s; retrying in %lld s (attempt %d)", msg, (long long)d, failures);
			set_status_error(pl, msg);
			pthread_mutex_lock(&pl->mu);
			pl->st.next_retry = time(NULL) + d;
			pl->st.failures = failures;
			pthread_mutex_unlock(&pl->mu);
			/* Back-off: a kick does not cut it short, only stop or new settings do. */
			for (time_t end = time(NULL) + d; !stopping(pl) && !reload_waiting(pl) && time(NULL) < end;)
				wait_for(pl, 1);
		}
	}
	kms_store_close(st);
	return NULL;
}

int
pub_ldap_start(struct kms_config *cfg, const char *store_path, struct pub_ldap **out)
{
	struct pub_ldap *pl = NULL;
	int rc;

	*out = NULL;
	if ((rc = pub_ldap_new(cfg, &pl)) != 0)
		return rc;
	pl->cfg_ref = kms_config_ref(cfg);
	if ((pl->store_path = strdup(store_path)) == NULL) {
		pub_ldap_free(pl);
		return KMS_ERR_NOMEM;
	}
	if (pthread_create(&pl->th, NULL, run, pl) != 0) {
		pub_ldap_free(pl);
		return kms_fail(KMS_ERR_IO, "ldap: cannot start the delivery thread");
	}
	pl->running = 1;
	*out = pl;
	return 0;
}

void
pub_ldap_kick(struct pub_ldap *pl)
{
	if (pl == NULL)
		return;
	pthread_mutex_lock(&pl->mu);
	pl->kicked = 1;
	pthread_cond_signal(&pl->cv);
	pthread_mutex_unlock(&pl->mu);
}

void
pub_ldap_reconfigure(struct pub_ldap *pl, struct kms_config *cfg)
{
	struct kms_config *old;

	if (pl == NULL)
		return;
	pthread_mutex_lock(&pl->mu);
	old = pl->pending;
	pl->pending = kms_config_ref(cfg);
	pl->kicked = 1;
	pthread_cond_signal(&pl->cv);
	pthread_mutex_unlock(&pl->mu);
	kms_config_unref(old);
}

void
pub_ldap_status(struct pub_ldap *pl, struct pub_ldap_status *out)
{
	memset(out, 0, sizeof(*out));
	if (pl == NULL)
		return;
	pthread_mutex_lock(&pl->mu);
	*out = pl->st;
	pthread_mutex_unlock(&pl->mu);
}

void
pub_ldap_stop(struct pub_ldap *pl)
{
	if (pl == NULL)
		return;
	if (pl->running) {
		pthread_mutex_lock(&pl->mu);
		pl->stop = 1;
		pthread_cond_signal(&pl->cv);
		pthread_mutex_unlock(&pl->mu);
		pthread_join(pl->th, NULL);
		pl->running = 0;
	}
	pub_ldap_free(pl);
}
