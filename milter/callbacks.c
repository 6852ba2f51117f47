/*
 * callbacks.c - the libmilter side of kmsd: collect each message, check it
 * at end of message, apply what policy decided.
 *
 * Entry point: mlt_milter_register (smfi_register with the callbacks
 * below; the caller runs smfi_setconn/smfi_opensocket/smfi_main).
 *
 * Contexts: a struct conn per MTA connection (made at negotiation, or at
 * the first callback for an MTA that does not negotiate) holds a reference
 * to the environment (config and trust anchors) for the whole connection,
 * so that a reload never changes a message half-way; a struct msg per
 * message (from MAIL to end of message or abort) holds the message buffer.
 * msg_free() is the one function that frees a message; it runs from eom,
 * abort, a new MAIL and close.  conn_free() runs from close only.
 *
 * A callback never exits the process and never leaves the MTA without an
 * answer: internal trouble becomes the [policy] on_error action
 * (tempfail by default), so that the MTA keeps the message.
 *
 * Speed: the MTA is asked not to wait for replies to MAIL, headers,
 * end of headers and body chunks (SMFIP_NR_*), and not to send what we do
 * not use.  On an inet socket, TCP_QUICKACK is set again after every read
 * (it is not sticky on Linux): otherwise the MTA's small writes wait for
 * our delayed ACK, about 40 ms per message with Postfix; and TCP_NODELAY
 * is set once, so that our own small writes at end of message do not wait
 * for the MTA's delayed ACK either.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#include "milter/milter.h"

#define WANT_ACTIONS (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_QUARANTINE)
/* Steps we do not use, replies the MTA need not wait for, header values as written. */
#define WANT_PROTO (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NORCPT | SMFIP_NOUNKNOWN | SMFIP_NODATA | \
	SMFIP_NR_MAIL | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_HDR_LEADSPC | SMFIP_SKIP)

/*
 * The new body goes out in pieces of this size (smfi_replacebody appends).
 * MTAs take 64 KB per piece, but miltertest, which the tests drive kmsd
 * with, reads each reply into a 1 KB stack buffer without a bound; the
 * extra writes cost nothing next to the rest of a warned message.
 */
#define REPLBODY_CHUNK 1024

struct msg {
	struct mlt_msgbuf *buf;
	int failed;             /* collecting failed: on_error at eom */
	char failure[160];
	int skipped;            /* told the MTA to skip the rest of the body */
};

/* What kmsd lends the callbacks (mlt_milter_register); set once before smfi_main. */
static const struct mlt_host *host;

struct conn {
	void *settings;         /* the host's reference behind view */
	struct mlt_view view;    /* config and trust anchors for the whole connection */
	unsigned long actions;  /* granted SMFIF_* */
	unsigned long proto;    /* granted SMFIP_* */
	int negotiated;
	int quickack_fd;        /* inet socket of this connection, or -1 */
	int quickack_checked;
	struct msg *msg;
	unsigned long nmsgs;
};

/* ------------------------------------------------------------------ helpers */

/* The MTA's queue id for log lines, or "NOQUEUE". */
static const char *
qid(SMFICTX *ctx)
{
	const char *i = smfi_getsymval(ctx, "i");
	static const char none[] = "NOQUEUE";

	if (i == NULL || *i == '\0')
		return none;
	/* The MTA chooses it, but keep log lines clean anyway. */
	for (const char *p = i; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    *p == '.' || *p == '-' || *p == '_'))
			return "BADQUEUEID";
	return i;
}

static void
msg_free(struct conn *c)
{
	if (c == NULL || c->msg == NULL)
		return;
	mlt_msgbuf_free(c->msg->buf);
	free(c->msg);
	c->msg = NULL;
}

static void
conn_free(struct conn *c)
{
	if (c == NULL)
		return;
	msg_free(c);
	if (c->settings != NULL)
		host->settings_put(c->settings);
	free(c);
}

/*
 * libmilter keeps the session's socket in its context, right after the
 * thread id, and has done so since the first libmilter; it gives no call
 * for it.  We take it only when it checks out: a connected (not
 * listening) TCP stream socket.  Otherwise no QUICKACK.  (The thread id
 * is not ours to compare: with a worker pool another thread may serve.)
 */
struct smfi_str_head {
	pthread_t id;
	int sd;
};

static void
quickack_find(SMFICTX *ctx, struct conn *c)
{
	const struct smfi_str_head *h = (const struct smfi_str_head *)(const void *)ctx;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int type = 0, listening = 1;
	socklen_t tl = sizeof(type), ll = sizeof(listening);

	c->quickack_checked = 1;
	c->quickack_fd = -1;
	if (h->sd < 0)
		return;
	if (getsockopt(h->sd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
	    getsockopt(h->sd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) != 0 || listening)
		return;
	if (getsockname(h->sd, (struct sockaddr *)&ss, &sl) != 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
		return;
	c->quickack_fd = h->sd;
	/*
	 * At end of message the reply is several small writes (header edits,
	 * then the verdict); Nagle would hold the second until the MTA acks the
	 * first, which it delays: another 40 ms per message.
	 */
	{
		int one = 1;

		(void)setsockopt(h->sd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
}

static void
quickack(SMFICTX *ctx, struct conn *c)
{
	int one = 1;

	if (!c->quickack_checked)
		quickack_find(ctx, c);
	if (c->quickack_fd >= 0)
		(void)setsockopt(c->quickack_fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

/* The connection context, made on first use; NULL only when out of memory. */
static struct conn *
conn_get(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c == NULL) {
		if ((c = calloc(1, sizeof(*c))) == NULL)
			return NULL;
		c->quickack_fd = -1;
		c->settings = host->settings_get(&c->view);
		if (c->settings == NULL) {
			free(c);
			return NULL;
		}
		if (smfi_setpriv(ctx, c) != MI_SUCCESS) {
			conn_free(c);
			return NULL;
		}
	}
	quickack(ctx, c);
	return c;
}

/* The reply to a step whose reply the MTA may not be waiting for. */
static sfsistat
step_reply(const struct conn *c, unsigned long nr_flag)
{
	return c != NULL && (c->proto & nr_flag) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

/* Answer as [policy] on_error says, for trouble outside any message verdict. */
static sfsistat
on_error(SMFICTX *ctx, const struct kms_config *cfg, const char *why)
{
	int act = cfg ? (int)cfg->policy.on_error : KMS_ACT_TEMPFAIL;

	kms_log(KMS_LOG_ERR, "%s: internal error: %s; answering %s", qid(ctx), why, kms_action_name(act));
	switch (act) {
	case KMS_ACT_REJECT:
		smfi_setreply(ctx, "550", "5.7.1", "S/MIME check failed");
		return SMFIS_REJECT;
	case KMS_ACT_ACCEPT:
	case KMS_ACT_WARN:
	case KMS_ACT_QUARANTINE:
		return SMFIS_CONTINUE;
	default:
		smfi_setreply(ctx, "451", "4.7.1", "S/MIME check could not complete, try again later");
		return SMFIS_TEMPFAIL;
	}
}

/* ---------------------------------------------------------------- callbacks */

static sfsistat
cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
    unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct conn *c = conn_get(ctx);

	(void)f2;
	(void)f3;
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	c->actions = f0 & WANT_ACTIONS;
	c->proto = f1 & WANT_PROTO;
	/* With no-reply for body chunks a skip cannot be said. */
	if (c->proto & SMFIP_NR_BODY)
		c->proto &= ~(unsigned long)SMFIP_SKIP;
	c->negotiated = 1;
	if ((c->actions & WANT_ACTIONS) != WANT_ACTIONS)
		kms_log(KMS_LOG_WARNING, "milter: the MTA grants actions 0x%lx of 0x%lx: some warnings cannot be applied",
		    c->actions, (unsigned long)WANT_ACTIONS);
	*pf0 = c->actions;
	*pf1 = c->proto;
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

static void
collect_failed(SMFICTX *ctx, struct msg *m)
{
	if (m->failed)
		return;
	m->failed = 1;
	snprintf(m->failure, sizeof(m->failure), "%s", kms_last_error());
	kms_log(KMS_LOG_ERR, "%s: %s", qid(ctx), m->failure);
}

/*
 * The ESMTP SIZE parameter among the MAIL arguments (argv[0] is the
 * sender), or 0: digits only, at most 18 of them, anything else ignored.
 */
static size_t
declared_size(char **argv)
{
	for (size_t i = 1; argv != NULL && argv[0] != NULL && argv[i] != NULL && i < 32; i++) {
		const char *a = argv[i];
		size_t v = 0, n = 0;

		if (strncasecmp(a, "SIZE=", 5) != 0)
			continue;
		for (a += 5; *a >= '0' && *a <= '9' && n < 18; a++, n++)
			v = v * 10 + (size_t)(*a - '0');
		return *a == '\0' && n > 0 ? v : 0;
	}
	return 0;
}

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	struct conn *c = conn_get(ctx);
	const struct kms_config *cfg;
	struct msg *m;

	if (c == NULL)
		return on_error(ctx, NULL, "out of memory");
	if (!c->negotiated)
		c->actions = WANT_ACTIONS;      /* an MTA that does not negotiate grants what was registered */
	msg_free(c);    /* a message the MTA never finished */
	cfg = c->view.cfg;
	if ((m = calloc(1, sizeof(*m))) == NULL)
		return on_error(ctx, cfg, "out of memory");
	c->msg = m;
	c->nmsgs++;
	if (mlt_msgbuf_new((size_t)cfg->milter.max_memory, (size_t)cfg->milter.max_message_size,
	    cfg->milter.tempdir, &m->buf) != 0) {
		m->failed = 1;
		snprintf(m->failure, sizeof(m->failure), "%s", kms_last_error());
	} else if (mlt_msgbuf_expect(m->buf, declared_size(argv)) != 0) {
		collect_failed(ctx, m);
	}
	return step_reply(c, SMFIP_NR_MAIL);
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	struct conn *c = conn_get(ctx);

	if (c != NULL && c->msg != NULL && !c->msg->failed &&
	    mlt_msgbuf_add_header(c->msg->buf, name, value ? value : "", !(c->proto & SMFIP_HDR_LEADSPC)) != 0)
		collect_failed(ctx, c->msg);
	return step_reply(c, SMFIP_NR_HDR);
}

static sfsistat
cb_eoh(SMFICTX *ctx)
{
	struct conn *c = conn_get(ctx);

	if (c != NULL && c->msg != NULL && !c->msg->failed && mlt_msgbuf_append(c->msg->buf, "\r\n", 2) != 0)
		collect_failed(ctx, c->msg);
	return step_reply(c, SMFIP_NR_EOH);
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct conn *c = conn_get(ctx);

	if (c == NULL || c->msg == NULL)
		return step_reply(c, SMFIP_NR_BODY);
	if (!c->msg->failed && mlt_msgbuf_append(c->msg->buf, chunk, len) != 0)
		collect_failed(ctx, c->msg);
	/* Over the size bound the rest of the body is of no use: say so if we may. */
	if (!(c->proto & SMFIP_NR_BODY) && (c->proto & SMFIP_SKIP) && !c->msg->failed &&
	    mlt_msgbuf_too_big(c->msg->buf) && !c->msg->skipped) {
		c->msg->skipped = 1;
		return SMFIS_SKIP;
	}
	return step_reply(c, SMFIP_NR_BODY);
}

/* Is this edit about the top-level content (only useful with the new body)? */
static int
content_edit(const struct mlt_hdr_edit *e)
{
	return strncasecmp(e->name, "Content-", 8) == 0 || strcasecmp(e->name, "MIME-Version") == 0;
}

/* Apply the plan through libmilter.  0, or -1 when the MTA refused a change. */
static int
apply_plan(SMFICTX *ctx, const struct conn *c, const struct mlt_rewrite *rw)
{
	int lead = (c->proto & SMFIP_HDR_LEADSPC) != 0;
	int body_ok = rw->body != NULL && (c->actions & SMFIF_CHGBODY);

	if (rw->body != NULL && !body_ok)
		kms_log(KMS_LOG_WARNING, "%s: the MTA does not allow replacing the body: no notice part", qid(ctx));
	for (size_t i = 0; i < rw->nedits; i++) {
		const struct mlt_hdr_edit *e = &rw->edits[i];
		char *v = NULL;
		int r;

		if (content_edit(e) && !body_ok)
			continue;
		if ((e->op == MLT_HDR_DELETE || e->op == MLT_HDR_CHANGE) && !(c->actions & SMFIF_CHGHDRS))
			continue;
		if ((e->op == MLT_HDR_ADD || e->op == MLT_HDR_INSERT) && !(c->actions & SMFIF_ADDHDRS))
			continue;
		if (e->value != NULL) {
			/* With HDR_LEADSPC the MTA adds no space after the colon: we do. */
			if ((v = malloc(strlen(e->value) + 2)) == NULL)
				return -1;
			snprintf(v, strlen(e->value) + 2, "%s%s", lead ? " " : "", e->value);
		}
		switch (e->op) {
		case MLT_HDR_DELETE:
			r = smfi_chgheader(ctx, e->name, e->index, NULL);
			break;
		case MLT_HDR_CHANGE:
			r = smfi_chgheader(ctx, e->name, e->index, v);
			break;
		case MLT_HDR_INSERT:
			r = smfi_insheader(ctx, 0, e->name, v);
			break;
		default:
			r = smfi_addheader(ctx, e->name, v);
			break;
		}
		free(v);
		if (r != MI_SUCCESS) {
			kms_log(KMS_LOG_ERR, "%s: the MTA refused a change of the %s header field", qid(ctx), e->name);
			return -1;
		}
	}
	/* The new body in small pieces: see REPLBODY_CHUNK. */
	for (size_t off = 0; body_ok && off < rw->body_len; off += REPLBODY_CHUNK) {
		size_t n = rw->body_len - off < REPLBODY_CHUNK ? rw->body_len - off : REPLBODY_CHUNK;

		if (smfi_replacebody(ctx, rw->body + off, (int)n) != MI_SUCCESS) {
			kms_log(KMS_LOG_ERR, "%s: the MTA refused the new body", qid(ctx));
			return -1;
		}
	}
	if (rw->action == KMS_ACT_QUARANTINE) {
		if (!(c->actions & SMFIF_QUARANTINE) ||
		    smfi_quarantine(ctx, rw->quarantine_reason ? rw->quarantine_reason : "kmsd") != MI_SUCCESS) {
			kms_log(KMS_LOG_ERR, "%s: the MTA refused to quarantine the message", qid(ctx));
			return -1;
		}
	}
	return 0;
}

static void
log_verdict(SMFICTX *ctx, const struct mlt_result *res, const struct mlt_rewrite *rw)
{
	const struct mlt_sig *s = res && res->main < res->nsigs ? &res->sigs[res->main] : NULL;

	kms_log(KMS_LOG_INFO, "%s: smime=%s verdict=%s action=%s%s%s%s%s signatures=%zu: %s", qid(ctx),
	    pol_verdict_ar_result(rw->verdict), pol_verdict_name(rw->verdict), kms_action_name(rw->action),
	    s && s->signer ? " signer=" : "", s && s->signer ? s->signer : "",
	    s && s->serial ? " serial=" : "", s && s->serial ? s->serial : "",
	    res ? res->nsigs : 0, res && res->detail ? res->detail : "internal error");
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	struct conn *c = conn_get(ctx);
	const struct kms_config *cfg;
	struct mlt_check_ctx cc;
	struct mlt_result *res = NULL;
	struct mlt_rewrite *rw = NULL;
	const unsigned char *data = NULL;
	size_t len = 0;
	sfsistat st = SMFIS_CONTINUE;
	int rc;

	if (c == NULL)
		return on_error(ctx, NULL, "out of memory");
	cfg = c->view.cfg;
	if (c->msg == NULL)
		return on_error(ctx, cfg, "end of message without a message");
	memset(&cc, 0, sizeof(cc));
	cc.trust = c->view.trust;
	cc.inter = c->view.inter;
	cc.trust_gen = c->view.trust_gen;
	cc.rev = host->revidx_get();
	cc.find_cert = host->find_cert;
	cc.find_cert_arg = host->find_cert_arg;
	cc.rev_unknown = host->rev_unknown;
	cc.rev_unknown_arg = host->rev_unknown_arg;
	cc.authserv_id = cfg->kmsd.authserv_id;
	mlt_limits_from_config(cfg, &cc.limits);

	if (c->msg->failed) {
		rc = -1;
	} else if (mlt_msgbuf_data(c->msg->buf, &data, &len) != 0) {
		collect_failed(ctx, c->msg);
		rc = -1;
	} else if (mlt_msgbuf_too_big(c->msg->buf)) {
		char why[160];

		snprintf(why, sizeof(why), "message of %zu bytes is over [milter] max_message_size (%lld): not checked",
		    mlt_msgbuf_total(c->msg->buf), cfg->milter.max_message_size);
		rc = mlt_result_error(cfg->kmsd.authserv_id, why, &res);
	} else {
		rc = mlt_check_message(&cc, data, len, &res);
	}
	if (rc != 0 && !c->msg->failed)
		snprintf(c->msg->failure, sizeof(c->msg->failure), "%s", kms_last_error());
	/* No result: plan for an internal error (on_error), with no edits. */
	if (mlt_rewrite_plan(cfg, cfg->kmsd.authserv_id, res, res ? data : NULL, res ? len : 0, &rw) != 0) {
		st = on_error(ctx, cfg, kms_last_error());
		goto out;
	}
	if (res == NULL)
		kms_log(KMS_LOG_ERR, "%s: internal error while checking: %s", qid(ctx),
		    c->msg->failure[0] ? c->msg->failure : "unknown");
	log_verdict(ctx, res, rw);
	switch (rw->action) {
	case KMS_ACT_REJECT:
		smfi_setreply(ctx, (char *)rw->rcode, (char *)rw->xcode, rw->reply);
		st = SMFIS_REJECT;
		break;
	case KMS_ACT_TEMPFAIL:
		smfi_setreply(ctx, (char *)rw->rcode, (char *)rw->xcode, rw->reply);
		st = SMFIS_TEMPFAIL;
		break;
	default:
		if (apply_plan(ctx, c, rw) != 0)
			st = on_error(ctx, cfg, "the MTA refused a change");
		break;
	}
out:
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	if (cc.rev != NULL)
		ca_revidx_unref((struct ca_revidx *)cc.rev);
	msg_free(c);
	return st;
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c != NULL) {
		quickack(ctx, c);
		msg_free(c);
	}
	return SMFIS_CONTINUE;
}

static sfsistat
cb_close(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c != NULL) {
		smfi_setpriv(ctx, NULL);
		conn_free(c);
	}
	return SMFIS_CONTINUE;
}

static struct smfiDesc kmsd_milter = {
	.xxfi_name = "kmsd",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = WANT_ACTIONS,
	.xxfi_connect = NULL,
	.xxfi_helo = NULL,
	.xxfi_envfrom = cb_envfrom,
	.xxfi_envrcpt = NULL,
	.xxfi_header = cb_header,
	.xxfi_eoh = cb_eoh,
	.xxfi_body = cb_body,
	.xxfi_eom = cb_eom,
	.xxfi_abort = cb_abort,
	.xxfi_close = cb_close,
	.xxfi_unknown = NULL,
	.xxfi_data = NULL,
	.xxfi_negotiate = cb_negotiate,
};

int
mlt_milter_register(const struct mlt_host *h)
{
	host = h;
	mlt_smime_init();
	if (smfi_register(kmsd_milter) != MI_SUCCESS)
		return kms_fail(KMS_ERR_STATE, "libmilter refused the registration");
	return 0;
}
