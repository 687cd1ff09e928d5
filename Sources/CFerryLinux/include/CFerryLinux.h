// Thin C shim for what Glibc's Swift module does not import: epoll, eventfd, signalfd,
// recvmmsg/sendmmsg (which need _GNU_SOURCE), the CMSG_* macros, UDP GSO/GRO, CPU affinity
// and relaxed single-writer counters. No logic lives here.
#ifndef C_FERRY_LINUX_H
#define C_FERRY_LINUX_H

// No _GNU_SOURCE here: this header is read in the same clang module graph as Glibc's and
// libsystemd's, and a different macro state makes their shared system headers clash
// ("fds_bits ... is not present in definition of fd_set"). What needs _GNU_SOURCE (mmsghdr,
// recvmmsg, CPU_SET) stays in shim.c behind plain wrappers.
#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <signal.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

static const int ferry_sol_udp = SOL_UDP;
static const int ferry_udp_segment = UDP_SEGMENT;
static const int ferry_udp_gro = UDP_GRO;
static const int ferry_ipv6_v6only = IPV6_V6ONLY;
static const int ferry_ip_mtu_discover = IP_MTU_DISCOVER;
static const int ferry_ip_pmtudisc_do = IP_PMTUDISC_DO;
static const int ferry_ip_pmtudisc_dont = IP_PMTUDISC_DONT;
static const int ferry_ipv6_mtu_discover = IPV6_MTU_DISCOVER;

// Layout-identical to glibc's `struct mmsghdr`, which is hidden from Swift without _GNU_SOURCE.
struct ferry_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

int ferry_recvmmsg(int fd, struct ferry_mmsghdr *msgs, unsigned int vlen, int flags);
int ferry_sendmmsg(int fd, struct ferry_mmsghdr *msgs, unsigned int vlen, int flags);

// Room a control buffer needs for one UDP_SEGMENT / UDP_GRO message (a uint16 / int payload).
size_t ferry_cmsg_space_segment(void);
size_t ferry_cmsg_space_gro(void);
// Writes one UDP_SEGMENT control message into hdr's control buffer (which must have
// ferry_cmsg_space_segment() bytes) and sets msg_controllen. Clears it when segment == 0.
void ferry_cmsg_set_segment(struct msghdr *hdr, uint16_t segment);
// The UDP_SEGMENT size set on a message to send, or 0 (for inspecting a send queue in tests).
uint16_t ferry_cmsg_get_segment(const struct msghdr *hdr);
// The GRO segment size the kernel reported for a received message, or 0 when none.
int ferry_cmsg_gro_size(const struct msghdr *hdr);

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int ferry_accept4(int fd, struct sockaddr_storage *addr, socklen_t *len);

int ferry_pin_current_thread(int cpu);
/// The credentials of the process at the other end of a Unix socket (SO_PEERCRED): 0, or -1
/// with errno set.
int ferry_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid);
int ferry_set_thread_name(const char *name);
int ferry_block_signals(const int *signals, int count);
int ferry_signalfd(const int *signals, int count);
int ferry_cpu_count(void);

// Counters written by exactly one thread and read by a scraper: a relaxed load and a relaxed
// store compile to plain moves on x86-64 and arm64; there is no read-modify-write.
static inline void ferry_counter_add(uint64_t *slot, uint64_t n) {
    __atomic_store_n(slot, __atomic_load_n(slot, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}
static inline void ferry_counter_set(uint64_t *slot, uint64_t v) {
    __atomic_store_n(slot, v, __ATOMIC_RELAXED);
}
static inline uint64_t ferry_counter_load(const uint64_t *slot) {
    return __atomic_load_n(slot, __ATOMIC_RELAXED);
}

static inline uint16_t ferry_htons(uint16_t v) { return __builtin_bswap16(v); }

// A raw IPv4 UDP socket (SOCK_RAW, IPPROTO_UDP) that keeps only what arrives for UDP port `port`
// with STUN's magic cookie at bytes 4-7 of the payload: a classic-BPF filter attached with
// SO_ATTACH_FILTER, so the kernel copies nothing else (WireGuard's own packets on that port stay
// WireGuard's). Non-blocking, close-on-exec. Needs CAP_NET_RAW: -1 with errno set otherwise.
int ferry_stun_port_socket(uint16_t port);

#endif
