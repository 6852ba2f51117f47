/*
 * ocspload.c - a small OCSP load client for bench/ocsp/run: C concurrent
 * clients, each on its own keep-alive HTTP/1.1 connection (reconnecting
 * when the server closes it), sending OCSP requests read from DER files in
 * turn, as POST application/ocsp-request or as GET /ocsp/<url-encoded
 * base64>, for a fixed time.  Every answer must be HTTP 200 with an
 * OCSPResponse of status successful, or the run fails.
 *
 *   ocspload -u http://127.0.0.1:PORT/ocsp -m get|post -c 8 -t 5 REQ.der...
 *
 * Prints one line: "responses=N seconds=S rps=R p50_us=A p99_us=B errors=E".
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

struct req {
	char *wire;             /* the whole HTTP request */
	size_t len;
};

static struct req *reqs;
static int nreqs;
static char host[256];
static int port;
static char path[512];
static double seconds = 5;
static volatile int stop;

struct worker {
	pthread_t t;
	int id;
	long n, errors;
	unsigned *lat;          /* microseconds */
	size_t nlat, caplat;
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
connect_to(void)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	inet_pton(AF_INET, host, &sa.sin_addr);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read one response; 0 when it is 200 with a successful OCSPResponse; *closed when the server ends the connection. */
static int
read_response(int fd, char *buf, size_t cap, int *closed)
{
	size_t have = 0, body_at = 0, clen = 0;
	char *hdr_end = NULL, *p;

	*closed = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, cap - have - 1);

		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			*closed = 1;
			if (hdr_end != NULL && clen == 0 && have > body_at)
				break;  /* a body delimited by close */
			return -1;
		}
		have += (size_t)r;
		buf[have] = '\0';
		if (hdr_end == NULL && (hdr_end = strstr(buf, "\r\n\r\n")) != NULL) {
			body_at = (size_t)(hdr_end - buf) + 4;
			if ((p = strcasestr(buf, "\r\nContent-Length:")) != NULL && p < hdr_end)
				clen = strtoul(p + 17, NULL, 10);
			if ((p = strcasestr(buf, "\r\nConnection: close")) != NULL && p < hdr_end)
				*closed = 1;
			/* HTTP/1.0 without keep-alive (OpenSSL's responder): closed after this answer. */
			if (strncmp(buf, "HTTP/1.0", 8) == 0 &&
			    ((p = strcasestr(buf, "\r\nConnection: keep-alive")) == NULL || p > hdr_end))
				*closed = 1;
		}
		if (hdr_end != NULL && clen > 0 && have >= body_at + clen)
			break;
		if (have + 1 >= cap)
			return -1;
	}
	if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0)
		return -1;
	/* OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED successful(0), ... } */
	p = buf + body_at;
	if ((unsigned char)p[0] != 0x30)
		return -1;
	{
		size_t off = 2;

		if ((unsigned char)p[1] & 0x80)
			off += (unsigned char)p[1] & 0x7f;
		if ((unsigned char)p[off] != 0x0a || (unsigned char)p[off + 1] != 1 || p[off + 2] != 0)
			return -1;
	}
	return 0;
}

static void *
run(void *arg)
{
	struct worker *w = arg;
	static const size_t cap = 1 << 16;
	char *buf = malloc(cap);
	int fd = -1, closed, i = w->id;

	while (!stop) {
		const struct req *q = &reqs[i++ % nreqs];
		double t0;

		if (fd < 0 && (fd = connect_to()) < 0) {
			w->errors++;
			usleep(1000);
			continue;
		}
		t0 = now_s();
		if (write_all(fd, q->wire, q->len) != 0 || read_response(fd, buf, cap, &closed) != 0) {
			w->errors++;
			close(fd);
			fd = -1;
			continue;
		}
		if (w->nlat == w->caplat) {
			w->caplat = w->caplat ? w->caplat * 2 : 65536;
			w->lat = realloc(w->lat, w->caplat * sizeof(*w->lat));
		}
		w->lat[w->nlat++] = (unsigned)((now_s() - t0) * 1e6);
		w->n++;
		if (closed) {
			close(fd);
			fd = -1;
		}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static int
cmp_u(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;

	return x < y ? -1 : x > y;
}

static char *
read_file(const char *fn, size_t *len)
{
	FILE *f = fopen(fn, "rb");
	char *p;
	long n;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0 ||
	    (p = malloc((size_t)n)) == NULL || fread(p, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "ocspload: cannot read %s\n", fn);
		exit(2);
	}
	fclose(f);
	*len = (size_t)n;
	return p;
}

static void
build(struct req *q, const char *der, size_t len, int get)
{
	char *wire;
	size_t cap = 4 * len + 1024;

	wire = malloc(cap + len);
	if (get) {
		unsigned char *b64 = malloc(4 * len / 3 + 8);
		int n = EVP_EncodeBlock(b64, (const unsigned char *)der, (int)len);
		char *enc = malloc(3 * (size_t)n + 1), *e = enc;

		for (int i = 0; i < n; i++) {
			if (b64[i] == '+' || b64[i] == '/' || b64[i] == '=')
				e += sprintf(e, "%%%02X", b64[i]);
			else
				*e++ = (char)b64[i];
		}
		*e = '\0';
		q->len = (size_t)snprintf(wire, cap, "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path,
		    path[strlen(path) - 1] == '/' ? "" : "/", enc, host, port);
		free(enc);
		free(b64);
	} else {
		q->len = (size_t)snprintf(wire, cap, "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: "
		    "application/ocsp-request\r\nContent-Length: %zu\r\n\r\n", path, host, port, len);
		memcpy(wire + q->len, der, len);
		q->len += len;
	}
	q->wire = wire;
}

int
main(int argc, char **argv)
{
	const char *url = NULL;
	int get = 0, clients = 8, opt;
	struct worker *ws;
	unsigned *all;
	size_t total = 0, k = 0;
	long n = 0, errors = 0;
	double t0, el;

	while ((opt = getopt(argc, argv, "u:m:c:t:")) != -1) {
		switch (opt) {
		case 'u': url = optarg; break;
		case 'm': get = strcmp(optarg, "get") == 0; break;
		case 'c': clients = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		default:
			fprintf(stderr, "usage: ocspload -u URL -m get|post -c CLIENTS -t SECONDS REQ.der...\n");
			return 2;
		}
	}
	if (url == NULL || optind >= argc || sscanf(url, "http://%255[^:]:%d%511s", host, &port, path) < 2) {
		fprintf(stderr, "ocspload: -u http://IPV4:PORT/PATH and request files needed\n");
		return 2;
	}
	if (path[0] == '\0')
		strcpy(path, "/");
	nreqs = argc - optind;
	reqs = calloc((size_t)nreqs, sizeof(*reqs));
	for (int i = 0; i < nreqs; i++) {
		size_t len;
		char *der = read_file(argv[optind + i], &len);

		build(&reqs[i], der, len, get);
		free(der);
	}
	ws = calloc((size_t)clients, sizeof(*ws));
	t0 = now_s();
	for (int i = 0; i < clients; i++) {
		ws[i].id = i;
		pthread_create(&ws[i].t, NULL, run, &ws[i]);
	}
	usleep((useconds_t)(seconds * 1e6));
	stop = 1;
	for (int i = 0; i < clients; i++) {
		pthread_join(ws[i].t, NULL);
		n += ws[i].n;
		errors += ws[i].errors;
		total += ws[i].nlat;
	}
	el = now_s() - t0;
	all = malloc((total ? total : 1) * sizeof(*all));
	for (int i = 0; i < clients; i++) {
		memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof(*all));
		k += ws[i].nlat;
		free(ws[i].lat);
	}
	qsort(all, total, sizeof(*all), cmp_u);
	printf("responses=%ld seconds=%.2f rps=%.0f p50_us=%u p99_us=%u errors=%ld\n", n, el, n / el,
	    total ? all[total / 2] : 0, total ? all[(size_t)(total * 0.99)] : 0, errors);
	return errors > 0 && n == 0 ? 1 : 0;
}
