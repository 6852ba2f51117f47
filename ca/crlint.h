/*
 * crlint.h - internal helpers shared by the revocation sources of libkmsca
 * (revoke.c, crl.c, revidx.c, fetch.c).  Not part of the public API.
 */
#ifndef KMS_CA_CRLINT_H
#define KMS_CA_CRLINT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * A keyed 64-bit hash (random per-process key) for in-memory tables whose
 * keys come from outside: the revocation index, the issued serials, the
 * OCSP cache.  Flooding one bucket needs the key.
 */
uint64_t ca_keyed_hash(const void *in, size_t len);

/* Room for a normalised serial in hex (64 octets) and its NUL. */
#define CA_SERIAL_HEX_MAX 130
/* Longest serial magnitude we keep (RFC 5280 allows 20 octets; be lenient). */
#define CA_SERIAL_MAX 64

static inline int
ca_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "00:AB:cd" -> "abcd": lowercase, no colons, no leading zeros (the certs table key). */
int ca_serial_normalize(const char *in, char *out, size_t outlen);
/* Store hex (any length parity) to the serial's magnitude octets, leading zeros cut. */
int ca_serial_hex_bytes(const char *hex, unsigned char *out, size_t outlen, size_t *len);

/*
 * A growing DER buffer.  ca_der_open() reserves a short header and returns
 * where it starts; ca_der_close() writes the tag and length there, moving
 * the contents up when the length needs the long form.  After an allocation
 * failure every call is a no-op and err stays set.
 */
struct ca_der {
	unsigned char *p;
	size_t len, cap;
	int err;
};
void ca_der_put(struct ca_der *d, const void *p, size_t n);
size_t ca_der_open(struct ca_der *d);
void ca_der_close(struct ca_der *d, size_t at, unsigned char tag);
/* A whole TLV with the given contents. */
void ca_der_tlv(struct ca_der *d, unsigned char tag, const void *p, size_t n);
/* INTEGER from a non-negative magnitude (big-endian octets). */
void ca_der_uint(struct ca_der *d, const unsigned char *mag, size_t n);
void ca_der_int64(struct ca_der *d, long long v);
/* UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5). */
void ca_der_time(struct ca_der *d, time_t t);
void ca_der_gentime(struct ca_der *d, time_t t);

/* PEM armour (label "X509 CRL", "CERTIFICATE") around DER; *pem malloc'd, NUL-terminated. */
int ca_pem_encode(const char *label, const unsigned char *der, size_t len, char **pem, size_t *pemlen);

#endif
