/*
 * ctl_ca.c - kmsctl status, init, enroll, issue, list and show.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "archive/archive.h"
#include "ctl/ctl.h"

static int
no_more_args(int argc, char **argv, const char *cmd)
{
	if (optind < argc)
		return ctl_usage_error("%s: unexpected argument \"%s\"", cmd, argv[optind]);
	return 0;
}

/* ------------------------------------------------------------------ status */

static void
print_status(json_t *r)
{
	json_t *ca = json_object_get(r, "ca"), *you = json_object_get(r, "you"), *krk = json_object_get(r, "krk");
	json_t *counts = json_object_get(r, "counts"), *crl = json_object_get(r, "crl"), *role;
	long long up = json_integer_value(json_object_get(r, "uptime"));
	size_t i;

	printf("kmsd %s, up %lldd %02lld:%02lld:%02lld, store schema %lld, state in %s\n", ctl_str(r, "version"),
	    up / 86400, up / 3600 % 24, up / 60 % 60, up % 60,
	    (long long)json_integer_value(json_object_get(r, "store_version")), ctl_str(r, "state_dir"));
	if (json_is_true(json_object_get(ca, "initialized"))) {
		printf("CA:        %s\n", ctl_str(ca, "subject"));
		printf("           SHA-256 %s, valid until %s%s\n", ctl_str(ca, "sha256"), ctl_str(ca, "not_after"),
		    json_is_true(json_object_get(ca, "key_loaded")) ? "" : " (key not loaded: cannot sign)");
	} else {
		printf("CA:        not initialised (kmsctl init --org NAME)\n");
	}
	if (krk)
		printf("Recovery:  key-recovery key %s\n", ctl_str(krk, "sha256"));
	if (counts)
		printf("Users:     %lld, certificates %lld (%lld revoked), escrowed keys %lld\n",
		    (long long)json_integer_value(json_object_get(counts, "users")),
		    (long long)json_integer_value(json_object_get(counts, "certificates")),
		    (long long)json_integer_value(json_object_get(counts, "revoked")),
		    (long long)json_integer_value(json_object_get(counts, "escrowed_keys")));
	if (crl)
		printf("CRL:       number %lld, next update %s, at %s\n",
		    (long long)json_integer_value(json_object_get(crl, "number")), ctl_str(crl, "next_update"),
		    ctl_str(crl, "url"));
	if (json_object_get(r, "revocation"))
		printf("Revoked:   %lld entries in the revocation index (from %s)\n",
		    (long long)json_integer_value(json_object_get(json_object_get(r, "revocation"), "entries")),
		    ctl_str(json_object_get(r, "revocation"), "source"));
	ctl_print_ldap(json_object_get(r, "ldap"));
	printf("You:       %s (uid %lld), roles:", ctl_str(you, "user"),
	    (long long)json_integer_value(json_object_get(you, "uid")));
	json_array_foreach(json_object_get(you, "roles"), i, role)
		printf("%s %s", i ? "," : "", json_string_value(role));
	printf("%s\n", json_array_size(json_object_get(you, "roles")) ? "" : " none");
}

int
ctl_cmd_status(struct ctl *ctl, int argc, char **argv)
{
	optind = 0;
	if (getopt(argc, argv, "+") != -1 || no_more_args(argc, argv, "status"))
		return CTL_ERR_USAGE;
	return ctl_run(ctl, "status", NULL, print_status);
}

/* -------------------------------------------------------------------- init */

static void
print_init(json_t *r)
{
	json_t *p;
	size_t i;

	printf("Initialised the CA: %s\n", ctl_str(r, "ca_subject"));
	printf("  CA certificate SHA-256:       %s\n", ctl_str(r, "ca_sha256"));
	printf("  key-recovery key SHA-256:     %s\n", ctl_str(r, "krk_sha256"));
	printf("  CA key passphrase file:       %s%s\n", ctl_str(r, "passphrase_file"),
	    json_is_true(json_object_get(r, "passphrase_file_created")) ? " (created; keep a backup of it offline)" : "");
	printf("Recovery shares (any %lld of %zu recover escrowed keys)%s:\n",
	    (long long)json_integer_value(json_object_get(r, "threshold")),
	    json_array_size(json_object_get(r, "shares")),
	    json_is_true(json_object_get(r, "shares_encrypted")) ? ", each under its officer's passphrase" : "");
	json_array_foreach(json_object_get(r, "shares"), i, p)
		printf("  %s\n", json_string_value(p));
	if (json_object_get(r, "warning"))
		fprintf(stderr, "\nWARNING: %s\n", ctl_str(r, "warning"));
	else
		printf("Give each share file to its key-recovery officer, then delete it here.\n");
}

int
ctl_cmd_init(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "org", required_argument, NULL, 'o' },
		{ "shares", required_argument, NULL, 'n' },
		{ "threshold", required_argument, NULL, 'm' },
		{ "share-dir", required_argument, NULL, 'd' },
		{ "share-passphrase-dir", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	json_t *args = json_object();
	char *dir = NULL, *pdir = NULL;
	int c, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *end;
		long v;

		switch (c) {
		case 'o':
			json_object_set_new(args, "org", json_string(optarg));
			break;
		case 'n': case 'm':
			v = strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || v < 2 || v > ESC_MAX_SHARES) {
				json_decref(args);
				return ctl_usage_error("init: --%s must be a number from 2 to %d",
				    c == 'n' ? "shares" : "threshold", ESC_MAX_SHARES);
			}
			json_object_set_new(args, c == 'n' ? "shares" : "threshold", json_integer(v));
			break;
		case 'd':
			free(dir);
			dir = ctl_abspath(optarg);
			break;
		case 'p':
			free(pdir);
			pdir = ctl_abspath(optarg);
			break;
		default:
			json_decref(args);
			free(dir);
			free(pdir);
			return CTL_ERR_USAGE;
		}
	}
	if (no_more_args(argc, argv, "init")) {
		json_decref(args);
		free(dir);
		free(pdir);
		return CTL_ERR_USAGE;
	}
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
	free(dir);
	free(pdir);
	rc = ctl_run(ctl, "init", args, print_init);
	return rc;
}

/* ------------------------------------------------------------------ enroll */

int
ctl_cmd_enroll(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "out", required_argument, NULL, 'o' },
		{ "password-file", required_argument, NULL, 'p' },
		{ "renew", no_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	const char *name = NULL, *out = NULL, *pwfile = NULL, *email;
	char outbuf[KMS_ADDR_MAX + sizeof(".p12")], *password = NULL;
	json_t *args, *reply, *r;
	int c, renew = 0, fd, human, rc, written;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 'o': out = optarg; break;
		case 'p': pwfile = optarg; break;
		case 'r': renew = 1; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (optind != argc - 1)
		return ctl_usage_error("enroll: give exactly one address");
	email = argv[optind];
	if (out == NULL) {
		if (strchr(email, '/') || strlen(email) > 250)
			return ctl_usage_error("enroll: give the output file with --out");
		snprintf(outbuf, sizeof(outbuf), "%s.p12", email);
		out = outbuf;
	}
	if (pwfile && ctl_read_password_file(pwfile, &password) != 0)
		return CTL_ERR_USAGE;
	/* Claim the output file before anything happens on the server. */
	fd = ctl_reserve_output(out, 0600);
	if (fd < 0) {
		kms_secret_free(password);
		return CTL_ERR_USAGE;
	}
	args = json_pack("{s:s,s:b}", "email", email, "renew", renew);
	if (name)
		json_object_set_new(args, "name", json_string(name));
	if (password)
		json_object_set_new(args, "password", json_string(password));
	kms_secret_free(password);
	reply = ctl_call_p12(ctl, "enroll", args, fd, out, &written);
	if (reply == NULL)
		return CTL_ERR_USAGE;
	r = json_object_get(reply, "result");
	if (json_is_true(json_object_get(reply, "ok")) && !written) {
			fprintf(stderr, "kmsctl: enrollment done on the server, but the security file could not be "
			    "written: enroll again with --renew\n");
		rc = CTL_ERR_REPLY;
		goto out;
	}
	rc = ctl_finish(ctl, reply, &human);
	if (human) {
		json_t *s = json_object_get(r, "signing"), *e = json_object_get(r, "encryption");

		printf("%s %s (%s)\n", json_is_true(json_object_get(r, "renewed")) ? "Renewed" : "Enrolled",
		    ctl_str(r, "email"), ctl_str(r, "name"));
		printf("  signing certificate     serial %s, valid until %s\n", ctl_str(s, "serial"), ctl_str(s, "not_after"));
		printf("  encryption certificate  serial %s, valid until %s (private key escrowed)\n",
		    ctl_str(e, "serial"), ctl_str(e, "not_after"));
		printf("Security file: %s (PKCS#12, %s encoding)\n", out, ctl_str(r, "format"));
		if (json_object_get(r, "password"))
			printf("Password: %s\n  (shown once: give it to the user by another channel than the file)\n",
			    ctl_str(r, "password"));
	}
out:
	json_decref(reply);
	return rc;
}

/* ------------------------------------------------------------------- issue */

int
ctl_cmd_issue(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "csr", required_argument, NULL, 'c' },
		{ "out", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	const char *csrfile = NULL, *out = NULL;
	unsigned char *csr = NULL;
	size_t csrlen;
	json_t *reply, *r;
	int c, fd, human, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c': csrfile = optarg; break;
		case 'o': out = optarg; break;
		default: return CTL_ERR_USAGE;
		}
	}
	if (csrfile == NULL || out == NULL || no_more_args(argc, argv, "issue"))
		return ctl_usage_error("issue: give --csr FILE and --out FILE");
	if (kms_read_file(csrfile, 64 * 1024, &csr, &csrlen) != 0)
		return ctl_fail(CTL_ERR_USAGE, "issue: cannot read the CSR");
	fd = ctl_reserve_output(out, 0644);
	if (fd < 0) {
		free(csr);
		return CTL_ERR_USAGE;
	}
	reply = ctl_call(ctl, "issue", json_pack("{s:s}", "csr", (char *)csr));
	free(csr);
	if (reply == NULL) {
		close(fd);
		unlink(out);
		return CTL_ERR_USAGE;
	}
	r = json_object_get(reply, "result");
	if (json_is_true(json_object_get(reply, "ok"))) {
		const char *pem = ctl_str(r, "certificate");

		if (ctl_write_output(fd, out, pem, strlen(pem)) != 0) {
			json_decref(reply);
			return CTL_ERR_REPLY;
		}
	} else {
		close(fd);
		unlink(out);
	}
	rc = ctl_finish(ctl, reply, &human);
	if (human)
		printf("Issued a signing certificate for %s, serial %s: %s\n", ctl_str(r, "email"),
		    ctl_str(r, "serial"), out);
	json_decref(reply);
	return rc;
}

/* -------------------------------------------------------------- list, show */

static void
print_list(json_t *r)
{
	json_t *certs = json_object_get(r, "certificates"), *c;
	size_t i;

	if (json_array_size(certs) == 0) {
		printf("no certificates\n");
		return;
	}
	printf("%-32s %-5s %-34s %-20s %s\n", "ADDRESS", "USE", "SERIAL", "VALID UNTIL", "STATUS");
	json_array_foreach(certs, i, c) {
		printf("%-32s %-5s %-34s %-20s %s", ctl_str(c, "email"), ctl_str(c, "usage"), ctl_str(c, "serial"),
		    ctl_str(c, "not_after"), ctl_str(c, "status"));
		if (json_object_get(c, "revoked_at"))
			printf(" %s (%s)", ctl_str(c, "revoked_at"), ctl_str(c, "reason"));
		putchar('\n');
	}
}

int
ctl_cmd_list(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "revoked", no_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	int c, revoked = 0;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 'r')
			return CTL_ERR_USAGE;
		revoked = 1;
	}
	if (no_more_args(argc, argv, "list"))
		return CTL_ERR_USAGE;
	return ctl_run(ctl, "list", json_pack("{s:b}", "revoked", revoked), print_list);
}

static void
print_show(json_t *r)
{
	json_t *c;
	size_t i;

	json_array_foreach(json_object_get(r, "certificates"), i, c) {
		if (i)
			putchar('\n');
		printf("Serial:        %s\n", ctl_str(c, "serial"));
		printf("Address:       %s\n", ctl_str(c, "email"));
		printf("Name:          %s\n", ctl_str(c, "name"));
		printf("Use:           %s%s\n", strcmp(ctl_str(c, "usage"), "sign") == 0 ? "signing" :
		    strcmp(ctl_str(c, "usage"), "enc") == 0 ? "encryption" : ctl_str(c, "usage"),
		    json_is_true(json_object_get(c, "escrowed")) ? " (private key escrowed)" : "");
		printf("Subject:       %s\n", ctl_str(c, "subject"));
		printf("Issuer:        %s\n", ctl_str(c, "issuer"));
		printf("Key:           %s (%s)\n", ctl_str(c, "key_type"),
		    strcmp(ctl_str(c, "origin"), "csr") == 0 ? "user's own key, from a CSR" : "generated by the CA");
		printf("Valid:         %s to %s\n", ctl_str(c, "not_before"), ctl_str(c, "not_after"));
		printf("Status:        %s\n", ctl_str(c, "status"));
		if (json_object_get(c, "revoked_at")) {
			printf("Revoked:       %s\n", ctl_str(c, "revoked_at"));
			printf("Reason:        %s\n", ctl_str(c, "reason"));
			if (json_object_get(c, "invalidity_date"))
				printf("Invalid since: %s\n", ctl_str(c, "invalidity_date"));
		}
		printf("Issued:        %s by %s\n", ctl_str(c, "issued"), ctl_str(c, "issued_by"));
		printf("SHA-256:       %s\n", ctl_str(c, "sha256"));
	}
}

int
ctl_cmd_show(struct ctl *ctl, int argc, char **argv)
{
	optind = 0;
	if (getopt(argc, argv, "+") != -1)
		return CTL_ERR_USAGE;
	if (optind != argc - 1)
		return ctl_usage_error("show: give one address or serial");
	return ctl_run(ctl, "show", json_pack("{s:s}", "target", argv[optind]), print_show);
}
