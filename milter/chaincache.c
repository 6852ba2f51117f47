/*
 * chaincache.c - what building and checking a signer's chain found, kept
 * for the next message from the same signer.
 *
 * Entry points: mlt_chaincache_get, mlt_chaincache_put,
 * mlt_chaincache_stats, mlt_chaincache_clear (cache.h).
 *
 * The key is the SHA-256 over the trust store generation, the revocation
 * index generation, and the hashes of the signer certificate and of every
 * certificate the message carried (in order: they are what the chain may
 * be built from).  A new trust store (kmsd init, reload) or a new
 * revocation index (every CRL load and every revocation) has a new
 * generation: no entry of the old one is found again, and the first
 * lookup under a newer generation empties the table.  A check context
 * with trust generation 0 is never cached.
 *
 * An entry is kept only when the time of the check lies inside the
 * validity of every certificate of the chain, and is used only while the
 * time of a later check still does: the first check past a notAfter (or
 * before a notBefore) builds the chain again and finds it expired.
 *
 * Revocation is not cached here: verdict.c looks every certificate of the
 * chain (the cached one or a new one) up in the current index for each
 * message, so a revocation counts from the very next message.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "milter/cache.h"
#include "milter/smime_int.h"

struct chain_ent {
	time_t from, until;                     /* every certificate of the chain is valid between */
	unsigned char state[MLT_CHAIN_STATE_MAX];
	size_t state_len;
	STACK_OF(X509) *chain;
};

static void
ent_free(void *v)
{
	struct chain_ent *e = v;

	sk_X509_pop_free(e->chain, X509_free);
	free(e);
}

static struct mlt_lru chains = MLT_LRU_INIT(MLT_CHAINCACHE_MAX, ent_free);
/* The newest generations seen (under chains.lock). */
static unsigned long seen_trust, seen_rev;

void
mlt_chaincache_stats(struct mlt_cache_stats *st)
{
	mlt_lru_stats(&chains, st);
}

void
mlt_chaincache_clear(void)
{
	mlt_lru_clear(&chains);
}

static void
put_gen(unsigned char *o, unsigned long g)
{
	for (int i = 0; i < 8; i++)
		o[i] = (unsigned char)((unsigned long long)g >> (8 * i));
}

/* The key; 0, or -1 when this check is not to be cached. */
static int
chain_key(const struct mlt_check_ctx *ctx, X509 *cert, STACK_OF(X509) *untrusted,
    unsigned char key[MLT_HASH_LEN])
{
	unsigned char buf[16 + MLT_HASH_LEN * (1 + MLT_CMS_MAX_CERTS)];
	int n = untrusted ? sk_X509_num(untrusted) : 0;
	size_t off = 16;

	if (ctx->trust_gen == 0 || n > MLT_CMS_MAX_CERTS)
		return -1;
	put_gen(buf, ctx->trust_gen);
	put_gen(buf + 8, ca_revidx_generation(ctx->rev));
	if (mlt_cert_hash(cert, buf + off) != 0)
		return -1;
	off += MLT_HASH_LEN;
	for (int i = 0; i < n; i++, off += MLT_HASH_LEN)
		if (mlt_cert_hash(sk_X509_value(untrusted, i), buf + off) != 0)
			return -1;
	return mlt_hash_bytes(buf, off, key);
}

static STACK_OF(X509) *
chain_dup(STACK_OF(X509) *c)
{
	STACK_OF(X509) *d = sk_X509_dup(c);

	for (int i = 0; d != NULL && i < sk_X509_num(d); i++)
		X509_up_ref(sk_X509_value(d, i));
	return d;
}

int
mlt_chaincache_get(const struct mlt_check_ctx *ctx, time_t now, X509 *cert, STACK_OF(X509) *untrusted,
    void *state, size_t state_len, STACK_OF(X509) **chain, unsigned char key[MLT_HASH_LEN])
{
	unsigned long rev_gen = ca_revidx_generation(ctx->rev);
	struct chain_ent *e;
	int hit = 0;

	*chain = NULL;
	if (state_len > MLT_CHAIN_STATE_MAX || chain_key(ctx, cert, untrusted, key) != 0)
		return -1;
	pthread_mutex_lock(&chains.lock);
	if (ctx->trust_gen > seen_trust || rev_gen > seen_rev) {
		/* Anchors or revocation data changed: nothing kept before is of use to new checks. */
		mlt_lru_clear_locked(&chains);
		if (ctx->trust_gen > seen_trust)
			seen_trust = ctx->trust_gen;
		if (rev_gen > seen_rev)
			seen_rev = rev_gen;
	}
	if ((e = mlt_lru_find(&chains, key)) != NULL) {
		if (now < e->from || now > e->until || e->state_len != state_len) {
			mlt_lru_remove(&chains, key);
		} else if ((*chain = chain_dup(e->chain)) != NULL) {
			memcpy(state, e->state, state_len);
			hit = 1;
		}
	}
	pthread_mutex_unlock(&chains.lock);
	return hit;
}

void
mlt_chaincache_put(const struct mlt_check_ctx *ctx, time_t now, const unsigned char key[MLT_HASH_LEN],
    const void *state, size_t state_len, STACK_OF(X509) *chain)
{
	struct chain_ent *e;
	time_t from = 0, until = 0;

	if (ctx->trust_gen == 0 || state_len > MLT_CHAIN_STATE_MAX || chain == NULL || sk_X509_num(chain) == 0)
		return;
	for (int i = 0; i < sk_X509_num(chain); i++) {
		X509 *c = sk_X509_value(chain, i);
		time_t nb = mlt_asn1_time(X509_get0_notBefore(c)), na = mlt_asn1_time(X509_get0_notAfter(c));

		if (nb == 0 || na == 0)
			return;         /* unreadable validity: check every time */
		if (i == 0 || nb > from)
			from = nb;
		if (i == 0 || na < until)
			until = na;
	}
	if (now < from || now > until)
		return;
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return;
	e->from = from;
	e->until = until;
	memcpy(e->state, state, state_len);
	e->state_len = state_len;
	if ((e->chain = chain_dup(chain)) == NULL) {
		free(e);
		return;
	}
	pthread_mutex_lock(&chains.lock);
	if (mlt_lru_insert(&chains, key, e) != 0)
		ent_free(e);
	pthread_mutex_unlock(&chains.lock);
}

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long last_gen;

unsigned long
mlt_generation_next(void)
{
	unsigned long g;

	pthread_mutex_lock(&gen_lock);
	g = ++last_gen;
	pthread_mutex_unlock(&gen_lock);
	return g;
}
