/*
 * armor.c - the share file: one Shamir share of the key-recovery key as
 * readable armored text, optionally encrypted under its officer's
 * passphrase.
 *
 * Entry points: esc_share_encode(), esc_share_decode(), esc_share_peek().
 *
 *   -----BEGIN SMIME-KMS RECOVERY SHARE-----
 *   KRK-Fingerprint: <hex SHA-256 of the KRK certificate>
 *   Share: <index> of <total>, threshold <m>
 *   Encryption: none | scrypt-aes-256-gcm N=<n> r=<r> p=<p>
 *   Checksum: <hex SHA-256 of the three lines above and the payload>
 *
 *   <base64 of the payload, 64 columns>
 *   -----END SMIME-KMS RECOVERY SHARE-----
 *
 * The payload is the share itself, or for an encrypted share
 * salt (16) | nonce (12) | AES-256-GCM ciphertext | tag (16), the key being
 * scrypt(passphrase, salt, N=2^17, r=8, p=1) and the three header lines
 * the additional authenticated data.  The checksum catches truncation and
 * accidental edits of any line before a passphrase is needed; the GCM tag
 * (and for clear shares, the digest recorded at init) catches the rest.
 * Parsing is strict: the lines must be exactly what we write, apart from
 * CR LF line ends, trailing blanks and blank lines around the armor.
 */
#include "config.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "archive/archive.h"

#define BEGIN_LINE "-----BEGIN SMIME-KMS RECOVERY SHARE-----"
#define END_LINE "-----END SMIME-KMS RECOVERY SHARE-----"
#define ENC_NONE "none"
#define ENC_SCRYPT "scrypt-aes-256-gcm"

#define SCRYPT_N 131072UL       /* 2^17: 128 MiB, about half a second */
#define SCRYPT_R 8UL
#define SCRYPT_P 1UL
/*
 * What we accept when reading, since the parameters come from the file:
 * at most 256 MiB of scrypt memory (128 N r), p at most 4, and at most
 * twice the work of what we write (N r p <= 2^21, about a second), so a
 * hostile share file cannot cost more than an honest one by much.
 */
#define SCRYPT_MAX_MEM (256UL * 1024 * 1024)
#define SCRYPT_MAX_P 4UL
#define SCRYPT_MAX_WORK (2UL * SCRYPT_N * SCRYPT_R * SCRYPT_P)
/* Derivations running at once (each holds up to SCRYPT_MAX_MEM). */
#define SCRYPT_MAX_CONCURRENT 2

#define SALT_LEN 16
#define NONCE_LEN 12
#define TAG_LEN 16
#define KEY_LEN 32

/* The three header lines the checksum and the GCM tag cover. */
#define HEADER_MAX 512
/* A header line's value (the Encryption line is the longest, under 100). */
#define HEADER_VALUE_MAX 256
#define MAX_FILE (64 * 1024)
#define MAX_SHARE (32 * 1024)
#define B64_COLS 64

struct kdf {
	unsigned long n, r, p;
};

struct parsed {
	struct esc_share_meta meta;
	struct kdf kdf;
	char header[HEADER_MAX];
	size_t hlen;
	unsigned char *payload;         /* malloc'd, wiped on free */
	size_t plen;
};

static void
parsed_clear(struct parsed *pp)
{
	if (pp->payload != NULL) {
		OPENSSL_cleanse(pp->payload, pp->plen);
		free(pp->payload);
	}
	pp->payload = NULL;
	pp->plen = 0;
}

static int
is_hex64(const char *s)
{
	size_t i;

	for (i = 0; s[i] != '\0'; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return i == 64;
}

static int
meta_valid(const struct esc_share_meta *m)
{
	return is_hex64(m->krk_fingerprint) && m->total >= 2 && m->total <= ESC_MAX_SHARES &&
	    m->threshold >= 2 && m->threshold <= m->total && m->index >= 1 && m->index <= m->total;
}

/* The three header lines covered by the checksum and the GCM tag. */
static int
header_lines(const struct esc_share_meta *m, int encrypted, const struct kdf *kdf, char *buf, size_t size,
    size_t *len)
{
	int n;

	if (encrypted)
		n = snprintf(buf, size, "KRK-Fingerprint: %s\nShare: %d of %d, threshold %d\n"
		    "Encryption: " ENC_SCRYPT " N=%lu r=%lu p=%lu\n",
		    m->krk_fingerprint, m->index, m->total, m->threshold, kdf->n, kdf->r, kdf->p);
	else
		n = snprintf(buf, size, "KRK-Fingerprint: %s\nShare: %d of %d, threshold %d\n"
		    "Encryption: " ENC_NONE "\n",
		    m->krk_fingerprint, m->index, m->total, m->threshold);
	if (n < 0 || (size_t)n >= size)
		return kms_fail(KMS_ERR_INVALID, "share header too long");
	*len = (size_t)n;
	return 0;
}

static int
checksum(const char *header, size_t hlen, const unsigned char *payload, size_t plen, unsigned char out[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int ol = 0;
	int ok;

	if (md == NULL)
		return KMS_ERR_NOMEM;
	ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(md, header, hlen) == 1 &&
	    EVP_DigestUpdate(md, payload, plen) == 1 &&
	    EVP_DigestFinal_ex(md, out, &ol) == 1 && ol == 32;
	EVP_MD_CTX_free(md);
	return ok ? 0 : kms_fail_openssl(KMS_ERR_CRYPTO, "share checksum");
}

int
esc_kdf_params_ok(unsigned long n, unsigned long r, unsigned long p)
{
	/* N a power of two; memory (128 N r), p and work (N r p) bounded. */
	if (n < 1024 || (n & (n - 1)) != 0 || r < 1 || r > 32 || p < 1 || p > SCRYPT_MAX_P)
		return 0;
	if (n > SCRYPT_MAX_MEM / 128 / r)
		return 0;
	return n * r <= SCRYPT_MAX_WORK / p;
}

static pthread_mutex_t kdf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kdf_cond = PTHREAD_COND_INITIALIZER;
static int kdf_running;

static int
derive_key(const char *passphrase, const unsigned char *salt, const struct kdf *k, unsigned char *key)
{
	uint64_t maxmem = 128 * (uint64_t)k->r * (k->n + 2) + 128 * (uint64_t)k->r * k->p + 65536;
	int ok;

	/* A few at a time: each may hold SCRYPT_MAX_MEM. */
	pthread_mutex_lock(&kdf_lock);
	while (kdf_running >= SCRYPT_MAX_CONCURRENT)
		pthread_cond_wait(&kdf_cond, &kdf_lock);
	kdf_running++;
	pthread_mutex_unlock(&kdf_lock);
	ok = EVP_PBE_scrypt(passphrase, strlen(passphrase), salt, SALT_LEN, k->n, k->r, k->p, maxmem,
	    key, KEY_LEN) == 1;
	pthread_mutex_lock(&kdf_lock);
	kdf_running--;
	pthread_cond_signal(&kdf_cond);
	pthread_mutex_unlock(&kdf_lock);
	return ok ? 0 : kms_fail_openssl(KMS_ERR_CRYPTO, "scrypt");
}

/*
 * AES-256-GCM over in with aad.  enc: out gets len bytes and tag is
 * written; !enc: tag is checked (KMS_ERR_PERM when it does not match).
 */
static int
gcm(int enc, const unsigned char *key, const unsigned char *nonce, const char *aad, size_t aadlen,
    const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int ol = 0, fl = 0, rc = KMS_ERR_CRYPTO;

	if (c == NULL)
		return KMS_ERR_NOMEM;
	if (len > INT32_MAX || aadlen > INT32_MAX)
		goto out;
	if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) != 1 ||
	    EVP_CipherUpdate(c, NULL, &ol, (const unsigned char *)aad, (int)aadlen) != 1 ||
	    EVP_CipherUpdate(c, out, &ol, in, (int)len) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "share encryption");
		goto out;
	}
	if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "share encryption");
		goto out;
	}
	if (EVP_CipherFinal_ex(c, out + ol, &fl) != 1) {
		ERR_clear_error();
		rc = kms_fail(KMS_ERR_PERM, "wrong passphrase for this share");
		goto out;
	}
	if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "share encryption");
		goto out;
	}
	rc = ((size_t)ol + (size_t)fl == len) ? 0 : kms_fail(KMS_ERR_CRYPTO, "share encryption: short output");
out:
	EVP_CIPHER_CTX_free(c);
	return rc;
}

/* --------------------------------------------------------------- encoding */

/*
 * The payload (secure heap, *plen bytes): the share itself, or with a
 * passphrase salt | nonce | AES-256-GCM(share) | tag under the scrypt key,
 * the header lines as additional data.
 */
static int
seal_payload(const struct esc_share *share, const char *passphrase, const struct kdf *kdf, const char *header,
    size_t hlen, unsigned char **payload, size_t *plen)
{
	unsigned char *p, *key = NULL;
	int rc = 0;

	*plen = passphrase != NULL ? SALT_LEN + NONCE_LEN + share->len + TAG_LEN : share->len;
	if ((p = *payload = OPENSSL_secure_malloc(*plen)) == NULL)
		return KMS_ERR_NOMEM;
	if (passphrase == NULL) {
		memcpy(p, share->data, share->len);
		return 0;
	}
	if ((key = OPENSSL_secure_malloc(KEY_LEN)) == NULL)
		rc = KMS_ERR_NOMEM;
	else if (RAND_bytes(p, SALT_LEN) != 1 || RAND_bytes(p + SALT_LEN, NONCE_LEN) != 1)
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "random");
	else if ((rc = derive_key(passphrase, p, kdf, key)) == 0)
		rc = gcm(1, key, p + SALT_LEN, header, hlen, share->data, share->len, p + SALT_LEN + NONCE_LEN,
		    p + SALT_LEN + NONCE_LEN + share->len);
	if (key != NULL)
		OPENSSL_secure_clear_free(key, KEY_LEN);
	if (rc != 0) {
		OPENSSL_secure_clear_free(*payload, *plen);
		*payload = NULL;
	}
	return rc;
}

/* The armored text: BEGIN, the header lines, Checksum, blank, base64 in 64 columns, END. */
static int
armor_text(const char *header, size_t hlen, const unsigned char *payload, size_t plen, char **text, size_t *len)
{
	unsigned char sum[32];
	char *b64 = NULL, *hex = NULL;
	struct kms_buf out;
	size_t b64len;
	int rc;

	if ((rc = checksum(header, hlen, payload, plen, sum)) != 0)
		return rc;
	hex = kms_hex(sum, sizeof(sum));
	b64 = kms_b64_encode(payload, plen);
	kms_buf_init_secret(&out, MAX_FILE);
	if (hex == NULL || b64 == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	b64len = strlen(b64);
	rc = kms_buf_appendf(&out, "%s\n%sChecksum: %s\n\n", BEGIN_LINE, header, hex);
	for (size_t i = 0; rc == 0 && i < b64len; i += B64_COLS) {
		rc = kms_buf_append(&out, b64 + i, b64len - i < B64_COLS ? b64len - i : B64_COLS);
		if (rc == 0)
			rc = kms_buf_append(&out, "\n", 1);
	}
	if (rc == 0)
		rc = kms_buf_appendf(&out, "%s\n", END_LINE);
	if (rc == 0 && (*text = kms_buf_steal(&out, len)) == NULL)
		rc = KMS_ERR_NOMEM;
out:
	kms_buf_free(&out);
	if (b64 != NULL) {
		OPENSSL_cleanse(b64, strlen(b64));
		free(b64);
	}
	free(hex);
	return rc;
}

int
esc_share_encode(const struct esc_share *share, const struct esc_share_meta *meta,
    const char *passphrase, char **text, size_t *len)
{
	const struct kdf kdf = { SCRYPT_N, SCRYPT_R, SCRYPT_P };
	unsigned char *payload = NULL;
	char header[HEADER_MAX];
	size_t hlen, plen = 0;
	int rc;

	*text = NULL;
	*len = 0;
	if (share == NULL || meta == NULL || share->data == NULL || share->len == 0)
		return kms_fail(KMS_ERR_INVALID, "no share to write");
	if (share->len > MAX_SHARE)
		return kms_fail(KMS_ERR_TOOBIG, "share too large");
	if (!meta_valid(meta) || share->index != meta->index)
		return kms_fail(KMS_ERR_INVALID, "bad share description (fingerprint, index, total, threshold)");
	if (passphrase != NULL && *passphrase == '\0')
		return kms_fail(KMS_ERR_INVALID, "empty share passphrase");
	if ((rc = header_lines(meta, passphrase != NULL, &kdf, header, sizeof(header), &hlen)) != 0)
		return rc;
	if ((rc = seal_payload(share, passphrase, &kdf, header, hlen, &payload, &plen)) != 0)
		return rc;
	rc = armor_text(header, hlen, payload, plen, text, len);
	OPENSSL_secure_clear_free(payload, plen);
	return rc;
}

/* ---------------------------------------------------------------- parsing */

struct cursor {
	const char *p, *end;
};

/* Next line without its CR LF and trailing blanks; 0 at the end of text. */
static int
next_line(struct cursor *c, const char **line, size_t *n)
{
	const char *s = c->p, *e;

	if (s >= c->end)
		return 0;
	e = memchr(s, '\n', (size_t)(c->end - s));
	c->p = e ? e + 1 : c->end;
	if (e == NULL)
		e = c->end;
	while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
		e--;
	*line = s;
	*n = (size_t)(e - s);
	return 1;
}

static int
line_is(const char *line, size_t n, const char *want)
{
	return n == strlen(want) && memcmp(line, want, n) == 0;
}

/* "Name: value" into val (NUL-terminated); 0 or -1. */
static int
header_value(const char *line, size_t n, const char *name, char *val, size_t vsize)
{
	size_t nl = strlen(name);

	if (n < nl + 2 || memcmp(line, name, nl) != 0 || line[nl] != ':' || line[nl + 1] != ' ')
		return -1;
	n -= nl + 2;
	if (n == 0 || n >= vsize)
		return -1;
	memcpy(val, line + nl + 2, n);
	val[n] = '\0';
	return 0;
}

/* A plain decimal number (no sign, no leading zero) at *s; advances *s. */
static int
parse_num(const char **s, unsigned long max, unsigned long *out)
{
	const char *p = *s;
	unsigned long v = 0;

	if (!isdigit((unsigned char)*p) || (p[0] == '0' && isdigit((unsigned char)p[1])))
		return -1;
	while (isdigit((unsigned char)*p)) {
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > max)
			return -1;
		p++;
	}
	*s = p;
	*out = v;
	return 0;
}

static int
expect(const char **s, const char *lit)
{
	size_t n = strlen(lit);

	if (strncmp(*s, lit, n) != 0)
		return -1;
	*s += n;
	return 0;
}

static int
parse_share_line(const char *v, struct esc_share_meta *m)
{
	unsigned long idx, total, thr;

	if (parse_num(&v, ESC_MAX_SHARES, &idx) || expect(&v, " of ") || parse_num(&v, ESC_MAX_SHARES, &total) ||
	    expect(&v, ", threshold ") || parse_num(&v, 255, &thr) || *v != '\0')
		return -1;
	m->index = (int)idx;
	m->total = (int)total;
	m->threshold = (int)thr;
	return 0;
}

static int
parse_encryption_line(const char *v, int *encrypted, struct kdf *k)
{
	if (strcmp(v, ENC_NONE) == 0) {
		*encrypted = 0;
		return 0;
	}
	if (expect(&v, ENC_SCRYPT " N=") || parse_num(&v, 1UL << 30, &k->n) || expect(&v, " r=") ||
	    parse_num(&v, 1024, &k->r) || expect(&v, " p=") || parse_num(&v, 1024, &k->p) || *v != '\0')
		return -1;
	*encrypted = 1;
	return esc_kdf_params_ok(k->n, k->r, k->p) ? 0 : -2;
}

static int
is_b64_line(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '/' || s[i] == '='))
			return 0;
	return 1;
}

#define CORRUPT(what) kms_fail(KMS_ERR_CORRUPT, "not a valid share file: %s", what)

/* The BEGIN line (after blank lines), the four header lines in order, the blank line; *want is the checksum. */
static int
parse_headers(struct cursor *c, struct parsed *pp, unsigned char **want, size_t *wlen)
{
	const char *line;
	char val[HEADER_VALUE_MAX];
	size_t n;
	int found = 0, rc;

	while (next_line(c, &line, &n)) {
		if (n == 0)
			continue;
		found = line_is(line, n, BEGIN_LINE);
		break;
	}
	if (!found)
		return CORRUPT("no BEGIN line");
	if (!next_line(c, &line, &n) || header_value(line, n, "KRK-Fingerprint", val, sizeof(val)) ||
	    !is_hex64(val))
		return CORRUPT("bad or missing KRK-Fingerprint line");
	memcpy(pp->meta.krk_fingerprint, val, 65);
	if (!next_line(c, &line, &n) || header_value(line, n, "Share", val, sizeof(val)) ||
	    parse_share_line(val, &pp->meta))
		return CORRUPT("bad or missing Share line");
	if (!next_line(c, &line, &n) || header_value(line, n, "Encryption", val, sizeof(val)))
		return CORRUPT("bad or missing Encryption line");
	if ((rc = parse_encryption_line(val, &pp->meta.encrypted, &pp->kdf)) == -2)
		return kms_fail(KMS_ERR_TOOBIG, "share file asks for scrypt N=%lu r=%lu p=%lu: over the bounds "
		    "(memory 128*N*r at most %lu MiB, p at most %lu, N*r*p at most %lu)", pp->kdf.n, pp->kdf.r,
		    pp->kdf.p, SCRYPT_MAX_MEM >> 20, SCRYPT_MAX_P, SCRYPT_MAX_WORK);
	if (rc != 0)
		return CORRUPT("bad or missing Encryption line");
	if (!meta_valid(&pp->meta))
		return CORRUPT("impossible index, total or threshold");
	if (!next_line(c, &line, &n) || header_value(line, n, "Checksum", val, sizeof(val)) ||
	    !is_hex64(val))
		return CORRUPT("bad or missing Checksum line");
	if (!next_line(c, &line, &n) || n != 0)
		return CORRUPT("no blank line after the headers");
	if (kms_unhex(val, want, wlen) != 0)
		return CORRUPT("bad Checksum line");
	return 0;
}

/* The base64 body (full 64-column lines, the last one shorter or equal), the END line, only blank lines after. */
static int
parse_body(struct cursor *c, size_t len, struct parsed *pp)
{
	struct kms_buf b64;
	const char *line;
	size_t n, last = B64_COLS;
	int rc, found = 0;

	kms_buf_init_secret(&b64, len);
	while (next_line(c, &line, &n)) {
		if (line_is(line, n, END_LINE)) {
			found = 1;
			break;
		}
		if (n == 0 || n > B64_COLS || last != B64_COLS || !is_b64_line(line, n)) {
			rc = CORRUPT("bad base64 line");
			goto out;
		}
		if ((rc = kms_buf_append(&b64, line, n)) != 0)
			goto out;
		last = n;
	}
	rc = found ? 0 : CORRUPT("truncated (no END line)");
	while (rc == 0 && next_line(c, &line, &n))
		if (n != 0)
			rc = CORRUPT("text after the END line");
	if (rc == 0 && (b64.len == 0 || b64.len % 4 != 0))
		rc = CORRUPT("truncated base64");
	if (rc == 0 && (kms_b64_decode((const char *)b64.data, b64.len, &pp->payload, &pp->plen) != 0 ||
	    pp->plen == 0))
		rc = CORRUPT("bad base64");
	if (rc == 0 && (pp->meta.encrypted ? pp->plen <= SALT_LEN + NONCE_LEN + TAG_LEN ||
	    pp->plen > MAX_SHARE + 64 : pp->plen > MAX_SHARE))
		rc = CORRUPT("payload of impossible length");
out:
	kms_buf_free(&b64);
	return rc;
}

/* Parse a whole share file strictly into pp, its checksum checked. */
static int
parse(const char *text, size_t len, struct parsed *pp)
{
	struct cursor c = { text, text + len };
	unsigned char sum[32], *want = NULL;
	size_t wlen = 0;
	int rc;

	memset(pp, 0, sizeof(*pp));
	if (text == NULL || len == 0)
		return CORRUPT("empty");
	if (len > MAX_FILE)
		return CORRUPT("too large");
	if (memchr(text, '\0', len) != NULL)
		return CORRUPT("binary data");
	if ((rc = parse_headers(&c, pp, &want, &wlen)) != 0 || (rc = parse_body(&c, len, pp)) != 0)
		goto out;
	if ((rc = header_lines(&pp->meta, pp->meta.encrypted, &pp->kdf, pp->header, sizeof(pp->header),
	    &pp->hlen)) != 0)
		goto out;
	if ((rc = checksum(pp->header, pp->hlen, pp->payload, pp->plen, sum)) != 0)
		goto out;
	if (wlen != sizeof(sum) || CRYPTO_memcmp(sum, want, sizeof(sum)) != 0)
		rc = CORRUPT("checksum mismatch (truncated or edited)");
out:
	free(want);
	if (rc != 0)
		parsed_clear(pp);
	return rc;
}

int
esc_share_peek(const char *text, size_t len, struct esc_share_meta *meta)
{
	struct parsed pp;
	int rc;

	memset(meta, 0, sizeof(*meta));
	if ((rc = parse(text, len, &pp)) != 0)
		return rc;
	*meta = pp.meta;
	parsed_clear(&pp);
	return 0;
}

int
esc_share_decode(const char *text, size_t len, const char *passphrase,
    struct esc_share *share, struct esc_share_meta *meta)
{
	struct parsed pp;
	unsigned char *key = NULL, *data = NULL;
	size_t dlen = 0;
	int rc;

	memset(share, 0, sizeof(*share));
	memset(meta, 0, sizeof(*meta));
	if ((rc = parse(text, len, &pp)) != 0)
		return rc;
	if (pp.meta.encrypted) {
		const unsigned char *salt = pp.payload, *nonce = pp.payload + SALT_LEN;
		const unsigned char *ct = nonce + NONCE_LEN;

		if (passphrase == NULL) {
			rc = kms_fail(KMS_ERR_PERM, "share %d is encrypted: its passphrase is needed", pp.meta.index);
			goto out;
		}
		dlen = pp.plen - SALT_LEN - NONCE_LEN - TAG_LEN;
		key = OPENSSL_secure_malloc(KEY_LEN);
		data = OPENSSL_secure_malloc(dlen);
		if (key == NULL || data == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		if ((rc = derive_key(passphrase, salt, &pp.kdf, key)) != 0)
			goto out;
		if ((rc = gcm(0, key, nonce, pp.header, pp.hlen, ct, dlen, data,
		    (unsigned char *)ct + dlen)) != 0)
			goto out;
	} else {
		dlen = pp.plen;
		data = OPENSSL_secure_malloc(dlen);
		if (data == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
		memcpy(data, pp.payload, dlen);
	}
	share->index = (unsigned char)pp.meta.index;
	share->data = data;
	share->len = dlen;
	*meta = pp.meta;
	data = NULL;
	rc = 0;
out:
	if (data != NULL)
		OPENSSL_secure_clear_free(data, dlen);
	if (key != NULL)
		OPENSSL_secure_clear_free(key, KEY_LEN);
	parsed_clear(&pp);
	return rc;
}
