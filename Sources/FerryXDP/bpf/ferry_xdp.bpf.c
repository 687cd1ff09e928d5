// Ferry's XDP fast path (docs/xdp.md). Compiled with clang's BPF target by the BPFObject build
// plugin and loaded by ferryd (FerryXDP/XDPProgram.swift), which owns every map entry: this
// program only acts on what user space put there and passes everything else up unchanged, so the
// user-space relay stays complete on its own.
//
// Forwarded here, IPv4 without options or fragmentation only, each sent as ferryd's socket would
// have sent it: back out of the arrival interface (XDP_TX), or out of another interface the
// program is attached to when the route says so (XDP_REDIRECT through `tx_ports`):
// - native relay: WireGuard transport data (type 4) to a relay port, from a (source, receiver
//   index) a bound session has in `relay4`: to the partner's bound address, from the relay's
//   own address and port;
// - TURN channels: ChannelData from a client to a TURN listener's port whose (client, port,
//   channel) is in `channel_in4`: the 4-byte header stripped, to the peer from the relayed
//   address; and a datagram from a peer to a relayed port whose (peer, port) is in
//   `channel_out4`: the header added, to the client from the listener's address.
// Handshakes, control messages, STUN, TURN requests, IPv6 and anything not parsed to the end go up.
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

// max_entries are set by ferryd before loading (from engine.xdp_sessions).
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
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, struct ferry_channel_in_key);
    __type(value, struct ferry_channel_in_dest);
} channel_in4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, struct ferry_channel_out_key);
    __type(value, struct ferry_channel_out_dest);
} channel_out4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ferry_flow_count);
} channel_counts SEC(".maps");

// The TURN UDP listeners' ports (network order) → 1.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u16);
    __type(value, __u8);
} turn_ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ferry_turn_config);
} turn_config SEC(".maps");

// The interfaces ferryd attached the program to (ifindex → ifindex): a packet the route sends out
// of one of them other than its arrival interface is redirected there. Any other interface: the
// packet goes up and the kernel's stack sends what user space decides.
struct {
    __uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} tx_ports SEC(".maps");

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

static __always_inline void count_flow(void *counts, __u32 counter, __u64 bytes) {
    struct ferry_flow_count *flow = bpf_map_lookup_elem(counts, &counter);
    if (flow) {
        flow->packets += 1;
        flow->bytes += bytes;
    }
}

// Ones' complement arithmetic (RFC 1071, RFC 1624). Fields are summed as they lie in the packet
// (network order): the sum does not depend on byte order as long as every term is read alike.
static __always_inline __u16 fold(__u32 sum) {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

static __always_inline __u32 add32(__u32 sum, __u32 v) { return sum + (v & 0xffff) + (v >> 16); }
static __always_inline __u32 sub32(__u32 sum, __u32 v) { return sum + (__u16)~(v & 0xffff) + (__u16)~(v >> 16); }
static __always_inline __u32 sub16(__u32 sum, __u16 v) { return sum + (__u16)~v; }

// A UDP checksum from `sum` (the old one's complement plus the changes): zero is sent as 0xffff,
// since zero means none.
static __always_inline __u16 udp_check(__u32 sum) {
    __u16 check = ~fold(sum);
    return check ? check : 0xffff;
}

// Whether the UDP checksum field holds only the pseudo-header's sum: a packet whose sender left
// the checksum to be completed by offload (CHECKSUM_PARTIAL: a veth from a local namespace, a
// virtio NIC's host) reaches generic XDP that way. The kernel would complete it later from the
// packet's old layout, so such a packet goes up (user space's socket gets it whole). A complete
// checksum equal to that sum by chance (1 in 65536) goes up too: harmless.
static __always_inline int checksum_partial(struct iphdr *ip, struct udphdr *udp) {
    __u32 sum = add32(0, ip->saddr);
    sum = add32(sum, ip->daddr);
    sum += bpf_htons(IPPROTO_UDP) + udp->len;
    return udp->check == fold(sum);
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

// The route and neighbour the kernel has for `dst` from `*src` (0: the address the route
// prefers, written back), as the relay's socket would send it. XDP_TX (go, out of `*out_if`:
// MACs filled in) or the reason to pass. No neighbour yet: user space sends it (and the kernel
// resolves the neighbour for next time); a route out of an interface the program is not on too.
static __always_inline int route(struct xdp_md *ctx, struct ethhdr *eth, __u32 *src, __u32 dst,
                                 __u16 sport, __u16 dport, __u32 tot_len, __u32 *out_if) {
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = sport;
    fib.dport = dport;
    fib.tot_len = tot_len;
    fib.ipv4_src = *src;
    fib.ipv4_dst = dst;
    // A lookup as for a packet arriving on this interface, not BPF_FIB_LOOKUP_OUTPUT: that one
    // takes the interface as the way out and so finds only routes through it (a peer on another
    // of the relay's networks was sent back out of the arrival interface, toward its default route).
    fib.ifindex = ctx->ingress_ifindex;
    __u32 flags = *src ? 0 : BPF_FIB_LOOKUP_SRC;
    long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), flags);
    // The kernel answers route lookups from XDP only on interfaces that forward
    // (net.ipv4.conf.<interface>.forwarding = 1): ferryd warns at start when one does not.
    if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) return pass(FERRY_XDP_PASS_FORWARDING_OFF);
    if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) return pass(FERRY_XDP_PASS_TOO_BIG);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS) return pass(FERRY_XDP_PASS_NO_ROUTE);
    __u32 out = fib.ifindex;
    if (out != ctx->ingress_ifindex && !bpf_map_lookup_elem(&tx_ports, &out)) return pass(FERRY_XDP_PASS_OTHER_INTERFACE);
    *out_if = out;
    *src = fib.ipv4_src;
    __builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
    return XDP_TX;
}

// The rewritten packet out of `out_if`: back out of the arrival interface, or redirected to
// another the program is attached to (checked by `route`; were it gone meanwhile, the packet
// goes up as rewritten and the kernel's stack forwards it).
static __always_inline int send(struct xdp_md *ctx, __u32 out_if) {
    if (out_if == ctx->ingress_ifindex) return XDP_TX;
    count(FERRY_XDP_REDIRECTED, 1);
    return bpf_redirect_map(&tx_ports, out_if, XDP_PASS);
}

// Native relay: WireGuard data to a relay listener's port.
static __always_inline int relay(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp, void *end) {
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
    __u32 src = ip->daddr, out_if = 0;
    int verdict = route(ctx, eth, &src, dest->dest_ip, udp->dest, dest->dest_port, ip_len, &out_if);
    if (verdict != XDP_TX) return verdict;

    // The pair (source, source port) becomes (partner, partner port) while the relay's address
    // and port only change places, which a ones' complement sum does not see. Zero means none
    // was sent (IPv4) and stays zero.
    if (udp->check) {
        __u32 sum = (__u16)~udp->check;
        sum = sub32(sum, ip->saddr);
        sum = sub16(sum, udp->source);
        sum = add32(sum, dest->dest_ip) + dest->dest_port;
        udp->check = udp_check(sum);
    }
    __u16 relay_port = udp->dest;
    ip->saddr = ip->daddr;
    ip->daddr = dest->dest_ip;
    udp->source = relay_port;
    udp->dest = dest->dest_port;
    ip->ttl = RELAY_TTL;
    ip->check = ip_checksum(ip);

    __u32 payload = udp_len - sizeof(*udp);
    count_flow(&relay_counts, dest->counter, payload);
    count(FERRY_XDP_FORWARDED, 1);
    count(FERRY_XDP_FORWARDED_BYTES, payload);
    return send(ctx, out_if);
}

#include "ferry_xdp_turn.h"

SEC("xdp")
int ferry_xdp(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP) return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    // Options put the UDP header elsewhere: never parsed here (and not counted: the port is unknown).
    if (ip->ihl != 5 || (void *)(udp + 1) > end) return XDP_PASS;
    __u16 port = udp->dest;
    int which = bpf_map_lookup_elem(&relay_ports, &port) ? 1 : bpf_map_lookup_elem(&turn_ports, &port) ? 2 : 0;
    if (!which) {
        __u32 zero = 0;
        struct ferry_turn_config *turn = bpf_map_lookup_elem(&turn_config, &zero);
        __u16 p = bpf_ntohs(port);
        if (!turn || p < turn->relay_port_min || p > turn->relay_port_max) return XDP_PASS;
        which = 3;
    }
    if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) return pass(FERRY_XDP_PASS_FRAGMENT);
    if (checksum_partial(ip, udp)) return pass(FERRY_XDP_PASS_CHECKSUM_PARTIAL);
    if (which == 1) return relay(ctx, eth, ip, udp, end);
    if (which == 2) return channel_to_peer(ctx, eth, ip, udp, end);
    return channel_to_client(ctx, eth, ip, udp, end);
}

// GPL-compatible: bpf_fib_lookup is offered to such programs only.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
