/*
 * check_common.c - unit suite for libkmscommon: the config loader (good
 * file and each kind of bad file), the store (migrations, corrupt and newer
 * files), protocol framing (size bound, split and joined lines), the audit
 * chain (changed, deleted, inserted rows), files and encodings.
 */
#include "config.h"

#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/unit/testutil.h"

static char *dir;

static void
setup(void)
{
	dir = tu_tmpdir();
	kms_config_set_basedir(dir);
}

static void
teardown(void)
{
	kms_config_set_basedir(NULL);
	tu_rmtree(dir);
	free(dir);
}

/* Load text as a config; returns the rc and leaves the error in kms_last_error(). */
static int
load_text(const char *text, struct kms_config **cfg)
{
	char *p = tu_write(dir, "kmsd.conf", text);
	int rc = kms_config_load(p, cfg);

	free(p);
	return rc;
}

/* ------------------------------------------------------------------ config */

START_TEST(test_config_defaults_have_derived_paths)
{
	struct kms_config *cfg;
	char want[4096];

	ck_assert_int_eq(kms_config_load(NULL, &cfg), 0);
	snprintf(want, sizeof(want), "%s/kmsd-state", dir);
	ck_assert_str_eq(cfg->kmsd.state_dir, want);
	snprintf(want, sizeof(want), "%s/kmsd-state/control.sock", dir);
	ck_assert_str_eq(cfg->kmsd.control_socket, want);
	snprintf(want, sizeof(want), "unix:%s/kmsd-state/milter.sock", dir);
	ck_assert_str_eq(cfg->kmsd.milter_socket, want);
	ck_assert_str_eq(cfg->ca.user_key, "rsa:2048");
	ck_assert_str_eq(cfg->ca.pkcs12_format, "modern");
	ck_assert_int_eq(cfg->escrow.request_ttl, 3600);
	ck_assert_int_eq(cfg->milter.max_memory, 1024 * 1024);
	ck_assert_int_eq(cfg->policy.on_revoked, KMS_ACT_WARN);
	ck_assert_int_eq(cfg->policy.on_error, KMS_ACT_TEMPFAIL);
	ck_assert_str_eq(cfg->crl.url, "http://127.0.0.1:8480/crl/kms-ca.crl");
	ck_assert_str_eq(cfg->policy.subject_tag, "[REVOKED SENDER]");
	ck_assert_ptr_nonnull(strstr(cfg->policy.notice, "%{signer}"));
	kms_config_unref(cfg);
}
END_TEST

START_TEST(test_config_good_file_sets_every_type)
{
	struct kms_config *cfg;

	ck_assert_int_eq(load_text(
	    "# comment\n"
	    "[kmsd]\n"
	    "state_dir = /var/lib/kms\n"
	    "milter_socket = inet:8899@127.0.0.1\n"
	    "authserv_id = mx.example.org\n"
	    "max_control_clients = 4\n"
	    "log_level = debug\n"
	    "[ca]\n"
	    "user_key = ec:p256\n"
	    "pkcs12_format = compat\n"
	    "enabled = no\n"
	    "[crl]\n"
	    "delta = yes\n"
	    "next_update_hours = 48\n"
	    "[escrow]\n"
	    "request_ttl = 2h\n"
	    "[milter]\n"
	    "max_memory = 256K\n"
	    "[policy]\n"
	    "on_revoked = reject\n"
	    "notice = first line\n"
	    "  second line\n"
	    "[roles]\n"
	    "officer = carol, 1001, @kmsofficers\n", &cfg), 0);
	ck_assert_str_eq(cfg->kmsd.state_dir, "/var/lib/kms");
	ck_assert_str_eq(cfg->kmsd.control_socket, "/var/lib/kms/control.sock");
	ck_assert_str_eq(cfg->kmsd.milter_socket, "inet:8899@127.0.0.1");
	ck_assert_str_eq(cfg->kmsd.authserv_id, "mx.example.org");
	ck_assert_int_eq(cfg->kmsd.max_control_clients, 4);
	ck_assert_int_eq(cfg->kmsd.log_level, KMS_LOG_DEBUG);
	ck_assert_str_eq(cfg->ca.user_key, "ec:p256");
	ck_assert_str_eq(cfg->ca.pkcs12_format, "compat");
	ck_assert_int_eq(cfg->ca.enabled, 0);
	ck_assert_int_eq(cfg->crl.delta, 1);
	ck_assert_int_eq(cfg->crl.next_update_hours, 48);
	ck_assert_int_eq(cfg->escrow.request_ttl, 7200);
	ck_assert_int_eq(cfg->milter.max_memory, 256 * 1024);
	ck_assert_int_eq(cfg->policy.on_revoked, KMS_ACT_REJECT);
	ck_assert_str_eq(cfg->policy.notice, "first line\nsecond line");
	ck_assert_str_eq(cfg->roles.officer, "carol, 1001, @kmsofficers");
	kms_config_unref(cfg);
}
END_TEST

/* Each bad file must fail and name the file, the line and the key. */
static const struct {
	const char *text;
	const char *expect[3];
} bad_configs[] = {
	{ "[kmsd]\nstate_dir = /x\nbogus = 1\n", { "kmsd.conf:3:", "unknown key", "bogus" } },
	{ "[nosuch]\nkey = 1\n", { "kmsd.conf:2:", "unknown section", "nosuch" } },
	{ "[kmsd]\nmax_control_clients = 0\n", { "kmsd.conf:2:", "max_control_clients", "from 2 to 1024" } },
	{ "[kmsd]\nmax_control_clients = 12abc\n", { "kmsd.conf:2:", "max_control_clients", "12abc" } },
	{ "[ca]\n\nenabled = maybe\n", { "kmsd.conf:3:", "enabled", "yes or no" } },
	{ "[ca]\nuser_key = rsa:1024\n", { "kmsd.conf:2:", "user_key", "ec:p256" } },
	{ "[crl]\nnext_update_hours = 241\n", { "kmsd.conf:2:", "next_update_hours", "240" } },
	{ "[escrow]\nrequest_ttl = 10x\n", { "kmsd.conf:2:", "request_ttl", "duration" } },
	{ "[milter]\nmax_memory = 1K\n", { "kmsd.conf:2:", "max_memory", "size" } },
	{ "[policy]\non_revoked = explode\n", { "kmsd.conf:2:", "on_revoked", "quarantine" } },
	{ "[kmsd]\nlog_level = info\nlog_level = debug\n", { "kmsd.conf:3:", "log_level", "twice" } },
	{ "[kmsd]\nthis line has no equals sign\n", { "kmsd.conf:2:", "syntax", "key = value" } },
	{ "[escrow]\nshares = 3\nthreshold = 4\n", { "kmsd.conf", "threshold", "larger than shares" } },
	{ "[kmsd]\nmilter_socket = tcp:25\n", { "kmsd.conf", "milter_socket", "inet:PORT@HOST" } },
	{ "[policy]\non_error = warn\n", { "kmsd.conf", "on_error", "tempfail" } },
	{ "[ca]\nname = ../etc\n", { "kmsd.conf", "name", "A-Z" } },
	{ "[http]\nlisten = localhost\n", { "kmsd.conf", "listen", "HOST:PORT" } },
};

START_TEST(test_config_bad_file_names_file_line_and_key)
{
	struct kms_config *cfg = (struct kms_config *)1;
	int rc = load_text(bad_configs[_i].text, &cfg);

	ck_assert_int_eq(rc, KMS_ERR_CONFIG);
	ck_assert_ptr_null(cfg);
	for (int j = 0; j < 3; j++)
		ck_assert_msg(strstr(kms_last_error(), bad_configs[_i].expect[j]) != NULL,
		    "case %d: \"%s\" lacks \"%s\"", _i, kms_last_error(), bad_configs[_i].expect[j]);
}
END_TEST

START_TEST(test_config_example_file_loads)
{
	const char *srcdir = getenv("srcdir");
	char path[4096];
	struct kms_config *cfg;

	snprintf(path, sizeof(path), "%s/contrib/kmsd.conf.example", srcdir ? srcdir : ".");
	ck_assert_msg(kms_config_load(path, &cfg) == 0, "%s", kms_last_error());
	ck_assert_str_eq(cfg->kmsd.state_dir, "/var/lib/smime-kms");
	ck_assert_str_eq(cfg->http.listen, "0.0.0.0:8480");
	ck_assert_ptr_nonnull(strstr(cfg->policy.notice, "%{revoked_at}"));
	ck_assert_int_eq(cfg->policy.on_revoked, KMS_ACT_WARN);
	kms_config_unref(cfg);
}
END_TEST

START_TEST(test_config_overlong_line_is_an_error)
{
	struct kms_config *cfg;
	char text[600];

	snprintf(text, sizeof(text), "[policy]\nsubject_tag = %0400d\n", 7);
	ck_assert_int_eq(load_text(text, &cfg), KMS_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "kmsd.conf:2:"));
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "too long"));
}
END_TEST

START_TEST(test_config_missing_file_is_an_error)
{
	struct kms_config *cfg;

	ck_assert_int_eq(kms_config_load("/nonexistent/kmsd.conf", &cfg), KMS_ERR_CONFIG);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "/nonexistent/kmsd.conf"));
}
END_TEST

START_TEST(test_config_parsers_reject_garbage)
{
	long long v;

	ck_assert_int_eq(kms_parse_duration("90m", &v), 0);
	ck_assert_int_eq(v, 5400);
	ck_assert_int_eq(kms_parse_duration("1d", &v), 0);
	ck_assert_int_eq(v, 86400);
	ck_assert_int_ne(kms_parse_duration("-5", &v), 0);
	ck_assert_int_ne(kms_parse_duration("5mm", &v), 0);
	ck_assert_int_ne(kms_parse_duration("", &v), 0);
	ck_assert_int_ne(kms_parse_duration("99999999999999999999", &v), 0);
	ck_assert_int_eq(kms_parse_size("2M", &v), 0);
	ck_assert_int_eq(v, 2 * 1024 * 1024);
	ck_assert_int_eq(kms_parse_size("64kb", &v), 0);
	ck_assert_int_eq(v, 64 * 1024);
	ck_assert_int_ne(kms_parse_size("1T", &v), 0);
}
END_TEST

START_TEST(test_split_list_trims_and_skips_empty)
{
	char **v = kms_split_list(" carol ,1001,, @kmsofficers ");

	ck_assert_ptr_nonnull(v);
	ck_assert_str_eq(v[0], "carol");
	ck_assert_str_eq(v[1], "1001");
	ck_assert_str_eq(v[2], "@kmsofficers");
	ck_assert_ptr_null(v[3]);
	kms_strv_free(v);
}
END_TEST

/* ------------------------------------------------------------------- store */

static char *
db_path(void)
{
	char *p = kms_path_join(dir, "kms.db");

	ck_assert_ptr_nonnull(p);
	return p;
}

START_TEST(test_store_creates_latest_schema_in_wal_mode)
{
	struct kms_store *st;
	char *p = db_path();
	sqlite3_stmt *s;

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE | KMS_STORE_CHECK, &st), 0);
	ck_assert_int_eq(kms_store_version(st), kms_store_latest_version());
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st), "PRAGMA synchronous", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(s, 0), 2);     /* FULL */
	sqlite3_finalize(s);
	kms_store_close(st);
	free(p);
}
END_TEST

START_TEST(test_store_migrates_old_version_keeping_data)
{
	struct kms_store *st;
	char *p = db_path();
	sqlite3_stmt *s;

	ck_assert_int_eq(kms_store_open_version(p, KMS_STORE_CREATE, 1, &st), 0);
	ck_assert_int_eq(kms_store_version(st), 1);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st),
	    "INSERT INTO certs(serial, email, usage, key_type, origin, subject, not_before, not_after, cert, issued) "
	    "VALUES ('0a', 'alice@example.org', 'sign', 'ec:p256', 'enroll', 'CN=Alice', 1, 2, x'00', 3)",
	    NULL, NULL, NULL), SQLITE_OK);
	/* Version 1 has no revocation columns. */
	ck_assert_int_ne(sqlite3_exec(kms_store_db(st), "SELECT revoked_at FROM certs", NULL, NULL, NULL), SQLITE_OK);
	kms_store_close(st);

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CHECK, &st), 0);
	ck_assert_int_eq(kms_store_version(st), kms_store_latest_version());
	ck_assert_int_eq(sqlite3_prepare_v2(kms_store_db(st),
	    "SELECT email, revoked_at IS NULL FROM certs WHERE serial = '0a'", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "alice@example.org");
	ck_assert_int_eq(sqlite3_column_int(s, 1), 1);
	sqlite3_finalize(s);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "SELECT count(*) FROM escrow", NULL, NULL, NULL), SQLITE_OK);
	kms_store_close(st);
	free(p);
}
END_TEST

START_TEST(test_store_refuses_corrupt_file)
{
	struct kms_store *st;
	char *p = db_path();
	int fd;
	char junk[8192];

	/* A valid store, then garbage over its pages after the header. */
	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE, &st), 0);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL), SQLITE_OK);
	kms_store_close(st);
	fd = open(p, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	memset(junk, 0xa5, sizeof(junk));
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), 4096), (ssize_t)sizeof(junk));
	close(fd);
	st = NULL;
	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CHECK, &st), KMS_ERR_CORRUPT);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(kms_last_error(), "corrupt") != NULL, "%s", kms_last_error());
	free(p);
}
END_TEST

START_TEST(test_store_refuses_file_that_is_not_a_database)
{
	struct kms_store *st;
	char *p = tu_write(dir, "kms.db", "this is not a database, just some text that is long enough to look at\n");

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CHECK, &st), KMS_ERR_CORRUPT);
	free(p);
}
END_TEST

START_TEST(test_store_refuses_newer_schema)
{
	struct kms_store *st;
	char *p = db_path();

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE, &st), 0);
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "PRAGMA user_version = 999", NULL, NULL, NULL), SQLITE_OK);
	kms_store_close(st);
	ck_assert_int_eq(kms_store_open(p, 0, &st), KMS_ERR_STATE);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "newer"));
	free(p);
}
END_TEST

START_TEST(test_store_meta_roundtrip)
{
	struct kms_store *st;
	char *p = db_path(), *v;

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE, &st), 0);
	ck_assert_int_eq(kms_store_meta_get(st, "crl_number", &v), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(kms_store_meta_set(st, "crl_number", "7"), 0);
	ck_assert_int_eq(kms_store_meta_set(st, "crl_number", "8"), 0);
	ck_assert_int_eq(kms_store_meta_get(st, "crl_number", &v), 0);
	ck_assert_str_eq(v, "8");
	free(v);
	kms_store_close(st);
	free(p);
}
END_TEST

/* ------------------------------------------------------------------- audit */

static struct kms_store *
audit_store_with_rows(int n)
{
	struct kms_store *st;
	char *p = db_path();

	ck_assert_int_eq(kms_store_open(p, KMS_STORE_CREATE, &st), 0);
	free(p);
	for (int i = 0; i < n; i++) {
		char target[32];
		struct kms_audit_rec r = {
			.time = 1700000000 + i, .uid = 1000 + (uid_t)i, .user = "alice", .role = "admin",
			.cmd = "enroll", .target = target, .outcome = "ok",
		};

		snprintf(target, sizeof(target), "user%d@example.org", i);
		ck_assert_int_eq(kms_audit_append(st, &r), 0);
	}
	return st;
}

START_TEST(test_audit_chain_verifies_when_untouched)
{
	struct kms_store *st = audit_store_with_rows(5);
	long long bad, rows;

	ck_assert_int_eq(kms_audit_verify(st, &bad, &rows), 0);
	ck_assert_int_eq(rows, 5);
	kms_store_close(st);
}
END_TEST

struct audit_seen {
	int n;
	long long seq[8];
	char target[8][40];
};

static int
audit_collect(void *arg, const struct kms_audit_row *row)
{
	struct audit_seen *a = arg;

	if (a->n >= 8)
		return KMS_ERR_TOOBIG;
	a->seq[a->n] = row->seq;
	snprintf(a->target[a->n], sizeof(a->target[0]), "%s", row->rec.target);
	ck_assert_ptr_null(row->rec.request_id);
	ck_assert_uint_eq(strlen(row->hash), 64);
	a->n++;
	return 0;
}

START_TEST(test_audit_list_gives_the_newest_rows_oldest_first)
{
	struct kms_store *st = audit_store_with_rows(5);
	struct audit_seen a = { 0 };
	int truncated = -1;

	/* The newest three of the rows from the second one on, oldest first, marked truncated. */
	ck_assert_int_eq(kms_audit_list(st, 1700000001, 3, audit_collect, &a, &truncated), 0);
	ck_assert_int_eq(truncated, 1);
	ck_assert_int_eq(a.n, 3);
	ck_assert_str_eq(a.target[0], "user2@example.org");
	ck_assert_str_eq(a.target[2], "user4@example.org");
	ck_assert_int_lt(a.seq[0], a.seq[1]);
	/* Everything fits: not truncated. */
	a.n = 0;
	ck_assert_int_eq(kms_audit_list(st, 0, 10, audit_collect, &a, &truncated), 0);
	ck_assert_int_eq(truncated, 0);
	ck_assert_int_eq(a.n, 5);
	/* The callback's error stops the listing and comes back. */
	a.n = 8;
	ck_assert_int_eq(kms_audit_list(st, 0, 10, audit_collect, &a, &truncated), KMS_ERR_TOOBIG);
	ck_assert_int_eq(kms_audit_list(st, 0, 0, audit_collect, &a, &truncated), KMS_ERR_INVALID);
	kms_store_close(st);
}
END_TEST

START_TEST(test_audit_chain_finds_changed_row)
{
	struct kms_store *st = audit_store_with_rows(5);
	long long bad;

	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "UPDATE audit SET outcome = 'forbidden' WHERE seq = 3",
	    NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(kms_audit_verify(st, &bad, NULL), KMS_ERR_CORRUPT);
	ck_assert_int_eq(bad, 3);
	kms_store_close(st);
}
END_TEST

START_TEST(test_audit_chain_finds_deleted_row)
{
	struct kms_store *st = audit_store_with_rows(5);
	long long bad;

	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "DELETE FROM audit WHERE seq = 2", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(kms_audit_verify(st, &bad, NULL), KMS_ERR_CORRUPT);
	ck_assert_int_eq(bad, 3);
	/* Renumbering the rest to hide the gap breaks the chain instead. */
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "UPDATE audit SET seq = seq - 1 WHERE seq > 2",
	    NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(kms_audit_verify(st, &bad, NULL), KMS_ERR_CORRUPT);
	ck_assert_int_eq(bad, 2);
	kms_store_close(st);
}
END_TEST

START_TEST(test_audit_chain_finds_inserted_row)
{
	struct kms_store *st = audit_store_with_rows(3);
	long long bad;

	/* Append a forged row with a plausible but wrong hash. */
	ck_assert_int_eq(sqlite3_exec(kms_store_db(st),
	    "INSERT INTO audit SELECT 4, time, uid, user, role, cmd, 'mallory@example.org', outcome, "
	    "request_id, detail, hash, hash FROM audit WHERE seq = 3", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(kms_audit_verify(st, &bad, NULL), KMS_ERR_CORRUPT);
	ck_assert_int_eq(bad, 4);
	kms_store_close(st);
}
END_TEST

START_TEST(test_audit_chain_finds_truncated_tail)
{
	struct kms_store *st = audit_store_with_rows(4);
	long long bad;

	ck_assert_int_eq(sqlite3_exec(kms_store_db(st), "DELETE FROM audit WHERE seq = 4", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(kms_audit_verify(st, &bad, NULL), KMS_ERR_CORRUPT);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "removed from the end"));
	kms_store_close(st);
}
END_TEST

/* ---------------------------------------------------------------- protocol */

struct feed {
	const char *chunks[8];
	int i;
};

static ssize_t
feed_read(void *ctx, char *buf, size_t n)
{
	struct feed *f = ctx;
	size_t len;

	if (f->chunks[f->i] == NULL)
		return 0;
	len = strlen(f->chunks[f->i]);
	ck_assert_uint_le(len, n);
	memcpy(buf, f->chunks[f->i], len);
	f->i++;
	return (ssize_t)len;
}

START_TEST(test_lines_split_and_joined_chunks)
{
	struct feed f = { { "{\"cmd\":\"st", "atus\"}\r\n{\"a\":1}\n{\"b\"", ":2}\n", NULL }, 0 };
	struct kms_lines lb;
	char *line;
	size_t len;

	kms_lines_init(&lb, 100);
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), 1);
	ck_assert_str_eq(line, "{\"cmd\":\"status\"}");
	ck_assert_uint_eq(len, 16);
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), 1);
	ck_assert_str_eq(line, "{\"a\":1}");
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), 1);
	ck_assert_str_eq(line, "{\"b\":2}");
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), 0);
	kms_lines_free(&lb);
}
END_TEST

static ssize_t
big_read(void *ctx, char *buf, size_t n)
{
	int *state = ctx;

	/* Three chunks of 'x' without a newline, then the end of that line and a good one. */
	if (*state < 3) {
		memset(buf, 'x', n);
		(*state)++;
		return (ssize_t)n;
	}
	if (*state == 3) {
		(*state)++;
		memcpy(buf, "xx\n{\"ok\":1}\n", 12);
		return 12;
	}
	return 0;
}

START_TEST(test_lines_oversize_line_skipped_and_stream_recovers)
{
	struct kms_lines lb;
	int state = 0;
	char *line;
	size_t len;

	kms_lines_init(&lb, 1000);
	ck_assert_int_eq(kms_lines_read(&lb, big_read, &state, &line, &len), KMS_ERR_TOOBIG);
	ck_assert_int_eq(kms_lines_read(&lb, big_read, &state, &line, &len), 1);
	ck_assert_str_eq(line, "{\"ok\":1}");
	ck_assert_int_eq(kms_lines_read(&lb, big_read, &state, &line, &len), 0);
	/* The buffer never grew far past the bound plus one read. */
	ck_assert_uint_le(lb.b.cap, 4 * 65536 + 1000);
	kms_lines_free(&lb);
}
END_TEST

START_TEST(test_lines_line_at_exact_bound_is_accepted)
{
	char chunk[64];
	struct feed f = { { chunk, NULL }, 0 };
	struct kms_lines lb;
	char *line;
	size_t len;

	memset(chunk, 'y', 10);
	chunk[10] = '\n';
	chunk[11] = '\0';
	kms_lines_init(&lb, 10);
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), 1);
	ck_assert_uint_eq(len, 10);
	kms_lines_free(&lb);

	memset(chunk, 'y', 11);
	chunk[11] = '\n';
	chunk[12] = '\0';
	f.i = 0;
	kms_lines_init(&lb, 10);
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), KMS_ERR_TOOBIG);
	kms_lines_free(&lb);
}
END_TEST

START_TEST(test_lines_stream_ending_inside_line_is_a_protocol_error)
{
	struct feed f = { { "{\"cmd\":", NULL }, 0 };
	struct kms_lines lb;
	char *line;
	size_t len;

	kms_lines_init(&lb, 100);
	ck_assert_int_eq(kms_lines_read(&lb, feed_read, &f, &line, &len), KMS_ERR_PROTO);
	kms_lines_free(&lb);
}
END_TEST

START_TEST(test_reply_shapes)
{
	json_t *ok = kms_reply_ok(json_pack("{s:s}", "id", "r1"));
	json_t *err = kms_reply_error("forbidden", "uid %d has no role", 1234);

	ck_assert(json_is_true(json_object_get(ok, "ok")));
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(ok, "result"), "id")), "r1");
	ck_assert(json_is_false(json_object_get(err, "ok")));
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(err, "error"), "code")), "forbidden");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(err, "error"), "message")),
	    "uid 1234 has no role");
	json_decref(ok);
	json_decref(err);
}
END_TEST

/* ------------------------------------------------------------ files, codes */

START_TEST(test_write_excl_refuses_existing_and_symlink)
{
	char *p = kms_path_join(dir, "share-1"), *l = kms_path_join(dir, "link");
	struct stat sb;

	ck_assert_int_eq(kms_write_file_excl(p, "secret", 6, 0600), 0);
	ck_assert_int_eq(stat(p, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0600);
	ck_assert_int_eq(kms_write_file_excl(p, "other", 5, 0600), KMS_ERR_EXISTS);
	ck_assert_int_eq(symlink("/tmp/kms-should-not-exist", l), 0);
	ck_assert_int_ne(kms_write_file_excl(l, "x", 1, 0600), 0);
	ck_assert_int_ne(access("/tmp/kms-should-not-exist", F_OK), 0);
	free(p);
	free(l);
}
END_TEST

START_TEST(test_write_atomic_replaces_whole_file)
{
	char *p = kms_path_join(dir, "ca.crl");
	unsigned char *data;
	size_t len;

	ck_assert_int_eq(kms_write_file_atomic(p, "first version", 13, 0644), 0);
	ck_assert_int_eq(kms_write_file_atomic(p, "second", 6, 0644), 0);
	ck_assert_int_eq(kms_read_file(p, 100, &data, &len), 0);
	ck_assert_uint_eq(len, 6);
	ck_assert_str_eq((char *)data, "second");
	free(data);
	ck_assert_int_eq(kms_read_file(p, 3, &data, &len), KMS_ERR_TOOBIG);
	free(p);
}
END_TEST

START_TEST(test_read_secret_file_takes_first_line)
{
	char *p = tu_write(dir, "pw", "hunter2-but-longer\r\nsecond\n"), *s;

	ck_assert_int_eq(kms_read_secret_file(p, &s), 0);
	ck_assert_str_eq(s, "hunter2-but-longer");
	kms_secret_free(s);
	free(p);
	p = tu_write(dir, "empty", "\n");
	ck_assert_int_eq(kms_read_secret_file(p, &s), KMS_ERR_INVALID);
	free(p);
}
END_TEST

START_TEST(test_encodings_roundtrip_and_reject_garbage)
{
	const unsigned char bytes[] = { 0x00, 0x7f, 0x80, 0xff, 0x10 };
	char *h = kms_hex(bytes, sizeof(bytes)), *b;
	unsigned char *out;
	size_t n;

	ck_assert_str_eq(h, "007f80ff10");
	ck_assert_int_eq(kms_unhex("00:7F:80:ff:10", &out, &n), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_mem_eq(out, bytes, 5);
	free(out);
	ck_assert_int_ne(kms_unhex("abc", &out, &n), 0);
	ck_assert_int_ne(kms_unhex("zz", &out, &n), 0);
	b = kms_b64_encode(bytes, sizeof(bytes));
	ck_assert_int_eq(kms_b64_decode(b, strlen(b), &out, &n), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_mem_eq(out, bytes, 5);
	free(out);
	ck_assert_int_ne(kms_b64_decode("a$==", 4, &out, &n), 0);
	ck_assert_int_ne(kms_b64_decode("abc", 3, &out, &n), 0);
	free(h);
	free(b);
}
END_TEST

START_TEST(test_time_parse_forms)
{
	time_t t;
	char buf[32];

	ck_assert_int_eq(kms_time_parse("2026-11-25", &t), 0);
	ck_assert_str_eq(kms_time_format(t, buf, sizeof(buf)), "2026-11-25T00:00:00Z");
	ck_assert_int_eq(kms_time_parse("2026-11-25T13:14:15Z", &t), 0);
	ck_assert_str_eq(kms_time_format(t, buf, sizeof(buf)), "2026-11-25T13:14:15Z");
	ck_assert_int_eq(kms_time_parse("@86400", &t), 0);
	ck_assert_int_eq((long long)t, 86400);
	ck_assert_int_ne(kms_time_parse("yesterday", &t), 0);
	ck_assert_int_ne(kms_time_parse("2026-11-25T13:14:15+02", &t), 0);
}
END_TEST

START_TEST(test_random_passwords_are_long_and_distinct)
{
	char a[25], b[25];

	ck_assert_int_eq(kms_random_password(a, sizeof(a)), 0);
	ck_assert_int_eq(kms_random_password(b, sizeof(b)), 0);
	ck_assert_uint_eq(strlen(a), 24);
	ck_assert_str_ne(a, b);
	ck_assert_int_ne(kms_random_password(a, 10), 0);
}
END_TEST

START_TEST(test_sanitize_replaces_controls_and_truncates)
{
	char out[16];

	ck_assert_str_eq(kms_sanitize("a\r\nb\x1b[0m", 100, out, sizeof(out)), "a??b?[0m");
	ck_assert_str_eq(kms_sanitize("0123456789abcdefghij", 100, out, sizeof(out)), "0123456789ab...");
}
END_TEST

/* A sub-directory of the fixture's, mode, made now; malloc'd path. */
static char *
subdir(const char *name, mode_t mode)
{
	char *p = kms_path_join(dir, name);

	ck_assert_int_eq(mkdir(p, 0700), 0);
	ck_assert_int_eq(chmod(p, mode), 0);
	return p;
}

START_TEST(test_dir_open_checked_takes_only_the_requesters_own_directory)
{
	char *ok = subdir("mine", 0700), *ww = subdir("ww", 0777), *gw = subdir("gw", 0770);
	char *link = kms_path_join(dir, "link"), *via = NULL, *missing = kms_path_join(dir, "missing");
	char *dots = NULL;
	int fd = -1;

	/* The fixture's parents (/tmp: sticky) are fine; the directory is ours. */
	ck_assert_int_eq(chmod(dir, 0700), 0);
	ck_assert_msg(kms_dir_open_checked(ok, getuid(), (uid_t)-1, &fd) == 0, "%s", kms_last_error());
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(kms_dir_open_checked(ok, getuid() + 1, (uid_t)-1, &fd), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "not to the requester"));
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(kms_dir_open_checked(ww, getuid(), (uid_t)-1, &fd), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "writable by every user"));
	ck_assert_int_eq(kms_dir_open_checked(gw, getuid(), (uid_t)-1, &fd), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "writable by its group"));
	/* A link, as the directory or anywhere above it. */
	ck_assert_int_eq(symlink(ok, link), 0);
	ck_assert_int_eq(kms_dir_open_checked(link, getuid(), (uid_t)-1, &fd), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "symbolic link"));
	ck_assert_int_eq(mkdir((via = kms_path_join(ok, "sub")), 0700), 0);
	free(via);
	via = kms_path_join(link, "sub");
	ck_assert_int_eq(kms_dir_open_checked(via, getuid(), (uid_t)-1, &fd), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "\"link\" is a symbolic link"));
	/* Nothing is created. */
	ck_assert_int_eq(kms_dir_open_checked(missing, getuid(), (uid_t)-1, &fd), KMS_ERR_NOTFOUND);
	ck_assert_int_eq(access(missing, F_OK), -1);
	ck_assert_int_eq(kms_dir_open_checked("relative/dir", getuid(), (uid_t)-1, &fd), KMS_ERR_INVALID);
	dots = kms_path_join(ok, "../mine");
	ck_assert_int_eq(kms_dir_open_checked(dots, getuid(), (uid_t)-1, &fd), KMS_ERR_INVALID);
	ck_assert_int_eq(fd, -1);
	free(ok);
	free(ww);
	free(gw);
	free(link);
	free(via);
	free(missing);
	free(dots);
}
END_TEST

START_TEST(test_files_at_are_made_exclusively_and_read_without_links)
{
	char *d = subdir("d", 0700), *p, *q, *s = NULL;
	int fd = -1;

	ck_assert_int_eq(kms_dir_open_checked(d, getuid(), (uid_t)-1, &fd), 0);
	ck_assert_int_eq(kms_write_file_at_excl(fd, "share.txt", getuid(), "abc", 3, 0600), 0);
	ck_assert_int_eq(kms_write_file_at_excl(fd, "share.txt", getuid(), "abc", 3, 0600), KMS_ERR_EXISTS);
	ck_assert_int_eq(kms_write_file_at_excl(fd, "../x", getuid(), "abc", 3, 0600), KMS_ERR_INVALID);
	p = tu_write(d, "pass", "a long passphrase\nsecond line\n");
	ck_assert_int_eq(chmod(p, 0600), 0);
	ck_assert_int_eq(kms_read_secret_file_at(fd, "pass", getuid(), (uid_t)-1, &s), 0);
	ck_assert_str_eq(s, "a long passphrase");
	kms_secret_free(s);
	/* Another owner, a symbolic link (to /etc/shadow), a second name: refused. */
	ck_assert_int_eq(kms_read_secret_file_at(fd, "pass", getuid() + 1, (uid_t)-1, &s), KMS_ERR_PERM);
	ck_assert_ptr_null(s);
	q = kms_path_join(d, "shadow");
	ck_assert_int_eq(symlink("/etc/shadow", q), 0);
	ck_assert_int_eq(kms_read_secret_file_at(fd, "shadow", getuid(), (uid_t)-1, &s), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "symbolic link"));
	free(q);
	q = kms_path_join(d, "hard");
	ck_assert_int_eq(link(p, q), 0);
	ck_assert_int_eq(kms_read_secret_file_at(fd, "hard", getuid(), (uid_t)-1, &s), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "hard links"));
	ck_assert_int_eq(kms_read_secret_file_at(fd, "absent", getuid(), (uid_t)-1, &s), KMS_ERR_NOTFOUND);
	close(fd);
	free(p);
	free(q);
	free(d);
}
END_TEST

START_TEST(test_store_is_private_whatever_the_umask)
{
	char *path = kms_path_join(dir, "kms.db"), *wal = kms_path_join(dir, "kms.db-wal");
	struct kms_store *st = NULL;
	struct stat sb;
	mode_t old = umask(022);

	ck_assert_int_eq(kms_store_open(path, KMS_STORE_CREATE | KMS_STORE_PRIVATE, &st), 0);
	umask(old);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0600);
	ck_assert_int_eq(stat(wal, &sb), 0);
	ck_assert_uint_eq(sb.st_mode & 0777, 0600);
	kms_store_close(st);
	st = NULL;
	ck_assert_int_eq(chmod(path, 0640), 0);
	ck_assert_int_eq(kms_store_open(path, KMS_STORE_PRIVATE, &st), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "chmod 600"));
	ck_assert_ptr_null(st);
	/* Without the flag (kmsctl's offline recovery reads a copy): opened. */
	ck_assert_int_eq(kms_store_open(path, 0, &st), 0);
	kms_store_close(st);
	ck_assert_int_eq(kms_check_private(dir, 1), 0);
	ck_assert_int_eq(chmod(dir, 0750), 0);
	ck_assert_int_eq(kms_check_private(dir, 1), 0);
	ck_assert_int_eq(chmod(dir, 0755), 0);
	ck_assert_int_eq(kms_check_private(dir, 1), KMS_ERR_PERM);
	ck_assert_ptr_nonnull(strstr(kms_last_error(), "chmod g-w,o-rwx"));
	ck_assert_int_eq(chmod(dir, 0770), 0);
	ck_assert_int_eq(kms_check_private(dir, 1), KMS_ERR_PERM);
	ck_assert_int_eq(chmod(dir, 0700), 0);
	free(path);
	free(wal);
}
END_TEST

START_TEST(test_sanitize_replaces_bytes_over_0x7f_and_del)
{
	char out[32];

	/* UTF-8 and Latin-1 alike: a log line or header gets ASCII only. */
	ck_assert_str_eq(kms_sanitize("caf\xc3\xa9 \xff\x7f!", 100, out, sizeof(out)), "caf?? ?" "?!");
	ck_assert_str_eq(kms_sanitize(NULL, 5, out, sizeof(out)), "(null)");
	/* inlen bounds what is read; a NUL ends it. */
	ck_assert_str_eq(kms_sanitize("abcdef", 3, out, sizeof(out)), "abc");
	ck_assert_str_eq(kms_sanitize("ab\0cd", 5, out, sizeof(out)), "ab");
}
END_TEST

START_TEST(test_sanitize_new_cleans_every_byte_and_bounds_length)
{
	char *n;

	/* Exactly n bytes: an embedded NUL becomes '?', so nothing hides behind it. */
	n = kms_sanitize_new("a\0b\x80\tc", 6, 100);
	ck_assert_str_eq(n, "a?b??c");
	free(n);
	n = kms_sanitize_new("0123456789", 10, 10);
	ck_assert_str_eq(n, "0123456789");
	free(n);
	n = kms_sanitize_new("0123456789X", 11, 10);
	ck_assert_str_eq(n, "0123456...");
	ck_assert_uint_eq(strlen(n), 10);
	free(n);
	n = kms_sanitize_new(NULL, 4, 10);
	ck_assert_str_eq(n, "");
	free(n);
}
END_TEST

/* A valid address of exactly len characters with a local part of local characters. */
static void
make_address(char *out, size_t local, size_t len)
{
	size_t o, label = 0;

	memset(out, 'u', local);
	o = local;
	out[o++] = '@';
	while (o < len - 4) {
		if (label >= 60 && o < len - 5) {
			out[o++] = '.';
			label = 0;
			continue;
		}
		out[o++] = 'd';
		label++;
	}
	memcpy(out + o, ".org", 4);
	out[len] = '\0';
}

START_TEST(test_address_bound_is_254_with_local_part_64)
{
	char a[400];

	make_address(a, 64, 254);
	ck_assert_int_eq(kms_addr_valid(a), 1);
	make_address(a, 64, 255);
	ck_assert_int_eq(kms_addr_valid(a), 0);
	make_address(a, 10, 254);
	ck_assert_int_eq(kms_addr_valid(a), 1);
	make_address(a, 10, 255);
	ck_assert_int_eq(kms_addr_valid(a), 0);
	make_address(a, 65, 100);
	ck_assert_int_eq(kms_addr_valid(a), 0);
	make_address(a, 64, 100);
	ck_assert_int_eq(kms_addr_valid(a), 1);
	/* Far over the bound: refused without reading past it. */
	make_address(a, 64, 399);
	ck_assert_int_eq(kms_addr_valid(a), 0);
}
END_TEST

START_TEST(test_address_labels_at_most_63)
{
	char a[200];

	snprintf(a, sizeof(a), "u@%.*s.org", 63, "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd");
	ck_assert_int_eq(kms_addr_valid(a), 1);
	snprintf(a, sizeof(a), "u@%.*s.org", 64, "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd");
	ck_assert_int_eq(kms_addr_valid(a), 0);
}
END_TEST

START_TEST(test_address_forms_refused_and_accepted)
{
	const char *bad[] = {
		NULL, "", "no-at-sign", "a@b@example.org", "a b@example.org", "@example.org", "a@",
		"a@example.org,DNS:evil.example", "a@localhost", "\xc3\xbc@example.org", ".a@example.org",
		"a.@example.org", "a..b@example.org", "a@example..org", "a@-example.org", "a@example-.org",
		"a@example.org.", "a@.example.org", "a@example.org\n", "\"quoted\"@example.org", "a@[127.0.0.1]",
		"a<b>@example.org", "a@exa_mple.org",
	};
	const char *good[] = {
		"a@b.co", "o'brien+tag@mail.example-corp.org", "first.last@example.org", "X!#$%&*/=?^_`{|}~-@EXAMPLE.ORG",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(kms_addr_valid(bad[i]) == 0, "accepted %s", bad[i] ? bad[i] : "NULL");
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(kms_addr_valid(good[i]) == 1, "refused %s", good[i]);
}
END_TEST

START_TEST(test_buf_grows_and_stays_nul_terminated)
{
	struct kms_buf b;
	char chunk[1000];
	unsigned char *p;
	size_t len;

	kms_buf_init(&b, 1 << 20);
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(kms_buf_append(&b, chunk, sizeof(chunk)), 0);
	ck_assert_uint_eq(b.len, 100000);
	ck_assert_uint_eq(b.data[b.len], '\0');
	ck_assert_int_eq(kms_buf_appendf(&b, "%d-%s", 42, "end"), 0);
	ck_assert_str_eq((char *)b.data + 100000, "42-end");
	p = kms_buf_steal(&b, &len);
	ck_assert_uint_eq(len, 100006);
	ck_assert_ptr_null(b.data);
	ck_assert_uint_eq(b.len, 0);
	free(p);
	/* An empty buffer gives an empty string, not NULL. */
	p = kms_buf_steal(&b, &len);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(len, 0);
	ck_assert_str_eq((char *)p, "");
	free(p);
	kms_buf_free(&b);
}
END_TEST

START_TEST(test_buf_refuses_past_its_bound_and_keeps_contents)
{
	struct kms_buf b;

	kms_buf_init(&b, 10);
	ck_assert_int_eq(kms_buf_append(&b, "0123456789", 10), 0);        /* exactly the bound */
	ck_assert_int_eq(kms_buf_append(&b, "a", 1), KMS_ERR_TOOBIG);
	ck_assert_uint_eq(b.len, 10);
	ck_assert_str_eq((char *)b.data, "0123456789");
	ck_assert_int_eq(kms_buf_appendf(&b, "%s", "z"), KMS_ERR_TOOBIG);
	kms_buf_reset(&b);
	ck_assert_uint_eq(b.len, 0);
	ck_assert_int_eq(kms_buf_appendf(&b, "%s", "0123456789"), 0);
	ck_assert_int_eq(kms_buf_appendf(&b, "%s", "!"), KMS_ERR_TOOBIG);
	kms_buf_free(&b);
	kms_buf_free(NULL);
}
END_TEST

START_TEST(test_buf_size_arithmetic_cannot_overflow)
{
	struct kms_buf b;
	void *v = NULL;
	size_t cap = 0;

	kms_buf_init(&b, SIZE_MAX);
	ck_assert_int_eq(kms_buf_append(&b, "abc", 3), 0);
	/* len + n would wrap around: refused, not a tiny allocation. */
	ck_assert_int_eq(kms_buf_reserve(&b, SIZE_MAX - 1), KMS_ERR_TOOBIG);
	ck_assert_int_eq(kms_buf_reserve(&b, SIZE_MAX), KMS_ERR_TOOBIG);
	ck_assert_str_eq((char *)b.data, "abc");
	kms_buf_free(&b);
	/* need * elsize would wrap around. */
	ck_assert_int_eq(kms_array_reserve(&v, &cap, SIZE_MAX / 8 + 2, 16, SIZE_MAX), KMS_ERR_TOOBIG);
	ck_assert_ptr_null(v);
	ck_assert_uint_eq(cap, 0);
	ck_assert_int_eq(kms_array_reserve(&v, &cap, 5, 16, 4), KMS_ERR_TOOBIG);
	ck_assert_int_eq(kms_array_reserve(&v, &cap, 4, 16, 4), 0);
	ck_assert_uint_eq(cap, 4);
	ck_assert_int_eq(kms_array_reserve(&v, &cap, 100, 16, SIZE_MAX), 0);
	ck_assert_uint_ge(cap, 100);
	memset(v, 0, cap * 16);
	free(v);
}
END_TEST

START_TEST(test_secret_buf_wipes_on_reset)
{
	struct kms_buf b;

	kms_buf_init_secret(&b, 4096);
	ck_assert_int_eq(kms_buf_append(&b, "share-secret", 12), 0);
	for (int i = 0; i < 20; i++)         /* grows (moved by hand, old copy wiped) */
		ck_assert_int_eq(kms_buf_append(&b, "0123456789abcdef", 16), 0);
	ck_assert_int_eq(memcmp(b.data, "share-secret", 12), 0);
	kms_buf_reset(&b);
	for (size_t i = 0; i < 12 + 20 * 16; i++)
		ck_assert_uint_eq(b.data[i], 0);
	kms_buf_free(&b);
}
END_TEST

START_TEST(test_write_all_writes_everything_and_reports_a_closed_peer)
{
	int sv[2];
	char *p = kms_path_join(dir, "big");
	unsigned char *data = malloc(3 << 20), *back = NULL;
	size_t len;
	int fd;

	memset(data, 'q', 3 << 20);
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(kms_write_all(fd, data, 3 << 20), 0);
	close(fd);
	ck_assert_int_eq(kms_read_file(p, 3 << 20, &back, &len), 0);
	ck_assert_uint_eq(len, 3 << 20);
	ck_assert_int_eq(memcmp(back, data, len), 0);
	free(back);
	/* One byte over the bound: refused. */
	ck_assert_int_eq(kms_read_file(p, (3 << 20) - 1, &back, &len), KMS_ERR_TOOBIG);
	ck_assert_ptr_null(back);
	/* A socket whose peer is gone: an error, and no SIGPIPE killing the process. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	ck_assert_int_eq(kms_write_all(sv[0], data, 1 << 20), KMS_ERR_IO);
	close(sv[0]);
	free(data);
	free(p);
}
END_TEST

static Suite *
common_suite(void)
{
	Suite *s = suite_create("common");
	TCase *tc;

	tc = tcase_create("config");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_config_defaults_have_derived_paths);
	tcase_add_test(tc, test_config_good_file_sets_every_type);
	tcase_add_loop_test(tc, test_config_bad_file_names_file_line_and_key, 0,
	    (int)(sizeof(bad_configs) / sizeof(bad_configs[0])));
	tcase_add_test(tc, test_config_example_file_loads);
	tcase_add_test(tc, test_config_overlong_line_is_an_error);
	tcase_add_test(tc, test_config_missing_file_is_an_error);
	tcase_add_test(tc, test_config_parsers_reject_garbage);
	tcase_add_test(tc, test_split_list_trims_and_skips_empty);
	suite_add_tcase(s, tc);

	tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_store_creates_latest_schema_in_wal_mode);
	tcase_add_test(tc, test_store_migrates_old_version_keeping_data);
	tcase_add_test(tc, test_store_refuses_corrupt_file);
	tcase_add_test(tc, test_store_refuses_file_that_is_not_a_database);
	tcase_add_test(tc, test_store_refuses_newer_schema);
	tcase_add_test(tc, test_store_meta_roundtrip);
	suite_add_tcase(s, tc);

	tc = tcase_create("audit");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_audit_chain_verifies_when_untouched);
	tcase_add_test(tc, test_audit_chain_finds_changed_row);
	tcase_add_test(tc, test_audit_list_gives_the_newest_rows_oldest_first);
	tcase_add_test(tc, test_audit_chain_finds_deleted_row);
	tcase_add_test(tc, test_audit_chain_finds_inserted_row);
	tcase_add_test(tc, test_audit_chain_finds_truncated_tail);
	suite_add_tcase(s, tc);

	tc = tcase_create("protocol");
	tcase_add_test(tc, test_lines_split_and_joined_chunks);
	tcase_add_test(tc, test_lines_oversize_line_skipped_and_stream_recovers);
	tcase_add_test(tc, test_lines_line_at_exact_bound_is_accepted);
	tcase_add_test(tc, test_lines_stream_ending_inside_line_is_a_protocol_error);
	tcase_add_test(tc, test_reply_shapes);
	suite_add_tcase(s, tc);

	tc = tcase_create("files");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_write_excl_refuses_existing_and_symlink);
	tcase_add_test(tc, test_write_atomic_replaces_whole_file);
	tcase_add_test(tc, test_read_secret_file_takes_first_line);
	tcase_add_test(tc, test_dir_open_checked_takes_only_the_requesters_own_directory);
	tcase_add_test(tc, test_files_at_are_made_exclusively_and_read_without_links);
	tcase_add_test(tc, test_store_is_private_whatever_the_umask);
	tcase_add_test(tc, test_encodings_roundtrip_and_reject_garbage);
	tcase_add_test(tc, test_time_parse_forms);
	tcase_add_test(tc, test_random_passwords_are_long_and_distinct);
	tcase_add_test(tc, test_sanitize_replaces_controls_and_truncates);
	tcase_add_test(tc, test_write_all_writes_everything_and_reports_a_closed_peer);
	suite_add_tcase(s, tc);

	tc = tcase_create("text");
	tcase_add_test(tc, test_sanitize_replaces_bytes_over_0x7f_and_del);
	tcase_add_test(tc, test_sanitize_new_cleans_every_byte_and_bounds_length);
	tcase_add_test(tc, test_address_bound_is_254_with_local_part_64);
	tcase_add_test(tc, test_address_labels_at_most_63);
	tcase_add_test(tc, test_address_forms_refused_and_accepted);
	suite_add_tcase(s, tc);

	tc = tcase_create("buffer");
	tcase_add_test(tc, test_buf_grows_and_stays_nul_terminated);
	tcase_add_test(tc, test_buf_refuses_past_its_bound_and_keeps_contents);
	tcase_add_test(tc, test_buf_size_arithmetic_cannot_overflow);
	tcase_add_test(tc, test_secret_buf_wipes_on_reset);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(common_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
