/*
 * crl.c - building, signing, storing and publishing our CRLs.
 *
 * Entry points: ca_crl_issue() (full CRL and, with opts->delta, a delta
 * CRL, from the certs table), ca_crl_latest(), ca_crl_publish(),
 * ca_crl_set_free(), and the small DER writer of ca/crlint.h.
 *
 * A CRL with a million entries is encoded by streaming: the rows come out of
 * SQLite sorted by serial and each revokedCertificates entry is written as
 * DER straight into one growing buffer, which is then signed over its
 * TBSCertList bytes and wrapped.  No X509_REVOKED object is ever made, so the
 * cost is one pass and about twice the CRL's size in memory.
 *
 * Numbering: full and delta CRLs share one sequence (RFC 5280 5.2.3), kept in
 * the crls table.  ca_store_revoke() stamps each revocation with the number
 * the next CRL will have (certs.crl_number), so a revocation is in full CRL
 * B exactly when its stamp is at most B; the delta issued with full CRL n
 * names the previous full CRL as its base B and lists the revocations
 * stamped above B.  Rows revoked before stamps existed get the new full
 * CRL's number here.  The rows come from the covering index certs_crl.
 * No issuingDistributionPoint is written: RFC 5280 makes it critical, and
 * dirmngr refuses CRLs with critical extensions other than AKI and CRL
 * number, while our CRLs are complete for the CA so they do not need one.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/crlint.h"

/* ------------------------------------------------------------ DER writer */

static int
der_grow(struct ca_der *d, size_t need)
{
	if (d->err)
		return -1;
	if (need > SIZE_MAX - d->len || kms_array_reserve(&d->p, &d->cap, d->len + need, 1, SIZE_MAX) != 0) {
		d->err = 1;
		return -1;
	}
	return 0;
}

static size_t
hdr_len(size_t n)
{
	size_t k = 0;

	if (n < 128)
		return 2;
	while (n > 0) {
		k++;
		n >>= 8;
	}
	return 2 + k;
}

static void
hdr_write(unsigned char *p, unsigned char tag, size_t n)
{
	size_t hl = hdr_len(n);

	p[0] = tag;
	if (hl == 2) {
		p[1] = (unsigned char)n;
		return;
	}
	p[1] = (unsigned char)(0x80 | (hl - 2));
	for (size_t i = hl - 1; i >= 2; i--) {
		p[i] = (unsigned char)(n & 0xff);
		n >>= 8;
	}
}

void
ca_der_put(struct ca_der *d, const void *p, size_t n)
{
	if (der_grow(d, n) != 0)
		return;
	if (n > 0)
		memcpy(d->p + d->len, p, n);
	d->len += n;
}

size_t
ca_der_open(struct ca_der *d)
{
	size_t at = d->len;

	if (der_grow(d, 2) == 0)
		d->len += 2;
	return at;
}

void
ca_der_close(struct ca_der *d, size_t at, unsigned char tag)
{
	size_t clen, hl;

	if (d->err)
		return;
	clen = d->len - at - 2;
	hl = hdr_len(clen);
	if (hl > 2) {
		if (der_grow(d, hl - 2) != 0)
			return;
		memmove(d->p + at + hl, d->p + at + 2, clen);
		d->len += hl - 2;
	}
	hdr_write(d->p + at, tag, clen);
}

void
ca_der_tlv(struct ca_der *d, unsigned char tag, const void *p, size_t n)
{
	size_t hl = hdr_len(n);

	if (der_grow(d, hl + n) != 0)
		return;
	hdr_write(d->p + d->len, tag, n);
	d->len += hl;
	if (n > 0)
		memcpy(d->p + d->len, p, n);
	d->len += n;
}

void
ca_der_uint(struct ca_der *d, const unsigned char *mag, size_t n)
{
	size_t pad;

	while (n > 1 && mag[0] == 0) {
		mag++;
		n--;
	}
	if (n == 0) {
		static const unsigned char zero[] = { 0x02, 0x01, 0x00 };

		ca_der_put(d, zero, sizeof(zero));
		return;
	}
	pad = (mag[0] & 0x80) ? 1 : 0;
	if (der_grow(d, hdr_len(n + pad) + n + pad) != 0)
		return;
	hdr_write(d->p + d->len, 0x02, n + pad);
	d->len += hdr_len(n + pad);
	if (pad)
		d->p[d->len++] = 0;
	memcpy(d->p + d->len, mag, n);
	d->len += n;
}

void
ca_der_int64(struct ca_der *d, long long v)
{
	unsigned char b[8];
	unsigned long long u = (unsigned long long)(v < 0 ? 0 : v);

	for (int i = 7; i >= 0; i--) {
		b[i] = (unsigned char)(u & 0xff);
		u >>= 8;
	}
	ca_der_uint(d, b, sizeof(b));
}

static void
put_digits(unsigned char *p, int v, int n)
{
	for (int i = n - 1; i >= 0; i--) {
		p[i] = (unsigned char)('0' + v % 10);
		v /= 10;
	}
}

static void
der_time_tag(struct ca_der *d, time_t t, int general)
{
	struct tm tm;
	unsigned char b[15];
	int year;

	if (gmtime_r(&t, &tm) == NULL) {
		d->err = 1;
		return;
	}
	year = tm.tm_year + 1900;
	if (!general && (year < 1950 || year > 2049))
		general = 1;
	if (general) {
		put_digits(b, year, 4);
		put_digits(b + 4, tm.tm_mon + 1, 2);
		put_digits(b + 6, tm.tm_mday, 2);
		put_digits(b + 8, tm.tm_hour, 2);
		put_digits(b + 10, tm.tm_min, 2);
		put_digits(b + 12, tm.tm_sec, 2);
		b[14] = 'Z';
		ca_der_tlv(d, 0x18, b, 15);
	} else {
		put_digits(b, year % 100, 2);
		put_digits(b + 2, tm.tm_mon + 1, 2);
		put_digits(b + 4, tm.tm_mday, 2);
		put_digits(b + 6, tm.tm_hour, 2);
		put_digits(b + 8, tm.tm_min, 2);
		put_digits(b + 10, tm.tm_sec, 2);
		b[12] = 'Z';
		ca_der_tlv(d, 0x17, b, 13);
	}
}

void
ca_der_time(struct ca_der *d, time_t t)
{
	der_time_tag(d, t, 0);
}

void
ca_der_gentime(struct ca_der *d, time_t t)
{
	der_time_tag(d, t, 1);
}

/* ------------------------------------------------------------- extensions */

static const unsigned char oid_reason[] = { 0x06, 0x03, 0x55, 0x1d, 0x15 };
static const unsigned char oid_invalidity[] = { 0x06, 0x03, 0x55, 0x1d, 0x18 };
static const unsigned char oid_crl_number[] = { 0x06, 0x03, 0x55, 0x1d, 0x14 };
static const unsigned char oid_delta_ind[] = { 0x06, 0x03, 0x55, 0x1d, 0x1b };
static const unsigned char oid_aki[] = { 0x06, 0x03, 0x55, 0x1d, 0x23 };
static const unsigned char oid_freshest[] = { 0x06, 0x03, 0x55, 0x1d, 0x2e };

struct ext_mark {
	size_t seq, oct;
};

static void
ext_begin(struct ca_der *d, struct ext_mark *m, const unsigned char *oid, size_t oidlen, int critical)
{
	static const unsigned char crit[] = { 0x01, 0x01, 0xff };

	m->seq = ca_der_open(d);
	ca_der_put(d, oid, oidlen);
	if (critical)
		ca_der_put(d, crit, sizeof(crit));
	m->oct = ca_der_open(d);
}

static void
ext_end(struct ca_der *d, const struct ext_mark *m)
{
	ca_der_close(d, m->oct, 0x04);
	ca_der_close(d, m->seq, 0x30);
}

/* ------------------------------------------------------------------ build */

struct crl_params {
	const struct ca *ca;
	long long number;
	long long base;             /* delta: base CRL number; 0 for a full CRL */
	time_t this_update, next_update;
	const char *freshest_url;   /* full CRL: where the delta is */
};

/* Digest for signing with key: SHA-256 for RSA and P-256, SHA-384 for P-384, SHA-512 above. */
static const EVP_MD *
crl_md(EVP_PKEY *key)
{
	if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC) {
		int bits = EVP_PKEY_get_bits(key);

		if (bits > 384)
			return EVP_sha512();
		if (bits > 256)
			return EVP_sha384();
	}
	return EVP_sha256();
}

static int
sig_algid(EVP_PKEY *key, const EVP_MD *md, unsigned char **der, int *len)
{
	X509_ALGOR *alg = NULL;
	int sig_nid, pk = EVP_PKEY_get_base_id(key), rc;

	*der = NULL;
	if (pk != EVP_PKEY_RSA && pk != EVP_PKEY_EC)
		return kms_fail(KMS_ERR_INVALID, "CA key type cannot sign CRLs here (RSA or EC only)");
	if (!OBJ_find_sigid_by_algs(&sig_nid, EVP_MD_get_type(md), pk))
		return kms_fail_openssl(KMS_ERR_CRYPTO, "no signature algorithm for the CA key");
	if ((alg = X509_ALGOR_new()) == NULL)
		return KMS_ERR_NOMEM;
	/* RFC 4055: NULL parameters for RSA; RFC 5758: absent for ECDSA. */
	if (!X509_ALGOR_set0(alg, OBJ_nid2obj(sig_nid), pk == EVP_PKEY_RSA ? V_ASN1_NULL : V_ASN1_UNDEF, NULL)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "signature algorithm");
		goto out;
	}
	if ((*len = i2d_X509_ALGOR(alg, der)) <= 0) {
		*der = NULL;
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encode signature algorithm");
		goto out;
	}
	rc = 0;
out:
	X509_ALGOR_free(alg);
	return rc;
}

static int
ca_key_id(X509 *cert, unsigned char *buf, size_t *len)
{
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(cert);
	unsigned int n = 0;

	if (ski != NULL && ASN1_STRING_length(ski) > 0 && (size_t)ASN1_STRING_length(ski) <= *len) {
		*len = (size_t)ASN1_STRING_length(ski);
		memcpy(buf, ASN1_STRING_get0_data(ski), *len);
		return 0;
	}
	/* No SKI: the RFC 5280 4.2.1.2 method (1), SHA-1 of the public key bits. */
	if (*len < SHA_DIGEST_LENGTH || !X509_pubkey_digest(cert, EVP_sha1(), buf, &n))
		return kms_fail_openssl(KMS_ERR_CRYPTO, "CA key identifier");
	*len = n;
	return 0;
}

/* One revokedCertificates entry from a row (serial, revoked_at, reason, invalidity). */
static int
put_entry(struct ca_der *d, sqlite3_stmt *s)
{
	unsigned char mag[CA_SERIAL_MAX];
	size_t n, seq;
	const char *hex = (const char *)sqlite3_column_text(s, 0);
	time_t when = (time_t)sqlite3_column_int64(s, 1);
	int reason = sqlite3_column_type(s, 2) == SQLITE_NULL ? 0 : sqlite3_column_int(s, 2);
	time_t inval = sqlite3_column_type(s, 3) == SQLITE_NULL ? 0 : (time_t)sqlite3_column_int64(s, 3);

	if (hex == NULL || ca_serial_hex_bytes(hex, mag, sizeof(mag), &n) != 0)
		return kms_fail(KMS_ERR_CORRUPT, "certs table: bad serial \"%.40s\"", hex ? hex : "");
	seq = ca_der_open(d);
	ca_der_uint(d, mag, n);
	ca_der_time(d, when);
	/* RFC 5280 5.3.1: leave reasonCode out rather than write unspecified. */
	if ((reason > 0 && reason <= 10 && reason != 7) || inval > 0) {
		size_t exts = ca_der_open(d);
		struct ext_mark m;

		if (reason > 0 && reason <= 10 && reason != 7) {
			unsigned char en[3] = { 0x0a, 0x01, (unsigned char)reason };

			ext_begin(d, &m, oid_reason, sizeof(oid_reason), 0);
			ca_der_put(d, en, sizeof(en));
			ext_end(d, &m);
		}
		if (inval > 0) {
			ext_begin(d, &m, oid_invalidity, sizeof(oid_invalidity), 0);
			ca_der_gentime(d, inval);
			ext_end(d, &m);
		}
		ca_der_close(d, exts, 0x30);
	}
	ca_der_close(d, seq, 0x30);
	return 0;
}

static void
put_uri_dp(struct ca_der *d, const char *url)
{
	size_t dp = ca_der_open(d), dpn = ca_der_open(d), full = ca_der_open(d);

	ca_der_tlv(d, 0x86, url, strlen(url));
	ca_der_close(d, full, 0xa0);
	ca_der_close(d, dpn, 0xa0);
	ca_der_close(d, dp, 0x30);
}

static void
put_crl_extensions(struct ca_der *d, const struct crl_params *cp, const unsigned char *kid, size_t kidlen)
{
	size_t tag0 = ca_der_open(d), exts = ca_der_open(d), seq;
	struct ext_mark m;

	ext_begin(d, &m, oid_aki, sizeof(oid_aki), 0);
	seq = ca_der_open(d);
	ca_der_tlv(d, 0x80, kid, kidlen);
	ca_der_close(d, seq, 0x30);
	ext_end(d, &m);

	ext_begin(d, &m, oid_crl_number, sizeof(oid_crl_number), 0);
	ca_der_int64(d, cp->number);
	ext_end(d, &m);

	if (cp->base > 0) {
		ext_begin(d, &m, oid_delta_ind, sizeof(oid_delta_ind), 1);
		ca_der_int64(d, cp->base);
		ext_end(d, &m);
	}
	if (cp->base == 0 && cp->freshest_url != NULL && cp->freshest_url[0] != '\0') {
		ext_begin(d, &m, oid_freshest, sizeof(oid_freshest), 0);
		seq = ca_der_open(d);
		put_uri_dp(d, cp->freshest_url);
		ca_der_close(d, seq, 0x30);
		ext_end(d, &m);
	}
	ca_der_close(d, exts, 0x30);
	ca_der_close(d, tag0, 0xa0);
}

/*
 * Sign the DER of a TBSCertList: *sig (malloc'd) is the BIT STRING's
 * content, a zero unused-bits byte then the signature, *siglen bytes after
 * that first byte.
 */
static int
sign_tbs(EVP_PKEY *key, const EVP_MD *md, const unsigned char *tbs, size_t len, unsigned char **sig, size_t *siglen)
{
	EVP_MD_CTX *mctx = EVP_MD_CTX_new();
	int rc = 0;

	*sig = NULL;
	*siglen = 0;
	if (mctx == NULL)
		return KMS_ERR_NOMEM;
	if (EVP_DigestSignInit(mctx, NULL, md, NULL, key) != 1 || EVP_DigestSign(mctx, NULL, siglen, tbs, len) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "sign CRL");
	} else if ((*sig = malloc(*siglen + 1)) == NULL) {
		rc = KMS_ERR_NOMEM;
	} else {
		(*sig)[0] = 0;   /* BIT STRING: no unused bits */
		if (EVP_DigestSign(mctx, *sig + 1, siglen, tbs, len) != 1) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "sign CRL");
			free(*sig);
			*sig = NULL;
		}
	}
	EVP_MD_CTX_free(mctx);
	return rc;
}

/*
 * Encode and sign one CRL with the entries the prepared statement yields.
 * *der is malloc'd.
 */
static int
crl_build(sqlite3 *db, sqlite3_stmt *rows, const struct crl_params *cp, unsigned char **der, size_t *len)
{
	struct ca_der d = { 0 };
	EVP_PKEY *key = cp->ca->key;
	const EVP_MD *md = crl_md(key);
	const unsigned char *name;
	unsigned char *alg = NULL, *sig = NULL, kid[EVP_MAX_MD_SIZE];
	size_t namelen, kidlen = sizeof(kid), outer, tbs, list, siglen = 0;
	int alglen = 0, rc, step, any = 0;
	static const unsigned char v2[] = { 0x02, 0x01, 0x01 };

	*der = NULL;
	*len = 0;
	if ((rc = sig_algid(key, md, &alg, &alglen)) != 0)
		return rc;
	if ((rc = ca_key_id(cp->ca->cert, kid, &kidlen)) != 0)
		goto out;
	if (!X509_NAME_get0_der(X509_get_subject_name(cp->ca->cert), &name, &namelen)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "CA subject name");
		goto out;
	}

	outer = ca_der_open(&d);
	tbs = ca_der_open(&d);
	ca_der_put(&d, v2, sizeof(v2));
	ca_der_put(&d, alg, (size_t)alglen);
	ca_der_put(&d, name, namelen);
	ca_der_time(&d, cp->this_update);
	ca_der_time(&d, cp->next_update);

	list = ca_der_open(&d);
	while ((step = sqlite3_step(rows)) == SQLITE_ROW) {
		if ((rc = put_entry(&d, rows)) != 0)
			goto out;
		any = 1;
	}
	if (step != SQLITE_DONE) {
		rc = kms_fail(KMS_ERR_DB, "read revoked certificates: %s", sqlite3_errmsg(db));
		goto out;
	}
	/* RFC 5280 5.1.2.6: no entries, no (empty) list. */
	if (any)
		ca_der_close(&d, list, 0x30);
	else if (!d.err)
		d.len = list;

	put_crl_extensions(&d, cp, kid, kidlen);
	ca_der_close(&d, tbs, 0x30);
	if (d.err) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory encoding the CRL");
		goto out;
	}

	if ((rc = sign_tbs(key, md, d.p + tbs, d.len - tbs, &sig, &siglen)) != 0)
		goto out;
	ca_der_put(&d, alg, (size_t)alglen);
	ca_der_tlv(&d, 0x03, sig, siglen + 1);
	ca_der_close(&d, outer, 0x30);
	if (d.err) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory encoding the CRL");
		goto out;
	}
	*der = d.p;
	*len = d.len;
	d.p = NULL;
	rc = 0;
out:
	free(d.p);
	free(sig);
	OPENSSL_free(alg);
	return rc;
}

/* ------------------------------------------------------------------ store */

static int
query_ll(struct kms_store *st, const char *sql, long long *out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read CRL numbers");
	if (sqlite3_step(s) == SQLITE_ROW) {
		*out = sqlite3_column_int64(s, 0);
		rc = 0;
	} else {
		rc = kms_store_fail(st, "read CRL numbers");
	}
	sqlite3_finalize(s);
	return rc;
}

static int
save_crl(struct kms_store *st, long long number, const char *kind, long long base, time_t tu, time_t nu,
    const unsigned char *der, size_t len)
{
	sqlite3_stmt *s = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(kms_store_db(st),
	    "INSERT INTO crls(number, kind, base, this_update, next_update, der) VALUES (?, ?, ?, ?, ?, ?)",
	    -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "save CRL");
	sqlite3_bind_int64(s, 1, number);
	sqlite3_bind_text(s, 2, kind, -1, SQLITE_STATIC);
	if (base > 0)
		sqlite3_bind_int64(s, 3, base);
	else
		sqlite3_bind_null(s, 3);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)tu);
	sqlite3_bind_int64(s, 5, (sqlite3_int64)nu);
	sqlite3_bind_blob64(s, 6, der, len, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = kms_store_fail(st, "save CRL");
	sqlite3_finalize(s);
	return rc;
}

static int
exec_ll(struct kms_store *st, const char *sql, long long a, const char *what)
{
	sqlite3_stmt *s = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, what);
	sqlite3_bind_int64(s, 1, a);
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = kms_store_fail(st, what);
	sqlite3_finalize(s);
	return rc;
}

#define ROWS_SQL "SELECT serial, revoked_at, reason, invalidity FROM certs " \
	"WHERE revoked_at IS NOT NULL AND not_after >= ?1"

static int
build_from(struct kms_store *st, const char *sql, time_t now, long long after, const struct crl_params *cp,
    unsigned char **der, size_t *len)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read revoked certificates");
	sqlite3_bind_int64(s, 1, (sqlite3_int64)now);
	if (sqlite3_bind_parameter_count(s) >= 2)
		sqlite3_bind_int64(s, 2, after);
	rc = crl_build(kms_store_db(st), s, cp, der, len);
	sqlite3_finalize(s);
	return rc;
}

int
ca_crl_issue(struct kms_store *st, const struct ca *ca, const struct ca_crl_opts *opts, struct ca_crl_set **out)
{
	struct ca_crl_set *set = NULL;
	struct crl_params cp = { 0 };
	long long last = 0, prev_full = 0;
	time_t now = time(NULL);
	int rc;

	*out = NULL;
	if (ca == NULL || ca->cert == NULL || ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded: cannot sign a CRL");
	if (opts == NULL || opts->next_update_hours < 1 || opts->next_update_hours > 240)
		return kms_fail(KMS_ERR_INVALID, "CRL next update must be 1 to 240 hours");
	if ((set = calloc(1, sizeof(*set))) == NULL)
		return KMS_ERR_NOMEM;
	if ((rc = kms_store_begin(st)) != 0)
		goto fail;
	if ((rc = query_ll(st, "SELECT COALESCE(MAX(number), 0) FROM crls", &last)) != 0 ||
	    (rc = query_ll(st, "SELECT COALESCE(MAX(number), 0) FROM crls WHERE kind = 'full'", &prev_full)) != 0)
		goto rollback;

	cp.ca = ca;
	cp.this_update = now;
	cp.next_update = now + (time_t)opts->next_update_hours * 3600;
	cp.number = last + 1;
	cp.freshest_url = opts->delta ? opts->delta_url : NULL;
	if ((rc = build_from(st, ROWS_SQL " ORDER BY serial", now, 0, &cp, &set->full_der, &set->full_len)) != 0 ||
	    (rc = save_crl(st, cp.number, "full", 0, cp.this_update, cp.next_update,
	    set->full_der, set->full_len)) != 0)
		goto rollback;
	set->full_number = cp.number;
	set->this_update = cp.this_update;
	set->next_update = cp.next_update;

	/* Revocations made before stamps existed: listed from this full CRL on. */
	if ((rc = exec_ll(st, "UPDATE certs SET crl_number = ?1 WHERE revoked_at IS NOT NULL AND crl_number IS NULL",
	    set->full_number, "number old revocations")) != 0)
		goto rollback;
	if (opts->delta) {
		/*
		 * Base: the previous full CRL.  With none, the delta is based
		 * on the full CRL just made and so lists nothing.
		 */
		cp.number = set->full_number + 1;
		cp.base = prev_full > 0 ? prev_full : set->full_number;
		cp.freshest_url = NULL;
		rc = build_from(st, prev_full > 0 ? ROWS_SQL " AND crl_number > ?2 ORDER BY serial" :
		    ROWS_SQL " AND 0", now, cp.base, &cp, &set->delta_der, &set->delta_len);
		if (rc != 0 || (rc = save_crl(st, cp.number, "delta", cp.base, cp.this_update, cp.next_update,
		    set->delta_der, set->delta_len)) != 0)
			goto rollback;
		set->delta_number = cp.number;
	}
	/* Keep the base of the new delta and everything after it; the numbers stay monotonic. */
	if ((rc = exec_ll(st, "DELETE FROM crls WHERE number < ?1",
	    prev_full > 0 ? prev_full : set->full_number, "prune old CRLs")) != 0)
		goto rollback;
	if ((rc = kms_store_commit(st)) != 0)
		goto fail;
	*out = set;
	return 0;
rollback:
	kms_store_rollback(st);
fail:
	ca_crl_set_free(set);
	return rc;
}

void
ca_crl_set_free(struct ca_crl_set *set)
{
	if (set == NULL)
		return;
	free(set->full_der);
	free(set->delta_der);
	free(set);
}

static int
latest_of(struct kms_store *st, const char *sql, long long after, long long *number,
    unsigned char **der, size_t *len, time_t *tu, time_t *nu)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read CRL");
	sqlite3_bind_int64(s, 1, after);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		rc = KMS_ERR_NOTFOUND;
	} else if (rc == SQLITE_ROW) {
		const void *b = sqlite3_column_blob(s, 3);
		size_t n = (size_t)sqlite3_column_bytes(s, 3);

		*number = sqlite3_column_int64(s, 0);
		*tu = (time_t)sqlite3_column_int64(s, 1);
		*nu = (time_t)sqlite3_column_int64(s, 2);
		if (n == 0 || (*der = malloc(n)) == NULL) {
			rc = n == 0 ? kms_fail(KMS_ERR_CORRUPT, "empty CRL in the store") : KMS_ERR_NOMEM;
		} else {
			memcpy(*der, b, n);
			*len = n;
			rc = 0;
		}
	} else {
		rc = kms_store_fail(st, "read CRL");
	}
	sqlite3_finalize(s);
	return rc;
}

int
ca_crl_latest(struct kms_store *st, struct ca_crl_set **out)
{
	struct ca_crl_set *set;
	time_t tu, nu;
	int rc;

	*out = NULL;
	if ((set = calloc(1, sizeof(*set))) == NULL)
		return KMS_ERR_NOMEM;
	rc = latest_of(st, "SELECT number, this_update, next_update, der FROM crls "
	    "WHERE kind = 'full' AND number > ?1 ORDER BY number DESC LIMIT 1",
	    0, &set->full_number, &set->full_der, &set->full_len, &set->this_update, &set->next_update);
	if (rc == KMS_ERR_NOTFOUND)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no CRL has been issued yet");
	if (rc != 0)
		goto fail;
	/* Only a delta issued with (after) this full CRL belongs to the set. */
	rc = latest_of(st, "SELECT number, this_update, next_update, der FROM crls "
	    "WHERE kind = 'delta' AND number > ?1 ORDER BY number DESC LIMIT 1",
	    set->full_number, &set->delta_number, &set->delta_der, &set->delta_len, &tu, &nu);
	if (rc != 0 && rc != KMS_ERR_NOTFOUND)
		goto fail;
	*out = set;
	return 0;
fail:
	ca_crl_set_free(set);
	return rc;
}

/* ---------------------------------------------------------------- publish */

static int
name_ok(const char *name)
{
	if (name == NULL || name[0] == '\0' || name[0] == '.' || strlen(name) > 128)
		return 0;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '_' || *p == '.'))
			return 0;
	return 1;
}

int
ca_pem_encode(const char *label, const unsigned char *der, size_t len, char **pem, size_t *pemlen)
{
	BIO *b = NULL;
	BUF_MEM *bm = NULL;
	int rc;

	*pem = NULL;
	*pemlen = 0;
	if (len > LONG_MAX)
		return kms_fail(KMS_ERR_TOOBIG, "too large for PEM");
	if ((b = BIO_new(BIO_s_mem())) == NULL)
		return KMS_ERR_NOMEM;
	if (PEM_write_bio(b, label, "", der, (long)len) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PEM encode");
		goto out;
	}
	BIO_get_mem_ptr(b, &bm);
	if ((*pem = malloc(bm->length + 1)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	memcpy(*pem, bm->data, bm->length);
	(*pem)[bm->length] = '\0';
	*pemlen = bm->length;
	rc = 0;
out:
	BIO_free(b);
	return rc;
}

/* Write dir/<name><suffix> (DER) and dir/<name><suffix>.pem, each atomically. */
static int
publish_pair(const char *dir, const char *name, const char *suffix, const char *label,
    const unsigned char *der, size_t len)
{
	char file[256], pemfile[260];
	char *path = NULL, *pem = NULL;
	size_t pemlen;
	int rc;

	snprintf(file, sizeof(file), "%s%s", name, suffix);
	snprintf(pemfile, sizeof(pemfile), "%s.pem", file);
	if ((path = kms_path_join(dir, file)) == NULL)
		return KMS_ERR_NOMEM;
	if ((rc = kms_write_file_atomic(path, der, len, 0644)) != 0)
		goto out;
	free(path);
	if ((path = kms_path_join(dir, pemfile)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if ((rc = ca_pem_encode(label, der, len, &pem, &pemlen)) != 0)
		goto out;
	rc = kms_write_file_atomic(path, pem, pemlen, 0644);
out:
	free(pem);
	free(path);
	return rc;
}

static void
unlink_in(const char *dir, const char *name, const char *suffix)
{
	char file[256];
	char *path;

	snprintf(file, sizeof(file), "%s%s", name, suffix);
	if ((path = kms_path_join(dir, file)) == NULL)
		return;
	if (unlink(path) != 0 && errno != ENOENT)
		kms_log(KMS_LOG_WARNING, "cannot remove stale %s: %s", path, strerror(errno));
	free(path);
}

int
ca_crl_publish(const char *dir, const char *name, const struct ca_crl_set *set, X509 *ca_cert)
{
	unsigned char *cder = NULL;
	int clen, rc;

	if (dir == NULL || dir[0] == '\0')
		return kms_fail(KMS_ERR_INVALID, "no CRL publish directory");
	if (!name_ok(name))
		return kms_fail(KMS_ERR_INVALID, "CA name \"%.40s\" is not usable in a file name", name ? name : "");
	if (set == NULL || set->full_der == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CRL to publish");
	if ((rc = kms_mkdir_p(dir, 0755)) != 0)
		return rc;
	if ((rc = publish_pair(dir, name, ".crl", "X509 CRL", set->full_der, set->full_len)) != 0)
		return rc;
	if (set->delta_der != NULL) {
		if ((rc = publish_pair(dir, name, "-delta.crl", "X509 CRL", set->delta_der, set->delta_len)) != 0)
			return rc;
	} else {
		/* Deltas switched off: an old delta would contradict the new full CRL. */
		unlink_in(dir, name, "-delta.crl");
		unlink_in(dir, name, "-delta.crl.pem");
	}
	if (ca_cert != NULL) {
		if ((clen = i2d_X509(ca_cert, &cder)) <= 0)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "encode CA certificate");
		rc = publish_pair(dir, name, ".crt", "CERTIFICATE", cder, (size_t)clen);
		OPENSSL_free(cder);
	}
	return rc;
}
