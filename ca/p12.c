/*
 * p12.c - PKCS#12 security files: writing several key pairs with their
 * certificates and the CA chain in one file, and reading all of it back.
 *
 * Entry points: ca_p12_format_from_name(), ca_p12_build(), ca_p12_read(),
 * ca_p12_contents_free().
 *
 * Layout (the one OpenSSL and most clients write): an AuthenticatedSafe
 * whose ContentInfos hold first the certificates, then the keys as
 * pkcs8ShroudedKeyBags in plain data, followed by the integrity MAC.  Each
 * key and its certificate share a localKeyID (the SHA-1 of the
 * certificate) and a friendlyName.
 *
 *   modern: keys and the certificate safe under PBES2 (PBKDF2 with
 *           HMAC-SHA-256, AES-256-CBC); MAC HMAC-SHA-256.
 *   compat: keys under pbeWithSHAAnd3-KeyTripleDES-CBC, certificates in
 *           plain data, one safe each, MAC HMAC-SHA-1.  What gpgsm 2.2
 *           (Debian 12) and older mail clients import; the keys are still
 *           encrypted.  gpgsm 2.2 imports every certificate but only the
 *           first key of a file, so the first item should be the one it
 *           needs most (the signing key).
 *
 * Reading walks every safe and bag itself (PKCS12_parse returns only one
 * key): a certificate with a key, or with a friendlyName, is an item; a
 * bare certificate is part of the chain.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "ca/ca.h"

#define DEFAULT_ITER 10000
#define MAX_BAGS 1024       /* bags in a file we read */
#define MAX_DEPTH 4         /* nesting of safeContentsBags */
#define MAX_P12_LEN (16 * 1024 * 1024)
#define COMPAT_MAX_PASSWORD 31

int
ca_p12_format_from_name(const char *name, enum ca_p12_format *out)
{
	if (name != NULL && strcmp(name, "modern") == 0)
		*out = CA_P12_MODERN;
	else if (name != NULL && strcmp(name, "compat") == 0)
		*out = CA_P12_COMPAT;
	else
		return kms_fail(KMS_ERR_INVALID, "PKCS#12 format must be modern or compat");
	return 0;
}

/* Tag bag with the item's localKeyID (when it has one) and friendlyName. */
static int
tag_bag(PKCS12_SAFEBAG *bag, const unsigned char *id, unsigned int idlen, const char *name)
{
	if (id != NULL && !PKCS12_add_localkeyid(bag, (unsigned char *)id, (int)idlen))
		return kms_fail_openssl(KMS_ERR_NOMEM, "localKeyID");
	if (name != NULL && *name != '\0' && !PKCS12_add_friendlyname_utf8(bag, name, -1))
		return kms_fail_openssl(KMS_ERR_INVALID, "friendlyName");
	return 0;
}

/* Add every item's certificate to *certs and its key to *keys. */
static int
add_items(const struct ca_p12_item *items, size_t n, const char *password, int key_nid, int iter,
    STACK_OF(PKCS12_SAFEBAG) **certs, STACK_OF(PKCS12_SAFEBAG) **keys)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char id[EVP_MAX_MD_SIZE];
		unsigned int idlen = 0;
		PKCS12_SAFEBAG *bag;
		int rc;

		if (items[i].cert == NULL)
			return kms_fail(KMS_ERR_INVALID, "PKCS#12 item %zu has no certificate", i);
		if (items[i].key != NULL) {
			if (X509_check_private_key(items[i].cert, items[i].key) != 1)
				return kms_fail_openssl(KMS_ERR_INVALID, "PKCS#12 item %zu: the key does not "
				    "match the certificate", i);
			if (!X509_digest(items[i].cert, EVP_sha1(), id, &idlen))
				return kms_fail_openssl(KMS_ERR_CRYPTO, "localKeyID");
		}
		if ((bag = PKCS12_add_cert(certs, items[i].cert)) == NULL)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 certificate bag");
		if ((rc = tag_bag(bag, items[i].key ? id : NULL, idlen, items[i].friendly_name)) != 0)
			return rc;
		if (items[i].key == NULL)
			continue;
		if ((bag = PKCS12_add_key_ex(keys, items[i].key, 0, iter, key_nid, password, NULL, NULL)) == NULL)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 key bag");
		if ((rc = tag_bag(bag, id, idlen, items[i].friendly_name)) != 0)
			return rc;
	}
	return 0;
}

/*
 * The certificates' safes.  compat gives each certificate a plain data safe
 * of its own: gpgsm 2.2 reads only the first bag of a plain data safe, so
 * three certificates in one safe would import as one.
 */
static int
add_cert_safes(STACK_OF(PKCS7) **safes, STACK_OF(PKCS12_SAFEBAG) *certs, enum ca_p12_format fmt,
    int safe_nid, int iter, const char *password)
{
	if (certs == NULL)
		return 0;
	if (fmt != CA_P12_COMPAT) {
		if (!PKCS12_add_safe_ex(safes, certs, safe_nid, iter, password, NULL, NULL))
			return kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 certificate safe");
		return 0;
	}
	for (int i = 0; i < sk_PKCS12_SAFEBAG_num(certs); i++) {
		STACK_OF(PKCS12_SAFEBAG) *one = sk_PKCS12_SAFEBAG_new_null();
		int ok;

		if (one == NULL || !sk_PKCS12_SAFEBAG_push(one, sk_PKCS12_SAFEBAG_value(certs, i))) {
			sk_PKCS12_SAFEBAG_free(one);
			return kms_fail(KMS_ERR_NOMEM, "PKCS#12 certificate safe");
		}
		/* The bag stays owned by certs: free only the one-element stack. */
		ok = PKCS12_add_safe_ex(safes, one, -1, 0, NULL, NULL, NULL);
		sk_PKCS12_SAFEBAG_free(one);
		if (!ok)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 certificate safe");
	}
	return 0;
}

int
ca_p12_build(const struct ca_p12_item *items, size_t n, STACK_OF(X509) *chain, const char *password,
    enum ca_p12_format fmt, int iterations, unsigned char **der, size_t *len)
{
	STACK_OF(PKCS12_SAFEBAG) *certs = NULL, *keys = NULL;
	STACK_OF(PKCS7) *safes = NULL;
	PKCS12 *p12 = NULL;
	unsigned char *buf = NULL;
	int key_nid, safe_nid, blen, rc;
	const EVP_MD *mac_md;

	*der = NULL;
	*len = 0;
	if (password == NULL)
		return kms_fail(KMS_ERR_INVALID, "no PKCS#12 password");
	if (n == 0 && sk_X509_num(chain) <= 0)
		return kms_fail(KMS_ERR_INVALID, "nothing to put in the PKCS#12 file");
	if (iterations <= 0)
		iterations = DEFAULT_ITER;
	switch (fmt) {
	case CA_P12_MODERN:
		key_nid = NID_aes_256_cbc;      /* PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC */
		safe_nid = NID_aes_256_cbc;
		mac_md = EVP_sha256();
		break;
	case CA_P12_COMPAT:
		/* gpgsm 2.2 derives PKCS#12 keys from at most 31 bytes of password. */
		if (strlen(password) > COMPAT_MAX_PASSWORD)
			return kms_fail(KMS_ERR_INVALID, "a compat PKCS#12 password may have at most %d "
			    "characters (gpgsm 2.2 cannot use a longer one)", COMPAT_MAX_PASSWORD);
		key_nid = NID_pbe_WithSHA1And3_Key_TripleDES_CBC;
		safe_nid = -1;                  /* certificates in plain data */
		mac_md = EVP_sha1();
		break;
	default:
		return kms_fail(KMS_ERR_INVALID, "unknown PKCS#12 format %d", (int)fmt);
	}
	if ((rc = add_items(items, n, password, key_nid, iterations, &certs, &keys)) != 0)
		goto out;
	for (int i = 0; i < sk_X509_num(chain); i++) {
		if (PKCS12_add_cert(&certs, sk_X509_value(chain, i)) == NULL) {
			rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 chain certificate");
			goto out;
		}
	}
	if ((rc = add_cert_safes(&safes, certs, fmt, safe_nid, iterations, password)) != 0)
		goto out;
	if (keys != NULL && !PKCS12_add_safe_ex(&safes, keys, -1, 0, NULL, NULL, NULL)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 key safe");
		goto out;
	}
	if ((p12 = PKCS12_add_safes_ex(safes, NID_pkcs7_data, NULL, NULL)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 authenticated safe");
		goto out;
	}
	if (!PKCS12_set_mac(p12, password, -1, NULL, 0, iterations, mac_md)) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "PKCS#12 MAC");
		goto out;
	}
	if ((blen = i2d_PKCS12(p12, &buf)) <= 0) {
		rc = kms_fail_openssl(KMS_ERR_CRYPTO, "encoding PKCS#12");
		goto out;
	}
	if ((*der = malloc((size_t)blen)) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "PKCS#12");
		goto out;
	}
	memcpy(*der, buf, (size_t)blen);
	*len = (size_t)blen;
	rc = 0;
out:
	sk_PKCS12_SAFEBAG_pop_free(certs, PKCS12_SAFEBAG_free);
	sk_PKCS12_SAFEBAG_pop_free(keys, PKCS12_SAFEBAG_free);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	PKCS12_free(p12);
	OPENSSL_free(buf);
	return rc;
}

/* ------------------------------------------------------------------ reading */

struct bag_entry {
	EVP_PKEY *key;                  /* exactly one of key and cert is set */
	X509 *cert;
	char *name;
	ASN1_OCTET_STRING *id;          /* localKeyID, or NULL */
	int used;
};

struct walk {
	struct bag_entry *e;
	size_t n, cap;
	const char *pass;
	int mac_checked;                /* password already proven right by the MAC */
};

static int
walk_push(struct walk *w, PKCS12_SAFEBAG *bag, EVP_PKEY *key, X509 *cert)
{
	const ASN1_TYPE *t = PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID);
	struct bag_entry *e;
	char *name;

	if (kms_array_reserve(&w->e, &w->cap, w->n + 1, sizeof(*w->e), SIZE_MAX) != 0)
		goto nomem;
	e = &w->e[w->n];
	memset(e, 0, sizeof(*e));
	e->key = key;
	e->cert = cert;
	w->n++;
	if (t != NULL && t->type == V_ASN1_OCTET_STRING &&
	    (e->id = ASN1_OCTET_STRING_dup(t->value.octet_string)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "localKeyID");
	if ((name = PKCS12_get_friendlyname(bag)) != NULL) {
		e->name = strdup(name);
		OPENSSL_free(name);
		if (e->name == NULL)
			return kms_fail(KMS_ERR_NOMEM, "friendlyName");
	}
	ERR_clear_error();
	return 0;
nomem:
	EVP_PKEY_free(key);
	X509_free(cert);
	return kms_fail(KMS_ERR_NOMEM, "PKCS#12 contents");
}

/* A decryption failure is a wrong password unless the MAC already proved it right. */
static int
decrypt_fail(const struct walk *w, const char *what)
{
	if (w->mac_checked)
		return kms_fail_openssl(KMS_ERR_CORRUPT, "%s does not decrypt", what);
	ERR_clear_error();
	return kms_fail(KMS_ERR_PERM, "wrong PKCS#12 password");
}

static int
walk_bags(struct walk *w, const STACK_OF(PKCS12_SAFEBAG) *bags, int depth)
{
	if (depth > MAX_DEPTH)
		return kms_fail(KMS_ERR_CORRUPT, "PKCS#12 bags nested too deep");
	for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags); i++) {
		PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, i);
		PKCS8_PRIV_KEY_INFO *p8 = NULL;
		EVP_PKEY *key;
		X509 *cert;
		int rc;

		if (w->n >= MAX_BAGS)
			return kms_fail(KMS_ERR_TOOBIG, "over %d bags in the PKCS#12 file", MAX_BAGS);
		switch (PKCS12_SAFEBAG_get_nid(bag)) {
		case NID_keyBag:
		case NID_pkcs8ShroudedKeyBag:
			if (PKCS12_SAFEBAG_get_nid(bag) == NID_keyBag)
				key = EVP_PKCS82PKEY(PKCS12_SAFEBAG_get0_p8inf(bag));
			else if ((p8 = PKCS12_decrypt_skey(bag, w->pass, -1)) == NULL)
				return decrypt_fail(w, "a PKCS#12 key bag");
			else
				key = EVP_PKCS82PKEY(p8);
			PKCS8_PRIV_KEY_INFO_free(p8);
			if (key == NULL)
				return kms_fail_openssl(KMS_ERR_CORRUPT, "a PKCS#12 key does not parse");
			if ((rc = walk_push(w, bag, key, NULL)) != 0)
				return rc;
			break;
		case NID_certBag:
			if (PKCS12_SAFEBAG_get_bag_nid(bag) != NID_x509Certificate)
				break;          /* SDSI certificates: not ours to read */
			if ((cert = PKCS12_SAFEBAG_get1_cert(bag)) == NULL)
				return kms_fail_openssl(KMS_ERR_CORRUPT, "a PKCS#12 certificate does not parse");
			if ((rc = walk_push(w, bag, NULL, cert)) != 0)
				return rc;
			break;
		case NID_safeContentsBag:
			if ((rc = walk_bags(w, PKCS12_SAFEBAG_get0_safes(bag), depth + 1)) != 0)
				return rc;
			break;
		default:
			break;          /* CRL and secret bags */
		}
	}
	return 0;
}

static int
walk_safes(struct walk *w, PKCS12 *p12)
{
	STACK_OF(PKCS7) *safes;
	int rc = 0;

	if ((safes = PKCS12_unpack_authsafes(p12)) == NULL)
		return kms_fail_openssl(KMS_ERR_CORRUPT, "PKCS#12 authenticated safe does not parse");
	for (int i = 0; i < sk_PKCS7_num(safes) && rc == 0; i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);
		STACK_OF(PKCS12_SAFEBAG) *bags = NULL;

		switch (OBJ_obj2nid(p7->type)) {
		case NID_pkcs7_data:
			if ((bags = PKCS12_unpack_p7data(p7)) == NULL)
				rc = kms_fail_openssl(KMS_ERR_CORRUPT, "PKCS#12 safe does not parse");
			break;
		case NID_pkcs7_encrypted:
			if ((bags = PKCS12_unpack_p7encdata(p7, w->pass, -1)) == NULL)
				rc = decrypt_fail(w, "a PKCS#12 encrypted safe");
			break;
		default:
			rc = kms_fail(KMS_ERR_CORRUPT, "PKCS#12 safe of an unsupported type (%s)",
			    OBJ_nid2sn(OBJ_obj2nid(p7->type)));
			break;
		}
		if (rc == 0)
			rc = walk_bags(w, bags, 0);
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	sk_PKCS7_pop_free(safes, PKCS7_free);
	return rc;
}

/* The certificate entry a key belongs to: same localKeyID, else the matching public key. */
static struct bag_entry *
key_owner(struct walk *w, const struct bag_entry *k)
{
	for (size_t j = 0; k->id != NULL && j < w->n; j++)
		if (w->e[j].cert != NULL && !w->e[j].used && w->e[j].id != NULL &&
		    ASN1_STRING_cmp(w->e[j].id, k->id) == 0)
			return &w->e[j];
	for (size_t j = 0; j < w->n; j++)
		if (w->e[j].cert != NULL && !w->e[j].used && X509_check_private_key(w->e[j].cert, k->key) == 1)
			return &w->e[j];
	ERR_clear_error();
	return NULL;
}

/* Pair keys with certificates and move everything into c. */
static int
assemble(struct walk *w, struct ca_p12_contents *c)
{
	if ((c->keys = calloc(w->n + 1, sizeof(*c->keys))) == NULL ||
	    (c->certs = calloc(w->n + 1, sizeof(*c->certs))) == NULL ||
	    (c->names = calloc(w->n + 1, sizeof(*c->names))) == NULL ||
	    (c->others = sk_X509_new_null()) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "PKCS#12 contents");
	for (size_t i = 0; i < w->n; i++) {
		struct bag_entry *k = &w->e[i], *owner;

		if (k->key == NULL)
			continue;
		if ((owner = key_owner(w, k)) == NULL)
			return kms_fail(KMS_ERR_CORRUPT, "a PKCS#12 key has no certificate");
		owner->used = 1;
		c->keys[c->n] = k->key;
		c->certs[c->n] = owner->cert;
		c->names[c->n] = owner->name ? owner->name : k->name;
		if (owner->name)
			owner->name = NULL;
		else
			k->name = NULL;
		k->key = NULL;
		owner->cert = NULL;
		c->n++;
	}
	for (size_t i = 0; i < w->n; i++) {
		struct bag_entry *e = &w->e[i];

		if (e->cert == NULL)
			continue;
		if (e->name != NULL) {
			c->certs[c->n] = e->cert;
			c->names[c->n++] = e->name;
			e->name = NULL;
		} else if (!sk_X509_push(c->others, e->cert)) {
			return kms_fail(KMS_ERR_NOMEM, "PKCS#12 chain");
		}
		e->cert = NULL;
	}
	return 0;
}

static void
walk_free(struct walk *w)
{
	for (size_t i = 0; i < w->n; i++) {
		EVP_PKEY_free(w->e[i].key);
		X509_free(w->e[i].cert);
		free(w->e[i].name);
		ASN1_OCTET_STRING_free(w->e[i].id);
	}
	free(w->e);
}

int
ca_p12_read(const unsigned char *der, size_t len, const char *password, struct ca_p12_contents **out)
{
	struct ca_p12_contents *c = NULL;
	struct walk w;
	const unsigned char *p = der;
	PKCS12 *p12 = NULL;
	int rc;

	*out = NULL;
	memset(&w, 0, sizeof(w));
	w.pass = password ? password : "";
	if (der == NULL || len == 0)
		return kms_fail(KMS_ERR_INVALID, "no PKCS#12 data");
	if (len > MAX_P12_LEN)
		return kms_fail(KMS_ERR_TOOBIG, "PKCS#12 file over %d bytes", MAX_P12_LEN);
	if ((p12 = d2i_PKCS12(NULL, &p, (long)len)) == NULL) {
		rc = kms_fail_openssl(KMS_ERR_CORRUPT, "not a PKCS#12 file");
		goto out;
	}
	if (PKCS12_mac_present(p12)) {
		if (PKCS12_verify_mac(p12, w.pass, -1) != 1) {
			/* A MAC that does not match leaves no error; one that cannot be computed does. */
			if (ERR_peek_error() == 0) {
				rc = kms_fail(KMS_ERR_PERM, "wrong PKCS#12 password");
			} else {
				rc = kms_fail_openssl(KMS_ERR_CORRUPT, "PKCS#12 MAC cannot be checked");
			}
			goto out;
		}
		w.mac_checked = 1;
	}
	if ((rc = walk_safes(&w, p12)) != 0)
		goto out;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		rc = kms_fail(KMS_ERR_NOMEM, "PKCS#12 contents");
		goto out;
	}
	if ((rc = assemble(&w, c)) != 0)
		goto out;
	*out = c;
	c = NULL;
	rc = 0;
out:
	walk_free(&w);
	ca_p12_contents_free(c);
	PKCS12_free(p12);
	return rc;
}

void
ca_p12_contents_free(struct ca_p12_contents *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->n; i++) {
		EVP_PKEY_free(c->keys[i]);
		X509_free(c->certs[i]);
		free(c->names[i]);
	}
	free(c->keys);
	free(c->certs);
	free(c->names);
	sk_X509_pop_free(c->others, X509_free);
	free(c);
}
