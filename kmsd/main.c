/*
 * main.c - kmsd: the smime-kms daemon.  One process holds the CA, key
 * escrow, the CRL distribution point and the milter.
 *
 * Start-up, in order: load and check the config; fork into the background
 * (the parent waits until the child is ready, or prints why it is not);
 * lock memory for keys and turn core dumps off; make the state directory;
 * open the sockets that may need privilege (control, milter, HTTP); write
 * the pid file; drop to [kmsd] user/group; open and check the store; start
 * the threads.  The main thread then handles signals: SIGHUP reloads the
 * config (a bad one is refused, the old one kept), SIGTERM/SIGINT stop
 * cleanly (running control commands finish, the store is closed).
 *
 * libmilter's own signal thread waits for SIGHUP/SIGTERM/SIGINT with
 * sigwait() and stops the milter on any of them.  So that SIGHUP means
 * reload, every thread but this one blocks those signals and this thread,
 * the thread group leader, keeps them unblocked with handlers: Linux gives
 * a process-directed signal to the leader first when it accepts it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>
#include <openssl/crypto.h>

#include "publish/publish.h"
#include "kmsd/kmsd.h"
#include "kmsd/server.h"
#include "milter/milter.h"

#define SECURE_HEAP_SIZE (2 * 1024 * 1024)

/* Our part of the process state: kmsd_state.main (kmsd/state.c). */
#define M kmsd_state.main

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: kmsd [-f] [-c FILE]          run the daemon (-f: foreground, log to stderr too)\n"
	    "       kmsd -n [-c FILE]            check the configuration and exit\n"
	    "       kmsd -t [-c FILE] [--trust PEM]... [--intermediates PEM]... [--crl FILE]... [--fetch]\n"
	    "               [--out DIR] MESSAGE...\n"
	    "                                    check S/MIME signatures of message files offline\n"
	    "       kmsd --schema                print every configuration key with its default\n"
	    "       kmsd -V                      print the version\n"
	    "Without -c, kmsd runs on built-in defaults with its state in ./kmsd-state.\n"
	    "See kmsd(8) and kmsd.conf(5).\n");
}

static void
on_signal(int sig)
{
	int saved = errno;
	char c = (char)sig;

	if (sig == SIGHUP)
		M.got_hup = 1;
	else
		M.got_term = 1;
	if (write(M.sig_pipe[1], &c, 1) < 0) {
		/* The pipe is full: a wake-up is already pending. */
	}
	errno = saved;
}

/* Report a fatal start-up error to the waiting parent (or stderr) and exit. */
static void __attribute__((noreturn))
die(const char *what)
{
	const char *detail = kms_last_error();
	char msg[1200];

	snprintf(msg, sizeof(msg), "kmsd: %s%s%s\n", what, detail[0] ? ": " : "", detail);
	kms_log(KMS_LOG_ERR, "%s%s%s", what, detail[0] ? ": " : "", detail);
	if (M.ready_fd >= 0) {
		if (write(M.ready_fd, msg, strlen(msg)) < 0) {
			/* The parent is gone; syslog has it. */
		}
	} else {
		fputs(msg, stderr);
	}
	exit(1);
}

/*
 * Fork into the background.  The parent stays until the child writes
 * "OK" (exit 0) or an error (printed, exit 1) to the pipe.
 */
static void
daemonize(void)
{
	int p[2], fd;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) != 0) {
		perror("kmsd: pipe");
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		perror("kmsd: fork");
		exit(1);
	}
	if (pid > 0) {
		char buf[1200];
		size_t n = 0;
		ssize_t r;

		close(p[1]);
		while (n < sizeof(buf) - 1 && (r = read(p[0], buf + n, sizeof(buf) - 1 - n)) != 0) {
			if (r < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			n += (size_t)r;
		}
		buf[n] = '\0';
		if (strcmp(buf, "OK\n") == 0)
			exit(0);
		fputs(n ? buf : "kmsd: the daemon exited during start-up; see the system log\n", stderr);
		exit(1);
	}
	close(p[0]);
	M.ready_fd = p[1];
	if (setsid() < 0)
		die("setsid failed");
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
}

struct ids {
	uid_t uid;          /* -1: keep */
	gid_t gid;
	int drop;
};

static void
resolve_ids(const struct kms_config *cfg, struct ids *ids)
{
	ids->uid = (uid_t)-1;
	ids->gid = (gid_t)-1;
	ids->drop = 0;
	if (cfg->kmsd.user[0] != '\0') {
		struct passwd *pw = getpwnam(cfg->kmsd.user);

		if (pw == NULL) {
			kms_fail(KMS_ERR_CONFIG, "[kmsd] user \"%s\" does not exist", cfg->kmsd.user);
			die("cannot start");
		}
		if (geteuid() == 0) {
			ids->uid = pw->pw_uid;
			ids->gid = pw->pw_gid;
			ids->drop = pw->pw_uid != 0;
		} else if (pw->pw_uid != geteuid()) {
			kms_log(KMS_LOG_WARNING, "not started as root: cannot switch to user %s; running as uid %u",
			    cfg->kmsd.user, (unsigned)geteuid());
		}
	}
	if (cfg->kmsd.group[0] != '\0') {
		struct group *gr = getgrnam(cfg->kmsd.group);

		if (gr == NULL) {
			kms_fail(KMS_ERR_CONFIG, "[kmsd] group \"%s\" does not exist", cfg->kmsd.group);
			die("cannot start");
		}
		ids->gid = gr->gr_gid;
	}
}

static void
drop_privileges(const struct kms_config *cfg, const struct ids *ids)
{
	if (!ids->drop)
		return;
	if (initgroups(cfg->kmsd.user, ids->gid) != 0 || setgid(ids->gid) != 0 || setuid(ids->uid) != 0) {
		kms_fail(KMS_ERR_PERM, "cannot switch to user %s: %s", cfg->kmsd.user, strerror(errno));
		die("cannot start");
	}
	if (setuid(0) == 0) {
		kms_fail(KMS_ERR_PERM, "could regain root after dropping privileges");
		die("cannot start");
	}
	kms_log(KMS_LOG_INFO, "running as %s (uid %u, gid %u)", cfg->kmsd.user, (unsigned)ids->uid, (unsigned)ids->gid);
}

static void
write_pid_file(const char *path)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (kms_write_file_atomic(path, buf, strlen(buf), 0644) != 0)
		die("cannot write the pid file");
}

/* The milter's view of kmsd: the environment, the index, the store. */
static void *
milter_settings_get(struct mlt_view *view)
{
	struct kmsd_env *env = kmsd_env_get();

	if (env == NULL)
		return NULL;
	view->cfg = env->cfg;
	view->trust = env->trust;
	view->inter = env->inter;
	view->trust_gen = env->trust_gen;
	return env;
}

static void
milter_settings_put(void *handle)
{
	kmsd_env_put(handle);
}

static int
milter_find_cert(void *arg, const X509_NAME *issuer, const ASN1_INTEGER *serial,
    const ASN1_OCTET_STRING *skid, X509 **out)
{
	(void)arg;
	return kmsd_find_cert(issuer, serial, skid, out);
}

/*
 * Unknown revocation status in mail: queue the distribution points, and
 * let external CRLs waiting for this chain's CAs be validated; never wait.
 */
static struct ca_revidx *
milter_rev_unknown(void *arg, STACK_OF(X509) *chain, int depth, time_t *since)
{
	(void)arg;
	kmsd_sync_offer(chain);
	*since = kmsd_dp_offer(chain, depth);
	return NULL;
}

static const struct mlt_host milter_host = {
	.settings_get = milter_settings_get,
	.settings_put = milter_settings_put,
	.revidx_get = kmsd_revidx_get,
	.find_cert = milter_find_cert,
	.find_cert_arg = NULL,
	.rev_unknown = milter_rev_unknown,
	.rev_unknown_arg = NULL,
};

/* Open the milter socket now, while we may still hold privilege. */
static void
open_milter_socket(const struct kms_config *cfg, const struct ids *ids)
{
	const char *conn = cfg->kmsd.milter_socket;

	if (mlt_milter_register(&milter_host) != 0)
		die("cannot register the milter");
	if (smfi_setconn((char *)conn) != MI_SUCCESS) {
		kms_fail(KMS_ERR_CONFIG, "libmilter refuses milter_socket %s", conn);
		die("cannot start");
	}
	if (smfi_opensocket(1) != MI_SUCCESS) {
		kms_fail(KMS_ERR_IO, "cannot open milter socket %s (in use, or no permission?)", conn);
		die("cannot start");
	}
	if (strncmp(conn, "unix:", 5) == 0 || strncmp(conn, "local:", 6) == 0) {
		const char *path = strchr(conn, ':') + 1;

		if (chown(path, ids->uid, ids->gid) != 0 && (ids->uid != (uid_t)-1 || ids->gid != (gid_t)-1))
			kms_log(KMS_LOG_WARNING, "chown %s: %s", path, strerror(errno));
		if (chmod(path, (mode_t)cfg->kmsd.milter_socket_mode) != 0)
			kms_log(KMS_LOG_WARNING, "chmod %s: %s", path, strerror(errno));
	}
}

static void *
milter_thread(void *arg)
{
	int r;

	(void)arg;
	r = smfi_main();
	if (r != MI_SUCCESS)
		kms_log(KMS_LOG_ERR, "milter: the listener stopped with an error");
	M.milter_exited = 1;
	if (write(M.sig_pipe[1], "m", 1) < 0) {
		/* a wake-up is pending anyway */
	}
	return NULL;
}

static void
on_wake(int sig)
{
	(void)sig;
}

static void *
smfi_stop_thread(void *arg)
{
	(void)arg;
	smfi_stop();
	return NULL;
}

/*
 * Stop libmilter's listener.  smfi_stop() waits for a lock that the
 * listener holds while it polls (seconds at a time), so it runs in its own
 * thread while this one interrupts the poll with a signal (no SA_RESTART),
 * repeated in case one lands just before the poll starts.
 */
static void
stop_milter(pthread_t mt)
{
	struct sigaction sa;
	pthread_t st;
	int have_st;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_wake;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR2, &sa, NULL);
	have_st = pthread_create(&st, NULL, smfi_stop_thread, NULL) == 0;
	if (!have_st)
		smfi_stop();
	for (int i = 0; i < 200 && !M.milter_exited; i++) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };

		pthread_kill(mt, SIGUSR2);
		nanosleep(&ts, NULL);
	}
	pthread_join(mt, NULL);
	if (have_st)
		pthread_join(st, NULL);
	kms_log(KMS_LOG_DEBUG, "milter stopped");
}

static void
block_signals(int how)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(how, &set, NULL);
}

static void
install_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
}

/* What run() sets up and tears down. */
struct run_ctx {
	const char *config_path;
	struct kms_config *cfg;
	struct ids ids;
	int ctl_fd, http_fd;
	struct kms_store *st;
	struct pub_http_server *http;
	pthread_t milter;
};

/* As root (maybe): secure heap, no core dumps, signals, the sockets and pid file; then drop privileges. */
static void
start_privileged(struct run_ctx *r)
{
	struct kms_config *cfg = r->cfg;

	if (kms_secmem_init(SECURE_HEAP_SIZE) != 0)
		kms_log(KMS_LOG_WARNING, "%s; private keys will use ordinary memory", kms_last_error());
	if (kms_disable_core_dumps() != 0)
		die("cannot disable core dumps");
	if (pipe2(M.sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
		die("cannot make the signal pipe");
	install_handlers();
	/* Threads created from here on inherit a mask without HUP/TERM/INT. */
	block_signals(SIG_BLOCK);

	resolve_ids(cfg, &r->ids);
	/* What kmsd makes is its own unless it says otherwise (published files, sockets). */
	umask(077);
	if (kms_mkdir_p(cfg->kmsd.state_dir, 0750) != 0)
		die("cannot make the state directory");
	if (kms_check_private(cfg->kmsd.state_dir, 1) != 0)
		die("unsafe state directory");
	if (r->ids.drop && chown(cfg->kmsd.state_dir, r->ids.uid, r->ids.gid) != 0)
		die("cannot give the state directory to the kmsd user");
	if (kmsd_server_listen(cfg->kmsd.control_socket, r->ids.drop ? r->ids.uid : (uid_t)-1, r->ids.gid,
	    &r->ctl_fd) != 0)
		die("cannot open the control socket");
	open_milter_socket(cfg, &r->ids);
	if (cfg->http.listen[0] != '\0' && pub_http_listen(cfg->http.listen, &r->http_fd) != 0)
		die("cannot open the HTTP distribution point");
	write_pid_file(cfg->kmsd.pid_file);
	drop_privileges(cfg, &r->ids);
	if (r->ids.drop)
		kms_disable_core_dumps();       /* setuid resets the dumpable flag */
}

/* As the kmsd user: the store, the runtime, then every service thread. */
static void
start_services(struct run_ctx *r)
{
	struct kms_config *cfg = r->cfg;
	char *dbpath;
	int rc;

	dbpath = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE);
	if (dbpath == NULL)
		die("out of memory");
	rc = kms_store_open(dbpath, KMS_STORE_CREATE | KMS_STORE_CHECK | KMS_STORE_PRIVATE, &r->st);
	free(dbpath);
	if (rc != 0)
		die("cannot open the store");
	if (kmsd_runtime_start(kms_config_ref(cfg), r->st) != 0)
		die("cannot start");
	if (cfg->http.listen[0] != '\0' && kmsd_http_start(r->http_fd, &r->http) != 0)
		die("cannot start the HTTP distribution point");
	if (kmsd_revidx_rebuild(r->st) != 0)
		kms_log(KMS_LOG_ERR, "revocation index: %s", kms_last_error());
	/* Shares and recovered keys lived only in the memory of a previous run. */
	kmsd_recovery_abort_all(r->st, NULL);
	kmsd_periodic(r->st, time(NULL));
	/*
	 * CRL sources and the distribution point fetcher before the milter:
	 * the first message sees their kept copies, and an unknown status
	 * in it is handed to a running fetcher (on_revocation_unknown =
	 * tempfail holds it only while a fetch is pending).
	 */
	if (kmsd_sync_start() != 0)
		kms_log(KMS_LOG_ERR, "CRL synchronisation: %s", kms_last_error());
	if (kmsd_dp_start() != 0)
		kms_log(KMS_LOG_ERR, "CRL distribution point fetching: %s", kms_last_error());
	if (kmsd_server_start(r->ctl_fd, cfg->kmsd.control_socket) != 0)
		die("cannot start the control server");
	if (pthread_create(&r->milter, NULL, milter_thread, NULL) != 0) {
		kms_fail(KMS_ERR_IO, "pthread_create");
		die("cannot start the milter");
	}
	M.milter_running = 1;
	if (kmsd_ldap_start(cfg, r->st) != 0)
		kms_log(KMS_LOG_ERR, "LDAP directory: %s", kms_last_error());
}

/* Tell a waiting parent (kmsd without -f) that we are up. */
static void
report_ready(void)
{
	if (M.ready_fd >= 0) {
		if (write(M.ready_fd, "OK\n", 3) < 0) {
			/* the parent is gone */
		}
		close(M.ready_fd);
		M.ready_fd = -1;
	}
}

/* The directory after a reload: the thread follows the config now in force. */
static void
reload_ldap(struct kms_store *st)
{
	struct kmsd_env *env = kmsd_env_get();

	if (kmsd_ldap_reload(env->cfg, st) != 0)
		kms_log(KMS_LOG_ERR, "LDAP directory: %s", kms_last_error());
	kmsd_env_put(env);
}

/* Signals and the once-a-second timer until SIGTERM/SIGINT: 0, or 1 when the milter died. */
static int
main_loop(struct run_ctx *r)
{
	time_t last_tick = 0;

	while (!M.got_term) {
		struct pollfd pfd = { M.sig_pipe[0], POLLIN, 0 };
		char buf[64];
		time_t now;

		if (poll(&pfd, 1, 1000) > 0) {
			while (read(M.sig_pipe[0], buf, sizeof(buf)) > 0)
				;
		}
		if (M.got_hup) {
			M.got_hup = 0;
			kms_log(KMS_LOG_INFO, "SIGHUP: reloading %s", r->config_path ? r->config_path : "built-in defaults");
			if (kmsd_reload(r->config_path) != 0)
				kms_log(KMS_LOG_ERR, "reload refused, the running configuration is kept: %s", kms_last_error());
			else
				kms_log(KMS_LOG_INFO, "configuration reloaded");
			reload_ldap(r->st);
			kmsd_dp_reload();
			kmsd_sync_refresh();
		}
		if (M.milter_exited) {
			kms_log(KMS_LOG_ERR, "the milter listener stopped; shutting down so that the service manager can restart kmsd");
			return 1;
		}
		now = time(NULL);
		if (now != last_tick) {
			last_tick = now;
			kmsd_periodic(r->st, now);
		}
	}
	return 0;
}

/* In the reverse order of start-up: running commands finish, secrets are wiped, the store closes. */
static void
stop_services(struct run_ctx *r)
{
	kms_log(KMS_LOG_INFO, "shutting down");
	block_signals(SIG_BLOCK);
	kmsd_server_stop(30);
	kms_log(KMS_LOG_DEBUG, "control server stopped");
	kmsd_dp_stop();
	kmsd_sync_stop();
	kms_log(KMS_LOG_DEBUG, "CRL sync stopped");
	kmsd_ldap_stop();
	if (M.milter_running)
		stop_milter(r->milter);
	kmsd_http_stop(r->http);
	kms_log(KMS_LOG_DEBUG, "HTTP server stopped");
	kmsd_ocsp_stop();
	kmsd_audit_stop();
	kmsd_recovery_abort_all(r->st, "kmsd stopped: open requests failed, their shares and keys wiped");
	kmsd_runtime_stop();
	kms_store_close(r->st);
	unlink(r->cfg->kmsd.pid_file);
	kms_log(KMS_LOG_INFO, "stopped");
}

static int
run(const char *config_path, struct kms_config *cfg)
{
	struct run_ctx r = { .config_path = config_path, .cfg = cfg, .ctl_fd = -1, .http_fd = -1 };
	int exit_code;

	start_privileged(&r);
	start_services(&r);
	block_signals(SIG_UNBLOCK);
	kms_log(KMS_LOG_INFO, "kmsd %s started: control %s, milter %s%s%s, config %s", PACKAGE_VERSION,
	    cfg->kmsd.control_socket, cfg->kmsd.milter_socket, cfg->http.listen[0] ? ", http " : "",
	    cfg->http.listen, config_path ? config_path : "built-in defaults");
	report_ready();
	exit_code = main_loop(&r);
	stop_services(&r);
	return exit_code;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "check", no_argument, NULL, 'n' },
		{ "schema", no_argument, NULL, 'S' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL;
	struct kms_config *cfg;
	int foreground = 0, check = 0, c, rc;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-t") == 0)
			return mlt_offline_main(argc, argv);
		if (strcmp(argv[i], "--") == 0)
			break;
	}
	while ((c = getopt_long(argc, argv, "c:fnVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 'f': foreground = 1; break;
		case 'n': check = 1; break;
		case 'S': kms_config_dump_schema(stdout); return 0;
		case 'V': printf("kmsd (smime-kms) %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (kms_config_load(config_path, &cfg) != 0) {
		fprintf(stderr, "kmsd: %s\n", kms_last_error());
		return 1;
	}
	if (check) {
		struct pol_roles *roles = NULL;

		rc = pol_roles_compile(cfg, geteuid(), &roles);
		pol_roles_free(roles);
		if (rc != 0) {
			fprintf(stderr, "kmsd: %s: %s\n", config_path ? config_path : "built-in defaults", kms_last_error());
			kms_config_unref(cfg);
			return 1;
		}
		printf("kmsd: configuration %s is valid\n", config_path ? config_path : "(built-in defaults)");
		kms_config_unref(cfg);
		return 0;
	}
	kms_log_open("kmsd", (int)cfg->kmsd.syslog_facility, foreground, (int)cfg->kmsd.log_level);
	if (!foreground)
		daemonize();
	rc = run(config_path, cfg);
	kms_config_unref(cfg);
	return rc;
}
