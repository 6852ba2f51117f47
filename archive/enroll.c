/*
 * enroll.c - the two moments where the CA and escrow act as one: setting
 * up the CA with its key-recovery key (init), and enrolling a user (a
 * signing and an encryption certificate, the encryption key escrowed).
 *
 * Entry points: esc_init(), esc_init_result_free(), esc_enroll_prepare(),
 * esc_enroll_record(), esc_enrollment_free().
 *
 * The rule both keep: nothing is recorded that cannot be used.  init
 * writes the share files before it records the KRK (a KRK without shares
 * could never be used), and enrollment records both certificates and the
 * escrowed key in one transaction, so that no encryption certificate ever
 * exists without its escrowed key, whatever moment kmsd is killed at.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "archive/archive.h"

void
esc_init_result_free(struct esc_init_result *r)
{
	ca_free(r->ca);
	X509_free(r->krk_cert);
	esc_share_files_free(&r->files);
	memset(r, 0, sizeof(*r));
}

int
esc_init(struct kms_store *st, const struct esc_init_req *ir, struct esc_init_result *res)
{
	struct ca *ca = NULL;
	X509 *krk_cert = NULL;
	char *pem = NULL;
	size_t pemlen = 0;
	struct esc_share_files sf = { 0 };
	long long krk_id = 0;
	int rc, in_tx = 0;

	memset(res, 0, sizeof(*res));
	if ((rc = ca_create_root(ir->org, ir->ca_name, ir->ca_key_type, ir->ca_days, &ca)) != 0)
		goto out;
	ca->not_before_margin = ir->not_before_margin;
	if ((rc = ca_key_encrypt(ca->key, ir->passphrase, &pem, &pemlen)) != 0)
		goto out;
	{
		struct esc_krk_spec spec = { .key_type = ir->krk_key_type, .days = ir->ca_days, .crl_url = ir->crl_url,
			.shares = ir->shares, .threshold = ir->threshold, .share_dir = ir->share_dir,
			.pass_dir = ir->pass_dir, .dest = ir->dest };

		if ((rc = esc_krk_new(ca, &spec, &krk_cert, &sf)) != 0)
			goto out;
	}
	if ((rc = kms_store_begin(st)) != 0)
		goto out;
	in_tx = 1;
	if ((rc = ca_store_save(st, ca, pem, ir->ca_key_type)) != 0 ||
	    (rc = ca_store_add_cert(st, krk_cert, "", "Key Recovery Key", CA_USAGE_KRK, "init", ir->user)) != 0 ||
	    (rc = esc_store_add_krk(st, krk_cert, ir->shares, ir->threshold, sf.digests, &krk_id)) != 0)
		goto out;
	if ((rc = kms_store_commit(st)) != 0)
		goto out;
	in_tx = 0;
	res->ca = ca;
	res->krk_cert = krk_cert;
	res->krk_id = krk_id;
	res->files = sf;
	ca = NULL;
	krk_cert = NULL;
	memset(&sf, 0, sizeof(sf));
	rc = 0;
out:
	if (in_tx)
		kms_store_rollback(st);
	if (rc != 0)
		esc_share_files_remove(&sf);
	esc_share_files_free(&sf);
	if (pem) {
		kms_wipe(pem, pemlen);
		free(pem);
	}
	X509_free(krk_cert);
	ca_free(ca);
	return rc;
}

void
esc_enrollment_free(struct esc_enrollment *en)
{
	EVP_PKEY_free(en->skey);
	EVP_PKEY_free(en->ekey);
	X509_free(en->scert);
	X509_free(en->ecert);
	free(en->envelope);
	memset(en, 0, sizeof(*en));
}

int
esc_enroll_prepare(const struct esc_enroll_req *er, struct esc_enrollment *en)
{
	int rc;

	memset(en, 0, sizeof(*en));
	if (er->ca == NULL || er->ca->key == NULL)
		return kms_fail(KMS_ERR_STATE, "the CA key is not loaded");
	if (er->krk_cert == NULL)
		return kms_fail(KMS_ERR_STATE, "no key-recovery key: escrow is not initialised");
	if ((rc = ca_keygen(er->key_type, &en->skey)) != 0 || (rc = ca_keygen(er->key_type, &en->ekey)) != 0)
		goto out;
	{
		unsigned char r[8];

		if (RAND_bytes(r, sizeof(r)) != 1) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "random");
			goto out;
		}
		for (size_t i = 0; i < sizeof(r); i++)
			snprintf(en->generation + 2 * i, 3, "%02x", r[i]);
	}
	{
		struct ca_issue_req sr = { .usage = CA_USAGE_SIGN, .pubkey = en->skey, .email = er->email,
			.name = er->name, .days = er->days, .crl_url = er->crl_url, .subject_serial = en->generation,
			.crl_ldap_url = er->crl_ldap_url, .ocsp_url = er->ocsp_url, .issuer_url = er->issuer_url };
		struct ca_issue_req enc = sr;

		enc.usage = CA_USAGE_ENC;
		enc.pubkey = en->ekey;
		if ((rc = ca_issue(er->ca, &sr, &en->scert)) != 0 || (rc = ca_issue(er->ca, &enc, &en->ecert)) != 0)
			goto out;
	}
	rc = esc_wrap_key(er->krk_cert, en->ekey, &en->envelope, &en->envlen);
out:
	if (rc != 0)
		esc_enrollment_free(en);
	return rc;
}

int
esc_enroll_record(struct kms_store *st, const struct esc_enroll_req *er, const struct esc_enrollment *en)
{
	char *serial = ca_serial_hex(X509_get0_serialNumber(en->ecert));
	const char *name = er->name && *er->name ? er->name : er->email;
	int rc;

	if (serial == NULL)
		return KMS_ERR_NOMEM;
	rc = ca_store_add_cert(st, en->scert, er->email, name, CA_USAGE_SIGN, er->origin, er->issued_by);
	if (rc == 0)
		rc = ca_store_add_cert(st, en->ecert, er->email, name, CA_USAGE_ENC, er->origin, er->issued_by);
	if (rc == 0)
		rc = esc_store_put(st, serial, er->krk_id, en->envelope, en->envlen);
	free(serial);
	return rc;
}
