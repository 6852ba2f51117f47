/*
 * secmem.c - secrets: wiping, OpenSSL's locked secure heap for private keys
 * and shares, and no core dumps.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <openssl/crypto.h>

#include "common/common.h"

void
kms_wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		OPENSSL_cleanse(p, n);
}

void
kms_secret_free(char *s)
{
	if (s == NULL)
		return;
	kms_wipe(s, strlen(s));
	free(s);
}

int
kms_secmem_init(size_t size)
{
	if (CRYPTO_secure_malloc_initialized())
		return 0;
	/* minsize 32: small secrets still get their own guarded, locked chunk. */
	if (CRYPTO_secure_malloc_init(size, 32) == 0)
		return kms_fail(KMS_ERR_NOMEM, "cannot set up locked memory for keys "
		    "(raise the memlock limit, e.g. LimitMEMLOCK= in the unit)");
	return 0;
}

int
kms_disable_core_dumps(void)
{
	struct rlimit rl = { 0, 0 };

	if (setrlimit(RLIMIT_CORE, &rl) != 0)
		return kms_fail(KMS_ERR_IO, "setrlimit(RLIMIT_CORE): %s", strerror(errno));
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return kms_fail(KMS_ERR_IO, "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
	return 0;
}
