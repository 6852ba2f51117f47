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
 *   recovery   share files of a KRK, rebuilding the KRK from shares,
 *              recovering a user's keys, rotating to a new KRK
 *   requests   recovery requests and approvals in the store
 *   enroll     init (CA, KRK and shares) and enrollment (two certificates,
 *              the encryption key escrowed in the same transaction)
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

#include <sys/types.h>

#include "ca/ca.h"
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
/*
 * Are these scrypt parameters of a share file within what we derive?
 * (N a power of two >= 1024, memory 128*N*r <= 256 MiB, r <= 32, p <= 4,
 * N*r*p at most twice what esc_share_encode() writes.)  1 or 0.  A file
 * over them gives KMS_ERR_TOOBIG from esc_share_decode() before any work;
 * at most two derivations run at once in the process.
 */
int esc_kdf_params_ok(unsigned long n, unsigned long r, unsigned long p);
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

/* =============================================================== recovery */

/*
 * The largest message the archive handles: an enveloped message parsed for
 * release and decryption, and one message read by kmsctl archive decrypt
 * (larger ones are reported as failed).
 */
#define ESC_MAX_MESSAGE ((size_t)100 * 1024 * 1024)

#define ESC_MAX_SHARES 255

/* The share files of one KRK: their paths and the digests init records. */
struct esc_share_files {
	char **paths;
	char **names;               /* in dirfd */
	char **digests;             /* hex SHA-256 of each share (esc_share_digest) */
	int dirfd;                  /* our own copy, to remove them */
	int n;
};
/*
 * Directories a client named for share files and their passphrases,
 * opened for the requester with kms_dir_open_checked() (no link
 * followed, nothing created): the files are made there with openat().
 */
struct esc_share_dest {
	int dirfd;
	int passfd;                 /* -1: clear shares */
	uid_t owner;                /* the requester: owns the share files and the passphrase files */
	uid_t alt;                  /* an unprivileged kmsd's own uid, else (uid_t)-1 */
};
/*
 * Open dir (and pass_dir unless NULL or "") for requester; alt is the
 * other owner accepted (an unprivileged kmsd's uid) or (uid_t)-1.  The
 * errors say which directory and which rule.  Close with
 * esc_share_dest_close().
 */
int esc_share_dest_open(const char *dir, const char *pass_dir, uid_t requester, uid_t alt, struct esc_share_dest *d);
void esc_share_dest_close(struct esc_share_dest *d);
/*
 * Split the KRK private key into n shares (threshold m) and write one
 * armored file per share (0600, created exclusively, never through a
 * link) into dest->dirfd, or when dest is NULL into dir, kmsd's own
 * directory (made 0700 if absent).  With a passphrase directory share i
 * is encrypted under the passphrase in share-<i>.passphrase there (a
 * regular file of the owner's, never a link; at least 8 characters).
 * dir and pass_dir name the directories in paths and messages.  On
 * failure no file is left and *sf is empty.
 */
int esc_share_files_write(EVP_PKEY *krk, X509 *krk_cert, int n, int m, const char *dir, const char *pass_dir,
    const struct esc_share_dest *dest, struct esc_share_files *sf);
/* Remove the files (after a failed transaction); free frees the lists only. */
void esc_share_files_remove(struct esc_share_files *sf);
void esc_share_files_free(struct esc_share_files *sf);

/*
 * Rebuild the KRK from n shares and check it against its certificate.
 * *krk get1 (free it as soon as it has been used).  KMS_ERR_CORRUPT when
 * the shares do not give the key of krk_cert.
 */
int esc_krk_rebuild(const struct esc_share *shares, size_t n, X509 *krk_cert, EVP_PKEY **krk);

/* A user's recovered encryption keys with their certificates, current first. */
struct esc_recovered {
	EVP_PKEY **keys;
	X509 **certs;
	size_t n;
};
void esc_recovered_free(struct esc_recovered *r);
/*
 * Unwrap every escrowed key of email with the rebuilt krk (whose record is
 * krk_rec) and check each against its certificate.  KMS_ERR_NOTFOUND when
 * email has no escrowed key; KMS_ERR_STATE for a key escrowed under
 * another KRK; KMS_ERR_CORRUPT for a key that does not match.
 */
int esc_recover_user(struct kms_store *st, const char *email, EVP_PKEY *krk, const struct esc_krk *krk_rec,
    struct esc_recovered *out);
/*
 * The recovery sequence, one function for kmsd (at the approval that
 * reaches the threshold) and for kmsctl recover --offline: rebuild the KRK
 * of krk_rec from n shares, check it against its certificate, unwrap every
 * escrowed key of email and check each against its certificate.  The
 * rebuilt KRK lives in the secure heap only inside this call and is freed
 * before it returns; the shares stay the caller's (esc_shares_free wipes
 * them).  Errors: KMS_ERR_CORRUPT when the shares do not give the KRK (too
 * few, or a wrong one), and those of esc_recover_user().  *out is empty on
 * error.
 */
int esc_recover_keys(struct kms_store *st, const struct esc_krk *krk_rec, const struct esc_share *shares,
    size_t n, const char *email, struct esc_recovered *out);
/*
 * Pack recovered keys into a PKCS#12 under password, with ca_cert (may be
 * NULL) as the chain and friendly names "EMAIL (encryption[, current],
 * SERIAL)"; iterations as [ca] pkcs12_iterations says.  *der is the
 * caller's (wipe it before free).
 */
int esc_recovered_p12(const struct esc_recovered *r, const char *email, X509 *ca_cert, const char *password,
    enum ca_p12_format fmt, int iterations, unsigned char **der, size_t *len);

/* A new KRK: its key type, certificate validity and shares. */
struct esc_krk_spec {
	const char *key_type;
	int days;
	const char *crl_url;
	int shares, threshold;
	const char *share_dir, *pass_dir;
	const struct esc_share_dest *dest;  /* as for esc_share_files_write() */
};
/*
 * Make a KRK, certify it with ca and write its share files
 * (esc_share_files_write).  The private key exists only in the share files
 * afterwards.  *cert get1; on failure no file is left.  init and rotation
 * both make their KRK here.
 */
int esc_krk_new(const struct ca *ca, const struct esc_krk_spec *spec, X509 **cert, struct esc_share_files *sf);

struct esc_rotate_req {
	const char *key_type;       /* the new KRK's key type */
	int days;                   /* its certificate's validity */
	const char *crl_url;
	int shares, threshold;
	const char *share_dir, *pass_dir;
	const struct esc_share_dest *dest;  /* the requester's directories, or NULL: kmsd's own share_dir */
	const char *user;           /* who asked (recorded as the issuer) */
	time_t now;
};
struct esc_rotate_result {
	long long krk_id;
	char fingerprint[65];
	size_t rewrapped;
	struct esc_share_files files;   /* the caller frees it */
};
/*
 * Rotate to a new KRK: make it, certify it with ca, write its share files,
 * then in one transaction record it, retire old and re-wrap every escrowed
 * key from old_krk (rebuilt from shares) to the new one.  On failure the
 * new share files are removed and nothing changes.
 */
int esc_krk_rotate(struct kms_store *st, const struct ca *ca, const struct esc_rotate_req *rr, EVP_PKEY *old_krk,
    const struct esc_krk *old, struct esc_rotate_result *res);

/* =============================================================== requests */

#define ESC_REQUEST_ID_MAX 32
#define ESC_MAX_WHY 1024
#define ESC_MAX_APPROVALS ESC_MAX_SHARES

struct esc_approval {
	uid_t officer_uid;
	char officer[64];
	int share_index;
};

/* A recovery request as the store has it. */
struct esc_request {
	char id[ESC_REQUEST_ID_MAX];
	char purpose[16];           /* key, archive or rotate */
	char email[256];
	char why[ESC_MAX_WHY + 1];
	uid_t requester_uid;
	char requester[64];
	long long krk_id;
	time_t created, expires, state_time;
	char state[16];             /* open, approved, fetched, done, closed, expired, failed */
	char detail[512];
	struct esc_approval approvals[ESC_MAX_APPROVALS];
	size_t napprovals;
};

struct esc_request_new {
	const char *purpose;        /* key, archive or rotate */
	const char *email;          /* "" for rotate */
	const char *why;
	uid_t requester_uid;
	const char *requester;
	long long krk_id;
	time_t now, expires;
	const char *share_dir, *pass_dir;   /* rotate: where the new shares go (shown by recover list) */
};
/* Record a new open request; id gets its random id ("R-" and 12 hex digits). */
int esc_request_open(struct kms_store *st, const struct esc_request_new *nr, char id[ESC_REQUEST_ID_MAX]);
/* Load a request with its approvals.  KMS_ERR_NOTFOUND for an unknown id. */
int esc_request_load(struct kms_store *st, const char *id, struct esc_request *rq);
/* New state (and detail when not NULL). */
int esc_request_set_state(struct kms_store *st, const char *id, const char *state, const char *detail, time_t now);
/* Record an officer's approval and add it to rq. */
int esc_request_add_approval(struct kms_store *st, struct esc_request *rq, uid_t officer_uid, const char *officer,
    int share_index, time_t now);
/* "carol (share 2), dave (share 5)" */
void esc_request_officers(const struct esc_request *rq, char *buf, size_t len);

/* One row of esc_request_list (strings borrowed for the callback only). */
struct esc_request_row {
	const char *id, *purpose, *email, *why, *requester, *state, *detail, *officers;
	const char *share_dir, *pass_dir;   /* rotate: where the new shares go, "" otherwise */
	uid_t requester_uid;
	time_t created, expires;
	int threshold, napprovals;
};
typedef int (*esc_request_row_fn)(void *arg, const struct esc_request_row *row);
/* Open and approved requests and those that ended in the last 7 days (all: every one), oldest first. */
int esc_request_list(struct kms_store *st, int all, time_t now, esc_request_row_fn fn, void *arg);
/* Ids of up to max open or approved requests whose expiry has passed. */
int esc_request_due(struct kms_store *st, time_t now, char (*ids)[ESC_REQUEST_ID_MAX], int max, int *n);
/* Mark every open or approved request failed (kmsd stops: their shares were only in memory). */
int esc_request_fail_open(struct kms_store *st, const char *detail, time_t now);

/* ================================================================= enroll */

struct esc_init_req {
	const char *org;
	const char *ca_name, *ca_key_type, *krk_key_type;
	int ca_days;
	const char *crl_url;
	const char *passphrase;     /* encrypts the CA key at rest */
	int not_before_margin;      /* the new CA's ([ca] not_before_margin) */
	int shares, threshold;
	const char *share_dir, *pass_dir;
	const struct esc_share_dest *dest;  /* the requester's directories, or NULL: kmsd's own share_dir */
	const char *user;
};
struct esc_init_result {
	struct ca *ca;              /* the new CA with its key */
	X509 *krk_cert;
	long long krk_id;
	struct esc_share_files files;
};
void esc_init_result_free(struct esc_init_result *r);
/*
 * Make the root CA and the KRK, write the KRK's share files, then record
 * the CA (key encrypted under passphrase), the KRK certificate and the
 * share digests in one transaction.  The KRK private key exists only in
 * the share files afterwards.  On failure no file is left and nothing is
 * recorded.
 */
int esc_init(struct kms_store *st, const struct esc_init_req *ir, struct esc_init_result *res);

struct esc_enroll_req {
	const struct ca *ca;
	X509 *krk_cert;             /* the current KRK certificate */
	long long krk_id;
	const char *email, *name;   /* name NULL or "": the address */
	const char *key_type;
	int days;
	const char *crl_url;
	const char *crl_ldap_url;   /* ldap:// name of the same CRL, NULL or "" for none */
	const char *ocsp_url;       /* AIA: the OCSP responder, NULL for none */
	const char *issuer_url;     /* AIA: the CA certificate, NULL for none */
	const char *origin;         /* "enroll" */
	const char *issued_by;
};
/* Keys, certificates and the escrow envelope of one enrollment, not yet recorded. */
struct esc_enrollment {
	EVP_PKEY *skey, *ekey;
	X509 *scert, *ecert;
	/*
	 * Random id of this pair: the subject serialNumber of both
	 * certificates, for kmsd's friendly names too.  A renewal never
	 * shares a subject with the pair it renews (NSS keys nicknames by
	 * subject); the two of one pair do share one (gpgsm's identity).
	 */
	char generation[17];
	unsigned char *envelope;
	size_t envlen;
};
void esc_enrollment_free(struct esc_enrollment *en);
/* Make both key pairs, issue both certificates, wrap the encryption key to the KRK. */
int esc_enroll_prepare(const struct esc_enroll_req *er, struct esc_enrollment *en);
/*
 * Record both certificates and the escrowed encryption key.  Runs inside
 * the caller's transaction (which may add its audit row before it
 * commits): on failure the caller rolls back and nothing is kept.
 */
int esc_enroll_record(struct kms_store *st, const struct esc_enroll_req *er, const struct esc_enrollment *en);

/* Is an escrowed key recorded for this certificate serial?  1, 0, or an error. */
int esc_store_has_key(struct kms_store *st, const char *serial);
/* Number of escrowed keys, or an error. */
long long esc_store_count(struct kms_store *st);

#endif /* KMS_ESC_H */
