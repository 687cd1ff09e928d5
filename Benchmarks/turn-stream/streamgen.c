// Stream ChannelData generator for TURN over TCP (and TLS, through a local stunnel): the
// connections are set up (allocated, channel-bound) by the Python driver and inherited as
// descriptors FIRST_FD .. FIRST_FD+N-1. Each write carries FRAMES ChannelData messages on
// channel CHANNEL with SIZE payload bytes (padded to 4, RFC 8656 §12.5), round-robin over the
// connections, at RATE messages/s for SECONDS. Prints the number of messages written.
// Usage: streamgen FIRST_FD N CHANNEL SIZE RATE SECONDS FRAMES
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: streamgen FIRST_FD N CHANNEL SIZE RATE SECONDS FRAMES\n"); return 2; }
    int first = atoi(argv[1]), n = atoi(argv[2]), channel = atoi(argv[3]), size = atoi(argv[4]);
    double rate = atof(argv[5]), seconds = atof(argv[6]);
    int frames = atoi(argv[7]);
    int frame = 4 + ((size + 3) & ~3);
    unsigned char *buf = calloc((size_t)frames, (size_t)frame);
    for (int f = 0; f < frames; f++) {
        unsigned short hdr[2] = {htons(channel), htons(size)};
        memcpy(buf + f * frame, hdr, 4);
        memset(buf + f * frame + 4, 0x5a, size);
    }
    long sent = 0;
    double start = now(), end = start + seconds;
    int k = 0;
    while (now() < end) {
        if (rate > 0 && sent > (now() - start) * rate) continue;
        // Write whole frames only, so each stream stays framed.
        size_t total = (size_t)frames * frame, off = 0;
        while (off < total) {
            ssize_t w = write(first + k, buf + off, total - off);
            if (w > 0) { off += (size_t)w; continue; }
            if (w < 0 && errno == EAGAIN) {
                struct pollfd p = {.fd = first + k, .events = POLLOUT};
                poll(&p, 1, 100);
                continue;
            }
            fprintf(stderr, "write failed\n");
            return 1;
        }
        sent += frames;
        k = (k + 1) % n;
    }
    printf("%ld\n", sent);
    return 0;
}
