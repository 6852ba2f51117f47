/*
 * nullmilter.c - the null milter of bench/milter/run: a libmilter program
 * that takes every message and accepts it without looking at it, so that
 * kmsd's figures can be read against the cost of the milter protocol
 * alone.
 *
 *   nullmilter [-q] [-n] [-H] SOCKET      SOCKET: unix:PATH or inet:PORT@HOST
 *
 * It asks the MTA for what kmsd asks for (the same actions, the same
 * steps left out, the same steps the MTA need not wait for), and it has
 * no-op header, end-of-header and body callbacks, so the MTA sends it the
 * whole message exactly as it sends it to kmsd; every callback answers
 * continue (or no reply where that was agreed), which accepts the message.
 * Without header or body callbacks libmilter would tell the MTA to skip
 * those steps, and the comparison would be with a milter that sees no
 * message at all.
 *
 * -q: on an inet socket, set TCP_QUICKACK on the connection in every
 * callback, as kmsd does.  Without it the null milter shows what a milter
 * on an inet socket costs when it leaves Linux's delayed ACK alone.
 *
 * Two options that make it less than null, to find where an inet socket
 * loses time: -H adds one header field at end of message (as kmsd adds
 * Authentication-Results), so that its answer is two writes, the change
 * and then the final reply; -n sets TCP_NODELAY on an inet connection, so
 * that the second of those writes does not wait (Nagle) for the MTA to
 * acknowledge the first.
 *
 * Runs in the foreground until SIGTERM or SIGINT (libmilter's signal
 * thread).  Owns nothing but its socket.
 */
#include "config.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

/* What kmsd negotiates (milter/callbacks.c). */
#define NULL_ACTIONS (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_QUARANTINE)
#define NULL_PROTO (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NORCPT | SMFIP_NOUNKNOWN | SMFIP_NODATA | \
	SMFIP_NR_MAIL | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_HDR_LEADSPC | SMFIP_SKIP)

static int quickack_on, nodelay_on, addheader_on;

/* Per connection: the granted protocol flags, and the socket for QUICKACK. */
struct nconn {
	unsigned long proto;
	int fd;                 /* connected TCP socket, or -1 */
	int looked;
};

/*
 * libmilter gives no call for a session's socket; its context starts with
 * the session thread's id followed by the socket descriptor.  Use that
 * descriptor only when it is a connected TCP stream socket.
 */
struct ctx_head {
	pthread_t thread;
	int sd;
};

static void
find_socket(SMFICTX *ctx, struct nconn *c)
{
	const struct ctx_head *h = (const struct ctx_head *)(const void *)ctx;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss), tl, al;
	int type = 0, acc = 1;

	c->looked = 1;
	c->fd = -1;
	tl = sizeof(type);
	al = sizeof(acc);
	if (h->sd < 0 || getsockopt(h->sd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
	    getsockopt(h->sd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) != 0 || acc != 0 ||
	    getsockname(h->sd, (struct sockaddr *)&ss, &sl) != 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
		return;
	c->fd = h->sd;
}

static struct nconn *
conn(SMFICTX *ctx)
{
	struct nconn *c = smfi_getpriv(ctx);
	int one = 1;

	if (c == NULL) {
		if ((c = calloc(1, sizeof(*c))) == NULL)
			return NULL;
		c->fd = -1;
		if (smfi_setpriv(ctx, c) != MI_SUCCESS) {
			free(c);
			return NULL;
		}
	}
	if ((quickack_on || nodelay_on) && !c->looked) {
		find_socket(ctx, c);
		if (nodelay_on && c->fd >= 0)
			(void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (quickack_on && c->fd >= 0)
		(void)setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	return c;
}

static sfsistat
reply(SMFICTX *ctx, unsigned long nr)
{
	struct nconn *c = conn(ctx);

	return c != NULL && (c->proto & nr) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat
cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
    unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct nconn *c = conn(ctx);

	(void)f2;
	(void)f3;
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	c->proto = f1 & NULL_PROTO;
	if (c->proto & SMFIP_NR_BODY)
		c->proto &= ~(unsigned long)SMFIP_SKIP;
	*pf0 = f0 & NULL_ACTIONS;
	*pf1 = c->proto;
	*pf2 = 0;
	*pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	(void)argv;
	return reply(ctx, SMFIP_NR_MAIL);
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	(void)name;
	(void)value;
	return reply(ctx, SMFIP_NR_HDR);
}

static sfsistat
cb_eoh(SMFICTX *ctx)
{
	return reply(ctx, SMFIP_NR_EOH);
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	(void)chunk;
	(void)len;
	return reply(ctx, SMFIP_NR_BODY);
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	static char name[] = "X-Null-Milter", value[] = " seen";

	(void)conn(ctx);
	if (addheader_on && smfi_addheader(ctx, name, value) != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_CONTINUE;
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	(void)conn(ctx);
	return SMFIS_CONTINUE;
}

static sfsistat
cb_close(SMFICTX *ctx)
{
	struct nconn *c = smfi_getpriv(ctx);

	if (c != NULL) {
		smfi_setpriv(ctx, NULL);
		free(c);
	}
	return SMFIS_CONTINUE;
}

static struct smfiDesc null_milter = {
	.xxfi_name = "nullmilter",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = NULL_ACTIONS,
	.xxfi_envfrom = cb_envfrom,
	.xxfi_header = cb_header,
	.xxfi_eoh = cb_eoh,
	.xxfi_body = cb_body,
	.xxfi_eom = cb_eom,
	.xxfi_abort = cb_abort,
	.xxfi_close = cb_close,
	.xxfi_negotiate = cb_negotiate,
};

int
main(int argc, char **argv)
{
	int c;

	while ((c = getopt(argc, argv, "Hnq")) != -1) {
		switch (c) {
		case 'H':
			addheader_on = 1;
			break;
		case 'n':
			nodelay_on = 1;
			break;
		case 'q':
			quickack_on = 1;
			break;
		default:
			optind = argc;  /* usage */
			break;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "usage: nullmilter [-q] [-n] [-H] unix:PATH|inet:PORT@HOST\n");
		return 2;
	}
	if (smfi_register(null_milter) != MI_SUCCESS || smfi_setconn(argv[optind]) != MI_SUCCESS ||
	    smfi_opensocket(1) != MI_SUCCESS) {
		fprintf(stderr, "nullmilter: cannot listen on %s\n", argv[optind]);
		return 1;
	}
	/* The MTA (Postfix's cleanup runs as postfix) must reach a unix socket. */
	if (strncmp(argv[optind], "unix:", 5) == 0)
		(void)chmod(argv[optind] + 5, 0666);
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
