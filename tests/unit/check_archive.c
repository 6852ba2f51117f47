/*
 * check_archive.c - unit suite for libkmsarchive: Shamir split and combine
 * (every subset of the default 3-of-5), share files (round trips, and
 * truncated, edited, garbage, foreign and wrong-passphrase files), the
 * KRK envelope (round trips opened again with OpenSSL's own CMS_decrypt,
 * its algorithms, tampering), the escrow tables on a real SQLite file, and
 * compliance release: messages made by OpenSSL's CMS_encrypt, by
 * `openssl smime -encrypt` and by `gpgsm --encrypt`, whose released CEK
 * decrypts them to exactly the original bytes, plus hostile RecipientInfos
 * and messages.
 *
 * Keys and certificates are made here with OpenSSL directly (self-signed),
 * once per run: the CA module is not needed.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "archive/archive.h"
#include "common/common.h"
#include "tests/unit/testutil.h"
#include "tests/unit/archive_flow.h"

/* Made once per run in main(), inherited by every forked test. */
static EVP_PKEY *krk_key, *krk2_key, *rsa_key, *ec_key, *ec384_key, *other_key;
static X509 *krk_cert, *krk2_cert, *rsa_cert, *ec_cert, *ec384_cert, *other_cert;
static unsigned char plain[3000];

static char *dir;

/* ------------------------------------------------------------------ helpers */

/* For set-up code that runs outside any test. */
#define REQUIRE(x) do { \
	if (!(x)) { \
		fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #x); \
		abort(); \
	} \
} while (0)

static EVP_PKEY *
gen_rsa(int bits)
{
	EVP_PKEY *k = EVP_RSA_gen((unsigned int)bits);

	REQUIRE(k);
	return k;
}

static EVP_PKEY *
gen_ec(const char *curve)
{
	EVP_PKEY *k = EVP_EC_gen(curve);

	REQUIRE(k);
	return k;
}

static void
add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	REQUIRE(ext);
	REQUIRE(X509_add_ext(x, ext, -1) == 1);
	X509_EXTENSION_free(ext);
}

/* A self-signed certificate for key, with SKI, key usage and an rfc822Name. */
static X509 *
self_signed(EVP_PKEY *key, const char *cn, const char *email, const char *ku)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	unsigned char sn[16];
	BIGNUM *bn;
	char san[200];

	REQUIRE(x);
	REQUIRE(X509_set_version(x, 2) == 1);
	REQUIRE(RAND_bytes(sn, sizeof(sn)) == 1);
	sn[0] &= 0x7f;
	bn = BN_bin2bn(sn, sizeof(sn), NULL);
	REQUIRE(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)));
	BN_free(bn);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"smime-kms test", -1, -1, 0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_NAME_free(name);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
	X509_set_pubkey(x, key);
	add_ext(x, NID_key_usage, ku);
	add_ext(x, NID_subject_key_identifier, "hash");
	if (email != NULL) {
		snprintf(san, sizeof(san), "email:%s", email);
		add_ext(x, NID_subject_alt_name, san);
	}
	REQUIRE(X509_sign(x, key, EVP_sha256()) > 0);
	return x;
}

static void
make_keys(void)
{
	REQUIRE(kms_secmem_init(1 << 20) == 0);
	krk_key = gen_rsa(3072);
	krk_cert = self_signed(krk_key, "Key recovery key", NULL, "critical,keyEncipherment");
	krk2_key = gen_rsa(2048);
	krk2_cert = self_signed(krk2_key, "Another key recovery key", NULL, "critical,keyEncipherment");
	rsa_key = gen_rsa(2048);
	rsa_cert = self_signed(rsa_key, "Alice", "alice@example.org", "critical,keyEncipherment");
	other_key = gen_rsa(2048);
	other_cert = self_signed(other_key, "Bob", "bob@example.org", "critical,keyEncipherment");
	ec_key = gen_ec("P-256");
	ec_cert = self_signed(ec_key, "Alice EC", "alice@example.org", "critical,keyAgreement");
	ec384_key = gen_ec("P-384");
	ec384_cert = self_signed(ec384_key, "Alice EC 384", "alice@example.org", "critical,keyAgreement");
	for (size_t i = 0; i < sizeof(plain); i++)
		plain[i] = (unsigned char)(i * 7 + 3);
	memcpy(plain, "Content-Type: text/plain\r\n\r\nhello\r\n", 35);
}

static void
free_keys(void)
{
	EVP_PKEY_free(krk_key);
	EVP_PKEY_free(krk2_key);
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(other_key);
	EVP_PKEY_free(ec_key);
	EVP_PKEY_free(ec384_key);
	X509_free(krk_cert);
	X509_free(krk2_cert);
	X509_free(rsa_cert);
	X509_free(other_cert);
	X509_free(ec_cert);
	X509_free(ec384_cert);
}

static void
setup(void)
{
	dir = tu_tmpdir();
}

static void
teardown(void)
{
	tu_rmtree(dir);
	free(dir);
}

static void
random_bytes(unsigned char *p, size_t n)
{
	ck_assert_int_eq(RAND_bytes(p, (int)n), 1);
}

static char *
cert_fpr(X509 *cert)
{
	unsigned char md[32];
	unsigned int n = 0;

	ck_assert_int_eq(X509_digest(cert, EVP_sha256(), md, &n), 1);
	return kms_hex(md, n);
}

static void
meta_for(struct esc_share_meta *m, X509 *cert, int index, int total, int threshold)
{
	char *f = cert_fpr(cert);

	memset(m, 0, sizeof(*m));
	memcpy(m->krk_fingerprint, f, 65);
	free(f);
	m->index = index;
	m->total = total;
	m->threshold = threshold;
}

/* Serialise cms as DER into a malloc'd buffer. */
static unsigned char *
cms_der(CMS_ContentInfo *cms, size_t *len)
{
	unsigned char *buf = NULL, *p;
	int n = i2d_CMS_ContentInfo(cms, NULL);

	ck_assert_int_gt(n, 0);
	buf = malloc((size_t)n);
	ck_assert_ptr_nonnull(buf);
	p = buf;
	ck_assert_int_eq(i2d_CMS_ContentInfo(cms, &p), n);
	*len = (size_t)n;
	return buf;
}

/* CMS_encrypt of plain to certs with cipher and flags, as DER. */
static unsigned char *
encrypt_to(X509 **certs, int n, const EVP_CIPHER *cipher, int flags, size_t *len)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
	CMS_ContentInfo *cms;
	unsigned char *der;

	for (int i = 0; i < n; i++)
		sk_X509_push(sk, certs[i]);
	cms = CMS_encrypt(sk, in, cipher, CMS_BINARY | flags);
	ck_assert_ptr_nonnull(cms);
	der = cms_der(cms, len);
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	sk_X509_free(sk);
	return der;
}

/*
 * Release the CEK of every RecipientInfo of der that names one of keys,
 * decrypt, and check the result is exactly plain.  Returns how many
 * RecipientInfos were ours; the others must give KMS_ERR_NOTFOUND.
 */
static int
release_and_check(const unsigned char *der, size_t len, EVP_PKEY **keys, X509 **certs, size_t nkeys,
    const unsigned char *want, size_t want_len)
{
	struct esc_enveloped *e = NULL;
	int ours = 0;

	ck_assert_msg(esc_enveloped_parse(der, len, &e) == 0, "parse: %s", kms_last_error());
	ck_assert_uint_ge(esc_enveloped_count(e), 1);
	for (size_t i = 0; i < esc_enveloped_count(e); i++) {
		const unsigned char *ri;
		size_t rlen, cek_len = 0, which = 99, out_len = 0;
		unsigned char *cek = NULL, *out = NULL;
		int named = 0, rc;

		ck_assert_int_eq(esc_enveloped_ri(e, i, &ri, &rlen), 0);
		for (size_t k = 0; k < nkeys; k++)
			named |= esc_enveloped_ri_matches(e, i, certs[k]);
		rc = esc_release_cek(ri, rlen, keys, certs, nkeys, &cek, &cek_len, &which);
		if (!named) {
			ck_assert_int_eq(rc, KMS_ERR_NOTFOUND);
			ck_assert_ptr_null(cek);
			continue;
		}
		ck_assert_msg(rc == 0, "release: %s", kms_last_error());
		ck_assert_uint_lt(which, nkeys);
		ck_assert_int_eq(esc_enveloped_ri_matches(e, i, certs[which]), 1);
		ck_assert_int_eq(CRYPTO_secure_allocated(cek), 1);
		ck_assert_msg(esc_enveloped_decrypt(e, cek, cek_len, &out, &out_len) == 0, "decrypt: %s",
		    kms_last_error());
		ck_assert_uint_eq(out_len, want_len);
		ck_assert_mem_eq(out, want, want_len);
		OPENSSL_secure_clear_free(cek, cek_len);
		free(out);
		ours++;
	}
	esc_enveloped_free(e);
	return ours;
}

/* Replace the first occurrence of pat in buf by rep (same length); 1 if found. */
static int
patch(unsigned char *buf, size_t len, const unsigned char *pat, const unsigned char *rep, size_t n)
{
	for (size_t i = 0; i + n <= len; i++)
		if (memcmp(buf + i, pat, n) == 0) {
			memcpy(buf + i, rep, n);
			return 1;
		}
	return 0;
}

static unsigned char *
read_all(const char *path, size_t *len)
{
	unsigned char *buf = NULL;

	ck_assert_msg(kms_read_file(path, 1 << 24, &buf, len) == 0, "read %s: %s", path, kms_last_error());
	return buf;
}

static void
write_pem_cert(const char *path, X509 *cert)
{
	FILE *fp = fopen(path, "w");

	ck_assert_ptr_nonnull(fp);
	ck_assert_int_eq(PEM_write_X509(fp, cert), 1);
	fclose(fp);
}

static void
write_bytes(const char *path, const unsigned char *p, size_t n)
{
	FILE *fp = fopen(path, "wb");

	ck_assert_ptr_nonnull(fp);
	ck_assert_uint_eq(fwrite(p, 1, n, fp), n);
	fclose(fp);
}

/* ------------------------------------------------------------------- shares */

static const int subsets3[10][3] = {
	{ 0, 1, 2 }, { 0, 1, 3 }, { 0, 1, 4 }, { 0, 2, 3 }, { 0, 2, 4 },
	{ 0, 3, 4 }, { 1, 2, 3 }, { 1, 2, 4 }, { 1, 3, 4 }, { 2, 3, 4 },
};

static const int subsets2[10][2] = {
	{ 0, 1 }, { 0, 2 }, { 0, 3 }, { 0, 4 }, { 1, 2 },
	{ 1, 3 }, { 1, 4 }, { 2, 3 }, { 2, 4 }, { 3, 4 },
};

static void
pick(const struct esc_share *all, const int *idx, int n, struct esc_share *out)
{
	for (int i = 0; i < n; i++)
		out[i] = all[idx[i]];   /* shallow: borrowed data */
}

START_TEST(test_every_three_of_five_shares_rebuild_the_secret)
{
	unsigned char secret[1800];
	struct esc_share *shares = NULL, sub[5];

	random_bytes(secret, sizeof(secret));
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 5, 3, &shares), 0);
	for (int i = 0; i < 5; i++) {
		ck_assert_uint_eq(shares[i].index, i + 1);
		ck_assert_uint_eq(shares[i].len, sizeof(secret));
		ck_assert_int_eq(CRYPTO_secure_allocated(shares[i].data), 1);
		/* A share on its own is not the secret. */
		ck_assert_int_ne(memcmp(shares[i].data, secret, sizeof(secret)), 0);
	}
	for (int s = 0; s < 10; s++) {
		unsigned char *out = NULL;
		size_t len = 0;

		pick(shares, subsets3[s], 3, sub);
		ck_assert_int_eq(esc_combine(sub, 3, &out, &len), 0);
		ck_assert_uint_eq(len, sizeof(secret));
		ck_assert_msg(memcmp(out, secret, len) == 0, "subset %d %d %d did not rebuild the secret",
		    subsets3[s][0] + 1, subsets3[s][1] + 1, subsets3[s][2] + 1);
		ck_assert_int_eq(CRYPTO_secure_allocated(out), 1);
		OPENSSL_secure_clear_free(out, len);
	}
	/* More than the threshold works too, in any order. */
	{
		const int all[5] = { 4, 2, 0, 3, 1 };
		unsigned char *out = NULL;
		size_t len = 0;

		pick(shares, all, 5, sub);
		ck_assert_int_eq(esc_combine(sub, 5, &out, &len), 0);
		ck_assert_mem_eq(out, secret, sizeof(secret));
		OPENSSL_secure_clear_free(out, len);
	}
	esc_shares_free(shares, 5);
}
END_TEST

START_TEST(test_no_two_of_five_shares_rebuild_the_secret)
{
	unsigned char secret[1800];
	struct esc_share *shares = NULL, sub[2];

	random_bytes(secret, sizeof(secret));
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 5, 3, &shares), 0);
	for (int s = 0; s < 10; s++) {
		unsigned char *out = NULL;
		size_t len = 0, same = 0;

		pick(shares, subsets2[s], 2, sub);
		ck_assert_int_eq(esc_combine(sub, 2, &out, &len), 0);
		ck_assert_uint_eq(len, sizeof(secret));
		for (size_t i = 0; i < len; i++)
			same += out[i] == secret[i];
		/* Random output agrees on about 1 byte in 256, never on most. */
		ck_assert_msg(same < 64, "subset %d %d agrees with the secret on %zu bytes",
		    subsets2[s][0] + 1, subsets2[s][1] + 1, same);
		OPENSSL_secure_clear_free(out, len);
	}
	esc_shares_free(shares, 5);
}
END_TEST

START_TEST(test_krk_from_two_shares_fails_the_certificate_check)
{
	unsigned char *secret = NULL;
	size_t slen = 0;
	struct esc_share *shares = NULL, sub[3];

	ck_assert_int_eq(esc_key_to_secret(krk_key, &secret, &slen), 0);
	ck_assert_int_eq(CRYPTO_secure_allocated(secret), 1);
	ck_assert_int_eq(esc_split(secret, slen, 5, 3, &shares), 0);
	for (int s = 0; s < 10; s++) {
		unsigned char *out = NULL;
		size_t len = 0;
		EVP_PKEY *k = NULL;
		int rc;

		pick(shares, subsets2[s], 2, sub);
		ck_assert_int_eq(esc_combine(sub, 2, &out, &len), 0);
		rc = esc_key_from_secret(out, len, &k);
		/* Garbage is refused as a key, or at worst does not match the certificate. */
		ck_assert_msg(rc == KMS_ERR_CORRUPT || (rc == 0 && esc_key_matches_cert(k, krk_cert) == 0),
		    "two shares gave a usable KRK (rc %d)", rc);
		if (rc != 0)
			ck_assert_ptr_null(k);
		EVP_PKEY_free(k);
		OPENSSL_secure_clear_free(out, len);
	}
	for (int s = 0; s < 10; s++) {
		unsigned char *out = NULL;
		size_t len = 0;
		EVP_PKEY *k = NULL;

		pick(shares, subsets3[s], 3, sub);
		ck_assert_int_eq(esc_combine(sub, 3, &out, &len), 0);
		ck_assert_msg(esc_key_from_secret(out, len, &k) == 0, "%s", kms_last_error());
		ck_assert_int_eq(esc_key_matches_cert(k, krk_cert), 1);
		ck_assert_int_eq(esc_key_matches_cert(k, rsa_cert), 0);
		EVP_PKEY_free(k);
		OPENSSL_secure_clear_free(out, len);
	}
	esc_shares_free(shares, 5);
	OPENSSL_secure_clear_free(secret, slen);
}
END_TEST

START_TEST(test_split_refuses_impossible_parameters)
{
	unsigned char secret[32] = { 1 };
	struct esc_share *shares = NULL;

	ck_assert_int_eq(esc_split(secret, sizeof(secret), 5, 1, &shares), KMS_ERR_INVALID);
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 2, 3, &shares), KMS_ERR_INVALID);
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 256, 3, &shares), KMS_ERR_INVALID);
	ck_assert_int_eq(esc_split(secret, 0, 5, 3, &shares), KMS_ERR_INVALID);
	ck_assert_ptr_null(shares);
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 255, 255, &shares), 0);
	ck_assert_uint_eq(shares[254].index, 255);
	esc_shares_free(shares, 255);
}
END_TEST

START_TEST(test_combine_refuses_duplicate_and_mismatched_shares)
{
	unsigned char secret[64];
	struct esc_share *shares = NULL, sub[3];
	unsigned char *out = NULL;
	size_t len = 0;

	random_bytes(secret, sizeof(secret));
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 5, 3, &shares), 0);
	sub[0] = shares[0];
	sub[1] = shares[1];
	sub[2] = shares[0];
	ck_assert_int_eq(esc_combine(sub, 3, &out, &len), KMS_ERR_INVALID);
	sub[2] = shares[2];
	sub[2].len = 63;
	ck_assert_int_eq(esc_combine(sub, 3, &out, &len), KMS_ERR_INVALID);
	sub[2] = shares[2];
	sub[2].index = 0;
	ck_assert_int_eq(esc_combine(sub, 3, &out, &len), KMS_ERR_INVALID);
	ck_assert_int_eq(esc_combine(sub, 1, &out, &len), KMS_ERR_INVALID);
	ck_assert_ptr_null(out);
	esc_shares_free(shares, 5);
}
END_TEST

START_TEST(test_share_digest_binds_index_and_bytes)
{
	unsigned char secret[64];
	struct esc_share *shares = NULL, copy;
	char *d0, *d1, *d2, *d3;

	random_bytes(secret, sizeof(secret));
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 3, 2, &shares), 0);
	d0 = esc_share_digest(&shares[0]);
	d1 = esc_share_digest(&shares[0]);
	ck_assert_ptr_nonnull(d0);
	ck_assert_uint_eq(strlen(d0), 64);
	ck_assert_str_eq(d0, d1);
	copy = shares[0];
	copy.index = 2;
	d2 = esc_share_digest(&copy);
	ck_assert_str_ne(d0, d2);
	shares[0].data[10] ^= 1;
	d3 = esc_share_digest(&shares[0]);
	ck_assert_str_ne(d0, d3);
	free(d0);
	free(d1);
	free(d2);
	free(d3);
	esc_shares_free(shares, 3);
}
END_TEST

/* -------------------------------------------------------------- share files */

/* One share of a fresh 3-of-5 split of a random secret, as a file. */
static char *
share_file(X509 *krk, int index, const char *pass, struct esc_share *keep, size_t *len)
{
	unsigned char secret[600];
	struct esc_share *shares = NULL;
	struct esc_share_meta m;
	char *text = NULL;

	random_bytes(secret, sizeof(secret));
	ck_assert_int_eq(esc_split(secret, sizeof(secret), 5, 3, &shares), 0);
	meta_for(&m, krk, index, 5, 3);
	ck_assert_msg(esc_share_encode(&shares[index - 1], &m, pass, &text, len) == 0, "%s", kms_last_error());
	if (keep != NULL) {
		*keep = shares[index - 1];
		shares[index - 1].data = NULL;
		shares[index - 1].len = 0;
	}
	esc_shares_free(shares, 5);
	return text;
}

START_TEST(test_clear_share_file_round_trip)
{
	struct esc_share orig, back;
	struct esc_share_meta m, peek;
	size_t len;
	char *text = share_file(krk_cert, 2, NULL, &orig, &len), *fpr = cert_fpr(krk_cert);
	char want[200];

	ck_assert_uint_eq(strlen(text), len);
	ck_assert_int_eq(strncmp(text, "-----BEGIN SMIME-KMS RECOVERY SHARE-----\n", 41), 0);
	snprintf(want, sizeof(want), "\nKRK-Fingerprint: %s\n", fpr);
	ck_assert_ptr_nonnull(strstr(text, want));
	ck_assert_ptr_nonnull(strstr(text, "\nShare: 2 of 5, threshold 3\n"));
	ck_assert_ptr_nonnull(strstr(text, "\nEncryption: none\n"));
	ck_assert_ptr_nonnull(strstr(text, "\nChecksum: "));
	ck_assert_ptr_nonnull(strstr(text, "\n-----END SMIME-KMS RECOVERY SHARE-----\n"));
	for (const char *l = strstr(text, "\n\n") + 2; *l != '-'; l = strchr(l, '\n') + 1)
		ck_assert_int_le(strchr(l, '\n') - l, 64);

	ck_assert_int_eq(esc_share_peek(text, len, &peek), 0);
	ck_assert_int_eq(peek.encrypted, 0);
	ck_assert_msg(esc_share_decode(text, len, NULL, &back, &m) == 0, "%s", kms_last_error());
	ck_assert_str_eq(m.krk_fingerprint, fpr);
	ck_assert_int_eq(m.index, 2);
	ck_assert_int_eq(m.total, 5);
	ck_assert_int_eq(m.threshold, 3);
	ck_assert_uint_eq(back.index, 2);
	ck_assert_uint_eq(back.len, orig.len);
	ck_assert_mem_eq(back.data, orig.data, orig.len);
	ck_assert_int_eq(CRYPTO_secure_allocated(back.data), 1);
	esc_share_clear(&back);
	ck_assert_ptr_null(back.data);

	/* CR LF line ends (a file that went through a mail client) read the same. */
	{
		size_t n = 0;
		char *crlf = malloc(2 * len + 1);

		for (size_t i = 0; i < len; i++) {
			if (text[i] == '\n')
				crlf[n++] = '\r';
			crlf[n++] = text[i];
		}
		ck_assert_int_eq(esc_share_decode(crlf, n, NULL, &back, &m), 0);
		ck_assert_mem_eq(back.data, orig.data, orig.len);
		esc_share_clear(&back);
		free(crlf);
	}
	esc_share_clear(&orig);
	free(fpr);
	free(text);
}
END_TEST

START_TEST(test_encrypted_share_file_round_trip_and_wrong_passphrase)
{
	struct esc_share orig, back;
	struct esc_share_meta m;
	size_t len;
	char *text = share_file(krk_cert, 4, "correct horse battery staple", &orig, &len);
	char *b64 = kms_b64_encode(orig.data, 48);

	ck_assert_ptr_nonnull(strstr(text, "\nEncryption: scrypt-aes-256-gcm N=131072 r=8 p=1\n"));
	/* The clear share does not appear in the file. */
	ck_assert_ptr_null(strstr(text, b64));
	ck_assert_int_eq(esc_share_peek(text, len, &m), 0);
	ck_assert_int_eq(m.encrypted, 1);
	ck_assert_int_eq(m.index, 4);

	ck_assert_int_eq(esc_share_decode(text, len, NULL, &back, &m), KMS_ERR_PERM);
	ck_assert_ptr_null(back.data);
	ck_assert_int_eq(esc_share_decode(text, len, "correct horse battery stapler", &back, &m), KMS_ERR_PERM);
	ck_assert_ptr_null(back.data);
	ck_assert_msg(esc_share_decode(text, len, "correct horse battery staple", &back, &m) == 0, "%s",
	    kms_last_error());
	ck_assert_uint_eq(back.index, 4);
	ck_assert_uint_eq(back.len, orig.len);
	ck_assert_mem_eq(back.data, orig.data, orig.len);
	esc_share_clear(&back);
	esc_share_clear(&orig);
	free(b64);
	free(text);
}
END_TEST

START_TEST(test_truncated_share_file_is_corrupt)
{
	struct esc_share back;
	struct esc_share_meta m;
	size_t len;
	char *text = share_file(krk_cert, 1, NULL, NULL, &len);

	/* Every cut short of the final newline is refused as corrupt. */
	for (size_t cut = 0; cut + 1 < len; cut++) {
		int rc = esc_share_decode(text, cut, NULL, &back, &m);

		ck_assert_msg(rc == KMS_ERR_CORRUPT, "cut at %zu of %zu gave %d", cut, len, rc);
		ck_assert_ptr_null(back.data);
	}
	ck_assert_int_eq(esc_share_decode(text, len - 1, NULL, &back, &m), 0);
	esc_share_clear(&back);
	free(text);
}
END_TEST

static void
expect_corrupt(const char *text, size_t len, const char *pass, const char *what)
{
	struct esc_share back;
	struct esc_share_meta m;
	int rc = esc_share_decode(text, len, pass, &back, &m);

	ck_assert_msg(rc == KMS_ERR_CORRUPT, "%s: got %d (%s)", what, rc, kms_last_error());
	ck_assert_ptr_null(back.data);
}

static void
edit_and_expect_corrupt(const char *text, size_t len, const char *from, const char *to, const char *pass)
{
	char *copy = strdup(text), *at = strstr(copy, from);

	ck_assert_ptr_nonnull(at);
	ck_assert_uint_eq(strlen(from), strlen(to));
	memcpy(at, to, strlen(to));
	expect_corrupt(copy, len, pass, from);
	free(copy);
}

START_TEST(test_edited_share_file_is_corrupt)
{
	size_t len, elen;
	char *text = share_file(krk_cert, 2, NULL, NULL, &len);
	char *etext = share_file(krk_cert, 3, "pass phrase", NULL, &elen);
	char *fl, *body;

	edit_and_expect_corrupt(text, len, "Share: 2 of 5", "Share: 3 of 5", NULL);
	edit_and_expect_corrupt(text, len, "threshold 3", "threshold 2", NULL);
	edit_and_expect_corrupt(text, len, "of 5,", "of 4,", NULL);
	edit_and_expect_corrupt(text, len, "Encryption: none", "Encryption: nonf", NULL);
	edit_and_expect_corrupt(text, len, "KRK-Fingerprint", "KRK-Fingerprinz", NULL);
	edit_and_expect_corrupt(text, len, "-----END", "-----EMD", NULL);
	/* One character of the fingerprint, of the checksum, of the payload. */
	{
		char *copy = strdup(text);

		fl = strstr(copy, "KRK-Fingerprint: ") + 17;
		*fl = *fl == 'a' ? 'b' : 'a';
		expect_corrupt(copy, len, NULL, "fingerprint");
		free(copy);
		copy = strdup(text);
		fl = strstr(copy, "Checksum: ") + 10;
		*fl = *fl == 'a' ? 'b' : 'a';
		expect_corrupt(copy, len, NULL, "checksum");
		free(copy);
		copy = strdup(text);
		body = strstr(copy, "\n\n") + 2 + 100;
		*body = *body == 'A' ? 'B' : 'A';
		expect_corrupt(copy, len, NULL, "payload");
		free(copy);
		/* A line dropped from the middle of the payload. */
		copy = strdup(text);
		body = strstr(copy, "\n\n") + 2 + 65;
		memmove(body, body + 65, strlen(body + 65) + 1);
		expect_corrupt(copy, len - 65, NULL, "dropped line");
		free(copy);
	}
	/* An encrypted share: the header is checked before the passphrase is tried. */
	edit_and_expect_corrupt(etext, elen, "Share: 3 of 5", "Share: 1 of 5", "pass phrase");
	edit_and_expect_corrupt(etext, elen, "N=131072", "N=262144", "pass phrase");
	{
		char *copy = strdup(etext);

		body = strstr(copy, "\n\n") + 2 + 30;
		*body = *body == 'A' ? 'B' : 'A';
		expect_corrupt(copy, elen, "pass phrase", "encrypted payload");
		free(copy);
	}
	free(text);
	free(etext);
}
END_TEST

/* text with from replaced by to (any lengths); the caller frees. */
static char *
replaced(const char *text, const char *from, const char *to, size_t *len)
{
	const char *at = strstr(text, from);
	size_t a, n;
	char *out;

	ck_assert_ptr_nonnull(at);
	a = (size_t)(at - text);
	n = strlen(text) - strlen(from) + strlen(to);
	out = malloc(n + 1);
	memcpy(out, text, a);
	memcpy(out + a, to, strlen(to));
	strcpy(out + a + strlen(to), at + strlen(from));
	*len = n;
	return out;
}

START_TEST(test_costly_scrypt_parameters_are_refused_before_any_work)
{
	static const char *const costly[] = {
		"N=262144 r=8 p=16",            /* 11 s of CPU: p over its bound */
		"N=131072 r=8 p=4",             /* four times the work we write */
		"N=1048576 r=8 p=1",            /* 1 GiB of memory */
		"N=131072 r=64 p=1",            /* r over its bound */
	};
	size_t elen, len;
	char *etext = share_file(krk_cert, 3, "pass phrase", NULL, &elen);

	ck_assert_int_eq(esc_kdf_params_ok(131072, 8, 1), 1);      /* what we write */
	ck_assert_int_eq(esc_kdf_params_ok(262144, 8, 1), 1);      /* twice that: still fine */
	ck_assert_int_eq(esc_kdf_params_ok(131072, 8, 2), 1);
	ck_assert_int_eq(esc_kdf_params_ok(131072, 8, 3), 0);
	ck_assert_int_eq(esc_kdf_params_ok(262144, 8, 16), 0);
	ck_assert_int_eq(esc_kdf_params_ok(524288, 8, 1), 0);      /* 512 MiB */
	ck_assert_int_eq(esc_kdf_params_ok(131071, 8, 1), 0);      /* not a power of two */
	for (size_t i = 0; i < sizeof(costly) / sizeof(costly[0]); i++) {
		char *copy = replaced(etext, "N=131072 r=8 p=1", costly[i], &len);
		struct esc_share back;
		struct esc_share_meta m;
		int rc = esc_share_decode(copy, len, "pass phrase", &back, &m);

		ck_assert_msg(rc == KMS_ERR_TOOBIG, "%s: got %d (%s)", costly[i], rc, kms_last_error());
		ck_assert_ptr_nonnull(strstr(kms_last_error(), "over the bounds"));
		ck_assert_ptr_null(back.data);
		free(copy);
	}
	free(etext);
}
END_TEST

START_TEST(test_garbage_share_file_is_corrupt)
{
	unsigned char junk[2048];
	struct esc_share_meta m;
	static const char *const texts[] = {
		"",
		"hello\n",
		"-----BEGIN SMIME-KMS RECOVERY SHARE-----\n",
		"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		"-----BEGIN SMIME-KMS RECOVERY SHARE-----\nKRK-Fingerprint: xyz\n"
		"Share: 1 of 5, threshold 3\nEncryption: none\nChecksum: 00\n\nAAAA\n"
		"-----END SMIME-KMS RECOVERY SHARE-----\n",
	};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		expect_corrupt(texts[i], strlen(texts[i]), NULL, texts[i]);
		ck_assert_int_eq(esc_share_peek(texts[i], strlen(texts[i]), &m), KMS_ERR_CORRUPT);
	}
	for (int round = 0; round < 50; round++) {
		random_bytes(junk, sizeof(junk));
		expect_corrupt((const char *)junk, sizeof(junk), NULL, "random bytes");
	}
	/* Impossible numbers, each with a valid-looking rest. */
	{
		size_t len;
		char *text = share_file(krk_cert, 5, NULL, NULL, &len);

		edit_and_expect_corrupt(text, len, "Share: 5 of 5, threshold 3", "Share: 6 of 5, threshold 3", NULL);
		edit_and_expect_corrupt(text, len, "Share: 5 of 5, threshold 3", "Share: 5 of 5, threshold 9", NULL);
		edit_and_expect_corrupt(text, len, "Share: 5 of 5, threshold 3", "Share: 05 of 5,threshold 3", NULL);
		/* A NUL byte inside the file. */
		text[10] = '\0';
		expect_corrupt(text, len, NULL, "NUL byte");
		free(text);
	}
}
END_TEST

START_TEST(test_foreign_krk_share_is_refused_by_the_store)
{
	unsigned char *secret = NULL;
	size_t slen, len, flen;
	struct esc_share *shares = NULL, mine, foreign;
	struct esc_share_meta m, fm;
	char *digests[5], *path, *fpr = cert_fpr(krk_cert), *d, *text, *ftext;
	struct kms_store *st = NULL;
	long long id;

	/* init: split the KRK, record the digests. */
	ck_assert_int_eq(esc_key_to_secret(krk_key, &secret, &slen), 0);
	ck_assert_int_eq(esc_split(secret, slen, 5, 3, &shares), 0);
	for (int i = 0; i < 5; i++)
		digests[i] = esc_share_digest(&shares[i]);
	path = kms_path_join(dir, "kms.db");
	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE, &st), 0);
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 5, 3, digests, &id), 0);

	/* An officer's genuine share file, read back, matches what init recorded. */
	meta_for(&m, krk_cert, 2, 5, 3);
	ck_assert_int_eq(esc_share_encode(&shares[1], &m, NULL, &text, &len), 0);
	ck_assert_int_eq(esc_share_decode(text, len, NULL, &mine, &m), 0);
	ck_assert_str_eq(m.krk_fingerprint, fpr);
	d = esc_share_digest(&mine);
	ck_assert_int_eq(esc_store_check_share(st, id, m.index, d), 0);
	free(d);

	/* A share of another KRK: another fingerprint, and its digest is refused. */
	ftext = share_file(krk2_cert, 2, NULL, NULL, &flen);
	ck_assert_int_eq(esc_share_decode(ftext, flen, NULL, &foreign, &fm), 0);
	ck_assert_str_ne(fm.krk_fingerprint, fpr);
	d = esc_share_digest(&foreign);
	ck_assert_int_eq(esc_store_check_share(st, id, fm.index, d), KMS_ERR_CORRUPT);
	free(d);
	/* Our share presented under another index. */
	mine.index = 3;
	d = esc_share_digest(&mine);
	ck_assert_int_eq(esc_store_check_share(st, id, 3, d), KMS_ERR_CORRUPT);
	free(d);
	/* No such KRK, no such index. */
	ck_assert_int_eq(esc_store_check_share(st, id + 1, 1, digests[0]), KMS_ERR_CORRUPT);
	ck_assert_int_eq(esc_store_check_share(st, id, 6, digests[0]), KMS_ERR_CORRUPT);
	ck_assert_int_eq(esc_store_check_share(st, id, 1, "nonsense"), KMS_ERR_CORRUPT);

	esc_share_clear(&mine);
	esc_share_clear(&foreign);
	for (int i = 0; i < 5; i++)
		free(digests[i]);
	esc_shares_free(shares, 5);
	OPENSSL_secure_clear_free(secret, slen);
	kms_store_close(st);
	free(path);
	free(fpr);
	free(text);
	free(ftext);
}
END_TEST

/* ----------------------------------------------------------------- envelope */

static void
envelope_round_trip(EVP_PKEY *user)
{
	unsigned char *env = NULL, *want = NULL, *got = NULL;
	size_t len = 0, wlen = 0, glen = 0;
	EVP_PKEY *back = NULL;

	ck_assert_msg(esc_wrap_key(krk_cert, user, &env, &len) == 0, "%s", kms_last_error());
	ck_assert_msg(esc_unwrap_key(krk_key, krk_cert, env, len, &back) == 0, "%s", kms_last_error());
	ck_assert_int_eq(EVP_PKEY_eq(back, user), 1);
	/* The same private key, not only the same public half. */
	ck_assert_int_eq(esc_key_to_secret(user, &want, &wlen), 0);
	ck_assert_int_eq(esc_key_to_secret(back, &got, &glen), 0);
	ck_assert_uint_eq(wlen, glen);
	ck_assert_mem_eq(want, got, wlen);
	EVP_PKEY_free(back);
	back = NULL;
	/* The KRK certificate is needed to find its RecipientInfo. */
	ck_assert_int_eq(esc_unwrap_key(krk_key, NULL, env, len, &back), KMS_ERR_INVALID);
	ck_assert_ptr_null(back);
	OPENSSL_secure_clear_free(want, wlen);
	OPENSSL_secure_clear_free(got, glen);
	free(env);
}

START_TEST(test_envelope_round_trip_rsa_user_key)
{
	envelope_round_trip(rsa_key);
}
END_TEST

START_TEST(test_envelope_round_trip_ec_user_key)
{
	envelope_round_trip(ec_key);
	envelope_round_trip(ec384_key);
}
END_TEST

START_TEST(test_envelope_opens_with_openssl_cms_decrypt)
{
	EVP_PKEY *users[2] = { rsa_key, ec_key };

	for (int u = 0; u < 2; u++) {
		unsigned char *env = NULL, *want = NULL, *p;
		size_t len = 0, wlen = 0;
		const unsigned char *q;
		CMS_ContentInfo *cms;
		BIO *out = BIO_new(BIO_s_mem());
		long n;

		ck_assert_int_eq(esc_wrap_key(krk_cert, users[u], &env, &len), 0);
		q = env;
		cms = d2i_CMS_ContentInfo(NULL, &q, (long)len);
		ck_assert_ptr_nonnull(cms);
		ck_assert_int_eq(CMS_decrypt(cms, krk_key, krk_cert, NULL, out, CMS_BINARY), 1);
		ck_assert_int_eq(esc_key_to_secret(users[u], &want, &wlen), 0);
		n = BIO_get_mem_data(out, &p);
		ck_assert_int_eq(n, (long)wlen);
		ck_assert_mem_eq(p, want, wlen);
		OPENSSL_secure_clear_free(want, wlen);
		CMS_ContentInfo_free(cms);
		BIO_free(out);
		free(env);
	}
}
END_TEST

/* The element i of a DER SEQUENCE (generic walk, independent of our templates). */
static ASN1_TYPE *
seq_elem(ASN1_SEQUENCE_ANY *seq, int i)
{
	ck_assert_int_gt(sk_ASN1_TYPE_num(seq), i);
	return sk_ASN1_TYPE_value(seq, i);
}

static ASN1_SEQUENCE_ANY *
seq_of(const unsigned char *der, long len)
{
	const unsigned char *p = der;
	ASN1_SEQUENCE_ANY *seq = d2i_ASN1_SEQUENCE_ANY(NULL, &p, len);

	ck_assert_ptr_nonnull(seq);
	return seq;
}

START_TEST(test_envelope_is_authenveloped_aes256gcm_with_rsa_oaep_sha256)
{
	unsigned char *env = NULL;
	size_t len = 0;
	const unsigned char *q;
	CMS_ContentInfo *cms;
	STACK_OF(CMS_RecipientInfo) *ris;
	X509_ALGOR *kalg = NULL, *mgfalg;
	RSA_OAEP_PARAMS *oaep;
	const ASN1_OBJECT *obj;
	const void *pval;
	int ptype;

	ck_assert_int_eq(esc_wrap_key(krk_cert, rsa_key, &env, &len), 0);
	q = env;
	cms = d2i_CMS_ContentInfo(NULL, &q, (long)len);
	ck_assert_ptr_nonnull(cms);
	ck_assert_int_eq(OBJ_obj2nid(CMS_get0_type(cms)), NID_id_smime_ct_authEnvelopedData);

	/* One key transport recipient, the KRK, by RSAES-OAEP with SHA-256 and MGF1-SHA-256. */
	ris = CMS_get0_RecipientInfos(cms);
	ck_assert_int_eq(sk_CMS_RecipientInfo_num(ris), 1);
	ck_assert_int_eq(CMS_RecipientInfo_type(sk_CMS_RecipientInfo_value(ris, 0)), CMS_RECIPINFO_TRANS);
	ck_assert_int_eq(CMS_RecipientInfo_ktri_cert_cmp(sk_CMS_RecipientInfo_value(ris, 0), krk_cert), 0);
	ck_assert_int_eq(CMS_RecipientInfo_ktri_get0_algs(sk_CMS_RecipientInfo_value(ris, 0), NULL, NULL,
	    &kalg), 1);
	X509_ALGOR_get0(&obj, &ptype, &pval, kalg);
	ck_assert_int_eq(OBJ_obj2nid(obj), NID_rsaesOaep);
	ck_assert_int_eq(ptype, V_ASN1_SEQUENCE);
	q = ASN1_STRING_get0_data(pval);
	oaep = d2i_RSA_OAEP_PARAMS(NULL, &q, ASN1_STRING_length(pval));
	ck_assert_ptr_nonnull(oaep);
	ck_assert_ptr_nonnull(oaep->hashFunc);
	ck_assert_int_eq(OBJ_obj2nid(oaep->hashFunc->algorithm), NID_sha256);
	ck_assert_ptr_nonnull(oaep->maskGenFunc);
	ck_assert_int_eq(OBJ_obj2nid(oaep->maskGenFunc->algorithm), NID_mgf1);
	X509_ALGOR_get0(&obj, &ptype, &pval, oaep->maskGenFunc);
	ck_assert_int_eq(ptype, V_ASN1_SEQUENCE);
	q = ASN1_STRING_get0_data(pval);
	mgfalg = d2i_X509_ALGOR(NULL, &q, ASN1_STRING_length(pval));
	ck_assert_ptr_nonnull(mgfalg);
	ck_assert_int_eq(OBJ_obj2nid(mgfalg->algorithm), NID_sha256);
	X509_ALGOR_free(mgfalg);
	RSA_OAEP_PARAMS_free(oaep);
	CMS_ContentInfo_free(cms);

	/* The content: AES-256-GCM, and a 16-byte tag (generic DER walk). */
	{
		ASN1_SEQUENCE_ANY *ci = seq_of(env, (long)len), *aed, *eci;
		ASN1_TYPE *wrapped = seq_elem(ci, 1), *last;
		const unsigned char *p;
		long plen;
		int tag, cls;
		X509_ALGOR *calg;

		ck_assert_int_eq(wrapped->type, V_ASN1_OTHER);
		p = wrapped->value.asn1_string->data;
		ck_assert_int_eq(ASN1_get_object(&p, &plen, &tag, &cls, wrapped->value.asn1_string->length) & 0x80, 0);
		ck_assert_int_eq(tag, 0);
		aed = seq_of(p, plen);
		ck_assert_int_eq(seq_elem(aed, 2)->type, V_ASN1_SEQUENCE);
		eci = seq_of(seq_elem(aed, 2)->value.sequence->data, seq_elem(aed, 2)->value.sequence->length);
		ck_assert_int_eq(seq_elem(eci, 1)->type, V_ASN1_SEQUENCE);
		p = seq_elem(eci, 1)->value.sequence->data;
		calg = d2i_X509_ALGOR(NULL, &p, seq_elem(eci, 1)->value.sequence->length);
		ck_assert_ptr_nonnull(calg);
		ck_assert_int_eq(OBJ_obj2nid(calg->algorithm), NID_aes_256_gcm);
		last = seq_elem(aed, sk_ASN1_TYPE_num(aed) - 1);
		ck_assert_int_eq(last->type, V_ASN1_OCTET_STRING);
		ck_assert_int_eq(last->value.octet_string->length, 16);
		X509_ALGOR_free(calg);
		sk_ASN1_TYPE_pop_free(eci, ASN1_TYPE_free);
		sk_ASN1_TYPE_pop_free(aed, ASN1_TYPE_free);
		sk_ASN1_TYPE_pop_free(ci, ASN1_TYPE_free);
	}
	free(env);
}
END_TEST

START_TEST(test_tampered_or_misaddressed_envelope_does_not_open)
{
	unsigned char *env = NULL;
	size_t len = 0;
	EVP_PKEY *back = NULL;
	/* Offsets from the end: the tag, the ciphertext, deep in the ciphertext. */
	const size_t from_end[] = { 1, 8, 16, 20, 40, 300, 900 };

	ck_assert_int_eq(esc_wrap_key(krk_cert, rsa_key, &env, &len), 0);
	for (size_t i = 0; i < sizeof(from_end) / sizeof(from_end[0]); i++) {
		env[len - from_end[i]] ^= 0x20;
		ck_assert_int_eq(esc_unwrap_key(krk_key, krk_cert, env, len, &back), KMS_ERR_CORRUPT);
		ck_assert_ptr_null(back);
		env[len - from_end[i]] ^= 0x20;
	}
	ck_assert_int_eq(esc_unwrap_key(krk_key, krk_cert, env, len - 1, &back), KMS_ERR_CORRUPT);
	ck_assert_int_eq(esc_unwrap_key(krk_key, krk_cert, env, 100, &back), KMS_ERR_CORRUPT);
	/* Another KRK cannot open it. */
	ck_assert_int_eq(esc_unwrap_key(krk2_key, krk2_cert, env, len, &back), KMS_ERR_CORRUPT);
	ck_assert_int_eq(esc_unwrap_key(krk2_key, krk_cert, env, len, &back), KMS_ERR_CORRUPT);
	ck_assert_ptr_null(back);
	/* Untouched, it still opens. */
	ck_assert_int_eq(esc_unwrap_key(krk_key, krk_cert, env, len, &back), 0);
	EVP_PKEY_free(back);
	/* A plain EnvelopedData (no authentication) is not accepted as an envelope. */
	{
		X509 *to[1] = { krk_cert };
		size_t elen;
		unsigned char *plain_env = encrypt_to(to, 1, EVP_aes_256_cbc(), 0, &elen);

		back = NULL;
		ck_assert_int_eq(esc_unwrap_key(krk_key, krk_cert, plain_env, elen, &back), KMS_ERR_CORRUPT);
		ck_assert_ptr_null(back);
		free(plain_env);
	}
	free(env);
}
END_TEST

START_TEST(test_wrap_needs_an_rsa_krk)
{
	unsigned char *env = NULL;
	size_t len = 0;

	ck_assert_int_eq(esc_wrap_key(ec_cert, rsa_key, &env, &len), KMS_ERR_INVALID);
	ck_assert_ptr_null(env);
}
END_TEST

START_TEST(test_key_secret_round_trip_and_match)
{
	unsigned char *s = NULL;
	size_t len = 0;
	EVP_PKEY *k = NULL;
	unsigned char junk[64];

	ck_assert_int_eq(esc_key_to_secret(ec_key, &s, &len), 0);
	ck_assert_int_eq(CRYPTO_secure_allocated(s), 1);
	ck_assert_int_eq(esc_key_from_secret(s, len, &k), 0);
	ck_assert_int_eq(esc_key_matches_cert(k, ec_cert), 1);
	ck_assert_int_eq(esc_key_matches_cert(k, ec384_cert), 0);
	ck_assert_int_eq(esc_key_matches_cert(k, krk_cert), 0);
	ck_assert_int_eq(esc_key_matches_cert(NULL, krk_cert), 0);
	EVP_PKEY_free(k);
	k = NULL;
	ck_assert_int_eq(esc_key_from_secret(s, len - 1, &k), KMS_ERR_CORRUPT);
	random_bytes(junk, sizeof(junk));
	ck_assert_int_eq(esc_key_from_secret(junk, sizeof(junk), &k), KMS_ERR_CORRUPT);
	ck_assert_ptr_null(k);
	OPENSSL_secure_clear_free(s, len);
	/* A public key is not a secret (decoded, so it really has no private half). */
	{
		unsigned char *der = NULL;
		const unsigned char *p;
		int n = i2d_PUBKEY(rsa_key, &der);
		EVP_PKEY *pub;

		ck_assert_int_gt(n, 0);
		p = der;
		pub = d2i_PUBKEY(NULL, &p, n);
		ck_assert_ptr_nonnull(pub);
		ck_assert_int_eq(esc_key_to_secret(pub, &s, &len), KMS_ERR_INVALID);
		ck_assert_ptr_null(s);
		ck_assert_int_eq(esc_key_matches_cert(pub, rsa_cert), 1);
		EVP_PKEY_free(pub);
		OPENSSL_free(der);
	}
}
END_TEST

/* -------------------------------------------------------------------- store */

static void
insert_cert(struct kms_store *st, const char *serial, const char *email, const char *usage, X509 *cert,
    long long issued)
{
	sqlite3_stmt *s = NULL;
	unsigned char *der = NULL;
	int n = i2d_X509(cert, &der);

	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, "
	    "cert, issued) VALUES (?, ?, ?, 'rsa:2048', 'enroll', 'CN=x', ?, ?, ?, ?)", -1, &s, NULL), SQLITE_OK);
	sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, email, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, usage, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, issued);
	sqlite3_bind_int64(s, 5, issued + 86400);
	sqlite3_bind_blob(s, 6, der, n, SQLITE_STATIC);
	sqlite3_bind_int64(s, 7, issued);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE);
	sqlite3_finalize(s);
	OPENSSL_free(der);
}

static struct kms_store *
open_store(void)
{
	struct kms_store *st = NULL;
	char *path = kms_path_join(dir, "kms.db");

	ck_assert_msg(kms_store_open(path, KMS_STORE_CREATE, &st) == 0, "%s", kms_last_error());
	free(path);
	return st;
}

static char **
fake_digests(int n)
{
	char **d = calloc((size_t)n, sizeof(*d));

	for (int i = 0; i < n; i++) {
		unsigned char b[32];

		random_bytes(b, sizeof(b));
		d[i] = kms_hex(b, sizeof(b));
	}
	return d;
}

static void
free_digests(char **d, int n)
{
	for (int i = 0; i < n; i++)
		free(d[i]);
	free(d);
}

START_TEST(test_store_krk_current_by_id_and_retire)
{
	struct kms_store *st = open_store();
	struct esc_krk *k = NULL;
	char **d = fake_digests(5), *fpr = cert_fpr(krk_cert);
	long long id = 0, id2 = 0;
	time_t before = time(NULL);

	ck_assert_int_eq(esc_store_current_krk(st, &k), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(k);
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 5, 3, d, &id), 0);
	ck_assert_int_gt(id, 0);
	ck_assert_int_eq(esc_store_current_krk(st, &k), 0);
	ck_assert_int_eq(k->id, id);
	ck_assert_str_eq(k->fingerprint, fpr);
	ck_assert_int_eq(X509_cmp(k->cert, krk_cert), 0);
	ck_assert_int_eq(k->shares, 5);
	ck_assert_int_eq(k->threshold, 3);
	ck_assert_int_ge(k->created, before);
	ck_assert_int_eq(k->retired, 0);
	esc_krk_free(k);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(esc_store_check_share(st, id, i + 1, d[i]), 0);
	ck_assert_int_eq(esc_store_check_share(st, id, 1, d[1]), KMS_ERR_CORRUPT);

	/* The same certificate twice is refused. */
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 5, 3, d, &id2), KMS_ERR_EXISTS);
	/* Rotation: a new KRK, the old one retired, in one transaction. */
	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(esc_store_add_krk(st, krk2_cert, 5, 3, d, &id2), 0);
	ck_assert_int_eq(esc_store_retire_krk(st, id, before + 5), 0);
	ck_assert_int_eq(kms_store_commit(st), 0);
	ck_assert_int_eq(esc_store_current_krk(st, &k), 0);
	ck_assert_int_eq(k->id, id2);
	ck_assert_int_eq(X509_cmp(k->cert, krk2_cert), 0);
	esc_krk_free(k);
	ck_assert_int_eq(esc_store_krk_by_id(st, id, &k), 0);
	ck_assert_int_eq(k->retired, before + 5);
	esc_krk_free(k);
	ck_assert_int_eq(esc_store_retire_krk(st, id, before + 6), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_store_krk_by_id(st, id2 + 10, &k), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_store_retire_krk(st, id2, before + 7), 0);
	ck_assert_int_eq(esc_store_current_krk(st, &k), KMS_ERR_NOTFOUND);
	/* Bad arguments change nothing. */
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 2, 3, d, &id2), KMS_ERR_INVALID);
	free_digests(d, 5);
	free(fpr);
	kms_store_close(st);
}
END_TEST

START_TEST(test_store_user_keys_newest_first_with_certificates)
{
	struct kms_store *st = open_store();
	char **d = fake_digests(3);
	struct esc_entry *e = NULL;
	size_t n = 0;
	long long id = 0;
	const unsigned char env1[] = "envelope one", env2[] = "envelope two", env3[] = "bob's",
	    env4[] = "rewrapped";

	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 3, 2, d, &id), 0);
	insert_cert(st, "01", "alice@example.org", "enc", rsa_cert, 1000);
	insert_cert(st, "02", "alice@example.org", "enc", ec_cert, 2000);
	insert_cert(st, "03", "alice@example.org", "sign", ec384_cert, 2000);
	insert_cert(st, "04", "bob@example.org", "enc", other_cert, 3000);
	ck_assert_int_eq(esc_store_put(st, "01", id, env1, sizeof(env1)), 0);
	ck_assert_int_eq(esc_store_put(st, "02", id, env2, sizeof(env2)), 0);
	ck_assert_int_eq(esc_store_put(st, "04", id, env3, sizeof(env3)), 0);

	ck_assert_int_eq(esc_store_get_user(st, "Alice@Example.ORG", &e, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(e[0].serial, "02");
	ck_assert_int_eq(X509_cmp(e[0].cert, ec_cert), 0);
	ck_assert_int_eq(e[0].issued, 2000);
	ck_assert_uint_eq(e[0].len, sizeof(env2));
	ck_assert_mem_eq(e[0].envelope, env2, sizeof(env2));
	ck_assert_int_eq(e[0].krk_id, id);
	ck_assert_str_eq(e[1].serial, "01");
	ck_assert_int_eq(X509_cmp(e[1].cert, rsa_cert), 0);
	ck_assert_mem_eq(e[1].envelope, env1, sizeof(env1));
	esc_entries_free(e, n);

	ck_assert_int_eq(esc_store_get_user(st, "carol@example.org", &e, &n), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(e);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(esc_store_get_all(st, &e, &n), 0);
	ck_assert_uint_eq(n, 3);
	esc_entries_free(e, n);

	/* One envelope per certificate; none for a certificate that does not exist. */
	ck_assert_int_eq(esc_store_put(st, "01", id, env1, sizeof(env1)), KMS_ERR_EXISTS);
	ck_assert_int_eq(esc_store_put(st, "99", id, env1, sizeof(env1)), KMS_ERR_NOTFOUND);
	insert_cert(st, "05", "alice@example.org", "enc", ec384_cert, 500);
	ck_assert_int_eq(esc_store_put(st, "05", id + 5, env1, sizeof(env1)), KMS_ERR_NOTFOUND);
	/* Signing keys are never escrowed. */
	ck_assert_int_eq(esc_store_put(st, "03", id, env1, sizeof(env1)), KMS_ERR_INVALID);

	/* Rewrap replaces the envelope and the KRK it is addressed to. */
	{
		char **d2 = fake_digests(3);
		long long id2 = 0;

		ck_assert_int_eq(esc_store_add_krk(st, krk2_cert, 3, 2, d2, &id2), 0);
		ck_assert_int_eq(esc_store_rewrap(st, "01", id2, env4, sizeof(env4)), 0);
		ck_assert_int_eq(esc_store_rewrap(st, "98", id2, env4, sizeof(env4)), KMS_ERR_NOTFOUND);
		ck_assert_int_eq(esc_store_get_user(st, "alice@example.org", &e, &n), 0);
		ck_assert_uint_eq(n, 2);
		ck_assert_int_eq(e[1].krk_id, id2);
		ck_assert_mem_eq(e[1].envelope, env4, sizeof(env4));
		ck_assert_int_eq(e[0].krk_id, id);
		esc_entries_free(e, n);
		free_digests(d2, 3);
	}
	free_digests(d, 3);
	kms_store_close(st);
}
END_TEST

START_TEST(test_store_writes_join_the_callers_transaction)
{
	struct kms_store *st = open_store();
	char **d = fake_digests(3);
	struct esc_krk *k = NULL;
	struct esc_entry *e = NULL;
	size_t n = 0;
	long long id = 0;
	const unsigned char env[] = "envelope";

	/* Certificate, KRK and escrowed key, then a rollback: nothing stays. */
	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 3, 2, d, &id), 0);
	insert_cert(st, "0a", "alice@example.org", "enc", rsa_cert, 1000);
	ck_assert_int_eq(esc_store_put(st, "0a", id, env, sizeof(env)), 0);
	ck_assert_int_eq(sqlite3_get_autocommit(kms_store_db(st)), 0);
	kms_store_rollback(st);
	ck_assert_int_eq(esc_store_current_krk(st, &k), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_store_get_user(st, "alice@example.org", &e, &n), KMS_ERR_NOTFOUND);

	/* The same, committed. */
	ck_assert_int_eq(kms_store_begin(st), 0);
	ck_assert_int_eq(esc_store_add_krk(st, krk_cert, 3, 2, d, &id), 0);
	insert_cert(st, "0a", "alice@example.org", "enc", rsa_cert, 1000);
	ck_assert_int_eq(esc_store_put(st, "0a", id, env, sizeof(env)), 0);
	ck_assert_int_eq(kms_store_commit(st), 0);
	ck_assert_int_eq(esc_store_get_user(st, "alice@example.org", &e, &n), 0);
	ck_assert_uint_eq(n, 1);
	esc_entries_free(e, n);
	free_digests(d, 3);
	kms_store_close(st);
}
END_TEST

/* ------------------------------------------------------------------ release */

START_TEST(test_release_rsa_pkcs1_v15_from_cms_encrypt)
{
	X509 *to[1] = { rsa_cert };
	EVP_PKEY *keys[2] = { other_key, rsa_key };
	X509 *certs[2] = { other_cert, rsa_cert };
	size_t len;
	unsigned char *der = encrypt_to(to, 1, EVP_aes_256_cbc(), 0, &len);

	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 1);
	free(der);
	der = encrypt_to(to, 1, EVP_aes_128_cbc(), 0, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 1);
	free(der);
}
END_TEST

/* An RSA-OAEP message to cert; md NULL keeps OpenSSL's default (SHA-1). */
static unsigned char *
encrypt_oaep(X509 *cert, const EVP_MD *md, const char *label, size_t *len)
{
	BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
	CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, EVP_aes_192_cbc(), CMS_PARTIAL | CMS_BINARY);
	CMS_RecipientInfo *ri;
	EVP_PKEY_CTX *pctx;
	unsigned char *der;

	ck_assert_ptr_nonnull(cms);
	ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM);
	ck_assert_ptr_nonnull(ri);
	pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
	ck_assert_int_gt(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING), 0);
	if (md != NULL) {
		ck_assert_int_gt(EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md), 0);
		ck_assert_int_gt(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md), 0);
	}
	if (label != NULL)
		ck_assert_int_gt(EVP_PKEY_CTX_set0_rsa_oaep_label(pctx, OPENSSL_strdup(label),
		    (int)strlen(label)), 0);
	ck_assert_int_eq(CMS_final(cms, in, NULL, CMS_BINARY), 1);
	der = cms_der(cms, len);
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	return der;
}

START_TEST(test_release_rsa_oaep_with_its_parameters)
{
	EVP_PKEY *keys[1] = { rsa_key };
	X509 *certs[1] = { rsa_cert };
	size_t len;
	unsigned char *der;

	der = encrypt_oaep(rsa_cert, NULL, NULL, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
	free(der);
	der = encrypt_oaep(rsa_cert, EVP_sha256(), NULL, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
	free(der);
	der = encrypt_oaep(rsa_cert, EVP_sha384(), "smime-kms label", &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
	free(der);
}
END_TEST

START_TEST(test_release_ecdh_from_cms_encrypt)
{
	X509 *to256[1] = { ec_cert }, *to384[1] = { ec384_cert };
	EVP_PKEY *keys[3] = { rsa_key, ec_key, ec384_key };
	X509 *certs[3] = { rsa_cert, ec_cert, ec384_cert };
	size_t len;
	unsigned char *der;

	/* OpenSSL's defaults: stdDH with SHA-1 KDF, AES wrap sized to the content key. */
	der = encrypt_to(to256, 1, EVP_aes_128_cbc(), 0, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 3, plain, sizeof(plain)), 1);
	free(der);
	der = encrypt_to(to384, 1, EVP_aes_256_cbc(), 0, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 3, plain, sizeof(plain)), 1);
	free(der);
	der = encrypt_to(to256, 1, EVP_aes_192_cbc(), 0, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 3, plain, sizeof(plain)), 1);
	free(der);
}
END_TEST

START_TEST(test_release_ecdh_sha256_kdf_and_cofactor_scheme)
{
	EVP_PKEY *keys[1] = { ec_key };
	X509 *certs[1] = { ec_cert };

	for (int cofactor = 0; cofactor < 2; cofactor++) {
		BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
		CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, EVP_aes_256_cbc(), CMS_PARTIAL | CMS_BINARY);
		CMS_RecipientInfo *ri = CMS_add1_recipient_cert(cms, ec_cert, CMS_KEY_PARAM);
		EVP_PKEY_CTX *pctx;
		unsigned char *der;
		size_t len;

		ck_assert_ptr_nonnull(ri);
		pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
		ck_assert_ptr_nonnull(pctx);
		ck_assert_int_gt(EVP_PKEY_CTX_set_ecdh_kdf_md(pctx, EVP_sha256()), 0);
		if (cofactor)
			ck_assert_int_gt(EVP_PKEY_CTX_set_ecdh_cofactor_mode(pctx, 1), 0);
		ck_assert_int_eq(CMS_final(cms, in, NULL, CMS_BINARY), 1);
		der = cms_der(cms, &len);
		ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
		free(der);
		CMS_ContentInfo_free(cms);
		BIO_free(in);
	}
}
END_TEST

START_TEST(test_release_recipients_named_by_subject_key_identifier)
{
	X509 *to[2] = { rsa_cert, ec_cert };
	EVP_PKEY *keys[2] = { rsa_key, ec_key };
	X509 *certs[2] = { rsa_cert, ec_cert };
	size_t len;
	unsigned char *der = encrypt_to(to, 2, EVP_aes_256_cbc(), CMS_USE_KEYID, &len);

	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 2);
	free(der);
}
END_TEST

START_TEST(test_release_for_authenveloped_gcm_message)
{
	EVP_PKEY *keys[2] = { rsa_key, ec_key };
	X509 *certs[2] = { rsa_cert, ec_cert };
	const EVP_CIPHER *ciphers[3] = { EVP_aes_128_gcm(), EVP_aes_192_gcm(), EVP_aes_256_gcm() };

	for (int c = 0; c < 3; c++) {
		BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
		CMS_ContentInfo *cms = CMS_AuthEnvelopedData_create(ciphers[c]);
		unsigned char *der;
		size_t len;

		ck_assert_int_eq(CMS_set_detached(cms, 0), 1);

		ck_assert_ptr_nonnull(CMS_add1_recipient_cert(cms, rsa_cert, 0));
		ck_assert_ptr_nonnull(CMS_add1_recipient_cert(cms, ec_cert, 0));
		ck_assert_int_eq(CMS_final(cms, in, NULL, CMS_BINARY), 1);
		der = cms_der(cms, &len);
		ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 2);

		/* One flipped bit of ciphertext: authentication fails, nothing comes out. */
		{
			struct esc_enveloped *e = NULL;
			const unsigned char *ri;
			unsigned char *cek = NULL, *out = NULL;
			size_t rlen, cek_len, which, out_len = 0;

			der[len - 100] ^= 1;
			ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
			ck_assert_int_eq(esc_enveloped_ri(e, 0, &ri, &rlen), 0);
			ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 2, &cek, &cek_len, &which), 0);
			ck_assert_int_eq(esc_enveloped_decrypt(e, cek, cek_len, &out, &out_len), KMS_ERR_CORRUPT);
			ck_assert_ptr_null(out);
			/* A wrong key of the right length fails the same way. */
			cek[0] ^= 1;
			ck_assert_int_eq(esc_enveloped_decrypt(e, cek, cek_len, &out, &out_len), KMS_ERR_CORRUPT);
			/* A key of the wrong length is refused before use. */
			ck_assert_int_eq(esc_enveloped_decrypt(e, cek, cek_len - 1, &out, &out_len),
			    KMS_ERR_INVALID);
			OPENSSL_secure_clear_free(cek, cek_len);
			esc_enveloped_free(e);
		}
		free(der);
		CMS_ContentInfo_free(cms);
		BIO_free(in);
	}
}
END_TEST

START_TEST(test_release_des_ede3_cbc_content)
{
	X509 *to[1] = { rsa_cert };
	EVP_PKEY *keys[1] = { rsa_key };
	X509 *certs[1] = { rsa_cert };
	size_t len;
	unsigned char *der = encrypt_to(to, 1, EVP_des_ede3_cbc(), 0, &len);

	ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
	free(der);
}
END_TEST

START_TEST(test_release_message_to_several_users_opens_only_ours)
{
	X509 *to[3] = { other_cert, ec_cert, rsa_cert };
	EVP_PKEY *keys[2] = { rsa_key, ec_key };
	X509 *certs[2] = { rsa_cert, ec_cert };
	size_t len;
	unsigned char *der = encrypt_to(to, 3, EVP_aes_256_cbc(), 0, &len);

	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 2);
	free(der);
}
END_TEST

START_TEST(test_release_for_another_users_key_is_not_found)
{
	X509 *to[1] = { other_cert };
	EVP_PKEY *keys[3] = { rsa_key, ec_key, krk_key };
	X509 *certs[3] = { rsa_cert, ec_cert, krk_cert };
	struct esc_enveloped *e = NULL;
	const unsigned char *ri;
	unsigned char *cek = NULL;
	size_t len, rlen, cek_len = 7, which = 7;
	unsigned char *der = encrypt_to(to, 1, EVP_aes_256_cbc(), 0, &len);

	ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
	ck_assert_int_eq(esc_enveloped_ri(e, 0, &ri, &rlen), 0);
	ck_assert_int_eq(esc_enveloped_ri_matches(e, 0, rsa_cert), 0);
	ck_assert_int_eq(esc_enveloped_ri_matches(e, 0, other_cert), 1);
	ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 3, &cek, &cek_len, &which), KMS_ERR_NOTFOUND);
	ck_assert_ptr_null(cek);
	ck_assert_uint_eq(cek_len, 0);
	ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 0, &cek, &cek_len, &which), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(esc_enveloped_ri(e, 1, &ri, &rlen), KMS_ERR_NOTFOUND);
	esc_enveloped_free(e);
	free(der);
	/* An EC message for another EC key (same curve, same issuer name) is not found either. */
	{
		EVP_PKEY *k2 = gen_ec("P-256");
		X509 *c2 = self_signed(k2, "Alice EC", "alice@example.org", "critical,keyAgreement");
		X509 *to2[1] = { c2 };

		der = encrypt_to(to2, 1, EVP_aes_128_cbc(), 0, &len);
		ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
		ck_assert_int_eq(esc_enveloped_ri(e, 0, &ri, &rlen), 0);
		ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 3, &cek, &cek_len, &which),
		    KMS_ERR_NOTFOUND);
		esc_enveloped_free(e);
		free(der);
		X509_free(c2);
		EVP_PKEY_free(k2);
	}
}
END_TEST

/* Run a shell command line; its exit status. */
static int
run(const char *cmd)
{
	int st = system(cmd);

	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_release_message_from_openssl_smime_command)
{
	EVP_PKEY *keys[2] = { ec_key, rsa_key };
	X509 *certs[2] = { ec_cert, rsa_cert };
	char *certp = kms_path_join(dir, "alice.pem"), *inp = kms_path_join(dir, "plain.bin");
	char *outp = kms_path_join(dir, "msg.der"), cmd[2048];
	unsigned char *der;
	size_t len;

	write_pem_cert(certp, rsa_cert);
	write_bytes(inp, plain, sizeof(plain));
	snprintf(cmd, sizeof(cmd), "openssl smime -encrypt -aes256 -binary -in %s -outform DER -out %s %s",
	    inp, outp, certp);
	ck_assert_int_eq(run(cmd), 0);
	der = read_all(outp, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 1);
	free(der);
	/* The same with the cms command and OAEP. */
	snprintf(cmd, sizeof(cmd), "openssl cms -encrypt -aes128 -binary -in %s -outform DER -out %s "
	    "-recip %s -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256", inp, outp, certp);
	ck_assert_int_eq(run(cmd), 0);
	der = read_all(outp, &len);
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 1);
	free(der);
	free(certp);
	free(inp);
	free(outp);
}
END_TEST

START_TEST(test_release_message_from_gpgsm_command)
{
	EVP_PKEY *keys[1] = { rsa_key };
	X509 *certs[1] = { rsa_cert };
	char *home = kms_path_join(dir, "gnupg"), *certp = kms_path_join(dir, "alice.pem");
	char *inp = kms_path_join(dir, "plain.bin"), *outp = kms_path_join(dir, "msg.der");
	char *trust = kms_path_join(home, "trustlist.txt"), cmd[4096], fpr[41];
	unsigned char md[20], *der;
	unsigned int mdlen = 0;
	size_t len;
	FILE *fp;
	int rc;

	if (access("/usr/bin/gpgsm", X_OK) != 0) {
		fprintf(stderr, "gpgsm not installed: test_release_message_from_gpgsm_command skipped\n");
		goto out;
	}
	ck_assert_int_eq(mkdir(home, 0700), 0);
	write_pem_cert(certp, rsa_cert);
	write_bytes(inp, plain, sizeof(plain));
	/* Our self-signed test certificate is its own root: trust it before gpg-agent starts. */
	ck_assert_int_eq(X509_digest(rsa_cert, EVP_sha1(), md, &mdlen), 1);
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(fpr + 2 * i, 3, "%02X", md[i]);
	fp = fopen(trust, "w");
	ck_assert_ptr_nonnull(fp);
	fprintf(fp, "%s S relax\n", fpr);
	fclose(fp);
	snprintf(cmd, sizeof(cmd),
	    "GNUPGHOME=%s gpgsm --batch --disable-dirmngr --import %s >/dev/null 2>&1 && "
	    "GNUPGHOME=%s gpgsm --batch --disable-dirmngr --disable-crl-checks --disable-policy-checks "
	    "--recipient alice@example.org --output %s --encrypt %s >/dev/null 2>&1",
	    home, certp, home, outp, inp);
	rc = run(cmd);
	snprintf(cmd, sizeof(cmd), "GNUPGHOME=%s gpgconf --kill gpg-agent >/dev/null 2>&1", home);
	run(cmd);
	ck_assert_msg(rc == 0, "gpgsm --encrypt failed (%d)", rc);
	der = read_all(outp, &len);
	/* gpgsm writes BER with indefinite lengths: parsed all the same. */
	ck_assert_int_eq(release_and_check(der, len, keys, certs, 1, plain, sizeof(plain)), 1);
	free(der);
out:
	free(home);
	free(certp);
	free(inp);
	free(outp);
	free(trust);
}
END_TEST

/* The DER of RecipientInfo 0 of der, copied. */
static unsigned char *
first_ri(const unsigned char *der, size_t len, size_t *rlen)
{
	struct esc_enveloped *e = NULL;
	const unsigned char *ri;
	unsigned char *copy;

	ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
	ck_assert_int_eq(esc_enveloped_ri(e, 0, &ri, rlen), 0);
	copy = malloc(*rlen);
	memcpy(copy, ri, *rlen);
	esc_enveloped_free(e);
	return copy;
}

START_TEST(test_release_refuses_unknown_algorithms_as_invalid)
{
	X509 *to_rsa[1] = { rsa_cert }, *to_ec[1] = { ec_cert };
	EVP_PKEY *keys[2] = { rsa_key, ec_key };
	X509 *certs[2] = { rsa_cert, ec_cert };
	unsigned char *der, *ri, *cek = NULL;
	size_t len, rlen, cek_len, which;
	/* rsaEncryption -> sha1WithRSAEncryption */
	const unsigned char rsa_oid[] = { 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01 };
	const unsigned char rsa_bad[] = { 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05 };
	/* dhSinglePass-stdDH-sha1kdf-scheme -> an arc next to it */
	const unsigned char kdf_oid[] = { 0x06, 0x09, 0x2b, 0x81, 0x05, 0x10, 0x86, 0x48, 0x3f, 0x00, 0x02 };
	const unsigned char kdf_bad[] = { 0x06, 0x09, 0x2b, 0x81, 0x05, 0x10, 0x86, 0x48, 0x3f, 0x00, 0x09 };
	/* id-aes128-wrap -> aes-128-cbc */
	const unsigned char wrap_oid[] = { 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x05 };
	const unsigned char wrap_bad[] = { 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02 };

	der = encrypt_to(to_rsa, 1, EVP_aes_256_cbc(), 0, &len);
	ri = first_ri(der, len, &rlen);
	ck_assert_int_eq(patch(ri, rlen, rsa_oid, rsa_bad, sizeof(rsa_oid)), 1);
	ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 2, &cek, &cek_len, &which), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "1.2.840.113549.1.1.5"));
	ck_assert_ptr_null(cek);
	free(ri);
	free(der);

	der = encrypt_to(to_ec, 1, EVP_aes_128_cbc(), 0, &len);
	ri = first_ri(der, len, &rlen);
	ck_assert_int_eq(patch(ri, rlen, kdf_oid, kdf_bad, sizeof(kdf_oid)), 1);
	ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 2, &cek, &cek_len, &which), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "key agreement algorithm"));
	free(ri);
	ri = first_ri(der, len, &rlen);
	ck_assert_int_eq(patch(ri, rlen, wrap_oid, wrap_bad, sizeof(wrap_oid)), 1);
	ck_assert_int_eq(esc_release_cek(ri, rlen, keys, certs, 2, &cek, &cek_len, &which), KMS_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "key wrap algorithm"));
	ck_assert_ptr_null(cek);
	free(ri);

	/* An unsupported content cipher is refused by the decrypting side (AES-128-CBC -> AES-128-OFB). */
	{
		const unsigned char cbc[] = { 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02 };
		const unsigned char ofb[] = { 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x03 };
		struct esc_enveloped *e = NULL;
		unsigned char *out = NULL, key[16] = { 0 };
		size_t out_len;

		ck_assert_int_eq(patch(der, len, cbc, ofb, sizeof(cbc)), 1);
		ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
		ck_assert_int_eq(esc_enveloped_decrypt(e, key, sizeof(key), &out, &out_len), KMS_ERR_INVALID);
		ck_assert_ptr_null(out);
		esc_enveloped_free(e);
	}
	free(der);

	/* A password recipient parses with the message but names no key of ours. */
	{
		BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
		CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, EVP_aes_256_cbc(), CMS_PARTIAL | CMS_BINARY);
		unsigned char *pw = (unsigned char *)OPENSSL_strdup("a password");
		struct esc_enveloped *e = NULL;
		const unsigned char *r;

		ck_assert_ptr_nonnull(CMS_add1_recipient_cert(cms, rsa_cert, 0));
		ck_assert_ptr_nonnull(CMS_add0_recipient_password(cms, -1, NID_undef, NID_undef, pw, -1, NULL));
		ck_assert_int_eq(CMS_final(cms, in, NULL, CMS_BINARY), 1);
		der = cms_der(cms, &len);
		ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
		ck_assert_uint_eq(esc_enveloped_count(e), 2);
		ck_assert_int_eq(esc_enveloped_ri(e, 1, &r, &rlen), 0);
		ck_assert_int_eq(esc_enveloped_ri_matches(e, 1, rsa_cert), 0);
		ck_assert_int_eq(esc_release_cek(r, rlen, keys, certs, 2, &cek, &cek_len, &which), KMS_ERR_NOTFOUND);
		ck_assert_ptr_nonnull(strstr(kms_last_error(), "password"));
		esc_enveloped_free(e);
		ck_assert_int_eq(release_and_check(der, len, keys, certs, 2, plain, sizeof(plain)), 1);
		free(der);
		CMS_ContentInfo_free(cms);
		BIO_free(in);
	}
}
END_TEST

/* rc and cek agree: a CEK only with success. */
static void
release_hostile(const unsigned char *ri, size_t rlen, EVP_PKEY **keys, X509 **certs, size_t n)
{
	unsigned char *cek = NULL;
	size_t cek_len = 0, which = 0;
	int rc = esc_release_cek(ri, rlen, keys, certs, n, &cek, &cek_len, &which);

	if (rc == 0) {
		ck_assert_ptr_nonnull(cek);
		ck_assert_uint_lt(which, n);
		OPENSSL_secure_clear_free(cek, cek_len);
	} else {
		ck_assert_int_lt(rc, 0);
		ck_assert_ptr_null(cek);
		ck_assert_uint_eq(cek_len, 0);
	}
}

START_TEST(test_release_survives_garbage_truncation_and_bit_flips)
{
	X509 *to[2] = { ec_cert, rsa_cert };
	EVP_PKEY *keys[2] = { ec_key, rsa_key };
	X509 *certs[2] = { ec_cert, rsa_cert };
	unsigned char junk[600], *der;
	size_t len;
	struct esc_enveloped *e = NULL;

	for (int round = 0; round < 200; round++) {
		unsigned char *cek = NULL;
		size_t cek_len, which;

		random_bytes(junk, sizeof(junk));
		if (round % 2)
			junk[0] = 0x30;         /* looks like a SEQUENCE */
		ck_assert_int_lt(esc_release_cek(junk, 1 + (size_t)round * 3, keys, certs, 2, &cek, &cek_len,
		    &which), 0);
		ck_assert_ptr_null(cek);
	}
	der = encrypt_to(to, 2, EVP_aes_128_cbc(), 0, &len);
	ck_assert_int_eq(esc_enveloped_parse(der, len, &e), 0);
	for (size_t r = 0; r < esc_enveloped_count(e); r++) {
		const unsigned char *ri;
		unsigned char *copy;
		size_t rlen;

		ck_assert_int_eq(esc_enveloped_ri(e, r, &ri, &rlen), 0);
		/* Every truncation is an error. */
		for (size_t cut = 0; cut < rlen; cut++) {
			unsigned char *cek = NULL;
			size_t cek_len, which;

			ck_assert_int_lt(esc_release_cek(ri, cut, keys, certs, 2, &cek, &cek_len, &which), 0);
			ck_assert_ptr_null(cek);
		}
		/* Trailing bytes too. */
		copy = malloc(rlen + 1);
		memcpy(copy, ri, rlen);
		copy[rlen] = 0;
		release_hostile(copy, rlen + 1, keys, certs, 2);
		/* Every flipped bit in every byte (a sample of bits): never a crash. */
		for (size_t i = 0; i < rlen; i++) {
			copy[i] ^= (unsigned char)(1u << (i % 8));
			release_hostile(copy, rlen, keys, certs, 2);
			copy[i] ^= (unsigned char)(1u << (i % 8));
		}
		free(copy);
	}
	esc_enveloped_free(e);
	free(der);
}
END_TEST

START_TEST(test_enveloped_parse_survives_garbage_and_refuses_other_content)
{
	X509 *to[1] = { rsa_cert };
	unsigned char junk[512] = { 0 }, *der;
	size_t len;
	struct esc_enveloped *e = NULL;

	ck_assert_int_eq(esc_enveloped_parse(junk, 0, &e), KMS_ERR_INVALID);
	for (int round = 0; round < 100; round++) {
		random_bytes(junk, sizeof(junk));
		junk[0] = 0x30;
		ck_assert_int_lt(esc_enveloped_parse(junk, sizeof(junk), &e), 0);
		ck_assert_ptr_null(e);
	}
	der = encrypt_to(to, 1, EVP_aes_128_cbc(), 0, &len);
	for (size_t cut = 0; cut < len; cut++) {
		ck_assert_int_lt(esc_enveloped_parse(der, cut, &e), 0);
		ck_assert_ptr_null(e);
	}
	/* Bit flips: parse may succeed; whatever it gives must be safe to use. */
	for (size_t i = 0; i < len; i++) {
		der[i] ^= (unsigned char)(1u << (i % 8));
		if (esc_enveloped_parse(der, len, &e) == 0) {
			unsigned char key[16] = { 0 }, *out = NULL;
			size_t out_len = 0;

			for (size_t r = 0; r < esc_enveloped_count(e); r++)
				(void)esc_enveloped_ri_matches(e, r, rsa_cert);
			if (esc_enveloped_decrypt(e, key, sizeof(key), &out, &out_len) == 0)
				free(out);
			esc_enveloped_free(e);
			e = NULL;
		}
		der[i] ^= (unsigned char)(1u << (i % 8));
	}
	free(der);

	/* A signed message is not enveloped. */
	{
		BIO *in = BIO_new_mem_buf(plain, sizeof(plain));
		CMS_ContentInfo *cms = CMS_sign(rsa_cert, rsa_key, NULL, in, CMS_BINARY);

		ck_assert_ptr_nonnull(cms);
		der = cms_der(cms, &len);
		ck_assert_int_eq(esc_enveloped_parse(der, len, &e), KMS_ERR_INVALID);
		ck_assert_ptr_nonnull(strstr(kms_last_error(), "not enveloped"));
		free(der);
		CMS_ContentInfo_free(cms);
		BIO_free(in);
	}
}
END_TEST

/* -------------------------------------------------------------------- suite */

static Suite *
archive_suite(void)
{
	Suite *s = suite_create("archive");
	TCase *tc;

	tc = tcase_create("shares");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_every_three_of_five_shares_rebuild_the_secret);
	tcase_add_test(tc, test_no_two_of_five_shares_rebuild_the_secret);
	tcase_add_test(tc, test_krk_from_two_shares_fails_the_certificate_check);
	tcase_add_test(tc, test_split_refuses_impossible_parameters);
	tcase_add_test(tc, test_combine_refuses_duplicate_and_mismatched_shares);
	tcase_add_test(tc, test_share_digest_binds_index_and_bytes);
	suite_add_tcase(s, tc);

	tc = tcase_create("share files");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_clear_share_file_round_trip);
	tcase_add_test(tc, test_encrypted_share_file_round_trip_and_wrong_passphrase);
	tcase_add_test(tc, test_truncated_share_file_is_corrupt);
	tcase_add_test(tc, test_edited_share_file_is_corrupt);
	tcase_add_test(tc, test_garbage_share_file_is_corrupt);
	tcase_add_test(tc, test_costly_scrypt_parameters_are_refused_before_any_work);
	tcase_add_test(tc, test_foreign_krk_share_is_refused_by_the_store);
	suite_add_tcase(s, tc);

	tc = tcase_create("envelope");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_envelope_round_trip_rsa_user_key);
	tcase_add_test(tc, test_envelope_round_trip_ec_user_key);
	tcase_add_test(tc, test_envelope_opens_with_openssl_cms_decrypt);
	tcase_add_test(tc, test_envelope_is_authenveloped_aes256gcm_with_rsa_oaep_sha256);
	tcase_add_test(tc, test_tampered_or_misaddressed_envelope_does_not_open);
	tcase_add_test(tc, test_wrap_needs_an_rsa_krk);
	tcase_add_test(tc, test_key_secret_round_trip_and_match);
	suite_add_tcase(s, tc);

	tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_store_krk_current_by_id_and_retire);
	tcase_add_test(tc, test_store_user_keys_newest_first_with_certificates);
	tcase_add_test(tc, test_store_writes_join_the_callers_transaction);
	suite_add_tcase(s, tc);

	tc = tcase_create("release");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_release_rsa_pkcs1_v15_from_cms_encrypt);
	tcase_add_test(tc, test_release_rsa_oaep_with_its_parameters);
	tcase_add_test(tc, test_release_ecdh_from_cms_encrypt);
	tcase_add_test(tc, test_release_ecdh_sha256_kdf_and_cofactor_scheme);
	tcase_add_test(tc, test_release_recipients_named_by_subject_key_identifier);
	tcase_add_test(tc, test_release_for_authenveloped_gcm_message);
	tcase_add_test(tc, test_release_des_ede3_cbc_content);
	tcase_add_test(tc, test_release_message_to_several_users_opens_only_ours);
	tcase_add_test(tc, test_release_for_another_users_key_is_not_found);
	tcase_add_test(tc, test_release_message_from_openssl_smime_command);
	tcase_add_test(tc, test_release_message_from_gpgsm_command);
	tcase_add_test(tc, test_release_refuses_unknown_algorithms_as_invalid);
	tcase_add_test(tc, test_release_survives_garbage_truncation_and_bit_flips);
	tcase_add_test(tc, test_enveloped_parse_survives_garbage_and_refuses_other_content);
	suite_add_tcase(s, tc);

	archive_flow_tcases(s);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	make_keys();
	sr = srunner_create(archive_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	free_keys();
	return failed == 0 ? 0 : 1;
}
