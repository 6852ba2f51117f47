/*
 * archive.h - the public header of libkmsarchive: key escrow.
 *
 *   shares     Shamir M-of-N split and combine over GF(256) (libgfshare),
 *              and the armored share file format, optionally encrypted
 *              under an officer's passphrase
 *   envelope   a private key wrapped as CMS AuthEnvelopedData (AES-256-GCM,
 *              RSA-OAEP key transport) to the key-recovery key (KRK)
 *   store      the krk, krk_shares and escrow tables; recovery requests and
 *              approvals (the rules for approvals live in policy/)
 *   release    the content-encryption key of one S/MIME RecipientInfo,
 *              decrypted with a recovered key (compliance decryption)
 *   mail       reading S/MIME enveloped messages and decrypting their
 *              content with a released key, on the client side
 *
 * Secrets (shares, the rebuilt KRK, recovered keys) live in OpenSSL's
 * secure heap, are wiped when freed, and never reach a log line, an error
 * message or a file other than the one the caller asked for.
 */
#ifndef KMS_ESC_H
#define KMS_ESC_H

#include <stddef.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/common.h"

/* ================================================================== shares */

/* One share: x coordinate (1..255) and the share bytes in secure memory. */
struct esc_share {
	unsigned char index;
	unsigned char *data;        /* OPENSSL_secure_malloc'd */
	size_t len;
};
void esc_share_clear(struct esc_share *s);                   /* wipe and free data */
void esc_shares_free(struct esc_share *s, size_t n);         /* clear each, free array */

/*
 * Split secret into n shares, any m of which rebuild it (2 <= m <= n <= 255).
 * Coefficients come from RAND_priv_bytes.  *out is an array of n shares.
 */
int esc_split(const unsigned char *secret, size_t len, int n, int m, struct esc_share **out);
/*
 * Rebuild the secret from count shares (all of the same length, distinct
 * indexes).  *secret is OPENSSL_secure_malloc'd: free with
 * OPENSSL_secure_clear_free(*secret, *len).  With fewer than m shares the
 * output is garbage: callers check the result against the KRK certificate.
 */
int esc_combine(const struct esc_share *shares, size_t count, unsigned char **secret, size_t *len);

/* What a share file says about itself. */
struct esc_share_meta {
	char krk_fingerprint[65];   /* hex SHA-256 of the KRK certificate */
	int index;
	int threshold;
	int total;
	int encrypted;              /* needs a passphrase */
};

/*
 * Armored text form:
 *   -----BEGIN SMIME-KMS RECOVERY SHARE-----
 *   KRK-Fingerprint: <hex>
 *   Share: <index> of <total>, threshold <m>
 *   Encryption: none | scrypt-aes-256-gcm N=131072 r=8 p=1
 *   Checksum: <hex sha-256 of the three lines above and the decoded payload>
 *
 *   <base64, 64 columns>
 *   -----END SMIME-KMS RECOVERY SHARE-----
 * The payload is the share, or salt (16) | nonce (12) | ciphertext | tag
 * (16) with the key scrypt(passphrase, salt) and the three header lines
 * as AAD.  passphrase NULL writes the share in clear.  *text is malloc'd
 * (it holds the share: wipe it after writing).  meta->index must equal
 * share->index; meta->encrypted is ignored.
 */
int esc_share_encode(const struct esc_share *share, const struct esc_share_meta *meta,
    const char *passphrase, char **text, size_t *len);
/*
 * Parse a share file.  passphrase may be NULL for a clear share;
 * KMS_ERR_PERM for a wrong or missing passphrase, KMS_ERR_CORRUPT for a
 * truncated or edited file (checksum, armor, lengths).
 */
int esc_share_decode(const char *text, size_t len, const char *passphrase,
    struct esc_share *share, struct esc_share_meta *meta);
/* Parse only the headers (no passphrase needed). */
int esc_share_peek(const char *text, size_t len, struct esc_share_meta *meta);
/* Hex SHA-256 commitment of a share (index and bytes), stored at init to spot edited or foreign shares. */
char *esc_share_digest(const struct esc_share *share);

/* ================================================================ envelope */

/*
 * Wrap a private key (its PKCS#8 DER) as CMS AuthEnvelopedData with
 * AES-256-GCM, RSA-OAEP (SHA-256) key transport to krk_cert.  *der malloc'd.
 */
int esc_wrap_key(X509 *krk_cert, EVP_PKEY *key, unsigned char **der, size_t *len);
/*
 * Unwrap with the KRK private key and its certificate (which names the
 * RecipientInfo to open); *key get1 (secure heap where OpenSSL allows).
 * KMS_ERR_CORRUPT for an envelope that is damaged, altered, not
 * AuthEnvelopedData or not addressed to this KRK.
 */
int esc_unwrap_key(EVP_PKEY *krk_key, X509 *krk_cert, const unsigned char *der, size_t len, EVP_PKEY **key);

/* The KRK's private key as PKCS#8 DER in secure memory, and back. */
int esc_key_to_secret(EVP_PKEY *key, unsigned char **secret, size_t *len);
int esc_key_from_secret(const unsigned char *secret, size_t len, EVP_PKEY **key);
/* Does key's public half equal cert's public key?  1 yes, 0 no. */
int esc_key_matches_cert(EVP_PKEY *key, X509 *cert);

/* =================================================================== store */

struct esc_krk {
	long long id;
	X509 *cert;
	char fingerprint[65];
	int shares, threshold;
	time_t created, retired;    /* retired 0 while current */
};
void esc_krk_free(struct esc_krk *k);

/* Record a new current KRK certificate and its share digests (caller's transaction). */
int esc_store_add_krk(struct kms_store *st, X509 *cert, int shares, int threshold,
    char *const *share_digests, long long *id);
/* The current KRK (KMS_ERR_NOTFOUND before init). */
int esc_store_current_krk(struct kms_store *st, struct esc_krk **out);
int esc_store_krk_by_id(struct kms_store *st, long long id, struct esc_krk **out);
/* Does index/digest match what init recorded for this KRK?  0, or KMS_ERR_CORRUPT. */
int esc_store_check_share(struct kms_store *st, long long krk_id, int index, const char *digest);
/* Mark a KRK retired (caller's transaction). */
int esc_store_retire_krk(struct kms_store *st, long long id, time_t when);

/*
 * Store the escrowed envelope of the encryption certificate serial (caller's
 * transaction).  KMS_ERR_INVALID if serial is not an encryption certificate
 * (signing keys are never escrowed), KMS_ERR_NOTFOUND for an unknown serial
 * or KRK, KMS_ERR_EXISTS if it already has one.
 */
int esc_store_put(struct kms_store *st, const char *serial, long long krk_id, const unsigned char *env, size_t len);

struct esc_entry {
	char *serial;
	long long krk_id;
	unsigned char *envelope;
	size_t len;
	X509 *cert;                 /* the encryption certificate */
	time_t issued;
};
void esc_entries_free(struct esc_entry *e, size_t n);
/* Every escrowed key of email, the current (newest) first.  KMS_ERR_NOTFOUND if none. */
int esc_store_get_user(struct kms_store *st, const char *email, struct esc_entry **out, size_t *n);
/* Every escrowed key (rotation). */
int esc_store_get_all(struct kms_store *st, struct esc_entry **out, size_t *n);
/* Replace the envelope of serial (rotation; caller's transaction). */
int esc_store_rewrap(struct kms_store *st, const char *serial, long long krk_id, const unsigned char *env, size_t len);

/* ================================================================ release */

/*
 * Given the DER of one RecipientInfo (KeyTransRecipientInfo, or
 * KeyAgreeRecipientInfo with its originator key) and the user's recovered
 * keys with their certificates, find the key it is addressed to (issuer and
 * serial, or subject key identifier) and decrypt the content-encryption
 * key.  *cek is OPENSSL_secure_malloc'd; *which is the index into keys.
 * KMS_ERR_NOTFOUND when the RecipientInfo names none of the keys (KEK,
 * password and other recipients never do); KMS_ERR_INVALID for a
 * malformed RecipientInfo or an algorithm we do not support (named in the
 * detail); KMS_ERR_CRYPTO when the key does not decrypt.
 */
int esc_release_cek(const unsigned char *ri_der, size_t ri_len, EVP_PKEY *const *keys, X509 *const *certs,
    size_t nkeys, unsigned char **cek, size_t *cek_len, size_t *which);

/* ==================================================================== mail */

/*
 * An S/MIME enveloped message body (DER of a ContentInfo holding
 * EnvelopedData or AuthEnvelopedData), split so that only one
 * RecipientInfo goes to kmsd and the content is decrypted here.
 */
struct esc_enveloped;
int esc_enveloped_parse(const unsigned char *der, size_t len, struct esc_enveloped **out);
void esc_enveloped_free(struct esc_enveloped *e);
size_t esc_enveloped_count(const struct esc_enveloped *e);
/* DER of RecipientInfo i (borrowed, valid while e lives). */
int esc_enveloped_ri(const struct esc_enveloped *e, size_t i, const unsigned char **der, size_t *len);
/* Does RecipientInfo i name this certificate (issuer+serial or SKI)?  1 or 0. */
int esc_enveloped_ri_matches(const struct esc_enveloped *e, size_t i, X509 *cert);
/* Decrypt the content with the content-encryption key; *out malloc'd. */
int esc_enveloped_decrypt(const struct esc_enveloped *e, const unsigned char *cek, size_t cek_len,
    unsigned char **out, size_t *out_len);

#endif /* KMS_ESC_H */
