/*
 * ca.h - the public header of libkmsca: the organisation's certificate
 * authority.
 *
 *   keys        key generation for every supported type
 *   the CA      the self-signed root, its key encrypted at rest
 *   issuing     user signing and encryption certificates, the KRK
 *               certificate, signing certificates from a user's CSR
 *   certs       the certs table: add, find, list, revoke
 *   PKCS#12     security files in the modern and compat encodings
 *   CRL         build and sign full and delta CRLs, publish them
 *   index       the immutable in-memory revocation index the milter reads
 *   OCSP        responses from that index, the delegated signer, issued serials
 *
 * Conventions: 0 or a negative KMS_ERR_* code with kms_last_error() set;
 * output pointers NULL on entry and filled only on success; OpenSSL's
 * get0/get1/set0 ownership words.
 */
#ifndef KMS_CA_H
#define KMS_CA_H

#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/common.h"

/* ==================================================================== keys */

/* Is type one of "rsa:2048", "rsa:3072", "rsa:4096", "ec:p256", "ec:p384"? */
int ca_key_type_valid(const char *type);
/* Generate a new key pair of type.  *out is the caller's (EVP_PKEY_free). */
int ca_keygen(const char *type, EVP_PKEY **out);
/* Describe a key as "rsa:2048", "ec:p256", ... into buf. */
const char *ca_key_type_of(const EVP_PKEY *key, char *buf, size_t len);

/*
 * Encrypt a private key as PEM PKCS#8 under passphrase (AES-256-CBC with
 * scrypt, N=2^14 r=8 p=1: 16 MiB per guess; N=2^15 exceeds the 32 MiB
 * scrypt cap of OpenSSL's PKCS#8 reader), and back.  *pem is malloc'd; wipe-free is not
 * needed (it is ciphertext).  ca_key_decrypt gives KMS_ERR_PERM on a wrong
 * passphrase.
 */
int ca_key_encrypt(EVP_PKEY *key, const char *passphrase, char **pem, size_t *len);
int ca_key_decrypt(const char *pem, size_t len, const char *passphrase, EVP_PKEY **out);

/* ================================================================== the CA */

struct ca {
	X509 *cert;          /* the root certificate */
	EVP_PKEY *key;       /* its private key; NULL when loaded without passphrase */
	char *name;          /* short name ([ca] name): file names and URLs */
	int not_before_margin;  /* seconds ca_issue() sets notBefore back ([ca] not_before_margin); 0 at creation */
};
#define CA_MAX_NOT_BEFORE_MARGIN 86400

/*
 * Make a new self-signed root: subject "O=<org>, CN=<org> S/MIME CA",
 * basicConstraints critical CA:TRUE, keyUsage critical keyCertSign+cRLSign,
 * SKI, AKI, 128-bit random serial, validity days from now.
 */
int ca_create_root(const char *org, const char *name, const char *key_type, int days, struct ca **out);
void ca_free(struct ca *ca);

/* Save the CA (certificate, encrypted key) into the ca table; KMS_ERR_EXISTS if there is one. */
int ca_store_save(struct kms_store *st, const struct ca *ca, const char *encrypted_key_pem, const char *key_type);
/*
 * Load the CA.  passphrase NULL loads the certificate only (key NULL).
 * name NULL accepts any.  KMS_ERR_NOTFOUND when the CA was never
 * initialised; KMS_ERR_STATE when it was, under another name; KMS_ERR_PERM
 * on a wrong passphrase.
 */
int ca_store_load(struct kms_store *st, const char *name, const char *passphrase, struct ca **out);

/* ================================================================= issuing */

enum ca_usage {
	CA_USAGE_SIGN = 0,   /* digitalSignature, nonRepudiation; EKU emailProtection */
	CA_USAGE_ENC,        /* keyEncipherment (RSA) or keyAgreement (EC); EKU emailProtection */
	CA_USAGE_KRK,        /* the key-recovery key: keyEncipherment only, no EKU, no SAN */
};
const char *ca_usage_name(enum ca_usage u);     /* "sign", "enc", "krk" */

struct ca_issue_req {
	enum ca_usage usage;
	EVP_PKEY *pubkey;       /* borrowed: the key to certify */
	const char *email;      /* SAN rfc822Name (and subject emailAddress); NULL for the KRK */
	const char *name;       /* subject CN; NULL or "" uses the address */
	int days;               /* validity from now */
	const char *crl_url;    /* CRL distribution point; NULL or "" for none */
	const char *subject_serial;  /* subject serialNumber (printable), or NULL for none */
	const char *crl_ldap_url;   /* ldap:// name of the same CRL beside crl_url; NULL or "" for none */
	const char *ocsp_url;   /* AIA id-ad-ocsp; NULL or "" for none */
	const char *issuer_url; /* AIA id-ad-caIssuers (the CA certificate, DER); NULL or "" for none */
};

/*
 * Issue a certificate signed by ca (which must hold its key): X.509 v3,
 * 128-bit random positive serial, SHA-256 (RSA) or SHA-384 (P-384 CA)
 * signature, notBefore ca->not_before_margin seconds before now, subject
 * O=<CA org>, CN=<name>, serialNumber=<subject_serial> when given,
 * emailAddress=<email>, and the
 * extensions of DESIGN section 4: basicConstraints CA:FALSE (critical),
 * keyUsage (critical), extendedKeyUsage emailProtection, subjectAltName
 * rfc822Name, SKI, AKI (keyid), crlDistributionPoints, and
 * authorityInfoAccess (OCSP, caIssuers) when those URLs are given.
 */
int ca_issue(const struct ca *ca, const struct ca_issue_req *req, X509 **out);

/*
 * Issue a signing certificate for a user's own CSR: checks the CSR's
 * self-signature, takes the address from its requested SAN rfc822Name
 * (else subject emailAddress) and its key (RSA >= 2048, P-256/P-384).
 * *email_out (malloc'd) is the address found, for the caller to check
 * against the addresses we manage.  KMS_ERR_INVALID with a clear detail
 * on a bad CSR.
 */
int ca_issue_csr(const struct ca *ca, X509_REQ *csr, int days, const char *crl_url, const char *crl_ldap_url,
    X509 **out, char **email_out);
/* The same with the AIA URLs (either may be NULL). */
int ca_issue_csr_aia(const struct ca *ca, X509_REQ *csr, int days, const char *crl_url, const char *crl_ldap_url,
    const char *ocsp_url, const char *issuer_url, X509 **out, char **email_out);

/* Lowercase hex of a serial, no leading zeros (the certs table key). */
char *ca_serial_hex(const ASN1_INTEGER *serial);
/* Lowercase hex SHA-256 of a certificate's DER. */
char *ca_cert_fingerprint(X509 *cert);
/* First rfc822Name of the SAN, else subject emailAddress; malloc'd or NULL. */
char *ca_cert_email(X509 *cert);

/* =================================================================== certs */

struct ca_cert_row {
	char *serial;          /* lowercase hex */
	char *email;
	char *name;
	char *usage;           /* "sign", "enc", "krk" */
	char *key_type;
	char *origin;          /* "enroll", "csr", "init" */
	char *subject;         /* one-line RFC 2253 */
	char *issued_by;       /* user who ran the command */
	time_t not_before, not_after, issued;
	time_t revoked_at;     /* 0 when not revoked */
	int reason;            /* RFC 5280 CRLReason, -1 when not revoked */
	time_t invalidity;     /* 0 when not given */
	unsigned char *der;
	size_t der_len;
};
void ca_cert_rows_free(struct ca_cert_row *rows, size_t n);

/* Insert an issued certificate (within the caller's transaction if one is open). */
int ca_store_add_cert(struct kms_store *st, X509 *cert, const char *email, const char *name,
    enum ca_usage usage, const char *origin, const char *issued_by);
/*
 * Rows for an address (all of its certificates, newest first) or for one
 * serial (hex, any case, optional colons).  KMS_ERR_NOTFOUND if none.
 */
int ca_store_find(struct kms_store *st, const char *email_or_serial, struct ca_cert_row **rows, size_t *n);
/* All rows (revoked_only: revoked ones), ordered by email then issue time. */
int ca_store_list(struct kms_store *st, int revoked_only, struct ca_cert_row **rows, size_t *n);
/* 1 if email has an unrevoked, unexpired certificate at now, 0 if not. */
int ca_store_has_valid(struct kms_store *st, const char *email, time_t now);
/*
 * The display name (CN) of email's newest enrolled certificate, which a
 * renewal keeps when no new one is given; *name malloc'd.
 * KMS_ERR_NOTFOUND when the address was never enrolled under a name.
 */
int ca_store_display_name(struct kms_store *st, const char *email, char **name);
/*
 * The address's current certificates at now: the newest unrevoked signing
 * and encryption certificates inside their validity (each NULL when there
 * is none; get1).  name (may be NULL) gets the name they were issued under
 * (malloc'd, NULL if none).  0 also for an unknown address.
 */
int ca_store_current(struct kms_store *st, const char *email, time_t now, X509 **sign, X509 **enc, char **name);
/* Does the store know this address at all (any certificate)?  1 or 0. */
int ca_store_knows_email(struct kms_store *st, const char *email);
/* What kmsctl status shows: users, their certificates (not the KRK's), revoked ones (-1 each on error). */
struct ca_counts {
	long long users, certificates, revoked;
};
int ca_store_counts(struct kms_store *st, struct ca_counts *c);
/* Find an issued certificate by issuer-and-serial or by SKI (either may be NULL); *out get1. */
int ca_store_find_cert(struct kms_store *st, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const ASN1_OCTET_STRING *skid, X509 **out);

/* ============================================================== revocation */

/* RFC 5280 CRLReason names ("keyCompromise", ...) and codes. */
int ca_reason_from_name(const char *name);      /* code, or -1 if unknown */
const char *ca_reason_name(int code);           /* "unspecified" for unknown */

/*
 * Revoke one certificate by serial.  *already is set to 1 (and nothing
 * changes) if it was revoked before.  Within the caller's transaction.
 */
int ca_store_revoke(struct kms_store *st, const char *serial, time_t when, int reason,
    time_t invalidity, int *already);

/* What ca_revoke_target did, row by row. */
enum ca_revoke_outcome { CA_REVOKE_SKIPPED = 0, CA_REVOKE_DONE, CA_REVOKE_ALREADY };
struct ca_revoke_result {
	struct ca_cert_row *rows;       /* every row the target named */
	size_t n;
	enum ca_revoke_outcome *outcome;        /* one per row */
	size_t nrevoked, nalready;
};
void ca_revoke_result_free(struct ca_revoke_result *r);
/*
 * Revoke what an address or a serial names, in one transaction of its
 * own: by address, the user's certificates that are still valid (expired
 * ones are left alone); by serial, that certificate.  The key-recovery
 * key is never revoked here (KMS_ERR_INVALID: it is replaced with escrow
 * rotate).  KMS_ERR_NOTFOUND when the target names no certificate.  On
 * failure nothing is revoked.
 */
int ca_revoke_target(struct kms_store *st, const char *target, time_t now, int reason, time_t invalidity,
    struct ca_revoke_result *res);

/* ===================================================================== CRL */

struct ca_crl_opts {
	int next_update_hours;
	int delta;                  /* also make a delta CRL */
	const char *full_url;       /* the full CRL's URL (IDP; base for Freshest CRL) */
	const char *delta_url;      /* Freshest CRL pointer in the full CRL; NULL if no delta */
};

struct ca_crl_set {
	unsigned char *full_der;    /* the full CRL */
	size_t full_len;
	long long full_number;
	unsigned char *delta_der;   /* the delta, NULL without opts.delta */
	size_t delta_len;
	long long delta_number;
	time_t this_update, next_update;
};
void ca_crl_set_free(struct ca_crl_set *set);

/*
 * Build and sign a new full CRL (and delta) from the store: the next CRL
 * number (monotonic, shared by full and delta), AKI, one entry per revoked
 * unexpired certificate with reason code and invalidity date, thisUpdate
 * now, nextUpdate now + hours.  Records the CRLs in the crls table.  The
 * delta lists the revocations since the previous full CRL, carries the
 * Delta CRL Indicator naming that base.  Runs its own transaction.
 */
int ca_crl_issue(struct kms_store *st, const struct ca *ca, const struct ca_crl_opts *opts, struct ca_crl_set **out);
/* The newest CRLs in the store (NOTFOUND if none yet). */
int ca_crl_latest(struct kms_store *st, struct ca_crl_set **out);
/*
 * Write <dir>/<name>.crl (DER), <dir>/<name>.crl.pem, and the delta as
 * <name>-delta.crl/.crl.pem, and the CA certificate as <name>.crt and
 * <name>.crt.pem, each atomically.
 */
int ca_crl_publish(const char *dir, const char *name, const struct ca_crl_set *set, X509 *ca_cert);

/* ------------------------------------------------- CRLs from elsewhere */

/* Bound on a fetched or read CRL. */
#define CA_CRL_FETCH_MAX (64 * 1024 * 1024)

/*
 * Get a CRL (DER or PEM) from an http:// or https:// URL, or from a local
 * file (a path or file://).  after >= 0 asks our own distribution point to
 * long-poll (GET url?after=N: answered when a CRL numbered above N exists,
 * else 304 after its timeout); -1 for a plain GET.  timeout bounds the
 * whole transfer in seconds; max bounds the size (0: CA_CRL_FETCH_MAX).
 * cancel (may be NULL) is polled during the transfer: when it reads
 * non-zero the fetch stops with KMS_ERR_STATE.  0 with *crl set; 0 with
 * *crl NULL when the server answered 304.  der (may be NULL) receives the CRL's DER (malloc'd).  Errors: KMS_ERR_IO
 * (connection), KMS_ERR_TIMEOUT, KMS_ERR_TOOBIG, KMS_ERR_NOTFOUND (404 or
 * no file), KMS_ERR_PROTO (other HTTP status), KMS_ERR_CORRUPT (not a CRL).
 * The signature is not checked here: see ca_crl_check().
 */
int ca_crl_fetch(const char *url, int timeout, long long after, size_t max, const int *cancel,
    X509_CRL **crl, unsigned char **der, size_t *derlen);
/* Validators for a conditional GET: sent when set, and those of the answer kept. */
struct ca_fetch_cond {
	const char *etag;               /* If-None-Match; NULL or "" for none */
	const char *last_modified;      /* If-Modified-Since; NULL or "" for none */
	char etag_out[256];             /* the answer's ETag, "" if none (or unusable) */
	char last_modified_out[64];     /* the answer's Last-Modified, "" if none */
};
/* ca_crl_fetch() with validators (cond may be NULL); 0 with *crl NULL on 304 Not Modified. */
int ca_crl_fetch_cond(const char *url, int timeout, long long after, size_t max, const int *cancel,
    struct ca_fetch_cond *cond, X509_CRL **crl, unsigned char **der, size_t *derlen);
/* GET an http(s) URL: 0 with the body (malloc'd) on 200; KMS_ERR_NOTFOUND on 404, else as ca_crl_fetch. */
int ca_http_get(const char *url, int timeout, size_t max, unsigned char **body, size_t *len);
/* Parse DER or PEM (KMS_ERR_CORRUPT if neither). */
int ca_crl_parse(const unsigned char *buf, size_t len, X509_CRL **out);
/* The CRL number extension, or -1 if absent. */
long long ca_crl_number(X509_CRL *crl);
/*
 * Check a CRL against its CA certificate: issuer name, cRLSign key usage,
 * signature, no unknown critical extension, thisUpdate not in the future.
 * *stale is 1 when nextUpdate has passed (the CRL is still usable).
 * KMS_ERR_CORRUPT with the reason otherwise.
 */
int ca_crl_check(X509_CRL *crl, X509 *issuer, time_t now, int *stale);
/* Read every certificate of a PEM file (trust anchors for CRLs). */
int ca_crl_load_cas(const char *path, STACK_OF(X509) **out);
/* Find which of cas issued crl and check it (ca_crl_check); *issuer get0. */
int ca_crl_find_issuer(X509_CRL *crl, STACK_OF(X509) *cas, time_t now, X509 **issuer, int *stale);
/*
 * Write crl as <dir>/<name> (DER) and <dir>/<name>.pem, each atomically.
 * With issuer, refuses (KMS_ERR_STATE) to replace a good copy of the same
 * CA's CRL that has a higher CRL number (a replayed old CRL).
 */
int ca_crl_save(const char *dir, const char *name, X509_CRL *crl, X509 *issuer);
/* The local file name for a CRL URL: its last path segment, cleaned, ending in ".crl". */
int ca_crl_file_name(const char *url, char *out, size_t outlen);
/*
 * kmsctl crl fetch URL --ca CAFILE --out DIR: fetch, check against cas
 * (refusing a bad signature and a CRL past its nextUpdate), and replace
 * <dir>/<name>.crl and .crl.pem atomically.  On any failure the files in
 * dir are left as they were (the last good copy).  *number is the new
 * CRL's number.
 */
int ca_crl_fetch_to_dir(const char *url, STACK_OF(X509) *cas, const char *dir, int timeout, long long *number);

/* ------------------------------- CRLs of any CA, checked as RFC 5280 6.3 says */

#define CA_CRL_COVERS_USER 1    /* end-entity certificates */
#define CA_CRL_COVERS_CA 2      /* CA certificates */

/* What a validated CRL says about itself. */
struct ca_crl_meta {
	int covers;                 /* CA_CRL_COVERS_* from the issuing distribution point (both without one) */
	int some_reasons;           /* onlySomeReasons: lists revocations but gives no complete status */
	int indirect;               /* indirectCRL: entries may name another certificate issuer */
	int delta;                  /* a delta CRL on top of base */
	long long number;           /* CRL number, -1 when absent */
	long long base;             /* delta: the BaseCRLNumber; -1 otherwise */
	char **dp_names;            /* IDP distribution point URIs (NULL-terminated); NULL: not partitioned */
	time_t this_update, next_update;        /* next_update 0 when absent */
};
void ca_crl_meta_clear(struct ca_crl_meta *m);

/*
 * Validate crl against candidate signers the caller already trusts (trust
 * anchors, or CA certificates of a validated chain): the signer's subject
 * is the CRL issuer (and its SKI the CRL's AKI when both are present), it
 * may sign CRLs (keyUsage cRLSign; a CA when it has no keyUsage), the
 * signature verifies, no unknown critical extension on the CRL or an
 * entry, the issuing distribution point covers public-key certificates,
 * thisUpdate is not in the future.  0 with *signer (borrowed from cands)
 * and *meta filled; KMS_ERR_EXPIRED with both filled when the CRL is past
 * its nextUpdate (its entries still count, its coverage no longer does);
 * KMS_ERR_NOTFOUND when no candidate is its issuer; KMS_ERR_CORRUPT with
 * the reason otherwise.
 */
int ca_crl_validate(X509_CRL *crl, STACK_OF(X509) *cands, time_t now, X509 **signer, struct ca_crl_meta *meta);
/*
 * The same with candidates from trust anchors (trusted as they are) and
 * intermediates (each used only when it has a valid path to an anchor at
 * now).  *signer is borrowed from anchors or inter.
 */
int ca_crl_validate_chain(X509_CRL *crl, X509_STORE *anchors, STACK_OF(X509) *inter, time_t now,
    X509 **signer, struct ca_crl_meta *meta);
#define CA_URL_HTTP 1            /* http:// */
#define CA_URL_LDAP 2            /* ldap:// and ldaps:// */
/*
 * The URIs of cert's CRL distribution points that give the whole status
 * (no reasons field), of the schemes given (CA_URL_*; 0: any).  *out
 * NULL-terminated (kms_strv_free), NULL when there are none.
 */
int ca_cert_crl_urls(X509 *cert, int schemes, char ***out);
/* The same for the delta CRLs a certificate's Freshest CRL extension names. */
int ca_cert_delta_urls(X509 *cert, int schemes, char ***out);
/* The same for the delta CRLs a (base) CRL's Freshest CRL extension names. */
int ca_crl_delta_urls(X509_CRL *crl, int schemes, char ***out);

/* ------------------------------------------------------------ trust anchors */

/* Append every PEM certificate of path to out (*n: how many; may be NULL); KMS_ERR_INVALID if none. */
int ca_certs_load_file(const char *path, STACK_OF(X509) *out, int *n);
/* Trust every certificate of a PEM file ([milter] trust_file). */
int ca_trust_add_file(X509_STORE *store, const char *path);
/* Trust every certificate of each *.pem and *.crt file in dir ([milter] trust_dir); *nfiles may be NULL. */
int ca_trust_add_dir(X509_STORE *store, const char *dir, int *nfiles);
/* Trust the system's CA store (OpenSSL's default bundle and directory; [milter] use_system_store). */
int ca_trust_add_system(X509_STORE *store);

/* ============================================================ revocation index */

struct ca_rev_info {
	time_t revoked_at;
	int reason;             /* RFC 5280 code */
	time_t invalidity;      /* 0 when not given */
	int stale;              /* the list it came from is past its nextUpdate */
};

/*
 * An immutable snapshot of revoked (issuer, serial) pairs.  Lookups cost
 * the same at 10 and at 1,000,000 entries and never check a signature.
 * Snapshots are reference counted: readers take one, use it, drop it.
 */
struct ca_revidx;

struct ca_revidx_builder;
int ca_revidx_builder_new(struct ca_revidx_builder **out);
void ca_revidx_builder_free(struct ca_revidx_builder *b);
/* Add every revoked certificate of our own CA from the store. */
int ca_revidx_add_store(struct ca_revidx_builder *b, struct kms_store *st, X509 *ca_cert);
/*
 * Add a CRL after checking its signature against issuer (once, here) and
 * its validity; a CRL past nextUpdate is added with every entry marked
 * stale.  KMS_ERR_CORRUPT for a bad signature (nothing added).
 */
int ca_revidx_add_crl(struct ca_revidx_builder *b, X509_CRL *crl, X509 *issuer, time_t now);
/*
 * Add a CRL that ca_crl_check() accepted earlier (a kept last good copy):
 * no second signature check; entries marked stale if now is past its
 * nextUpdate.
 */
int ca_revidx_add_checked_crl(struct ca_revidx_builder *b, X509_CRL *crl, time_t now);
/* Note that the issuer's revocation data is stale (kept last good copy). */
int ca_revidx_mark_stale(struct ca_revidx_builder *b, const X509_NAME *issuer);
int ca_revidx_build(struct ca_revidx_builder *b, struct ca_revidx **out);
/*
 * Add a CRL that ca_crl_validate() accepted (meta from it), with an
 * optional delta CRL (validated, dmeta) on top of it: the delta's entries
 * win over the base's, its removeFromCRL entries take certificates off,
 * and it counts only when its BaseCRLNumber is at most the base's number
 * and both have the same scope.  An indirect CRL's entries go under the
 * certificate issuer they name (each certificateIssuer holding until the
 * next), and count only for certificates whose distribution point names
 * the CRL's issuer as cRLIssuer (RFC 5280 6.3.3).  Coverage (what the CRL establishes as
 * good) follows meta->covers and dp_names; an expired CRL (or delta)
 * adds its entries marked stale and no coverage.
 */
int ca_revidx_add_valid(struct ca_revidx_builder *b, X509_CRL *crl, const struct ca_crl_meta *meta,
    X509_CRL *delta, const struct ca_crl_meta *dmeta, time_t now);


/* 1 revoked (info filled), 0 not revoked. */
int ca_revidx_lookup(const struct ca_revidx *idx, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    struct ca_rev_info *info);
/* Is any revocation data for this issuer loaded, and is it stale?  -1 none, 0 fresh, 1 stale. */
int ca_revidx_issuer_state(const struct ca_revidx *idx, const X509_NAME *issuer);
size_t ca_revidx_count(const struct ca_revidx *idx);
/*
 * Each snapshot's own number, larger than that of every snapshot made
 * before it in this process (0 for NULL): caches of results that depend
 * on revocation data key on it.
 */
unsigned long ca_revidx_generation(const struct ca_revidx *idx);
/*
 * The revocation status of cert (issued by the CA named as its issuer):
 * 1 revoked (info filled), 0 not revoked by a CRL that covers it (right
 * kind of certificate, right distribution point, not expired), -1 unknown
 * (no such CRL: none loaded yet, expired (info->stale 1), or only ones
 * that do not cover it).  An indirect CRL speaks for cert only when one of
 * its distribution points names that CRL's issuer as cRLIssuer (and, for
 * a partitioned one, names its distribution point).  No signature check,
 * the same cost at any size.
 */
int ca_revidx_check(const struct ca_revidx *idx, X509 *cert, struct ca_rev_info *info);
/*
 * A new snapshot equal to base plus one more revoked entry, sharing base's
 * bulk: O(entries added since base's bulk), so a revocation is visible to
 * the next lookup without a full rebuild.
 */
int ca_revidx_with(const struct ca_revidx *base, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const struct ca_rev_info *info, struct ca_revidx **out);
struct ca_revidx *ca_revidx_ref(struct ca_revidx *idx);
void ca_revidx_unref(struct ca_revidx *idx);

/*
 * The current snapshot, swapped atomically.  Readers never wait for a
 * rebuild: get takes a reference under a short lock; set replaces it.
 */
struct ca_revholder;
int ca_revholder_new(struct ca_revholder **out);
void ca_revholder_free(struct ca_revholder *h);
struct ca_revidx *ca_revholder_get(struct ca_revholder *h);     /* get1; NULL if none */
void ca_revholder_set(struct ca_revholder *h, struct ca_revidx *idx);   /* takes the reference */

/* ================================================= userSMIMECertificate */

/*
 * The directory's userSMIMECertificate value (ca/smime.c): a SignedData
 * with no content, signed by the user's signing key (scert, skey), holding
 * scert, ecert and ca_cert (may be NULL), with signed SMIMECapabilities and
 * SMIMEEncryptionKeyPreference naming ecert.  *der (OpenSSL's allocator)
 * and *len.
 */
int ca_smime_signed_der(X509 *scert, EVP_PKEY *skey, X509 *ecert, X509 *ca_cert, unsigned char **der, int *len);
/* Keep it with the signing certificate (caller's transaction, if open). */
int ca_store_put_smime(struct kms_store *st, X509 *scert, const unsigned char *der, size_t len);
/* The value kept for scert: *der (OpenSSL's allocator), or KMS_ERR_NOTFOUND. */
int ca_store_get_smime(struct kms_store *st, X509 *scert, unsigned char **der, size_t *len);

/* ======================================================= publication queue */

/*
 * Entries of the LDAP directory waiting to be rewritten (ca/pubq.c), kept
 * in the store.  Triggers queue ("user", address) when a certificate is
 * issued to or revoked for that address and ("ca", "") when a full CRL is
 * recorded, in the same transaction, while publishing is on.  One row per
 * entry: a newer change replaces the row with a higher seq.
 */
#define CA_PUBQ_USER "user"
#define CA_PUBQ_CA "ca"

struct ca_pubq_item {
	long long seq;          /* delivery order */
	char kind[8];           /* CA_PUBQ_USER or CA_PUBQ_CA */
	char *key;              /* the address; "" for the CA */
	time_t queued;
	int attempts;           /* failed deliveries so far */
	char *last_error;       /* NULL if none */
};
void ca_pubq_items_free(struct ca_pubq_item *items, size_t n);

struct ca_pubq_stats {
	long long length;       /* rows waiting */
	time_t oldest;          /* queue time of the oldest, 0 if none */
	long long retrying;     /* rows that failed at least once */
	int enabled;            /* publishing on in this store */
};

/*
 * Turn queueing on or off for this store (meta "pubq.on").  Turning it on
 * queues every entry (*newly = 1): changes made while it was off never
 * reached the directory.  Turning it off empties the queue.
 */
int ca_pubq_set_enabled(struct kms_store *st, int on, int *newly);
/* Queue one entry (kind CA_PUBQ_USER with an address, or CA_PUBQ_CA with ""); caller's transaction if open. */
int ca_pubq_add(struct kms_store *st, const char *kind, const char *key);
/* Up to max rows due at now (next_try <= now), in seq order; *items to free with ca_pubq_items_free. */
int ca_pubq_next(struct kms_store *st, time_t now, size_t max, struct ca_pubq_item **items, size_t *n);
/* Remove delivered rows by seq (one transaction); a row re-queued since has a new seq and stays. */
int ca_pubq_done(struct kms_store *st, const long long *seqs, size_t n);
/* Count a failed delivery of row seq: not tried again before next_try; error kept for status. */
int ca_pubq_defer(struct kms_store *st, long long seq, time_t next_try, const char *error);
int ca_pubq_stats(struct kms_store *st, struct ca_pubq_stats *out);
/* Queue the CA and every address that ever had a certificate (kmsctl publish resync). */
int ca_pubq_resync(struct kms_store *st);
/*
 * Queue every address with a certificate that expired (unrevoked) since
 * the last sweep and up to now; *queued is how many.
 */
int ca_pubq_sweep_expired(struct kms_store *st, time_t now, long long *queued);

/* ==================================================================== OCSP */

/*
 * The serial numbers our CA issued, in memory (flat lookup cost), so that
 * OCSP can answer "unknown" for serials we never issued.  Thread-safe:
 * lookups share a read lock, additions take the write lock.
 */
struct ca_serialset;
int ca_serialset_new(struct ca_serialset **out);
void ca_serialset_free(struct ca_serialset *set);
/* Add one serial (KMS_ERR_INVALID for a negative or over-long one). */
int ca_serialset_add(struct ca_serialset *set, const ASN1_INTEGER *serial);
/* Add every serial of the certs table. */
int ca_serialset_add_store(struct ca_serialset *set, struct kms_store *st);
/* 1 if present, 0 if not. */
int ca_serialset_has(struct ca_serialset *set, const ASN1_INTEGER *serial);
size_t ca_serialset_count(struct ca_serialset *set);

/*
 * The delegated OCSP signer (RFC 6960 4.2.2.2): a certificate issued by ca
 * for pubkey, valid lifetime seconds (1 h to 90 days, never past the CA),
 * with keyUsage digitalSignature, extKeyUsage id-kp-OCSPSigning and
 * id-pkix-ocsp-nocheck.
 */
int ca_ocsp_issue_signer(const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out);
/* Keep the signer in the store, its key encrypted like the CA key (ca_key_encrypt). */
int ca_ocsp_signer_save(struct kms_store *st, X509 *cert, EVP_PKEY *key, const char *passphrase);
/*
 * Load the stored signer, checking that ca_cert (may be NULL) issued it and
 * that the key is its own.  KMS_ERR_NOTFOUND when there is none,
 * KMS_ERR_PERM on a wrong passphrase, KMS_ERR_STATE if another CA issued it.
 */
int ca_ocsp_signer_load(struct kms_store *st, X509 *ca_cert, const char *passphrase, X509 **cert, EVP_PKEY **key);
/* Lowercase hex SHA-256 of a public key's SubjectPublicKeyInfo (names a replica's signer); malloc'd. */
char *ca_key_fingerprint(EVP_PKEY *key);
/*
 * Is cert a delegated OCSP signer that ca_cert issued for key, valid at
 * now?  0, or KMS_ERR_INVALID saying why not.
 */
int ca_ocsp_signer_check(X509 *cert, X509 *ca_cert, EVP_PKEY *key, time_t now);
/*
 * A replica's own signer key, kept in its store encrypted under passphrase
 * (made on first use).  The certificate for it comes from the primary.
 */
int ca_ocsp_replica_key(struct kms_store *st, const char *passphrase, const char *key_type, EVP_PKEY **out,
    int *created);
/*
 * A replica's signer certificate kept in the store (PEM in the meta table):
 * on the primary under the replica key's fingerprint fp (64 lowercase hex
 * digits), on the replica itself with fp NULL.  Load: KMS_ERR_NOTFOUND when
 * none is kept; the caller checks it (ca_ocsp_signer_check).
 */
int ca_ocsp_replica_cert_save(struct kms_store *st, const char *fp, X509 *cert);
int ca_ocsp_replica_cert_load(struct kms_store *st, const char *fp, X509 **out);
/* 1 when cert should be replaced now: past half of lifetime, or issued for a longer one. */
int ca_ocsp_signer_due(X509 *cert, long lifetime, time_t now);
/*
 * The signer to use from now on: the stored one while it is not due,
 * else a new key of key_type and a new certificate, saved.  *renewed tells
 * which.  Needs ca's key only when it issues.
 */
int ca_ocsp_signer_ensure(struct kms_store *st, const struct ca *ca, const char *passphrase, const char *key_type,
    long lifetime, time_t now, X509 **cert, EVP_PKEY **key, int *renewed);

/* ------------------------------------------ audit checkpoints (audit_ckpt.c, audit_verify.c) */

/*
 * The audit signer: a delegated signer issued by ca for pubkey (subject
 * "<O> Audit Signer", keyUsage digitalSignature only, no extKeyUsage, no
 * subjectAltName), valid lifetime seconds (1 h to 90 days).  Kept in meta
 * (audit_signer_cert, audit_signer_key), the key encrypted like the CA key.
 */
int ca_audit_issue_signer(const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out);
/* As ca_ocsp_signer_ensure(), for the audit signer. */
int ca_audit_signer_ensure(struct kms_store *st, const struct ca *ca, const char *passphrase, const char *key_type,
    long lifetime, time_t now, X509 **cert, EVP_PKEY **key, int *renewed);
/* 1 when the audit signer cert should be renewed now (as ca_ocsp_signer_due()). */
int ca_audit_signer_due(X509 *cert, long lifetime, time_t now);
/*
 * Is cert an audit signer that ca_cert issued (signature, subject and
 * profile), valid at t?  0, or KMS_ERR_INVALID saying why not.
 */
int ca_audit_signer_check(X509 *cert, X509 *ca_cert, time_t t);

/* A checkpoint: row seq of the audit chain had hash head at time; numbered 1, 2, ... */
struct ca_audit_ckpt {
	long long no;
	long long seq;
	char head[65];
	time_t time;
};
/* Sign ck with key (*sig OPENSSL_malloc'd, the caller's). */
int ca_audit_ckpt_sign(const struct ca_audit_ckpt *ck, EVP_PKEY *key, unsigned char **sig, size_t *siglen);
/* 1 when sig is pub's signature of exactly ck, else 0. */
int ca_audit_ckpt_check_sig(const struct ca_audit_ckpt *ck, EVP_PKEY *pub, const unsigned char *sig, size_t siglen);
/*
 * Sign the next checkpoint over the chain's head with (cert, key) when one
 * is due: at once when there is none yet, else every_rows rows or interval
 * seconds after the last, and only when rows were added since.  *known is
 * the checkpoint the caller signed or verified last ({0} at first): unless
 * the store's newest checkpoint is exactly it, over the same chain,
 * nothing is signed and KMS_ERR_CORRUPT says why (checkpoints deleted or
 * rows rewritten behind the caller's back).  On a new checkpoint, *made
 * and *known are it; made->no is 0 when none was due.
 */
int ca_audit_checkpoint(struct kms_store *st, X509 *cert, EVP_PKEY *key, struct ca_audit_ckpt *known,
    long long every_rows, long long interval, time_t now, struct ca_audit_ckpt *made);

/* What ca_audit_verify() found. */
struct ca_audit_report {
	long long rows;             /* rows in the trail */
	long long checkpoints;      /* signed checkpoints verified */
	struct ca_audit_ckpt last;  /* the newest checkpoint, no 0 for none */
	long long unsigned_rows;    /* rows after last.seq */
	long long bad_seq;          /* on KMS_ERR_CORRUPT: first row that may be bad, 0 if none */
	long long bad_checkpoint;   /* on KMS_ERR_CORRUPT: the checkpoint at fault, 0 if none */
};
/*
 * Verify the audit trail: the hash chain and recorded head
 * (kms_audit_verify), then, when ca_cert is given, every checkpoint in
 * order (no gaps, issued by ca_cert to an audit signer valid at its time,
 * signature, and the chain's hash at its row equal to the one it signed),
 * that known (may be NULL) is still there, and that no more than
 * 2 * every_rows rows older than 2 * interval seconds follow the last one
 * (every_rows 0 skips that).  0, or KMS_ERR_CORRUPT with a message naming
 * the first bad row or checkpoint (also in rep).
 */
int ca_audit_verify(struct kms_store *st, X509 *ca_cert, const struct ca_audit_ckpt *known, long long every_rows,
    long long interval, time_t now, struct ca_audit_report *rep);

struct ca_ocsp_opts {
	long validity;          /* seconds from thisUpdate to nextUpdate ([ocsp] validity) */
	size_t max_request;     /* bytes of one DER request */
	size_t max_certids;     /* CertIDs in one request */
	size_t cache_max;       /* pre-signed responses kept (0: none) */
	int know_issued;        /* 1: "unknown" for serials never issued (the primary); 0: a replica that
	                         * knows only the CRL answers "good" for any serial not revoked */
};

/* An encoded OCSPResponse, immutable and reference counted. */
struct ca_ocsp_blob {
	_Atomic long refs;
	unsigned char *der;
	size_t len;
	int status;             /* OCSPResponseStatus: 0 successful, 1 malformedRequest, ... */
	int cert_status;        /* one CertID: V_OCSP_CERTSTATUS_*; else -1 */
	int http_cacheable;     /* no nonce: HTTP caches may keep it until next_update */
	time_t produced, next_update;
	unsigned gen;
	char etag[40];          /* quoted strong validator */
};
void ca_ocsp_blob_unref(struct ca_ocsp_blob *b);

/*
 * The responder for one CA.  Thread-safe: ca_ocsp_respond() runs in many
 * threads at once while the signer is replaced and serials are added.
 */
struct ca_ocsp;
int ca_ocsp_new(X509 *ca_cert, const struct ca_ocsp_opts *opts, struct ca_ocsp **out);
void ca_ocsp_free(struct ca_ocsp *r);
/* Sign with cert/key (issued by the CA; both up-ref'd) from now on; empties the cache. */
int ca_ocsp_set_signer(struct ca_ocsp *r, X509 *cert, EVP_PKEY *key);
/* Note a newly issued serial; with know_issued 0 a no-op. */
int ca_ocsp_add_issued(struct ca_ocsp *r, const ASN1_INTEGER *serial);
/* Load every issued serial of the store. */
int ca_ocsp_load_issued(struct ca_ocsp *r, struct kms_store *st);
/*
 * Answer a DER OCSPRequest at time now from idx: one SingleResponse per
 * CertID (good, revoked with time and reason, or unknown), the nonce echoed.
 * Malformed input, too many CertIDs or a request over max_request give
 * malformedRequest; CertIDs none of which names our CA give unauthorized;
 * no revocation data, stale data or no signer give tryLater.  0 with *out
 * (get1; an error status is still a response to send), or an error only
 * when out of memory.
 */
int ca_ocsp_respond(struct ca_ocsp *r, const struct ca_revidx *idx, const unsigned char *in, size_t len, time_t now,
    struct ca_ocsp_blob **out);
/* Responses in the cache now. */
size_t ca_ocsp_cached(struct ca_ocsp *r);

/* ================================================================= PKCS#12 */

enum ca_p12_format {
	CA_P12_MODERN = 0,   /* AES-256-CBC + PBKDF2-SHA256 for keys and certs, SHA-256 MAC */
	CA_P12_COMPAT,       /* pbeWithSHAAnd3-KeyTripleDES-CBC keys, plain certs, SHA-1 MAC (gpgsm 2.2) */
};
int ca_p12_format_from_name(const char *name, enum ca_p12_format *out);

struct ca_p12_item {
	EVP_PKEY *key;              /* borrowed; NULL for a certificate without key */
	X509 *cert;                 /* borrowed */
	const char *friendly_name;  /* shown by mail clients */
};

/*
 * Build a PKCS#12 holding every item (key and certificate linked by a
 * localKeyID) and the chain certificates, under password.
 * *der is malloc'd.  CA_P12_COMPAT: gpgsm 2.2 imports every certificate
 * but only the first item's key, only RSA keys (it crashes on EC ones),
 * and only passwords of at most 31 bytes (longer ones are refused here
 * with KMS_ERR_INVALID).
 */
int ca_p12_build(const struct ca_p12_item *items, size_t n, STACK_OF(X509) *chain, const char *password,
    enum ca_p12_format fmt, int iterations, unsigned char **der, size_t *len);

struct ca_p12_contents {
	EVP_PKEY **keys;            /* keys[i] belongs to certs[i] (NULL if none) */
	X509 **certs;
	char **names;               /* friendly names (may be NULL entries) */
	size_t n;
	STACK_OF(X509) *others;     /* certificates without a key (chain) */
};
void ca_p12_contents_free(struct ca_p12_contents *c);
/*
 * Read every key and certificate of a PKCS#12 (KMS_ERR_PERM: wrong
 * password).  A certificate with a key, or with a friendly name, is an
 * item (keys[i] NULL when it has no key); bare certificates go to others.
 */
int ca_p12_read(const unsigned char *der, size_t len, const char *password, struct ca_p12_contents **out);

#endif /* KMS_CA_H */
