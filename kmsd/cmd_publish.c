/*
 * cmd_publish.c - the LDAP directory in kmsd: starting and stopping the
 * publisher's delivery thread, waking it after a change, and the control
 * commands publish.status, publish.resync and cert.
 *
 * The queue itself lives in the store (ca/pubq.c) and the delivery in
 * publish/ldap.c; this file only binds them to kmsd's config and replies.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "kmsd/commands.h"

/* Our part of the process state: kmsd_state.ldap (kmsd/state.c). */
#define L kmsd_state.ldap

/* The directory the thread writes to, to see a reload move it elsewhere. */
static int
remember_uri(const struct kms_config *cfg)
{
	char *u = strdup(cfg->ldap.uri);

	if (u == NULL)
		return KMS_ERR_NOMEM;
	pthread_rwlock_wrlock(&L.lock);
	free(L.uri);
	L.uri = u;
	pthread_rwlock_unlock(&L.lock);
	return 0;
}

int
kmsd_ldap_start(struct kms_config *cfg, struct kms_store *st)
{
	struct pub_ldap *pl = NULL;
	char *dbpath;
	int rc, newly = 0;

	if ((rc = ca_pubq_set_enabled(st, cfg->ldap.uri[0] != '\0', &newly)) != 0)
		return rc;
	if (cfg->ldap.uri[0] == '\0')
		return 0;
	if (newly)
		kms_log(KMS_LOG_INFO, "ldap: publishing to %s turned on: every entry queued", cfg->ldap.uri);
	if ((dbpath = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL)
		return KMS_ERR_NOMEM;
	if ((rc = remember_uri(cfg)) == 0)
		rc = pub_ldap_start(cfg, dbpath, &pl);
	free(dbpath);
	if (rc == 0) {
		pthread_rwlock_wrlock(&L.lock);
		L.publisher = pl;
		pthread_rwlock_unlock(&L.lock);
	}
	return rc;
}

void
kmsd_ldap_stop(void)
{
	struct pub_ldap *pl;

	pthread_rwlock_wrlock(&L.lock);
	pl = L.publisher;
	L.publisher = NULL;
	free(L.uri);
	L.uri = NULL;
	pthread_rwlock_unlock(&L.lock);
	/* Outside the lock: it waits for an operation in flight. */
	pub_ldap_stop(pl);
}

int
kmsd_ldap_reload(struct kms_config *cfg, struct kms_store *st)
{
	int running, moved = 0, rc;

	pthread_rwlock_wrlock(&L.lock);
	running = L.publisher != NULL;
	if (running && cfg->ldap.uri[0] != '\0') {
		/* Another directory holds none of our entries: write them all there. */
		moved = L.uri == NULL || strcmp(L.uri, cfg->ldap.uri) != 0;
		pub_ldap_reconfigure(L.publisher, cfg);
	}
	pthread_rwlock_unlock(&L.lock);
	if (running && cfg->ldap.uri[0] != '\0') {
		if (!moved)
			return 0;
		kms_log(KMS_LOG_INFO, "ldap: now publishing to %s: every entry queued", cfg->ldap.uri);
		if ((rc = remember_uri(cfg)) != 0 || (rc = ca_pubq_resync(st)) != 0)
			return rc;
		kmsd_ldap_kick();
		return 0;
	}
	if (running) {
		kms_log(KMS_LOG_INFO, "ldap: [ldap] uri removed: publishing turned off");
		kmsd_ldap_stop();
	}
	/* Off to on starts the thread; off to off, or on to off, records the state. */
	return kmsd_ldap_start(cfg, st);
}

void
kmsd_ldap_kick(void)
{
	pthread_rwlock_rdlock(&L.lock);
	pub_ldap_kick(L.publisher);
	pthread_rwlock_unlock(&L.lock);
}

json_t *
kmsd_ldap_json(struct kms_store *st, const struct kms_config *cfg)
{
	struct ca_pubq_stats qs;
	struct pub_ldap_status ps;
	json_t *o;
	char t[32];

	if (cfg->ldap.uri[0] == '\0')
		return json_pack("{s:b}", "enabled", 0);
	pthread_rwlock_rdlock(&L.lock);
	pub_ldap_status(L.publisher, &ps);
	pthread_rwlock_unlock(&L.lock);
	o = json_pack("{s:b,s:s,s:s,s:b,s:I}", "enabled", 1, "uri", cfg->ldap.uri, "base_dn", cfg->ldap.base_dn,
	    "connected", ps.connected, "delivered", (json_int_t)ps.delivered);
	if (o == NULL)
		return NULL;
	if (ca_pubq_stats(st, &qs) == 0) {
		json_object_set_new(o, "queue", json_integer(qs.length));
		json_object_set_new(o, "retrying", json_integer(qs.retrying));
		if (qs.oldest)
			json_object_set_new(o, "oldest_queued", json_string(kms_time_format(qs.oldest, t, sizeof(t))));
	} else {
		json_object_set_new(o, "queue_error", json_string(kms_last_error()));
	}
	if (ps.last_ok)
		json_object_set_new(o, "last_success", json_string(kms_time_format(ps.last_ok, t, sizeof(t))));
	if (ps.last_error[0]) {
		json_object_set_new(o, "last_error", json_string(ps.last_error));
		json_object_set_new(o, "last_error_time", json_string(kms_time_format(ps.last_error_time, t, sizeof(t))));
	}
	if (ps.next_retry)
		json_object_set_new(o, "next_retry", json_string(kms_time_format(ps.next_retry, t, sizeof(t))));
	json_object_set_new(o, "state", json_string(!ps.connected && ps.next_retry ? "failing" :
	    qs.length > 0 ? "catching up" : ps.connected ? "in sync" : "idle"));
	return o;
}

json_t *
kmsd_cmd_publish_status(struct kmsd_req *req)
{
	static const char *const allowed[] = { NULL };
	json_t *reply = NULL, *o;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "ldap");
	if ((o = kmsd_ldap_json(req->st, req->env->cfg)) == NULL)
		return kms_reply_error("internal", "out of memory");
	return kms_reply_ok(json_pack("{s:o}", "ldap", o));
}

json_t *
kmsd_cmd_publish_resync(struct kmsd_req *req)
{
	static const char *const allowed[] = { NULL };
	json_t *reply = NULL;
	struct ca_pubq_stats qs;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	snprintf(req->target, sizeof(req->target), "ldap");
	if (req->env->cfg->ldap.uri[0] == '\0')
		return kms_reply_error("bad_state", "publish resync: no directory configured ([ldap] uri)");
	if ((rc = ca_pubq_resync(req->st)) != 0 || (rc = ca_pubq_stats(req->st, &qs)) != 0)
		return kmsd_reply_fail(rc);
	kmsd_ldap_kick();
	snprintf(req->detail, sizeof(req->detail), "every entry queued (%lld)", qs.length);
	return kms_reply_ok(json_pack("{s:I}", "queued", (json_int_t)qs.length));
}

static json_t *
pem_or_null(X509 *x)
{
	BIO *b;
	char *data;
	long len;
	json_t *s = NULL;

	if (x == NULL)
		return json_null();
	if ((b = BIO_new(BIO_s_mem())) != NULL && PEM_write_bio_X509(b, x)) {
		len = BIO_get_mem_data(b, &data);
		s = json_stringn(data, (size_t)len);
	}
	BIO_free(b);
	return s;
}

json_t *
kmsd_cmd_cert(struct kmsd_req *req)
{
	static const char *const allowed[] = { "email", NULL };
	json_t *reply = NULL;
	const char *email;
	X509 *sign = NULL, *enc = NULL;
	int rc;

	if (kmsd_args_only(req, allowed, &reply) != 0)
		return reply;
	email = kmsd_arg_str(req, "email", 1, KMS_ADDR_MAX, &reply);
	if (reply)
		return reply;
	kms_sanitize(email, KMS_ADDR_MAX, req->target, sizeof(req->target));
	if ((rc = ca_store_current(req->st, email, time(NULL), &sign, &enc, NULL)) != 0)
		return kmsd_reply_fail(rc);
	if (enc == NULL && sign == NULL)
		reply = kms_reply_error("not_found", "cert: no valid certificate for \"%s\"", req->target);
	else
		reply = kms_reply_ok(json_pack("{s:s,s:o,s:o}", "email", email, "encryption", pem_or_null(enc),
		    "signing", pem_or_null(sign)));
	X509_free(sign);
	X509_free(enc);
	return reply;
}
