/*
 * state.c - the one object that holds kmsd's process state, with its
 * initial values.  Which file owns which part is said in kmsd.h (struct
 * kmsd_state); nothing else lives in file-scope variables in kmsd/.
 */
#include "config.h"

#include "kmsd/kmsd.h"

struct kmsd_state kmsd_state = {
	.rt = { .lock = PTHREAD_MUTEX_INITIALIZER },
	.crl = { .publish_lock = PTHREAD_MUTEX_INITIALIZER, .rev_lock = PTHREAD_MUTEX_INITIALIZER },
	.pub = { .http_mu = PTHREAD_MUTEX_INITIALIZER, .sync_mu = PTHREAD_MUTEX_INITIALIZER,
		.certs_mu = PTHREAD_MUTEX_INITIALIZER,
		.dp_lock = PTHREAD_RWLOCK_INITIALIZER },
	.ldap = { .lock = PTHREAD_RWLOCK_INITIALIZER },
	.ocsp = { .mu = PTHREAD_MUTEX_INITIALIZER, .tick_mu = PTHREAD_MUTEX_INITIALIZER },
	.audit = { .mu = PTHREAD_MUTEX_INITIALIZER },
	.rec = { .lock = PTHREAD_MUTEX_INITIALIZER },
	.srv = { .listen_fd = -1, .wake = { -1, -1 }, .lock = PTHREAD_MUTEX_INITIALIZER,
		.cond = PTHREAD_COND_INITIALIZER },
	.main = { .sig_pipe = { -1, -1 }, .ready_fd = -1 },
};
