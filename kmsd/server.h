/*
 * server.h - the control socket server (internal to kmsd).
 */
#ifndef KMSD_SERVER_H
#define KMSD_SERVER_H

#include <sys/types.h>

/*
 * Bind the control socket at path (mode 0660, owned by owner:group; -1
 * keeps either).  Refuses when another kmsd answers there; removes a stale
 * socket file.
 */
int kmsd_server_listen(const char *path, uid_t owner, gid_t group, int *fd_out);
/* Start the listener thread on an already bound socket. */
int kmsd_server_start(int listen_fd, const char *path);
/* Stop accepting, let running commands finish (up to timeout_sec), close. */
void kmsd_server_stop(int timeout_sec);

#endif
