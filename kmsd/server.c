/*
 * server.c - the control socket: JSON lines over a Unix stream socket.
 *
 * One listener thread accepts; each client gets its own thread (at most
 * [kmsd] max_control_clients) and its own store connection.  Every request
 * is read within the 1 MiB bound, parsed with jansson, checked against the
 * credentials the kernel attached to the bytes (SCM_CREDENTIALS on every
 * read, not only SO_PEERCRED at connect), authorised by policy, run,
 * written to the audit trail, and answered.  Bad input gets a clear error
 * reply and the connection keeps working.
 *
 * Entry points: kmsd_server_start(), kmsd_server_stop().
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kmsd/commands.h"
#include "kmsd/kmsd.h"
#include "kmsd/server.h"

struct kmsd_client {
	int fd;
	struct ucred peer;          /* SO_PEERCRED at connect */
	struct kms_store *st;       /* opened on first use */
	pthread_t thread;
	struct kmsd_client *next;
	int done;
};

/* Our part of the process state: kmsd_state.srv (kmsd/state.c). */
#define S kmsd_state.srv

/* ------------------------------------------------------------------ socket */

int
kmsd_server_listen(const char *path, uid_t owner, gid_t group, int *fd_out)
{
	struct sockaddr_un sa;
	int fd, rc, one = 1;

	*fd_out = -1;
	if (strlen(path) >= sizeof(sa.sun_path))
		return kms_fail(KMS_ERR_CONFIG, "control socket path too long: %s", path);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1);

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kms_fail(KMS_ERR_IO, "socket: %s", strerror(errno));
	/* A live socket means another kmsd runs here; a dead one is stale. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		return kms_fail(KMS_ERR_EXISTS, "another kmsd is already listening on %s", path);
	}
	close(fd);
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kms_fail(KMS_ERR_IO, "socket: %s", strerror(errno));
	/* Accepted sockets inherit this: the kernel attaches credentials to every write. */
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) {
		rc = kms_fail(KMS_ERR_IO, "SO_PASSCRED: %s", strerror(errno));
		goto fail;
	}
	{
		mode_t old = umask(0117);

		rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
		umask(old);
	}
	if (rc != 0) {
		rc = kms_fail(KMS_ERR_IO, "bind %s: %s", path, strerror(errno));
		goto fail;
	}
	if (chown(path, owner, group) != 0 && (owner != (uid_t)-1 || group != (gid_t)-1)) {
		rc = kms_fail(KMS_ERR_IO, "chown %s: %s", path, strerror(errno));
		goto fail;
	}
	if (chmod(path, 0660) != 0) {
		rc = kms_fail(KMS_ERR_IO, "chmod %s: %s", path, strerror(errno));
		goto fail;
	}
	if (listen(fd, 64) != 0) {
		rc = kms_fail(KMS_ERR_IO, "listen %s: %s", path, strerror(errno));
		goto fail;
	}
	*fd_out = fd;
	return 0;
fail:
	close(fd);
	unlink(path);
	return rc;
}

/* ----------------------------------------------------------------- reading */

struct cred_reader {
	struct kmsd_client *c;
	int mismatch;               /* bytes came from someone other than the peer */
	int in_request;             /* a request's first byte has come */
	int timed_out;              /* 1 idle, 2 inside a request */
	struct timespec deadline;   /* CLOCK_MONOTONIC: of the idle wait, then of the whole request */
	long request_ms;
	uid_t last_uid;
	gid_t last_gid;
	pid_t last_pid;
};

static void
deadline_in(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static long
ms_until(const struct timespec *ts)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)(ts->tv_sec - now.tv_sec) * 1000 + (ts->tv_nsec - now.tv_nsec) / 1000000L;
}

static ssize_t
cred_read(void *ctx, char *buf, size_t n)
{
	struct cred_reader *cr = ctx;
	struct iovec iov = { buf, n };
	union {
		char buf[CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} cbuf;
	struct msghdr msg;
	struct cmsghdr *cm;
	ssize_t r;

	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf.buf;
	msg.msg_controllen = sizeof(cbuf.buf);
	/* One deadline for the whole wait, not per read: a byte every few seconds does not extend it. */
	for (;;) {
		struct pollfd pfd = { cr->c->fd, POLLIN, 0 };
		long ms = ms_until(&cr->deadline);
		int p;

		if (ms <= 0) {
			cr->timed_out = cr->in_request ? 2 : 1;
			return KMS_ERR_TIMEOUT;
		}
		p = poll(&pfd, 1, (int)(ms > INT_MAX ? INT_MAX : ms));
		if (p > 0)
			break;
		if (p < 0 && errno != EINTR)
			return KMS_ERR_IO;
	}
	do
		r = recvmsg(cr->c->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? KMS_ERR_TIMEOUT : KMS_ERR_IO;
	if (r == 0)
		return 0;
	if (!cr->in_request) {
		cr->in_request = 1;
		deadline_in(&cr->deadline, cr->request_ms);
	}
	for (cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
			struct ucred uc;

			memcpy(&uc, CMSG_DATA(cm), sizeof(uc));
			cr->last_uid = uc.uid;
			cr->last_gid = uc.gid;
			cr->last_pid = uc.pid;
			if (uc.uid != cr->c->peer.uid || uc.gid != cr->c->peer.gid)
				cr->mismatch = 1;
		} else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			/* Nobody should pass us descriptors: close them. */
			int *fds = (int *)CMSG_DATA(cm);
			size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < nfd; i++)
				close(fds[i]);
			cr->mismatch = 1;
		}
	}
	return r;
}

/* --------------------------------------------------------------- requests */

static void
user_name(uid_t uid, char *buf, size_t len)
{
	struct passwd pw, *pwp = NULL;
	char tmp[4096];

	if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &pwp) == 0 && pwp != NULL)
		snprintf(buf, len, "%s", pw.pw_name);
	else
		snprintf(buf, len, "%u", (unsigned)uid);
}

int
kmsd_audit_record(struct kmsd_req *req, const char *outcome)
{
	struct kms_audit_rec rec = {
		.time = time(NULL), .uid = req->uid, .user = req->user, .role = req->role,
		.cmd = req->cmd, .target = req->target, .outcome = outcome,
		.request_id = req->request_id[0] ? req->request_id : NULL,
		.detail = req->detail[0] ? req->detail : NULL,
	};
	int rc;

	if (req->st == NULL)
		return kms_fail(KMS_ERR_STATE, "no store");
	rc = kms_audit_append(req->st, &rec);
	if (rc == 0)
		req->audited = 1;
	return rc;
}

/* The audit row and log line of a finished request (unless the handler wrote the row already). */
static void
audit(struct kmsd_req *req, const char *outcome)
{
	char clean[KMSD_ERR_TEXT];

	if (!req->audited && req->st == NULL) {
		kms_log(KMS_LOG_ERR, "audit: no store to record %s by %s", req->cmd, req->user);
	} else if (!req->audited && kmsd_audit_record(req, outcome) != 0) {
		kms_log(KMS_LOG_ERR, "audit: cannot record %s by %s: %s", req->cmd, req->user, kms_last_error());
	}
	kms_log(strcmp(outcome, "ok") == 0 ? KMS_LOG_INFO : KMS_LOG_WARNING,
	    "control: %s by %s (uid %u, role %s) target=%s: %s", req->cmd, req->user, (unsigned)req->uid,
	    req->role[0] ? req->role : "none", kms_sanitize(req->target, sizeof(req->target), clean, sizeof(clean)),
	    outcome);
	/* [audit] checkpoint_rows is counted here; the timer sees to checkpoint_interval. */
	kmsd_audit_tick(req->st, time(NULL));
}

static int
open_store(struct kmsd_client *c, struct kmsd_env *env)
{
	char *path;
	int rc;

	if (c->st != NULL)
		return 0;
	path = kms_path_join(env->cfg->kmsd.state_dir, KMS_STORE_FILE);
	if (path == NULL)
		return KMS_ERR_NOMEM;
	rc = kms_store_open(path, 0, &c->st);
	free(path);
	return rc;
}

/* Handle one request line; returns the reply (never NULL unless out of memory). */
static json_t *
handle_line(struct kmsd_client *c, struct cred_reader *cr, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *root, *reply = NULL, *jcmd, *args;
	const struct pol_cmd *pc;
	struct kmsd_req req;
	struct kmsd_env *env;
	unsigned roles;
	char clean[64];
	int rc;

	memset(&req, 0, sizeof(req));
	root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		kms_log(KMS_LOG_WARNING, "control: malformed JSON from uid %u: %s",
		    (unsigned)c->peer.uid, jerr.text);
		return kms_reply_error("bad_request", "malformed JSON at column %d: %s", jerr.column, jerr.text);
	}
	jcmd = json_object_get(root, "cmd");
	args = json_object_get(root, "args");
	if (!json_is_object(root) || !json_is_string(jcmd) || (args != NULL && !json_is_object(args))) {
		json_decref(root);
		return kms_reply_error("bad_request", "a request is {\"cmd\": NAME, \"args\": {...}}");
	}
	env = kmsd_env_get();
	req.cmd = json_string_value(jcmd);
	req.args = args ? args : json_object();
	if (args == NULL)
		json_object_set_new(root, "args", req.args);
	req.uid = cr->last_uid;
	req.gid = cr->last_gid;
	req.pid = cr->last_pid;
	req.env = env;
	user_name(req.uid, req.user, sizeof(req.user));
	req.role = "";

	if ((rc = open_store(c, env)) != 0) {
		kms_log(KMS_LOG_ERR, "control: cannot open the store: %s", kms_last_error());
		reply = kms_reply_error("internal", "kmsd cannot open its store; see its log");
		goto out;
	}
	req.st = c->st;
	pc = pol_cmd_find(req.cmd);
	if (pc == NULL || kmsd_handler_find(req.cmd) == NULL) {
		kms_sanitize(req.cmd, 64, clean, sizeof(clean));
		snprintf(req.target, sizeof(req.target), "%s", clean);
		req.cmd = "unknown";
		reply = kms_reply_error("unknown_command", "unknown command \"%s\"", clean);
		audit(&req, "unknown_command");
		goto out;
	}
	/* Roles are computed for every request, from the credentials of its bytes. */
	roles = pol_roles_of(env->roles, req.uid, req.gid);
	if (pol_authorize(pc, roles, &req.role) != 0) {
		char need[64] = "";

		for (unsigned b = 1; b <= POL_ROLE_AUDITOR; b <<= 1)
			if (pc->roles & b)
				snprintf(need + strlen(need), sizeof(need) - strlen(need), "%s%s",
				    need[0] ? " or " : "", pol_role_name(b));
		kmsd_req_target_from_args(&req);
		reply = kms_reply_error("forbidden", "%s (uid %u) may not run %s: it needs the %s role",
		    req.user, (unsigned)req.uid, req.cmd, need);
		audit(&req, "forbidden");
		goto out;
	}
	req.roles = roles;
	reply = kmsd_handler_find(req.cmd)(&req);
	if (reply == NULL)
		reply = kms_reply_error("internal", "out of memory");
	{
		json_t *err = json_object_get(reply, "error");
		const char *code = err ? json_string_value(json_object_get(err, "code")) : "ok";

		audit(&req, code ? code : "error");
	}
out:
	json_decref(root);
	kmsd_env_put(env);
	return reply;
}

static void *
client_main(void *arg)
{
	struct kmsd_client *c = arg;
	struct cred_reader cr = { .c = c, .last_uid = c->peer.uid, .last_gid = c->peer.gid, .last_pid = c->peer.pid };
	struct kms_lines lb;
	struct kmsd_env *env = kmsd_env_get();
	long idle_ms = (long)env->cfg->kmsd.control_idle_timeout * 1000;
	struct timeval tv = { .tv_sec = (time_t)env->cfg->kmsd.control_request_timeout };

	cr.request_ms = (long)env->cfg->kmsd.control_request_timeout * 1000;
	kmsd_env_put(env);
	/* A client that does not take its reply is dropped too. */
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	kms_lines_init(&lb, KMS_PROTO_MAX_REQUEST);
	for (;;) {
		char *line;
		size_t len;
		json_t *reply;
		int rc;

		/* Bytes of the next request already read count as its start. */
		cr.in_request = lb.b.len > lb.start;
		deadline_in(&cr.deadline, cr.in_request ? cr.request_ms : idle_ms);
		rc = kms_lines_read(&lb, cred_read, &cr, &line, &len);
		if (rc == 0)
			break;
		if (rc == KMS_ERR_TIMEOUT) {
			kms_log(cr.timed_out == 2 ? KMS_LOG_WARNING : KMS_LOG_DEBUG, "control: uid %u %s: closed",
			    (unsigned)c->peer.uid, cr.timed_out == 2 ? "sent no whole request in time" : "was idle too long");
			break;
		}
		if (cr.mismatch) {
			json_t *e = kms_reply_error("forbidden", "credentials changed on this connection");

			kms_log(KMS_LOG_WARNING, "control: bytes from uid %u on a connection of uid %u: closed",
			    (unsigned)cr.last_uid, (unsigned)c->peer.uid);
			kms_send_json(c->fd, e);
			json_decref(e);
			break;
		}
		if (rc == KMS_ERR_TOOBIG) {
			json_t *e = kms_reply_error("too_large", "request over %d bytes refused", KMS_PROTO_MAX_REQUEST);

			kms_log(KMS_LOG_WARNING, "control: oversize request from uid %u refused", (unsigned)c->peer.uid);
			rc = kms_send_json(c->fd, e);
			json_decref(e);
			if (rc != 0)
				break;
			continue;
		}
		if (rc < 0) {
			if (rc == KMS_ERR_PROTO)
				kms_log(KMS_LOG_DEBUG, "control: uid %u closed inside a request", (unsigned)c->peer.uid);
			break;
		}
		if (len == 0)
			continue;
		reply = handle_line(c, &cr, line, len);
		kms_wipe(line, len);        /* requests may carry passwords and shares */
		rc = reply ? kms_send_json(c->fd, reply) : KMS_ERR_NOMEM;
		json_decref(reply);
		if (rc != 0)
			break;
	}
	kms_lines_free(&lb);
	kms_store_close(c->st);
	c->st = NULL;
	pthread_mutex_lock(&S.lock);
	close(c->fd);
	c->fd = -1;
	c->done = 1;
	S.nclients--;
	pthread_cond_broadcast(&S.cond);
	pthread_mutex_unlock(&S.lock);
	return NULL;
}

/* Join and free finished clients (called with S.lock held). */
static void
reap_locked(void)
{
	struct kmsd_client **pp = &S.clients;

	while (*pp) {
		struct kmsd_client *c = *pp;

		if (c->done) {
			*pp = c->next;
			pthread_join(c->thread, NULL);
			free(c);
		} else {
			pp = &c->next;
		}
	}
}

static void
refuse_busy(int fd)
{
	json_t *e = kms_reply_error("busy", "too many control connections; try again");

	kms_send_json(fd, e);
	json_decref(e);
	close(fd);
}

static void *
listener_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd pfd[2] = { { S.listen_fd, POLLIN, 0 }, { S.wake[0], POLLIN, 0 } };
		struct kmsd_client *c;
		struct kmsd_env *env;
		socklen_t sl = sizeof(struct ucred);
		int fd, max, privileged;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			kms_log(KMS_LOG_ERR, "control: poll: %s", strerror(errno));
			break;
		}
		if (pfd[1].revents)
			break;
		if (!(pfd[0].revents & POLLIN))
			continue;
		fd = accept4(S.listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
				kms_log(KMS_LOG_WARNING, "control: accept: %s", strerror(errno));
			if (errno == EMFILE || errno == ENFILE)
				poll(NULL, 0, 100);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c == NULL || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->peer, &sl) != 0) {
			free(c);
			close(fd);
			continue;
		}
		/* The last slot is kept for root and admins: others filling the rest never lock them out. */
		env = kmsd_env_get();
		max = (int)env->cfg->kmsd.max_control_clients;
		privileged = c->peer.uid == 0 || (pol_roles_of(env->roles, c->peer.uid, c->peer.gid) & POL_ROLE_ADMIN);
		kmsd_env_put(env);
		pthread_mutex_lock(&S.lock);
		reap_locked();
		if (S.stopping || S.nclients >= (privileged ? max : max - 1)) {
			int n = S.nclients;

			pthread_mutex_unlock(&S.lock);
			kms_log(KMS_LOG_WARNING, "control: %d clients connected (the limit%s): refusing uid %u", n,
			    privileged ? "" : " for users other than root and admins", (unsigned)c->peer.uid);
			free(c);
			refuse_busy(fd);
			continue;
		}
		c->fd = fd;
		if (pthread_create(&c->thread, NULL, client_main, c) != 0) {
			pthread_mutex_unlock(&S.lock);
			free(c);
			refuse_busy(fd);
			continue;
		}
		c->next = S.clients;
		S.clients = c;
		S.nclients++;
		pthread_mutex_unlock(&S.lock);
	}
	return NULL;
}

int
kmsd_server_start(int listen_fd, const char *path)
{
	if (pipe2(S.wake, O_CLOEXEC) != 0)
		return kms_fail(KMS_ERR_IO, "pipe: %s", strerror(errno));
	S.listen_fd = listen_fd;
	snprintf(S.path, sizeof(S.path), "%s", path);
	if (pthread_create(&S.thread, NULL, listener_main, NULL) != 0)
		return kms_fail(KMS_ERR_IO, "cannot start the control listener thread");
	S.running = 1;
	return 0;
}

void
kmsd_server_stop(int timeout_sec)
{
	struct timespec deadline;

	if (!S.running)
		return;
	/* Stop accepting, then let every client finish the command it is running. */
	if (write(S.wake[1], "x", 1) < 0)
		kms_log(KMS_LOG_WARNING, "control: cannot wake the listener: %s", strerror(errno));
	pthread_join(S.thread, NULL);
	close(S.listen_fd);
	S.listen_fd = -1;
	unlink(S.path);
	pthread_mutex_lock(&S.lock);
	S.stopping = 1;
	for (struct kmsd_client *c = S.clients; c; c = c->next)
		if (!c->done && c->fd >= 0)
			shutdown(c->fd, SHUT_RD);       /* read returns 0 after the current command */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += timeout_sec;
	while (S.nclients > 0) {
		if (pthread_cond_timedwait(&S.cond, &S.lock, &deadline) == ETIMEDOUT) {
			kms_log(KMS_LOG_WARNING, "control: %d command(s) still running at shutdown", S.nclients);
			break;
		}
	}
	if (S.nclients == 0)
		reap_locked();
	pthread_mutex_unlock(&S.lock);
	close(S.wake[0]);
	close(S.wake[1]);
	S.running = 0;
}
