// The floor for in-process signaling routing (docs/benchmarks.md): the least a server can do to
// move the same messages between the same connections. One thread, epoll, plaintext WebSocket:
// it answers the upgrade, sends a hello that `ferry bench` accepts, takes any auth (it checks
// nothing), and forwards each text message to the connection whose key is its "to", unparsed
// but for that key, with the sender's "from" spliced in (as ferryd stamps it), in a server frame. Writes are gathered per connection and flushed once per
// epoll_wait batch, as ferryd does. No TLS, no JSON, no limits: a floor, not a server.
//
// cc -O2 -o floor floor.c -lcrypto && ./floor PORT
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 300000
#define KEYLEN 44
#define TABLE (1 << 19)

typedef struct {
    unsigned char *in, *out;
    size_t inlen, incap, outlen, outcap;
    int upgraded, dirty;
    char key[KEYLEN + 1];
} conn;

static conn *conns[MAXFD];
static int table_fd[TABLE];
static char table_key[TABLE][KEYLEN];
static int dirty[MAXFD], ndirty;
// A valid X25519 public key (any will do: the proof is not checked here).
static const char *server_key = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

static uint32_t hash(const char *k) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < KEYLEN; i++) h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h & (TABLE - 1);
}

static void put(const char *k, int fd) {
    uint32_t i = hash(k);
    while (table_fd[i] && memcmp(table_key[i], k, KEYLEN) != 0) i = (i + 1) & (TABLE - 1);
    memcpy(table_key[i], k, KEYLEN);
    table_fd[i] = fd + 1;
}

static int get(const char *k) {
    uint32_t i = hash(k);
    while (table_fd[i]) {
        if (memcmp(table_key[i], k, KEYLEN) == 0) return table_fd[i] - 1;
        i = (i + 1) & (TABLE - 1);
    }
    return -1;
}

static void append(conn *c, int fd, const void *p, size_t n) {
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2;
        c->out = realloc(c->out, c->outcap);
    }
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    if (!c->dirty) { c->dirty = 1; dirty[ndirty++] = fd; }
}

static void frame(conn *c, int fd, const unsigned char *p, size_t n) {
    unsigned char h[4] = {0x81, 0, 0, 0};
    if (n < 126) { h[1] = (unsigned char)n; append(c, fd, h, 2); }
    else { h[1] = 126; h[2] = (unsigned char)(n >> 8); h[3] = (unsigned char)n; append(c, fd, h, 4); }
    append(c, fd, p, n);
}

static void text(conn *c, int fd, const char *s) { frame(c, fd, (const unsigned char *)s, strlen(s)); }

// `{"from":"KEY",` and the message after its opening brace.
static void stamped(conn *to, int fd, const char *from, const unsigned char *p, size_t n) {
    unsigned char head[64];
    int hl = snprintf((char *)head, sizeof head, "{\"from\":\"%.44s\",", from);
    size_t total = hl + n - 1;
    unsigned char h[4] = {0x81, 0, 0, 0};
    if (total < 126) { h[1] = (unsigned char)total; append(to, fd, h, 2); }
    else { h[1] = 126; h[2] = (unsigned char)(total >> 8); h[3] = (unsigned char)total; append(to, fd, h, 4); }
    append(to, fd, head, hl);
    append(to, fd, p + 1, n - 1);
}

static char *find(unsigned char *p, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++) if (memcmp(p + i, needle, m) == 0) return (char *)p + i + m;
    return NULL;
}

static int upgrade(conn *c, int fd) {
    unsigned char *end = (unsigned char *)find(c->in, c->inlen, "\r\n\r\n");
    if (!end) return 0;
    char *k = find(c->in, c->inlen, "Sec-WebSocket-Key: ");
    if (!k) return -1;
    char key[128];
    int kl = 0;
    while (k[kl] != '\r' && kl < 60) { key[kl] = k[kl]; kl++; }
    memcpy(key + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char sha[20], accept[64];
    SHA1((unsigned char *)key, kl + 36, sha);
    EVP_EncodeBlock(accept, sha, 20);
    char resp[256];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    append(c, fd, resp, n);
    char hello[256];
    snprintf(hello, sizeof hello, "{\"v\":1,\"type\":\"hello\",\"server_key\":\"%s\",\"challenge\":\"%s\",\"ping_interval\":3600}",
             server_key, server_key);
    text(c, fd, hello);
    size_t used = end - c->in;
    memmove(c->in, end, c->inlen - used);
    c->inlen -= used;
    c->upgraded = 1;
    return 1;
}

static void message(conn *c, int fd, unsigned char *p, size_t n) {
    char *to = find(p, n, "\"to\":\"");
    if (to && to + KEYLEN <= (char *)p + n) {
        int target = get(to);
        if (target >= 0 && conns[target] && n > 1) stamped(conns[target], target, c->key, p, n);
        return;
    }
    char *pk = find(p, n, "\"peer_key\":\"");
    if (pk && pk + KEYLEN <= (char *)p + n) {
        memcpy(c->key, pk, KEYLEN);
        put(c->key, fd);
        char w[200];
        snprintf(w, sizeof w, "{\"v\":1,\"type\":\"welcome\",\"peer_key\":\"%.44s\",\"network\":\"bench\",\"expires\":9999999999,\"relays\":[]}", c->key);
        text(c, fd, w);
    }
}

static void frames(conn *c, int fd) {
    size_t off = 0;
    for (;;) {
        unsigned char *f = c->in + off;
        size_t avail = c->inlen - off;
        if (avail < 2) break;
        size_t len = f[1] & 127, hl = 2;
        if (len == 126) { if (avail < 4) break; len = (size_t)f[2] << 8 | f[3]; hl = 4; }
        else if (len == 127) { if (avail < 10) break; len = 0; for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i]; hl = 10; }
        int masked = f[1] & 128;
        if (avail < hl + (masked ? 4 : 0) + len) break;
        unsigned char *m = f + hl, *p = f + hl + (masked ? 4 : 0);
        if (masked) for (size_t i = 0; i < len; i++) p[i] ^= m[i & 3];
        if ((f[0] & 15) == 1) message(c, fd, p, len);
        off += hl + (masked ? 4 : 0) + len;
    }
    memmove(c->in, c->in + off, c->inlen - off);
    c->inlen -= off;
}

static void drop(int ep, int fd) {
    conn *c = conns[fd];
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (c) { free(c->in); free(c->out); free(c); conns[fd] = NULL; }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 4000;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    unsigned char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c] = calloc(1, sizeof(conn));
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            conn *c = conns[fd];
            if (!c) continue;
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r <= 0) { if (r == 0 || errno != EAGAIN) drop(ep, fd); break; }
                if (c->inlen + r > c->incap) { c->incap = (c->inlen + r) * 2; c->in = realloc(c->in, c->incap); }
                memcpy(c->in + c->inlen, buf, r);
                c->inlen += r;
                if (!c->upgraded && upgrade(c, fd) < 0) { drop(ep, fd); break; }
                if (c->upgraded) frames(c, fd);
                if (r < (ssize_t)sizeof buf) break;
            }
        }
        for (int i = 0; i < ndirty; i++) {
            int fd = dirty[i];
            conn *c = conns[fd];
            if (!c) continue;
            c->dirty = 0;
            size_t off = 0;
            while (off < c->outlen) {
                ssize_t w = write(fd, c->out + off, c->outlen - off);
                if (w <= 0) break;  // a floor: a full socket drops the rest
                off += w;
            }
            c->outlen = 0;
        }
        ndirty = 0;
    }
}
