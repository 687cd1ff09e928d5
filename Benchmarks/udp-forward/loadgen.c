// Load generator: SOCKETS sockets, each sending batches of 1200-byte datagrams with sendmmsg to
// 127.0.0.1:PORT, round-robin, for SECONDS (or until COUNT datagrams). Optional RATE (packets/s,
// 0 = as fast as possible). Prints the number sent.
// Usage: loadgen PORT SECONDS [SOCKETS] [SIZE] [RATE]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: loadgen PORT SECONDS [SOCKETS] [SIZE] [RATE]\n"); return 2; }
    int port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    int nsock = argc > 3 ? atoi(argv[3]) : 8;
    int size = argc > 4 ? atoi(argv[4]) : 1200;
    double rate = argc > 5 ? atof(argv[5]) : 0;
    int fds[256];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < nsock; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        int b = 4 << 20;
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUFFORCE, &b, sizeof b);
        connect(fds[i], (struct sockaddr *)&to, sizeof to);
    }
    static char payload[65536];
    memset(payload, 0x5a, sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = size};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
    long sent = 0;
    double start = now(), end = start + seconds;
    int k = 0;
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (rate > 0 && sent > (t - start) * rate) continue;
        int r = sendmmsg(fds[k], msgs, BATCH, 0);
        if (r > 0) sent += r;
        k = (k + 1) % nsock;
    }
    printf("%ld\n", sent);
    return 0;
}
