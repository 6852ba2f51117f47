/*
 * pubint.h - helpers private to libkmspublish, shared by the HTTP
 * distribution point (http.c) and the OCSP responder's HTTP side (ocsp.c).
 * Nothing outside publish/ includes it.
 */
#ifndef KMS_PUBINT_H
#define KMS_PUBINT_H

#include <stddef.h>
#include <time.h>

#include <microhttpd.h>

#include "ca/ca.h"

/* IMF-fixdate (RFC 9110 5.6.7), independent of the locale. */
void pub_http_date(time_t t, char *buf, size_t len);
/* Does an If-None-Match list name etag (weak comparison, RFC 9110 13.1.2)? */
int pub_etag_listed(const char *list, const char *etag);

/* Is url the OCSP responder's ("/ocsp", "/ocsp/" or "/ocsp/<base64>")? */
int pub_ocsp_path(const char *url);
/*
 * The MHD access handler's work for an OCSP URL: POST bodies are collected
 * (up to max bytes) in *req_cls over several calls, GET and HEAD are
 * answered at once.  r NULL: 404.  idx is taken from rev per request.
 */
enum MHD_Result pub_ocsp_serve(struct MHD_Connection *c, struct ca_ocsp *r, struct ca_revholder *rev, size_t max,
    const char *url, const char *method, const char *upload_data, size_t *upload_size, void **req_cls);
/* Free what pub_ocsp_serve() left in *req_cls (MHD's request-completed callback). */
void pub_ocsp_done(void **req_cls);

/*
 * MHD's URL unescaping, except that %00 is not turned into a NUL (which
 * would cut "/certs/alice@example.org%00x" short to alice's address): its
 * '%' becomes DEL, which no route and no address validator accepts.
 */
size_t pub_http_unescape(void *cls, struct MHD_Connection *c, char *s);

/* The MHD access handler's work for a /certs/ URL (certs.c); pc NULL: 404. */
struct pub_certs;
enum MHD_Result pub_certs_serve(struct pub_certs *pc, struct MHD_Connection *c, const char *url, const char *method);

#endif
