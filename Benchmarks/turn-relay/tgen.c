// TURN ChannelData load generator: the sockets are set up (allocated and channel-bound) by the
// Python driver and inherited as descriptors FIRST_FD .. FIRST_FD+N-1. Each is connected to the
// server; every send is a ChannelData message on channel CHANNEL with SIZE bytes of payload,
// batched with sendmmsg, round-robin over the sockets, at RATE packets/s (0 = as fast as
// possible) for SECONDS. Prints the number of datagrams the kernel accepted.
// With GSO > 1 each send is a UDP_SEGMENT train of GSO ChannelData messages: the server still
// receives separate datagrams, but the generator's own cost per datagram falls, so one core can
// offer more than a relay can take.
// With the word `wg` after GSO, each datagram is a WireGuard transport-data message instead (the
// native relay's load, Benchmarks/native-relay): type 4, receiver index CHANNEL, a counter, then
// SIZE bytes; a datagram is 16 + SIZE bytes rather than 4 + SIZE.
// Usage: tgen FIRST_FD N CHANNEL SIZE RATE SECONDS [GSO [wg]]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <netinet/udp.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define BATCH 32

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 9) { fprintf(stderr, "usage: tgen FIRST_FD N CHANNEL SIZE RATE SECONDS [GSO [wg]]\n"); return 2; }
    int gso = argc >= 8 ? atoi(argv[7]) : 1;
    int wg = argc == 9 && strcmp(argv[8], "wg") == 0;
    int first = atoi(argv[1]), n = atoi(argv[2]), size = atoi(argv[4]);
    unsigned long channel = strtoul(argv[3], NULL, 0);
    double rate = atof(argv[5]), seconds = atof(argv[6]);
    static unsigned char msg[65536];
    unsigned char hdr[16] = {0};
    int hlen = wg ? 16 : 4;
    if (wg) {  /* little-endian type 4 and receiver index; the counter stays 0 */
        hdr[0] = 4;
        for (int b = 0; b < 4; b++) hdr[4 + b] = (unsigned char)(channel >> (8 * b));
    } else {
        unsigned short cd[2] = {htons((unsigned short)channel), htons(size)};
        memcpy(hdr, cd, 4);
    }
    if (gso < 1) gso = 1;
    if (gso * (hlen + size) > 65000) gso = 65000 / (hlen + size);
    for (int g = 0; g < gso; g++) {
        memcpy(msg + g * (hlen + size), hdr, hlen);
        memset(msg + g * (hlen + size) + hlen, 0x5a, size);
    }
    struct iovec iov = {.iov_base = msg, .iov_len = (size_t)gso * (hlen + size)};
    struct mmsghdr msgs[BATCH];
    static char control[BATCH][CMSG_SPACE(sizeof(unsigned short))];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (gso > 1) {
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = sizeof control[i];
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(unsigned short));
            unsigned short seg = hlen + size;
            memcpy(CMSG_DATA(cm), &seg, sizeof seg);
        }
    }
    long sent = 0;
    double start = now(), end = start + seconds;
    int k = 0;
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (rate > 0 && sent > (t - start) * rate) continue;
        int r = sendmmsg(first + k, msgs, gso > 1 ? 4 : BATCH, 0);
        if (r > 0) sent += (long)r * gso;
        k = (k + 1) % n;
    }
    printf("%ld\n", sent);
    return 0;
}
