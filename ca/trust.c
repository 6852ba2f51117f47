/*
 * trust.c - trust anchors and intermediates for checking other
 * organisations' signatures and CRLs: PEM files, a directory of them, and
 * the system's CA store.  One loader for kmsd and `kmsd -t`.
 *
 * Entry points: ca_trust_add_file(), ca_trust_add_dir(),
 * ca_trust_add_system(), ca_certs_load_file().
 */
#include "config.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include "ca/ca.h"

/* Most certificates read from one file or directory: a bound on a hostile or mistaken file. */
#define MAX_CERTS 100000

int
ca_certs_load_file(const char *path, STACK_OF(X509) *out, int *n)
{
	BIO *b;
	X509 *x;
	int count = 0;

	if (n != NULL)
		*n = 0;
	if ((b = BIO_new_file(path, "r")) == NULL)
		return kms_fail_openssl(KMS_ERR_IO, "cannot read %s", path);
	while (count < MAX_CERTS && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(out, x)) {
			X509_free(x);
			BIO_free(b);
			return kms_fail(KMS_ERR_NOMEM, "out of memory");
		}
		count++;
	}
	ERR_clear_error();      /* the end of the file reads as "no start line" */
	BIO_free(b);
	if (count == 0)
		return kms_fail(KMS_ERR_INVALID, "%s holds no PEM certificate", path);
	if (n != NULL)
		*n = count;
	return 0;
}

static int
store_add(X509_STORE *store, X509 *x)
{
	if (!X509_STORE_add_cert(store, x)) {
		unsigned long e = ERR_peek_last_error();

		/* The same certificate twice is fine. */
		if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "cannot add a trust anchor");
		ERR_clear_error();
	}
	return 0;
}

int
ca_trust_add_file(X509_STORE *store, const char *path)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	int rc;

	if (sk == NULL)
		return KMS_ERR_NOMEM;
	rc = ca_certs_load_file(path, sk, NULL);
	for (int i = 0; rc == 0 && i < sk_X509_num(sk); i++)
		rc = store_add(store, sk_X509_value(sk, i));
	sk_X509_pop_free(sk, X509_free);
	return rc;
}

static int
pem_name(const char *n)
{
	size_t len = strlen(n);

	return n[0] != '.' && len > 4 && (strcasecmp(n + len - 4, ".pem") == 0 || strcasecmp(n + len - 4, ".crt") == 0);
}

int
ca_trust_add_dir(X509_STORE *store, const char *dir, int *nfiles)
{
	DIR *d;
	struct dirent *e;
	int rc = 0, n = 0;

	if (nfiles != NULL)
		*nfiles = 0;
	if ((d = opendir(dir)) == NULL)
		return kms_fail(KMS_ERR_IO, "cannot open the directory %s", dir);
	while (rc == 0 && (e = readdir(d)) != NULL) {
		char *path;

		if (!pem_name(e->d_name))
			continue;
		if ((path = kms_path_join(dir, e->d_name)) == NULL) {
			rc = KMS_ERR_NOMEM;
			break;
		}
		rc = ca_trust_add_file(store, path);
		free(path);
		n++;
	}
	closedir(d);
	if (rc == 0 && nfiles != NULL)
		*nfiles = n;
	return rc;
}

int
ca_trust_add_system(X509_STORE *store)
{
	const char *file = X509_get_default_cert_file();

	/* Load the bundle now, so that CRLs of those roots find them too; the hashed directory as well. */
	if (file != NULL && access(file, R_OK) == 0 && X509_STORE_load_file(store, file) != 1)
		return kms_fail_openssl(KMS_ERR_CONFIG, "cannot load the system CA bundle %s", file);
	if (X509_STORE_load_path(store, X509_get_default_cert_dir()) != 1)
		ERR_clear_error();
	return 0;
}
