/*
 * kmsd.h - internal header of the kmsd program (milter/): what the parts of
 * the daemon share.  Nothing outside milter/ includes it.
 *
 * The runtime keeps one current "environment": the config and the trust
 * anchors, reference counted and replaced as a whole on SIGHUP or after
 * `kmsctl init`.  A milter connection takes a reference at connect and
 * keeps it until close, so a reload never changes a message half-way.
 * The revocation index is held separately because it changes far more often
 * (every revocation) and is swapped on its own.
 */
#ifndef KMSD_H
#define KMSD_H

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "ca/ca.h"
#include "common/kms.h"

struct kmsd_env {
	int refs;
	struct kms_config *cfg;     /* the config in force */
	X509_STORE *trust;          /* our CA plus [milter] trust_file; never NULL, may be empty */
	X509 *ca_cert;              /* our CA certificate; NULL before init (or on a replica without one) */
};

/* Take a reference to the current environment (never NULL once kmsd runs). */
struct kmsd_env *kmsd_env_get(void);
void kmsd_env_put(struct kmsd_env *env);

/* The current revocation index (get1; NULL when none is loaded yet). */
struct ca_revidx *kmsd_revidx_get(void);
/* Make idx the current index (takes the reference); readers see it at their next get. */
void kmsd_revidx_set(struct ca_revidx *idx);

/*
 * Look up one of our issued certificates in the store, by issuer and
 * serial or by subject key identifier (either may be NULL).  *out get1.
 * For signatures sent without certificates (openssl smime -nocerts).
 */
int kmsd_find_cert(const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid, X509 **out);

#endif
