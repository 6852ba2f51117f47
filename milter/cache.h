/*
 * cache.h - the mail path's two caches, internal to milter/.
 *
 * certcache.c: certificates decoded once per DER (SHA-256 of the
 * encoding), and mlt_cms_decode(), which parses a CMS blob without letting
 * OpenSSL decode the certificates it carries (decoding a certificate's
 * public key sets up an OpenSSL 3 decoder context each time, which was the
 * largest single cost of checking a message) and hands the cached ones.
 *
 * chaincache.c: the outcome of building and checking a signer's chain
 * (X509_verify_cert) per (signer and the certificates the message
 * carried, trust store generation, revocation index generation), reused
 * only while the time lies inside every chain certificate's validity.
 * Revocation itself is looked up in the index for every message, cached
 * or not.
 *
 * Both are bounded LRU tables behind one mutex each: libmilter calls the
 * callbacks on many threads.  The X509 objects they hand out are shared,
 * read-only, with a reference of the caller's own.
 */
#ifndef MLT_CACHE_H
#define MLT_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/x509.h>

#include "milter/milter.h"

#define MLT_HASH_LEN 32

/* Entries the tables hold at most. */
#define MLT_CERTCACHE_MAX 1024
#define MLT_CHAINCACHE_MAX 1024

/* Most certificates taken from the cache for one CMS blob (more: OpenSSL decodes them all). */
#define MLT_CMS_MAX_CERTS 64

/*
 * Parse the DER/BER CMS blob der.  *cms: the ContentInfo (without its
 * certificate set when the blob could be split), NULL when it is no CMS.
 * *certs: the certificates it carries, get1, from the cache (an empty
 * stack when none).  Falls back to OpenSSL's own parse for a blob whose
 * outer structure this does not follow, with the same outcome.
 * 0, or KMS_ERR_NOMEM.
 */
int mlt_cms_decode(const unsigned char *der, size_t len, CMS_ContentInfo **cms, STACK_OF(X509) **certs);

/* SHA-256 of x's DER encoding, of n bytes at p.  0, or -1. */
int mlt_cert_hash(X509 *x, unsigned char out[MLT_HASH_LEN]);
int mlt_hash_bytes(const unsigned char *p, size_t n, unsigned char out[MLT_HASH_LEN]);

struct mlt_cache_stats {
	unsigned long hits, misses, entries;
};

/* lru.c: the bounded table both caches keep their entries in. */
struct mlt_lru_ent;
struct mlt_lru {
	pthread_mutex_t lock;
	size_t max, n;
	struct mlt_lru_ent **buckets;   /* made on first insert */
	size_t nbuckets;
	struct mlt_lru_ent *head, *tail;
	void (*free_val)(void *);
	unsigned long hits, misses;
};
#define MLT_LRU_INIT(max, free_val) { PTHREAD_MUTEX_INITIALIZER, (max), 0, NULL, 0, NULL, NULL, (free_val), 0, 0 }
/* With the lock held: the value for key (now the most recent), or NULL. */
void *mlt_lru_find(struct mlt_lru *t, const unsigned char *key);
/* With the lock held: add val (the table owns it; an entry with key goes, the oldest past max go).  0 or -1. */
int mlt_lru_insert(struct mlt_lru *t, const unsigned char *key, void *val);
void mlt_lru_remove(struct mlt_lru *t, const unsigned char *key);
void mlt_lru_clear_locked(struct mlt_lru *t);
/* These two take the lock. */
void mlt_lru_clear(struct mlt_lru *t);
void mlt_lru_stats(struct mlt_lru *t, struct mlt_cache_stats *st);
void mlt_certcache_stats(struct mlt_cache_stats *st);
void mlt_chaincache_stats(struct mlt_cache_stats *st);
/* Drop every entry (tests, and kmsd when it wants the memory back). */
void mlt_certcache_clear(void);
void mlt_chaincache_clear(void);

/*
 * What X509_verify_cert found for one signer: opaque bytes of verdict.c's
 * own (at most MLT_CHAIN_STATE_MAX) and the chain it built.
 */
#define MLT_CHAIN_STATE_MAX 64

/*
 * Look up the chain outcome for cert with the message's untrusted
 * certificates under ctx (trust_gen 0: no caching) at now.  1 with state
 * (state_len bytes) and *chain (a new stack, each certificate up-ref'd),
 * 0 on a miss with key filled for mlt_chaincache_put.
 */
int mlt_chaincache_get(const struct mlt_check_ctx *ctx, time_t now, X509 *cert, STACK_OF(X509) *untrusted,
    void *state, size_t state_len, STACK_OF(X509) **chain, unsigned char key[MLT_HASH_LEN]);
/*
 * Keep the outcome found at now for key (from a miss).  Kept only when
 * now lies inside the validity of every certificate of chain; the entry
 * is reused only as long as it still does.
 */
void mlt_chaincache_put(const struct mlt_check_ctx *ctx, time_t now, const unsigned char key[MLT_HASH_LEN],
    const void *state, size_t state_len, STACK_OF(X509) *chain);

#endif /* MLT_CACHE_H */
