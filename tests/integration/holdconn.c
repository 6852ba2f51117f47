/*
 * holdconn.c - test helper: hold many connections open to a server, idle
 * or sending a request one byte at a time, as slow or hostile clients do.
 *
 * usage: holdconn [-n COUNT] [-a ADDRS] [-d SECONDS] [-t SECONDS] [-p TEXT] [-r TEXT] TARGET
 *   TARGET   unix:PATH or tcp:HOST:PORT (IPv4)
 *   -n       connections to open (default 16)
 *   -a       spread TCP connections over ADDRS source addresses 127.0.0.2,
 *            127.0.0.3, ... (a per-client limit counts each apart)
 *   -d       send the next byte of TEXT on each connection every SECONDS
 *            (0: stay idle; default 0)
 *   -p       bytes sent at once on each connection before the trickle
 *            (a request's headers, say, when its body is to come slowly)
 *   -r       the bytes to trickle (default "GET / HTTP/1.1\r\n")
 *   -t       give up after SECONDS (default 60)
 * Prints "held N" once the connections are made (N: how many connected),
 * then, when it ends, "open M" (how many the server had not closed).
 * Ends at -t or on SIGTERM.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONN 4096

static volatile sig_atomic_t stop;

static void
on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static int
connect_one(const char *target, int i, int naddrs)
{
	int fd;

	if (strncmp(target, "unix:", 5) == 0) {
		struct sockaddr_un sa;

		memset(&sa, 0, sizeof(sa));
		sa.sun_family = AF_UNIX;
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", target + 5);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			close(fd);
			fd = -1;
		}
	} else if (strncmp(target, "tcp:", 4) == 0) {
		char host[64];
		const char *colon = strrchr(target + 4, ':');
		struct sockaddr_in sa, src;

		if (colon == NULL || (size_t)(colon - target - 4) >= sizeof(host))
			return -1;
		memcpy(host, target + 4, (size_t)(colon - target - 4));
		host[colon - target - 4] = '\0';
		memset(&sa, 0, sizeof(sa));
		sa.sin_family = AF_INET;
		sa.sin_port = htons((unsigned short)atoi(colon + 1));
		if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
			return -1;
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd >= 0 && naddrs > 0) {
			memset(&src, 0, sizeof(src));
			src.sin_family = AF_INET;
			src.sin_addr.s_addr = htonl(0x7f000002u + (unsigned)(i % naddrs));
			if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
				close(fd);
				return -1;
			}
		}
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			close(fd);
			fd = -1;
		}
	} else {
		return -1;
	}
	return fd;
}

/* Has the server closed fd (end of stream or error, after reading what it sent)? */
static int
closed_by_peer(int fd)
{
	char buf[512];
	struct pollfd p = { fd, POLLIN, 0 };

	while (poll(&p, 1, 0) > 0) {
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			return 1;
		if (r < 0)
			return 0;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	static int fds[MAX_CONN];
	const char *text = "GET / HTTP/1.1\r\n", *prefix = NULL;
	int n = 16, naddrs = 0, drip = 0, limit = 60, c, held = 0, open_now = 0;
	size_t pos = 0;
	time_t start = time(NULL), last = start;
	struct sigaction sa;

	while ((c = getopt(argc, argv, "n:a:d:t:p:r:")) != -1) {
		switch (c) {
		case 'n': n = atoi(optarg); break;
		case 'a': naddrs = atoi(optarg); break;
		case 'd': drip = atoi(optarg); break;
		case 't': limit = atoi(optarg); break;
		case 'p': prefix = optarg; break;
		case 'r': text = optarg; break;
		default:
			fprintf(stderr, "usage: holdconn [-n COUNT] [-a ADDRS] [-d SECONDS] [-t SECONDS] [-p TEXT] [-r TEXT] "
			    "TARGET\n");
			return 2;
		}
	}
	if (optind + 1 != argc || n < 1 || n > MAX_CONN) {
		fprintf(stderr, "usage: holdconn [-n COUNT] [-a ADDRS] [-d SECONDS] [-t SECONDS] [-p TEXT] [-r TEXT] TARGET\n");
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < n; i++) {
		fds[i] = connect_one(argv[optind], i, naddrs);
		if (fds[i] >= 0 && prefix != NULL &&
		    send(fds[i], prefix, strlen(prefix), MSG_NOSIGNAL) != (ssize_t)strlen(prefix)) {
			close(fds[i]);
			fds[i] = -1;
		}
		if (fds[i] >= 0)
			held++;
	}
	printf("held %d\n", held);
	fflush(stdout);
	while (!stop && time(NULL) - start < limit) {
		struct timespec ts = { 0, 200 * 1000 * 1000 };

		nanosleep(&ts, NULL);
		if (drip > 0 && time(NULL) - last >= drip && text[pos] != '\0') {
			last = time(NULL);
			for (int i = 0; i < n; i++)
				if (fds[i] >= 0 && send(fds[i], text + pos, 1, MSG_NOSIGNAL) != 1) {
					close(fds[i]);
					fds[i] = -1;
				}
			pos++;
		}
	}
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0 && !closed_by_peer(fds[i]))
			open_now++;
	printf("open %d\n", open_now);
	return 0;
}
