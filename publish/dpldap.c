/*
 * dpldap.c - fetching a CRL from an ldap:// or ldaps:// distribution point
 * (RFC 4516 URL, RFC 4523 certificateRevocationList;binary), for the
 * background fetcher of dpfetch.c.
 *
 * Entry point: pub_dp_ldap_fetch().
 *
 * The URL names the entry (a base-object search) and, optionally, the
 * attribute (certificateRevocationList;binary when it does not; the first
 * one named when it names several); a URL with a critical extension, no
 * host or no entry is refused.  The bind is anonymous.  Everything is
 * bounded like an http fetch: connect and the whole exchange by the fetch
 * timeout (and cut short when the fetcher stops), the answer by the
 * fetcher's size bound (libldap's own limit on an incoming message, so a
 * huge answer is never held in memory), one entry.  ldaps:// checks the
 * server's certificate against the system's CA store.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lber.h>
#include <ldap.h>

#include "publish/publish.h"

/* What the LDAP envelope of one entry may add to the CRL's own size. */
#define LDAP_SLACK 16384
/* How often a wait checks whether the fetcher is stopping (ms). */
#define POLL_MS 200
#define DEFAULT_ATTR "certificateRevocationList;binary"

struct ldap_fetch {
	LDAP *ld;
	const char *url;
	int timeout;
	size_t max;
	time_t deadline;
	const int *cancel;
	ldap_conncb cb;
};

/* Bound every message libldap reads on the new connection. */
static int
conn_add(LDAP *ld, Sockbuf *sb, LDAPURLDesc *srv, struct sockaddr *addr, struct ldap_conncb *ctx)
{
	const struct ldap_fetch *f = ctx->lc_arg;
	ber_len_t max = (ber_len_t)(f->max + LDAP_SLACK);

	(void)ld;
	(void)srv;
	(void)addr;
	return ber_sockbuf_ctrl(sb, LBER_SB_OPT_SET_MAX_INCOMING, &max) == 1 ? 0 : -1;
}

static void
conn_del(LDAP *ld, Sockbuf *sb, struct ldap_conncb *ctx)
{
	(void)ld;
	(void)sb;
	(void)ctx;
}

static const char *
ld_error(LDAP *ld, int lrc)
{
	int e = lrc;

	if (lrc == -1 || lrc == 0)
		ldap_get_option(ld, LDAP_OPT_RESULT_CODE, &e);
	return ldap_err2string(e);
}

/* The answer to msgid, waiting at most until the deadline; 0 with *res, or an error. */
static int
wait_result(struct ldap_fetch *f, int msgid, const char *what, LDAPMessage **res)
{
	*res = NULL;
	for (;;) {
		struct timeval tv = { .tv_sec = 0, .tv_usec = POLL_MS * 1000 };
		int r;

		if (f->cancel != NULL && __atomic_load_n(f->cancel, __ATOMIC_ACQUIRE))
			return kms_fail(KMS_ERR_STATE, "%s: cancelled", f->url);
		if (time(NULL) >= f->deadline)
			return kms_fail(KMS_ERR_TIMEOUT, "%s: timed out after %d s (%s)", f->url, f->timeout, what);
		r = ldap_result(f->ld, msgid, LDAP_MSG_ALL, &tv, res);
		if (r > 0)
			return 0;
		if (r < 0)
			return kms_fail(KMS_ERR_IO, "%s: %s: %s (connection lost, or an answer larger than %zu bytes)",
			    f->url, what, ld_error(f->ld, r), f->max);
	}
}

/* Anonymous simple bind (RFC 4513 5.1.1). */
static int
bind_anon(struct ldap_fetch *f)
{
	struct berval empty = { 0, NULL };
	LDAPMessage *res = NULL;
	int msgid, lrc, err = LDAP_OTHER, rc;

	if ((lrc = ldap_sasl_bind(f->ld, NULL, LDAP_SASL_SIMPLE, &empty, NULL, NULL, &msgid)) != LDAP_SUCCESS)
		return kms_fail(lrc == LDAP_TIMEOUT ? KMS_ERR_TIMEOUT : KMS_ERR_IO, "%s: cannot connect: %s", f->url,
		    ld_error(f->ld, lrc));
	if ((rc = wait_result(f, msgid, "bind", &res)) != 0)
		return rc;
	lrc = ldap_parse_result(f->ld, res, &err, NULL, NULL, NULL, NULL, 1);
	if (lrc != LDAP_SUCCESS || err != LDAP_SUCCESS)
		return kms_fail(KMS_ERR_PERM, "%s: anonymous bind refused: %s", f->url,
		    ldap_err2string(lrc != LDAP_SUCCESS ? lrc : err));
	return 0;
}

/* Does the attribute description ad (maybe with options) name the attribute want (maybe with options)? */
static int
same_attr(const char *ad, const char *want)
{
	size_t a = strcspn(ad, ";"), w = strcspn(want, ";");

	return a == w && strncasecmp(ad, want, a) == 0;
}

/* The first value of attr in the entry of res: 0 with *val (ber_bvfree), or an error. */
static int
take_value(struct ldap_fetch *f, LDAPMessage *res, const char *attr, struct berval **val)
{
	LDAPMessage *e;
	BerElement *ber = NULL;
	char *ad;
	int rc = 0;

	*val = NULL;
	if ((e = ldap_first_entry(f->ld, res)) == NULL)
		return kms_fail(KMS_ERR_NOTFOUND, "%s: no such entry", f->url);
	for (ad = ldap_first_attribute(f->ld, e, &ber); ad != NULL && *val == NULL;
	    ad = ldap_next_attribute(f->ld, e, ber)) {
		if (same_attr(ad, attr)) {
			struct berval **vals = ldap_get_values_len(f->ld, e, ad);

			if (vals != NULL && vals[0] != NULL)
				*val = ber_bvdup(vals[0]);
			ldap_value_free_len(vals);
			if (*val == NULL)
				rc = KMS_ERR_NOMEM;
		}
		ldap_memfree(ad);
	}
	ldap_memfree(ad);
	ber_free(ber, 0);
	if (rc != 0)
		return kms_fail(rc, "out of memory");
	if (*val == NULL)
		return kms_fail(KMS_ERR_NOTFOUND, "%s: the entry has no %s value", f->url, attr);
	return 0;
}

/* The server part of the URL as libldap wants it: scheme://host:port/. */
static char *
server_uri(const LDAPURLDesc *lud)
{
	char *uri = NULL;
	int v6 = strchr(lud->lud_host, ':') != NULL;

	if (asprintf(&uri, "%s://%s%s%s:%d/", lud->lud_scheme, v6 ? "[" : "", lud->lud_host, v6 ? "]" : "",
	    lud->lud_port > 0 ? lud->lud_port : (strcasecmp(lud->lud_scheme, "ldaps") == 0 ? 636 : 389)) < 0)
		return NULL;
	return uri;
}

static int
open_ld(struct ldap_fetch *f, const LDAPURLDesc *lud)
{
	struct timeval tv = { .tv_sec = f->timeout, .tv_usec = 0 };
	int version = LDAP_VERSION3, lrc;
	char *uri;

	if ((uri = server_uri(lud)) == NULL)
		return KMS_ERR_NOMEM;
	lrc = ldap_initialize(&f->ld, uri);
	free(uri);
	if (lrc != LDAP_SUCCESS)
		return kms_fail(KMS_ERR_INVALID, "%s: %s", f->url, ldap_err2string(lrc));
	ldap_set_option(f->ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(f->ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	ldap_set_option(f->ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	ldap_set_option(f->ld, LDAP_OPT_TIMEOUT, &tv);
	if (strcasecmp(lud->lud_scheme, "ldaps") == 0) {
		int hard = LDAP_OPT_X_TLS_HARD, zero = 0;

		ldap_set_option(f->ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &hard);
		ldap_set_option(f->ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
	}
	f->cb.lc_add = conn_add;
	f->cb.lc_del = conn_del;
	f->cb.lc_arg = f;
	if (ldap_set_option(f->ld, LDAP_OPT_CONNECT_CB, &f->cb) != LDAP_OPT_SUCCESS)
		return kms_fail(KMS_ERR_IO, "%s: cannot bound the answer's size", f->url);
	return 0;
}

int
pub_dp_ldap_fetch(const char *url, int timeout, size_t max, const int *cancel, X509_CRL **out)
{
	struct ldap_fetch f;
	LDAPURLDesc *lud = NULL;
	LDAPMessage *res = NULL, *done;
	struct berval *val = NULL;
	struct timeval tv;
	char *attrs[2];
	int lrc, msgid, err = LDAP_OTHER, rc;

	*out = NULL;
	memset(&f, 0, sizeof(f));
	f.url = url;
	f.timeout = timeout > 0 ? timeout : 30;
	f.max = max > 0 ? max : CA_CRL_FETCH_MAX;
	f.cancel = cancel;
	f.deadline = time(NULL) + f.timeout;
	if (url == NULL || ldap_url_parse(url, &lud) != LDAP_URL_SUCCESS)
		return kms_fail(KMS_ERR_INVALID, "%s: not an LDAP URL", url ? url : "(none)");
	if (lud->lud_host == NULL || lud->lud_host[0] == '\0') {
		rc = kms_fail(KMS_ERR_INVALID, "%s: the URL names no server", url);
		goto out;
	}
	if (lud->lud_dn == NULL || lud->lud_dn[0] == '\0') {
		rc = kms_fail(KMS_ERR_INVALID, "%s: the URL names no entry", url);
		goto out;
	}
	if (lud->lud_crit_exts > 0) {
		rc = kms_fail(KMS_ERR_INVALID, "%s: the URL has a critical extension we do not know", url);
		goto out;
	}
	attrs[0] = lud->lud_attrs != NULL && lud->lud_attrs[0] != NULL ? lud->lud_attrs[0] : DEFAULT_ATTR;
	attrs[1] = NULL;
	if ((rc = open_ld(&f, lud)) != 0 || (rc = bind_anon(&f)) != 0)
		goto out;
	tv.tv_sec = f.deadline - time(NULL) > 0 ? f.deadline - time(NULL) : 1;
	tv.tv_usec = 0;
	if ((lrc = ldap_search_ext(f.ld, lud->lud_dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, &tv, 1,
	    &msgid)) != LDAP_SUCCESS) {
		rc = kms_fail(KMS_ERR_IO, "%s: search: %s", url, ld_error(f.ld, lrc));
		goto out;
	}
	if ((rc = wait_result(&f, msgid, "search", &res)) != 0)
		goto out;
	for (done = ldap_first_message(f.ld, res); done != NULL && ldap_msgtype(done) != LDAP_RES_SEARCH_RESULT;
	    done = ldap_next_message(f.ld, done))
		;
	if (done == NULL) {
		rc = kms_fail(KMS_ERR_PROTO, "%s: search: no result from the server", url);
		goto out;
	}
	if ((lrc = ldap_parse_result(f.ld, done, &err, NULL, NULL, NULL, NULL, 0)) != LDAP_SUCCESS ||
	    err != LDAP_SUCCESS) {
		err = lrc != LDAP_SUCCESS ? lrc : err;
		rc = kms_fail(err == LDAP_NO_SUCH_OBJECT ? KMS_ERR_NOTFOUND : KMS_ERR_PROTO, "%s: search: %s", url,
		    ldap_err2string(err));
		goto out;
	}
	if ((rc = take_value(&f, res, attrs[0], &val)) != 0)
		goto out;
	if (val->bv_len > f.max) {
		rc = kms_fail(KMS_ERR_TOOBIG, "%s: CRL larger than %zu bytes", url, f.max);
		goto out;
	}
	if ((rc = ca_crl_parse((const unsigned char *)val->bv_val, val->bv_len, out)) != 0) {
		char why[512];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		rc = kms_fail(rc, "%s: %s", url, why);
	}
out:
	ber_bvfree(val);
	ldap_msgfree(res);
	if (f.ld != NULL)
		ldap_unbind_ext_s(f.ld, NULL, NULL);
	ldap_free_urldesc(lud);
	return rc;
}
