#define _GNU_SOURCE
#include "CFerryLinux.h"
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <errno.h>
#include <netinet/in.h>

_Static_assert(sizeof(struct ferry_mmsghdr) == sizeof(struct mmsghdr), "mmsghdr layout");
_Static_assert(offsetof(struct ferry_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len), "mmsghdr layout");

int ferry_recvmmsg(int fd, struct ferry_mmsghdr *msgs, unsigned int vlen, int flags) {
    return recvmmsg(fd, (struct mmsghdr *)msgs, vlen, flags, NULL);
}

int ferry_sendmmsg(int fd, struct ferry_mmsghdr *msgs, unsigned int vlen, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)msgs, vlen, flags);
}

size_t ferry_cmsg_space_segment(void) { return CMSG_SPACE(sizeof(uint16_t)); }
size_t ferry_cmsg_space_gro(void) { return CMSG_SPACE(sizeof(int)); }

void ferry_cmsg_set_segment(struct msghdr *hdr, uint16_t segment) {
    if (segment == 0) { hdr->msg_controllen = 0; return; }
    hdr->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *cm = CMSG_FIRSTHDR(hdr);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(cm), &segment, sizeof(segment));
}

uint16_t ferry_cmsg_get_segment(const struct msghdr *hdr) {
    if (hdr->msg_controllen == 0) return 0;
    struct cmsghdr *cm = CMSG_FIRSTHDR((struct msghdr *)hdr);
    if (cm == NULL || cm->cmsg_level != SOL_UDP || cm->cmsg_type != UDP_SEGMENT) return 0;
    uint16_t segment;
    memcpy(&segment, CMSG_DATA(cm), sizeof(segment));
    return segment;
}

int ferry_cmsg_gro_size(const struct msghdr *hdr) {
    if (hdr->msg_controllen == 0) return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR((struct msghdr *)hdr); cm != NULL;
         cm = CMSG_NXTHDR((struct msghdr *)hdr, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int size = 0;
            memcpy(&size, CMSG_DATA(cm), sizeof(size));
            return size;
        }
    }
    return 0;
}

int ferry_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int ferry_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    return pthread_setname_np(pthread_self(), buf);
}

static void fill_set(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}

int ferry_block_signals(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int ferry_signalfd(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int ferry_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int ferry_accept4(int fd, struct sockaddr_storage *addr, socklen_t *len) {
    return accept4(fd, (struct sockaddr *)addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

// LeakSanitizer's built-in suppressions for every Ferry binary (the sanitizer runtime calls this
// in ASan builds only; a normal build never does). Compiled in rather than passed in
// LSAN_OPTIONS because systemd-socket-activate, like systemd, starts ferryd with a clean
// environment. docs/testing.md lists them; the test runner's own are in Tests/Sanitizers/lsan.supp.
//
// TOMLKit 0.6.0 (the only TOML package on the package mirror; its releases share this code) leaks
// in its C++ bridge on every parse: TOMLTable(string:) never frees its CTOMLParseError buffer (and
// on a syntax error the message), TOMLTable.keys never frees its malloc'd array of strdup'd keys,
// and nodeAsInt/nodeAsString and friends return malloc'd boxes the Swift side never frees. ferryd
// parses its config once at start and once per SIGHUP: measured 3 to 14 KB per parse for the
// configs the tests use, bounded by the number of reloads. Found by the `config` fuzz target;
// replacing the TOML reader is noted in docs/testing.md.
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:/TOMLKit/Sources/\n";
}

int ferry_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid) {
    struct ucred cred;
    socklen_t size = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int ferry_stun_port_socket(uint16_t port) {
    int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
    if (fd < 0) return -1;
    struct sock_filter code[] = {
        // Not a fragment past the first (offset bits), else drop.
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 6, 0),
        // X = the IPv4 header's length.
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        // UDP destination port.
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, port, 0, 3),
        // STUN's magic cookie at payload bytes 4-7 (UDP header 8 + 4).
        BPF_STMT(BPF_LD | BPF_W | BPF_IND, 12),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x2112A442, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 65535),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}
