/*
 * revidx.c - the in-memory revocation index the milter reads.
 *
 * Entry points: the builder (ca_revidx_builder_new, _add_store, _add_crl,
 * _mark_stale, ca_revidx_build), lookups (ca_revidx_lookup,
 * ca_revidx_issuer_state, ca_revidx_count), ca_revidx_with() for a
 * revocation made in this process, reference counting, and the holder
 * (ca_revholder_*) that swaps the current snapshot.
 *
 * A snapshot is immutable.  Its entries live in an open-addressing hash
 * table keyed by (issuer, serial): each slot holds 32 bits of the key's
 * keyed hash and the entry's index, so a lookup touches one or two cache lines
 * whatever the size, and never checks a signature (CRL signatures are
 * checked once, when a CRL is added to a builder).  The issuer part of the
 * key is the issuer's position in the snapshot's small issuer table, found
 * by the full DER of the name (with OpenSSL's canonical comparison as a
 * fallback for differently encoded names), so two CAs never collide.
 *
 * ca_revidx_with() shares the big table ("bulk", reference counted) of its
 * base and copies only the small overlay of entries added since, plus the
 * new one; when the overlay outgrows a sixteenth of the bulk the two are
 * merged into a new bulk.  The holder hands out references under a mutex
 * held for a pointer copy and an atomic increment, so readers never wait
 * for a rebuild, which happens outside it.
 */
#include "config.h"

#include <endian.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/crlint.h"

#define ENT_NEG 0x80            /* in len_flags: negative serial */
#define ENT_STALE 0x8000        /* in issuer: came from a stale list */
#define ENT_ONLY_USER 0x20      /* in reason: from a CRL for end-entity certificates only */
#define ENT_ONLY_CA 0x40        /* in reason: from a CRL for CA certificates only */
#define ENT_REASON 0x1f
#define MAX_ISSUERS 0x7fff
/* Tolerated clock skew for a CRL's thisUpdate. */
#define CRL_SKEW 300

#define INLINE_SERIAL 32

/* One cache line: a lookup touches its slot and this, nothing else (serials up to 32 octets). */
struct rev_ent {
	uint64_t hash;
	int64_t revoked_at;
	int64_t invalidity;
	uint32_t serial_off;    /* into the table's serials, for longer serials */
	uint16_t issuer;        /* issuer index | ENT_STALE */
	uint8_t len_flags;      /* serial length | ENT_NEG */
	int8_t reason;
	unsigned char inl[INLINE_SERIAL];
};
_Static_assert(sizeof(struct rev_ent) == 64, "a revocation entry fills one cache line");

struct rev_table {
	uint64_t *slots;        /* 0 empty, else (hash >> 32) << 32 | (entry index + 1) */
	size_t mask;            /* slot count - 1; slots NULL when empty */
	struct rev_ent *ents;
	size_t n, cap;
	unsigned char *serials;
	size_t slen, scap;
};

struct rev_bulk {
	atomic_long refs;
	struct rev_table t;
};

/* Coverage of one distribution point of a partitioned CA. */
struct rev_dp {
	uint64_t h;             /* keyed hash of the URI */
	int covers;             /* CA_CRL_COVERS_* */
	int ind_covers;         /* the same for certificates naming this CA as cRLIssuer (indirect CRL) */
	time_t next_update;
};

/*
 * An issuer of revoked certificates.  Entries of an indirect CRL for the
 * certificates of another CA go under a separate issuer: that CA's name
 * with via set to the index of the indirect CRL's issuer, found only for a
 * certificate whose distribution point names that CRL issuer as cRLIssuer
 * (RFC 5280 5.2.5, 6.3.3).  via is -1 for the CA's own entries.
 */
struct rev_issuer {
	unsigned char *der;
	size_t len;
	X509_NAME *name;
	long via;
	time_t next_update;     /* 0: live data (our store) or no nextUpdate */
	int stale;
	int covers;             /* CA_CRL_COVERS_* established by complete CRLs of this CA */
	int expired;            /* a CRL of this CA was loaded past its nextUpdate */
	int ind_covers;         /* the same for certificates naming this CA as their cRLIssuer */
	struct rev_dp *dps;     /* partitions (IDP with a distribution point name) */
	size_t ndps;
};

/* The generation of the last snapshot made. */
static atomic_ulong revidx_gen;

struct ca_revidx {
	atomic_long refs;
	unsigned long gen;
	struct rev_bulk *bulk;
	struct rev_table over;
	struct rev_issuer *issuers;
	size_t nissuers;
	size_t count;
	/*
	 * Issuer lookup in constant time at any number of CAs: by the keyed
	 * hash of the name's DER, else by OpenSSL's hash of its canonical
	 * form (the same name in another string encoding).  Slots hold the
	 * hash's high half and the issuer index + 1.
	 */
	uint64_t *iq, *ic;
	size_t iqmask, icmask;
	int any_indirect;
};

struct ca_revidx_builder {
	struct rev_table t;
	struct rev_issuer *issuers;
	size_t nissuers;
	int err;
};

struct ca_revholder {
	pthread_mutex_t mu;
	struct ca_revidx *cur;
};

/* ---------------------------------------------------------------- hashing */

static uint64_t sipkey[2];
static pthread_once_t sipkey_once = PTHREAD_ONCE_INIT;

static void
sipkey_init(void)
{
	if (RAND_bytes((unsigned char *)sipkey, sizeof(sipkey)) != 1) {
		/* Not secret for correctness; only flooding resistance suffers. */
		sipkey[0] = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL;
		sipkey[1] = (uint64_t)(uintptr_t)&sipkey;
	}
}

/* One 64x64->128 multiply folded to 64 bits: a fast, well-mixing step. */
static inline uint64_t
mix(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;

	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/*
 * A keyed multiply-mix hash (in the manner of wyhash): a few nanoseconds
 * for a serial number, with a random per-process key so that the layout
 * of the table cannot be predicted from outside.
 */
static uint64_t
keyed_hash(const unsigned char *in, size_t len)
{
	uint64_t h = sipkey[0] ^ ((uint64_t)len * 0x9e3779b97f4a7c15ULL), w;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		memcpy(&w, in + i, 8);
		h = mix(h ^ le64toh(w), sipkey[1] ^ 0xa0761d6478bd642fULL);
	}
	if (i < len) {
		w = 0;
		memcpy(&w, in + i, len - i);
		h = mix(h ^ le64toh(w), sipkey[1] ^ 0xe7037ed1a0b428dbULL);
	}
	return mix(h, sipkey[0] ^ 0x8ebc6af09c88c6e3ULL);
}

uint64_t
ca_keyed_hash(const void *in, size_t len)
{
	pthread_once(&sipkey_once, sipkey_init);
	return keyed_hash(in, len);
}

static uint64_t
key_hash(unsigned issuer, int neg, const unsigned char *s, size_t n)
{
	unsigned char buf[3 + CA_SERIAL_MAX];

	buf[0] = (unsigned char)(issuer & 0xff);
	buf[1] = (unsigned char)(issuer >> 8);
	buf[2] = (unsigned char)(neg ? 1 : 0);
	memcpy(buf + 3, s, n);
	return keyed_hash(buf, n + 3);
}

/* ------------------------------------------------------------------ table */

static void
table_free(struct rev_table *t)
{
	free(t->slots);
	free(t->ents);
	free(t->serials);
	memset(t, 0, sizeof(*t));
}

static const unsigned char *
ent_serial(const struct rev_table *t, const struct rev_ent *e)
{
	return (e->len_flags & 0x7f) <= INLINE_SERIAL ? e->inl : t->serials + e->serial_off;
}

static int
ent_match(const struct rev_table *t, const struct rev_ent *e, uint64_t h, unsigned issuer, int neg,
    const unsigned char *s, size_t n)
{
	return e->hash == h && (e->issuer & ~ENT_STALE) == issuer && (e->len_flags & 0x7f) == n &&
	    !!(e->len_flags & ENT_NEG) == !!neg && memcmp(ent_serial(t, e), s, n) == 0;
}

/* Index of the entry with this key, or -1. */
static long
table_find(const struct rev_table *t, uint64_t h, unsigned issuer, int neg, const unsigned char *s, size_t n)
{
	size_t i;
	uint32_t tag = (uint32_t)(h >> 32);

	if (t->slots == NULL)
		return -1;
	for (i = (size_t)h & t->mask;; i = (i + 1) & t->mask) {
		uint64_t v = t->slots[i];

		if (v == 0)
			return -1;
		if ((uint32_t)(v >> 32) == tag) {
			size_t k = (size_t)(uint32_t)v - 1;

			if (ent_match(t, &t->ents[k], h, issuer, neg, s, n))
				return (long)k;
		}
	}
}

static void
slot_put(uint64_t *slots, size_t mask, uint64_t h, size_t k)
{
	size_t i = (size_t)h & mask;

	while (slots[i] != 0)
		i = (i + 1) & mask;
	slots[i] = (h >> 32) << 32 | (uint64_t)(k + 1);
}

/* Keep the load factor at or under one half. */
static int
table_reserve(struct rev_table *t, size_t n)
{
	size_t want = 16;
	uint64_t *slots;

	if (n > UINT32_MAX - 1)
		return KMS_ERR_TOOBIG;
	while (want < 2 * n)
		want *= 2;
	if (t->slots != NULL && want <= t->mask + 1)
		return 0;
	if ((slots = calloc(want, sizeof(*slots))) == NULL)
		return KMS_ERR_NOMEM;
	for (size_t k = 0; k < t->n; k++)
		slot_put(slots, want - 1, t->ents[k].hash, k);
	free(t->slots);
	t->slots = slots;
	t->mask = want - 1;
	return 0;
}

/*
 * Entries are cache-line aligned, so each lookup reads exactly one line of
 * them: realloc() cannot keep that alignment, so this one array grows here
 * rather than through kms_array_reserve().
 */
static int
grow_ents(struct rev_table *t, size_t need)
{
	size_t nc;
	void *np;

	if (need <= t->cap)
		return 0;
	nc = t->cap ? t->cap : 64;
	while (nc < need) {
		if (nc > SIZE_MAX / 2 / sizeof(*t->ents))
			return KMS_ERR_TOOBIG;
		nc *= 2;
	}
	if (posix_memalign(&np, 64, nc * sizeof(*t->ents)) != 0)
		return KMS_ERR_NOMEM;
	if (t->n > 0)
		memcpy(np, t->ents, t->n * sizeof(*t->ents));
	free(t->ents);
	t->ents = np;
	t->cap = nc;
	return 0;
}

/*
 * Add an entry; an entry with the same key is kept (replace 0) or
 * overwritten (replace 1).  *added tells whether the key was new.
 */
static int
table_add(struct rev_table *t, unsigned issuer, int neg, const unsigned char *s, size_t n,
    const struct ca_rev_info *info, int stale, int replace, int *added)
{
	uint64_t h = key_hash(issuer, neg, s, n);
	struct rev_ent *e;
	long k;
	int rc;

	if (added)
		*added = 0;
	if ((k = table_find(t, h, issuer, neg, s, n)) >= 0) {
		if (!replace)
			return 0;
		e = &t->ents[k];
	} else {
		if ((rc = table_reserve(t, t->n + 1)) != 0 || (rc = grow_ents(t, t->n + 1)) != 0 ||
		    (n > INLINE_SERIAL && (rc = kms_array_reserve(&t->serials, &t->scap, t->slen + n, 1, SIZE_MAX)) != 0))
			return rc;
		e = &t->ents[t->n];
		memset(e, 0, sizeof(*e));
		e->hash = h;
		e->len_flags = (uint8_t)(n | (neg ? ENT_NEG : 0));
		if (n <= INLINE_SERIAL) {
			memcpy(e->inl, s, n);
		} else {
			e->serial_off = (uint32_t)t->slen;
			memcpy(t->serials + t->slen, s, n);
			t->slen += n;
		}
		slot_put(t->slots, t->mask, h, t->n);
		t->n++;
		if (added)
			*added = 1;
	}
	e->issuer = (uint16_t)(issuer | (stale ? ENT_STALE : 0));
	e->revoked_at = (int64_t)info->revoked_at;
	e->invalidity = (int64_t)info->invalidity;
	e->reason = (int8_t)info->reason;
	return 0;
}

static int
table_copy(struct rev_table *dst, const struct rev_table *src, size_t extra)
{
	memset(dst, 0, sizeof(*dst));
	if (src->n == 0 && extra == 0)
		return 0;
	if (grow_ents(dst, src->n + extra) != 0 || kms_array_reserve(&dst->serials, &dst->scap, src->slen + 1, 1, SIZE_MAX) != 0)
		goto nomem;
	if (src->n > 0)
		memcpy(dst->ents, src->ents, src->n * sizeof(*src->ents));
	if (src->slen > 0)
		memcpy(dst->serials, src->serials, src->slen);
	dst->n = src->n;
	dst->slen = src->slen;
	if (table_reserve(dst, src->n + extra) != 0)
		goto nomem;
	return 0;
nomem:
	table_free(dst);
	return KMS_ERR_NOMEM;
}

static void
ent_info(const struct rev_ent *e, struct ca_rev_info *info)
{
	info->revoked_at = (time_t)e->revoked_at;
	info->invalidity = (time_t)e->invalidity;
	info->reason = e->reason;
	info->stale = (e->issuer & ENT_STALE) ? 1 : 0;
}

/* ---------------------------------------------------------------- issuers */

static void
issuers_free(struct rev_issuer *is, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(is[i].der);
		X509_NAME_free(is[i].name);
		free(is[i].dps);
	}
	free(is);
}

static int
issuer_fill(struct rev_issuer *dst, const X509_NAME *name)
{
	const unsigned char *der;
	size_t len;

	memset(dst, 0, sizeof(*dst));
	if (!X509_NAME_get0_der(name, &der, &len) || len == 0)
		return kms_fail_openssl(KMS_ERR_INVALID, "issuer name");
	if ((dst->der = malloc(len)) == NULL || (dst->name = X509_NAME_dup(name)) == NULL) {
		free(dst->der);
		dst->der = NULL;
		return KMS_ERR_NOMEM;
	}
	memcpy(dst->der, der, len);
	dst->len = len;
	dst->via = -1;
	/* Settle the copy's cached encodings now: lookups must only read it. */
	(void)X509_NAME_get0_der(dst->name, &der, &len);
	return 0;
}

static int
issuers_copy(struct rev_issuer **dst, const struct rev_issuer *src, size_t n, size_t extra)
{
	struct rev_issuer *a;

	*dst = NULL;
	if ((a = calloc(n + extra + 1, sizeof(*a))) == NULL)
		return KMS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++) {
		a[i] = src[i];
		a[i].der = malloc(src[i].len);
		a[i].name = X509_NAME_dup(src[i].name);
		a[i].dps = NULL;
		if (src[i].ndps > 0 && (a[i].dps = calloc(src[i].ndps, sizeof(*a[i].dps))) != NULL)
			memcpy(a[i].dps, src[i].dps, src[i].ndps * sizeof(*a[i].dps));
		if (a[i].der == NULL || a[i].name == NULL || (src[i].ndps > 0 && a[i].dps == NULL)) {
			issuers_free(a, i + 1);
			return KMS_ERR_NOMEM;
		}
		memcpy(a[i].der, src[i].der, src[i].len);
	}
	*dst = a;
	return 0;
}

/* The issuer of that name (via -1: its own entries; else those an indirect CRL of issuer via lists). */
static long
issuer_find(const struct rev_issuer *is, size_t n, const X509_NAME *name, long via)
{
	const unsigned char *der;
	size_t len;

	if (n == 0 || name == NULL || !X509_NAME_get0_der(name, &der, &len))
		return -1;
	/* A handful of issuers: comparing the DER beats hashing it. */
	for (size_t i = 0; i < n; i++)
		if (is[i].via == via && is[i].len == len && memcmp(is[i].der, der, len) == 0)
			return (long)i;
	/* The same name in another string encoding (RFC 5280 7.1 comparison). */
	for (size_t i = 0; i < n; i++)
		if (is[i].via == via && X509_NAME_cmp(is[i].name, name) == 0)
			return (long)i;
	return -1;
}

/* What an issuer's via adds to the hash of its name in the snapshot's issuer tables. */
static uint64_t
via_salt(long via)
{
	return via < 0 ? 0 : mix((uint64_t)via + 1, sipkey[1] ^ 0x589965cc75374cc3ULL);
}

static int
issuer_stale(const struct rev_issuer *is, time_t now)
{
	return is->stale || (is->next_update > 0 && now > is->next_update);
}

static uint64_t
canon_hash(const X509_NAME *name, int *ok)
{
	unsigned long h = X509_NAME_hash_ex(name, NULL, NULL, ok);

	ERR_clear_error();
	return mix((uint64_t)h ^ sipkey[0], 0x9e3779b97f4a7c15ULL);
}

/* The snapshot's issuer hash tables (after its issuers are final). */
static int
issuers_index(struct ca_revidx *idx)
{
	size_t want = 16;

	free(idx->iq);
	free(idx->ic);
	idx->iq = idx->ic = NULL;
	idx->any_indirect = 0;
	while (want < 2 * idx->nissuers)
		want *= 2;
	if ((idx->iq = calloc(want, sizeof(*idx->iq))) == NULL || (idx->ic = calloc(want, sizeof(*idx->ic))) == NULL) {
		free(idx->iq);
		idx->iq = NULL;
		return KMS_ERR_NOMEM;
	}
	idx->iqmask = idx->icmask = want - 1;
	for (size_t i = 0; i < idx->nissuers; i++) {
		const struct rev_issuer *is = &idx->issuers[i];
		int ok = 0;
		uint64_t c;

		slot_put(idx->iq, idx->iqmask, keyed_hash(is->der, is->len) ^ via_salt(is->via), i);
		c = canon_hash(is->name, &ok);
		if (ok)
			slot_put(idx->ic, idx->icmask, c ^ via_salt(is->via), i);
		if (is->ind_covers || is->via >= 0)
			idx->any_indirect = 1;
		for (size_t k = 0; k < is->ndps; k++)
			if (is->dps[k].ind_covers)
				idx->any_indirect = 1;
	}
	return 0;
}

/* Index of name's issuer (via as in issuer_find) in the snapshot, or -1: two short probes at any size. */
static long
idx_issuer_via(const struct ca_revidx *idx, const X509_NAME *name, long via)
{
	const unsigned char *der;
	size_t len;
	uint64_t h;
	int ok = 0;

	if (idx->nissuers == 0 || name == NULL)
		return -1;
	if (idx->iq == NULL)
		return issuer_find(idx->issuers, idx->nissuers, name, via);
	if (!X509_NAME_get0_der(name, &der, &len))
		return -1;
	h = keyed_hash(der, len) ^ via_salt(via);
	for (size_t i = (size_t)h & idx->iqmask; idx->iq[i] != 0; i = (i + 1) & idx->iqmask) {
		if ((uint32_t)(idx->iq[i] >> 32) == (uint32_t)(h >> 32)) {
			size_t k = (size_t)(uint32_t)idx->iq[i] - 1;

			if (idx->issuers[k].via == via && idx->issuers[k].len == len &&
			    memcmp(idx->issuers[k].der, der, len) == 0)
				return (long)k;
		}
	}
	/* The same name in another string encoding (RFC 5280 7.1 comparison). */
	h = canon_hash(name, &ok) ^ via_salt(via);
	if (!ok)
		return issuer_find(idx->issuers, idx->nissuers, name, via);
	for (size_t i = (size_t)h & idx->icmask; idx->ic[i] != 0; i = (i + 1) & idx->icmask) {
		if ((uint32_t)(idx->ic[i] >> 32) == (uint32_t)(h >> 32)) {
			size_t k = (size_t)(uint32_t)idx->ic[i] - 1;

			if (idx->issuers[k].via == via && X509_NAME_cmp(idx->issuers[k].name, name) == 0)
				return (long)k;
		}
	}
	return -1;
}

static long
idx_issuer(const struct ca_revidx *idx, const X509_NAME *name)
{
	return idx_issuer_via(idx, name, -1);
}

/* ---------------------------------------------------------------- builder */

int
ca_revidx_builder_new(struct ca_revidx_builder **out)
{
	*out = NULL;
	pthread_once(&sipkey_once, sipkey_init);
	if ((*out = calloc(1, sizeof(**out))) == NULL)
		return KMS_ERR_NOMEM;
	return 0;
}

void
ca_revidx_builder_free(struct ca_revidx_builder *b)
{
	if (b == NULL)
		return;
	table_free(&b->t);
	issuers_free(b->issuers, b->nissuers);
	free(b);
}

static long
builder_issuer_via(struct ca_revidx_builder *b, const X509_NAME *name, long via)
{
	long i = issuer_find(b->issuers, b->nissuers, name, via);
	struct rev_issuer *na;

	if (i >= 0)
		return i;
	if (b->nissuers >= MAX_ISSUERS)
		return kms_fail(KMS_ERR_TOOBIG, "too many CRL issuers");
	if ((na = realloc(b->issuers, (b->nissuers + 1) * sizeof(*na))) == NULL)
		return KMS_ERR_NOMEM;
	b->issuers = na;
	if (issuer_fill(&na[b->nissuers], name) != 0)
		return KMS_ERR_NOMEM;
	na[b->nissuers].via = via;
	return (long)b->nissuers++;
}

static long
builder_issuer(struct ca_revidx_builder *b, const X509_NAME *name)
{
	return builder_issuer_via(b, name, -1);
}

/* Serial magnitude and sign of an ASN1_INTEGER, leading zero octets cut. */
static int
serial_key(const ASN1_INTEGER *serial, const unsigned char **s, size_t *n, int *neg)
{
	const unsigned char *p = ASN1_STRING_get0_data(serial);
	int len = ASN1_STRING_length(serial);

	if (p == NULL || len <= 0) {
		static const unsigned char zero[1] = { 0 };

		*s = zero;
		*n = 1;
		*neg = 0;
		return 0;
	}
	while (len > 1 && p[0] == 0) {
		p++;
		len--;
	}
	if (len > CA_SERIAL_MAX)
		return KMS_ERR_TOOBIG;
	*s = p;
	*n = (size_t)len;
	*neg = ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER;
	return 0;
}

int
ca_revidx_add_store(struct ca_revidx_builder *b, struct kms_store *st, X509 *ca_cert)
{
	sqlite3_stmt *s = NULL;
	long issuer;
	int rc, step;

	if (b->err)
		return KMS_ERR_NOMEM;
	if (ca_cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CA certificate");
	if ((issuer = builder_issuer(b, X509_get_subject_name(ca_cert))) < 0)
		return (int)issuer;
	/* Our own store is live: it says the whole truth about our certificates. */
	b->issuers[issuer].covers |= CA_CRL_COVERS_USER | CA_CRL_COVERS_CA;
	if (sqlite3_prepare_v2(kms_store_db(st),
	    "SELECT serial, revoked_at, reason, invalidity FROM certs WHERE revoked_at IS NOT NULL",
	    -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "read revoked certificates");
	while ((step = sqlite3_step(s)) == SQLITE_ROW) {
		unsigned char mag[CA_SERIAL_MAX];
		size_t n;
		const char *hex = (const char *)sqlite3_column_text(s, 0);
		struct ca_rev_info info;

		if (hex == NULL || ca_serial_hex_bytes(hex, mag, sizeof(mag), &n) != 0) {
			kms_log(KMS_LOG_WARNING, "revocation index: bad serial in the certs table skipped");
			continue;
		}
		info.revoked_at = (time_t)sqlite3_column_int64(s, 1);
		info.reason = sqlite3_column_type(s, 2) == SQLITE_NULL ? 0 : sqlite3_column_int(s, 2);
		info.invalidity = sqlite3_column_type(s, 3) == SQLITE_NULL ? 0 : (time_t)sqlite3_column_int64(s, 3);
		info.stale = 0;
		if ((rc = table_add(&b->t, (unsigned)issuer, 0, mag, n, &info, 0, 1, NULL)) != 0) {
			b->err = 1;
			goto out;
		}
	}
	rc = step == SQLITE_DONE ? 0 : kms_store_fail(st, "read revoked certificates");
out:
	sqlite3_finalize(s);
	return rc;
}

static time_t
asn1_time_t(const ASN1_TIME *t, int *ok)
{
	struct tm tm;

	*ok = 0;
	if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
		return 0;
	*ok = 1;
	return timegm(&tm);
}

static int
crl_ext_known(int nid)
{
	return nid == NID_crl_number || nid == NID_authority_key_identifier || nid == NID_delta_crl ||
	    nid == NID_issuing_distribution_point || nid == NID_freshest_crl;
}

int
ca_crl_check(X509_CRL *crl, X509 *issuer, time_t now, int *stale)
{
	EVP_PKEY *pub;
	time_t tu, nu;
	int ok, n;

	*stale = 0;
	if (crl == NULL || issuer == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CRL or no issuer certificate");
	if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(issuer)) != 0)
		return kms_fail(KMS_ERR_CORRUPT, "CRL issuer does not match the CA certificate's subject");
	if ((X509_get_extension_flags(issuer) & EXFLAG_KUSAGE) && !(X509_get_key_usage(issuer) & KU_CRL_SIGN))
		return kms_fail(KMS_ERR_CORRUPT, "the CA certificate may not sign CRLs (no cRLSign key usage)");
	if ((pub = X509_get0_pubkey(issuer)) == NULL)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "CA public key");
	if (X509_CRL_verify(crl, pub) != 1)
		return kms_fail_openssl(KMS_ERR_CORRUPT, "CRL signature does not verify with the CA's key");
	n = X509_CRL_get_ext_count(crl);
	for (int i = 0; i < n; i++) {
		X509_EXTENSION *ext = X509_CRL_get_ext(crl, i);

		if (X509_EXTENSION_get_critical(ext) &&
		    !crl_ext_known(OBJ_obj2nid(X509_EXTENSION_get_object(ext))))
			return kms_fail(KMS_ERR_CORRUPT, "CRL has an unknown critical extension");
	}
	tu = asn1_time_t(X509_CRL_get0_lastUpdate(crl), &ok);
	if (!ok)
		return kms_fail(KMS_ERR_CORRUPT, "CRL thisUpdate unreadable");
	if (tu > now + CRL_SKEW)
		return kms_fail(KMS_ERR_CORRUPT, "CRL thisUpdate is in the future");
	if (X509_CRL_get0_nextUpdate(crl) != NULL) {
		nu = asn1_time_t(X509_CRL_get0_nextUpdate(crl), &ok);
		if (!ok)
			return kms_fail(KMS_ERR_CORRUPT, "CRL nextUpdate unreadable");
		if (now > nu)
			*stale = 1;
	}
	return 0;
}

static X509_NAME *entry_cert_issuer(X509_REVOKED *r, int *present);

/*
 * Add the entries of a CRL already checked against its issuer.  A delta
 * CRL lists only what changed since its base: its entries revoke, but it
 * says nothing of the certificates it does not list (no coverage, no
 * staleness).  Entries from a certificateIssuer naming another CA on (an
 * indirect CRL, which this path does not attribute) are left out.
 */
static int
add_entries(struct ca_revidx_builder *b, X509_CRL *crl, int stale)
{
	STACK_OF(X509_REVOKED) *revs;
	struct rev_issuer *is;
	long issuer;
	time_t nu = 0;
	int rc, ok, own = 1, delta = X509_CRL_get_ext_by_NID(crl, NID_delta_crl, -1) >= 0;

	if (X509_CRL_get0_nextUpdate(crl) != NULL)
		nu = asn1_time_t(X509_CRL_get0_nextUpdate(crl), &ok);
	if ((issuer = builder_issuer(b, X509_CRL_get_issuer(crl))) < 0)
		return (int)issuer;
	is = &b->issuers[issuer];
	if (!delta && stale)
		is->stale = 1;
	else if (!delta)
		is->covers |= CA_CRL_COVERS_USER | CA_CRL_COVERS_CA;
	if (!delta && nu > 0 && (is->next_update == 0 || nu < is->next_update))
		is->next_update = nu;

	revs = X509_CRL_get_REVOKED(crl);
	for (int i = 0; i < sk_X509_REVOKED_num(revs); i++) {
		X509_REVOKED *r = sk_X509_REVOKED_value(revs, i);
		ASN1_ENUMERATED *reason;
		ASN1_GENERALIZEDTIME *inval;
		struct ca_rev_info info = { 0 };
		const unsigned char *s;
		size_t n;
		int neg, present;
		X509_NAME *ci = entry_cert_issuer(r, &present);

		if (present)
			own = ci != NULL && X509_NAME_cmp(ci, X509_CRL_get_issuer(crl)) == 0;
		X509_NAME_free(ci);
		if (!own)
			continue;
		if (serial_key(X509_REVOKED_get0_serialNumber(r), &s, &n, &neg) != 0) {
			kms_log(KMS_LOG_WARNING, "CRL entry with an oversized serial number skipped");
			continue;
		}
		info.revoked_at = asn1_time_t(X509_REVOKED_get0_revocationDate(r), &ok);
		if ((reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL)) != NULL) {
			info.reason = (int)ASN1_ENUMERATED_get(reason);
			ASN1_ENUMERATED_free(reason);
		}
		/* A delta's removeFromCRL entry: the certificate is no longer on hold. */
		if (info.reason == 8)
			continue;
		if ((inval = X509_REVOKED_get_ext_d2i(r, NID_invalidity_date, NULL, NULL)) != NULL) {
			info.invalidity = asn1_time_t(inval, &ok);
			ASN1_GENERALIZEDTIME_free(inval);
		}
		if ((rc = table_add(&b->t, (unsigned)issuer, neg, s, n, &info, stale, 0, NULL)) != 0) {
			b->err = 1;
			return rc;
		}
	}
	return 0;
}

int
ca_revidx_add_crl(struct ca_revidx_builder *b, X509_CRL *crl, X509 *issuer_cert, time_t now)
{
	int rc, stale;

	if (b->err)
		return KMS_ERR_NOMEM;
	if ((rc = ca_crl_check(crl, issuer_cert, now, &stale)) != 0)
		return rc;
	return add_entries(b, crl, stale);
}

int
ca_revidx_add_checked_crl(struct ca_revidx_builder *b, X509_CRL *crl, time_t now)
{
	const ASN1_TIME *nu;
	int ok, stale = 0;

	if (b->err)
		return KMS_ERR_NOMEM;
	if (crl == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CRL");
	if ((nu = X509_CRL_get0_nextUpdate(crl)) != NULL && now > asn1_time_t(nu, &ok))
		stale = 1;
	return add_entries(b, crl, stale);
}

int
ca_revidx_mark_stale(struct ca_revidx_builder *b, const X509_NAME *issuer)
{
	long i;

	if (b->err)
		return KMS_ERR_NOMEM;
	if ((i = builder_issuer(b, issuer)) < 0)
		return (int)i;
	b->issuers[i].stale = 1;
	return 0;
}

/* ------------------------------------------- validated CRLs of any CA */

/*
 * The directory name a certificateIssuer entry extension gives, or NULL
 * (none there, or only other kinds of name); *present says whether the
 * extension is there at all.
 */
static X509_NAME *
entry_cert_issuer(X509_REVOKED *r, int *present)
{
	GENERAL_NAMES *gens;
	X509_NAME *name = NULL;

	*present = X509_REVOKED_get_ext_by_NID(r, NID_certificate_issuer, -1) >= 0;
	if (!*present)
		return NULL;
	gens = X509_REVOKED_get_ext_d2i(r, NID_certificate_issuer, NULL, NULL);
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && name == NULL; i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);

		if (g->type == GEN_DIRNAME)
			name = X509_NAME_dup(g->d.directoryName);
	}
	GENERAL_NAMES_free(gens);
	ERR_clear_error();
	return name;
}

/*
 * Add the entries of crl (validated) into b: scope bits on each entry,
 * removeFromCRL entries collected into rm (when not NULL) instead, and
 * entries whose key is in skip (when not NULL) left out.
 *
 * In an indirect CRL an entry's certificateIssuer names the issuer of
 * that entry and of every following one up to the next certificateIssuer
 * (RFC 5280 5.3.3); entries before the first belong to the CRL issuer.
 * Another CA's entries go under (that CA, via the CRL issuer), so that
 * they speak only for certificates that name this CRL issuer as their
 * cRLIssuer.  A certificateIssuer without a directory name makes its
 * entries and those that follow it unusable until the next one.
 */
static int
add_valid_entries(struct ca_revidx_builder *b, X509_CRL *crl, const struct ca_crl_meta *m, int stale,
    struct rev_table *rm, const struct rev_table *skip)
{
	STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);
	long issuer, cur;
	int scope = 0, rc, ok;

	if (m->covers == CA_CRL_COVERS_USER)
		scope = ENT_ONLY_USER;
	else if (m->covers == CA_CRL_COVERS_CA)
		scope = ENT_ONLY_CA;
	if ((issuer = builder_issuer(b, X509_CRL_get_issuer(crl))) < 0)
		return (int)issuer;
	cur = issuer;
	for (int i = 0; i < sk_X509_REVOKED_num(revs); i++) {
		X509_REVOKED *r = sk_X509_REVOKED_value(revs, i);
		ASN1_ENUMERATED *reason;
		ASN1_GENERALIZEDTIME *inval;
		struct ca_rev_info info = { 0 };
		const unsigned char *s;
		size_t n;
		int neg;

		if (m->indirect) {
			int present;
			X509_NAME *ci = entry_cert_issuer(r, &present);

			/* RFC 5280 5.3.3: the issuer named holds for this and the following entries. */
			if (present) {
				if (ci == NULL) {
					kms_log(KMS_LOG_WARNING, "indirect CRL entry whose certificate issuer is not a "
					    "directory name: it and the entries after it up to the next issuer skipped");
					cur = -1;
					continue;
				}
				if (X509_NAME_cmp(ci, X509_CRL_get_issuer(crl)) == 0)
					cur = issuer;
				else
					cur = builder_issuer_via(b, ci, issuer);
				X509_NAME_free(ci);
				if (cur < 0) {
					b->err = 1;
					return (int)cur;
				}
			} else if (cur < 0) {
				continue;
			}
		}
		if (serial_key(X509_REVOKED_get0_serialNumber(r), &s, &n, &neg) != 0) {
			kms_log(KMS_LOG_WARNING, "CRL entry with an oversized serial number skipped");
			continue;
		}
		info.revoked_at = asn1_time_t(X509_REVOKED_get0_revocationDate(r), &ok);
		if ((reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL)) != NULL) {
			info.reason = (int)ASN1_ENUMERATED_get(reason);
			ASN1_ENUMERATED_free(reason);
		}
		ERR_clear_error();
		if (info.reason < 0 || info.reason > 10)
			info.reason = 0;
		if (info.reason == 8) {
			/* removeFromCRL: in a delta it takes the certificate off the base (RFC 5280 5.3.1). */
			if (rm != NULL && (rc = table_add(rm, (unsigned)cur, neg, s, n, &info, 0, 1, NULL)) != 0)
				goto nomem;
			continue;
		}
		if (skip != NULL && table_find(skip, key_hash((unsigned)cur, neg, s, n), (unsigned)cur, neg, s, n) >= 0)
			continue;
		if ((inval = X509_REVOKED_get_ext_d2i(r, NID_invalidity_date, NULL, NULL)) != NULL) {
			info.invalidity = asn1_time_t(inval, &ok);
			ASN1_GENERALIZEDTIME_free(inval);
		}
		info.reason |= scope;
		if ((rc = table_add(&b->t, (unsigned)cur, neg, s, n, &info, stale, 0, NULL)) != 0)
			goto nomem;
	}
	return 0;
nomem:
	b->err = 1;
	return rc;
}

static int
dp_cover(struct rev_issuer *is, const char *uri, int covers, int ind_covers, time_t nu)
{
	uint64_t h = keyed_hash((const unsigned char *)uri, strlen(uri));
	struct rev_dp *nd;

	for (size_t i = 0; i < is->ndps; i++) {
		if (is->dps[i].h == h) {
			is->dps[i].covers |= covers;
			is->dps[i].ind_covers |= ind_covers;
			if (nu > 0 && (is->dps[i].next_update == 0 || nu < is->dps[i].next_update))
				is->dps[i].next_update = nu;
			return 0;
		}
	}
	if ((nd = realloc(is->dps, (is->ndps + 1) * sizeof(*nd))) == NULL)
		return KMS_ERR_NOMEM;
	is->dps = nd;
	nd[is->ndps].h = h;
	nd[is->ndps].covers = covers;
	nd[is->ndps].ind_covers = ind_covers;
	nd[is->ndps].next_update = nu;
	is->ndps++;
	return 0;
}

static int
same_strv(char *const *a, char *const *b)
{
	size_t i;

	if (a == NULL || b == NULL)
		return a == b;
	for (i = 0; a[i] != NULL && b[i] != NULL; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return a[i] == NULL && b[i] == NULL;
}

int
ca_revidx_add_valid(struct ca_revidx_builder *b, X509_CRL *crl, const struct ca_crl_meta *m, X509_CRL *delta,
    const struct ca_crl_meta *dm, time_t now)
{
	struct rev_table rm;
	struct rev_issuer *is;
	long issuer;
	int stale, dstale = 0, rc;
	time_t nu;

	if (b->err)
		return KMS_ERR_NOMEM;
	if (crl == NULL || m == NULL)
		return kms_fail(KMS_ERR_INVALID, "no CRL");
	if (m->delta)
		return kms_fail(KMS_ERR_INVALID, "a delta CRL needs its base CRL");
	memset(&rm, 0, sizeof(rm));
	if (delta != NULL) {
		if (dm == NULL || !dm->delta || X509_NAME_cmp(X509_CRL_get_issuer(delta), X509_CRL_get_issuer(crl)) != 0 ||
		    dm->covers != m->covers || dm->indirect != m->indirect || !same_strv(dm->dp_names, m->dp_names))
			return kms_fail(KMS_ERR_CORRUPT, "the delta CRL does not have the scope of its base CRL");
		if (m->number < 0 || dm->base > m->number)
			return kms_fail(KMS_ERR_CORRUPT, "the delta CRL needs base CRL %lld or later; this base is %lld",
			    dm->base, m->number);
	}
	stale = m->next_update != 0 && now > m->next_update;
	if ((issuer = builder_issuer(b, X509_CRL_get_issuer(crl))) < 0)
		return (int)issuer;
	if (delta != NULL) {
		dstale = dm->next_update != 0 && now > dm->next_update;
		if ((rc = add_valid_entries(b, delta, dm, dstale || stale, &rm, NULL)) != 0)
			goto out;
	}
	if ((rc = add_valid_entries(b, crl, m, stale, NULL, delta != NULL ? &rm : NULL)) != 0)
		goto out;
	is = &b->issuers[issuer];
	if (stale) {
		is->expired = 1;
		goto out;
	}
	if (m->some_reasons)
		goto out;               /* some reasons only: revocations count, coverage does not */
	nu = m->next_update;
	if (delta != NULL && !dstale && dm->next_update != 0 && (nu == 0 || dm->next_update < nu))
		nu = dm->next_update;
	if (m->dp_names != NULL) {
		for (size_t i = 0; m->dp_names[i] != NULL && rc == 0; i++)
			rc = dp_cover(is, m->dp_names[i], m->covers, m->indirect ? m->covers : 0, nu);
		if (rc != 0) {
			b->err = 1;
			goto out;
		}
	} else {
		is->covers |= m->covers;
		if (nu > 0 && (is->next_update == 0 || nu < is->next_update))
			is->next_update = nu;
		/* A partitioned indirect CRL covers only the certificates naming its partition (above). */
		if (m->indirect)
			is->ind_covers |= m->covers;
	}
out:
	table_free(&rm);
	return rc;
}

static int
scope_fits(const struct rev_ent *e, int kind)
{
	if ((e->reason & ENT_ONLY_USER) && kind != CA_CRL_COVERS_USER)
		return 0;
	if ((e->reason & ENT_ONLY_CA) && kind != CA_CRL_COVERS_CA)
		return 0;
	return 1;
}

static int
dp_fresh(const struct rev_dp *d, int kind, int ind, time_t now)
{
	return ((ind ? d->ind_covers : d->covers) & kind) && (d->next_update == 0 || now <= d->next_update);
}

/* Does a URI of the distribution point's full name hit a fresh partition of is (ind: of its indirect CRL)? */
static int
dp_hits(const struct rev_issuer *is, const DIST_POINT *dp, int kind, int ind, time_t now)
{
	if (is == NULL || is->ndps == 0 || dp->distpoint == NULL || dp->distpoint->type != 0)
		return 0;
	for (int j = 0; j < sk_GENERAL_NAME_num(dp->distpoint->name.fullname); j++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(dp->distpoint->name.fullname, j);
		uint64_t h;

		if (g->type != GEN_URI)
			continue;
		h = keyed_hash(ASN1_STRING_get0_data(g->d.uniformResourceIdentifier),
		    (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier));
		for (size_t k = 0; k < is->ndps; k++)
			if (is->dps[k].h == h && dp_fresh(&is->dps[k], kind, ind, now))
				return 1;
	}
	return 0;
}

/* The entry of (issuer index, serial), or NULL. */
static const struct rev_ent *
ent_lookup(const struct ca_revidx *idx, long i, int neg, const unsigned char *s, size_t n)
{
	uint64_t h = key_hash((unsigned)i, neg, s, n);
	long k;

	if ((k = table_find(&idx->over, h, (unsigned)i, neg, s, n)) >= 0)
		return &idx->over.ents[k];
	if ((k = table_find(&idx->bulk->t, h, (unsigned)i, neg, s, n)) >= 0)
		return &idx->bulk->t.ents[k];
	return NULL;
}

struct cert_key {
	X509 *cert;
	long issuer;                    /* the certificate issuer's own index, -1 if none */
	int kind;                       /* CA_CRL_COVERS_USER or _CA */
	int have_serial, neg;
	const unsigned char *s;
	size_t n;
};

/*
 * What the certificate's distribution points say beyond its issuer's own
 * CRLs: an entry of an indirect CRL whose issuer a distribution point
 * names as cRLIssuer (1, info filled: only such a CRL may speak for
 * another CA's certificate, RFC 5280 6.3.3), and, in *covered, whether a
 * fresh CRL covers it: a partition of its issuer it names, or an indirect
 * CRL of its cRLIssuer (whole, or the partition the distribution point
 * names).  A distribution point for some reasons only revokes but does not
 * cover.
 */
static int
scan_dps(const struct ca_revidx *idx, const struct rev_issuer *is, const struct cert_key *ck, time_t now,
    struct ca_rev_info *info, int *covered)
{
	CRL_DIST_POINTS *dps = X509_get_ext_d2i(ck->cert, NID_crl_distribution_points, NULL, NULL);
	int revoked = 0;

	ERR_clear_error();
	*covered = 0;
	for (int i = 0; dps != NULL && !revoked && i < sk_DIST_POINT_num(dps); i++) {
		DIST_POINT *dp = sk_DIST_POINT_value(dps, i);
		int whole = dp->reasons == NULL;

		if (dp->CRLissuer == NULL) {
			if (whole && !*covered && dp_hits(is, dp, ck->kind, 0, now))
				*covered = 1;
			continue;
		}
		for (int j = 0; !revoked && j < sk_GENERAL_NAME_num(dp->CRLissuer); j++) {
			GENERAL_NAME *g = sk_GENERAL_NAME_value(dp->CRLissuer, j);
			const struct rev_issuer *ci;
			const struct rev_ent *e;
			long k, v;

			if (g->type != GEN_DIRNAME || (k = idx_issuer(idx, g->d.directoryName)) < 0)
				continue;
			ci = &idx->issuers[k];
			if (k == ck->issuer) {
				/* Its own issuer named as CRL issuer: a direct CRL, partition or not. */
				if (whole && !*covered && dp_hits(ci, dp, ck->kind, 0, now))
					*covered = 1;
				continue;
			}
			if (ck->have_serial && (v = idx_issuer_via(idx, X509_get_issuer_name(ck->cert), k)) >= 0 &&
			    (e = ent_lookup(idx, v, ck->neg, ck->s, ck->n)) != NULL && scope_fits(e, ck->kind)) {
				ent_info(e, info);
				info->reason &= ENT_REASON;
				if (issuer_stale(ci, now))
					info->stale = 1;
				revoked = 1;
				break;
			}
			if (whole && !*covered && ((((ci->ind_covers & ck->kind) && !issuer_stale(ci, now))) ||
			    dp_hits(ci, dp, ck->kind, 1, now)))
				*covered = 1;
		}
	}
	CRL_DIST_POINTS_free(dps);
	return revoked;
}

int
ca_revidx_check(const struct ca_revidx *idx, X509 *cert, struct ca_rev_info *info)
{
	struct ca_rev_info tmp;
	const struct rev_issuer *is = NULL;
	const struct rev_ent *e;
	struct cert_key ck;
	int covered = 0;
	time_t now = time(NULL);

	if (info == NULL)
		info = &tmp;
	memset(info, 0, sizeof(*info));
	if (idx == NULL || cert == NULL)
		return -1;
	memset(&ck, 0, sizeof(ck));
	ck.cert = cert;
	ck.kind = X509_check_ca(cert) ? CA_CRL_COVERS_CA : CA_CRL_COVERS_USER;
	ERR_clear_error();
	ck.have_serial = serial_key(X509_get0_serialNumber(cert), &ck.s, &ck.n, &ck.neg) == 0;
	if ((ck.issuer = idx_issuer(idx, X509_get_issuer_name(cert))) >= 0) {
		is = &idx->issuers[ck.issuer];
		if (ck.have_serial && (e = ent_lookup(idx, ck.issuer, ck.neg, ck.s, ck.n)) != NULL &&
		    scope_fits(e, ck.kind)) {
			ent_info(e, info);
			info->reason &= ENT_REASON;
			if (issuer_stale(is, now))
				info->stale = 1;
			return 1;
		}
	}
	/* Only a certificate's distribution points may bring in partitions and indirect CRLs. */
	if ((is != NULL && is->ndps > 0) || idx->any_indirect) {
		if (scan_dps(idx, is, &ck, now, info, &covered))
			return 1;
	}
	if (is != NULL && !issuer_stale(is, now) && (is->covers & ck.kind))
		return 0;
	if (covered)
		return 0;
	if (is != NULL && (issuer_stale(is, now) || is->expired))
		info->stale = 1;
	return -1;
}

static struct rev_bulk *
bulk_new(void)
{
	struct rev_bulk *bk = calloc(1, sizeof(*bk));

	if (bk != NULL)
		atomic_init(&bk->refs, 1);
	return bk;
}

static void
bulk_unref(struct rev_bulk *bk)
{
	if (bk == NULL || atomic_fetch_sub_explicit(&bk->refs, 1, memory_order_acq_rel) != 1)
		return;
	table_free(&bk->t);
	free(bk);
}

static struct ca_revidx *
idx_new(void)
{
	struct ca_revidx *idx = calloc(1, sizeof(*idx));

	if (idx != NULL) {
		atomic_init(&idx->refs, 1);
		idx->gen = atomic_fetch_add(&revidx_gen, 1) + 1;
	}
	return idx;
}

int
ca_revidx_build(struct ca_revidx_builder *b, struct ca_revidx **out)
{
	struct ca_revidx *idx;

	*out = NULL;
	if (b->err)
		return kms_fail(KMS_ERR_NOMEM, "out of memory building the revocation index");
	if ((idx = idx_new()) == NULL || (idx->bulk = bulk_new()) == NULL) {
		free(idx);
		return KMS_ERR_NOMEM;
	}
	idx->bulk->t = b->t;
	idx->count = b->t.n;
	idx->issuers = b->issuers;
	idx->nissuers = b->nissuers;
	memset(&b->t, 0, sizeof(b->t));
	b->issuers = NULL;
	b->nissuers = 0;
	if (issuers_index(idx) != 0) {
		ca_revidx_unref(idx);
		return KMS_ERR_NOMEM;
	}
	*out = idx;
	return 0;
}

/* ---------------------------------------------------------------- lookups */

int
ca_revidx_lookup(const struct ca_revidx *idx, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    struct ca_rev_info *info)
{
	const unsigned char *s;
	size_t n;
	int neg;
	long i, k;
	uint64_t h;
	const struct rev_ent *e = NULL;

	if (idx == NULL || issuer == NULL || serial == NULL)
		return 0;
	if ((i = idx_issuer(idx, issuer)) < 0)
		return 0;
	if (serial_key(serial, &s, &n, &neg) != 0)
		return 0;
	h = key_hash((unsigned)i, neg, s, n);
	if ((k = table_find(&idx->over, h, (unsigned)i, neg, s, n)) >= 0)
		e = &idx->over.ents[k];
	else if ((k = table_find(&idx->bulk->t, h, (unsigned)i, neg, s, n)) >= 0)
		e = &idx->bulk->t.ents[k];
	if (e == NULL)
		return 0;
	if (info != NULL) {
		ent_info(e, info);
		info->reason &= ENT_REASON;
		if (issuer_stale(&idx->issuers[i], time(NULL)))
			info->stale = 1;
	}
	return 1;
}

int
ca_revidx_issuer_state(const struct ca_revidx *idx, const X509_NAME *issuer)
{
	long i;

	if (idx == NULL || (i = idx_issuer(idx, issuer)) < 0)
		return -1;
	/* Data from an expired CRL only (nothing current covers this CA) is stale too. */
	return issuer_stale(&idx->issuers[i], time(NULL)) ||
	    (idx->issuers[i].expired && idx->issuers[i].covers == 0) ? 1 : 0;
}

size_t
ca_revidx_count(const struct ca_revidx *idx)
{
	return idx ? idx->count : 0;
}

unsigned long
ca_revidx_generation(const struct ca_revidx *idx)
{
	return idx ? idx->gen : 0;
}

/* Merge bulk and overlay into a new bulk (the overlay wins on equal keys). */
static int
merge_bulk(const struct rev_table *bulk, const struct rev_table *over, struct rev_bulk **out)
{
	struct rev_bulk *bk;
	int rc;

	*out = NULL;
	if ((bk = bulk_new()) == NULL)
		return KMS_ERR_NOMEM;
	if ((rc = table_copy(&bk->t, bulk, over->n)) != 0)
		goto fail;
	for (size_t k = 0; k < over->n; k++) {
		const struct rev_ent *e = &over->ents[k];
		struct ca_rev_info info;

		ent_info(e, &info);
		if ((rc = table_add(&bk->t, e->issuer & ~ENT_STALE, e->len_flags & ENT_NEG,
		    ent_serial(over, e), e->len_flags & 0x7f, &info, info.stale, 1, NULL)) != 0)
			goto fail;
	}
	*out = bk;
	return 0;
fail:
	bulk_unref(bk);
	return rc;
}

int
ca_revidx_with(const struct ca_revidx *base, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const struct ca_rev_info *info, struct ca_revidx **out)
{
	struct ca_revidx *idx = NULL;
	const unsigned char *s;
	size_t n, nis;
	int neg, rc, added;
	long i;
	uint64_t h;

	*out = NULL;
	pthread_once(&sipkey_once, sipkey_init);
	if (issuer == NULL || serial == NULL || info == NULL)
		return kms_fail(KMS_ERR_INVALID, "revocation index: missing issuer, serial or info");
	if (serial_key(serial, &s, &n, &neg) != 0)
		return kms_fail(KMS_ERR_INVALID, "serial number too long");
	if ((idx = idx_new()) == NULL)
		return KMS_ERR_NOMEM;
	nis = base ? base->nissuers : 0;
	if ((rc = issuers_copy(&idx->issuers, base ? base->issuers : NULL, nis, 1)) != 0)
		goto fail;
	idx->nissuers = nis;
	if ((i = issuer_find(idx->issuers, idx->nissuers, issuer, -1)) < 0) {
		if (idx->nissuers >= MAX_ISSUERS) {
			rc = kms_fail(KMS_ERR_TOOBIG, "too many CRL issuers");
			goto fail;
		}
		if ((rc = issuer_fill(&idx->issuers[idx->nissuers], issuer)) != 0)
			goto fail;
		i = (long)idx->nissuers++;
	}
	if (base != NULL && base->bulk != NULL) {
		idx->bulk = base->bulk;
		atomic_fetch_add_explicit(&idx->bulk->refs, 1, memory_order_relaxed);
		if ((rc = table_copy(&idx->over, &base->over, 1)) != 0)
			goto fail;
		idx->count = base->count;
	} else if ((idx->bulk = bulk_new()) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto fail;
	}
	h = key_hash((unsigned)i, neg, s, n);
	if ((rc = table_add(&idx->over, (unsigned)i, neg, s, n, info, info->stale, 1, &added)) != 0)
		goto fail;
	if (added && table_find(&idx->bulk->t, h, (unsigned)i, neg, s, n) < 0)
		idx->count++;

	if ((rc = issuers_index(idx)) != 0)
		goto fail;
	/* Fold a grown overlay into a fresh bulk so lookups stay two probes. */
	if (idx->over.n > 256 && idx->over.n > idx->bulk->t.n / 16) {
		struct rev_bulk *nb;

		if ((rc = merge_bulk(&idx->bulk->t, &idx->over, &nb)) != 0)
			goto fail;
		bulk_unref(idx->bulk);
		idx->bulk = nb;
		table_free(&idx->over);
	}
	*out = idx;
	return 0;
fail:
	ca_revidx_unref(idx);
	return rc;
}

struct ca_revidx *
ca_revidx_ref(struct ca_revidx *idx)
{
	if (idx != NULL)
		atomic_fetch_add_explicit(&idx->refs, 1, memory_order_relaxed);
	return idx;
}

void
ca_revidx_unref(struct ca_revidx *idx)
{
	if (idx == NULL || atomic_fetch_sub_explicit(&idx->refs, 1, memory_order_acq_rel) != 1)
		return;
	bulk_unref(idx->bulk);
	table_free(&idx->over);
	issuers_free(idx->issuers, idx->nissuers);
	free(idx->iq);
	free(idx->ic);
	free(idx);
}

/* ----------------------------------------------------------------- holder */

int
ca_revholder_new(struct ca_revholder **out)
{
	struct ca_revholder *h;

	*out = NULL;
	if ((h = calloc(1, sizeof(*h))) == NULL)
		return KMS_ERR_NOMEM;
	if (pthread_mutex_init(&h->mu, NULL) != 0) {
		free(h);
		return kms_fail(KMS_ERR_NOMEM, "mutex");
	}
	*out = h;
	return 0;
}

void
ca_revholder_free(struct ca_revholder *h)
{
	if (h == NULL)
		return;
	ca_revidx_unref(h->cur);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

struct ca_revidx *
ca_revholder_get(struct ca_revholder *h)
{
	struct ca_revidx *idx;

	if (h == NULL)
		return NULL;
	pthread_mutex_lock(&h->mu);
	idx = ca_revidx_ref(h->cur);
	pthread_mutex_unlock(&h->mu);
	return idx;
}

void
ca_revholder_set(struct ca_revholder *h, struct ca_revidx *idx)
{
	struct ca_revidx *old;

	if (h == NULL) {
		ca_revidx_unref(idx);
		return;
	}
	pthread_mutex_lock(&h->mu);
	old = h->cur;
	h->cur = idx;
	pthread_mutex_unlock(&h->mu);
	/* The last reader of old frees it, outside the lock. */
	ca_revidx_unref(old);
}
