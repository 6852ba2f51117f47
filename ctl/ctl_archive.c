/*
 * ctl_archive.c - kmsctl archive decrypt: a compliance officer's view of a
 * user's encrypted mail.
 *
 * Reads an mbox, a Maildir (or a directory of message files) or single
 * .eml files.  For each S/MIME enveloped message it finds the
 * RecipientInfo addressed to one of the user's encryption certificates and
 * gets the content-encryption key for it: from kmsd (--request; only that
 * RecipientInfo is sent, in batches, and kmsd audits each release) or from
 * a recovered PKCS#12 (--p12).  The content is decrypted here; the message
 * never goes to kmsd.  Output is one mbox, written to a temp file and
 * renamed at the end, so a failed run never leaves a partial file.
 *
 * Entry point: ctl_cmd_archive().
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "archive/archive.h"
#include "ca/ca.h"
#include "ctl/ctl.h"
#include "milter/milter.h"

#define MAX_MESSAGE ESC_MAX_MESSAGE
/* The authserv-id of the Authentication-Results written into decrypted messages. */
#define ARCHIVE_AUTHSERV_ID "kmsctl.archive"
#define BATCH 128
/* A recovered PKCS#12 holds a user's few keys: far below this. */
#define MAX_P12_FILE (16 * 1024 * 1024)
/* Most --in arguments (and operands) of one run. */
#define MAX_INPUTS 256
#define MAX_REASONS 50
/* A message's source in reports: a path and "#N" for its place in an mbox. */
#define SOURCE_MAX 300

struct msg {
	unsigned char *raw;         /* the message as read (LF or CRLF) */
	size_t len;
	char source[SOURCE_MAX];    /* where it came from, for failure reports */
	/* filled by examine() */
	int kind;                   /* MSG_* */
	char *why;                  /* failure reason */
	struct esc_enveloped *env;
	size_t ri, cert;            /* matching RecipientInfo and certificate */
	char *message_id, *date;
	char *from_line;            /* "From <addr> <asctime>" for the output mbox */
	/* filled by the release */
	unsigned char *cek;
	size_t ceklen;
	char *key_serial;
};

enum { MSG_PLAIN, MSG_ENCRYPTED_OTHER, MSG_MINE, MSG_BROKEN };

struct arc {
	struct ctl *ctl;
	const char *request;
	X509 **certs;               /* the user's encryption certificates */
	EVP_PKEY **keys;            /* --p12 only */
	size_t ncerts;
	X509_STORE *trust;          /* for signatures inside the encryption */
	struct mlt_limits limits;   /* bounds for checking them ([milter] of the config) */
	char *email;
	FILE *out;
	int only_decrypted;
	int progress;
	struct msg batch[BATCH];
	size_t nbatch, nmine;
	unsigned long long seen, decrypted, other, plain, failed;
	char *reasons[MAX_REASONS];
	size_t nreasons;
	int fatal;
};

static char *from_line_of(GMimeMessage *gm);

/* ------------------------------------------------------------- messages */

static void
msg_clear(struct msg *m)
{
	free(m->raw);
	free(m->why);
	esc_enveloped_free(m->env);
	free(m->message_id);
	free(m->date);
	free(m->from_line);
	if (m->cek)
		OPENSSL_secure_clear_free(m->cek, m->ceklen);
	free(m->key_serial);
	memset(m, 0, sizeof(*m));
}

/* Mark m failed with "what" or "what: detail". */
static void
msg_fail(struct msg *m, const char *what, const char *detail)
{
	size_t n = strlen(what) + (detail ? strlen(detail) : 0) + 8;

	free(m->why);
	m->why = malloc(n);
	if (m->why)
		snprintf(m->why, n, "%s%s%s", what, detail && *detail ? ": " : "", detail && *detail ? detail : "");
	m->kind = MSG_BROKEN;
}

/* Offset of the body: after the first empty line (LF or CRLF), or len. */
static size_t
body_offset(const unsigned char *p, size_t len, size_t *hdr_end)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < len && p[i + 1] == '\n') {
			*hdr_end = i + 1;
			return i + 2;
		}
		if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n') {
			*hdr_end = i + 1;
			return i + 3;
		}
	}
	*hdr_end = len;
	return len;
}

static int
is_type(GMimeObject *o, const char *type, const char *sub)
{
	GMimeContentType *ct = g_mime_object_get_content_type(o);

	return ct && g_mime_content_type_is_type(ct, type, sub);
}

static int
is_pkcs7_mime(GMimeObject *o)
{
	return is_type(o, "application", "pkcs7-mime") || is_type(o, "application", "x-pkcs7-mime");
}

/* Decoded content of a leaf part into a new buffer. */
static int
part_content(GMimeObject *o, unsigned char **out, size_t *len)
{
	GMimeDataWrapper *w;
	GMimeStream *mem;
	GByteArray *ba;

	*out = NULL;
	if (!GMIME_IS_PART(o) || (w = g_mime_part_get_content(GMIME_PART(o))) == NULL)
		return -1;
	mem = g_mime_stream_mem_new();
	if (g_mime_data_wrapper_write_to_stream(w, mem) < 0) {
		g_object_unref(mem);
		return -1;
	}
	ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	*out = malloc(ba->len ? ba->len : 1);
	if (*out)
		memcpy(*out, ba->data, ba->len);
	*len = ba->len;
	g_object_unref(mem);
	return *out ? 0 : -1;
}

static GMimeMessage *
parse_message(const unsigned char *raw, size_t len)
{
	GMimeStream *s = g_mime_stream_mem_new_with_buffer((const char *)raw, len);
	GMimeParser *p = g_mime_parser_new_with_stream(s);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);

	g_object_unref(p);
	g_object_unref(s);
	return m;
}

/* Classify a message and, when it is for this user, find its RecipientInfo. */
static void
examine(struct arc *a, struct msg *m)
{
	GMimeMessage *gm = parse_message(m->raw, m->len);
	GMimeObject *part;
	const char *smime_type;
	unsigned char *der = NULL;
	size_t derlen = 0;

	if (gm == NULL) {
		msg_fail(m, "not a mail message", NULL);
		return;
	}
	m->from_line = from_line_of(gm);
	if (g_mime_message_get_message_id(gm))
		m->message_id = strdup(g_mime_message_get_message_id(gm));
	{
		const char *d = g_mime_object_get_header(GMIME_OBJECT(gm), "Date");

		if (d)
			m->date = strdup(d);
	}
	part = g_mime_message_get_mime_part(gm);
	if (part == NULL || !is_pkcs7_mime(part)) {
		m->kind = MSG_PLAIN;
		goto out;
	}
	smime_type = g_mime_object_get_content_type_parameter(part, "smime-type");
	if (smime_type && strcasecmp(smime_type, "enveloped-data") != 0 &&
	    strcasecmp(smime_type, "authEnveloped-data") != 0) {
		m->kind = MSG_PLAIN;        /* signed-data and certs-only are not encrypted */
		goto out;
	}
	if (part_content(part, &der, &derlen) != 0) {
		msg_fail(m, "cannot decode the S/MIME body", NULL);
		goto out;
	}
	if (esc_enveloped_parse(der, derlen, &m->env) != 0) {
		if (smime_type == NULL) {
			m->kind = MSG_PLAIN;    /* a .p7m that is not enveloped */
			kms_clear_error();
		} else {
			msg_fail(m, "broken CMS structure", kms_last_error());
		}
		goto out;
	}
	m->kind = MSG_ENCRYPTED_OTHER;
	for (size_t i = 0; i < esc_enveloped_count(m->env) && m->kind != MSG_MINE; i++) {
		for (size_t c = 0; c < a->ncerts; c++) {
			if (esc_enveloped_ri_matches(m->env, i, a->certs[c])) {
				m->kind = MSG_MINE;
				m->ri = i;
				m->cert = c;
				break;
			}
		}
	}
out:
	free(der);
	g_object_unref(gm);
}

/* ------------------------------------------------------------- releases */

/* Ask kmsd for the keys of every message of the batch addressed to the user. */
static int
release_batch(struct arc *a)
{
	json_t *items = json_array(), *reply, *results;
	size_t idx[BATCH], n = 0;
	int rc = 0;

	for (size_t i = 0; i < a->nbatch; i++) {
		struct msg *m = &a->batch[i];
		const unsigned char *ri;
		size_t rilen;
		char *b64;

		if (m->kind != MSG_MINE)
			continue;
		if (esc_enveloped_ri(m->env, m->ri, &ri, &rilen) != 0 || (b64 = kms_b64_encode(ri, rilen)) == NULL) {
			msg_fail(m, "cannot encode the RecipientInfo", NULL);
			continue;
		}
		json_array_append_new(items, json_pack("{s:s,s:s,s:s}", "recipient_info", b64,
		    "message_id", m->message_id ? m->message_id : "", "date", m->date ? m->date : ""));
		free(b64);
		idx[n++] = i;
	}
	if (n == 0) {
		json_decref(items);
		return 0;
	}
	reply = ctl_call(a->ctl, "archive.release", json_pack("{s:s,s:o}", "id", a->request, "items", items));
	if (reply == NULL) {
		a->fatal = CTL_ERR_USAGE;
		return -1;
	}
	if (!json_is_true(json_object_get(reply, "ok"))) {
		json_t *e = json_object_get(reply, "error");

		fprintf(stderr, "kmsctl: archive decrypt: %s\n", ctl_str(e, "message"));
		json_decref(reply);
		a->fatal = CTL_ERR_REPLY;
		return -1;
	}
	results = json_object_get(json_object_get(reply, "result"), "results");
	for (size_t j = 0; j < n; j++) {
		struct msg *m = &a->batch[idx[j]];
		json_t *r = json_array_get(results, j);
		unsigned char *cek = NULL;
		size_t ceklen = 0;

		if (!json_is_true(json_object_get(r, "ok"))) {
			msg_fail(m, "kmsd released no key", ctl_str(r, "message"));
			continue;
		}
		if (kms_b64_decode(ctl_str(r, "cek"), strlen(ctl_str(r, "cek")), &cek, &ceklen) != 0) {
			msg_fail(m, "malformed key from kmsd", NULL);
			continue;
		}
		m->cek = OPENSSL_secure_malloc(ceklen ? ceklen : 1);
		if (m->cek)
			memcpy(m->cek, cek, ceklen);
		m->ceklen = ceklen;
		kms_wipe(cek, ceklen);
		free(cek);
		m->key_serial = strdup(ctl_str(r, "key_serial"));
	}
	/* Scrub the keys from the reply before it is freed. */
	for (size_t j = 0; j < n; j++) {
		json_t *r = json_array_get(results, j);
		const char *c = json_string_value(json_object_get(r, "cek"));

		if (c)
			kms_wipe((char *)c, strlen(c));
	}
	json_decref(reply);
	return rc;
}

static void
release_local(struct arc *a, struct msg *m)
{
	const unsigned char *ri;
	size_t rilen, which;

	if (esc_enveloped_ri(m->env, m->ri, &ri, &rilen) != 0 ||
	    esc_release_cek(ri, rilen, a->keys, a->certs, a->ncerts, &m->cek, &m->ceklen, &which) != 0) {
		msg_fail(m, "cannot open the message key", kms_last_error());
		return;
	}
	m->key_serial = ca_serial_hex(X509_get0_serialNumber(a->certs[which]));
}

/* --------------------------------------------------------------- output */

/* Write bytes as mbox lines: LF endings, ">From " quoting (mboxrd). */
static void
put_lines(FILE *out, const unsigned char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t e = i, n;
		const unsigned char *q;

		while (e < len && p[e] != '\n')
			e++;
		n = e - i;
		if (n > 0 && p[i + n - 1] == '\r')
			n--;
		q = p + i;
		{
			size_t k = 0;

			while (k < n && q[k] == '>')
				k++;
			if (n - k >= 5 && memcmp(q + k, "From ", 5) == 0)
				fputc('>', out);
		}
		fwrite(q, 1, n, out);
		fputc('\n', out);
		i = e + 1;
	}
}

/*
 * "From <addr> <asctime>" from the message's own From and Date headers, so
 * that an mbox, a Maildir and single files give the same output.
 */
static char *
from_line_of(GMimeMessage *gm)
{
	const char *addr = "MAILER-DAEMON";
	char when[64] = "Thu Jan  1 00:00:00 1970", *line;
	InternetAddressList *from;
	GDateTime *dt;
	size_t n;

	if (gm && (from = g_mime_message_get_from(gm)) != NULL && internet_address_list_length(from) > 0) {
		InternetAddress *ia = internet_address_list_get_address(from, 0);
		const char *a = INTERNET_ADDRESS_IS_MAILBOX(ia) ?
		    internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia)) : NULL;

		if (a && *a && strpbrk(a, " \t\r\n") == NULL && strlen(a) < 256)
			addr = a;
	}
	if (gm && (dt = g_mime_message_get_date(gm)) != NULL) {
		time_t t = (time_t)g_date_time_to_unix(dt);
		struct tm tm;

		if (gmtime_r(&t, &tm))
			strftime(when, sizeof(when), "%a %b %e %H:%M:%S %Y", &tm);
	}
	n = strlen(addr) + strlen(when) + 8;
	line = malloc(n);
	if (line)
		snprintf(line, n, "From %s %s\n", addr, when);
	return line;
}

static void
put_from_line(FILE *out, const struct msg *m)
{
	fputs(m->from_line ? m->from_line : "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n", out);
}

static int
header_name_is(const unsigned char *line, size_t n, const char *name)
{
	size_t k = strlen(name);

	return n > k && line[k] == ':' && strncasecmp((const char *)line, name, k) == 0;
}

/* Outer headers without the ones that describe the encrypted body, appended to b. */
static int
outer_headers(struct kms_buf *b, const unsigned char *p, size_t hdr_len)
{
	static const char *const drop[] = { "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
		"Content-Description", "MIME-Version", "X-KMS-Decrypted", NULL };
	size_t i = 0;
	int skipping = 0, rc = 0;

	while (i < hdr_len && rc == 0) {
		size_t e = i;

		while (e < hdr_len && p[e] != '\n')
			e++;
		if (p[i] != ' ' && p[i] != '\t') {
			skipping = 0;
			for (int d = 0; drop[d]; d++)
				if (header_name_is(p + i, e - i, drop[d]))
					skipping = 1;
		}
		if (!skipping)
			rc = kms_buf_append(b, p + i, (e < hdr_len ? e + 1 : e) - i);
		i = e + 1;
	}
	return rc;
}

/* One line: the milter folds Authentication-Results with "\n\t"; the output keeps one field per line. */
static void
unfold(char *s)
{
	for (char *p = s; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
}

/*
 * The Authentication-Results value for the decrypted message (the outer
 * header fields over the decrypted content, as written out), from the
 * milter library's verifier: the same checks as mail in transit (signature
 * over the original bytes, chain to the trust anchors, signer against
 * From), without revocation data.  NULL when nothing in it is signed.
 */
static char *
inner_signature(struct arc *a, const struct kms_buf *msg)
{
	struct mlt_check_ctx ctx = { .trust = a->trust, .rev = NULL, .limits = a->limits,
		.authserv_id = ARCHIVE_AUTHSERV_ID };
	struct mlt_result *res = NULL;
	unsigned char *crlf = NULL;
	size_t crlflen = 0;
	char *ar = NULL;

	if (mlt_canon_crlf(msg->data, msg->len, &crlf, &crlflen) != 0)
		return NULL;
	if (mlt_check_message(&ctx, crlf, crlflen, &res) == 0 && res->ar_value != NULL &&
	    (ar = strdup(res->ar_value)) != NULL)
		unfold(ar);
	mlt_result_free(res);
	free(crlf);
	return ar;
}

static void
add_reason(struct arc *a, const struct msg *m)
{
	size_t n;

	if (a->nreasons >= MAX_REASONS)
		return;
	n = strlen(m->source) + (m->why ? strlen(m->why) : 0) + 64;
	a->reasons[a->nreasons] = malloc(n);
	if (a->reasons[a->nreasons])
		snprintf(a->reasons[a->nreasons++], n, "%s%s%s: %s", m->source, m->message_id ? " " : "",
		    m->message_id ? m->message_id : "", m->why ? m->why : "failed");
}

/*
 * A decrypted message: the outer header fields (less those of the
 * encryption), X-KMS-Decrypted, the Authentication-Results of a signature
 * inside, then the decrypted content.
 */
static void
emit_decrypted(struct arc *a, struct msg *m, const unsigned char *plain, size_t plainlen)
{
	struct kms_buf msg;
	size_t hdr_end, hdr_len;
	char *ar = NULL;

	/* The plaintext may be anything the user wrote: a secret buffer, wiped at the end. */
	kms_buf_init_secret(&msg, SIZE_MAX);
	body_offset(m->raw, m->len, &hdr_end);
	if (outer_headers(&msg, m->raw, hdr_end) != 0 || kms_buf_append_str(&msg, "MIME-Version: 1.0\n") != 0) {
		msg_fail(m, "out of memory", NULL);
		a->fatal = 1;
		goto out;
	}
	hdr_len = msg.len;
	if (kms_buf_append(&msg, plain, plainlen) == 0)
		ar = inner_signature(a, &msg);
	a->decrypted++;
	put_from_line(a->out, m);
	put_lines(a->out, msg.data, hdr_len);
	fprintf(a->out, "X-KMS-Decrypted: request=%s; key=%s\n", a->request ? a->request : "offline-p12",
	    m->key_serial ? m->key_serial : "");
	if (ar)
		fprintf(a->out, "Authentication-Results: %s\n", ar);
	put_lines(a->out, plain, plainlen);
	fputc('\n', a->out);
out:
	free(ar);
	kms_buf_free(&msg);
}

static void
emit(struct arc *a, struct msg *m)
{
	unsigned char *plain = NULL;
	size_t plainlen = 0;

	if (m->kind == MSG_MINE) {
		if (a->keys)
			release_local(a, m);
		if (m->kind == MSG_MINE && m->cek == NULL && m->why == NULL)
			msg_fail(m, "no key released", NULL);
		if (m->kind == MSG_MINE &&
		    esc_enveloped_decrypt(m->env, m->cek, m->ceklen, &plain, &plainlen) != 0)
			msg_fail(m, "decryption failed", kms_last_error());
	}
	switch (m->kind) {
	case MSG_MINE:
		emit_decrypted(a, m, plain, plainlen);
		break;
	case MSG_BROKEN:
		a->failed++;
		add_reason(a, m);
		/* Broken messages are kept as they were. */
		__attribute__((fallthrough));
	case MSG_PLAIN:
	case MSG_ENCRYPTED_OTHER:
		if (m->kind == MSG_PLAIN)
			a->plain++;
		else if (m->kind == MSG_ENCRYPTED_OTHER)
			a->other++;
		if (!a->only_decrypted) {
			put_from_line(a->out, m);
			put_lines(a->out, m->raw, m->len);
			if (m->len == 0 || m->raw[m->len - 1] != '\n' || (m->len >= 2 && m->raw[m->len - 2] != '\n'))
				fputc('\n', a->out);
		}
		break;
	}
	if (plain) {
		kms_wipe(plain, plainlen);
		free(plain);
	}
}

static void
flush(struct arc *a)
{
	if (a->nbatch == 0)
		return;
	if (a->request && a->nmine > 0 && !a->fatal)
		release_batch(a);
	for (size_t i = 0; i < a->nbatch; i++) {
		if (!a->fatal)
			emit(a, &a->batch[i]);
		msg_clear(&a->batch[i]);
	}
	a->nbatch = 0;
	a->nmine = 0;
	if (a->progress)
		fprintf(stderr, "\r%llu messages read, %llu decrypted, %llu failed", a->seen, a->decrypted, a->failed);
}

/* Take one message (steals raw). */
static void
take(struct arc *a, unsigned char *raw, size_t len, const char *source)
{
	struct msg *m;

	if (a->fatal) {
		free(raw);
		return;
	}
	m = &a->batch[a->nbatch++];
	memset(m, 0, sizeof(*m));
	m->raw = raw;
	m->len = len;
	snprintf(m->source, sizeof(m->source), "%s", source);
	a->seen++;
	if (len > MAX_MESSAGE)
		msg_fail(m, "message larger than 100 MiB", NULL);
	else
		examine(a, m);
	if (m->kind == MSG_MINE)
		a->nmine++;
	if (a->nbatch == BATCH)
		flush(a);
}

/* --------------------------------------------------------------- inputs */

/* Count a message over MAX_MESSAGE as failed, with its source in the report. */
static void
reject_too_big(struct arc *a, const char *source)
{
	struct msg m = { 0 };

	snprintf(m.source, sizeof(m.source), "%s", source);
	m.why = strdup("message larger than 100 MiB");
	a->seen++;
	a->failed++;
	add_reason(a, &m);
	free(m.why);
}

/* Hand the message collected in buf (message n of path) on, and empty buf. */
static void
mbox_message_end(struct arc *a, struct kms_buf *buf, int too_big, const char *path, size_t n)
{
	char source[SOURCE_MAX];
	unsigned char *raw;
	size_t len;

	snprintf(source, sizeof(source), "%s#%zu", path, n);
	if (too_big) {
		reject_too_big(a, source);
		kms_buf_free(buf);
	} else if ((raw = kms_buf_steal(buf, &len)) == NULL) {
		a->fatal = 1;
	} else {
		take(a, raw, len, source);
	}
	kms_buf_init(buf, MAX_MESSAGE);
}

/* mboxrd: a ">From " line (any number of '>') loses one '>'. */
static int
mboxrd_quoted(const char *l, size_t ll)
{
	size_t k = 0;

	while (k < ll && l[k] == '>')
		k++;
	return k > 0 && ll - k >= 5 && memcmp(l + k, "From ", 5) == 0;
}

static int
read_mbox(struct arc *a, FILE *fp, const char *path)
{
	struct kms_buf buf;
	char *line = NULL;
	size_t cap = 0, n = 0;
	ssize_t r;
	int prev_blank = 1, in_msg = 0, too_big = 0, rc = 0;

	kms_buf_init(&buf, MAX_MESSAGE);
	while ((r = getline(&line, &cap, fp)) >= 0) {
		const char *l = line;
		size_t ll = (size_t)r;

		if (prev_blank && ll >= 5 && memcmp(l, "From ", 5) == 0) {
			if (in_msg) {
				/* The blank line before "From " separates messages. */
				if (buf.len > 0 && buf.data[buf.len - 1] == '\n')
					buf.len--;
				mbox_message_end(a, &buf, too_big, path, n);
			}
			in_msg = 1;
			too_big = 0;
			n++;
			prev_blank = 0;
			continue;
		}
		if (!in_msg) {
			rc = kms_fail(KMS_ERR_INVALID, "%s: not an mbox", path);
			goto out;
		}
		prev_blank = (ll == 1 && l[0] == '\n') || (ll == 2 && l[0] == '\r' && l[1] == '\n');
		if (mboxrd_quoted(l, ll)) {
			l++;
			ll--;
		}
		if (too_big)
			continue;
		if ((rc = kms_buf_append(&buf, l, ll)) == KMS_ERR_TOOBIG) {
			too_big = 1;
			rc = 0;
		} else if (rc != 0) {
			goto out;
		}
	}
	if (in_msg) {
		/* The last message is followed by the same blank line as the others. */
		if (buf.len >= 2 && buf.data[buf.len - 1] == '\n' && buf.data[buf.len - 2] == '\n')
			buf.len--;
		mbox_message_end(a, &buf, too_big, path, n);
	}
out:
	kms_buf_free(&buf);
	free(line);
	return rc;
}

static int
read_one_file(struct arc *a, const char *path)
{
	unsigned char *data;
	size_t len;
	int rc = kms_read_file(path, MAX_MESSAGE, &data, &len);

	if (rc == KMS_ERR_TOOBIG) {
		reject_too_big(a, path);
		return 0;
	}
	if (rc != 0)
		return rc;
	take(a, data, len, path);
	return 0;
}

static int
cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

static int
cmp_base(const void *x, const void *y)
{
	return strcmp(strrchr(*(char *const *)x, '/'), strrchr(*(char *const *)y, '/'));
}

/* Regular files of dir, sorted by name, appended to list. */
static int
list_dir(const char *dir, char ***list, size_t *n, size_t *cap)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d == NULL)
		return kms_fail(KMS_ERR_IO, "%s: %s", dir, strerror(errno));
	while ((e = readdir(d)) != NULL) {
		char *p;
		struct stat sb;

		if (e->d_name[0] == '.')
			continue;
		p = kms_path_join(dir, e->d_name);
		if (p == NULL || stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			free(p);
			continue;
		}
		if (kms_array_reserve(list, cap, *n + 1, sizeof(**list), SIZE_MAX) != 0) {
			free(p);
			closedir(d);
			return KMS_ERR_NOMEM;
		}
		(*list)[(*n)++] = p;
	}
	closedir(d);
	return 0;
}

/* A Maildir (cur/ and new/) or a directory of message files. */
static int
read_dir(struct arc *a, const char *dir)
{
	char **list = NULL, *cur = kms_path_join(dir, "cur"), *nw = kms_path_join(dir, "new");
	size_t n = 0, cap = 0;
	struct stat sb;
	int rc = 0;

	if (cur && nw && stat(cur, &sb) == 0 && S_ISDIR(sb.st_mode)) {
		/* Maildir: messages by file name (delivery time first), cur/ and new/ together. */
		rc = list_dir(cur, &list, &n, &cap);
		if (rc == 0 && stat(nw, &sb) == 0)
			rc = list_dir(nw, &list, &n, &cap);
		/* Sort on the base name so cur/ and new/ interleave by delivery. */
		if (rc == 0)
			qsort(list, n, sizeof(char *), cmp_base);
	} else {
		rc = list_dir(dir, &list, &n, &cap);
		if (rc == 0)
			qsort(list, n, sizeof(char *), cmp_str);
	}
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = read_one_file(a, list[i]);
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
	free(cur);
	free(nw);
	return rc;
}

static int
read_input(struct arc *a, const char *path)
{
	struct stat sb;
	FILE *fp;
	char head[5];
	int rc;

	if (stat(path, &sb) != 0)
		return kms_fail(KMS_ERR_NOTFOUND, "%s: %s", path, strerror(errno));
	if (S_ISDIR(sb.st_mode))
		return read_dir(a, path);
	fp = fopen(path, "r");
	if (fp == NULL)
		return kms_fail(KMS_ERR_IO, "%s: %s", path, strerror(errno));
	if (fread(head, 1, 5, fp) == 5 && memcmp(head, "From ", 5) == 0) {
		rewind(fp);
		rc = read_mbox(a, fp, path);
		fclose(fp);
		return rc;
	}
	fclose(fp);
	return read_one_file(a, path);
}

/* ---------------------------------------------------------------- setup */

/* --request: the request's user and encryption certificates, and the CA, from kmsd. */
static int
load_from_kmsd(struct arc *a)
{
	json_t *reply, *r, *c;
	size_t i;
	int ok;

	reply = ctl_call(a->ctl, "recover.list", json_pack("{s:b}", "all", 1));
	if (reply == NULL)
		return CTL_ERR_USAGE;
	ok = json_is_true(json_object_get(reply, "ok"));
	json_array_foreach(json_object_get(json_object_get(reply, "result"), "requests"), i, r)
		if (strcmp(ctl_str(r, "id"), a->request) == 0)
			a->email = strdup(ctl_str(r, "email"));
	if (!ok || a->email == NULL || a->email[0] == '\0') {
		fprintf(stderr, "kmsctl: archive decrypt: %s\n", ok ? "no such archive request" :
		    ctl_str(json_object_get(reply, "error"), "message"));
		json_decref(reply);
		return CTL_ERR_REPLY;
	}
	json_decref(reply);
	reply = ctl_call(a->ctl, "show", json_pack("{s:s}", "target", a->email));
	if (reply == NULL)
		return CTL_ERR_USAGE;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		fprintf(stderr, "kmsctl: archive decrypt: %s\n", ctl_str(json_object_get(reply, "error"), "message"));
		json_decref(reply);
		return CTL_ERR_REPLY;
	}
	a->certs = calloc(json_array_size(json_object_get(json_object_get(reply, "result"), "certificates")) + 1,
	    sizeof(X509 *));
	json_array_foreach(json_object_get(json_object_get(reply, "result"), "certificates"), i, c) {
		const char *pem = ctl_str(c, "pem");
		BIO *b = BIO_new_mem_buf(pem, -1);
		X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;

		BIO_free(b);
		if (x == NULL)
			continue;
		if (strcmp(ctl_str(c, "usage"), "enc") == 0 && a->certs)
			a->certs[a->ncerts++] = x;
		else
			X509_free(x);
	}
	json_decref(reply);
	ERR_clear_error();
	if (a->ncerts == 0) {
		fprintf(stderr, "kmsctl: archive decrypt: %s has no encryption certificate\n", a->email);
		return CTL_ERR_REPLY;
	}
	return 0;
}

static int
load_p12(struct arc *a, const char *path, const char *pwfile, struct ca_p12_contents **pc)
{
	unsigned char *der = NULL;
	size_t len = 0;
	char *pw = NULL;
	int rc;

	if (kms_read_file(path, MAX_P12_FILE, &der, &len) != 0)
		return ctl_fail(CTL_ERR_USAGE, "archive decrypt: cannot read the PKCS#12");
	if (pwfile) {
		if (ctl_read_password_file(pwfile, &pw) != 0) {
			free(der);
			return CTL_ERR_USAGE;
		}
	}
	rc = ca_p12_read(der, len, pw ? pw : "", pc);
	kms_secret_free(pw);
	kms_wipe(der, len);
	free(der);
	if (rc != 0)
		return ctl_fail(CTL_ERR_REPLY, rc == KMS_ERR_PERM ? "archive decrypt: wrong PKCS#12 password (--password-file)" :
		    "archive decrypt: cannot read the PKCS#12");
	a->certs = calloc((*pc)->n + 1, sizeof(X509 *));
	a->keys = calloc((*pc)->n + 1, sizeof(EVP_PKEY *));
	if (a->certs == NULL || a->keys == NULL)
		return CTL_ERR_REPLY;
	for (size_t i = 0; i < (*pc)->n; i++) {
		if ((*pc)->keys[i] == NULL || (*pc)->certs[i] == NULL)
			continue;
		a->certs[a->ncerts] = (*pc)->certs[i];
		a->keys[a->ncerts] = (*pc)->keys[i];
		a->ncerts++;
		if (a->email == NULL)
			a->email = ca_cert_email((*pc)->certs[i]);
	}
	if (a->ncerts == 0) {
		fprintf(stderr, "kmsctl: archive decrypt: the PKCS#12 holds no key with its certificate\n");
		return CTL_ERR_REPLY;
	}
	for (int i = 0; (*pc)->others && i < sk_X509_num((*pc)->others); i++)
		X509_STORE_add_cert(a->trust, sk_X509_value((*pc)->others, i));
	return 0;
}

static int
add_ca_file(X509_STORE *store, const char *path)
{
	BIO *b = BIO_new_file(path, "r");
	X509 *x;
	int n = 0;

	if (b == NULL)
		return -1;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		X509_STORE_add_cert(store, x);
		X509_free(x);
		n++;
	}
	BIO_free(b);
	ERR_clear_error();
	return n > 0 ? 0 : -1;
}

/* What archive decrypt was asked for, besides what struct arc holds. */
struct archive_opts {
	const char *p12, *pwfile, *out, *cafile;
	const char *inputs[MAX_INPUTS];
	size_t ninputs;
	int quiet;
};

/* Parse the options into a and o: 0, or the usage exit status after saying why. */
static int
archive_parse(struct arc *a, int argc, char **argv, struct archive_opts *o)
{
	static const struct option opts[] = {
		{ "request", required_argument, NULL, 'r' },
		{ "p12", required_argument, NULL, 'p' },
		{ "password-file", required_argument, NULL, 'w' },
		{ "in", required_argument, NULL, 'i' },
		{ "out", required_argument, NULL, 'o' },
		{ "ca", required_argument, NULL, 'c' },
		{ "only-decrypted", no_argument, NULL, 'D' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'r': a->request = optarg; break;
		case 'p': o->p12 = optarg; break;
		case 'w': o->pwfile = optarg; break;
		case 'i':
			if (o->ninputs == MAX_INPUTS)
				return ctl_usage_error("archive decrypt: at most %d --in", MAX_INPUTS);
			o->inputs[o->ninputs++] = optarg;
			break;
		case 'o': o->out = optarg; break;
		case 'c': o->cafile = optarg; break;
		case 'D': a->only_decrypted = 1; break;
		case 'q': o->quiet = 1; break;
		default: return CTL_ERR_USAGE;
		}
	}
	/* Extra operands are inputs too (archive decrypt --in a.eml b.eml ...). */
	while (optind < argc && o->ninputs < MAX_INPUTS)
		o->inputs[o->ninputs++] = argv[optind++];
	if ((a->request == NULL) == (o->p12 == NULL) || o->ninputs == 0 || o->out == NULL)
		return ctl_usage_error("archive decrypt: give --request ID or --p12 FILE, at least one --in, and --out");
	return 0;
}

/* Trust kmsd's own CA for signatures inside the encryption. */
static void
trust_own_ca(struct arc *a)
{
	json_t *reply = ctl_call(a->ctl, "status", NULL);
	const char *pem = reply ? ctl_str(json_object_get(json_object_get(reply, "result"), "ca"), "pem") : "";
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;

	if (x)
		X509_STORE_add_cert(a->trust, x);
	X509_free(x);
	BIO_free(b);
	ERR_clear_error();
	json_decref(reply);
}

/* The user's keys (from kmsd or the PKCS#12), the trust anchors and the bounds for inner signatures. */
static int
archive_setup(struct arc *a, const struct archive_opts *o, struct ca_p12_contents **pc)
{
	struct kms_config *cfg = NULL;
	int rc;

	if (kms_config_load(a->ctl->config, &cfg) != 0)
		return ctl_fail(CTL_ERR_USAGE, "archive decrypt: cannot load the configuration");
	mlt_limits_from_config(cfg, &a->limits);
	kms_config_unref(cfg);
	a->trust = X509_STORE_new();
	if (a->trust == NULL)
		return ctl_fail(CTL_ERR_REPLY, "out of memory");
	if (o->cafile && add_ca_file(a->trust, o->cafile) != 0)
		return ctl_usage_error("archive decrypt: --ca %s holds no PEM certificate", o->cafile);
	rc = a->request ? load_from_kmsd(a) : load_p12(a, o->p12, o->pwfile, pc);
	if (rc == 0 && a->request && !o->cafile)
		trust_own_ca(a);
	return rc;
}

/* Output: a temp file beside the target (mode 0600), renamed at the very end; *tmp is its name. */
static int
open_output(struct arc *a, const char *out, char **tmp)
{
	int fd;

	if (access(out, F_OK) == 0)
		return ctl_usage_error("archive decrypt: %s exists; it would be overwritten", out);
	if ((*tmp = malloc(strlen(out) + 16)) == NULL)
		return CTL_ERR_REPLY;
	snprintf(*tmp, strlen(out) + 16, "%s.tmp.XXXXXX", out);
	fd = mkstemp(*tmp);
	if (fd < 0 || (a->out = fdopen(fd, "w")) == NULL) {
		fprintf(stderr, "kmsctl: cannot create %s: %s\n", *tmp, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlink(*tmp);
		}
		return CTL_ERR_USAGE;
	}
	fchmod(fd, 0600);
	return 0;
}

/* Read every input, then flush, sync, close and rename the output; on failure it is removed. */
static int
run_inputs(struct arc *a, const struct archive_opts *o, const char *tmp)
{
	int rc = 0;

	for (size_t i = 0; i < o->ninputs && rc == 0 && !a->fatal; i++) {
		if (read_input(a, o->inputs[i]) != 0) {
			fprintf(stderr, "kmsctl: archive decrypt: %s\n", kms_last_error());
			rc = CTL_ERR_USAGE;
		}
	}
	if (rc == 0)
		flush(a);
	if (a->progress)
		fputc('\n', stderr);
	if (rc == 0 && a->fatal)
		rc = a->fatal;
	if (rc == 0 && (fflush(a->out) != 0 || fsync(fileno(a->out)) != 0)) {
		fprintf(stderr, "kmsctl: cannot write %s: %s\n", tmp, strerror(errno));
		rc = CTL_ERR_REPLY;
	}
	if (fclose(a->out) != 0 && rc == 0) {
		fprintf(stderr, "kmsctl: cannot write %s: %s\n", tmp, strerror(errno));
		rc = CTL_ERR_REPLY;
	}
	a->out = NULL;
	if (rc == 0 && rename(tmp, o->out) != 0) {
		fprintf(stderr, "kmsctl: cannot rename %s to %s: %s\n", tmp, o->out, strerror(errno));
		rc = CTL_ERR_REPLY;
	}
	if (rc != 0) {
		unlink(tmp);
		fprintf(stderr, "kmsctl: archive decrypt stopped; no output written\n");
	}
	return rc;
}

static void
print_summary(const struct arc *a, const char *out, int json)
{
	if (json) {
		json_t *res = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:o}", "out", out, "messages", (json_int_t)a->seen,
		    "decrypted", (json_int_t)a->decrypted, "not_for_user", (json_int_t)a->other,
		    "not_encrypted", (json_int_t)a->plain, "failed", (json_int_t)a->failed, "failures", json_array());
		char *s;

		for (size_t i = 0; i < a->nreasons; i++)
			json_array_append_new(json_object_get(res, "failures"), json_string(a->reasons[i]));
		s = json_dumps(res, JSON_COMPACT);
		if (s)
			puts(s);
		free(s);
		json_decref(res);
		return;
	}
	printf("%s: %llu messages for %s\n", out, a->seen, a->email ? a->email : "");
	printf("  decrypted:               %llu\n", a->decrypted);
	printf("  not addressed to user:   %llu\n", a->other);
	printf("  not encrypted:           %llu\n", a->plain);
	printf("  failed:                  %llu\n", a->failed);
	for (size_t i = 0; i < a->nreasons; i++)
		printf("    %s\n", a->reasons[i]);
	if (a->failed > a->nreasons)
		printf("    ... and %llu more\n", a->failed - a->nreasons);
}

static void
arc_free(struct arc *a, struct ca_p12_contents *pc)
{
	for (size_t i = 0; i < a->nbatch; i++)
		msg_clear(&a->batch[i]);
	for (size_t i = 0; i < a->nreasons; i++)
		free(a->reasons[i]);
	if (pc == NULL)
		for (size_t i = 0; i < a->ncerts; i++)
			X509_free(a->certs[i]);
	ca_p12_contents_free(pc);
	free(a->certs);
	free(a->keys);
	free(a->email);
	X509_STORE_free(a->trust);
	free(a);
}

int
ctl_cmd_archive(struct ctl *ctl, int argc, char **argv)
{
	struct archive_opts o;
	struct arc *a;
	struct ca_p12_contents *pc = NULL;
	char *tmp = NULL;
	int rc;

	if (argc < 2 || strcmp(argv[1], "decrypt") != 0)
		return ctl_usage_error("archive: the only subcommand is decrypt");
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return CTL_ERR_REPLY;
	a->ctl = ctl;
	if ((rc = archive_parse(a, argc - 1, argv + 1, &o)) != 0)
		goto out;
	g_mime_init();
	kms_secmem_init(CTL_SECURE_HEAP);
	kms_disable_core_dumps();
	if ((rc = archive_setup(a, &o, &pc)) != 0 || (rc = open_output(a, o.out, &tmp)) != 0)
		goto out;
	a->progress = !o.quiet && !ctl->json && isatty(STDERR_FILENO);
	if ((rc = run_inputs(a, &o, tmp)) != 0)
		goto out;
	print_summary(a, o.out, ctl->json);
	rc = CTL_OK;
out:
	if (a->out) {
		fclose(a->out);
		unlink(tmp);
	}
	free(tmp);
	arc_free(a, pc);
	return rc;
}
