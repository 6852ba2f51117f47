/*
 * check_milter.c - unit suite for the mail side of kmsd (milter/): finding
 * signatures over a table of MIME shapes, the verdict for each certificate
 * state, the Authentication-Results text, the forged-header strip, the
 * multipart/mixed wrapper (golden file, the inner entity byte for byte,
 * the inner signature still verifying), the policy mapping, hostile input,
 * the message buffer and kmsd -t.
 *
 * The signed messages in tests/data/smime come from the openssl command
 * line and gpgsm (tests/data/smime/mkfixtures.sh).  Checks run at a fixed
 * time, inside every certificate's validity but eve's.
 * KMS_UPDATE_GOLDEN=1 rewrites the golden files instead of comparing.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/common.h"
#include "milter/mime.h"
#include "milter/milter.h"
#include "milter/smime_int.h"
#include "tests/unit/testutil.h"

/* 2027-01-01T00:00:00Z: after every fixture was signed, before 2045. */
#define TEST_NOW ((time_t)1798761600)
#define AUTHSERV "test.example"

static char *dir;
static X509_STORE *trust;
static struct ca_revidx *crl_idx;
static struct kms_config *cfg;

/* ----------------------------------------------------------------- helpers */

static X509 *
load_cert(const char *name)
{
	char rel[128], *path;
	FILE *fp;
	X509 *x;

	snprintf(rel, sizeof(rel), "smime/%s", name);
	path = tu_datafile(rel);
	fp = fopen(path, "r");
	ck_assert_msg(fp != NULL, "cannot open %s", path);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	ck_assert_ptr_nonnull(x);
	fclose(fp);
	free(path);
	return x;
}

/* A fixture message as SMTP carries it (CRLF). */
static unsigned char *
fixture(const char *name, size_t *len)
{
	char rel[128], *path;
	unsigned char *raw, *msg;
	size_t rawlen;

	snprintf(rel, sizeof(rel), "smime/%s", name);
	path = tu_datafile(rel);
	ck_assert_msg(kms_read_file(path, 64 * 1024 * 1024, &raw, &rawlen) == 0, "%s: %s", path, kms_last_error());
	ck_assert_int_eq(mlt_canon_crlf(raw, rawlen, &msg, len), 0);
	free(raw);
	free(path);
	return msg;
}

static void
setup(void)
{
	X509 *ca = load_cert("ca.pem");
	struct ca_revidx_builder *b;
	char *path = tu_datafile("smime/crl.pem");
	FILE *fp = fopen(path, "r");
	X509_CRL *crl;

	mlt_smime_init();
	dir = tu_tmpdir();
	kms_config_set_basedir(dir);
	ck_assert_int_eq(kms_config_load(NULL, &cfg), 0);
	trust = X509_STORE_new();
	ck_assert_int_eq(X509_STORE_add_cert(trust, ca), 1);
	ck_assert_ptr_nonnull(fp);
	crl = PEM_read_X509_CRL(fp, NULL, NULL, NULL);
	fclose(fp);
	free(path);
	ck_assert_ptr_nonnull(crl);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ca, TEST_NOW), 0);
	ck_assert_int_eq(ca_revidx_build(b, &crl_idx), 0);
	ca_revidx_builder_free(b);
	X509_CRL_free(crl);
	X509_free(ca);
}

static void
teardown(void)
{
	ca_revidx_unref(crl_idx);
	X509_STORE_free(trust);
	kms_config_unref(cfg);
	kms_config_set_basedir(NULL);
	tu_rmtree(dir);
	free(dir);
}

static void
ctx_init(struct mlt_check_ctx *ctx, const struct ca_revidx *rev)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->trust = trust;
	ctx->rev = rev;
	ctx->authserv_id = AUTHSERV;
	ctx->now = TEST_NOW;
	ctx->limits.max_message_size = 50 * 1024 * 1024;
	ctx->limits.max_headers = 1000;
	ctx->limits.max_parts = 1000;
	ctx->limits.max_depth = 32;
}

static struct mlt_result *
check_buf(const unsigned char *msg, size_t len, const struct ca_revidx *rev)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;

	ctx_init(&ctx, rev);
	ck_assert_msg(mlt_check_message(&ctx, msg, len, &res) == 0, "check: %s", kms_last_error());
	return res;
}

static struct mlt_result *
check_fixture(const char *name, const struct ca_revidx *rev)
{
	size_t len;
	unsigned char *msg = fixture(name, &len);
	struct mlt_result *res = check_buf(msg, len, rev);

	free(msg);
	return res;
}

#define ck_verdict(res, v) \
	ck_assert_msg((res)->verdict == (v), "verdict %s, want %s (%s)", pol_verdict_name((res)->verdict), \
	    pol_verdict_name(v), (res)->detail ? (res)->detail : "")

/* Text of a C string holding CRLF-ended lines, from a readable literal with \n. */
static unsigned char *
crlf(const char *s, size_t *len)
{
	unsigned char *out;

	ck_assert_int_eq(mlt_canon_crlf((const unsigned char *)s, strlen(s), &out, len), 0);
	return out;
}

/* Split msg into its top-level header fields named Content-* (as written) and body. */
static void
split_top(const unsigned char *msg, size_t len, char **content_fields, char **other_fields, const unsigned char **body,
    size_t *blen)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	GString *c = g_string_new(""), *o = g_string_new("");

	mlt_hdr_begin(&it, msg, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		GString *g = (f.name_len > 8 && strncasecmp((const char *)msg + f.start, "Content-", 8) == 0) ? c : o;

		g_string_append_len(g, (const char *)msg + f.start, (gssize)(f.end - f.start));
	}
	*content_fields = g_string_free(c, FALSE);
	*other_fields = g_string_free(o, FALSE);
	*body = msg + it.pos;
	*blen = len - it.pos;
}

static unsigned char *
concat(size_t *len, const char *a, const unsigned char *b, size_t blen, const char *c)
{
	size_t al = strlen(a), cl = strlen(c);
	unsigned char *o = malloc(al + blen + cl + 1);

	ck_assert_ptr_nonnull(o);
	memcpy(o, a, al);
	memcpy(o + al, b, blen);
	memcpy(o + al + blen, c, cl);
	o[al + blen + cl] = '\0';
	*len = al + blen + cl;
	return o;
}

/* -------------------------------------------------- verdict per certificate */

struct verdict_case {
	const char *file;
	enum pol_verdict verdict;
	size_t nsigs;
	const char *detail;     /* substring of the detail */
};

static const struct verdict_case verdict_cases[] = {
	{ "alice-detached.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "alice-opaque.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "alice-binary.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "alice-sha512.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "alice-smime-x.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "alice-gpgsm.eml", POL_V_PASS, 1, "signed by alice@example.org" },
	{ "bob-ecdsa.eml", POL_V_PASS, 1, "signed by bob@example.org" },
	{ "frank-subject-email.eml", POL_V_PASS, 1, "signed by frank@example.org" },
	{ "alice-tampered.eml", POL_V_FAIL, 1, "content changed after signing" },
	{ "garbage-signature.eml", POL_V_FAIL, 1, "not CMS" },
	{ "truncated-signature.eml", POL_V_FAIL, 1, "not CMS" },
	{ "dave-revoked.eml", POL_V_REVOKED, 1, "reason keyCompromise" },
	{ "carol-revoked-ca.eml", POL_V_REVOKED, 1, "a CA certificate in the chain" },
	{ "eve-expired.eml", POL_V_EXPIRED, 1, "expired on 2026-01-01T00:00:00Z" },
	{ "mallory-untrusted.eml", POL_V_UNTRUSTED, 1, "not from a trusted CA" },
	{ "web-serverauth.eml", POL_V_UNTRUSTED, 1, "unsuitable certificate purpose" },
	{ "alice-mismatch.eml", POL_V_MISMATCH, 1, "From someone@example.net is not an address of the signer" },
	{ "nobody-noaddr.eml", POL_V_MISMATCH, 1, "carries no address" },
	{ "two-signers.eml", POL_V_MISMATCH, 2, "bob@example.org" },
	{ "alice-nocerts.eml", POL_V_UNTRUSTED, 1, "neither in the message nor known here" },
	{ "encrypted.eml", POL_V_ENCRYPTED, 0, "encrypted" },
	{ "unsigned.eml", POL_V_NONE, 0, "no S/MIME signature" },
};

START_TEST(test_verdict_for_each_certificate_state)
{
	const struct verdict_case *vc = &verdict_cases[_i];
	struct mlt_result *res = check_fixture(vc->file, crl_idx);

	ck_assert_msg(res->verdict == vc->verdict, "%s: verdict %s, want %s (%s)", vc->file,
	    pol_verdict_name(res->verdict), pol_verdict_name(vc->verdict), res->detail);
	ck_assert_msg(res->nsigs == vc->nsigs, "%s: %zu signatures, want %zu", vc->file, res->nsigs, vc->nsigs);
	ck_assert_msg(strstr(res->detail, vc->detail) != NULL, "%s: detail '%s' lacks '%s'", vc->file, res->detail,
	    vc->detail);
	mlt_result_free(res);
}
END_TEST

START_TEST(test_revoked_signer_carries_date_reason_and_claim)
{
	struct mlt_result *res = check_fixture("dave-revoked.eml", crl_idx);
	const struct mlt_sig *s;

	ck_verdict(res, POL_V_REVOKED);
	s = &res->sigs[res->main];
	ck_assert_int_eq(s->revoked, 1);
	ck_assert_int_eq(s->revoked_ca, 0);
	ck_assert_int_eq(s->rev.reason, 1);             /* keyCompromise */
	ck_assert(s->rev.revoked_at > 0);
	ck_assert(s->signing_time > 0);
	ck_assert_str_eq(s->signer, "dave@example.org");
	ck_assert_str_eq(s->serial, "1004");
	ck_assert(strstr(res->detail, "claims to have been signed on") != NULL);
	mlt_result_free(res);
}
END_TEST

/* An index that says dave was revoked a day after he signed. */
static struct ca_revidx *
index_revoking(const char *certfile, time_t when, int reason)
{
	X509 *x = load_cert(certfile);
	struct ca_rev_info info = { .revoked_at = when, .reason = reason };
	struct ca_revidx *idx = NULL;

	ck_assert_int_eq(ca_revidx_with(NULL, X509_get_issuer_name(x), X509_get0_serialNumber(x), &info, &idx), 0);
	X509_free(x);
	return idx;
}

START_TEST(test_revoked_after_signing_says_signed_before_revocation)
{
	struct mlt_result *res = check_fixture("dave-revoked.eml", NULL);
	time_t signed_at;
	struct ca_revidx *idx;
	char *notice = NULL;

	/* Without any revocation data, dave's signature is good. */
	ck_verdict(res, POL_V_PASS);
	signed_at = res->sigs[0].signing_time;
	ck_assert(signed_at > 0);
	mlt_result_free(res);

	idx = index_revoking("dave.pem", signed_at + 86400, 4);
	res = check_fixture("dave-revoked.eml", idx);
	ck_verdict(res, POL_V_REVOKED);
	ck_assert(strstr(res->detail, "before the revocation") != NULL);
	ck_assert(strstr(res->detail, "reason superseded") != NULL);
	ck_assert_int_eq(mlt_notice_expand("%{signed_claim}", &res->sigs[0], &notice), 0);
	ck_assert(strstr(notice, "claims to have been signed on") != NULL);
	ck_assert(strstr(notice, "before the certificate was revoked") != NULL);
	free(notice);
	mlt_result_free(res);
	ca_revidx_unref(idx);
}
END_TEST

START_TEST(test_signed_in_the_revocations_second_reads_at_the_time)
{
	struct mlt_result *res = check_fixture("dave-revoked.eml", NULL);
	struct ca_revidx *idx;
	char *notice = NULL;

	ck_verdict(res, POL_V_PASS);
	idx = index_revoking("dave.pem", res->sigs[0].signing_time, 1);
	mlt_result_free(res);
	res = check_fixture("dave-revoked.eml", idx);
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_msg(strstr(res->detail, ", at the time the revocation") == NULL &&
	    strstr(res->detail, ", at the time of the revocation") != NULL, "%s", res->detail);
	ck_assert_int_eq(mlt_notice_expand("%{signed_claim}", &res->sigs[0], &notice), 0);
	ck_assert_msg(strstr(notice, ", at the time the certificate was revoked") != NULL, "%s", notice);
	free(notice);
	mlt_result_free(res);
	ca_revidx_unref(idx);
}
END_TEST

START_TEST(test_stale_revocation_data_is_mentioned)
{
	X509 *ca = load_cert("ca.pem");
	struct ca_revidx_builder *b;
	struct ca_revidx *idx;
	struct mlt_result *res;

	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_mark_stale(b, X509_get_subject_name(ca)), 0);
	ck_assert_int_eq(ca_revidx_build(b, &idx), 0);
	ca_revidx_builder_free(b);
	res = check_fixture("alice-detached.eml", idx);
	ck_verdict(res, POL_V_PASS);
	ck_assert_int_eq(res->sigs[0].stale, 1);
	ck_assert(strstr(res->detail, "revocation data is stale") != NULL);
	mlt_result_free(res);
	ca_revidx_unref(idx);
	X509_free(ca);
}
END_TEST

static int
find_alice(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid, X509 **out)
{
	int *calls = arg;

	(*calls)++;
	*out = load_cert("alice.pem");
	return 0;
}

static int
find_bob(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid, X509 **out)
{
	*out = load_cert("bob.pem");
	return 0;
}

START_TEST(test_signature_without_certificates_uses_store_lookup)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;
	size_t len;
	unsigned char *msg = fixture("alice-nocerts.eml", &len);
	int calls = 0;

	ctx_init(&ctx, crl_idx);
	ctx.find_cert = find_alice;
	ctx.find_cert_arg = &calls;
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_PASS);
	ck_assert_int_eq(calls, 1);
	mlt_result_free(res);

	/* A lookup that answers with the wrong certificate is not believed. */
	ctx.find_cert = find_bob;
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_UNTRUSTED);
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_from_compared_case_insensitively_and_only_once)
{
	size_t len, n2;
	unsigned char *msg = fixture("alice-detached.eml", &len), *m2;
	struct mlt_result *res;
	char *p;

	p = strstr((char *)msg, "From: alice@example.org");
	ck_assert_ptr_nonnull(p);
	memcpy(p + 6, "ALICE@Example.ORG", 17);
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_PASS);
	mlt_result_free(res);

	/* A second From field: which one would the reader see? Not a pass. */
	m2 = concat(&n2, "From: mallory@example.org\r\n", msg, len, "");
	res = check_buf(m2, n2, crl_idx);
	ck_verdict(res, POL_V_MISMATCH);
	ck_assert(strstr(res->detail, "2 From fields") != NULL);
	mlt_result_free(res);
	free(m2);
	free(msg);
}
END_TEST

/* ------------------------------------------------------- MIME shapes table */

enum shape {
	SHAPE_AS_IS,
	SHAPE_PARAMS_REORDERED_UNQUOTED,
	SHAPE_X_PROTOCOL_UPPERCASE,
	SHAPE_NO_PROTOCOL,
	SHAPE_FOLDED_CONTENT_TYPE,
	SHAPE_IN_MIXED_WITH_FOOTER,
	SHAPE_TWO_LEVELS_DEEP,
	SHAPE_TWICE_IN_MIXED,
	SHAPE_OPAQUE_AS_P7M_NAME,
	SHAPE_OPAQUE_X_NO_SMIME_TYPE,
	SHAPE_OPAQUE_IN_MIXED,
	SHAPE_FORWARDED_AS_RFC822,
	SHAPE_COUNT
};

struct shape_case {
	const char *what;
	enum pol_verdict verdict;
	size_t nsigs;
	const char *part;
};

static const struct shape_case shape_cases[SHAPE_COUNT] = {
	[SHAPE_AS_IS] = { "multipart/signed as openssl wrote it", POL_V_PASS, 1, "" },
	[SHAPE_PARAMS_REORDERED_UNQUOTED] = { "parameters reordered, protocol unquoted", POL_V_PASS, 1, "" },
	[SHAPE_X_PROTOCOL_UPPERCASE] = { "protocol Application/X-PKCS7-Signature", POL_V_PASS, 1, "" },
	[SHAPE_NO_PROTOCOL] = { "no protocol parameter", POL_V_PASS, 1, "" },
	[SHAPE_FOLDED_CONTENT_TYPE] = { "Content-Type folded over three lines", POL_V_PASS, 1, "" },
	/* An unsigned part beside the signed one: the signature does not cover the message. */
	[SHAPE_IN_MIXED_WITH_FOOTER] = { "inside multipart/mixed with a list footer", POL_V_PARTIAL, 1, "1" },
	[SHAPE_TWO_LEVELS_DEEP] = { "two multiparts deep", POL_V_PARTIAL, 1, "2.1" },
	[SHAPE_TWICE_IN_MIXED] = { "two signed parts in one message", POL_V_PASS, 2, "1" },
	[SHAPE_OPAQUE_AS_P7M_NAME] = { "opaque, application/octet-stream named smime.p7m", POL_V_PASS, 1, "" },
	[SHAPE_OPAQUE_X_NO_SMIME_TYPE] = { "opaque, x-pkcs7-mime without smime-type", POL_V_PASS, 1, "" },
	[SHAPE_OPAQUE_IN_MIXED] = { "opaque inside multipart/mixed", POL_V_PARTIAL, 1, "1" },
	[SHAPE_FORWARDED_AS_RFC822] = { "signed message forwarded as message/rfc822", POL_V_NONE, 0, NULL },
};

/* Build the message of a shape from the openssl fixtures. */
static unsigned char *
shape_message(enum shape sh, size_t *len)
{
	int opaque = sh == SHAPE_OPAQUE_AS_P7M_NAME || sh == SHAPE_OPAQUE_X_NO_SMIME_TYPE || sh == SHAPE_OPAQUE_IN_MIXED;
	size_t flen, blen;
	unsigned char *f = fixture(opaque ? "alice-opaque.eml" : "alice-detached.eml", &flen), *out = NULL;
	char *cfields, *others, *boundary = NULL, *hdr = NULL;
	const unsigned char *body;
	struct mlt_entity e;

	*len = 0;
	split_top(f, flen, &cfields, &others, &body, &blen);
	ck_assert_int_eq(mlt_entity_read(f, 0, flen, 1000, &e), 0);
	if (mlt_entity_param(&e, "boundary") != NULL)
		boundary = strdup(mlt_entity_param(&e, "boundary"));
	mlt_entity_clear(&e);

	switch (sh) {
	case SHAPE_AS_IS:
		out = concat(len, "", f, flen, "");
		break;
	case SHAPE_PARAMS_REORDERED_UNQUOTED:
	case SHAPE_X_PROTOCOL_UPPERCASE:
	case SHAPE_NO_PROTOCOL:
	case SHAPE_FOLDED_CONTENT_TYPE:
		if (sh == SHAPE_PARAMS_REORDERED_UNQUOTED)
			hdr = g_strdup_printf("%sMIME-Version: 1.0\r\nContent-Type: multipart/signed; boundary=\"%s\"; "
			    "micalg=sha-256; protocol=application/pkcs7-signature\r\n\r\n", others, boundary);
		else if (sh == SHAPE_X_PROTOCOL_UPPERCASE)
			hdr = g_strdup_printf("%sContent-Type: Multipart/Signed; protocol=\"Application/X-PKCS7-Signature\"; "
			    "micalg=\"sha-256\"; boundary=\"%s\"\r\n\r\n", others, boundary);
		else if (sh == SHAPE_NO_PROTOCOL)
			hdr = g_strdup_printf("%sContent-Type: multipart/signed; boundary=\"%s\"\r\n\r\n", others, boundary);
		else
			hdr = g_strdup_printf("%sContent-Type: multipart/signed;\r\n protocol=\"application/pkcs7-signature\";\r\n"
			    "\tmicalg=sha-256; boundary=\"%s\"\r\n\r\n", others, boundary);
		out = concat(len, hdr, body, blen, "");
		break;
	case SHAPE_IN_MIXED_WITH_FOOTER:
	case SHAPE_OPAQUE_IN_MIXED:
		hdr = g_strdup_printf("From: alice@example.org\r\nTo: list@example.net\r\nSubject: [list] hi\r\n"
		    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"listfooter\"\r\n\r\n"
		    "--listfooter\r\n%s\r\n", cfields);
		out = concat(len, hdr, body, blen, "\r\n--listfooter\r\nContent-Type: text/plain\r\n\r\n"
		    "_______________\r\nlist footer\r\n--listfooter--\r\n");
		break;
	case SHAPE_TWO_LEVELS_DEEP:
		hdr = g_strdup_printf("From: alice@example.org\r\nSubject: deep\r\nContent-Type: multipart/mixed; boundary=A\r\n\r\n"
		    "--A\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--A\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
		    "--B\r\n%s\r\n", cfields);
		out = concat(len, hdr, body, blen, "\r\n--B--\r\n--A--\r\n");
		break;
	case SHAPE_TWICE_IN_MIXED: {
		unsigned char *half;
		size_t hlen;

		hdr = g_strdup_printf("From: alice@example.org\r\nSubject: twice\r\nContent-Type: multipart/mixed; boundary=T\r\n\r\n"
		    "--T\r\n%s\r\n", cfields);
		half = concat(&hlen, hdr, body, blen, "\r\n--T\r\n");
		g_free(hdr);
		hdr = g_strdup_printf("%s\r\n", cfields);
		{
			unsigned char *second;
			size_t slen;

			second = concat(&slen, hdr, body, blen, "\r\n--T--\r\n");
			out = malloc(hlen + slen);
			memcpy(out, half, hlen);
			memcpy(out + hlen, second, slen);
			*len = hlen + slen;
			free(second);
		}
		free(half);
		break;
	}
	case SHAPE_OPAQUE_AS_P7M_NAME:
		hdr = g_strdup_printf("%sMIME-Version: 1.0\r\nContent-Type: application/octet-stream; name=\"smime.p7m\"\r\n"
		    "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\n", others);
		out = concat(len, hdr, body, blen, "");
		break;
	case SHAPE_OPAQUE_X_NO_SMIME_TYPE:
		hdr = g_strdup_printf("%sContent-Type: application/x-pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\n", others);
		out = concat(len, hdr, body, blen, "");
		break;
	case SHAPE_FORWARDED_AS_RFC822:
		hdr = g_strdup_printf("From: someone@example.net\r\nSubject: Fwd\r\nContent-Type: multipart/mixed; boundary=F\r\n\r\n"
		    "--F\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--F\r\nContent-Type: message/rfc822\r\n\r\n");
		out = concat(len, hdr, f, flen, "\r\n--F--\r\n");
		break;
	default:
		break;
	}
	g_free(hdr);
	free(boundary);
	g_free(cfields);
	g_free(others);
	free(f);
	return out;
}

START_TEST(test_signature_discovery_over_mime_shapes)
{
	const struct shape_case *sc = &shape_cases[_i];
	size_t len;
	unsigned char *msg = shape_message((enum shape)_i, &len);
	struct mlt_result *res = check_buf(msg, len, crl_idx);

	ck_assert_msg(res->verdict == sc->verdict, "%s: verdict %s (%s)", sc->what, pol_verdict_name(res->verdict),
	    res->detail);
	ck_assert_msg(res->nsigs == sc->nsigs, "%s: %zu signatures", sc->what, res->nsigs);
	if (sc->part != NULL)
		ck_assert_msg(strcmp(res->sigs[0].part, sc->part) == 0, "%s: part '%s', want '%s'", sc->what,
		    res->sigs[0].part, sc->part);
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_pgp_signed_multipart_is_not_ours)
{
	size_t len;
	unsigned char *msg = crlf("From: a@example.org\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\";"
	    " boundary=P\n\n--P\nContent-Type: text/plain\n\nhi\n--P\nContent-Type: application/pgp-signature\n\n"
	    "-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----\n--P--\n", &len);
	struct mlt_result *res = check_buf(msg, len, crl_idx);

	ck_verdict(res, POL_V_NONE);
	ck_assert_ptr_null(res->ar_value);
	mlt_result_free(res);
	free(msg);
}
END_TEST

/* ------------------------------------------------- Authentication-Results */

START_TEST(test_ar_header_names_signer_serial_issuer)
{
	struct mlt_result *res = check_fixture("alice-detached.eml", crl_idx);
	X509 *alice = load_cert("alice.pem");
	char *serial = ca_serial_hex(X509_get0_serialNumber(alice)), want[1024];

	snprintf(want, sizeof(want), AUTHSERV ";\n\tsmime=pass (pass: signed by alice@example.org)\n"
	    "\tbody.smime-identifier=alice@example.org\n\tbody.smime-serial=%s\n"
	    "\tbody.smime-issuer=\"O=KMS Test,CN=KMS Test S/MIME CA\"", serial);
	ck_assert_str_eq(res->ar_value, want);
	free(serial);
	X509_free(alice);
	mlt_result_free(res);
}
END_TEST

START_TEST(test_ar_result_keywords_per_verdict)
{
	static const struct { const char *file; const char *kw; } cases[] = {
		{ "dave-revoked.eml", "smime=fail (revoked: " },
		{ "alice-tampered.eml", "smime=fail (fail: " },
		{ "mallory-untrusted.eml", "smime=neutral (untrusted: " },
		{ "eve-expired.eml", "smime=neutral (expired: " },
		{ "alice-mismatch.eml", "smime=policy (mismatch: " },
		{ "encrypted.eml", "smime=none (encrypted: " },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mlt_result *res = check_fixture(cases[i].file, crl_idx);

		ck_assert_ptr_nonnull(res->ar_value);
		ck_assert_msg(strncmp(res->ar_value, AUTHSERV ";\n\t", strlen(AUTHSERV) + 3) == 0, "%s", res->ar_value);
		ck_assert_msg(strstr(res->ar_value, cases[i].kw) != NULL, "%s: %s", cases[i].file, res->ar_value);
		mlt_result_free(res);
	}
}
END_TEST

/* Is s a well-formed RFC 5322 comment/quoted-string-safe A-R value (no CR, no stray parentheses)? */
static void
assert_ar_syntax(const char *v)
{
	int depth = 0, inq = 0;

	for (const char *p = v; *p; p++) {
		ck_assert_msg(*p != '\r' && (*p != '\n' || p[1] == '\t'), "bad fold in %s", v);
		ck_assert_msg((unsigned char)*p < 0x80, "8-bit byte in %s", v);
		if (inq) {
			if (*p == '\\')
				p++;
			else if (*p == '"')
				inq = 0;
		} else if (depth > 0) {
			if (*p == '(')
				depth++;
			else if (*p == ')')
				depth--;
		} else if (*p == '"') {
			inq = 1;
		} else if (*p == '(') {
			depth = 1;
		} else {
			ck_assert_msg(*p != ')', "stray ) in %s", v);
		}
	}
	ck_assert_msg(depth == 0 && !inq, "unterminated comment or string in %s", v);
}

START_TEST(test_ar_quotes_odd_values_and_keeps_comments_closed)
{
	struct mlt_result res;
	struct mlt_sig sig;

	memset(&res, 0, sizeof(res));
	memset(&sig, 0, sizeof(sig));
	sig.verdict = POL_V_PASS;
	sig.detail = "evil ) (comment \\ \"x\" \x01\r\nInjected: yes";
	sig.signer = "\"odd local\"@example.org";
	sig.serial = "00ff";
	sig.issuer = "CN=a \"quoted\" \\ name,O=x";
	res.verdict = POL_V_PASS;
	res.sigs = &sig;
	res.nsigs = 1;
	ck_assert_int_eq(mlt_ar_build(AUTHSERV, &res), 0);
	assert_ar_syntax(res.ar_value);
	ck_assert(strstr(res.ar_value, "body.smime-identifier=\"\\\"odd local\\\"@example.org\"") != NULL);
	ck_assert(strstr(res.ar_value, "body.smime-issuer=\"CN=a \\\"quoted\\\" \\\\ name,O=x\"") != NULL);
	ck_assert(strstr(res.ar_value, "\nInjected") == NULL);
	free(res.ar_value);
}
END_TEST

START_TEST(test_unsigned_mail_gets_no_header)
{
	struct mlt_result *res = check_fixture("unsigned.eml", crl_idx);
	struct mlt_rewrite *rw;
	size_t len;
	unsigned char *msg = fixture("unsigned.eml", &len);

	ck_assert_ptr_null(res->ar_value);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_ACCEPT);
	ck_assert_uint_eq(rw->nedits, 0);
	ck_assert_ptr_null(rw->body);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(msg);
}
END_TEST

/* ------------------------------------------------------ forged-header strip */

START_TEST(test_ar_is_ours_matches_the_authserv_token_only)
{
	static const struct { const char *v; int ours; } cases[] = {
		{ " test.example; smime=pass", 1 },
		{ "test.example;smime=pass", 1 },
		{ " TEST.Example ; smime=pass", 1 },
		{ " \"test.example\"; smime=pass", 1 },
		{ " (forged) test.example; none", 1 },
		{ "\r\n\ttest.example;\r\n\tsmime=pass", 1 },
		{ " test.example 1; none", 1 },
		{ " test.example", 1 },
		{ " test.example.evil; smime=pass", 0 },
		{ " evil.test.example; smime=pass", 0 },
		{ " other.example; smime=pass", 0 },
		{ " (test.example) other.example; none", 0 },
		{ " test.exampl; none", 0 },
		{ "", 0 },
		{ " ((((", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(mlt_ar_is_ours(cases[i].v, strlen(cases[i].v), AUTHSERV) == cases[i].ours,
		    "'%s' should %sbe ours", cases[i].v, cases[i].ours ? "" : "not ");
}
END_TEST

static const char forged_headers[] =
	"Authentication-Results: test.example; smime=pass\n"
	"Authentication-Results: other.example; dkim=pass\n"
	"Authentication-Results:\n\tTEST.EXAMPLE;\n\tsmime=pass body.smime-identifier=dave@example.org\n"
	"X-KMS-Warning: nothing to see\n"
	"Authentication-Results: test.example.evil; smime=pass\n"
	"Authentication-Results: \"test.example\"; smime=pass\n";

START_TEST(test_forged_ar_headers_removed_highest_index_first)
{
	size_t flen, len, olen;
	unsigned char *f = fixture("alice-detached.eml", &flen), *msg, *out;
	struct mlt_result *res;
	struct mlt_rewrite *rw;
	size_t hl;
	unsigned char *h = crlf(forged_headers, &hl);
	int seen[8] = { 0 }, n = 0;

	msg = malloc(hl + flen);
	memcpy(msg, h, hl);
	memcpy(msg + hl, f, flen);
	len = hl + flen;
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_PASS);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	for (size_t i = 0; i < rw->nedits; i++) {
		const struct mlt_hdr_edit *e = &rw->edits[i];

		if (e->op == MLT_HDR_DELETE && strcmp(e->name, "Authentication-Results") == 0) {
			ck_assert_int_lt(e->index, 8);
			seen[e->index] = 1;
			n++;
			/* Highest first: the next deletion of this name has a lower index. */
			for (size_t k = i + 1; k < rw->nedits; k++)
				if (rw->edits[k].op == MLT_HDR_DELETE && strcmp(rw->edits[k].name, e->name) == 0)
					ck_assert_int_lt(rw->edits[k].index, e->index);
		}
	}
	ck_assert_int_eq(n, 3);
	ck_assert(seen[1] && seen[3] && seen[5]);
	ck_assert_int_eq(mlt_rewrite_apply(msg, len, rw, &out, &olen), 0);
	ck_assert(memmem(out, olen, "other.example; dkim=pass", 24) != NULL);
	ck_assert(memmem(out, olen, "test.example.evil", 17) != NULL);
	ck_assert(memmem(out, olen, "nothing to see", 14) == NULL);
	ck_assert(memmem(out, olen, "TEST.EXAMPLE", 12) == NULL);
	ck_assert(memmem(out, olen, "Authentication-Results: test.example;\r\n\tsmime=pass (pass:", 57) != NULL);
	free(out);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(h);
	free(msg);
	free(f);
}
END_TEST

START_TEST(test_forged_headers_removed_from_unsigned_mail)
{
	size_t ul, hl, len, olen;
	unsigned char *u = fixture("unsigned.eml", &ul), *h = crlf(forged_headers, &hl), *msg, *out;
	struct mlt_result *res;
	struct mlt_rewrite *rw;

	msg = malloc(hl + ul);
	memcpy(msg, h, hl);
	memcpy(msg + hl, u, ul);
	len = hl + ul;
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_NONE);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	for (size_t i = 0; i < rw->nedits; i++)
		ck_assert_int_eq(rw->edits[i].op, MLT_HDR_DELETE);
	ck_assert_uint_eq(rw->nedits, 4);       /* three of ours, one X-KMS-Warning */
	ck_assert_int_eq(mlt_rewrite_apply(msg, len, rw, &out, &olen), 0);
	/* The rest is untouched: removing the four fields gives back the original. */
	{
		static const char keep[] = "Authentication-Results: other.example; dkim=pass\r\n"
		    "Authentication-Results: test.example.evil; smime=pass\r\n";

		ck_assert_uint_eq(olen, strlen(keep) + ul);
		ck_assert(memcmp(out, keep, strlen(keep)) == 0);
		ck_assert(memcmp(out + strlen(keep), u, ul) == 0);
	}
	ck_assert(memmem(out, olen, "Just text.\r\n", 12) != NULL);
	free(out);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(h);
	free(u);
	free(msg);
}
END_TEST

/* -------------------------------------------------------------- the wrapper */

#define TEST_NOTICE "Signer: %{signer}\nSerial: %{serial}\nRevoked: %{revoked_at} (%{reason})\n" \
	"The message %{signed_claim}.\nUnknown %{nothing} and 100% stay."

static void
golden_compare(const char *name, const unsigned char *got, size_t len)
{
	char rel[128], *path;
	unsigned char *want = NULL;
	size_t wlen = 0;

	snprintf(rel, sizeof(rel), "smime/%s", name);
	path = tu_datafile(rel);
	if (getenv("KMS_UPDATE_GOLDEN") != NULL) {
		FILE *fp = fopen(path, "wb");

		ck_assert_ptr_nonnull(fp);
		ck_assert_uint_eq(fwrite(got, 1, len, fp), len);
		fclose(fp);
	}
	ck_assert_msg(kms_read_file(path, 1 << 20, &want, &wlen) == 0, "%s: %s", path, kms_last_error());
	ck_assert_msg(wlen == len && memcmp(want, got, len) == 0, "output differs from %s", path);
	free(want);
	free(path);
}

/* Check dave-revoked.eml with warn; the input, the plan and the output. */
static void
wrap_dave(unsigned char **in, size_t *inlen, unsigned char **out, size_t *outlen, struct mlt_rewrite **rwp)
{
	struct mlt_result *res;
	struct mlt_rewrite *rw;

	free(cfg->policy.notice);
	cfg->policy.notice = strdup(TEST_NOTICE);
	*in = fixture("dave-revoked.eml", inlen);
	res = check_buf(*in, *inlen, crl_idx);
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, *in, *inlen, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_WARN);
	ck_assert_ptr_nonnull(rw->body);
	ck_assert_int_eq(mlt_rewrite_apply(*in, *inlen, rw, out, outlen), 0);
	mlt_result_free(res);
	if (rwp != NULL)
		*rwp = rw;
	else
		mlt_rewrite_free(rw);
}

START_TEST(test_revoked_warn_wraps_message_as_golden_file)
{
	unsigned char *in, *out;
	size_t inlen, outlen;

	wrap_dave(&in, &inlen, &out, &outlen, NULL);
	golden_compare("dave-revoked.out", out, outlen);
	/* Our Authentication-Results goes on top of the header, as smfi_insheader(ctx, 0, ...) puts it. */
	ck_assert(outlen > 24 && memcmp(out, "Authentication-Results: test.example;", 37) == 0);
	ck_assert(memmem(out, outlen, "Subject: [REVOKED SENDER] Test dave-revoked\r\n", 45) != NULL);
	ck_assert(memmem(out, outlen, "X-KMS-Warning: signer certificate of dave@example.org (serial 1004) was revoked on ", 82) != NULL);
	ck_assert(memmem(out, outlen, "Unknown %{nothing} and 100% stay.", 33) != NULL);
	free(in);
	free(out);
}
END_TEST

/* The body parts of the top-level multipart of msg. */
static struct mlt_span *
top_parts(const unsigned char *msg, size_t len, size_t *n)
{
	struct mlt_entity e;
	struct mlt_span *parts;
	int closed;

	ck_assert_int_eq(mlt_entity_read(msg, 0, len, 1000, &e), 0);
	ck_assert(mlt_entity_is(&e, "multipart", "mixed"));
	ck_assert_int_eq(mlt_multipart_split(msg, e.body, e.end, mlt_entity_param(&e, "boundary"), 100, &parts, n, &closed), 0);
	ck_assert_int_eq(closed, 1);
	mlt_entity_clear(&e);
	return parts;
}

START_TEST(test_wrapped_inner_entity_is_the_original_byte_for_byte)
{
	unsigned char *in, *out, *want;
	size_t inlen, outlen, n, blen, wlen;
	struct mlt_span *parts;
	char *cfields, *others;
	const unsigned char *body;

	wrap_dave(&in, &inlen, &out, &outlen, NULL);
	parts = top_parts(out, outlen, &n);
	ck_assert_uint_eq(n, 2);
	split_top(in, inlen, &cfields, &others, &body, &blen);
	/* Content-* fields as written, the empty line, the body as it arrived. */
	{
		char *head = g_strdup_printf("%s\r\n", cfields);

		want = concat(&wlen, head, body, blen, "");
		g_free(head);
	}
	ck_assert_uint_eq(parts[1].end - parts[1].start, wlen);
	ck_assert(memcmp(out + parts[1].start, want, wlen) == 0);
	/* The notice part is plain text. */
	ck_assert(memmem(out + parts[0].start, parts[0].end - parts[0].start, "Content-Type: text/plain; charset=utf-8", 39) != NULL);
	/* Top level: MIME-Version kept, one Content-Type, the old Content-* gone from it. */
	{
		struct mlt_hdr_iter it;
		struct mlt_field f;
		int ct = 0;

		mlt_hdr_begin(&it, out, 0, outlen);
		while (mlt_hdr_next(&it, &f, NULL))
			if (mlt_field_is(out, &f, "Content-Type"))
				ct++;
		ck_assert_int_eq(ct, 1);
	}
	free(want);
	g_free(cfields);
	g_free(others);
	free(parts);
	free(in);
	free(out);
}
END_TEST

START_TEST(test_wrapped_inner_part_still_verifies)
{
	unsigned char *in, *out;
	size_t inlen, outlen, n;
	struct mlt_span *parts;
	struct mlt_result *res;
	char *path, *cmd, *ca = tu_datafile("smime/ca.pem");
	FILE *fp;

	wrap_dave(&in, &inlen, &out, &outlen, NULL);
	/* Our own check finds the inner signature: good without revocation data (beside our unsigned notice)... */
	res = check_buf(out, outlen, NULL);
	ck_verdict(res, POL_V_PARTIAL);
	ck_assert_str_eq(res->sigs[0].part, "2");
	mlt_result_free(res);
	/* ...and revoked with it. */
	res = check_buf(out, outlen, crl_idx);
	ck_verdict(res, POL_V_REVOKED);
	mlt_result_free(res);

	/* And so does openssl, given the inner entity alone. */
	parts = top_parts(out, outlen, &n);
	path = g_strdup_printf("%s/inner.eml", dir);
	fp = fopen(path, "wb");
	ck_assert_ptr_nonnull(fp);
	fwrite(out + parts[1].start, 1, parts[1].end - parts[1].start, fp);
	fclose(fp);
	if (system("openssl version >/dev/null 2>&1") == 0) {
		cmd = g_strdup_printf("openssl cms -verify -in '%s' -CAfile '%s' -purpose smimesign -out /dev/null 2>/dev/null",
		    path, ca);
		ck_assert_msg(system(cmd) == 0, "openssl cms -verify refused the inner part");
		g_free(cmd);
	}
	g_free(path);
	free(ca);
	free(parts);
	free(in);
	free(out);
}
END_TEST

START_TEST(test_subject_tagged_once)
{
	unsigned char *in, *out, *out2;
	size_t inlen, outlen, out2len;
	struct mlt_result *res;
	struct mlt_rewrite *rw;

	wrap_dave(&in, &inlen, &out, &outlen, NULL);
	/* The wrapped message passes a second kmsd: still revoked, not tagged again. */
	res = check_buf(out, outlen, crl_idx);
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, out, outlen, &rw), 0);
	for (size_t i = 0; i < rw->nedits; i++)
		ck_assert_msg(strcasecmp(rw->edits[i].name, "Subject") != 0, "subject tagged twice");
	ck_assert_int_eq(mlt_rewrite_apply(out, outlen, rw, &out2, &out2len), 0);
	ck_assert(memmem(out2, out2len, "[REVOKED SENDER] [REVOKED SENDER]", 33) == NULL);
	/* Our earlier header went, one new one came. */
	{
		unsigned char *first = memmem(out2, out2len, "Authentication-Results", 22);

		ck_assert_ptr_nonnull(first);
		ck_assert_ptr_null(memmem(first + 1, out2len - (size_t)(first + 1 - out2), "Authentication-Results", 22));
	}
	free(out2);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(in);
	free(out);
}
END_TEST

START_TEST(test_subject_added_when_missing_and_encoded_when_not_ascii)
{
	size_t len, olen;
	unsigned char *msg = fixture("dave-revoked.eml", &len), *out;
	struct mlt_result *res;
	struct mlt_rewrite *rw;
	char *p = strstr((char *)msg, "Subject:");

	ck_assert_ptr_nonnull(p);
	memcpy(p, "Xubject:", 8);
	free(cfg->policy.subject_tag);
	cfg->policy.subject_tag = strdup("[WIDERRUFEN – Absender]");
	res = check_buf(msg, len, crl_idx);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(mlt_rewrite_apply(msg, len, rw, &out, &olen), 0);
	ck_assert(memmem(out, olen, "Subject: =?UTF-8?B?", 19) != NULL);
	free(out);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_wrap_keeps_an_8bit_transfer_encoding_on_the_outside)
{
	size_t len, olen;
	unsigned char *msg = crlf("From: dave@example.org\nSubject: x\nContent-Type: text/plain; charset=utf-8\n"
	    "Content-Transfer-Encoding: 8bit\nContent-Disposition: inline\n\nGr\xc3\xbc\xc3\x9f" "e\n", &len), *out;
	struct mlt_result res;
	struct mlt_sig sig;
	struct mlt_rewrite *rw;

	/* A hand-made revoked result is enough to drive the wrapper. */
	memset(&res, 0, sizeof(res));
	memset(&sig, 0, sizeof(sig));
	sig.verdict = POL_V_REVOKED;
	sig.revoked = 1;
	sig.rev.revoked_at = TEST_NOW;
	sig.signer = "dave@example.org";
	sig.serial = "1004";
	sig.detail = "revoked";
	res.verdict = POL_V_REVOKED;
	res.detail = "revoked";
	res.sigs = &sig;
	res.nsigs = 1;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, &res, msg, len, &rw), 0);
	ck_assert_int_eq(mlt_rewrite_apply(msg, len, rw, &out, &olen), 0);
	ck_assert(memmem(out, olen, "Content-Transfer-Encoding: 8bit\r\n", 33) != NULL);
	/* The Content-Disposition moved inside. */
	ck_assert((unsigned char *)memmem(out, olen, "Content-Disposition: inline\r\n\r\nGr", 33) != NULL);
	mlt_rewrite_free(rw);
	free(out);
	free(msg);
}
END_TEST

START_TEST(test_notice_expansion_is_safe)
{
	struct mlt_sig sig;
	char *s = NULL;

	memset(&sig, 0, sizeof(sig));
	sig.signer = "evil\r\n--boundary\x01@example.org";
	sig.serial = "abc";
	sig.revoked = 1;
	sig.rev.revoked_at = TEST_NOW;
	sig.rev.reason = 1;
	ck_assert_int_eq(mlt_notice_expand("%{signer}|%{serial}|%{revoked_at}|%{reason}|%{signed_claim}|%{x}|%|%{signer", &sig, &s), 0);
	ck_assert_str_eq(s, "evil?\?--boundary?@example.org|abc|2027-01-01T00:00:00Z|keyCompromise|"
	    "does not say when it was signed|%{x}|%|%{signer");
	free(s);
	/* A value that looks like a variable is not expanded again. */
	sig.signer = "%{serial}";
	ck_assert_int_eq(mlt_notice_expand("%{signer}", &sig, &s), 0);
	ck_assert_str_eq(s, "%{serial}");
	free(s);
}
END_TEST

START_TEST(test_non_ascii_notice_goes_quoted_printable)
{
	unsigned char *in, *out;
	size_t inlen, outlen;
	struct mlt_result *res;
	struct mlt_rewrite *rw;

	in = fixture("dave-revoked.eml", &inlen);
	free(cfg->policy.notice);
	cfg->policy.notice = strdup("Achtung: das Zertifikat von %{signer} wurde widerrufen – bitte prüfen.");
	res = check_buf(in, inlen, crl_idx);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, in, inlen, &rw), 0);
	ck_assert_int_eq(mlt_rewrite_apply(in, inlen, rw, &out, &outlen), 0);
	ck_assert(memmem(out, outlen, "Content-Transfer-Encoding: quoted-printable", 43) != NULL);
	ck_assert(memmem(out, outlen, "=E2=80=93", 9) != NULL);
	ck_assert(memmem(out, outlen, "pr=C3=BCfen.", 12) != NULL);
	free(out);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(in);
}
END_TEST

/* ---------------------------------------------------------- policy mapping */

static struct mlt_rewrite *
plan_fixture(const char *name, struct mlt_result **resp)
{
	size_t len;
	unsigned char *msg = fixture(name, &len);
	struct mlt_result *res = check_buf(msg, len, crl_idx);
	struct mlt_rewrite *rw;

	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	free(msg);
	if (resp)
		*resp = res;
	else
		mlt_result_free(res);
	return rw;
}

START_TEST(test_policy_reject_gives_550_naming_the_reason)
{
	struct mlt_rewrite *rw;

	cfg->policy.on_revoked = KMS_ACT_REJECT;
	rw = plan_fixture("dave-revoked.eml", NULL);
	ck_assert_int_eq(rw->action, KMS_ACT_REJECT);
	ck_assert_str_eq(rw->rcode, "550");
	ck_assert_str_eq(rw->xcode, "5.7.1");
	ck_assert(strstr(rw->reply, "revoked") != NULL);
	ck_assert(strstr(rw->reply, "keyCompromise") != NULL);
	ck_assert(strpbrk(rw->reply, "%\r\n") == NULL);
	ck_assert_uint_eq(rw->nedits, 0);
	mlt_rewrite_free(rw);
}
END_TEST

START_TEST(test_policy_tempfail_gives_451)
{
	struct mlt_rewrite *rw;

	cfg->policy.on_fail = KMS_ACT_TEMPFAIL;
	rw = plan_fixture("alice-tampered.eml", NULL);
	ck_assert_int_eq(rw->action, KMS_ACT_TEMPFAIL);
	ck_assert_str_eq(rw->rcode, "451");
	ck_assert_str_eq(rw->xcode, "4.7.1");
	ck_assert(strstr(rw->reply, "fail") != NULL);
	mlt_rewrite_free(rw);
}
END_TEST

START_TEST(test_policy_quarantine_keeps_header_and_gives_reason)
{
	struct mlt_rewrite *rw;
	int ar = 0;

	cfg->policy.on_untrusted = KMS_ACT_QUARANTINE;
	rw = plan_fixture("mallory-untrusted.eml", NULL);
	ck_assert_int_eq(rw->action, KMS_ACT_QUARANTINE);
	ck_assert_ptr_nonnull(rw->quarantine_reason);
	ck_assert(strstr(rw->quarantine_reason, "untrusted") != NULL);
	for (size_t i = 0; i < rw->nedits; i++)
		ar += rw->edits[i].op == MLT_HDR_INSERT && strcmp(rw->edits[i].name, "Authentication-Results") == 0;
	ck_assert_int_eq(ar, 1);
	ck_assert_ptr_null(rw->body);
	mlt_rewrite_free(rw);
}
END_TEST

START_TEST(test_policy_defaults_accept_with_header_only)
{
	static const char *files[] = { "alice-detached.eml", "alice-tampered.eml", "eve-expired.eml",
		"mallory-untrusted.eml", "alice-mismatch.eml", "encrypted.eml" };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		struct mlt_rewrite *rw = plan_fixture(files[i], NULL);

		ck_assert_msg(rw->action == KMS_ACT_ACCEPT, "%s: %s", files[i], kms_action_name(rw->action));
		ck_assert_ptr_null(rw->body);
		ck_assert_uint_eq(rw->nedits, 1);
		ck_assert_int_eq(rw->edits[0].op, MLT_HDR_INSERT);
		ck_assert_str_eq(rw->edits[0].name, "Authentication-Results");
		mlt_rewrite_free(rw);
	}
}
END_TEST

START_TEST(test_internal_error_answers_on_error)
{
	struct mlt_rewrite *rw;

	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, NULL, NULL, 0, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_TEMPFAIL);
	ck_assert_str_eq(rw->rcode, "451");
	mlt_rewrite_free(rw);
	cfg->policy.on_error = KMS_ACT_ACCEPT;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, NULL, NULL, 0, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_ACCEPT);
	ck_assert_uint_eq(rw->nedits, 0);
	mlt_rewrite_free(rw);
}
END_TEST

START_TEST(test_warn_on_other_verdict_tags_without_wrapping)
{
	struct mlt_rewrite *rw;
	int warn = 0, subj = 0;

	cfg->policy.on_expired = KMS_ACT_WARN;
	rw = plan_fixture("eve-expired.eml", NULL);
	ck_assert_int_eq(rw->action, KMS_ACT_WARN);
	ck_assert_ptr_null(rw->body);
	for (size_t i = 0; i < rw->nedits; i++) {
		warn += strcmp(rw->edits[i].name, "X-KMS-Warning") == 0 && rw->edits[i].op == MLT_HDR_ADD;
		subj += strcmp(rw->edits[i].name, "Subject") == 0;
		if (strcmp(rw->edits[i].name, "X-KMS-Warning") == 0)
			ck_assert(strstr(rw->edits[i].value, "S/MIME expired:") != NULL);
	}
	ck_assert_int_eq(warn, 1);
	ck_assert_int_eq(subj, 1);
	mlt_rewrite_free(rw);
}
END_TEST

/* The fetcher's answer for an unknown status: a fetch asked for a second ago. */
static struct ca_revidx *
fetch_pending(void *arg, STACK_OF(X509) *chain, int depth, time_t *since)
{
	int *calls = arg;

	(void)chain;
	(void)depth;
	++*calls;
	*since = time(NULL) - 1;
	return NULL;
}

static int
has_edit(const struct mlt_rewrite *rw, const char *name)
{
	for (size_t i = 0; i < rw->nedits; i++)
		if (strcmp(rw->edits[i].name, name) == 0)
			return 1;
	return 0;
}

START_TEST(test_unknown_revocation_has_its_own_result_and_action_whatever_on_pass)
{
	static const int on_pass[] = { KMS_ACT_ACCEPT, KMS_ACT_WARN, KMS_ACT_QUARANTINE };
	struct ca_revidx_builder *b;
	struct ca_revidx *none;
	struct mlt_check_ctx ctx;
	struct mlt_result *res;
	struct mlt_rewrite *rw;
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);
	int calls = 0;

	/* An index with no CRL of the test CA: no status for alice. */
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_build(b, &none), 0);
	ca_revidx_builder_free(b);
	ctx_init(&ctx, none);
	ctx.rev_unknown = fetch_pending;
	ctx.rev_unknown_arg = &calls;
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_PASS);
	ck_assert_int_eq(calls, 1);
	ck_assert_uint_eq(res->nsigs, 1);
	ck_assert_int_eq(res->sigs[0].rev_unknown, 1);
	/* The result says it, and why. */
	ck_assert_msg(strstr(res->detail, "revocation unknown: no current CRL covers the certificate "
	    "(no CRL of its issuer is loaded; its distribution point is being fetched)") != NULL, "%s", res->detail);
	ck_assert(strstr(res->ar_value, "revocation unknown") != NULL);

	cfg->policy.on_revocation_unknown = KMS_ACT_TEMPFAIL;
	cfg->policy.revocation_unknown_wait = 600;
	for (size_t i = 0; i < sizeof(on_pass) / sizeof(on_pass[0]); i++) {
		cfg->policy.on_pass = on_pass[i];
		ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
		ck_assert_msg(rw->action == KMS_ACT_TEMPFAIL, "on_pass %s: %s", kms_action_name(on_pass[i]),
		    kms_action_name(rw->action));
		ck_assert_str_eq(rw->rcode, "451");
		ck_assert(strstr(rw->reply, "revocation unknown") != NULL);
		mlt_rewrite_free(rw);
	}
	/* Past the wait it is a warning: the field, never the revoked-sender tag; on_pass quarantine stays. */
	res->sigs[0].rev_pending_since = time(NULL) - 601;
	cfg->policy.on_pass = KMS_ACT_ACCEPT;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_WARN);
	ck_assert(has_edit(rw, "X-KMS-Warning"));
	ck_assert(!has_edit(rw, "Subject"));
	mlt_rewrite_free(rw);
	cfg->policy.on_pass = KMS_ACT_QUARANTINE;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_QUARANTINE);
	mlt_rewrite_free(rw);
	/* on_revocation_unknown = reject is stricter than any on_pass. */
	cfg->policy.on_pass = KMS_ACT_WARN;
	cfg->policy.on_revocation_unknown = KMS_ACT_REJECT;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_REJECT);
	mlt_rewrite_free(rw);
	mlt_result_free(res);

	/* A good chain whose addresses do not match: the stricter of on_mismatch and the unknown status. */
	{
		size_t mlen;
		unsigned char *mm = fixture("alice-mismatch.eml", &mlen);
		struct mlt_result *mres = NULL;

		calls = 0;
		ck_assert_int_eq(mlt_check_message(&ctx, mm, mlen, &mres), 0);
		ck_verdict(mres, POL_V_MISMATCH);
		ck_assert_int_eq(mres->sigs[0].rev_unknown, 1);
		ck_assert_msg(strstr(mres->detail, "revocation unknown") != NULL, "%s", mres->detail);
		cfg->policy.on_mismatch = KMS_ACT_ACCEPT;
		cfg->policy.on_revocation_unknown = KMS_ACT_TEMPFAIL;
		ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, mres, mm, mlen, &rw), 0);
		ck_assert_int_eq(rw->action, KMS_ACT_TEMPFAIL);
		mlt_rewrite_free(rw);
		cfg->policy.on_mismatch = KMS_ACT_REJECT;
		ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, mres, mm, mlen, &rw), 0);
		ck_assert_int_eq(rw->action, KMS_ACT_REJECT);
		mlt_rewrite_free(rw);
		mlt_result_free(mres);
		free(mm);
	}

	/* A known status (the CRL in the index covers alice): on_pass alone. */
	cfg->policy.on_revocation_unknown = KMS_ACT_TEMPFAIL;
	cfg->policy.on_pass = KMS_ACT_ACCEPT;
	res = check_buf(msg, len, crl_idx);
	ck_assert_int_eq(res->sigs[0].rev_unknown, 0);
	ck_assert(strstr(res->detail, "unknown") == NULL);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_ACCEPT);
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	ca_revidx_unref(none);
	free(msg);
}
END_TEST

/* ------------------------------------------------------------ hostile input */

static double
elapsed(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

START_TEST(test_twenty_megabyte_message_is_checked)
{
	size_t flen, blen, len = 0, cap = 24 * 1024 * 1024;
	unsigned char *f = fixture("alice-detached.eml", &flen), *msg = malloc(cap);
	char *cfields, *others;
	const unsigned char *body;
	struct mlt_result *res;
	struct timespec t0;

	split_top(f, flen, &cfields, &others, &body, &blen);
	len = (size_t)snprintf((char *)msg, cap, "From: alice@example.org\r\nSubject: big\r\n"
	    "Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\n%s\r\n", cfields);
	memcpy(msg + len, body, blen);
	len += blen;
	len += (size_t)snprintf((char *)msg + len, cap - len,
	    "\r\n--big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n");
	while (len < 20 * 1024 * 1024) {
		memcpy(msg + len, "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n", 74);
		len += 74;
	}
	len += (size_t)snprintf((char *)msg + len, cap - len, "--big--\r\n");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_PARTIAL);     /* the big attachment is not signed */
	ck_assert_msg(elapsed(&t0) < 5.0, "20 MB took %.1f s", elapsed(&t0));
	mlt_result_free(res);
	g_free(cfields);
	g_free(others);
	free(msg);
	free(f);
}
END_TEST

START_TEST(test_message_over_max_size_is_error_unread)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res;
	size_t len;
	unsigned char *msg = fixture("alice-detached.eml", &len);

	ctx_init(&ctx, crl_idx);
	ctx.limits.max_message_size = 1000;
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_ERROR);
	ck_assert(strstr(res->detail, "max_message_size") != NULL);
	ck_assert(strstr(res->ar_value, "smime=temperror") != NULL);
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_too_many_parts_is_error_quickly)
{
	size_t cap = 18 * 1024 * 1024, len;
	unsigned char *msg = malloc(cap + 64);
	struct mlt_result *res;
	struct timespec t0;

	len = (size_t)snprintf((char *)msg, cap, "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n");
	while (len + 10 < cap) {
		memcpy(msg + len, "--X\r\n\r\nx\r\n", 10);
		len += 10;
	}
	memcpy(msg + len, "--X--\r\n", 7);
	len += 7;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_ERROR);
	ck_assert(strstr(res->detail, "max_parts") != NULL);
	ck_assert_msg(elapsed(&t0) < 3.0, "took %.1f s", elapsed(&t0));
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_deep_nesting_is_error)
{
	GString *g = g_string_new("From: a@example.org\r\n");
	struct mlt_result *res;

	for (int i = 0; i < 20000; i++)
		g_string_append_printf(g, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
	g_string_append(g, "\r\nx\r\n");
	res = check_buf((unsigned char *)g->str, g->len, crl_idx);
	ck_verdict(res, POL_V_ERROR);
	ck_assert(strstr(res->detail, "max_depth") != NULL);
	mlt_result_free(res);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_too_many_headers_is_error)
{
	GString *g = g_string_new("From: a@example.org\r\n");
	struct mlt_result *res;

	for (int i = 0; i < 5000; i++)
		g_string_append_printf(g, "X-Junk-%d: %d\r\n", i, i);
	g_string_append(g, "\r\nbody\r\n");
	res = check_buf((unsigned char *)g->str, g->len, crl_idx);
	ck_verdict(res, POL_V_ERROR);
	ck_assert(strstr(res->detail, "max_headers") != NULL);
	mlt_result_free(res);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(test_malformed_multiparts_give_a_verdict)
{
	static const char *cases[] = {
		/* no boundary */
		"From: a@example.org\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"\n\nx\n",
		/* never closed, one part */
		"From: a@example.org\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=Q\n\n--Q\nhi\n",
		/* signature part empty */
		"From: a@example.org\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=Q\n\n"
		"--Q\n\nhi\n--Q\nContent-Type: application/pkcs7-signature\n\n--Q--\n",
		/* broken base64 */
		"From: a@example.org\nContent-Type: application/pkcs7-mime; smime-type=signed-data\n"
		"Content-Transfer-Encoding: base64\n\nMIIG====%%%%\n",
		/* header block with no end */
		"From: a@example.org\nContent-Type: multipart/mixed; boundary=Z",
		/* empty */
		"",
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len;
		unsigned char *msg = crlf(cases[i], &len);
		struct mlt_result *res = check_buf(msg, len, crl_idx);

		ck_assert_msg(res->verdict == POL_V_FAIL || res->verdict == POL_V_NONE, "case %zu: %s", i,
		    pol_verdict_name(res->verdict));
		mlt_result_free(res);
		free(msg);
	}
}
END_TEST

START_TEST(test_mutated_messages_never_crash)
{
	static const char *files[] = { "alice-detached.eml", "alice-opaque.eml", "alice-gpgsm.eml", "two-signers.eml" };
	unsigned int seed = 12345;

	for (size_t fi = 0; fi < sizeof(files) / sizeof(files[0]); fi++) {
		size_t len;
		unsigned char *orig = fixture(files[fi], &len);

		for (int round = 0; round < 60; round++) {
			unsigned char *m = malloc(len);
			size_t mlen = len;
			struct mlt_result *res;
			struct mlt_rewrite *rw;
			unsigned char *out;
			size_t olen;

			memcpy(m, orig, len);
			for (int k = 0; k < 1 + round % 8; k++)
				m[rand_r(&seed) % len] = (unsigned char)rand_r(&seed);
			if (round % 5 == 0)
				mlen = (size_t)rand_r(&seed) % len;
			res = check_buf(m, mlen, crl_idx);
			ck_assert(res->verdict < POL_V_COUNT);
			ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, m, mlen, &rw), 0);
			ck_assert_int_eq(mlt_rewrite_apply(m, mlen, rw, &out, &olen), 0);
			free(out);
			mlt_rewrite_free(rw);
			mlt_result_free(res);
			free(m);
		}
		free(orig);
	}
}
END_TEST

/* ----------------------------------------------------------- message buffer */

static int
dir_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

START_TEST(test_msgbuf_spills_to_an_unlinked_temp_file)
{
	struct mlt_msgbuf *mb;
	const unsigned char *data;
	size_t len;
	unsigned char chunk[4096];

	ck_assert_int_eq(mlt_msgbuf_new(64 * 1024, 10 * 1024 * 1024, dir, &mb), 0);
	ck_assert_int_eq(mlt_msgbuf_add_header(mb, "Subject", "folded\n\tvalue", 1), 0);
	ck_assert_int_eq(mlt_msgbuf_append(mb, "\r\n", 2), 0);
	for (int i = 0; i < 256; i++) {
		memset(chunk, 'a' + i % 26, sizeof(chunk));
		ck_assert_int_eq(mlt_msgbuf_append(mb, chunk, sizeof(chunk)), 0);
	}
	ck_assert_int_eq(mlt_msgbuf_spilled(mb), 1);
	ck_assert_int_eq(dir_entries(dir), 0);          /* never a name on disk */
	ck_assert_int_eq(mlt_msgbuf_data(mb, &data, &len), 0);
	ck_assert_uint_eq(len, 27 + 256 * 4096);
	ck_assert(memcmp(data, "Subject: folded\r\n\tvalue\r\n\r\n", 27) == 0);
	for (int i = 0; i < 256; i++)
		ck_assert_int_eq(data[27 + (size_t)i * 4096 + 100], 'a' + i % 26);
	mlt_msgbuf_free(mb);
}
END_TEST

START_TEST(test_msgbuf_over_max_size_counts_but_keeps_no_more)
{
	struct mlt_msgbuf *mb;
	const unsigned char *data;
	size_t len;
	unsigned char chunk[65536];

	memset(chunk, 'z', sizeof(chunk));
	ck_assert_int_eq(mlt_msgbuf_new(64 * 1024, 1024 * 1024, dir, &mb), 0);
	ck_assert_int_eq(mlt_msgbuf_add_header(mb, "From", "a@example.org", 1), 0);
	ck_assert_int_eq(mlt_msgbuf_append(mb, "\r\n", 2), 0);
	for (int i = 0; i < 40; i++)
		ck_assert_int_eq(mlt_msgbuf_append(mb, chunk, sizeof(chunk)), 0);
	ck_assert_int_eq(mlt_msgbuf_too_big(mb), 1);
	ck_assert_uint_eq(mlt_msgbuf_total(mb), 23 + 40 * 65536);
	ck_assert_int_eq(mlt_msgbuf_data(mb, &data, &len), 0);
	ck_assert(len <= 1024 * 1024);
	ck_assert(memcmp(data, "From: a@example.org\r\n\r\n", 23) == 0);
	mlt_msgbuf_free(mb);
}
END_TEST

/* A declared size past max_memory: the temp file from the first byte, the data the same. */
START_TEST(test_msgbuf_declared_size_spills_before_the_first_byte)
{
	struct mlt_msgbuf *mb;
	const unsigned char *data;
	size_t len;
	char longval[3000];

	memset(longval, 'v', sizeof(longval) - 1);
	longval[sizeof(longval) - 1] = '\0';
	ck_assert_int_eq(mlt_msgbuf_new(64 * 1024, 1024 * 1024, dir, &mb), 0);
	ck_assert_int_eq(mlt_msgbuf_expect(mb, 500 * 1024), 0);
	ck_assert_int_eq(mlt_msgbuf_spilled(mb), 1);
	ck_assert_int_eq(dir_entries(dir), 0);
	/* A header line longer than the stack line buffer, then a short one. */
	ck_assert_int_eq(mlt_msgbuf_add_header(mb, "X-Long", longval, 1), 0);
	ck_assert_int_eq(mlt_msgbuf_add_header(mb, "From", "a@example.org", 1), 0);
	ck_assert_int_eq(mlt_msgbuf_append(mb, "\r\nbody\r\n", 8), 0);
	ck_assert_int_eq(mlt_msgbuf_data(mb, &data, &len), 0);
	ck_assert_uint_eq(len, 8 + 2999 + 2 + 21 + 8);
	ck_assert(memcmp(data, "X-Long: vvv", 11) == 0);
	ck_assert(memcmp(data + 8 + 2999, "\r\nFrom: a@example.org\r\n\r\nbody\r\n", 31) == 0);
	mlt_msgbuf_free(mb);
}
END_TEST

/* A small declared size (or a lie) changes nothing but where the bytes are kept. */
START_TEST(test_msgbuf_declared_size_is_only_a_hint)
{
	struct mlt_msgbuf *mb;
	const unsigned char *data;
	size_t len;
	unsigned char chunk[4096];

	memset(chunk, 'q', sizeof(chunk));
	ck_assert_int_eq(mlt_msgbuf_new(64 * 1024, 1024 * 1024, dir, &mb), 0);
	ck_assert_int_eq(mlt_msgbuf_expect(mb, 100), 0);
	ck_assert_int_eq(mlt_msgbuf_spilled(mb), 0);
	ck_assert_int_eq(mlt_msgbuf_append(mb, "\r\n", 2), 0);
	/* It said 100 bytes and sends 160 KB: spilled past max_memory all the same. */
	for (int i = 0; i < 40; i++)
		ck_assert_int_eq(mlt_msgbuf_append(mb, chunk, sizeof(chunk)), 0);
	ck_assert_int_eq(mlt_msgbuf_spilled(mb), 1);
	/* Said too late (bytes already kept): ignored. */
	ck_assert_int_eq(mlt_msgbuf_expect(mb, 900 * 1024), 0);
	ck_assert_int_eq(mlt_msgbuf_data(mb, &data, &len), 0);
	ck_assert_uint_eq(len, 2 + 40 * 4096);
	ck_assert_int_eq(data[2 + 39 * 4096], 'q');
	mlt_msgbuf_free(mb);
}
END_TEST

/*
 * "--boundary" counts only at the start of a line: in the middle of one
 * (even right after a CR), at the end of the data, or as the prefix of a
 * longer boundary it is no delimiter; at the very start of the body it is.
 */
START_TEST(test_multipart_delimiters_only_at_line_starts)
{
	static const char body[] =
	    "--b1\r\n"
	    "\r\nfirst x--b1\r\n"
	    "text --b1--\r\n"
	    "\r--b1\r\n"
	    "--b12\r\n"
	    "--b1 \t\r\n"
	    "\r\nsecond\r\n"
	    "--b1--\r\n"
	    "epilogue --b1\r\n";
	const unsigned char *b = (const unsigned char *)body;
	struct mlt_span *parts;
	size_t n;
	int closed;

	ck_assert_int_eq(mlt_multipart_split(b, 0, sizeof(body) - 1, "b1", 100, &parts, &n, &closed), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(closed, 1);
	ck_assert_uint_eq(parts[0].start, 6);
	ck_assert(memcmp(b + parts[0].end - 5, "--b12", 5) == 0);
	ck_assert(memcmp(b + parts[1].start, "\r\nsecond", 8) == 0);
	ck_assert_uint_eq(parts[1].end - parts[1].start, 8);
	free(parts);
	/* The same bytes split from inside a line: the start of the range counts as a line start. */
	ck_assert(memcmp(b + 15, "--b1\r\n", 6) == 0);
	ck_assert_int_eq(mlt_multipart_split(b, 15, sizeof(body) - 1, "b1", 100, &parts, &n, &closed), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(parts[0].start, 21);
	free(parts);
	/* Nothing but a delimiter prefix at the very end: no part. */
	ck_assert_int_eq(mlt_multipart_split((const unsigned char *)"--b", 0, 3, "b1", 100, &parts, &n, &closed), 0);
	ck_assert_uint_eq(n, 0);
	free(parts);
}
END_TEST

START_TEST(test_result_error_has_temperror_header)
{
	struct mlt_result *res;

	ck_assert_int_eq(mlt_result_error(AUTHSERV, "message of 99 bytes is over [milter] max_message_size", &res), 0);
	ck_verdict(res, POL_V_ERROR);
	ck_assert_str_eq(res->ar_value, AUTHSERV ";\n\tsmime=temperror (error: message of 99 bytes is over "
	    "[milter] max_message_size)");
	mlt_result_free(res);
}
END_TEST

/* ----------------------------------------------------------------- kmsd -t */

/* Run mlt_offline_main with stdout into a file; returns the status, *out the output. */
static int
run_offline(char **argv, int argc, char **out)
{
	char *path = g_strdup_printf("%s/stdout.txt", dir);
	int saved = dup(STDOUT_FILENO), fd, rc;
	unsigned char *buf;
	size_t len;

	fflush(stdout);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	dup2(fd, STDOUT_FILENO);
	close(fd);
	rc = mlt_offline_main(argc, argv);
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	ck_assert_int_eq(kms_read_file(path, 1 << 20, &buf, &len), 0);
	*out = (char *)buf;
	g_free(path);
	return rc;
}

START_TEST(test_offline_prints_verdict_line_and_header)
{
	char *ca = tu_datafile("smime/ca.pem"), *crl = tu_datafile("smime/crl.pem");
	char *dave = tu_datafile("smime/dave-revoked.eml"), *alice = tu_datafile("smime/alice-detached.eml");
	char *out, want[1024];
	char *argv[] = { "kmsd", "-t", "--trust", ca, "--crl", crl, dave, alice, NULL };

	ck_assert_int_eq(run_offline(argv, 8, &out), 0);
	snprintf(want, sizeof(want), "%s: smime=fail (revoked: certificate of dave@example.org (serial 1004) revoked on ", dave);
	ck_assert_msg(strstr(out, want) != NULL, "%s", out);
	ck_assert(strstr(out, "\nX-KMS-Warning: signer certificate of dave@example.org") != NULL);
	ck_assert(strstr(out, "\nAuthentication-Results: ") != NULL);
	snprintf(want, sizeof(want), "%s: smime=pass (pass: signed by alice@example.org)\n", alice);
	ck_assert_msg(strstr(out, want) != NULL, "%s", out);
	free(out);
	free(ca);
	free(crl);
	free(dave);
	free(alice);
}
END_TEST

START_TEST(test_offline_exit_status)
{
	char *ca = tu_datafile("smime/ca.pem"), *out;
	char *argv1[] = { "kmsd", "-t", "--trust", ca, "/nonexistent/message.eml", NULL };
	char *argv2[] = { "kmsd", "-t", NULL };
	char *argv3[] = { "kmsd", "-t", "--crl", "/nonexistent.crl", "x", NULL };

	ck_assert_int_eq(run_offline(argv1, 5, &out), 1);
	free(out);
	ck_assert_int_eq(run_offline(argv2, 2, &out), 2);
	free(out);
	/* A CRL that cannot be read is said on stderr and left out: the run goes on (x is unreadable: 1). */
	ck_assert_int_eq(run_offline(argv3, 5, &out), 1);
	free(out);
	free(ca);
}
END_TEST

/* ------------------------------------------ hostile corpus (tests/data/hostile) */

/*
 * The messages of tests/data/hostile (mkcorpus.sh) have their own CA and
 * CRL (dave revoked): a trust store and index for them.
 */
static X509_STORE *h_trust;
static struct ca_revidx *h_rev;

static void
hostile_setup(void)
{
	char *path = tu_datafile("hostile/ca.pem");
	FILE *fp = fopen(path, "r");
	X509 *ca;
	X509_CRL *crl;
	struct ca_revidx_builder *b;

	setup();
	ck_assert_ptr_nonnull(fp);
	ca = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	free(path);
	path = tu_datafile("hostile/crl.pem");
	ck_assert_ptr_nonnull(fp = fopen(path, "r"));
	crl = PEM_read_X509_CRL(fp, NULL, NULL, NULL);
	fclose(fp);
	free(path);
	ck_assert_ptr_nonnull(ca);
	ck_assert_ptr_nonnull(crl);
	h_trust = X509_STORE_new();
	ck_assert_int_eq(X509_STORE_add_cert(h_trust, ca), 1);
	ck_assert_int_eq(ca_revidx_builder_new(&b), 0);
	ck_assert_int_eq(ca_revidx_add_crl(b, crl, ca, TEST_NOW), 0);
	ck_assert_int_eq(ca_revidx_build(b, &h_rev), 0);
	ca_revidx_builder_free(b);
	X509_CRL_free(crl);
	X509_free(ca);
}

static void
hostile_teardown(void)
{
	ca_revidx_unref(h_rev);
	X509_STORE_free(h_trust);
	teardown();
}

/* A corpus message as SMTP carries it. */
static unsigned char *
hostile_msg(const char *name, size_t *len)
{
	char rel[160], *path;
	unsigned char *raw, *msg;
	size_t rawlen;

	snprintf(rel, sizeof(rel), "hostile/%s", name);
	path = tu_datafile(rel);
	ck_assert_msg(kms_read_file(path, 16 * 1024 * 1024, &raw, &rawlen) == 0, "%s: %s", path, kms_last_error());
	ck_assert_int_eq(mlt_canon_crlf(raw, rawlen, &msg, len), 0);
	free(raw);
	free(path);
	return msg;
}

static struct mlt_result *
hostile_check_buf(const unsigned char *msg, size_t len)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;

	ctx_init(&ctx, h_rev);
	ctx.trust = h_trust;
	ck_assert_msg(mlt_check_message(&ctx, msg, len, &res) == 0, "check: %s", kms_last_error());
	return res;
}

static struct mlt_result *
hostile_check(const char *name)
{
	size_t len;
	unsigned char *msg = hostile_msg(name, &len);
	struct mlt_result *res = hostile_check_buf(msg, len);

	free(msg);
	return res;
}

/* Count the occurrences of needle in hay. */
static size_t
count_str(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; p != NULL && (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

/* Does every Subject field of the top-level header of msg start with tag? */
static int
every_subject_tagged(const unsigned char *msg, size_t len, const char *tag, int *nsubjects)
{
	struct mlt_hdr_iter it;
	struct mlt_field f;
	int ok = 1;

	*nsubjects = 0;
	mlt_hdr_begin(&it, msg, 0, len);
	while (mlt_hdr_next(&it, &f, NULL)) {
		char *v;

		if (!mlt_field_is(msg, &f, "Subject"))
			continue;
		(*nsubjects)++;
		v = mlt_field_value(msg, &f, 4096);
		ok = ok && strncmp(v, tag, strlen(tag)) == 0;
		free(v);
	}
	return ok;
}

/*
 * Every line of tests/data/hostile/expected: the verdict, the A-R result
 * keyword, and what the default policy does (revoked: tag on every
 * Subject, X-KMS-Warning, wrapper; warn: X-KMS-Warning only; -: neither).
 */
START_TEST(test_hostile_corpus_gets_expected_verdicts_and_marks)
{
	char *path = tu_datafile("hostile/expected"), line[512];
	FILE *fp = fopen(path, "r");
	int cases = 0;

	ck_assert_ptr_nonnull(fp);
	while (fgets(line, sizeof(line), fp) != NULL) {
		char file[128], verdict[32], ar[32], marks[32], want_ar[64];
		unsigned char *msg, *out;
		size_t len, olen;
		struct mlt_result *res;
		struct mlt_rewrite *rw;
		int has_warning = 0, nsubj = 0;

		if (line[0] == '#' || sscanf(line, "%127s %31s %31s %31s", file, verdict, ar, marks) != 4)
			continue;
		cases++;
		msg = hostile_msg(file, &len);
		res = hostile_check_buf(msg, len);
		ck_assert_msg(strcmp(pol_verdict_name(res->verdict), verdict) == 0, "%s: verdict %s, want %s (%s)", file,
		    pol_verdict_name(res->verdict), verdict, res->detail);
		if (res->verdict == POL_V_NONE) {
			ck_assert_msg(res->ar_value == NULL, "%s: unsigned mail gets no A-R", file);
		} else {
			snprintf(want_ar, sizeof(want_ar), "smime=%s (%s:", ar, verdict);
			ck_assert_msg(res->ar_value != NULL && strstr(res->ar_value, want_ar) != NULL, "%s: A-R lacks %s: %s",
			    file, want_ar, res->ar_value ? res->ar_value : "(none)");
		}
		ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
		for (size_t i = 0; i < rw->nedits; i++)
			if (rw->edits[i].op == MLT_HDR_ADD && strcmp(rw->edits[i].name, "X-KMS-Warning") == 0)
				has_warning = 1;
		ck_assert_int_eq(mlt_rewrite_apply(msg, len, rw, &out, &olen), 0);
		if (strcmp(marks, "revoked") == 0) {
			ck_assert_msg(rw->action == KMS_ACT_WARN && has_warning, "%s: no X-KMS-Warning", file);
			ck_assert_msg(every_subject_tagged(out, olen, "[REVOKED SENDER] ", &nsubj) && nsubj > 0,
			    "%s: a Subject without the tag", file);
			ck_assert_msg(rw->body != NULL && memmem(rw->body, rw->body_len, "revoked", 7) != NULL,
			    "%s: no notice", file);
			ck_assert_msg(memmem(out, olen, "[REVOKED SENDER] [REVOKED SENDER]", 33) == NULL, "%s: tagged twice", file);
		} else if (strcmp(marks, "warn") == 0) {
			ck_assert_msg(rw->action == KMS_ACT_WARN && has_warning, "%s: no X-KMS-Warning", file);
			ck_assert_msg(rw->body == NULL, "%s: wrapped, but no revoked signer", file);
			ck_assert_msg(memmem(out, olen, "[REVOKED SENDER]", 16) == NULL, "%s: tagged, but no revoked signer", file);
		} else {
			ck_assert_msg(!has_warning && rw->body == NULL, "%s: warned", file);
		}
		free(out);
		mlt_rewrite_free(rw);
		mlt_result_free(res);
		free(msg);
	}
	fclose(fp);
	free(path);
	ck_assert_int_ge(cases, 25);
}
END_TEST

START_TEST(test_every_signature_has_its_own_result)
{
	struct mlt_result *res = hostile_check("mask-garbage-part.eml");

	/* dave's signature over the whole message, and the garbage blob inside it. */
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_uint_eq(res->nsigs, 2);
	ck_assert_int_eq(res->sigs[0].verdict, POL_V_REVOKED);
	ck_assert_str_eq(res->sigs[0].part, "");
	ck_assert_int_eq(res->sigs[1].verdict, POL_V_FAIL);
	ck_assert_str_eq(res->sigs[1].part, "1.2");
	ck_assert_uint_eq(res->main, 0);
	ck_assert_uint_eq(count_str(res->ar_value, "smime="), 2);
	ck_assert_ptr_nonnull(strstr(res->ar_value, "smime=fail (revoked:"));
	ck_assert_ptr_nonnull(strstr(res->ar_value, "smime=fail (fail:"));
	ck_assert_ptr_nonnull(strstr(res->ar_value, "body.smime-part=1.2"));
	mlt_result_free(res);

	/* Two SignerInfos in one signature: each judged, the broken one does not hide dave. */
	res = hostile_check("mask-second-signer.eml");
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_uint_eq(res->nsigs, 2);
	ck_assert_int_eq(res->sigs[1].verdict, POL_V_FAIL);
	ck_assert_ptr_nonnull(strstr(res->sigs[1].detail, "signature does not verify"));
	ck_assert_uint_eq(count_str(res->ar_value, "smime="), 2);
	mlt_result_free(res);
}
END_TEST

START_TEST(test_label_never_decides_the_cms_type)
{
	static const char *const labels[] = { "enveloped-data", "authEnveloped-data", "certs-only" };
	size_t len;
	unsigned char *msg;
	struct mlt_result *res;
	char *p;

	for (size_t i = 0; i < 3; i++) {
		char name[64], want[80];

		snprintf(name, sizeof(name), "label-%s.eml", labels[i]);
		res = hostile_check(name);
		ck_verdict(res, POL_V_REVOKED);
		snprintf(want, sizeof(want), "signed-data labelled smime-type=%s", labels[i]);
		ck_assert_msg(strstr(res->detail, want) != NULL, "%s: %s", name, res->detail);
		mlt_result_free(res);
	}
	/* The other way round: encrypted data labelled signed-data is encrypted. */
	msg = fixture("encrypted.eml", &len);
	ck_assert_ptr_nonnull(p = strstr((char *)msg, "enveloped-data"));
	memcpy(p, "signed-data   ", 14);
	res = check_buf(msg, len, crl_idx);
	ck_verdict(res, POL_V_ENCRYPTED);
	mlt_result_free(res);
	free(msg);
	/* A real certs-only signs nothing, and the detail says what it was. */
	res = hostile_check("certs-only.eml");
	ck_verdict(res, POL_V_NONE);
	ck_assert_ptr_nonnull(strstr(res->detail, "certs-only"));
	mlt_result_free(res);
}
END_TEST

START_TEST(test_partial_names_what_is_not_covered)
{
	struct mlt_result *res = hostile_check("partial-mixed-alice.eml");

	ck_verdict(res, POL_V_PARTIAL);
	ck_assert_ptr_nonnull(strstr(res->detail, "not covered by any signature: part 2 (text/html)"));
	ck_assert_ptr_null(strstr(res->ar_value, "smime=pass"));
	ck_assert_ptr_nonnull(strstr(res->ar_value, "smime=policy (partial:"));
	mlt_result_free(res);
	res = hostile_check("partial-third-part.eml");
	ck_verdict(res, POL_V_PARTIAL);
	ck_assert_ptr_nonnull(strstr(res->detail, "part 3 (after the signature)"));
	mlt_result_free(res);
	/* Header protection: the outer Subject is not the signed one. */
	res = hostile_check("hp-subject-alice.eml");
	ck_verdict(res, POL_V_PARTIAL);
	ck_assert_ptr_nonnull(strstr(res->detail, "outer Subject is not the signed one"));
	mlt_result_free(res);
	res = hostile_check("wrapper-subject-alice.eml");
	ck_verdict(res, POL_V_PARTIAL);
	mlt_result_free(res);
	res = hostile_check("hp-same-alice.eml");
	ck_verdict(res, POL_V_PASS);
	mlt_result_free(res);
}
END_TEST

START_TEST(test_protected_from_differing_is_partial)
{
	size_t len;
	unsigned char *msg = hostile_msg("hp-same-alice.eml", &len);
	struct mlt_result *res;
	/* Outer From gains a second address: not the signed From any more. */
	char *p = strstr((char *)msg, "From: alice@example.org\r\nTo:");
	unsigned char *m2;
	size_t l2;

	ck_assert_ptr_nonnull(p);
	{
		size_t off = (size_t)(p - (char *)msg) + strlen("From: alice@example.org");

		m2 = malloc(len + 32);
		ck_assert_ptr_nonnull(m2);
		memcpy(m2, msg, off);
		memcpy(m2 + off, ", alice@example.org", 19);
		memcpy(m2 + off + 19, msg + off, len - off);
		l2 = len + 19;
	}
	res = hostile_check_buf(m2, l2);
	ck_verdict(res, POL_V_PASS);    /* the same address twice is the same set */
	mlt_result_free(res);
	memcpy(p, "From: alicf", 11);      /* alicf@example.org: a mismatch first, and not the signed From */
	res = hostile_check_buf(msg, len);
	ck_verdict(res, POL_V_MISMATCH);
	ck_assert_ptr_nonnull(strstr(res->detail, "outer From is not the signed one"));
	mlt_result_free(res);
	free(m2);
	free(msg);
}
END_TEST

START_TEST(test_display_name_holding_another_address_is_mismatch)
{
	static const struct { const char *from; int spoof; } cases[] = {
		{ "From: \"alice@example.org\" <mallory@example.org>\r\n", 1 },
		{ "From: alice@example.org <mallory@example.org>\r\n", 1 },
		{ "From: =?UTF-8?Q?alice=40example=2Eorg?= <mallory@example.org>\r\n", 1 },
		{ "From: \"=?UTF-8?Q?alice=40example=2Eorg?=\" <mallory@example.org>\r\n", 1 },
		{ "From: mallory@example.org (alice@example.org)\r\n", 1 },
		{ "From: (alice@example.org) <mallory@example.org>\r\n", 1 },
		{ "From: \"Alice (alice@example.org)\" <mallory@example.org>\r\n", 1 },
		{ "From: =?UTF-8?B?YWxpY2XvvKBleGFtcGxlLm9yZw==?= <mallory@example.org>\r\n", 1 },
		{ "From: \"ALICE@EXAMPLE.ORG\"\r\n <mallory@example.org>\r\n", 1 },
		{ "From: \"Mallory\" <mallory@example.org>\r\n", 0 },
		{ "From: \"MALLORY@example.org\" <mallory@example.org>\r\n", 0 },
		{ "From: mallory@example.org\r\n", 0 },
		{ "From: Mallory at home <mallory@example.org>\r\n", 0 },
		{ "From: \"@\" <mallory@example.org>\r\n", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *text = g_strdup_printf("%sSubject: x\r\n\r\nbody\r\n", cases[i].from), *why = NULL, **addrs = NULL;
		size_t nf = 0, len = strlen(text);

		ck_assert_int_eq(mlt_from_addresses((unsigned char *)text, len, 100, &addrs, &nf), 0);
		ck_assert_int_eq(mlt_from_display_check((unsigned char *)text, len, 100, addrs, &why), 0);
		ck_assert_msg((why != NULL) == cases[i].spoof, "%s: %s", cases[i].from, why ? why : "no finding");
		if (why != NULL)
			ck_assert_msg(strstr(why, "not the From address mallory@example.org") != NULL, "%s", why);
		free(why);
		kms_strv_free(addrs);
		g_free(text);
	}
}
END_TEST

START_TEST(test_subject_tag_on_every_field_unless_it_starts_with_the_tag)
{
	static const struct { const char *subjects; const char *want[2]; } cases[] = {
		{ "Subject: Re: [REVOKED SENDER] minutes\n", { "[REVOKED SENDER] Re: [REVOKED SENDER] minutes", NULL } },
		{ "Subject: [revoked sender] minutes\n", { "[REVOKED SENDER] [revoked sender] minutes", NULL } },
		{ "Subject: [REVOKED SENDER] minutes\n", { "[REVOKED SENDER] minutes", NULL } },
		{ "Subject: [REVOKED SENDER] old\nSubject: figures\n", { "[REVOKED SENDER] old", "[REVOKED SENDER] figures" } },
		{ "Subject: one\nSubject: two\n", { "[REVOKED SENDER] one", "[REVOKED SENDER] two" } },
	};
	size_t flen;
	unsigned char *f = fixture("dave-revoked.eml", &flen);
	char *cfields, *others;
	const unsigned char *body;
	size_t blen;

	split_top(f, flen, &cfields, &others, &body, &blen);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *h = g_strdup_printf("From: dave@example.org\nTo: rcpt@example.net\n%sMIME-Version: 1.0\n", cases[i].subjects);
		size_t hlen, mlen, olen;
		unsigned char *hc = crlf(h, &hlen), *msg, *out;
		struct mlt_result *res;
		struct mlt_rewrite *rw;
		struct mlt_hdr_iter it;
		struct mlt_field fl;
		int k = 0;
		GString *g = g_string_new_len((const char *)hc, (gssize)hlen);

		g_string_append(g, cfields);
		g_string_append(g, "\r\n");
		g_string_append_len(g, (const char *)body, (gssize)blen);
		mlen = g->len;
		msg = (unsigned char *)g_string_free(g, FALSE);
		res = check_buf(msg, mlen, crl_idx);
		ck_verdict(res, POL_V_REVOKED);
		ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, mlen, &rw), 0);
		ck_assert_int_eq(mlt_rewrite_apply(msg, mlen, rw, &out, &olen), 0);
		mlt_hdr_begin(&it, out, 0, olen);
		while (mlt_hdr_next(&it, &fl, NULL)) {
			char *v;

			if (!mlt_field_is(out, &fl, "Subject"))
				continue;
			ck_assert_int_lt(k, 2);
			v = mlt_field_value(out, &fl, 4096);
			ck_assert_ptr_nonnull(cases[i].want[k]);
			ck_assert_str_eq(v, cases[i].want[k]);
			free(v);
			k++;
		}
		ck_assert_int_eq(k, cases[i].want[1] ? 2 : 1);
		free(out);
		mlt_rewrite_free(rw);
		mlt_result_free(res);
		g_free(msg);
		free(hc);
		g_free(h);
	}
	g_free(cfields);
	g_free(others);
	free(f);
}
END_TEST

START_TEST(test_partial_warns_without_the_revoked_tag)
{
	size_t len;
	unsigned char *msg = hostile_msg("partial-mixed-alice.eml", &len);
	struct mlt_result *res = hostile_check_buf(msg, len);
	struct mlt_rewrite *rw;
	int warned = 0;

	ck_verdict(res, POL_V_PARTIAL);
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_int_eq(rw->action, KMS_ACT_WARN);     /* [policy] on_partial defaults to warn */
	for (size_t i = 0; i < rw->nedits; i++) {
		ck_assert_msg(strcmp(rw->edits[i].name, "Subject") != 0, "partial tagged as revoked sender");
		if (strcmp(rw->edits[i].name, "X-KMS-Warning") == 0) {
			warned = 1;
			ck_assert_ptr_nonnull(strstr(rw->edits[i].value, "part 2 (text/html)"));
		}
	}
	ck_assert(warned);
	ck_assert_ptr_null(rw->body);
	mlt_rewrite_free(rw);
	/* on_partial = reject: 550 naming what is not signed. */
	cfg->policy.on_partial = KMS_ACT_REJECT;
	ck_assert_int_eq(mlt_rewrite_plan(cfg, AUTHSERV, res, msg, len, &rw), 0);
	ck_assert_str_eq(rw->rcode, "550");
	ck_assert_ptr_nonnull(strstr(rw->reply, "S/MIME partial: "));
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(msg);
}
END_TEST

/* multipart/mixed: n copies of part a, then part b (whole messages' bodies with their Content-* fields). */
static unsigned char *
mixed_of(const char *a, size_t n, const char *b, size_t *len)
{
	GString *g = g_string_new("From: dave@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
	    "Content-Type: multipart/mixed; boundary=\"many-parts\"\r\n\r\n");
	const char *names[2] = { a, b };

	for (size_t i = 0; i <= n; i++) {
		size_t flen, blen;
		unsigned char *f = fixture(names[i == n], &flen);
		char *cfields, *others;
		const unsigned char *body;

		split_top(f, flen, &cfields, &others, &body, &blen);
		g_string_append_printf(g, "--many-parts\r\n%s\r\n", cfields);
		g_string_append_len(g, (const char *)body, (gssize)blen);
		g_string_append(g, "\r\n");
		g_free(cfields);
		g_free(others);
		free(f);
	}
	g_string_append(g, "--many-parts--\r\n");
	*len = g->len;
	return (unsigned char *)g_string_free(g, FALSE);
}

START_TEST(test_ar_always_names_the_revoked_signature)
{
	size_t len;
	/* 20 broken signatures, dave's revoked one last: past the 16 results the header holds. */
	unsigned char *msg = mixed_of("alice-tampered.eml", 20, "dave-revoked.eml", &len);
	struct mlt_result *res = check_buf(msg, len, crl_idx);

	ck_verdict(res, POL_V_REVOKED);
	ck_assert_uint_eq(res->nsigs, 21);
	ck_assert_uint_eq(res->main, 20);
	ck_assert_uint_eq(count_str(res->ar_value, "smime="), 16);
	ck_assert_ptr_nonnull(strstr(res->ar_value, "smime=fail (revoked:"));
	ck_assert_ptr_nonnull(strstr(res->ar_value, "body.smime-part=21"));
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_a_bound_never_hides_a_revoked_signature)
{
	size_t len;
	/* dave's revoked signature first, then more parts than max_parts allows. */
	unsigned char *msg = mixed_of("dave-revoked.eml", 1, "alice-detached.eml", &len);
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;

	ctx_init(&ctx, crl_idx);
	ctx.limits.max_parts = 5;       /* root, dave's 2 + 1 walked, then alice's: over */
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_REVOKED);
	ck_assert_msg(strstr(res->detail, "the rest of the message was not checked: more than 5 MIME parts") != NULL, "%s", res->detail);
	ck_assert_ptr_nonnull(strstr(res->ar_value, "smime=fail (revoked:"));
	mlt_result_free(res);
	/* Without a revoked signature a bound is an error, as before. */
	free(msg);
	msg = mixed_of("alice-detached.eml", 1, "alice-detached.eml", &len);
	ck_assert_int_eq(mlt_check_message(&ctx, msg, len, &res), 0);
	ck_verdict(res, POL_V_ERROR);
	mlt_result_free(res);
	free(msg);
}
END_TEST

START_TEST(test_comment_nesting_bound_removes_the_field)
{
	GString *deep = g_string_new(" "), *ok = g_string_new(" ");

	/* 65 nested comments: past the bound; the field hides its authserv-id and is treated as ours. */
	for (int i = 0; i < 65; i++)
		g_string_append_c(deep, '(');
	for (int i = 0; i < 65; i++)
		g_string_append_c(deep, ')');
	g_string_append(deep, " other.example; smime=pass");
	ck_assert_int_eq(mlt_ar_is_ours(deep->str, deep->len, AUTHSERV), 1);
	/* 64 levels are followed: the token after them decides. */
	for (int i = 0; i < 64; i++)
		g_string_append_c(ok, '(');
	for (int i = 0; i < 64; i++)
		g_string_append_c(ok, ')');
	g_string_append(ok, " other.example; smime=pass");
	ck_assert_int_eq(mlt_ar_is_ours(ok->str, ok->len, AUTHSERV), 0);
	g_string_truncate(ok, ok->len - strlen(" other.example; smime=pass"));
	g_string_append(ok, " test.example; smime=pass");
	ck_assert_int_eq(mlt_ar_is_ours(ok->str, ok->len, AUTHSERV), 1);
	/* The bound holds at any depth, not only for the first parenthesis. */
	g_string_assign(deep, " (a");
	for (int i = 0; i < 100; i++)
		g_string_append(deep, "(b");
	ck_assert_int_eq(mlt_ar_is_ours(deep->str, deep->len, AUTHSERV), 1);
	g_string_free(deep, TRUE);
	g_string_free(ok, TRUE);
}
END_TEST

static Suite *
milter_suite(void)
{
	Suite *s = suite_create("milter");
	TCase *tc;

	tc = tcase_create("verdicts");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_verdict_for_each_certificate_state, 0,
	    (int)(sizeof(verdict_cases) / sizeof(verdict_cases[0])));
	tcase_add_test(tc, test_revoked_signer_carries_date_reason_and_claim);
	tcase_add_test(tc, test_signed_in_the_revocations_second_reads_at_the_time);
	tcase_add_test(tc, test_revoked_after_signing_says_signed_before_revocation);
	tcase_add_test(tc, test_stale_revocation_data_is_mentioned);
	tcase_add_test(tc, test_signature_without_certificates_uses_store_lookup);
	tcase_add_test(tc, test_from_compared_case_insensitively_and_only_once);
	suite_add_tcase(s, tc);

	tc = tcase_create("discovery");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_signature_discovery_over_mime_shapes, 0, SHAPE_COUNT);
	tcase_add_test(tc, test_pgp_signed_multipart_is_not_ours);
	suite_add_tcase(s, tc);

	tc = tcase_create("headers");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_ar_header_names_signer_serial_issuer);
	tcase_add_test(tc, test_ar_result_keywords_per_verdict);
	tcase_add_test(tc, test_ar_quotes_odd_values_and_keeps_comments_closed);
	tcase_add_test(tc, test_unsigned_mail_gets_no_header);
	tcase_add_test(tc, test_ar_is_ours_matches_the_authserv_token_only);
	tcase_add_test(tc, test_forged_ar_headers_removed_highest_index_first);
	tcase_add_test(tc, test_forged_headers_removed_from_unsigned_mail);
	tcase_add_test(tc, test_result_error_has_temperror_header);
	suite_add_tcase(s, tc);

	tc = tcase_create("wrapper");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_revoked_warn_wraps_message_as_golden_file);
	tcase_add_test(tc, test_wrapped_inner_entity_is_the_original_byte_for_byte);
	tcase_add_test(tc, test_wrapped_inner_part_still_verifies);
	tcase_add_test(tc, test_subject_tagged_once);
	tcase_add_test(tc, test_subject_added_when_missing_and_encoded_when_not_ascii);
	tcase_add_test(tc, test_wrap_keeps_an_8bit_transfer_encoding_on_the_outside);
	tcase_add_test(tc, test_notice_expansion_is_safe);
	tcase_add_test(tc, test_non_ascii_notice_goes_quoted_printable);
	suite_add_tcase(s, tc);

	tc = tcase_create("policy");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_policy_reject_gives_550_naming_the_reason);
	tcase_add_test(tc, test_policy_tempfail_gives_451);
	tcase_add_test(tc, test_policy_quarantine_keeps_header_and_gives_reason);
	tcase_add_test(tc, test_policy_defaults_accept_with_header_only);
	tcase_add_test(tc, test_internal_error_answers_on_error);
	tcase_add_test(tc, test_warn_on_other_verdict_tags_without_wrapping);
	tcase_add_test(tc, test_unknown_revocation_has_its_own_result_and_action_whatever_on_pass);
	suite_add_tcase(s, tc);

	tc = tcase_create("hostile");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_twenty_megabyte_message_is_checked);
	tcase_add_test(tc, test_message_over_max_size_is_error_unread);
	tcase_add_test(tc, test_too_many_parts_is_error_quickly);
	tcase_add_test(tc, test_deep_nesting_is_error);
	tcase_add_test(tc, test_too_many_headers_is_error);
	tcase_add_test(tc, test_malformed_multiparts_give_a_verdict);
	tcase_add_test(tc, test_mutated_messages_never_crash);
	suite_add_tcase(s, tc);

	tc = tcase_create("corpus");
	tcase_add_checked_fixture(tc, hostile_setup, hostile_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_hostile_corpus_gets_expected_verdicts_and_marks);
	tcase_add_test(tc, test_every_signature_has_its_own_result);
	tcase_add_test(tc, test_label_never_decides_the_cms_type);
	tcase_add_test(tc, test_partial_names_what_is_not_covered);
	tcase_add_test(tc, test_protected_from_differing_is_partial);
	tcase_add_test(tc, test_display_name_holding_another_address_is_mismatch);
	tcase_add_test(tc, test_subject_tag_on_every_field_unless_it_starts_with_the_tag);
	tcase_add_test(tc, test_partial_warns_without_the_revoked_tag);
	tcase_add_test(tc, test_ar_always_names_the_revoked_signature);
	tcase_add_test(tc, test_a_bound_never_hides_a_revoked_signature);
	tcase_add_test(tc, test_comment_nesting_bound_removes_the_field);
	suite_add_tcase(s, tc);

	tc = tcase_create("collecting");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_msgbuf_spills_to_an_unlinked_temp_file);
	tcase_add_test(tc, test_msgbuf_over_max_size_counts_but_keeps_no_more);
	tcase_add_test(tc, test_msgbuf_declared_size_spills_before_the_first_byte);
	tcase_add_test(tc, test_msgbuf_declared_size_is_only_a_hint);
	tcase_add_test(tc, test_multipart_delimiters_only_at_line_starts);
	tcase_add_test(tc, test_offline_prints_verdict_line_and_header);
	tcase_add_test(tc, test_offline_exit_status);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(milter_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
