/*
 * ctl.h - internal header of kmsctl, the control client.
 *
 * kmsctl turns a command line into one JSON request, sends it over the
 * control socket, and prints the reply for people (or, with --json, the
 * reply object as is).  Exit status: 0 success, 1 error reply, 2 usage or
 * connection error.
 */
#ifndef KMSCTL_H
#define KMSCTL_H

#include <jansson.h>

#include "common/common.h"

enum {
	CTL_OK = 0,
	CTL_ERR_REPLY = 1,
	CTL_ERR_USAGE = 2,
};

/* Secure heap for keys and shares in commands that handle them here. */
#define CTL_SECURE_HEAP (1024 * 1024)
/* A passphrase prompt naming a share file. */
#define CTL_PROMPT_MAX 300
/* An error message kept while another call runs. */
#define CTL_MESSAGE_MAX 300
/* Buffer for a generated password (kms_random_password: 24 characters, 139 bits). */
#define CTL_GENERATED_PASSWORD 25

struct ctl {
	const char *socket;         /* control socket path */
	const char *config;         /* -c FILE, for commands that read it */
	int json;                   /* --json: print the reply object */
	int fd;                     /* connected socket, -1 until used */
	struct kms_lines lines;
};

/*
 * Send {"cmd": cmd, "args": args} (steals args) and read the reply.
 * Returns the reply object, or NULL after printing a connection error.
 */
json_t *ctl_call(struct ctl *ctl, const char *cmd, json_t *args);
/*
 * Finish a command: with --json print the reply; on an error reply print
 * "kmsctl: <message>" on stderr.  Returns the exit status (0 or 1).  On
 * success the caller prints its human output when ok_out is set.
 */
int ctl_finish(struct ctl *ctl, json_t *reply, int *ok_human);
/* ctl_call, ctl_finish, and print(result) for people on success; returns the exit status. */
int ctl_run(struct ctl *ctl, const char *cmd, json_t *args, void (*print)(json_t *result));
/* Write the base64 "pkcs12" of a reply's result to a reserved output file (0, or -1 after removing it). */
int ctl_take_p12(json_t *result, int fd, const char *path);
/*
 * ctl_call, then the reply's PKCS#12 into the output file reserved as fd
 * (removed again when there is nothing to write).  *written is 1 when the
 * file holds the PKCS#12.  NULL after a connection error.
 */
json_t *ctl_call_p12(struct ctl *ctl, const char *cmd, json_t *args, int fd, const char *path, int *written);
/*
 * ctl_call, then text(result) of a successful reply into the output file
 * reserved as fd (-1: no file), which is removed again when the call fails.
 * *write_failed is 1 when the file could not be written (and is gone).
 * NULL after a connection error.
 */
json_t *ctl_call_to_file(struct ctl *ctl, const char *cmd, json_t *args, int fd, const char *path,
    const char *(*text)(json_t *result), int *write_failed);
/* Print "kmsctl: ..." on stderr and return CTL_ERR_USAGE. */
int ctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "kmsctl: ..." with kms_last_error() and return status. */
int ctl_fail(int status, const char *what);
/* Read a secret (password) file's first line. */
int ctl_read_password_file(const char *path, char **out);
/* Make an absolute path from a command-line path (malloc'd). */
char *ctl_abspath(const char *path);
/* Reserve an output file (O_EXCL, mode) before the server does anything; returns fd or -1. */
int ctl_reserve_output(const char *path, mode_t mode);
/* Write and close a reserved output file; unlinks it on failure. */
int ctl_write_output(int fd, const char *path, const void *data, size_t len);
/* String member of an object ("" when absent). */
const char *ctl_str(json_t *obj, const char *key);

/* Subcommands: argc/argv start at the subcommand name. */
int ctl_cmd_status(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_init(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_enroll(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_issue(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_list(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_show(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_revoke(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_crl(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_recover(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_escrow(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_archive(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_audit(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_publish(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_cert(struct ctl *ctl, int argc, char **argv);
/* The "Directory:" lines of status and publish status. */
void ctl_print_ldap(json_t *ldap);

#endif
