/*
 * lru.c - a bounded table of values keyed by a 32-byte hash, least
 * recently used first out: the store behind the certificate and chain
 * caches (cache.h).  The caller holds the table's lock around every call
 * but mlt_lru_clear and mlt_lru_stats, which take it themselves.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "milter/cache.h"

struct mlt_lru_ent {
	unsigned char key[MLT_HASH_LEN];
	void *val;
	struct mlt_lru_ent *prev, *next;        /* use order, most recent first */
	struct mlt_lru_ent *hnext;              /* bucket chain */
};

static size_t
bucket_of(const struct mlt_lru *t, const unsigned char *key)
{
	size_t h;

	/* The keys are SHA-256 values: any of their bytes are uniform. */
	memcpy(&h, key, sizeof(h));
	return h & (t->nbuckets - 1);
}

static void
unlink_use(struct mlt_lru *t, struct mlt_lru_ent *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		t->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = NULL;
}

static void
push_front(struct mlt_lru *t, struct mlt_lru_ent *e)
{
	e->prev = NULL;
	e->next = t->head;
	if (t->head)
		t->head->prev = e;
	t->head = e;
	if (t->tail == NULL)
		t->tail = e;
}

static void
drop(struct mlt_lru *t, struct mlt_lru_ent *e)
{
	struct mlt_lru_ent **pp = &t->buckets[bucket_of(t, e->key)];

	while (*pp != NULL && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp == e)
		*pp = e->hnext;
	unlink_use(t, e);
	t->free_val(e->val);
	free(e);
	t->n--;
}

void *
mlt_lru_find(struct mlt_lru *t, const unsigned char *key)
{
	struct mlt_lru_ent *e = NULL;

	if (t->buckets != NULL)
		for (e = t->buckets[bucket_of(t, key)]; e != NULL; e = e->hnext)
			if (memcmp(e->key, key, MLT_HASH_LEN) == 0)
				break;
	if (e == NULL) {
		t->misses++;
		return NULL;
	}
	t->hits++;
	if (t->head != e) {
		unlink_use(t, e);
		push_front(t, e);
	}
	return e->val;
}

void
mlt_lru_remove(struct mlt_lru *t, const unsigned char *key)
{
	struct mlt_lru_ent *e = NULL;

	if (t->buckets != NULL)
		for (e = t->buckets[bucket_of(t, key)]; e != NULL; e = e->hnext)
			if (memcmp(e->key, key, MLT_HASH_LEN) == 0)
				break;
	if (e != NULL)
		drop(t, e);
}

int
mlt_lru_insert(struct mlt_lru *t, const unsigned char *key, void *val)
{
	struct mlt_lru_ent *e;
	size_t b;

	if (t->buckets == NULL) {
		size_t nb = 16;

		while (nb < 2 * t->max)
			nb *= 2;
		if ((t->buckets = calloc(nb, sizeof(*t->buckets))) == NULL)
			return -1;
		t->nbuckets = nb;
	}
	mlt_lru_remove(t, key);
	while (t->n >= t->max && t->tail != NULL)
		drop(t, t->tail);
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return -1;
	memcpy(e->key, key, MLT_HASH_LEN);
	e->val = val;
	b = bucket_of(t, key);
	e->hnext = t->buckets[b];
	t->buckets[b] = e;
	push_front(t, e);
	t->n++;
	return 0;
}

void
mlt_lru_clear_locked(struct mlt_lru *t)
{
	while (t->head != NULL)
		drop(t, t->head);
}

void
mlt_lru_clear(struct mlt_lru *t)
{
	pthread_mutex_lock(&t->lock);
	mlt_lru_clear_locked(t);
	pthread_mutex_unlock(&t->lock);
}

void
mlt_lru_stats(struct mlt_lru *t, struct mlt_cache_stats *st)
{
	pthread_mutex_lock(&t->lock);
	st->hits = t->hits;
	st->misses = t->misses;
	st->entries = t->n;
	pthread_mutex_unlock(&t->lock);
}
