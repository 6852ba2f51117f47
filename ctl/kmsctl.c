/*
 * kmsctl.c - the control client: global options, finding and talking to
 * the control socket, and the helpers every subcommand uses.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ctl/ctl.h"

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: kmsctl [-s SOCKET | -c KMSD.CONF] [--json] COMMAND [ARGS]\n"
	    "\n"
	    "  status\n"
	    "  init --org NAME [--shares N --threshold M --share-dir DIR] [--share-passphrase-dir DIR]\n"
	    "  enroll EMAIL [--name NAME] [--out FILE.p12] [--password-file F] [--renew]\n"
	    "  issue --csr FILE --out FILE\n"
	    "  list [--revoked]\n"
	    "  show EMAIL|SERIAL\n"
	    "  revoke EMAIL|SERIAL [--reason REASON] [--invalidity-date TIME]\n"
	    "  crl [--out FILE]\n"
	    "  crl fetch URL --ca CAFILE --out DIR\n"
	    "  crl list-external\n"
	    "  recover request EMAIL --why TEXT [--purpose key|archive]\n"
	    "  recover approve ID --share FILE [--passphrase-file F]\n"
	    "  recover list\n"
	    "  recover close ID\n"
	    "  recover fetch ID --out FILE.p12 [--password-file F]\n"
	    "  recover --offline --db FILE --share F1 --share F2 ... EMAIL --out FILE.p12 [--password-file F]\n"
	    "  escrow rotate [--share-dir DIR] [--share-passphrase-dir DIR]\n"
	    "  archive decrypt --request ID --in MBOX|MAILDIR|EML... --out MBOX [--only-decrypted]\n"
	    "  archive decrypt --p12 FILE [--password-file F] --in ... --out MBOX [--only-decrypted]\n"
	    "  audit [--since TIME]\n"
	    "  audit verify\n"
	    "  audit verify --offline --db FILE [--ca FILE]\n"
	    "  publish status\n"
	    "  publish resync\n"
	    "  cert EMAIL [--out FILE]\n"
	    "\n"
	    "The socket is -s SOCKET, else $KMSCTL_SOCKET, else the control_socket of -c FILE,\n"
	    "else ./kmsd-state/control.sock (kmsd's built-in default).  See kmsctl(8).\n"
	    "Exit status: 0 success, 1 error reply from kmsd, 2 usage or connection error.\n");
}

int
ctl_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kmsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (kmsctl --help for usage)\n", stderr);
	return CTL_ERR_USAGE;
}

int
ctl_fail(int status, const char *what)
{
	const char *d = kms_last_error();

	fprintf(stderr, "kmsctl: %s%s%s\n", what, d[0] ? ": " : "", d);
	return status;
}

const char *
ctl_str(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));

	return s ? s : "";
}

static int
ctl_connect(struct ctl *ctl)
{
	struct sockaddr_un sa;
	int fd;

	if (ctl->fd >= 0)
		return 0;
	if (strlen(ctl->socket) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "kmsctl: socket path too long: %s\n", ctl->socket);
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, ctl->socket, strlen(ctl->socket) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;

		fprintf(stderr, "kmsctl: cannot connect to kmsd at %s: %s%s\n", ctl->socket, strerror(e),
		    e == ENOENT || e == ECONNREFUSED ? " (is kmsd running? give its socket with -s or -c)" :
		    e == EACCES ? " (you need to be in kmsd's group to use it)" : "");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	ctl->fd = fd;
	kms_lines_init(&ctl->lines, KMS_PROTO_MAX_REPLY);
	return 0;
}

json_t *
ctl_call(struct ctl *ctl, const char *cmd, json_t *args)
{
	json_t *req, *reply;
	json_error_t jerr;
	char *line;
	size_t len;
	int rc;

	if (ctl_connect(ctl) != 0) {
		json_decref(args);
		return NULL;
	}
	req = json_pack("{s:s,s:o}", "cmd", cmd, "args", args ? args : json_object());
	if (req == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return NULL;
	}
	rc = kms_send_json(ctl->fd, req);
	json_decref(req);
	if (rc != 0) {
		/* kmsd may have answered and closed first (too many clients): read that answer. */
		char msg[CTL_MESSAGE_MAX];

		snprintf(msg, sizeof(msg), "%s", kms_last_error());
		if (kms_lines_read(&ctl->lines, kms_read_fd, &ctl->fd, &line, &len) == 1)
			goto parse;
		fprintf(stderr, "kmsctl: cannot send to kmsd: %s\n", msg);
		return NULL;
	}
	rc = kms_lines_read(&ctl->lines, kms_read_fd, &ctl->fd, &line, &len);
	if (rc != 1) {
		fprintf(stderr, "kmsctl: kmsd closed the connection without a reply%s\n",
		    rc == KMS_ERR_TOOBIG ? " (reply too large)" : "");
		return NULL;
	}
parse:
	reply = json_loadb(line, len, 0, &jerr);
	kms_wipe(line, len);
	if (reply == NULL || !json_is_object(reply) || !json_is_boolean(json_object_get(reply, "ok"))) {
		fprintf(stderr, "kmsctl: malformed reply from kmsd\n");
		json_decref(reply);
		return NULL;
	}
	return reply;
}

int
ctl_finish(struct ctl *ctl, json_t *reply, int *ok_human)
{
	int ok = json_is_true(json_object_get(reply, "ok"));

	*ok_human = 0;
	if (ctl->json) {
		char *s = json_dumps(reply, JSON_COMPACT);

		if (s) {
			puts(s);
			free(s);
		}
	}
	if (!ok) {
		json_t *err = json_object_get(reply, "error");

		fprintf(stderr, "kmsctl: %s\n", ctl_str(err, "message")[0] ? ctl_str(err, "message") :
		    ctl_str(err, "code"));
		return CTL_ERR_REPLY;
	}
	*ok_human = !ctl->json;
	return CTL_OK;
}

int
ctl_run(struct ctl *ctl, const char *cmd, json_t *args, void (*print)(json_t *result))
{
	json_t *reply = ctl_call(ctl, cmd, args);
	int human, rc;

	if (reply == NULL)
		return CTL_ERR_USAGE;
	rc = ctl_finish(ctl, reply, &human);
	if (human && print)
		print(json_object_get(reply, "result"));
	json_decref(reply);
	return rc;
}

int
ctl_take_p12(json_t *result, int fd, const char *path)
{
	const char *b64 = ctl_str(result, "pkcs12");
	unsigned char *der = NULL;
	size_t len = 0;
	int rc;

	if (kms_b64_decode(b64, strlen(b64), &der, &len) != 0 || len == 0) {
		close(fd);
		unlink(path);
		free(der);
		return -1;
	}
	rc = ctl_write_output(fd, path, der, len);
	kms_wipe(der, len);
	free(der);
	/* The file holds the keys now: drop our copy from the reply. */
	kms_wipe((char *)b64, strlen(b64));
	json_object_set_new(result, "pkcs12", json_string("(written to file)"));
	json_object_set_new(result, "file", json_string(path));
	return rc;
}

json_t *
ctl_call_p12(struct ctl *ctl, const char *cmd, json_t *args, int fd, const char *path, int *written)
{
	json_t *reply = ctl_call(ctl, cmd, args);

	*written = 0;
	if (reply != NULL && json_is_true(json_object_get(reply, "ok"))) {
		*written = ctl_take_p12(json_object_get(reply, "result"), fd, path) == 0;
		return reply;
	}
	close(fd);
	unlink(path);
	return reply;
}

json_t *
ctl_call_to_file(struct ctl *ctl, const char *cmd, json_t *args, int fd, const char *path,
    const char *(*text)(json_t *result), int *write_failed)
{
	json_t *reply = ctl_call(ctl, cmd, args);
	const char *t;

	*write_failed = 0;
	if (fd < 0)
		return reply;
	if (reply == NULL || !json_is_true(json_object_get(reply, "ok"))) {
		close(fd);
		unlink(path);
		return reply;
	}
	t = text(json_object_get(reply, "result"));
	*write_failed = ctl_write_output(fd, path, t, strlen(t)) != 0;
	return reply;
}

int
ctl_read_password_file(const char *path, char **out)
{
	int rc = kms_read_secret_file(path, out);

	if (rc != 0)
		return ctl_fail(CTL_ERR_USAGE, "cannot read the password file");
	return 0;
}

char *
ctl_abspath(const char *path)
{
	char cwd[PATH_MAX];

	if (path[0] == '/')
		return strdup(path);
	if (getcwd(cwd, sizeof(cwd)) == NULL)
		return NULL;
	return kms_path_join(cwd, path);
}

int
ctl_reserve_output(const char *path, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);

	if (fd < 0)
		fprintf(stderr, "kmsctl: cannot create %s: %s%s\n", path, strerror(errno),
		    errno == EEXIST ? " (it would be overwritten: move it away first)" : "");
	return fd;
}

int
ctl_write_output(int fd, const char *path, const void *data, size_t len)
{
	if (kms_write_all(fd, data, len) != 0)
		goto fail;
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		goto fail;
	}
	return 0;
fail:
	fprintf(stderr, "kmsctl: cannot write %s: %s\n", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(path);
	return -1;
}

static char *
socket_from_config(const char *path)
{
	struct kms_config *cfg;
	char *s;

	if (kms_config_load(path, &cfg) != 0) {
		fprintf(stderr, "kmsctl: %s\n", kms_last_error());
		return NULL;
	}
	s = strdup(cfg->kmsd.control_socket);
	kms_config_unref(cfg);
	return s;
}

static const struct {
	const char *name;
	int (*fn)(struct ctl *, int, char **);
} commands[] = {
	{ "status", ctl_cmd_status },
	{ "init", ctl_cmd_init },
	{ "enroll", ctl_cmd_enroll },
	{ "issue", ctl_cmd_issue },
	{ "list", ctl_cmd_list },
	{ "show", ctl_cmd_show },
	{ "revoke", ctl_cmd_revoke },
	{ "crl", ctl_cmd_crl },
	{ "publish", ctl_cmd_publish },
	{ "cert", ctl_cmd_cert },
	{ "recover", ctl_cmd_recover },
	{ "escrow", ctl_cmd_escrow },
	{ "archive", ctl_cmd_archive },
	{ "audit", ctl_cmd_audit },
};

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl ctl = { .fd = -1 };
	char *sock = NULL;
	int c, rc = CTL_ERR_USAGE;

	/* Options before the command only: "+" stops at the first non-option. */
	while ((c = getopt_long(argc, argv, "+s:c:jhV", longopts, NULL)) != -1) {
		switch (c) {
		case 's': ctl.socket = optarg; break;
		case 'c': ctl.config = optarg; break;
		case 'j': ctl.json = 1; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("kmsctl (smime-kms) %s\n", PACKAGE_VERSION); return 0;
		default: usage(stderr); return CTL_ERR_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_ERR_USAGE;
	}
	if (ctl.socket == NULL)
		ctl.socket = getenv("KMSCTL_SOCKET");
	if (ctl.socket == NULL && ctl.config != NULL) {
		sock = socket_from_config(ctl.config);
		if (sock == NULL)
			return CTL_ERR_USAGE;
		ctl.socket = sock;
	}
	if (ctl.socket == NULL)
		ctl.socket = "kmsd-state/control.sock";
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name) == 0) {
			/* Subcommands parse their own options from their name on. */
			int sub_argc = argc - optind;
			char **sub_argv = argv + optind;

			optind = 1;
			rc = commands[i].fn(&ctl, sub_argc, sub_argv);
			goto out;
		}
	}
	rc = ctl_usage_error("unknown command \"%s\"", argv[optind]);
out:
	if (ctl.fd >= 0) {
		close(ctl.fd);
		kms_lines_free(&ctl.lines);
	}
	free(sock);
	return rc;
}
