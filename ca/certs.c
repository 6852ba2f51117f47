/*
 * certs.c - the certs table: every certificate this CA issued, with who it
 * is for, how it came about, and its revocation state.
 *
 * Entry points: ca_store_add_cert(), ca_store_find(), ca_store_list(),
 * ca_store_has_valid(), ca_store_knows_email(), ca_store_find_cert(),
 * ca_cert_rows_free().
 *
 * Each function is one statement, so it runs inside the caller's
 * transaction when one is open and is atomic on its own when not; none of
 * them ever begins a transaction.  Serials are the lowercase hex of
 * ca_serial_hex(); addresses compare case-insensitively (the column is
 * COLLATE NOCASE, and addresses are ASCII).  The revocation columns are
 * written by revoke.c; they are only read here.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

#define ROW_COLUMNS \
	"serial, email, name, usage, key_type, origin, subject, issued_by, " \
	"not_before, not_after, issued, revoked_at, reason, invalidity, cert"

/* Longest serial accepted in a lookup: 20 octets (RFC 5280 4.1.2.2). */
#define MAX_SERIAL_HEX 40

void
ca_cert_rows_free(struct ca_cert_row *rows, size_t n)
{
	if (rows == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(rows[i].serial);
		free(rows[i].email);
		free(rows[i].name);
		free(rows[i].usage);
		free(rows[i].key_type);
		free(rows[i].origin);
		free(rows[i].subject);
		free(rows[i].issued_by);
		free(rows[i].der);
	}
	free(rows);
}

static char *
col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return strdup(t ? (const char *)t : "");
}

/* Fill one row from the current result of a ROW_COLUMNS query. */
static int
row_fill(sqlite3_stmt *s, struct ca_cert_row *r)
{
	const void *der;
	int dlen;

	memset(r, 0, sizeof(*r));
	r->serial = col_text(s, 0);
	r->email = col_text(s, 1);
	r->name = col_text(s, 2);
	r->usage = col_text(s, 3);
	r->key_type = col_text(s, 4);
	r->origin = col_text(s, 5);
	r->subject = col_text(s, 6);
	r->issued_by = col_text(s, 7);
	r->not_before = (time_t)sqlite3_column_int64(s, 8);
	r->not_after = (time_t)sqlite3_column_int64(s, 9);
	r->issued = (time_t)sqlite3_column_int64(s, 10);
	r->revoked_at = sqlite3_column_type(s, 11) == SQLITE_NULL ? 0 : (time_t)sqlite3_column_int64(s, 11);
	r->reason = sqlite3_column_type(s, 12) == SQLITE_NULL ? -1 : sqlite3_column_int(s, 12);
	r->invalidity = sqlite3_column_type(s, 13) == SQLITE_NULL ? 0 : (time_t)sqlite3_column_int64(s, 13);
	der = sqlite3_column_blob(s, 14);
	dlen = sqlite3_column_bytes(s, 14);
	if (der != NULL && dlen > 0 && (r->der = malloc((size_t)dlen)) != NULL) {
		memcpy(r->der, der, (size_t)dlen);
		r->der_len = (size_t)dlen;
	}
	if (r->serial == NULL || r->email == NULL || r->name == NULL || r->usage == NULL ||
	    r->key_type == NULL || r->origin == NULL || r->subject == NULL || r->issued_by == NULL ||
	    r->der == NULL)
		return kms_fail(KMS_ERR_NOMEM, "certificate row");
	return 0;
}

/* Step a prepared ROW_COLUMNS query to its end; NOTFOUND when empty if want_one. */
static int
collect_rows(struct kms_store *st, sqlite3_stmt *s, int want_one, struct ca_cert_row **rows, size_t *n)
{
	struct ca_cert_row *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if ((rc = kms_array_reserve(&v, &cap, cnt + 1, sizeof(*v), SIZE_MAX)) != 0)
			goto fail;
		rc = row_fill(s, &v[cnt]);
		cnt++;
		if (rc != 0)
			goto fail;
	}
	if (rc != SQLITE_DONE) {
		rc = kms_store_fail(st, "read certificates");
		goto fail;
	}
	if (cnt == 0 && want_one) {
		free(v);
		return KMS_ERR_NOTFOUND;
	}
	*rows = v;
	*n = cnt;
	return 0;
fail:
	ca_cert_rows_free(v, cnt);
	return rc;
}

/* Normalise a serial as typed (any case, optional colons) to ca_serial_hex() form; 0 if not hex. */
static int
serial_normalise(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	int digits = 0;

	for (; *in; in++) {
		char c = *in;

		if (c == ':')
			continue;
		digits++;
		if (c == '0' && o == 0)
			continue;       /* leading zero */
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return 0;
		if (o + 1 >= outlen)
			return 0;
		out[o++] = c;
	}
	if (digits == 0)
		return 0;
	if (o == 0) {
		/* All zeros: serial 0, which we never issue but may be asked for. */
		if (outlen < 2)
			return 0;
		out[o++] = '0';
	}
	out[o] = '\0';
	return 1;
}

int
ca_store_add_cert(struct kms_store *st, X509 *cert, const char *email, const char *name,
    enum ca_usage usage, const char *origin, const char *issued_by)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	unsigned char *der = NULL;
	char *serial = NULL, *subject = NULL, *ski = NULL, *cert_email = NULL, kt[32];
	time_t nb, na;
	int dlen, rc;

	if (cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "no certificate");
	if (origin == NULL || (strcmp(origin, "enroll") != 0 && strcmp(origin, "csr") != 0 &&
	    strcmp(origin, "init") != 0))
		return kms_fail(KMS_ERR_INVALID, "certificate origin must be enroll, csr or init");
	if (strcmp(ca_usage_name(usage), "unknown") == 0)
		return kms_fail(KMS_ERR_INVALID, "unknown certificate usage %d", (int)usage);
	if (email == NULL && usage != CA_USAGE_KRK)
		email = cert_email = ca_cert_email(cert);
	if ((rc = ca_asn1_time_to_time(X509_get0_notBefore(cert), &nb)) != 0 ||
	    (rc = ca_asn1_time_to_time(X509_get0_notAfter(cert), &na)) != 0)
		goto out;
	if ((serial = ca_serial_hex(X509_get0_serialNumber(cert))) == NULL ||
	    (subject = ca_name_oneline(X509_get_subject_name(cert))) == NULL ||
	    (ski = ca_cert_ski_hex(cert)) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "certificate fields");
		goto out;
	}
	if ((dlen = i2d_X509(cert, &der)) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encoding the certificate");
		goto out;
	}
	if (sqlite3_prepare_v2(db, "INSERT INTO certs(serial, email, name, usage, key_type, origin, subject, "
	    "not_before, not_after, cert, issued, issued_by, ski) "
	    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "add certificate");
		goto out;
	}
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, email ? email : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, name ? name : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, ca_usage_name(usage), -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 5, ca_key_type_of(X509_get0_pubkey(cert), kt, sizeof(kt)), -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, origin, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 7, subject, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 8, (sqlite3_int64)nb);
	sqlite3_bind_int64(s, 9, (sqlite3_int64)na);
	sqlite3_bind_blob(s, 10, der, dlen, SQLITE_STATIC);
	sqlite3_bind_int64(s, 11, (sqlite3_int64)time(NULL));
	sqlite3_bind_text(s, 12, issued_by ? issued_by : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 13, ski, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE) {
		if (sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_PRIMARYKEY)
			rc = kms_fail(KMS_ERR_EXISTS, "a certificate with serial %s is already stored", serial);
		else
			rc = kms_store_fail(st, "add certificate");
		goto out;
	}
	rc = 0;
out:
	sqlite3_finalize(s);
	OPENSSL_free(der);
	free(serial);
	free(subject);
	free(ski);
	free(cert_email);
	return rc;
}

int
ca_store_find(struct kms_store *st, const char *email_or_serial, struct ca_cert_row **rows, size_t *n)
{
	sqlite3_stmt *s = NULL;
	char serial[MAX_SERIAL_HEX + 1], clean[80];
	int rc;

	*rows = NULL;
	*n = 0;
	if (email_or_serial == NULL || *email_or_serial == '\0')
		return kms_fail(KMS_ERR_INVALID, "no address or serial");
	if (strchr(email_or_serial, '@') != NULL) {
		if (sqlite3_prepare_v2(kms_store_db(st), "SELECT " ROW_COLUMNS " FROM certs WHERE email = ? "
		    "ORDER BY issued DESC, rowid DESC", -1, &s, NULL) != SQLITE_OK)
			return kms_store_fail(st, "find certificates");
		sqlite3_bind_text(s, 1, email_or_serial, -1, SQLITE_STATIC);
	} else {
		if (!serial_normalise(email_or_serial, serial, sizeof(serial)))
			return kms_fail(KMS_ERR_INVALID, "\"%s\" is neither an address nor a hex serial",
			    kms_sanitize(email_or_serial, strlen(email_or_serial), clean, sizeof(clean)));
		if (sqlite3_prepare_v2(kms_store_db(st), "SELECT " ROW_COLUMNS " FROM certs WHERE serial = ?",
		    -1, &s, NULL) != SQLITE_OK)
			return kms_store_fail(st, "find certificate");
		sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	}
	rc = collect_rows(st, s, 1, rows, n);
	if (rc == KMS_ERR_NOTFOUND)
		rc = kms_fail(KMS_ERR_NOTFOUND, "no certificate for %s",
		    kms_sanitize(email_or_serial, strlen(email_or_serial), clean, sizeof(clean)));
	sqlite3_finalize(s);
	return rc;
}

int
ca_store_list(struct kms_store *st, int revoked_only, struct ca_cert_row **rows, size_t *n)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*rows = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(kms_store_db(st), revoked_only ?
	    "SELECT " ROW_COLUMNS " FROM certs WHERE revoked_at IS NOT NULL ORDER BY email, issued, rowid" :
	    "SELECT " ROW_COLUMNS " FROM certs ORDER BY email, issued, rowid", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "list certificates");
	rc = collect_rows(st, s, 0, rows, n);
	sqlite3_finalize(s);
	return rc;
}

/* 1 if the query (one text parameter, optional second integer) yields a row, 0 if not, <0 on error. */
static int
exists(struct kms_store *st, const char *sql, const char *text, int with_time, time_t t)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "look up certificates");
	sqlite3_bind_text(s, 1, text, -1, SQLITE_STATIC);
	if (with_time)
		sqlite3_bind_int64(s, 2, (sqlite3_int64)t);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		rc = 1;
	else if (rc == SQLITE_DONE)
		rc = 0;
	else
		rc = kms_store_fail(st, "look up certificates");
	sqlite3_finalize(s);
	return rc;
}

int
ca_store_has_valid(struct kms_store *st, const char *email, time_t now)
{
	if (email == NULL || *email == '\0')
		return 0;
	return exists(st, "SELECT 1 FROM certs WHERE email = ? AND revoked_at IS NULL AND not_after > ? "
	    "LIMIT 1", email, 1, now);
}

int
ca_store_knows_email(struct kms_store *st, const char *email)
{
	if (email == NULL || *email == '\0')
		return 0;
	return exists(st, "SELECT 1 FROM certs WHERE email = ? LIMIT 1", email, 0, 0);
}

int
ca_store_display_name(struct kms_store *st, const char *email, char **name)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*name = NULL;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT name FROM certs WHERE email = ? AND origin = 'enroll' "
	    "AND name != '' ORDER BY issued DESC, rowid DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "display name");
	sqlite3_bind_text(s, 1, email, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		rc = (*name = strdup((const char *)sqlite3_column_text(s, 0))) ? 0 : KMS_ERR_NOMEM;
	else if (rc == SQLITE_DONE)
		rc = KMS_ERR_NOTFOUND;
	else
		rc = kms_store_fail(st, "display name");
	sqlite3_finalize(s);
	return rc;
}

static X509 *
der_to_cert(sqlite3_stmt *s, int col)
{
	const unsigned char *p = sqlite3_column_blob(s, col);
	X509 *x;

	if (p == NULL)
		return NULL;
	if ((x = d2i_X509(NULL, &p, sqlite3_column_bytes(s, col))) == NULL)
		ERR_clear_error();
	return x;
}

static int
find_by_serial(struct kms_store *st, const X509_NAME *issuer, const ASN1_INTEGER *serial, X509 **out)
{
	sqlite3_stmt *s = NULL;
	char *hex;
	X509 *x = NULL;
	int rc;

	if ((hex = ca_serial_hex(serial)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "serial");
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT cert FROM certs WHERE serial = ?", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "find certificate");
		goto out;
	}
	sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		if ((x = der_to_cert(s, 0)) == NULL)
			rc = kms_fail(KMS_ERR_CORRUPT, "stored certificate %s does not parse", hex);
		else if (issuer != NULL && X509_NAME_cmp(X509_get_issuer_name(x), issuer) != 0)
			rc = KMS_ERR_NOTFOUND;
		else
			rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = KMS_ERR_NOTFOUND;
	} else {
		rc = kms_store_fail(st, "find certificate");
	}
	if (rc == 0) {
		*out = x;
		x = NULL;
	}
out:
	X509_free(x);
	sqlite3_finalize(s);
	free(hex);
	return rc;
}

static int
find_by_ski(struct kms_store *st, const ASN1_OCTET_STRING *skid, X509 **out)
{
	sqlite3_stmt *s = NULL;
	char *want, *have;
	int rc;

	if ((want = kms_hex(ASN1_STRING_get0_data(skid), (size_t)ASN1_STRING_length(skid))) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "key identifier");
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT cert FROM certs WHERE ski = ? "
	    "ORDER BY issued DESC, rowid DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "find certificate");
		goto out;
	}
	sqlite3_bind_text(s, 1, want, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		rc = (*out = der_to_cert(s, 0)) ? 0 : kms_fail(KMS_ERR_CORRUPT, "a stored certificate does not parse");
		goto out;
	}
	if (rc != SQLITE_DONE) {
		rc = kms_store_fail(st, "find certificate");
		goto out;
	}
	sqlite3_finalize(s);
	/* Rows written before schema 5 carry no ski: compute theirs. */
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT cert FROM certs WHERE ski IS NULL "
	    "ORDER BY issued DESC, rowid DESC", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "find certificate");
		goto out;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		X509 *x = der_to_cert(s, 0);

		if (x == NULL)
			continue;
		have = ca_cert_ski_hex(x);
		if (have != NULL && strcmp(have, want) == 0) {
			free(have);
			*out = x;
			rc = 0;
			goto out;
		}
		free(have);
		X509_free(x);
	}
	rc = rc == SQLITE_DONE ? KMS_ERR_NOTFOUND : kms_store_fail(st, "find certificate");
out:
	sqlite3_finalize(s);
	free(want);
	return rc;
}

int
ca_store_find_cert(struct kms_store *st, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const ASN1_OCTET_STRING *skid, X509 **out)
{
	int rc = KMS_ERR_NOTFOUND;

	*out = NULL;
	if (serial == NULL && skid == NULL)
		return kms_fail(KMS_ERR_INVALID, "neither a serial nor a key identifier to look for");
	if (serial != NULL && (rc = find_by_serial(st, issuer, serial, out)) != KMS_ERR_NOTFOUND)
		return rc;
	if (skid != NULL && (rc = find_by_ski(st, skid, out)) != KMS_ERR_NOTFOUND)
		return rc;
	return kms_fail(KMS_ERR_NOTFOUND, "no such certificate issued here");
}

/* One count(*)-style query; -1 when the store fails. */
static long long
count_of(struct kms_store *st, const char *sql)
{
	sqlite3_stmt *s = NULL;
	long long n = -1;

	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	else
		kms_store_fail(st, "count certificates");
	sqlite3_finalize(s);
	return n;
}

int
ca_store_counts(struct kms_store *st, struct ca_counts *c)
{
	c->users = count_of(st, "SELECT count(DISTINCT email) FROM certs WHERE usage != 'krk'");
	c->certificates = count_of(st, "SELECT count(*) FROM certs WHERE usage != 'krk'");
	c->revoked = count_of(st, "SELECT count(*) FROM certs WHERE revoked_at IS NOT NULL");
	return c->users < 0 || c->certificates < 0 || c->revoked < 0 ? KMS_ERR_DB : 0;
}

int
ca_store_current(struct kms_store *st, const char *email, time_t now, X509 **sign, X509 **enc, char **name)
{
	struct ca_cert_row *rows = NULL;
	size_t n = 0;
	int rc;

	*sign = *enc = NULL;
	if (name)
		*name = NULL;
	rc = ca_store_find(st, email, &rows, &n);
	if (rc == KMS_ERR_NOTFOUND) {
		kms_clear_error();
		return 0;
	}
	if (rc != 0)
		return rc;
	/* Rows come newest first: the first valid one of each usage is current. */
	for (size_t i = 0; i < n; i++) {
		const struct ca_cert_row *r = &rows[i];
		X509 **slot = strcmp(r->usage, "sign") == 0 ? sign : strcmp(r->usage, "enc") == 0 ? enc : NULL;
		const unsigned char *p = r->der;

		if (slot == NULL || *slot != NULL || r->revoked_at != 0 || r->not_before > now || r->not_after <= now)
			continue;
		if ((*slot = d2i_X509(NULL, &p, (long)r->der_len)) == NULL) {
			rc = kms_fail_openssl(KMS_ERR_CORRUPT, "stored certificate %s does not parse", r->serial);
			break;
		}
		if (name && *name == NULL && r->name && r->name[0] && (*name = strdup(r->name)) == NULL) {
			rc = KMS_ERR_NOMEM;
			break;
		}
	}
	ca_cert_rows_free(rows, n);
	if (rc != 0) {
		X509_free(*sign);
		X509_free(*enc);
		*sign = *enc = NULL;
		if (name) {
			free(*name);
			*name = NULL;
		}
	}
	return rc;
}
