// Sink: counts datagrams arriving on 127.0.0.1:PORT with recvmmsg until SECONDS have passed
// since the first one, or IDLE seconds pass without any. Prints the count.
// Usage: sink PORT SECONDS [IP]   (default 127.0.0.1)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>

#define BATCH 64

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) { fprintf(stderr, "usage: sink PORT SECONDS [IP]\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int b = 16 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof b);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (argc == 4) inet_pton(AF_INET, argv[3], &me.sin_addr);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) { perror("bind"); return 1; }
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static char buf[BATCH][2048];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf[i];
        iov[i].iov_len = sizeof buf[i];
        msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
    }
    long count = 0;
    int idle = 0;
    double limit = atof(argv[2]);
    struct timeval first = {0}, t;
    for (;;) {
        int n = recvmmsg(fd, msgs, BATCH, 0, NULL);
        if (n <= 0) {
            if (count > 0 || ++idle > 20) break;  // quiet after traffic, or nothing for 10 s
            continue;
        }
        if (count == 0) gettimeofday(&first, NULL);
        count += n;
        gettimeofday(&t, NULL);
        if ((t.tv_sec - first.tv_sec) + (t.tv_usec - first.tv_usec) / 1e6 > limit + 5) break;
    }
    printf("%ld\n", count);
    return 0;
}
