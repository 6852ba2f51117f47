/*
 * serialset.c - the set of serial numbers our CA has issued, in memory,
 * so that the OCSP responder can tell "good" from "unknown" (RFC 6960
 * 2.2) without a store query per request.
 *
 * Entry points: ca_serialset_new(), ca_serialset_free(),
 * ca_serialset_add(), ca_serialset_add_store(), ca_serialset_has(),
 * ca_serialset_count().
 *
 * An open-addressing table of 32-byte slots (keyed hash and the serial's
 * magnitude inline), kept at most half full: a lookup reads one or two
 * slots whatever the size.  Readers share a read lock; an issuance takes
 * the write lock for one insertion (and, rarely, a rehash).
 */
#include "config.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ca/ca.h"
#include "ca/crlint.h"

/* RFC 5280 4.1.2.2: at most 20 octets; a little slack for lenient encoders. */
#define SS_MAX 23

struct ss_slot {
	uint64_t hash;
	uint8_t len;            /* 0: empty */
	unsigned char s[SS_MAX];
};
_Static_assert(sizeof(struct ss_slot) == 32, "two slots per cache line");

struct ca_serialset {
	pthread_rwlock_t lock;
	struct ss_slot *slots;
	size_t mask;            /* slot count - 1 */
	size_t n;
};

/* The magnitude of a positive serial, leading zero octets cut; -1 if we could never have issued it. */
static int
serial_mag(const ASN1_INTEGER *serial, const unsigned char **s, size_t *n)
{
	const unsigned char *p;
	int len;

	if (serial == NULL || ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER)
		return -1;
	p = ASN1_STRING_get0_data(serial);
	len = ASN1_STRING_length(serial);
	while (len > 1 && p[0] == 0) {
		p++;
		len--;
	}
	if (p == NULL || len <= 0 || len > SS_MAX)
		return -1;
	*s = p;
	*n = (size_t)len;
	return 0;
}

static struct ss_slot *
slot_find(struct ss_slot *slots, size_t mask, uint64_t h, const unsigned char *s, size_t n)
{
	for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
		struct ss_slot *sl = &slots[i];

		if (sl->len == 0 || (sl->hash == h && sl->len == n && memcmp(sl->s, s, n) == 0))
			return sl;
	}
}

int
ca_serialset_new(struct ca_serialset **out)
{
	struct ca_serialset *set;

	*out = NULL;
	if ((set = calloc(1, sizeof(*set))) == NULL || (set->slots = calloc(64, sizeof(*set->slots))) == NULL) {
		free(set);
		return KMS_ERR_NOMEM;
	}
	set->mask = 63;
	if (pthread_rwlock_init(&set->lock, NULL) != 0) {
		free(set->slots);
		free(set);
		return kms_fail(KMS_ERR_NOMEM, "rwlock");
	}
	*out = set;
	return 0;
}

void
ca_serialset_free(struct ca_serialset *set)
{
	if (set == NULL)
		return;
	pthread_rwlock_destroy(&set->lock);
	free(set->slots);
	free(set);
}

/* Under the write lock. */
static int
grow(struct ca_serialset *set)
{
	size_t want = (set->mask + 1) * 2;
	struct ss_slot *ns;

	if ((ns = calloc(want, sizeof(*ns))) == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; i <= set->mask; i++)
		if (set->slots[i].len != 0)
			*slot_find(ns, want - 1, set->slots[i].hash, set->slots[i].s, set->slots[i].len) = set->slots[i];
	free(set->slots);
	set->slots = ns;
	set->mask = want - 1;
	return 0;
}

static int
add_mag(struct ca_serialset *set, const unsigned char *s, size_t n)
{
	uint64_t h = ca_keyed_hash(s, n);
	struct ss_slot *sl;
	int rc = 0;

	pthread_rwlock_wrlock(&set->lock);
	if (2 * (set->n + 1) > set->mask + 1 && (rc = grow(set)) != 0)
		goto out;
	sl = slot_find(set->slots, set->mask, h, s, n);
	if (sl->len == 0) {
		sl->hash = h;
		sl->len = (uint8_t)n;
		memcpy(sl->s, s, n);
		set->n++;
	}
out:
	pthread_rwlock_unlock(&set->lock);
	return rc;
}

int
ca_serialset_add(struct ca_serialset *set, const ASN1_INTEGER *serial)
{
	const unsigned char *s;
	size_t n;

	if (set == NULL || serial_mag(serial, &s, &n) != 0)
		return kms_fail(KMS_ERR_INVALID, "serial number not one this CA issues");
	return add_mag(set, s, n);
}

int
ca_serialset_has(struct ca_serialset *set, const ASN1_INTEGER *serial)
{
	const unsigned char *s;
	size_t n;
	uint64_t h;
	int found;

	if (set == NULL || serial_mag(serial, &s, &n) != 0)
		return 0;
	h = ca_keyed_hash(s, n);
	pthread_rwlock_rdlock(&set->lock);
	found = slot_find(set->slots, set->mask, h, s, n)->len != 0;
	pthread_rwlock_unlock(&set->lock);
	return found;
}

size_t
ca_serialset_count(struct ca_serialset *set)
{
	size_t n;

	if (set == NULL)
		return 0;
	pthread_rwlock_rdlock(&set->lock);
	n = set->n;
	pthread_rwlock_unlock(&set->lock);
	return n;
}

int
ca_serialset_add_store(struct ca_serialset *set, struct kms_store *st)
{
	sqlite3_stmt *s = NULL;
	int rc = 0, step;

	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT serial FROM certs", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read issued serial numbers");
	while ((step = sqlite3_step(s)) == SQLITE_ROW) {
		const char *hex = (const char *)sqlite3_column_text(s, 0);
		unsigned char mag[CA_SERIAL_MAX];
		size_t n;

		if (hex == NULL || ca_serial_hex_bytes(hex, mag, sizeof(mag), &n) != 0 || n > SS_MAX) {
			kms_log(KMS_LOG_WARNING, "issued serials: a bad serial in the certs table skipped");
			continue;
		}
		if ((rc = add_mag(set, mag, n)) != 0)
			goto out;
	}
	if (step != SQLITE_DONE)
		rc = kms_store_fail(st, "read issued serial numbers");
out:
	sqlite3_finalize(s);
	return rc;
}
