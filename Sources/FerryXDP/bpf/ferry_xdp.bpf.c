// Ferry's XDP fast path (docs/xdp.md). Compiled with clang's BPF target by the BPFObject build
// plugin and loaded by ferryd (FerryXDP/XDPProgram.swift), which owns every map entry: this
// program only acts on what user space put there and passes everything else up unchanged, so the
// user-space relay stays complete on its own.
//
// Forwarded here: WireGuard transport data (type 4) over IPv4 without options or fragmentation,
// to a relay port, from a (source, receiver index) that a bound native-relay session has in
// `relay4`: rewritten to the partner's bound address, from the relay's own address and port,
// and sent back out of the arrival interface (XDP_TX). Handshakes, control messages, STUN, TURN,
// IPv6 and anything not parsed to the end go up.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ferry_xdp.h"

#define AF_INET 2
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
// What the kernel gives a datagram user space sends (IPDEFTTL): the fast path's packets look alike.
#define RELAY_TTL 64
#define WG_DATA 4
#define WG_DATA_MIN 32

// max_entries are set by ferryd before loading (from relay.max_sessions).
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, struct ferry_relay_key);
    __type(value, struct ferry_relay_dest);
} relay4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ferry_flow_count);
} relay_counts SEC(".maps");

// The relay listeners' UDP ports (network order) → 1.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u16);
    __type(value, __u8);
} relay_ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FERRY_XDP_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 stat, __u64 n) {
    __u64 *v = bpf_map_lookup_elem(&stats, &stat);
    if (v) *v += n;
}

static __always_inline int pass(__u32 stat) {
    count(stat, 1);
    return XDP_PASS;
}

static __always_inline __u16 fold(__u32 sum) {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

// The header checksum of a 20-byte IPv4 header, computed afresh.
static __always_inline __u16 ip_checksum(struct iphdr *ip) {
    __u32 sum = 0;
    __u16 *w = (__u16 *)ip;
    ip->check = 0;
#pragma unroll
    for (int i = 0; i < 10; i++) sum += w[i];
    return ~fold(sum);
}

SEC("xdp")
int ferry_xdp(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP) return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    if (ip->ihl != 5) {
        // Options: the UDP header is elsewhere; only a relay port's traffic is counted.
        return XDP_PASS;
    }
    if ((void *)(udp + 1) > end) return XDP_PASS;
    __u16 relay_port = udp->dest;
    if (!bpf_map_lookup_elem(&relay_ports, &relay_port)) return XDP_PASS;
    if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) return pass(FERRY_XDP_PASS_FRAGMENT);

    __u8 *wg = (void *)(udp + 1);
    if ((void *)(wg + 8) > end) return pass(FERRY_XDP_PASS_TRUNCATED);
    if (wg[0] != WG_DATA || wg[1] | wg[2] | wg[3]) return pass(FERRY_XDP_PASS_NOT_DATA);
    __u32 udp_len = bpf_ntohs(udp->len);
    __u32 ip_len = bpf_ntohs(ip->tot_len);
    if (udp_len < sizeof(*udp) + WG_DATA_MIN || ip_len != sizeof(*ip) + udp_len ||
        (void *)udp + udp_len > end) return pass(FERRY_XDP_PASS_TRUNCATED);

    struct ferry_relay_key key = {
        .source_ip = ip->saddr, .source_port = udp->source,
        .index = *(__u32 *)(wg + 4),
    };
    struct ferry_relay_dest *dest = bpf_map_lookup_elem(&relay4, &key);
    if (!dest) return pass(FERRY_XDP_PASS_NO_ENTRY);

    // Out of the arrival interface, as the relay's socket would send it: the route and neighbour
    // the kernel has for the partner. No neighbour yet, or a route out of another interface:
    // user space sends it (and the kernel resolves the neighbour for next time).
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = relay_port;
    fib.dport = dest->dest_port;
    fib.tot_len = ip_len;
    fib.ipv4_src = ip->daddr;
    fib.ipv4_dst = dest->dest_ip;
    fib.ifindex = ctx->ingress_ifindex;
    long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
    // The kernel answers route lookups from XDP only on interfaces that forward
    // (net.ipv4.conf.<interface>.forwarding = 1): ferryd warns at start when one does not.
    if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) return pass(FERRY_XDP_PASS_FORWARDING_OFF);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != ctx->ingress_ifindex) return pass(FERRY_XDP_PASS_NO_ROUTE);

    // The UDP checksum, updated (RFC 1624): the pair (source, source port) becomes (partner,
    // partner port) while the relay's address and port only change places, which a ones'
    // complement sum does not see. Zero means none was sent (IPv4) and stays zero.
    if (udp->check) {
        __u32 sum = (__u16)~udp->check;
        sum += (__u16)~(ip->saddr & 0xffff) + (__u16)~(ip->saddr >> 16) + (__u16)~udp->source;
        sum += (dest->dest_ip & 0xffff) + (dest->dest_ip >> 16) + dest->dest_port;
        __u16 check = ~fold(sum);
        udp->check = check ? check : 0xffff;
    }
    ip->saddr = ip->daddr;
    ip->daddr = dest->dest_ip;
    udp->source = relay_port;
    udp->dest = dest->dest_port;
    ip->ttl = RELAY_TTL;
    ip->check = ip_checksum(ip);
    __builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

    __u32 payload = udp_len - sizeof(*udp);
    struct ferry_flow_count *flow = bpf_map_lookup_elem(&relay_counts, &dest->counter);
    if (flow) {
        flow->packets += 1;
        flow->bytes += payload;
    }
    count(FERRY_XDP_FORWARDED, 1);
    count(FERRY_XDP_FORWARDED_BYTES, payload);
    return XDP_TX;
}

// GPL-compatible: bpf_fib_lookup is offered to such programs only.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
