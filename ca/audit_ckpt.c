/*
 * audit_ckpt.c - signed checkpoints of the audit chain, and the audit
 * signer that makes them.
 *
 * Entry points: ca_audit_issue_signer(), ca_audit_signer_ensure(),
 * ca_audit_signer_check(), ca_audit_checkpoint(), ca_audit_verify().
 *
 * The chain of common/audit.c finds a changed row only as long as nobody
 * recomputes it: it holds no secret.  A checkpoint is the audit signer's
 * signature over (number, sequence, head hash, time), where head hash is
 * the chain hash of row sequence; whoever rewrites a row at or before a
 * checkpoint's sequence must change that hash, and cannot sign it again
 * without the signer's key, which lives in the store encrypted under the
 * CA passphrase.  Checkpoints are numbered without gaps, so one deleted
 * between two others is found; the last one deleted is found by the kmsd
 * that signed it (it remembers it), by the external log each checkpoint is
 * written to, and, once the trail grows, by the count of rows left unsigned.
 *
 * The signer is a delegated signer (signer.c) with subject "<O> Audit
 * Signer", keyUsage digitalSignature only, no extKeyUsage and no
 * subjectAltName: nothing else our CA issues has that profile (user
 * certificates carry id-kp-emailProtection and an address, the OCSP signer
 * id-kp-OCSPSigning), so a user's own signing key cannot sign checkpoints,
 * and no mail client takes the signer for a sender.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "ca/ca_local.h"

/* Signed text: a fixed label, so that no other signature of the key's reads as a checkpoint. */
#define TBS_LABEL "smime-kms audit checkpoint v1"
#define TBS_MAX 256

static const struct ca_signer_kind audit_kind = {
	.what = "audit signer", .cn_suffix = " Audit Signer",
	.meta_cert = "audit_signer_cert", .meta_key = "audit_signer_key", .add_extensions = NULL,
};

int
ca_audit_issue_signer(const struct ca *ca, EVP_PKEY *pubkey, long lifetime, X509 **out)
{
	return ca_signer_issue(&audit_kind, ca, pubkey, lifetime, out);
}

int
ca_audit_signer_ensure(struct kms_store *st, const struct ca *ca, const char *passphrase, const char *key_type,
    long lifetime, time_t now, X509 **cert, EVP_PKEY **key, int *renewed)
{
	return ca_signer_ensure(&audit_kind, st, ca, passphrase, key_type, lifetime, now, cert, key, renewed);
}

int
ca_audit_signer_due(X509 *cert, long lifetime, time_t now)
{
	return ca_signer_due(cert, lifetime, now);
}

/* The audit signer's profile: its subject, digitalSignature alone, no EKU, no SAN, not a CA. */
static int
signer_profile_ok(X509 *cert, X509 *ca_cert)
{
	X509_NAME *want = NULL;
	int ok;

	if (ca_signer_subject(&audit_kind, ca_cert, &want) != 0)
		return 0;
	ok = X509_NAME_cmp(X509_get_subject_name(cert), want) == 0 &&
	    (X509_get_extension_flags(cert) & EXFLAG_KUSAGE) && X509_get_key_usage(cert) == KU_DIGITAL_SIGNATURE &&
	    X509_get_ext_by_NID(cert, NID_ext_key_usage, -1) < 0 &&
	    X509_get_ext_by_NID(cert, NID_subject_alt_name, -1) < 0 && X509_check_ca(cert) == 0;
	X509_NAME_free(want);
	return ok;
}

int
ca_audit_signer_check(X509 *cert, X509 *ca_cert, time_t t)
{
	time_t nb, na;
	int issued;

	if (cert == NULL || ca_cert == NULL)
		return kms_fail(KMS_ERR_INVALID, "no audit signer or CA certificate");
	issued = X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca_cert)) == 0 &&
	    X509_verify(cert, X509_get0_pubkey(ca_cert)) == 1;
	ERR_clear_error();
	if (!issued)
		return kms_fail(KMS_ERR_INVALID, "the signer certificate was not issued by our CA");
	if (!signer_profile_ok(cert, ca_cert)) {
		ERR_clear_error();
		return kms_fail(KMS_ERR_INVALID, "the signer certificate is not an audit signer's");
	}
	if (ca_asn1_time_to_time(X509_get0_notBefore(cert), &nb) != 0 ||
	    ca_asn1_time_to_time(X509_get0_notAfter(cert), &na) != 0 || t < nb || t >= na)
		return kms_fail(KMS_ERR_INVALID, "the signer certificate was not valid at the checkpoint's time");
	return 0;
}

/* ------------------------------------------------------------ signatures */

static int
tbs(const struct ca_audit_ckpt *ck, char *buf, size_t len)
{
	int n = snprintf(buf, len, TBS_LABEL "\nno=%lld\nseq=%lld\nhead=%s\ntime=%lld\n", ck->no, ck->seq, ck->head,
	    (long long)ck->time);

	return n > 0 && (size_t)n < len ? n : -1;
}

int
ca_audit_ckpt_sign(const struct ca_audit_ckpt *ck, EVP_PKEY *key, unsigned char **sig, size_t *siglen)
{
	EVP_MD_CTX *md = NULL;
	unsigned char *s = NULL;
	char text[TBS_MAX];
	size_t n = 0;
	int len = tbs(ck, text, sizeof(text)), rc = 0;

	*sig = NULL;
	*siglen = 0;
	if (len < 0 || key == NULL)
		return kms_fail(KMS_ERR_INVALID, "audit checkpoint: nothing to sign");
	if ((md = EVP_MD_CTX_new()) == NULL || EVP_DigestSignInit(md, NULL, ca_sign_digest(key), NULL, key) != 1 ||
	    EVP_DigestSign(md, NULL, &n, (unsigned char *)text, (size_t)len) != 1 || (s = OPENSSL_malloc(n)) == NULL ||
	    EVP_DigestSign(md, s, &n, (unsigned char *)text, (size_t)len) != 1) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "signing an audit checkpoint");
		OPENSSL_free(s);
	} else {
		*sig = s;
		*siglen = n;
	}
	EVP_MD_CTX_free(md);
	return rc;
}

int
ca_audit_ckpt_check_sig(const struct ca_audit_ckpt *ck, EVP_PKEY *pub, const unsigned char *sig, size_t siglen)
{
	EVP_MD_CTX *md = NULL;
	char text[TBS_MAX];
	int len = tbs(ck, text, sizeof(text)), ok;

	if (len < 0 || pub == NULL || sig == NULL)
		return 0;
	ok = (md = EVP_MD_CTX_new()) != NULL && EVP_DigestVerifyInit(md, NULL, ca_sign_digest(pub), NULL, pub) == 1 &&
	    EVP_DigestVerify(md, sig, siglen, (const unsigned char *)text, (size_t)len) == 1;
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	return ok;
}

/* ------------------------------------------------------------ the store */

/* The newest row's sequence and hash; seq 0 for an empty trail. */
static int
chain_head(struct kms_store *st, long long *seq, char head[65])
{
	sqlite3_stmt *s = NULL;
	int rc;

	*seq = 0;
	head[0] = '\0';
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", -1, &s,
	    NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit head");
	if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		*seq = sqlite3_column_int64(s, 0);
		snprintf(head, 65, "%s", sqlite3_column_text(s, 1) ? (const char *)sqlite3_column_text(s, 1) : "");
	}
	sqlite3_finalize(s);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : kms_store_fail(st, "audit head");
}

/* The chain hash of row seq (KMS_ERR_NOTFOUND when there is no such row). */
int
ca_audit_chain_hash_at(struct kms_store *st, long long seq, char out[65])
{
	sqlite3_stmt *s = NULL;
	int rc;

	out[0] = '\0';
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT hash FROM audit WHERE seq = ?", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit row");
	sqlite3_bind_int64(s, 1, seq);
	if ((rc = sqlite3_step(s)) == SQLITE_ROW)
		snprintf(out, 65, "%s", sqlite3_column_text(s, 0) ? (const char *)sqlite3_column_text(s, 0) : "");
	sqlite3_finalize(s);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? KMS_ERR_NOTFOUND : kms_store_fail(st, "audit row");
}

/* A checkpoint row's fields (no, seq, head, time) into ck. */
void
ca_audit_ckpt_from_row(sqlite3_stmt *s, struct ca_audit_ckpt *ck)
{
	const unsigned char *h = sqlite3_column_text(s, 2);

	memset(ck, 0, sizeof(*ck));
	ck->no = sqlite3_column_int64(s, 0);
	ck->seq = sqlite3_column_int64(s, 1);
	snprintf(ck->head, sizeof(ck->head), "%s", h ? (const char *)h : "");
	ck->time = (time_t)sqlite3_column_int64(s, 3);
}

/* The newest checkpoint; ck->no 0 when there is none. */
static int
last_ckpt(struct kms_store *st, struct ca_audit_ckpt *ck)
{
	sqlite3_stmt *s = NULL;
	int rc;

	memset(ck, 0, sizeof(*ck));
	if (sqlite3_prepare_v2(kms_store_db(st), "SELECT no, seq, head, time FROM audit_checkpoints "
	    "ORDER BY no DESC LIMIT 1", -1, &s, NULL) != SQLITE_OK)
		return kms_store_fail(st, "audit checkpoints");
	if ((rc = sqlite3_step(s)) == SQLITE_ROW)
		ca_audit_ckpt_from_row(s, ck);
	sqlite3_finalize(s);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : kms_store_fail(st, "audit checkpoints");
}

static int
insert_ckpt(struct kms_store *st, const struct ca_audit_ckpt *ck, X509 *cert, const unsigned char *sig, size_t siglen)
{
	unsigned char *der = NULL;
	sqlite3_stmt *s = NULL;
	int n, rc = 0;

	if ((n = i2d_X509(cert, &der)) <= 0)
		return kms_fail_openssl(KMS_ERR_CRYPTO, "audit signer certificate");
	if (sqlite3_prepare_v2(kms_store_db(st), "INSERT INTO audit_checkpoints(no, seq, head, time, cert, sig) "
	    "VALUES (?,?,?,?,?,?)", -1, &s, NULL) != SQLITE_OK) {
		rc = kms_store_fail(st, "audit checkpoint");
		goto out;
	}
	sqlite3_bind_int64(s, 1, ck->no);
	sqlite3_bind_int64(s, 2, ck->seq);
	sqlite3_bind_text(s, 3, ck->head, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, (long long)ck->time);
	sqlite3_bind_blob(s, 5, der, n, SQLITE_STATIC);
	sqlite3_bind_blob(s, 6, sig, (int)siglen, SQLITE_STATIC);
	if (sqlite3_step(s) != SQLITE_DONE)
		rc = kms_store_fail(st, "audit checkpoint");
out:
	sqlite3_finalize(s);
	OPENSSL_free(der);
	return rc;
}

/* ------------------------------------------------------------ making them */

/* Is the newest stored checkpoint the one the caller signed or verified last, still over the same chain? */
static int
still_known(struct kms_store *st, const struct ca_audit_ckpt *known, const struct ca_audit_ckpt *last)
{
	char h[65];

	if (known->no != last->no || known->seq != last->seq || strcmp(known->head, last->head) != 0)
		return kms_fail(KMS_ERR_CORRUPT, "audit checkpoint #%lld (row %lld), signed or verified by this kmsd, "
		    "is no longer the newest as signed (the newest is #%lld): checkpoints were deleted or changed",
		    known->no, known->seq, last->no);
	if (known->no > 0 && (ca_audit_chain_hash_at(st, known->seq, h) != 0 || strcmp(h, known->head) != 0))
		return kms_fail(KMS_ERR_CORRUPT, "audit row %lld no longer has the hash checkpoint #%lld signed: "
		    "rows up to it were rewritten", known->seq, known->no);
	return 0;
}

static int
due(const struct ca_audit_ckpt *last, long long head_seq, long long every_rows, long long interval, time_t now)
{
	if (head_seq <= last->seq)
		return 0;
	return last->no == 0 || head_seq - last->seq >= every_rows || now - last->time >= interval;
}

/* Sign and insert the next checkpoint over (head_seq, head); the transaction is the caller's. */
static int
sign_next(struct kms_store *st, X509 *cert, EVP_PKEY *key, const struct ca_audit_ckpt *last, long long head_seq,
    const char *head, time_t now, struct ca_audit_ckpt *out)
{
	/* Never before the last one, even if the clock stepped back: verification wants them in order. */
	struct ca_audit_ckpt ck = { .no = last->no + 1, .seq = head_seq, .time = now > last->time ? now : last->time };
	unsigned char *sig = NULL;
	size_t siglen = 0;
	int rc;

	snprintf(ck.head, sizeof(ck.head), "%s", head);
	if ((rc = ca_audit_ckpt_sign(&ck, key, &sig, &siglen)) == 0 && (rc = insert_ckpt(st, &ck, cert, sig, siglen)) == 0)
		*out = ck;
	OPENSSL_free(sig);
	return rc;
}

int
ca_audit_checkpoint(struct kms_store *st, X509 *cert, EVP_PKEY *key, struct ca_audit_ckpt *known,
    long long every_rows, long long interval, time_t now, struct ca_audit_ckpt *made)
{
	struct ca_audit_ckpt last;
	long long head_seq;
	char head[65];
	int rc;

	memset(made, 0, sizeof(*made));
	if (cert == NULL || key == NULL || known == NULL)
		return kms_fail(KMS_ERR_STATE, "no audit signer");
	if ((rc = kms_store_begin(st)) != 0)
		return rc;
	if ((rc = last_ckpt(st, &last)) != 0 || (rc = still_known(st, known, &last)) != 0 ||
	    (rc = chain_head(st, &head_seq, head)) != 0)
		goto out;
	if (!due(&last, head_seq, every_rows, interval, now))
		goto out;
	if ((rc = sign_next(st, cert, key, &last, head_seq, head, now, made)) != 0)
		goto out;
	if ((rc = kms_store_commit(st)) != 0) {
		memset(made, 0, sizeof(*made));
		return rc;
	}
	*known = *made;
	return 0;
out:
	kms_store_rollback(st);
	return rc;
}
