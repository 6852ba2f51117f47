/*
 * revoke.c - revoking certificates in the store.
 *
 * Entry points: ca_reason_from_name(), ca_reason_name() (RFC 5280 CRLReason
 * names and codes) and ca_store_revoke(), which marks one row of the certs
 * table revoked inside the caller's transaction.  The row also records the
 * number the next CRL will carry (certs.crl_number): every CRL numbered
 * below it was signed before the revocation, which is how a delta CRL
 * knows what is new since its base without rewriting rows at issue time.  Also the serial helpers
 * shared with crl.c and revidx.c (ca/crlint.h): store serials are lowercase
 * hex without leading zeros, possibly of odd length.
 */
#include "config.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ca/ca.h"
#include "ca/crlint.h"

/* RFC 5280 section 5.3.1; code 7 is not used. */
static const char *const reasons[] = {
	"unspecified",
	"keyCompromise",
	"cACompromise",
	"affiliationChanged",
	"superseded",
	"cessationOfOperation",
	"certificateHold",
	NULL,
	"removeFromCRL",
	"privilegeWithdrawn",
	"aACompromise",
};

#define NREASONS ((int)(sizeof(reasons) / sizeof(reasons[0])))

int
ca_reason_from_name(const char *name)
{
	if (name == NULL)
		return -1;
	for (int i = 0; i < NREASONS; i++)
		if (reasons[i] != NULL && strcasecmp(name, reasons[i]) == 0)
			return i;
	return -1;
}

const char *
ca_reason_name(int code)
{
	if (code < 0 || code >= NREASONS || reasons[code] == NULL)
		return "unspecified";
	return reasons[code];
}

int
ca_serial_normalize(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	int seen = 0, digits = 0;

	if (in == NULL)
		return kms_fail(KMS_ERR_INVALID, "no serial number");
	for (const char *p = in; *p != '\0'; p++) {
		int c = (unsigned char)*p;

		if (c == ':')
			continue;
		if (!isxdigit(c))
			return kms_fail(KMS_ERR_INVALID, "serial number is not hex");
		digits++;
		if (c == '0' && !seen)
			continue;
		seen = 1;
		if (o + 1 >= outlen)
			return kms_fail(KMS_ERR_INVALID, "serial number too long");
		out[o++] = (char)tolower(c);
	}
	if (!seen) {
		if (digits == 0)
			return kms_fail(KMS_ERR_INVALID, "no serial number");
		if (outlen < 2)
			return kms_fail(KMS_ERR_INVALID, "serial number too long");
		out[o++] = '0';
	}
	out[o] = '\0';
	return 0;
}

int
ca_serial_hex_bytes(const char *hex, unsigned char *out, size_t outlen, size_t *len)
{
	size_t n = strlen(hex), o = 0, i = 0;

	*len = 0;
	if (n == 0 || (n + 1) / 2 > outlen)
		return KMS_ERR_INVALID;
	if (n % 2 == 1) {
		int v = ca_hexval(hex[0]);

		if (v < 0)
			return KMS_ERR_INVALID;
		out[o++] = (unsigned char)v;
		i = 1;
	}
	for (; i < n; i += 2) {
		int hi = ca_hexval(hex[i]), lo = ca_hexval(hex[i + 1]);

		if (hi < 0 || lo < 0)
			return KMS_ERR_INVALID;
		out[o++] = (unsigned char)(hi << 4 | lo);
	}
	/* Leading zero octets carry nothing in a positive serial's magnitude. */
	i = 0;
	while (i + 1 < o && out[i] == 0)
		i++;
	if (i > 0)
		memmove(out, out + i, o - i);
	*len = o - i;
	return 0;
}

int
ca_store_revoke(struct kms_store *st, const char *serial, time_t when, int reason,
    time_t invalidity, int *already)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	char norm[CA_SERIAL_HEX_MAX];
	int rc;

	*already = 0;
	if ((rc = ca_serial_normalize(serial, norm, sizeof(norm))) != 0)
		return rc;
	if (reason < 0 || reason >= NREASONS || reasons[reason] == NULL)
		return kms_fail(KMS_ERR_INVALID, "revocation reason %d is not an RFC 5280 CRLReason", reason);
	if (reason == 8)
		return kms_fail(KMS_ERR_INVALID, "removeFromCRL is only meaningful in a delta CRL");
	if (when <= 0)
		return kms_fail(KMS_ERR_INVALID, "revocation time missing");

	if (sqlite3_prepare_v2(db, "SELECT revoked_at FROM certs WHERE serial = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "find certificate");
	sqlite3_bind_text(s, 1, norm, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		rc = kms_fail(KMS_ERR_NOTFOUND, "no certificate with serial %s", norm);
		goto out;
	}
	if (rc != SQLITE_ROW) {
		rc = kms_store_fail(st, "find certificate");
		goto out;
	}
	if (sqlite3_column_type(s, 0) != SQLITE_NULL) {
		*already = 1;
		rc = 0;
		goto out;
	}
	sqlite3_finalize(s);
	s = NULL;

	if (sqlite3_prepare_v2(db,
	    "UPDATE certs SET revoked_at = ?, reason = ?, invalidity = ?, "
	    "  crl_number = (SELECT COALESCE(MAX(number), 0) + 1 FROM crls) "
	    "WHERE serial = ? AND revoked_at IS NULL", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "revoke certificate");
	sqlite3_bind_int64(s, 1, (sqlite3_int64)when);
	sqlite3_bind_int(s, 2, reason);
	if (invalidity > 0)
		sqlite3_bind_int64(s, 3, (sqlite3_int64)invalidity);
	else
		sqlite3_bind_null(s, 3);
	sqlite3_bind_text(s, 4, norm, -1, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE) {
		rc = kms_store_fail(st, "revoke certificate");
		goto out;
	}
	rc = 0;
out:
	sqlite3_finalize(s);
	return rc;
}

void
ca_revoke_result_free(struct ca_revoke_result *r)
{
	ca_cert_rows_free(r->rows, r->n);
	free(r->outcome);
	memset(r, 0, sizeof(*r));
}

int
ca_revoke_target(struct kms_store *st, const char *target, time_t now, int reason, time_t invalidity,
    struct ca_revoke_result *res)
{
	int rc, by_email = strchr(target, '@') != NULL;

	memset(res, 0, sizeof(*res));
	if ((rc = ca_store_find(st, target, &res->rows, &res->n)) != 0)
		return rc;
	if (!by_email && res->n == 1 && strcmp(res->rows[0].usage, "krk") == 0) {
		ca_revoke_result_free(res);
		return kms_fail(KMS_ERR_INVALID, "that is the key-recovery key; replace it with `kmsctl escrow rotate`");
	}
	if ((res->outcome = calloc(res->n, sizeof(*res->outcome))) == NULL) {
		ca_revoke_result_free(res);
		return KMS_ERR_NOMEM;
	}
	if ((rc = kms_store_begin(st)) != 0)
		goto fail;
	for (size_t i = 0; i < res->n; i++) {
		const struct ca_cert_row *row = &res->rows[i];
		int was = 0;

		if (strcmp(row->usage, "krk") == 0)
			continue;
		/* By address: the user's valid certificates; expired ones are left alone. */
		if (by_email && row->revoked_at == 0 && row->not_after < now)
			continue;
		if ((rc = ca_store_revoke(st, row->serial, now, reason, invalidity, &was)) != 0) {
			kms_store_rollback(st);
			goto fail;
		}
		res->outcome[i] = was ? CA_REVOKE_ALREADY : CA_REVOKE_DONE;
		if (was)
			res->nalready++;
		else
			res->nrevoked++;
	}
	if ((rc = kms_store_commit(st)) != 0)
		goto fail;
	return 0;
fail:
	ca_revoke_result_free(res);
	return rc;
}
