/*
 * check_milter_cache.c - unit suite for the mail path's caches
 * (milter/cache.h): that a cached certificate or chain never hides a
 * change a fresh check would see (a revocation between two messages, a
 * trust anchor gone, a certificate past its notAfter or before its
 * notBefore), that blobs parse the same with and without the split of
 * their certificate set (BER with indefinite lengths, every truncation),
 * that the tables stay bounded, and that threads share them safely.
 *
 * Each test checks that the cache was really used (hit counters), so that
 * a test passing because nothing was cached cannot hide a stale entry.
 */
#include "config.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/common.h"
#include "milter/cache.h"
#include "milter/mime.h"
#include "milter/milter.h"
#include "milter/smime_int.h"
#include "tests/unit/testutil.h"

/* 2027-01-01T00:00:00Z: inside alice's validity (2025..2045). */
#define TEST_NOW ((time_t)1798761600)

static X509_STORE *trust;
static X509 *ca_cert;

static X509 *
load_cert(const char *name)
{
	char rel[128], *path;
	FILE *fp;
	X509 *x;

	snprintf(rel, sizeof(rel), "smime/%s", name);
	path = tu_datafile(rel);
	fp = fopen(path, "r");
	ck_assert_msg(fp != NULL, "cannot open %s", path);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	ck_assert_ptr_nonnull(x);
	fclose(fp);
	free(path);
	return x;
}

static unsigned char *
fixture(const char *name, size_t *len)
{
	char rel[128], *path;
	unsigned char *raw, *msg;
	size_t rawlen;

	snprintf(rel, sizeof(rel), "smime/%s", name);
	path = tu_datafile(rel);
	ck_assert_msg(kms_read_file(path, 64 * 1024 * 1024, &raw, &rawlen) == 0, "%s: %s", path, kms_last_error());
	ck_assert_int_eq(mlt_canon_crlf(raw, rawlen, &msg, len), 0);
	free(raw);
	free(path);
	return msg;
}

static void
setup(void)
{
	mlt_smime_init();
	ca_cert = load_cert("ca.pem");
	trust = X509_STORE_new();
	ck_assert_int_eq(X509_STORE_add_cert(trust, ca_cert), 1);
	mlt_certcache_clear();
	mlt_chaincache_clear();
}

static void
teardown(void)
{
	X509_STORE_free(trust);
	X509_free(ca_cert);
}

static void
ctx_init(struct mlt_check_ctx *ctx, X509_STORE *store, unsigned long gen, const struct ca_revidx *rev, time_t now)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->trust = store;
	ctx->trust_gen = gen;
	ctx->rev = rev;
	ctx->authserv_id = "test.example";
	ctx->now = now;
	ctx->limits.max_message_size = 50 * 1024 * 1024;
	ctx->limits.max_headers = 1000;
	ctx->limits.max_parts = 1000;
	ctx->limits.max_depth = 32;
}

/* The verdict of msg under ctx. */
static enum pol_verdict
verdict_of(const struct mlt_check_ctx *ctx, const unsigned char *msg, size_t len, char *detail, size_t dlen)
{
	struct mlt_result *res = NULL;
	enum pol_verdict v;

	ck_assert_msg(mlt_check_message(ctx, msg, len, &res) == 0, "check: %s", kms_last_error());
	v = res->verdict;
	if (detail != NULL)
		snprintf(detail, dlen, "%s", res->detail ? res->detail : "");
	mlt_result_free(res);
	return v;
}

#define ck_verdict(ctx, msg, len, want) do { \
	char d_[512]; \
	enum pol_verdict v_ = verdict_of((ctx), (msg), (len), d_, sizeof(d_)); \
	ck_assert_msg(v_ == (want), "verdict %s, want %s (%s)", pol_verdict_name(v_), pol_verdict_name(want), d_); \
} while (0)

static unsigned long
chain_hits(void)
{
	struct mlt_cache_stats st;

	mlt_chaincache_stats(&st);
	return st.hits;
}

static struct ca_revidx *
index_with(const struct ca_revidx *base, const char *certfile, time_t when)
{
	X509 *x = load_cert(certfile);
	struct ca_rev_info info = { .revoked_at = when, .reason = 1 };
	struct ca_revidx *idx = NULL;

	ck_assert_int_eq(ca_revidx_with(base, X509_get_issuer_name(x), X509_get0_serialNumber(x), &info, &idx), 0);
	X509_free(x);
	return idx;
}

/* ------------------------------------------------------------------ tests */

START_TEST(test_signer_revoked_between_two_messages_is_revoked_on_the_second)
{
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	struct mlt_check_ctx ctx;
	unsigned long gen = mlt_generation_next(), h0;
	struct ca_revidx *before = index_with(NULL, "bob.pem", TEST_NOW - 86400), *after;

	ctx_init(&ctx, trust, gen, before, TEST_NOW);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	h0 = chain_hits();
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ck_assert_msg(chain_hits() == h0 + 1, "the second message did not use the cached chain");

	/* Alice is revoked now: the very next message says so. */
	after = index_with(before, "alice.pem", TEST_NOW - 60);
	ck_assert(ca_revidx_generation(after) > ca_revidx_generation(before));
	ctx.rev = after;
	ck_verdict(&ctx, msg, len, POL_V_REVOKED);
	ck_verdict(&ctx, msg, len, POL_V_REVOKED);
	/* A connection still holding the old snapshot sees what that snapshot says. */
	ctx.rev = before;
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ca_revidx_unref(after);
	ca_revidx_unref(before);
	free(msg);
}
END_TEST

START_TEST(test_revocation_counts_even_within_one_snapshot_generation_of_trust)
{
	/* The revocation lookup is never cached: the same chain entry, a new index. */
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	struct mlt_check_ctx ctx;
	struct ca_revidx *idx = index_with(NULL, "alice.pem", TEST_NOW - 60);

	ctx_init(&ctx, trust, mlt_generation_next(), NULL, TEST_NOW);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ctx.rev = idx;
	ck_verdict(&ctx, msg, len, POL_V_REVOKED);
	ctx.rev = NULL;
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ca_revidx_unref(idx);
	free(msg);
}
END_TEST

START_TEST(test_removed_trust_anchor_makes_the_next_message_untrusted)
{
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	struct mlt_check_ctx ctx;
	X509_STORE *empty = X509_STORE_new(), *again = X509_STORE_new();
	unsigned long h0;

	ctx_init(&ctx, trust, mlt_generation_next(), NULL, TEST_NOW);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	h0 = chain_hits();
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ck_assert(chain_hits() == h0 + 1);

	/* A reload without the anchor: a new store, a new generation. */
	ctx.trust = empty;
	ctx.trust_gen = mlt_generation_next();
	ck_verdict(&ctx, msg, len, POL_V_UNTRUSTED);
	ck_verdict(&ctx, msg, len, POL_V_UNTRUSTED);

	/* And back: trusted again at once. */
	ck_assert_int_eq(X509_STORE_add_cert(again, ca_cert), 1);
	ctx.trust = again;
	ctx.trust_gen = mlt_generation_next();
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	X509_STORE_free(empty);
	X509_STORE_free(again);
	free(msg);
}
END_TEST

START_TEST(test_cached_chain_not_reused_past_not_after)
{
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	X509 *alice = load_cert("alice.pem");
	time_t na = mlt_asn1_time(X509_get0_notAfter(alice)), nb = mlt_asn1_time(X509_get0_notBefore(alice));
	struct mlt_check_ctx ctx;
	unsigned long h0;

	ck_assert(na > 0 && nb > 0);
	ctx_init(&ctx, trust, mlt_generation_next(), NULL, na - 10);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	h0 = chain_hits();
	ctx.now = na;   /* the last second of validity */
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ck_assert(chain_hits() == h0 + 1);
	ctx.now = na + 1;
	ck_verdict(&ctx, msg, len, POL_V_EXPIRED);
	/* Before notBefore: not valid yet, though an entry from later exists again. */
	ctx.now = TEST_NOW;
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ctx.now = nb - 1;
	ck_verdict(&ctx, msg, len, POL_V_EXPIRED);
	X509_free(alice);
	free(msg);
}
END_TEST

START_TEST(test_no_caching_without_a_trust_generation)
{
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	struct mlt_check_ctx ctx;
	struct mlt_cache_stats st;

	ctx_init(&ctx, trust, 0, NULL, TEST_NOW);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	ck_verdict(&ctx, msg, len, POL_V_PASS);
	mlt_chaincache_stats(&st);
	ck_assert_uint_eq(st.entries, 0);
	free(msg);
}
END_TEST

/* The base64 signature part of a multipart/signed fixture, decoded. */
static unsigned char *
signature_der(const char *name, size_t *len)
{
	size_t mlen;
	unsigned char *msg = fixture(name, &mlen), *der = NULL;
	/* The part's own Content-Type field, not the protocol parameter of the top one. */
	const char *h = strstr((const char *)msg, "\nContent-Type: application/pkcs7-signature");
	const char *b, *e;

	if (h == NULL)
		h = strstr((const char *)msg, "\nContent-Type: application/x-pkcs7-signature");
	ck_assert_ptr_nonnull(h);
	b = strstr(h, "\r\n\r\n");
	ck_assert_ptr_nonnull(b);
	b += 4;
	e = strstr(b, "\r\n--");
	ck_assert_ptr_nonnull(e);
	ck_assert_int_eq(mlt_decode_cte("base64", (const unsigned char *)b, (size_t)(e - b), &der, len), 0);
	free(msg);
	return der;
}

/* Append a DER header of tag with length n, or an indefinite one (n == SIZE_MAX). */
static size_t
hdr(unsigned char *o, unsigned char tag, size_t n)
{
	if (n == (size_t)-1) {
		o[0] = tag;
		o[1] = 0x80;
		return 2;
	}
	o[0] = tag;
	o[1] = 0x82;
	o[2] = (unsigned char)(n >> 8);
	o[3] = (unsigned char)n;
	return 4;
}

/* Length of the DER element at p (definite lengths only: our fixtures are DER). */
static size_t
tlv_len(const unsigned char *p, size_t *hl)
{
	if (p[1] < 0x80) {
		*hl = 2;
		return p[1];
	}
	ck_assert(p[1] == 0x81 || p[1] == 0x82);
	*hl = 2 + (p[1] & 0x7f);
	return p[1] == 0x81 ? p[2] : ((size_t)p[2] << 8 | p[3]);
}

/*
 * The DER signed-data der again as BER with indefinite lengths on
 * ContentInfo, [0], SignedData and the certificate set, as a streaming
 * signer writes it.
 */
static unsigned char *
to_indefinite(const unsigned char *der, size_t *len)
{
	unsigned char *o = malloc(*len + 64);
	size_t hl, n = 0, off, cl;
	const unsigned char *sd, *el;

	ck_assert_ptr_nonnull(o);
	tlv_len(der, &hl);                              /* ContentInfo */
	off = hl;
	n += hdr(o + n, 0x30, (size_t)-1);
	memcpy(o + n, der + off, 11);                   /* the OID */
	n += 11;
	off += 11;
	tlv_len(der + off, &hl);                        /* [0] */
	off += hl;
	n += hdr(o + n, 0xa0, (size_t)-1);
	cl = tlv_len(der + off, &hl);                   /* SignedData */
	sd = der + off + hl;
	n += hdr(o + n, 0x30, (size_t)-1);
	for (el = sd; el < sd + cl;) {
		size_t ehl, ecl = tlv_len(el, &ehl);

		if (el[0] == 0xa0) {                    /* the certificate set */
			n += hdr(o + n, 0xa0, (size_t)-1);
			memcpy(o + n, el + ehl, ecl);
			n += ecl;
			o[n++] = 0;
			o[n++] = 0;
		} else {
			memcpy(o + n, el, ehl + ecl);
			n += ehl + ecl;
		}
		el += ehl + ecl;
	}
	for (int i = 0; i < 3; i++) {
		o[n++] = 0;
		o[n++] = 0;
	}
	*len = n;
	return o;
}

START_TEST(test_indefinite_length_signature_is_split_and_verifies)
{
	size_t dlen, blen;
	unsigned char *der = signature_der("alice-detached.eml", &dlen), *ber;
	CMS_ContentInfo *cms = NULL;
	STACK_OF(X509) *certs = NULL, *certs2 = NULL;
	struct mlt_cache_stats st0, st1;

	blen = dlen;
	ber = to_indefinite(der, &blen);
	ck_assert(ber[1] == 0x80 && der[1] != 0x80);
	mlt_certcache_stats(&st0);
	ck_assert_int_eq(mlt_cms_decode(ber, blen, &cms, &certs), 0);
	ck_assert_ptr_nonnull(cms);
	ck_assert_int_ge(sk_X509_num(certs), 1);
	/* The set was taken out: the CMS holds no certificate, ours came from the cache. */
	{
		STACK_OF(X509) *in = CMS_get1_certs(cms);

		ck_assert_int_eq(in ? sk_X509_num(in) : 0, 0);
		sk_X509_pop_free(in, X509_free);
	}
	mlt_certcache_stats(&st1);
	ck_assert_uint_eq(st1.entries, st0.entries + (unsigned long)sk_X509_num(certs));
	CMS_ContentInfo_free(cms);
	/* The DER form gives the very same certificate objects. */
	ck_assert_int_eq(mlt_cms_decode(der, dlen, &cms, &certs2), 0);
	ck_assert_ptr_nonnull(cms);
	ck_assert_int_eq(sk_X509_num(certs2), sk_X509_num(certs));
	for (int i = 0; i < sk_X509_num(certs); i++)
		ck_assert_ptr_eq(sk_X509_value(certs, i), sk_X509_value(certs2, i));
	CMS_ContentInfo_free(cms);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(certs2, X509_free);
	free(ber);
	free(der);
}
END_TEST

START_TEST(test_indefinite_length_message_passes)
{
	size_t dlen, blen, mlen, b64len;
	unsigned char *der = signature_der("alice-detached.eml", &dlen), *ber, *msg = fixture("alice-detached.eml", &mlen);
	const char *h = strstr((const char *)msg, "\nContent-Type: application/pkcs7-signature"), *b, *e;
	struct mlt_check_ctx ctx;
	char *b64, *nmsg;
	size_t nlen = 0;

	blen = dlen;
	ber = to_indefinite(der, &blen);
	b = strstr(h, "\r\n\r\n") + 4;
	e = strstr(b, "\r\n--");
	b64len = 4 * ((blen + 2) / 3) + 4;
	b64 = malloc(b64len + 1);
	ck_assert_int_gt(EVP_EncodeBlock((unsigned char *)b64, ber, (int)blen), 0);
	nmsg = malloc(mlen + b64len + 8);
	memcpy(nmsg, msg, (size_t)(b - (const char *)msg));
	nlen = (size_t)(b - (const char *)msg);
	memcpy(nmsg + nlen, b64, strlen(b64));
	nlen += strlen(b64);
	memcpy(nmsg + nlen, e, mlen - (size_t)((const unsigned char *)e - msg));
	nlen += mlen - (size_t)((const unsigned char *)e - msg);
	ctx_init(&ctx, trust, mlt_generation_next(), NULL, TEST_NOW);
	ck_verdict(&ctx, (unsigned char *)nmsg, nlen, POL_V_PASS);
	ck_verdict(&ctx, (unsigned char *)nmsg, nlen, POL_V_PASS);
	free(nmsg);
	free(b64);
	free(ber);
	free(der);
	free(msg);
}
END_TEST

START_TEST(test_every_truncation_parses_as_openssl_says)
{
	size_t dlen, blen;
	unsigned char *der = signature_der("two-signers.eml", &dlen), *ber;

	blen = dlen;
	ber = to_indefinite(der, &blen);
	for (int form = 0; form < 2; form++) {
		const unsigned char *buf = form ? ber : der;
		size_t n = form ? blen : dlen;

		for (size_t cut = 0; cut <= n; cut++) {
			const unsigned char *p = buf;
			CMS_ContentInfo *ref = cut ? d2i_CMS_ContentInfo(NULL, &p, (long)cut) : NULL, *cms = NULL;
			STACK_OF(X509) *certs = NULL;

			ck_assert_int_eq(mlt_cms_decode(buf, cut, &cms, &certs), 0);
			ck_assert_msg((cms != NULL) == (ref != NULL), "form %d, %zu of %zu bytes: ours %d, OpenSSL's %d",
			    form, cut, n, cms != NULL, ref != NULL);
			ck_assert_ptr_nonnull(certs);
			CMS_ContentInfo_free(cms);
			CMS_ContentInfo_free(ref);
			sk_X509_pop_free(certs, X509_free);
		}
	}
	free(ber);
	free(der);
}
END_TEST

START_TEST(test_mutated_signatures_never_crash)
{
	size_t dlen;
	unsigned char *der = signature_der("alice-detached.eml", &dlen), *m = malloc(dlen);
	unsigned int seed = 12345;

	ck_assert_ptr_nonnull(m);
	ck_assert_uint_gt(dlen, 200);
	for (int i = 0; i < 3000; i++) {
		CMS_ContentInfo *cms = NULL;
		STACK_OF(X509) *certs = NULL;

		memcpy(m, der, dlen);
		for (int k = 0; k < 1 + i % 4; k++) {
			seed = seed * 1103515245u + 12345u;
			/* Mostly the outer headers and the certificate set, where the walk looks. */
			m[(seed >> 8) % (i % 2 ? 80 : dlen)] ^= (unsigned char)(1u << ((seed >> 4) % 8));
		}
		ck_assert_int_eq(mlt_cms_decode(m, dlen, &cms, &certs), 0);
		CMS_ContentInfo_free(cms);
		sk_X509_pop_free(certs, X509_free);
	}
	free(m);
	free(der);
}
END_TEST

static int freed;

static void
count_free(void *v)
{
	freed++;
	free(v);
}

START_TEST(test_lru_is_bounded_and_drops_the_least_recent)
{
	struct mlt_lru t = MLT_LRU_INIT(4, count_free);
	unsigned char k[8][MLT_HASH_LEN];
	struct mlt_cache_stats st;

	freed = 0;
	for (int i = 0; i < 8; i++) {
		memset(k[i], 0, MLT_HASH_LEN);
		k[i][0] = (unsigned char)i;
		k[i][31] = (unsigned char)(i * 7);
	}
	pthread_mutex_lock(&t.lock);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(mlt_lru_insert(&t, k[i], strdup("v")), 0);
	ck_assert_ptr_nonnull(mlt_lru_find(&t, k[0]));    /* 0 is now the most recent */
	ck_assert_int_eq(mlt_lru_insert(&t, k[4], strdup("v")), 0);
	ck_assert_ptr_null(mlt_lru_find(&t, k[1]));       /* 1 was the least recent */
	ck_assert_ptr_nonnull(mlt_lru_find(&t, k[0]));
	ck_assert_int_eq(mlt_lru_insert(&t, k[0], strdup("w")), 0);     /* replaced, not doubled */
	ck_assert_str_eq(mlt_lru_find(&t, k[0]), "w");
	for (int i = 5; i < 8; i++)
		ck_assert_int_eq(mlt_lru_insert(&t, k[i], strdup("v")), 0);
	pthread_mutex_unlock(&t.lock);
	mlt_lru_stats(&t, &st);
	ck_assert_uint_eq(st.entries, 4);
	ck_assert_int_eq(freed, 5);
	mlt_lru_clear(&t);
	ck_assert_int_eq(freed, 9);
	free(t.buckets);
}
END_TEST

struct worker {
	const unsigned char *msgs[3];
	size_t lens[3];
	enum pol_verdict want[3];
	unsigned long gen;
	int bad;
};

static void *
worker_run(void *arg)
{
	struct worker *w = arg;
	struct mlt_check_ctx ctx;

	ctx_init(&ctx, trust, w->gen, NULL, TEST_NOW);
	for (int i = 0; i < 150; i++) {
		struct mlt_result *res = NULL;
		int k = i % 3;

		if (mlt_check_message(&ctx, w->msgs[k], w->lens[k], &res) != 0 || res->verdict != w->want[k])
			w->bad++;
		mlt_result_free(res);
		if (i % 50 == 49) {
			mlt_certcache_clear();      /* entries dropped under the other threads' feet */
			mlt_chaincache_clear();
		}
	}
	return NULL;
}

START_TEST(test_threads_share_the_caches)
{
	static const char *names[3] = { "alice-detached.eml", "mallory-untrusted.eml", "bob-ecdsa.eml" };
	static const enum pol_verdict want[3] = { POL_V_PASS, POL_V_UNTRUSTED, POL_V_PASS };
	unsigned char *msgs[3];
	struct worker w[4];
	pthread_t th[4];

	for (int i = 0; i < 3; i++) {
		size_t len;

		msgs[i] = fixture(names[i], &len);
		for (int t = 0; t < 4; t++) {
			w[t].msgs[i] = msgs[i];
			w[t].lens[i] = len;
			w[t].want[i] = want[i];
		}
	}
	for (int t = 0; t < 4; t++) {
		w[t].gen = mlt_generation_next();
		w[t].bad = 0;
		ck_assert_int_eq(pthread_create(&th[t], NULL, worker_run, &w[t]), 0);
	}
	for (int t = 0; t < 4; t++) {
		pthread_join(th[t], NULL);
		ck_assert_int_eq(w[t].bad, 0);
	}
	for (int i = 0; i < 3; i++)
		free(msgs[i]);
}
END_TEST

static Suite *
cache_suite(void)
{
	Suite *s = suite_create("milter_cache");
	TCase *tc;

	tc = tcase_create("freshness");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_signer_revoked_between_two_messages_is_revoked_on_the_second);
	tcase_add_test(tc, test_revocation_counts_even_within_one_snapshot_generation_of_trust);
	tcase_add_test(tc, test_removed_trust_anchor_makes_the_next_message_untrusted);
	tcase_add_test(tc, test_cached_chain_not_reused_past_not_after);
	tcase_add_test(tc, test_no_caching_without_a_trust_generation);
	suite_add_tcase(s, tc);

	tc = tcase_create("parsing");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_indefinite_length_signature_is_split_and_verifies);
	tcase_add_test(tc, test_indefinite_length_message_passes);
	tcase_add_test(tc, test_every_truncation_parses_as_openssl_says);
	tcase_add_test(tc, test_mutated_signatures_never_crash);
	suite_add_tcase(s, tc);

	tc = tcase_create("tables");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_lru_is_bounded_and_drops_the_least_recent);
	tcase_add_test(tc, test_threads_share_the_caches);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(cache_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
