/*
 * ctl_recover.c - kmsctl recover request/approve/list/close/fetch, escrow
 * rotate, and offline recovery (recover --offline) straight from the
 * database and the share files, for when kmsd is down.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "archive/archive.h"
#include "ca/ca.h"
#include "ctl/ctl.h"

#define MAX_SHARE_FILE (64 * 1024)

/* Ask for a passphrase on the terminal without echo; NULL when there is none. */
static char *
prompt_secret(const char *prompt)
{
	struct termios old, quiet;
	char buf[1024];
	FILE *tty = fopen("/dev/tty", "r+");
	char *s = NULL;

	if (tty == NULL)
		return NULL;
	fputs(prompt, tty);
	fflush(tty);
	if (tcgetattr(fileno(tty), &old) == 0) {
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
	}
	if (fgets(buf, sizeof(buf), tty) != NULL) {
		buf[strcspn(buf, "\r\n")] = '\0';
		s = strdup(buf);
	}
	tcsetattr(fileno(tty), TCSAFLUSH, &old);
	fputc('\n', tty);
	fclose(tty);
	kms_wipe(buf, sizeof(buf));
	return s;
}

/* Read a share file, and its passphrase when it is encrypted. */
static int
read_share(const char *path, const char *pass_file, char **text, char **pass, struct esc_share_meta *meta)
{
	unsigned char *data = NULL;
	size_t len = 0;

	*text = NULL;
	*pass = NULL;
	if (kms_read_file(path, MAX_SHARE_FILE, &data, &len) != 0)
		return ctl_fail(CTL_ERR_USAGE, "cannot read the share file");
	if (esc_share_peek((char *)data, len, meta) != 0) {
		kms_wipe(data, len);
		free(data);
		fprintf(stderr, "kmsctl: %s is not a recovery share file: %s\n", path, kms_last_error());
		return CTL_ERR_USAGE;
	}
	if (meta->encrypted) {
		if (pass_file) {
			if (kms_read_secret_file(pass_file, pass) != 0) {
				kms_wipe(data, len);
				free(data);
				return ctl_fail(CTL_ERR_USAGE, "cannot read the passphrase file");
			}
		} else {
			char prompt[CTL_PROMPT_MAX];

			snprintf(prompt, sizeof(prompt), "Passphrase for share %d (%s): ", meta->index, path);
			*pass = prompt_secret(prompt);
			if (*pass == NULL) {
				kms_wipe(data, len);
				free(data);
				fprintf(stderr, "kmsctl: %s is encrypted: give --passphrase-file or run on a terminal\n", path);
				return CTL_ERR_USAGE;
			}
		}
	}
	*text = (char *)data;
	return 0;
}

static void
print_request(json_t *r)
{
	printf("Request %s opened (%s of %s), expires %s.\n", ctl_str(r, "id"), ctl_str(r, "purpose"),
	    ctl_str(r, "email")[0] ? ctl_str(r, "email") : "the key-recovery key", ctl_str(r, "expires"));
	printf("It needs %lld officers to run: kmsctl recover approve %s --share FILE\n",
	    (long long)json_integer_value(json_object_get(r, "threshold")), ctl_str(r, "id"));
}

static int
recover_request(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "why", required_argument, NULL, 'w' },
		{ "purpose", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	const char *why = NULL, *purpose = "key";
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'w': why = optarg; break;
		case 'p': purpose = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1 || why == NULL)
		return ctl_usage_error("recover request: give one address and --why TEXT");
	if (strcmp(purpose, "key") != 0 && strcmp(purpose, "archive") != 0)
		return ctl_usage_error("recover request: --purpose is key or archive");
	return ctl_run(ctl, "recover.request", json_pack("{s:s,s:s,s:s}", "email", argv[optind], "why", why,
	    "purpose", purpose), print_request);
}

static void
print_approve(json_t *r)
{
	if (strcmp(ctl_str(r, "state"), "open") == 0)
		printf("Share accepted for %s: %lld of %lld approvals.\n", ctl_str(r, "id"),
		    (long long)json_integer_value(json_object_get(r, "approvals")),
		    (long long)json_integer_value(json_object_get(r, "threshold")));
	else
		printf("Share accepted for %s: threshold reached, request %s.\n  %s\n", ctl_str(r, "id"),
		    ctl_str(r, "state"), ctl_str(r, "summary"));
}

static int
recover_approve(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "share", required_argument, NULL, 's' },
		{ "passphrase-file", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	const char *share = NULL, *pfile = NULL;
	char *text = NULL, *pass = NULL;
	struct esc_share_meta meta;
	json_t *args;
	int c, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's': share = optarg; break;
		case 'p': pfile = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1 || share == NULL)
		return ctl_usage_error("recover approve: give the request id and --share FILE");
	if ((rc = read_share(share, pfile, &text, &pass, &meta)) != 0)
		return rc;
	args = json_pack("{s:s,s:s}", "id", argv[optind], "share", text);
	if (pass)
		json_object_set_new(args, "passphrase", json_string(pass));
	kms_wipe(text, strlen(text));
	free(text);
	kms_secret_free(pass);
	return ctl_run(ctl, "recover.approve", args, print_approve);
}

static void
print_list(json_t *r)
{
	json_t *q;
	size_t i;

	if (json_array_size(json_object_get(r, "requests")) == 0) {
		printf("no recovery requests\n");
		return;
	}
	json_array_foreach(json_object_get(r, "requests"), i, q) {
		printf("%s  %-8s %-9s %s  by %s, %lld/%lld approvals%s%s, expires %s\n", ctl_str(q, "id"),
		    ctl_str(q, "purpose"), ctl_str(q, "state"), ctl_str(q, "email")[0] ? ctl_str(q, "email") : "(KRK)",
		    ctl_str(q, "requester"), (long long)json_integer_value(json_object_get(q, "approvals")),
		    (long long)json_integer_value(json_object_get(q, "threshold")),
		    ctl_str(q, "officers")[0] ? " from " : "", ctl_str(q, "officers"), ctl_str(q, "expires"));
		printf("    why: %s\n", ctl_str(q, "why"));
		/* What an officer's approval does, before they give their share. */
		if (strcmp(ctl_str(q, "purpose"), "rotate") == 0)
			printf("    approving replaces the key-recovery key; the new shares are written to %s%s%s%s\n",
			    ctl_str(q, "share_dir"), ctl_str(q, "share_passphrase_dir")[0] ? " (encrypted under the "
			    "passphrases in " : "", ctl_str(q, "share_passphrase_dir"),
			    ctl_str(q, "share_passphrase_dir")[0] ? ")" : "");
		else if (strcmp(ctl_str(q, "purpose"), "archive") == 0)
			printf("    approving lets %s decrypt the archived mail of %s\n", ctl_str(q, "requester"),
			    ctl_str(q, "email"));
		else
			printf("    approving hands the escrowed keys of %s to %s\n", ctl_str(q, "email"),
			    ctl_str(q, "requester"));
		if (ctl_str(q, "detail")[0])
			printf("    %s\n", ctl_str(q, "detail"));
	}
}

static void
print_closed(json_t *r)
{
	printf("Request %s closed; any recovered keys were wiped from kmsd's memory.\n", ctl_str(r, "id"));
}

static int
recover_fetch(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "password-file", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = NULL, *pfile = NULL;
	char *password = NULL;
	json_t *args, *reply, *r;
	int c, fd, human, rc, written;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 'p': pfile = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1 || out == NULL)
		return ctl_usage_error("recover fetch: give the request id and --out FILE.p12");
	if (pfile && ctl_read_password_file(pfile, &password) != 0)
		return CTL_ERR_USAGE;
	if ((fd = ctl_reserve_output(out, 0600)) < 0) {
		kms_secret_free(password);
		return CTL_ERR_USAGE;
	}
	args = json_pack("{s:s}", "id", argv[optind]);
	if (password)
		json_object_set_new(args, "password", json_string(password));
	kms_secret_free(password);
	reply = ctl_call_p12(ctl, "recover.fetch", args, fd, out, &written);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	r = json_object_get(reply, "result");
	if (json_is_true(json_object_get(reply, "ok")) && !written) {
			fprintf(stderr, "kmsctl: the recovered file could not be written, and kmsd gives it only once: "
			    "open a new request\n");
		rc = CTL_ERR_REPLY;
		goto out;
	}
	rc = ctl_finish(ctl, reply, &human);
	if (human) {
		printf("Recovered %lld encryption key(s) of %s into %s\n",
		    (long long)json_integer_value(json_object_get(r, "keys")), ctl_str(r, "email"), out);
		if (json_object_get(r, "password"))
			printf("Password: %s\n  (shown once)\n", ctl_str(r, "password"));
	}
out:
	json_decref(reply);
	return rc;
}

/* ----------------------------------------------------------------- offline */

/* What recover --offline was asked for. */
struct offline_opts {
	const char *db, *out, *pwfile, *format, *email;
	const char *shares[ESC_MAX_SHARES], *passes[ESC_MAX_SHARES];
	size_t nshares, npass;
};

/* Parse the options: 0, or the usage exit status after saying why. */
static int
offline_parse(int argc, char **argv, struct offline_opts *o)
{
	static const struct option opts[] = {
		{ "offline", no_argument, NULL, 'O' },
		{ "db", required_argument, NULL, 'd' },
		{ "share", required_argument, NULL, 's' },
		{ "passphrase-file", required_argument, NULL, 'p' },
		{ "out", required_argument, NULL, 'o' },
		{ "password-file", required_argument, NULL, 'w' },
		{ "format", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'O': break;
		case 'd': o->db = optarg; break;
		case 's':
			if (o->nshares == ESC_MAX_SHARES)
				return ctl_usage_error("recover --offline: too many shares");
			o->shares[o->nshares++] = optarg;
			break;
		case 'p':
			if (o->npass == ESC_MAX_SHARES)
				return ctl_usage_error("recover --offline: too many passphrase files");
			o->passes[o->npass++] = optarg;
			break;
		case 'o': o->out = optarg; break;
		case 'w': o->pwfile = optarg; break;
		case 'f': o->format = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1 || o->db == NULL || o->out == NULL || o->nshares == 0)
		return ctl_usage_error("recover --offline: give --db FILE, one --share per share, EMAIL and --out FILE");
	if (o->npass != 0 && o->npass != o->nshares)
		return ctl_usage_error("recover --offline: give one --passphrase-file per --share, in the same order, or none");
	o->email = argv[optind];
	return 0;
}

/* Read and check share i: it decodes, belongs to krk, matches what init recorded, is not given twice. */
static int
offline_share(struct kms_store *st, const struct esc_krk *krk, const struct offline_opts *o, size_t i,
    struct esc_share *shares)
{
	struct esc_share_meta meta;
	char *text = NULL, *pass = NULL, *digest;
	int rc;

	if ((rc = read_share(o->shares[i], o->npass ? o->passes[i] : NULL, &text, &pass, &meta)) != 0)
		return rc;
	rc = esc_share_decode(text, strlen(text), pass, &shares[i], &meta);
	kms_secret_free(text);
	kms_secret_free(pass);
	if (rc != 0) {
		fprintf(stderr, "kmsctl: %s: %s\n", o->shares[i], kms_last_error());
		return CTL_ERR_REPLY;
	}
	if (strcmp(meta.krk_fingerprint, krk->fingerprint) != 0) {
		fprintf(stderr, "kmsctl: %s belongs to another key-recovery key\n", o->shares[i]);
		return CTL_ERR_REPLY;
	}
	digest = esc_share_digest(&shares[i]);
	rc = digest ? esc_store_check_share(st, krk->id, shares[i].index, digest) : KMS_ERR_NOMEM;
	free(digest);
	if (rc != 0) {
		fprintf(stderr, "kmsctl: %s does not match the share made for this key-recovery key\n", o->shares[i]);
		return CTL_ERR_REPLY;
	}
	for (size_t j = 0; j < i; j++) {
		if (shares[j].index == shares[i].index) {
			fprintf(stderr, "kmsctl: share %d given twice\n", shares[i].index);
			return CTL_ERR_USAGE;
		}
	}
	return 0;
}

/* Pack rec under the password (or a generated one, printed once) and write it to o->out. */
static int
offline_write(struct kms_store *st, const struct kms_config *cfg, const struct offline_opts *o,
    const struct esc_recovered *rec)
{
	enum ca_p12_format fmt;
	char genpw[CTL_GENERATED_PASSWORD] = "", *password = NULL;
	unsigned char *p12 = NULL;
	size_t p12len = 0;
	struct ca *ca = NULL;
	int fd = -1, rc = CTL_ERR_REPLY;

	if (ca_p12_format_from_name(o->format ? o->format : cfg->ca.pkcs12_format, &fmt) != 0)
		return ctl_usage_error("recover --offline: --format is modern or compat");
	if (o->pwfile && ctl_read_password_file(o->pwfile, &password) != 0)
		return CTL_ERR_USAGE;
	if (password == NULL && kms_random_password(genpw, sizeof(genpw)) != 0)
		goto out;
	if ((fd = ctl_reserve_output(o->out, 0600)) < 0) {
		rc = CTL_ERR_USAGE;
		goto out;
	}
	ca_store_load(st, NULL, NULL, &ca);
	if (esc_recovered_p12(rec, o->email, ca ? ca->cert : NULL, password ? password : genpw, fmt,
	    (int)cfg->ca.pkcs12_iterations, &p12, &p12len) != 0) {
		rc = ctl_fail(CTL_ERR_REPLY, "cannot build the PKCS#12");
		close(fd);
		unlink(o->out);
		goto out;
	}
	if (ctl_write_output(fd, o->out, p12, p12len) != 0)
		goto out;
	printf("Recovered %zu encryption key(s) of %s offline into %s\n", rec->n, o->email, o->out);
	if (password == NULL)
		printf("Password: %s\n  (shown once)\n", genpw);
	rc = CTL_OK;
out:
	ca_free(ca);
	kms_wipe(genpw, sizeof(genpw));
	kms_secret_free(password);
	if (p12 != NULL) {
		kms_wipe(p12, p12len);
		free(p12);
	}
	return rc;
}

/*
 * recover --offline: the same recovery sequence as kmsd's (esc_recover_keys),
 * straight from a copy of the store and the share files; the PKCS#12 uses
 * [ca] pkcs12_format and pkcs12_iterations of the config given with -c (or
 * the defaults).
 */
static int
offline_recover(struct ctl *ctl, int argc, char **argv)
{
	struct offline_opts o;
	struct kms_config *cfg = NULL;
	struct kms_store *st = NULL;
	struct esc_krk *krk = NULL;
	struct esc_share *shares = NULL;
	struct esc_recovered rec = { 0 };
	int rc;

	if ((rc = offline_parse(argc, argv, &o)) != 0)
		return rc;
	kms_secmem_init(CTL_SECURE_HEAP);
	kms_disable_core_dumps();
	if (kms_config_load(ctl->config, &cfg) != 0)
		return ctl_fail(CTL_ERR_USAGE, "cannot load the configuration");
	if (kms_store_open(o.db, KMS_STORE_READONLY | KMS_STORE_CHECK, &st) != 0) {
		rc = ctl_fail(CTL_ERR_USAGE, "cannot open the database");
		goto out;
	}
	if (esc_store_current_krk(st, &krk) != 0) {
		rc = ctl_fail(CTL_ERR_REPLY, "no key-recovery key in the database");
		goto out;
	}
	if (o.nshares < (size_t)krk->threshold) {
		fprintf(stderr, "kmsctl: %zu share(s) given; this key-recovery key needs %d\n", o.nshares, krk->threshold);
		rc = CTL_ERR_USAGE;
		goto out;
	}
	if ((shares = calloc(o.nshares, sizeof(*shares))) == NULL) {
		rc = ctl_fail(CTL_ERR_REPLY, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < o.nshares; i++)
		if ((rc = offline_share(st, krk, &o, i, shares)) != 0)
			goto out;
	if (esc_recover_keys(st, krk, shares, o.nshares, o.email, &rec) != 0) {
		rc = ctl_fail(CTL_ERR_REPLY, "recovery failed");
		goto out;
	}
	esc_shares_free(shares, o.nshares);     /* wiped as soon as they have done their job */
	shares = NULL;
	rc = offline_write(st, cfg, &o, &rec);
out:
	esc_recovered_free(&rec);
	esc_shares_free(shares, o.nshares);
	esc_krk_free(krk);
	kms_store_close(st);
	kms_config_unref(cfg);
	return rc;
}

int
ctl_cmd_recover(struct ctl *ctl, int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "";

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--offline") == 0)
			return offline_recover(ctl, argc, argv);
	if (strcmp(sub, "request") == 0)
		return recover_request(ctl, argc - 1, argv + 1);
	if (strcmp(sub, "approve") == 0)
		return recover_approve(ctl, argc - 1, argv + 1);
	if (strcmp(sub, "fetch") == 0)
		return recover_fetch(ctl, argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0) {
		int all = argc == 3 && strcmp(argv[2], "--all") == 0;

		if (argc > 2 && !all)
			return ctl_usage_error("recover list: unexpected argument");
		return ctl_run(ctl, "recover.list", json_pack("{s:b}", "all", all), print_list);
	}
	if (strcmp(sub, "close") == 0) {
		if (argc != 3)
			return ctl_usage_error("recover close: give the request id");
		return ctl_run(ctl, "recover.close", json_pack("{s:s}", "id", argv[2]), print_closed);
	}
	return ctl_usage_error("recover: use request, approve, list, close, fetch or --offline");
}

int
ctl_cmd_escrow(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "share-dir", required_argument, NULL, 'd' },
		{ "share-passphrase-dir", required_argument, NULL, 'p' },
		{ "why", required_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 },
	};
	json_t *args;
	char *dir = NULL, *pdir = NULL;
	const char *why = NULL;
	int c;

	if (argc < 2 || strcmp(argv[1], "rotate") != 0)
		return ctl_usage_error("escrow: the only subcommand is rotate");
	argc--;
	argv++;
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': free(dir); dir = ctl_abspath(optarg); break;
		case 'p': free(pdir); pdir = ctl_abspath(optarg); break;
		case 'w': why = optarg; break;
		default: free(dir); free(pdir); return CTL_ERR_USAGE;
		}
	}
	if (optind < argc) {
		free(dir);
		free(pdir);
		return ctl_usage_error("escrow rotate: unexpected argument \"%s\"", argv[optind]);
	}
	args = json_object();
	/* kmsd creates nothing outside the directory it is given: the caller makes it, as themselves. */
	if (dir && kms_mkdir_p(dir, 0700) != 0) {
		fprintf(stderr, "kmsctl: %s\n", kms_last_error());
		json_decref(args);
		free(dir);
		free(pdir);
		return CTL_ERR_USAGE;
	}
	if (dir)
		json_object_set_new(args, "share_dir", json_string(dir));
	if (pdir)
		json_object_set_new(args, "share_passphrase_dir", json_string(pdir));
	if (why)
		json_object_set_new(args, "why", json_string(why));
	free(dir);
	free(pdir);
	return ctl_run(ctl, "escrow.rotate", args, print_request);
}
