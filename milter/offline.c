/*
 * offline.c - `kmsd -t`: check message files with the milter's own code.
 *
 *   kmsd -t [-c FILE] [--trust PEM]... [--intermediates PEM]... [--crl FILE]... [--fetch] [--out DIR]
 *           MESSAGE...
 *
 * Entry point: mlt_offline_main (returns the exit status).
 *
 * Trust anchors are the --trust files when given, else [milter]
 * trust_file, trust_dir, the system store (use_system_store) and our CA
 * certificate from the store (when the state directory has one);
 * intermediates come from --intermediates, else [milter]
 * intermediates_file, and from the messages' own chains.  Revocation comes
 * from our store and the --crl files (PEM or DER), each validated as RFC
 * 5280 6.3 says against a trusted certificate of its issuer (an anchor, an
 * intermediate with a path to one, or a CA of a trusted chain in a
 * message, which is when a CRL whose issuer was unknown at start gets
 * used).  A bad --crl file is reported on stderr and ignored.  With
 * --fetch, the distribution points of chain certificates whose status is
 * unknown are fetched (http, bounded by [crl] fetch_timeout and
 * fetch_max_size).  Each file
 * is read as SMTP would carry it (bare LF made CRLF), checked with
 * mlt_check_message, planned with mlt_rewrite_plan, and reported as
 *
 *   FILE: smime=<result> (<verdict>: <detail>)
 *
 * followed by the header fields the milter would add or change (the new
 * value), one per line, folds shown as they would be written.  With
 * --out, each message is also written to DIR under its own file name as
 * the MTA would pass it on (header edits applied, the new body if any;
 * CRLF line ends).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "milter/milter.h"

/* A CRL that passed ca_crl_validate(), kept for every rebuild of the index. */
struct loaded {
	X509_CRL *crl;
	struct ca_crl_meta m;
	char *name;                     /* file or URL, for messages */
};

/* A --crl file whose issuer no trusted certificate has shown yet. */
struct pending {
	X509_CRL *crl;
	char *name;
};

struct offline {
	struct kms_config *cfg;
	struct kms_store *st;
	X509_STORE *trust;
	unsigned long trust_gen;        /* trust is set before the first message and never changes */
	STACK_OF(X509) *anchors;        /* the same certificates, for CRL issuers */
	STACK_OF(X509) *inter;          /* --intermediates and [milter] intermediates_file */
	X509 *ca_cert;                  /* our CA from the store, NULL if none */
	struct ca_revidx *rev;
	const char *outdir;             /* --out, or NULL */
	const struct ca_revidx *ctx_rev;        /* the index the message being checked started with */
	struct loaded *crls;
	size_t ncrls;
	struct pending *pend;
	size_t npend;
	int fetch;                      /* --fetch: distribution points of the certificates seen */
	char **tried;                   /* URLs fetched already (NULL-terminated) */
	size_t ntried;
};

static void
usage(FILE *fp)
{
	fprintf(fp, "usage: kmsd -t [-c FILE] [--trust PEM]... [--intermediates PEM]... [--crl FILE]... [--fetch] "
	    "[--out DIR] MESSAGE...\n");
}

static int
add_anchor(struct offline *o, X509 *x)
{
	if (!X509_STORE_add_cert(o->trust, x)) {
		/* The same certificate twice is fine. */
		unsigned long e = ERR_peek_last_error();

		if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
			return kms_fail_openssl(KMS_ERR_CRYPTO, "cannot add a trust anchor");
		ERR_clear_error();
	}
	if (!sk_X509_push(o->anchors, x))
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	X509_up_ref(x);
	return 0;
}

static int
load_anchors(struct offline *o, const char *path)
{
	STACK_OF(X509) *certs = NULL;
	int rc;

	if ((rc = ca_crl_load_cas(path, &certs)) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", kms_last_error());
		return kms_fail(rc, "%s: %s", path, why);
	}
	for (int i = 0; rc == 0 && i < sk_X509_num(certs); i++)
		rc = add_anchor(o, sk_X509_value(certs, i));
	sk_X509_pop_free(certs, X509_free);
	return rc;
}

/* Our store, if the state directory has one (read-only). */
static void
open_store(struct offline *o)
{
	char *path = kms_path_join(o->cfg->kmsd.state_dir, KMS_STORE_FILE);

	if (path != NULL && access(path, R_OK) == 0 && kms_store_open(path, KMS_STORE_READONLY, &o->st) != 0) {
		fprintf(stderr, "kmsd: note: cannot open the store %s: %s\n", path, kms_last_error());
		o->st = NULL;
	}
	free(path);
}

/* Build the index again from the store and every loaded CRL (each with its newest fitting delta). */
static int
rebuild(struct offline *o)
{
	struct ca_revidx_builder *b = NULL;
	struct ca_revidx *idx = NULL;
	time_t now = time(NULL);
	int rc;

	if ((rc = ca_revidx_builder_new(&b)) != 0)
		return rc;
	if (o->st != NULL && o->ca_cert != NULL && ca_revidx_add_store(b, o->st, o->ca_cert) != 0)
		fprintf(stderr, "kmsd: note: revocations from the store not loaded: %s\n", kms_last_error());
	for (size_t i = 0; i < o->ncrls; i++) {
		struct loaded *base = &o->crls[i], *delta = NULL;

		if (base->m.delta)
			continue;
		for (size_t j = 0; j < o->ncrls; j++) {
			struct loaded *d = &o->crls[j];

			if (d->m.delta && d->m.base <= base->m.number &&
			    X509_NAME_cmp(X509_CRL_get_issuer(d->crl), X509_CRL_get_issuer(base->crl)) == 0 &&
			    (delta == NULL || d->m.number > delta->m.number))
				delta = d;
		}
		rc = ca_revidx_add_valid(b, base->crl, &base->m, delta ? delta->crl : NULL, delta ? &delta->m : NULL, now);
		if (rc != 0 && delta != NULL) {
			fprintf(stderr, "kmsd: %s: delta %s not used: %s\n", base->name, delta->name, kms_last_error());
			rc = ca_revidx_add_valid(b, base->crl, &base->m, NULL, NULL, now);
		}
		if (rc != 0) {
			fprintf(stderr, "kmsd: %s: not used: %s\n", base->name, kms_last_error());
			if (rc == KMS_ERR_NOMEM)
				goto out;
		}
	}
	if ((rc = ca_revidx_build(b, &idx)) != 0)
		goto out;
	ca_revidx_unref(o->rev);
	o->rev = idx;
out:
	ca_revidx_builder_free(b);
	return rc;
}

/*
 * Validate crl (taken) against the anchors and the intermediates (plus
 * extra, a trusted chain from a message) and keep it.  0 kept (also when
 * expired, said on stderr), KMS_ERR_NOTFOUND when no trusted certificate
 * of its issuer is known (crl given back in *back), another error when it
 * is unusable (said on stderr, dropped).
 */
static int
take_crl(struct offline *o, X509_CRL *crl, const char *name, STACK_OF(X509) *extra, X509_CRL **back)
{
	STACK_OF(X509) *inter = NULL;
	struct ca_crl_meta m;
	struct loaded *nl;
	X509 *signer = NULL;
	int rc;

	*back = NULL;
	if ((inter = sk_X509_dup(o->inter)) == NULL) {
		X509_CRL_free(crl);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	for (int i = 0; extra != NULL && i < sk_X509_num(extra); i++)
		sk_X509_push(inter, sk_X509_value(extra, i));
	rc = ca_crl_validate_chain(crl, o->trust, inter, time(NULL), &signer, &m);
	sk_X509_free(inter);
	if (rc == KMS_ERR_NOTFOUND) {
		*back = crl;
		return rc;
	}
	if (rc != 0 && rc != KMS_ERR_EXPIRED) {
		fprintf(stderr, "kmsd: %s: CRL ignored: %s\n", name, kms_last_error());
		X509_CRL_free(crl);
		return rc;
	}
	if (rc == KMS_ERR_EXPIRED) {
		char t[32];

		fprintf(stderr, "kmsd: %s: CRL expired on %s: its entries count, other certificates of its issuer "
		    "have an unknown status\n", name, kms_time_format(m.next_update, t, sizeof(t)));
	}
	if ((nl = realloc(o->crls, (o->ncrls + 1) * sizeof(*nl))) == NULL) {
		ca_crl_meta_clear(&m);
		X509_CRL_free(crl);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	o->crls = nl;
	nl[o->ncrls].crl = crl;
	nl[o->ncrls].m = m;
	if ((nl[o->ncrls].name = strdup(name)) == NULL) {
		ca_crl_meta_clear(&m);
		X509_CRL_free(crl);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	o->ncrls++;
	return 0;
}

/* A --crl file: kept, pending its issuer, or reported on stderr and ignored (the run goes on). */
static int
load_crl(struct offline *o, const char *path)
{
	unsigned char *buf = NULL;
	size_t len = 0;
	X509_CRL *crl = NULL, *back = NULL;
	struct pending *np;
	int rc;

	if ((rc = kms_read_file(path, 512u * 1024 * 1024, &buf, &len)) != 0) {
		fprintf(stderr, "kmsd: --crl %s: ignored: %s\n", path, kms_last_error());
		return rc == KMS_ERR_NOMEM ? rc : 0;
	}
	rc = ca_crl_parse(buf, len, &crl);
	free(buf);
	if (rc != 0) {
		fprintf(stderr, "kmsd: --crl %s: ignored: not a CRL (PEM or DER)\n", path);
		return 0;
	}
	rc = take_crl(o, crl, path, NULL, &back);
	if (rc == KMS_ERR_NOMEM)
		return rc;
	if (rc != KMS_ERR_NOTFOUND)
		return 0;
	{
		char name[256];

		X509_NAME_oneline(X509_CRL_get_issuer(back), name, sizeof(name));
		fprintf(stderr, "kmsd: --crl %s: no trusted certificate of its issuer %s yet; used once a message "
		    "shows a trusted chain to it\n", path, name);
	}
	if ((np = realloc(o->pend, (o->npend + 1) * sizeof(*np))) == NULL || (np[o->npend].name = strdup(path)) == NULL) {
		if (np != NULL)
			o->pend = np;
		X509_CRL_free(back);
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	}
	o->pend = np;
	np[o->npend++].crl = back;
	return 0;
}

static int
tried_url(struct offline *o, const char *url)
{
	char **nv;

	for (size_t i = 0; i < o->ntried; i++)
		if (strcmp(o->tried[i], url) == 0)
			return 1;
	if ((nv = realloc(o->tried, (o->ntried + 2) * sizeof(*nv))) == NULL)
		return 1;
	o->tried = nv;
	if ((nv[o->ntried] = strdup(url)) == NULL)
		return 1;
	nv[++o->ntried] = NULL;
	return 0;
}

/*
 * The milter found a certificate of a trusted chain whose status is
 * unknown: try the pending --crl files against the chain's CAs, and with
 * --fetch the certificate's distribution points.  A newer index, or NULL.
 */
static struct ca_revidx *
rev_unknown(void *arg, STACK_OF(X509) *chain, int depth, time_t *since)
{
	struct offline *o = arg;
	X509 *c = sk_X509_value(chain, depth);
	char **urls = NULL;
	int added = 0;

	*since = 0;
	for (size_t i = 0; i < o->npend; i++) {
		X509_CRL *back = NULL;
		int rc;

		if (o->pend[i].crl == NULL)
			continue;
		rc = take_crl(o, o->pend[i].crl, o->pend[i].name, chain, &back);
		o->pend[i].crl = back;
		if (rc == 0)
			added = 1;
	}
	if (o->fetch && ca_cert_crl_urls(c, 1, &urls) == 0) {
		for (size_t i = 0; urls != NULL && urls[i] != NULL; i++) {
			X509_CRL *crl = NULL, *back = NULL;
			int rc;

			if (tried_url(o, urls[i]))
				continue;
			rc = ca_crl_fetch(urls[i], (int)o->cfg->crl.fetch_timeout, -1, (size_t)o->cfg->crl.fetch_max_size,
			    NULL, &crl, NULL, NULL);
			if (rc == 0 && crl == NULL)
				rc = kms_fail(KMS_ERR_PROTO, "%s: no CRL in the answer", urls[i]);
			if (rc != 0) {
				fprintf(stderr, "kmsd: fetch: %s\n", kms_last_error());
				continue;
			}
			rc = take_crl(o, crl, urls[i], chain, &back);
			if (rc == KMS_ERR_NOTFOUND) {
				fprintf(stderr, "kmsd: %s: CRL ignored: %s\n", urls[i], kms_last_error());
				X509_CRL_free(back);
			} else if (rc == 0) {
				added = 1;
			}
		}
	}
	kms_strv_free(urls);
	kms_clear_error();
	if (added && rebuild(o) != 0)
		return NULL;
	/* A later signature of the same message also gets what an earlier one loaded. */
	return o->rev != o->ctx_rev ? ca_revidx_ref(o->rev) : NULL;
}

static int
find_cert_store(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial, const ASN1_OCTET_STRING *skid,
    X509 **out)
{
	struct offline *o = arg;

	*out = NULL;
	if (o->st == NULL)
		return KMS_ERR_NOTFOUND;
	return ca_store_find_cert(o->st, issuer, serial, skid, out);
}

/* Write msg as rewritten by rw to dir, under the base name of path. */
static int
write_out(const char *dir, const char *path, const unsigned char *msg, size_t len, const struct mlt_rewrite *rw)
{
	const char *base = strrchr(path, '/');
	unsigned char *out = NULL;
	size_t outlen = 0;
	char *dest;
	int rc;

	base = base ? base + 1 : path;
	if ((dest = kms_path_join(dir, base)) == NULL)
		return kms_fail(KMS_ERR_NOMEM, "out of memory");
	if ((rc = mlt_rewrite_apply(msg, len, rw, &out, &outlen)) == 0)
		rc = kms_write_file_atomic(dest, out, outlen, 0644);
	free(out);
	free(dest);
	return rc;
}

/* Print one file's line and the fields it would get.  0, or an error reading it. */
static int
check_file(struct offline *o, const char *path)
{
	struct mlt_check_ctx ctx;
	struct mlt_result *res = NULL;
	struct mlt_rewrite *rw = NULL;
	unsigned char *raw = NULL, *msg = NULL;
	size_t rawlen = 0, len = 0, max = (size_t)o->cfg->milter.max_message_size;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	ctx.trust = o->trust;
	ctx.inter = o->inter;
	ctx.trust_gen = o->trust_gen;
	ctx.rev = o->ctx_rev = ca_revidx_ref(o->rev);
	ctx.rev_unknown = rev_unknown;
	ctx.rev_unknown_arg = o;
	ctx.find_cert = find_cert_store;
	ctx.find_cert_arg = o;
	ctx.authserv_id = o->cfg->kmsd.authserv_id;
	mlt_limits_from_config(o->cfg, &ctx.limits);

	rc = kms_read_file(path, max, &raw, &rawlen);
	if (rc == KMS_ERR_TOOBIG) {
		char why[160];

		snprintf(why, sizeof(why), "message is over [milter] max_message_size (%zu): not checked", max);
		rc = mlt_result_error(ctx.authserv_id, why, &res);
	} else if (rc == 0 && (rc = mlt_canon_crlf(raw, rawlen, &msg, &len)) == 0) {
		rc = mlt_check_message(&ctx, msg, len, &res);
	} else if (rc != 0) {
		fprintf(stderr, "%s: cannot read: %s\n", path, kms_last_error());
		goto out;
	}
	if (rc != 0) {
		printf("%s: smime=temperror (error: internal error: %s)\n", path, kms_last_error());
		rc = 0;
		goto out;
	}
	printf("%s: smime=%s (%s: %s)\n", path, pol_verdict_ar_result(res->verdict), pol_verdict_name(res->verdict),
	    res->detail ? res->detail : "");
	if (mlt_rewrite_plan(o->cfg, ctx.authserv_id, res, msg, len, &rw) == 0) {
		/* In the order they stand in the header: insertions at the top (the last one first), then the rest. */
		for (size_t i = rw->nedits; i-- > 0;)
			if (rw->edits[i].op == MLT_HDR_INSERT)
				printf("%s: %s\n", rw->edits[i].name, rw->edits[i].value);
		for (size_t i = 0; i < rw->nedits; i++) {
			const struct mlt_hdr_edit *e = &rw->edits[i];

			if ((e->op == MLT_HDR_ADD || e->op == MLT_HDR_CHANGE) && strncasecmp(e->name, "Content-", 8) != 0 &&
			    strcasecmp(e->name, "MIME-Version") != 0)
				printf("%s: %s\n", e->name, e->value);
		}
		if (rw->action != KMS_ACT_ACCEPT)
			printf("  (policy: %s)\n", kms_action_name(rw->action));
		if (o->outdir != NULL && (rc = write_out(o->outdir, path, msg, len, rw)) != 0) {
			fprintf(stderr, "%s: %s\n", path, kms_last_error());
			goto out;
		}
	}
out:
	ca_revidx_unref((struct ca_revidx *)ctx.rev);
	o->ctx_rev = NULL;
	mlt_rewrite_free(rw);
	mlt_result_free(res);
	free(raw);
	free(msg);
	fflush(stdout);
	return rc;
}

/*
 * Trust anchors (the --trust files, else [milter] trust_file, trust_dir,
 * the system store and our CA from the store) and intermediates.  Says
 * what failed on stderr: 0, or -1.
 */
static int
setup_trust(struct offline *o, char **trust, size_t ntrust, char **inter, size_t ninter)
{
	open_store(o);
	if (o->st != NULL) {
		struct ca *ca = NULL;

		if (ca_store_load(o->st, o->cfg->ca.name, NULL, &ca) == 0) {
			X509_up_ref(ca->cert);
			o->ca_cert = ca->cert;
			ca_free(ca);
		}
		kms_clear_error();
	}
	if (ntrust > 0) {
		for (size_t i = 0; i < ntrust; i++) {
			if (load_anchors(o, trust[i]) != 0) {
				fprintf(stderr, "kmsd: %s\n", kms_last_error());
				return -1;
			}
		}
	} else {
		const struct kms_config *cfg = o->cfg;

		if (cfg->milter.trust_file[0] != '\0' && load_anchors(o, cfg->milter.trust_file) != 0) {
			fprintf(stderr, "kmsd: [milter] trust_file: %s\n", kms_last_error());
			return -1;
		}
		if (cfg->milter.trust_dir[0] != '\0' && ca_trust_add_dir(o->trust, cfg->milter.trust_dir, NULL) != 0) {
			fprintf(stderr, "kmsd: [milter] trust_dir: %s\n", kms_last_error());
			return -1;
		}
		if (cfg->milter.use_system_store && ca_trust_add_system(o->trust) != 0) {
			fprintf(stderr, "kmsd: [milter] use_system_store: %s\n", kms_last_error());
			return -1;
		}
		if (o->ca_cert != NULL && add_anchor(o, o->ca_cert) != 0) {
			fprintf(stderr, "kmsd: %s\n", kms_last_error());
			return -1;
		}
	}
	if (sk_X509_num(o->anchors) == 0 && o->cfg->milter.trust_dir[0] == '\0' && !o->cfg->milter.use_system_store)
		fprintf(stderr, "kmsd: note: no trust anchors (no --trust, no [milter] trust_file, no CA in the store)\n");
	o->trust_gen = mlt_generation_next();
	if (ninter == 0 && o->cfg->milter.intermediates_file[0] != '\0')
		inter[ninter++] = o->cfg->milter.intermediates_file;
	for (size_t i = 0; i < ninter; i++) {
		if (ca_certs_load_file(inter[i], o->inter, NULL) != 0) {
			fprintf(stderr, "kmsd: intermediates %s: %s\n", inter[i], kms_last_error());
			return -1;
		}
	}
	return 0;
}

/* Everything a run of kmsd -t holds. */
static void
offline_free(struct offline *o)
{
	ca_revidx_unref(o->rev);
	for (size_t i = 0; i < o->ncrls; i++) {
		X509_CRL_free(o->crls[i].crl);
		ca_crl_meta_clear(&o->crls[i].m);
		free(o->crls[i].name);
	}
	free(o->crls);
	for (size_t i = 0; i < o->npend; i++) {
		X509_CRL_free(o->pend[i].crl);
		free(o->pend[i].name);
	}
	free(o->pend);
	kms_strv_free(o->tried);
	X509_free(o->ca_cert);
	sk_X509_pop_free(o->anchors, X509_free);
	sk_X509_pop_free(o->inter, X509_free);
	X509_STORE_free(o->trust);
	if (o->st != NULL)
		kms_store_close(o->st);
	if (o->cfg != NULL)
		kms_config_unref(o->cfg);
}

int
mlt_offline_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "trust", required_argument, NULL, 'T' },
		{ "intermediates", required_argument, NULL, 'I' },
		{ "crl", required_argument, NULL, 'C' },
		{ "out", required_argument, NULL, 'O' },
		{ "fetch", no_argument, NULL, 'F' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct offline o;
	const char *config_path = NULL;
	char **trust = NULL, **crls = NULL, **inter = NULL;
	size_t ntrust = 0, ncrl = 0, ninter = 0;
	int c, status = 2, unreadable = 0;

	memset(&o, 0, sizeof(o));
	mlt_smime_init();
	if ((trust = calloc((size_t)argc + 1, sizeof(*trust))) == NULL ||
	    (crls = calloc((size_t)argc + 1, sizeof(*crls))) == NULL ||
	    (inter = calloc((size_t)argc + 1, sizeof(*inter))) == NULL) {
		fprintf(stderr, "kmsd: out of memory\n");
		goto out;
	}
	optind = 1;
	while ((c = getopt_long(argc, argv, "tc:h", longopts, NULL)) != -1) {
		switch (c) {
		case 't': break;
		case 'c': config_path = optarg; break;
		case 'T': trust[ntrust++] = optarg; break;
		case 'I': inter[ninter++] = optarg; break;
		case 'C': crls[ncrl++] = optarg; break;
		case 'O': o.outdir = optarg; break;
		case 'F': o.fetch = 1; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); goto out;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		goto out;
	}
	if (kms_config_load(config_path, &o.cfg) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		goto out;
	}
	if ((o.trust = X509_STORE_new()) == NULL || (o.anchors = sk_X509_new_null()) == NULL ||
	    (o.inter = sk_X509_new_null()) == NULL) {
		fprintf(stderr, "kmsd: out of memory\n");
		goto out;
	}
	if (setup_trust(&o, trust, ntrust, inter, ninter) != 0)
		goto out;
	/* A bad CRL is said on stderr and left out; the run goes on. */
	for (size_t i = 0; i < ncrl; i++) {
		if (load_crl(&o, crls[i]) != 0) {
			fprintf(stderr, "kmsd: %s\n", kms_last_error());
			goto out;
		}
	}
	if (rebuild(&o) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		goto out;
	}
	for (int i = optind; i < argc; i++)
		if (check_file(&o, argv[i]) != 0)
			unreadable = 1;
	status = unreadable ? 1 : 0;
out:
	offline_free(&o);
	free(trust);
	free(crls);
	free(inter);
	ERR_clear_error();
	return status;
}
