// The reference: a minimal C UDP forwarder with recvmmsg/sendmmsg, batches of 64, one thread.
// Usage: cforward LISTEN_PORT TARGET_PORT [LISTEN_IP TARGET_IP]   (default: both on 127.0.0.1)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SLOT 2048

int main(int argc, char **argv) {
    if (argc != 3 && argc != 5) { fprintf(stderr, "usage: cforward LISTEN_PORT TARGET_PORT [LISTEN_IP TARGET_IP]\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (argc == 5) inet_pton(AF_INET, argv[3], &me.sin_addr);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) { perror("bind"); return 1; }
    struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (argc == 5) inet_pton(AF_INET, argv[4], &target.sin_addr);
    static char buf[BATCH][SLOT];
    static struct iovec iov[BATCH];
    static struct mmsghdr in[BATCH], out[BATCH];
    static struct sockaddr_in from[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf[i];
        iov[i].iov_len = SLOT;
        in[i].msg_hdr.msg_iov = &iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &from[i];
        out[i].msg_hdr.msg_name = &target;
        out[i].msg_hdr.msg_namelen = sizeof target;
        out[i].msg_hdr.msg_iovlen = 1;
    }
    static struct iovec oiov[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) in[i].msg_hdr.msg_namelen = sizeof from[i];
        int n = recvmmsg(fd, in, BATCH, 0, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) {
            oiov[i].iov_base = buf[i];
            oiov[i].iov_len = in[i].msg_len;
            out[i].msg_hdr.msg_iov = &oiov[i];
        }
        int sent = 0;
        while (sent < n) {
            int r = sendmmsg(fd, out + sent, n - sent, 0);
            if (r <= 0) break;
            sent += r;
        }
    }
}
