/*
 * pubq.c - the publication queue: changes waiting to be written to the
 * LDAP directory, kept in the store (table pubq).
 *
 * Rows are added by triggers on the certs and crls tables (store migration
 * 8), so an enrollment, a renewal, a revocation or a new CRL and its queue
 * row commit in one transaction, whoever writes them (kmsd or an offline
 * tool), and a change that rolls back leaves no row.  The triggers fire
 * only while the store says publishing is on (meta key "pubq.on", set by
 * ca_pubq_set_enabled()).
 *
 * A row names an entry to rewrite, not an edit: ("user", address) or
 * ("ca", "").  A newer change to an entry replaces its older row (with a
 * new, higher seq), so the queue holds at most one row per user plus the
 * CA, and the publisher writes each entry as the store holds it at
 * delivery.  Writing an entry twice is harmless, which is what makes a
 * crash between the directory write and ca_pubq_done() safe.
 *
 * Entry points: ca_pubq_set_enabled(), ca_pubq_add(), ca_pubq_next(),
 * ca_pubq_done(), ca_pubq_defer(), ca_pubq_stats(), ca_pubq_resync(),
 * ca_pubq_sweep_expired().
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "ca/ca.h"

#define META_ON "pubq.on"
#define META_SWEPT "pubq.expiry_swept"

void
ca_pubq_items_free(struct ca_pubq_item *items, size_t n)
{
	if (items == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(items[i].key);
		free(items[i].last_error);
	}
	free(items);
}

static int
step_done(struct kms_store *st, sqlite3_stmt *s, const char *what)
{
	int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : kms_store_fail(st, what);

	sqlite3_finalize(s);
	return rc;
}

static int
add_row(struct kms_store *st, const char *kind, const char *key)
{
	sqlite3 *db = kms_store_db(st);
	sqlite3_stmt *s = NULL;
	int rc;

	if (sqlite3_prepare_v2(db, "DELETE FROM pubq WHERE kind = ? AND key = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "queue publication");
	sqlite3_bind_text(s, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
	if ((rc = step_done(st, s, "queue publication")) != 0)
		return rc;
	if (sqlite3_prepare_v2(db, "INSERT INTO pubq(kind, key, queued) VALUES (?, ?, ?)", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "queue publication");
	sqlite3_bind_text(s, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)time(NULL));
	return step_done(st, s, "queue publication");
}

static int
valid_kind(const char *kind, const char *key)
{
	if (kind == NULL || key == NULL)
		return 0;
	if (strcmp(kind, CA_PUBQ_CA) == 0)
		return key[0] == '\0';
	return strcmp(kind, CA_PUBQ_USER) == 0 && key[0] != '\0' && strlen(key) <= 254;
}

int
ca_pubq_add(struct kms_store *st, const char *kind, const char *key)
{
	int rc, own = sqlite3_get_autocommit(kms_store_db(st));

	if (!valid_kind(kind, key))
		return kms_fail(KMS_ERR_INVALID, "publication queue: bad entry");
	if (own && (rc = kms_store_begin(st)) != 0)
		return rc;
	rc = add_row(st, kind, key);
	if (own) {
		if (rc == 0)
			rc = kms_store_commit(st);
		else
			kms_store_rollback(st);
	}
	return rc;
}

int
ca_pubq_set_enabled(struct kms_store *st, int on, int *newly)
{
	char *v = NULL;
	int rc, was;

	*newly = 0;
	if ((rc = kms_store_begin(st)) != 0)
		return rc;
	rc = kms_store_meta_get(st, META_ON, &v);
	if (rc != 0 && rc != KMS_ERR_NOTFOUND)
		goto fail;
	kms_clear_error();
	was = rc == 0;
	free(v);
	if (on && !was) {
		/* Everything changed while it was off is missing from the directory. */
		if ((rc = kms_store_meta_set(st, META_ON, "1")) != 0)
			goto fail;
		if ((rc = ca_pubq_resync(st)) != 0)
			goto fail;
		*newly = 1;
	} else if (!on && was) {
		sqlite3_stmt *s = NULL;

		if (sqlite3_prepare_v2(kms_store_db(st), "DELETE FROM meta WHERE key = '" META_ON "'", -1, &s,
		    NULL) != SQLITE_OK) {
			rc = kms_store_fail(st, "turn publishing off");
			goto fail;
		}
		if ((rc = step_done(st, s, "turn publishing off")) != 0)
			goto fail;
		if (sqlite3_prepare_v2(kms_store_db(st), "DELETE FROM pubq", -1, &s, NULL) != SQLITE_OK) {
			rc = kms_store_fail(st, "empty the publication queue");
			goto fail;
		}
		if ((rc = step_done(st, s, "empty the publication queue")) != 0)
			goto fail;
	}
	return kms_store_commit(st);
fail:
	kms_store_rollback(st);
	return rc;
}

int
ca_pubq_next(struct kms_store *st, time_t now, size_t max, struct ca_pubq_item **items, size_t *n)
{
	sqlite3_stmt *s = NULL;
	struct ca_pubq_item *v = NULL;
	size_t k = 0;
	int rc;

	*items = NULL;
	*n = 0;
	if (max == 0)
		return 0;
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT seq, kind, key, queued, attempts, last_error FROM pubq "
	    "WHERE next_try <= ? ORDER BY seq LIMIT ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read the publication queue");
	sqlite3_bind_int64(s, 1, (sqlite3_int64)now);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)max);
	if ((v = calloc(max, sizeof(*v))) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const unsigned char *kind = sqlite3_column_text(s, 1), *key = sqlite3_column_text(s, 2);
		const unsigned char *err = sqlite3_column_text(s, 5);

		v[k].seq = sqlite3_column_int64(s, 0);
		snprintf(v[k].kind, sizeof(v[k].kind), "%s", kind ? (const char *)kind : "");
		v[k].queued = (time_t)sqlite3_column_int64(s, 3);
		v[k].attempts = sqlite3_column_int(s, 4);
		v[k].key = strdup(key ? (const char *)key : "");
		v[k].last_error = err ? strdup((const char *)err) : NULL;
		k++;
		if (v[k - 1].key == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
	}
	if (rc != SQLITE_DONE) {
		rc = kms_store_fail(st, "read the publication queue");
		goto out;
	}
	*items = v;
	*n = k;
	v = NULL;
	rc = 0;
out:
	sqlite3_finalize(s);
	ca_pubq_items_free(v, k);
	return rc;
}

int
ca_pubq_done(struct kms_store *st, const long long *seqs, size_t n)
{
	sqlite3_stmt *s = NULL;
	int rc;

	if (n == 0)
		return 0;
	if ((rc = kms_store_begin(st)) != 0)
		return rc;
	if (sqlite3_prepare_v2(kms_store_db(st), "DELETE FROM pubq WHERE seq = ?", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "update the publication queue");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(s, 1, seqs[i]);
		if (sqlite3_step(s) != SQLITE_DONE) {
			rc = kms_store_fail(st, "update the publication queue");
			goto fail;
		}
		sqlite3_reset(s);
	}
	sqlite3_finalize(s);
	return kms_store_commit(st);
fail:
	sqlite3_finalize(s);
	kms_store_rollback(st);
	return rc;
}

int
ca_pubq_defer(struct kms_store *st, long long seq, time_t next_try, const char *error)
{
	sqlite3_stmt *s = NULL;

	if (sqlite3_prepare_v2(kms_store_db(st), "UPDATE pubq SET attempts = attempts + 1, next_try = ?, "
	    "last_error = ? WHERE seq = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "update the publication queue");
	sqlite3_bind_int64(s, 1, (sqlite3_int64)next_try);
	sqlite3_bind_text(s, 2, error ? error : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, seq);
	return step_done(st, s, "update the publication queue");
}

int
ca_pubq_stats(struct kms_store *st, struct ca_pubq_stats *out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT count(*), COALESCE(min(queued), 0), "
	    "COALESCE(sum(attempts > 0), 0), (SELECT value FROM meta WHERE key = '" META_ON "') FROM pubq",
	    -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read the publication queue");
	if (sqlite3_step(s) == SQLITE_ROW) {
		out->length = sqlite3_column_int64(s, 0);
		out->oldest = (time_t)sqlite3_column_int64(s, 1);
		out->retrying = sqlite3_column_int64(s, 2);
		out->enabled = sqlite3_column_type(s, 3) != SQLITE_NULL;
		rc = 0;
	} else {
		rc = kms_store_fail(st, "read the publication queue");
	}
	sqlite3_finalize(s);
	return rc;
}

/* Queue the CA and every address of the rows sql selects (one text column). */
static int
add_all(struct kms_store *st, const char *sql, time_t bind1, time_t bind2, int with_ca, long long *count)
{
	sqlite3_stmt *s = NULL;
	int rc;
	long long k = 0;

	if (with_ca) {
		if ((rc = add_row(st, CA_PUBQ_CA, "")) != 0)
			return rc;
		k++;
	}
	if (sqlite3_prepare_v2(kms_store_db(st), sql, -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "list addresses to publish");
	if (sqlite3_bind_parameter_count(s) >= 1)
		sqlite3_bind_int64(s, 1, (sqlite3_int64)bind1);
	if (sqlite3_bind_parameter_count(s) >= 2)
		sqlite3_bind_int64(s, 2, (sqlite3_int64)bind2);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const unsigned char *email = sqlite3_column_text(s, 0);

		if (email == NULL || email[0] == '\0' || strlen((const char *)email) > 254)
			continue;
		if ((rc = add_row(st, CA_PUBQ_USER, (const char *)email)) != 0) {
			sqlite3_finalize(s);
			return rc;
		}
		k++;
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return kms_store_fail(st, "list addresses to publish");
	if (count)
		*count = k;
	return 0;
}

int
ca_pubq_resync(struct kms_store *st)
{
	int rc, own = sqlite3_get_autocommit(kms_store_db(st));

	if (own && (rc = kms_store_begin(st)) != 0)
		return rc;
	rc = add_all(st, "SELECT DISTINCT email FROM certs WHERE usage IN ('sign', 'enc') ORDER BY email",
	    0, 0, 1, NULL);
	if (own) {
		if (rc == 0)
			rc = kms_store_commit(st);
		else
			kms_store_rollback(st);
	}
	return rc;
}

int
ca_pubq_sweep_expired(struct kms_store *st, time_t now, long long *queued)
{
	char *v = NULL, buf[32];
	time_t since = 0;
	int rc;

	*queued = 0;
	if ((rc = kms_store_begin(st)) != 0)
		return rc;
	rc = kms_store_meta_get(st, META_SWEPT, &v);
	if (rc == 0)
		since = (time_t)strtoll(v, NULL, 10);
	else if (rc != KMS_ERR_NOTFOUND)
		goto fail;
	kms_clear_error();
	free(v);
	if (now <= since) {
		kms_store_rollback(st);
		return 0;
	}
	/* Certificates whose notAfter passed since the last sweep, not already removed by revocation. */
	rc = add_all(st, "SELECT DISTINCT email FROM certs WHERE usage IN ('sign', 'enc') AND revoked_at IS NULL "
	    "AND not_after > ?1 AND not_after <= ?2 ORDER BY email", since, now, 0, queued);
	if (rc != 0)
		goto fail;
	snprintf(buf, sizeof(buf), "%lld", (long long)now);
	if ((rc = kms_store_meta_set(st, META_SWEPT, buf)) != 0)
		goto fail;
	return kms_store_commit(st);
fail:
	kms_store_rollback(st);
	return rc;
}
