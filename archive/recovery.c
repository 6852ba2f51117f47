/*
 * recovery.c - what happens to the key-recovery key (KRK) and the escrowed
 * keys: writing a KRK's share files, rebuilding the KRK from shares,
 * recovering a user's escrowed keys, and rotating to a new KRK.
 *
 * Entry points: esc_share_files_write(), esc_share_files_remove(), esc_krk_new(),
 * esc_share_files_free(), esc_krk_rebuild(), esc_recover_user(),
 * esc_recover_keys() (the whole recovery sequence), esc_recovered_p12(),
 * esc_recovered_free(), esc_krk_rotate().
 *
 * kmsd (recover approve, escrow rotate) and kmsctl (recover --offline)
 * both run the same sequence through these functions: rebuild the KRK,
 * check it against its certificate, unwrap each key and check it against
 * its certificate.  The rebuilt KRK is the caller's to free at once.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "archive/archive.h"

/* Officer passphrases for share files: fewer characters are refused. */
#define MIN_SHARE_PASSPHRASE 8

void
esc_share_files_remove(struct esc_share_files *sf)
{
	for (int i = 0; sf->names && i < sf->n; i++)
		if (sf->names[i])
			kms_unlink_at(sf->dirfd, sf->names[i]);
}

void
esc_share_files_free(struct esc_share_files *sf)
{
	for (int i = 0; i < sf->n; i++) {
		if (sf->paths)
			free(sf->paths[i]);
		if (sf->names)
			free(sf->names[i]);
		if (sf->digests)
			free(sf->digests[i]);
	}
	free(sf->paths);
	free(sf->names);
	free(sf->digests);
	if (sf->dirfd > 0)
		close(sf->dirfd);
	memset(sf, 0, sizeof(*sf));
}

int
esc_share_dest_open(const char *dir, const char *pass_dir, uid_t requester, uid_t alt, struct esc_share_dest *d)
{
	char why[400];
	int rc;

	d->dirfd = d->passfd = -1;
	d->owner = requester;
	d->alt = alt;
	if ((rc = kms_dir_open_checked(dir, requester, alt, &d->dirfd)) != 0) {
		snprintf(why, sizeof(why), "%s", kms_last_error());
		return kms_fail(rc, "share directory: %s", why);
	}
	if (pass_dir != NULL && *pass_dir != '\0' && (rc = kms_dir_open_checked(pass_dir, requester, alt, &d->passfd)) != 0) {
		snprintf(why, sizeof(why), "%s", kms_last_error());
		esc_share_dest_close(d);
		return kms_fail(rc, "passphrase directory: %s", why);
	}
	return 0;
}

void
esc_share_dest_close(struct esc_share_dest *d)
{
	if (d->dirfd >= 0)
		close(d->dirfd);
	if (d->passfd >= 0)
		close(d->passfd);
	d->dirfd = d->passfd = -1;
}

/* The passphrase of share index from share-<index>.passphrase in d->passfd; *out secret. */
static int
share_passphrase(const struct esc_share_dest *d, const char *pass_dir, int index, char **out)
{
	char pname[64], why[300];
	int rc;

	*out = NULL;
	snprintf(pname, sizeof(pname), "share-%d.passphrase", index);
	if ((rc = kms_read_secret_file_at(d->passfd, pname, d->owner, d->alt, out)) != 0) {
		snprintf(why, sizeof(why), "%s", kms_last_error());
		return kms_fail(rc, "share %d: passphrase file in %s refused: %s", index, pass_dir, why);
	}
	if (strlen(*out) < MIN_SHARE_PASSPHRASE) {
		kms_secret_free(*out);
		*out = NULL;
		return kms_fail(KMS_ERR_INVALID, "share %d: passphrase shorter than %d characters", index,
		    MIN_SHARE_PASSPHRASE);
	}
	return 0;
}

/* Encode share i and write it to its own file in the destination. */
static int
share_file_write(const struct esc_share *share, const struct esc_share_meta *meta, const char *dir,
    const char *pass_dir, const struct esc_share_dest *d, const char *fp, int n, char **path, char **fname)
{
	char name[96], *text = NULL, *pass = NULL;
	size_t tlen = 0;
	int rc;

	*path = *fname = NULL;
	if (d->passfd >= 0 && (rc = share_passphrase(d, pass_dir, share->index, &pass)) != 0)
		return rc;
	rc = esc_share_encode(share, meta, pass, &text, &tlen);
	kms_secret_free(pass);
	if (rc != 0)
		return rc;
	snprintf(name, sizeof(name), "krk-%.8s-share-%d-of-%d.txt", fp, share->index, n);
	if ((*path = kms_path_join(dir, name)) == NULL || (*fname = strdup(name)) == NULL)
		rc = KMS_ERR_NOMEM;
	else
		rc = kms_write_file_at_excl(d->dirfd, name, d->owner, text, tlen, 0600);
	kms_wipe(text, tlen);
	free(text);
	if (rc != 0) {
		free(*path);
		free(*fname);
		*path = *fname = NULL;
	}
	return rc;
}

int
esc_share_files_write(EVP_PKEY *krk, X509 *krk_cert, int n, int m, const char *dir, const char *pass_dir,
    const struct esc_share_dest *dest, struct esc_share_files *sf)
{
	unsigned char *secret = NULL;
	size_t slen = 0;
	struct esc_share *shares = NULL;
	struct esc_share_dest own = { -1, -1, 0, (uid_t)-1 };
	char *fp = ca_cert_fingerprint(krk_cert);
	int rc;

	memset(sf, 0, sizeof(*sf));
	sf->dirfd = -1;
	if (n < 2 || n > ESC_MAX_SHARES || m < 2 || m > n) {
		rc = kms_fail(KMS_ERR_INVALID, "shares %d and threshold %d: need 2 <= threshold <= shares <= %d",
		    n, m, ESC_MAX_SHARES);
		goto out;
	}
	if (dest == NULL) {
		/* kmsd's own directory (the configured default): ours to make. */
		if ((rc = kms_mkdir_p(dir, 0700)) != 0 ||
		    (rc = esc_share_dest_open(dir, pass_dir, geteuid(), (uid_t)-1, &own)) != 0)
			goto out;
		dest = &own;
	}
	sf->paths = calloc((size_t)n, sizeof(char *));
	sf->names = calloc((size_t)n, sizeof(char *));
	sf->digests = calloc((size_t)n, sizeof(char *));
	if (sf->paths == NULL || sf->names == NULL || sf->digests == NULL || fp == NULL ||
	    (sf->dirfd = dup(dest->dirfd)) < 0) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	sf->n = n;
	if ((rc = esc_key_to_secret(krk, &secret, &slen)) != 0)
		goto out;
	if ((rc = esc_split(secret, slen, n, m, &shares)) != 0)
		goto out;
	for (int i = 0; i < n; i++) {
		struct esc_share_meta meta = { .index = shares[i].index, .threshold = m, .total = n };

		snprintf(meta.krk_fingerprint, sizeof(meta.krk_fingerprint), "%s", fp);
		if ((rc = share_file_write(&shares[i], &meta, dir, pass_dir, dest, fp, n, &sf->paths[i],
		    &sf->names[i])) != 0)
			goto out;
		if ((sf->digests[i] = esc_share_digest(&shares[i])) == NULL) {
			rc = KMS_ERR_NOMEM;
			goto out;
		}
	}
	rc = 0;
out:
	if (rc != 0) {
		esc_share_files_remove(sf);
		esc_share_files_free(sf);
	}
	esc_share_dest_close(&own);
	esc_shares_free(shares, (size_t)n);
	if (secret)
		OPENSSL_secure_clear_free(secret, slen);
	free(fp);
	return rc;
}

int
esc_krk_rebuild(const struct esc_share *shares, size_t n, X509 *krk_cert, EVP_PKEY **krk)
{
	unsigned char *secret = NULL;
	size_t len = 0;
	int rc;

	*krk = NULL;
	if ((rc = esc_combine(shares, n, &secret, &len)) != 0)
		return rc;
	rc = esc_key_from_secret(secret, len, krk);
	OPENSSL_secure_clear_free(secret, len);
	if (rc != 0 || !esc_key_matches_cert(*krk, krk_cert)) {
		EVP_PKEY_free(*krk);
		*krk = NULL;
		return kms_fail(KMS_ERR_CORRUPT, "the shares do not rebuild the key-recovery key "
		    "(a share is wrong); nothing was decrypted");
	}
	return 0;
}

void
esc_recovered_free(struct esc_recovered *r)
{
	for (size_t i = 0; i < r->n; i++) {
		EVP_PKEY_free(r->keys[i]);
		X509_free(r->certs[i]);
	}
	free(r->keys);
	free(r->certs);
	r->keys = NULL;
	r->certs = NULL;
	r->n = 0;
}

int
esc_recover_user(struct kms_store *st, const char *email, EVP_PKEY *krk, const struct esc_krk *krk_rec,
    struct esc_recovered *out)
{
	struct esc_entry *e = NULL;
	size_t n = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = esc_store_get_user(st, email, &e, &n)) != 0)
		return rc;
	out->keys = calloc(n, sizeof(*out->keys));
	out->certs = calloc(n, sizeof(*out->certs));
	if (out->keys == NULL || out->certs == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		EVP_PKEY *k = NULL;

		if (e[i].krk_id != krk_rec->id) {
			rc = kms_fail(KMS_ERR_STATE, "key %s is escrowed under another key-recovery key", e[i].serial);
			goto out;
		}
		if ((rc = esc_unwrap_key(krk, krk_rec->cert, e[i].envelope, e[i].len, &k)) != 0)
			goto out;
		if (!esc_key_matches_cert(k, e[i].cert)) {
			EVP_PKEY_free(k);
			rc = kms_fail(KMS_ERR_CORRUPT, "escrowed key %s does not match its certificate", e[i].serial);
			goto out;
		}
		X509_up_ref(e[i].cert);
		out->keys[out->n] = k;
		out->certs[out->n] = e[i].cert;
		out->n++;
	}
	rc = 0;
out:
	if (rc != 0)
		esc_recovered_free(out);
	esc_entries_free(e, n);
	return rc;
}

int
esc_recover_keys(struct kms_store *st, const struct esc_krk *krk_rec, const struct esc_share *shares,
    size_t n, const char *email, struct esc_recovered *out)
{
	EVP_PKEY *krk = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = esc_krk_rebuild(shares, n, krk_rec->cert, &krk)) != 0)
		return rc;
	rc = esc_recover_user(st, email, krk, krk_rec, out);
	EVP_PKEY_free(krk);         /* the rebuilt KRK is gone from here on */
	return rc;
}

/* "EMAIL (encryption, current, SERIAL)" for key i of a recovery. */
static char *
recovered_name(const char *email, X509 *cert, int current)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(cert));
	struct kms_buf b;

	kms_buf_init(&b, KMS_ADDR_MAX + 128);
	if (serial == NULL || kms_buf_appendf(&b, "%s (encryption%s, %s)", email, current ? ", current" : "",
	    serial) != 0) {
		free(serial);
		kms_buf_free(&b);
		return NULL;
	}
	free(serial);
	return kms_buf_steal(&b, NULL);
}

int
esc_recovered_p12(const struct esc_recovered *r, const char *email, X509 *ca_cert, const char *password,
    enum ca_p12_format fmt, int iterations, unsigned char **der, size_t *len)
{
	struct ca_p12_item *items = calloc(r->n ? r->n : 1, sizeof(*items));
	char **names = calloc(r->n ? r->n : 1, sizeof(*names));
	STACK_OF(X509) *chain = sk_X509_new_null();
	int rc;

	*der = NULL;
	*len = 0;
	if (items == NULL || names == NULL || chain == NULL || (ca_cert != NULL && !sk_X509_push(chain, ca_cert))) {
		rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < r->n; i++) {
		if ((names[i] = recovered_name(email, r->certs[i], i == 0)) == NULL) {
			rc = kms_fail(KMS_ERR_NOMEM, "out of memory");
			goto out;
		}
		items[i] = (struct ca_p12_item){ r->keys[i], r->certs[i], names[i] };
	}
	rc = ca_p12_build(items, r->n, chain, password, fmt, iterations, der, len);
out:
	for (size_t i = 0; names != NULL && i < r->n; i++)
		free(names[i]);
	free(names);
	free(items);
	sk_X509_free(chain);
	return rc;
}

/* Every envelope under the old KRK re-wrapped to the new certificate (caller's transaction). */
static int
rewrap_all(struct kms_store *st, const struct esc_entry *e, size_t n, EVP_PKEY *old_krk,
    const struct esc_krk *old, X509 *cert, long long new_id)
{
	for (size_t i = 0; i < n; i++) {
		EVP_PKEY *k = NULL;
		unsigned char *env = NULL;
		size_t envlen = 0;
		int rc;

		if (e[i].krk_id != old->id)
			return kms_fail(KMS_ERR_STATE, "key %s is escrowed under a retired key-recovery key", e[i].serial);
		rc = esc_unwrap_key(old_krk, old->cert, e[i].envelope, e[i].len, &k);
		if (rc == 0)
			rc = esc_wrap_key(cert, k, &env, &envlen);
		EVP_PKEY_free(k);
		if (rc == 0)
			rc = esc_store_rewrap(st, e[i].serial, new_id, env, envlen);
		free(env);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int
esc_krk_new(const struct ca *ca, const struct esc_krk_spec *spec, X509 **cert, struct esc_share_files *sf)
{
	EVP_PKEY *krk = NULL;
	int rc;

	*cert = NULL;
	memset(sf, 0, sizeof(*sf));
	if (ca == NULL || ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded: cannot certify a new KRK");
	if ((rc = ca_keygen(spec->key_type, &krk)) != 0)
		return rc;
	{
		struct ca_issue_req ir = { .usage = CA_USAGE_KRK, .pubkey = krk, .name = "Key Recovery Key",
			.days = spec->days, .crl_url = spec->crl_url };

		rc = ca_issue(ca, &ir, cert);
	}
	/* Files before any record: a KRK recorded without its shares could never be used. */
	if (rc == 0)
		rc = esc_share_files_write(krk, *cert, spec->shares, spec->threshold, spec->share_dir, spec->pass_dir,
		    spec->dest, sf);
	EVP_PKEY_free(krk);         /* the only copy of the KRK private key: now only in the share files */
	if (rc != 0) {
		X509_free(*cert);
		*cert = NULL;
	}
	return rc;
}

int
esc_krk_rotate(struct kms_store *st, const struct ca *ca, const struct esc_rotate_req *rr, EVP_PKEY *old_krk,
    const struct esc_krk *old, struct esc_rotate_result *res)
{
	X509 *cert = NULL;
	struct esc_entry *e = NULL;
	size_t n = 0;
	struct esc_share_files sf = { 0 };
	char *fp = NULL;
	int rc, in_tx = 0;
	long long new_id = 0;

	memset(res, 0, sizeof(*res));
	{
		struct esc_krk_spec spec = { .key_type = rr->key_type, .days = rr->days, .crl_url = rr->crl_url,
			.shares = rr->shares, .threshold = rr->threshold, .share_dir = rr->share_dir,
			.pass_dir = rr->pass_dir, .dest = rr->dest };

		if ((rc = esc_krk_new(ca, &spec, &cert, &sf)) != 0)
			goto out;
	}
	if ((fp = ca_cert_fingerprint(cert)) == NULL) {
		rc = KMS_ERR_NOMEM;
		goto out;
	}
	if ((rc = esc_store_get_all(st, &e, &n)) != 0 && rc != KMS_ERR_NOTFOUND)
		goto out;
	if ((rc = kms_store_begin(st)) != 0)
		goto out;
	in_tx = 1;
	if ((rc = ca_store_add_cert(st, cert, "", "Key Recovery Key", CA_USAGE_KRK, "init", rr->user)) != 0 ||
	    (rc = esc_store_retire_krk(st, old->id, rr->now)) != 0 ||
	    (rc = esc_store_add_krk(st, cert, rr->shares, rr->threshold, sf.digests, &new_id)) != 0 ||
	    (rc = rewrap_all(st, e, n, old_krk, old, cert, new_id)) != 0)
		goto out;
	if ((rc = kms_store_commit(st)) != 0)
		goto out;
	in_tx = 0;
	res->rewrapped = n;
	res->krk_id = new_id;
	snprintf(res->fingerprint, sizeof(res->fingerprint), "%s", fp);
	res->files = sf;
	memset(&sf, 0, sizeof(sf));
	rc = 0;
out:
	if (in_tx)
		kms_store_rollback(st);
	if (rc != 0)
		esc_share_files_remove(&sf);
	esc_share_files_free(&sf);
	esc_entries_free(e, n);
	X509_free(cert);
	free(fp);
	return rc;
}
