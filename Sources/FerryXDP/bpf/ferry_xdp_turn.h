// TURN channels in the XDP program (included by ferry_xdp.bpf.c; docs/xdp.md): ChannelData over
// UDP (RFC 8656 §12) from a client, stripped of its 4-byte header and sent to the peer from the
// relayed address; a peer's datagram to a relayed port, given the header and sent to the client
// from the listener's address. Only channels ferryd put in `channel_in4` / `channel_out4`, and
// only until the entry's expiry: the first lapse of the channel, its permission or its allocation.

#define CHANNEL_HEADER 4
// Ethernet, IPv4 without options, UDP: what moves when the header is stripped or added.
#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

// The headers as they are rewritten: a copy on the stack, written back after the packet's head has
// moved, so a refusal leaves the packet untouched for user space.
struct headers {
    struct ethhdr eth;
    struct iphdr ip;
    struct udphdr udp;
} __attribute__((packed));

// Moves the packet's head by `delta` (positive: strips that many bytes after the headers;
// negative: makes room for them), writes `h` at the new start and, when room was made, the
// ChannelData header after it. XDP_TX (done: the caller sends it), or XDP_PASS when the kernel
// had no room (nothing changed).
static __always_inline int move_headers(struct xdp_md *ctx, int delta, struct headers *h, __u16 channel, __u16 length) {
    if (bpf_xdp_adjust_head(ctx, delta)) return pass(FERRY_XDP_PASS_NO_HEADROOM);
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    // Cannot fail (the packet held the headers, and the channel header when one is added,
    // before it moved); the verifier wants the bounds all the same.
    if (data + HEADERS + (delta < 0 ? CHANNEL_HEADER : 0) > end) return XDP_ABORTED;
    __builtin_memcpy(data, h, HEADERS);
    if (delta < 0) {
        if (data + HEADERS + CHANNEL_HEADER > end) return XDP_ABORTED;
        __u16 *header = data + HEADERS;
        header[0] = channel;
        header[1] = length;
    }
    return XDP_TX;
}

// The UDP checksum after `h` changed from the packet's addresses, ports and length (`old`) and
// the channel header's two words left or came (RFC 1624: out with the old, in with the new).
// Zero means none was sent (IPv4) and stays zero.
static __always_inline void update_check(struct headers *h, struct headers *old, int added, __u16 channel, __u16 length) {
    if (!old->udp.check) return;
    __u32 sum = (__u16)~old->udp.check;
    sum = sub32(sum, old->ip.saddr);
    sum = sub32(sum, old->ip.daddr);
    sum = sub16(sum, old->udp.source);
    sum = sub16(sum, old->udp.dest);
    sum = sub16(sum, old->udp.len);
    sum = sub16(sum, old->udp.len);
    sum = add32(sum, h->ip.saddr);
    sum = add32(sum, h->ip.daddr);
    sum += h->udp.source + h->udp.dest + h->udp.len + h->udp.len;
    // Stripped: the header's words leave the sum; added: they join it.
    if (added) {
        sum += channel + length;
    } else {
        sum = sub16(sum, channel);
        sum = sub16(sum, length);
    }
    h->udp.check = udp_check(sum);
}

// ChannelData from a client to a TURN listener's port.
static __always_inline int channel_to_peer(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp, void *end) {
    __u8 *cd = (void *)(udp + 1);
    if ((void *)(cd + CHANNEL_HEADER) > end) return pass(FERRY_XDP_PASS_TRUNCATED);
    // 0x40–0x7F: a channel number (RFC 7983); anything else (STUN) is user space's.
    if ((cd[0] & 0xC0) != 0x40) return pass(FERRY_XDP_PASS_NOT_DATA);
    __u16 channel = *(__u16 *)cd, length_field = *(__u16 *)(cd + 2);
    __u32 length = bpf_ntohs(length_field);
    __u32 udp_len = bpf_ntohs(udp->len);
    __u32 ip_len = bpf_ntohs(ip->tot_len);
    if (ip_len != sizeof(*ip) + udp_len || (void *)udp + udp_len > end ||
        udp_len < sizeof(*udp) + CHANNEL_HEADER + length) return pass(FERRY_XDP_PASS_TRUNCATED);
    if (udp_len != sizeof(*udp) + CHANNEL_HEADER + length) return pass(FERRY_XDP_PASS_PADDED);

    struct ferry_channel_in_key key = {
        .client_ip = ip->saddr, .client_port = udp->source, .server_port = udp->dest, .channel = channel,
    };
    struct ferry_channel_in_dest *dest = bpf_map_lookup_elem(&channel_in4, &key);
    if (!dest) return pass(FERRY_XDP_PASS_NO_ENTRY);
    if (bpf_ktime_get_ns() >= dest->expiry) return pass(FERRY_XDP_PASS_EXPIRED);
    struct headers old __attribute__((aligned(8))), h __attribute__((aligned(8)));
    __builtin_memcpy(&old, eth, HEADERS);
    h = old;
    __u32 src = dest->relay_ip, out_if = 0;
    int verdict = route(ctx, &h.eth, &src, dest->peer_ip, dest->relay_port, dest->peer_port, ip_len - CHANNEL_HEADER, &out_if);
    if (verdict != XDP_TX) return verdict;
    h.ip.saddr = src;
    h.ip.daddr = dest->peer_ip;
    h.ip.tot_len = bpf_htons(ip_len - CHANNEL_HEADER);
    h.ip.ttl = RELAY_TTL;
    h.ip.check = ip_checksum((struct iphdr *)((__u8 *)&h + sizeof(struct ethhdr)));
    h.udp.source = dest->relay_port;
    h.udp.dest = dest->peer_port;
    h.udp.len = bpf_htons(udp_len - CHANNEL_HEADER);
    update_check(&h, &old, 0, channel, length_field);
    __u32 counter = dest->counter;
    verdict = move_headers(ctx, CHANNEL_HEADER, &h, 0, 0);
    if (verdict != XDP_TX) return verdict;
    count_flow(&channel_counts, counter, length);
    count(FERRY_XDP_CHANNEL_TO_PEER, 1);
    count(FERRY_XDP_CHANNEL_TO_PEER_BYTES, length);
    return send(ctx, out_if);
}

// A peer's datagram to a relayed port.
static __always_inline int channel_to_client(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp, void *end) {
    __u32 udp_len = bpf_ntohs(udp->len);
    __u32 ip_len = bpf_ntohs(ip->tot_len);
    if (udp_len < sizeof(*udp) || ip_len != sizeof(*ip) + udp_len || (void *)udp + udp_len > end)
        return pass(FERRY_XDP_PASS_TRUNCATED);
    struct ferry_channel_out_key key = { .peer_ip = ip->saddr, .peer_port = udp->source, .relay_port = udp->dest };
    struct ferry_channel_out_dest *dest = bpf_map_lookup_elem(&channel_out4, &key);
    if (!dest || (dest->relay_ip && dest->relay_ip != ip->daddr)) return pass(FERRY_XDP_PASS_NO_ENTRY);
    if (bpf_ktime_get_ns() >= dest->expiry) return pass(FERRY_XDP_PASS_EXPIRED);
    struct headers old __attribute__((aligned(8))), h __attribute__((aligned(8)));
    __builtin_memcpy(&old, eth, HEADERS);
    h = old;
    __u32 src = dest->server_ip, out_if = 0;
    int verdict = route(ctx, &h.eth, &src, dest->client_ip, dest->server_port, dest->client_port, ip_len + CHANNEL_HEADER, &out_if);
    if (verdict != XDP_TX) return verdict;
    __u32 length = udp_len - sizeof(*udp);
    __u16 channel = dest->channel, length_field = bpf_htons(length);
    h.ip.saddr = src;
    h.ip.daddr = dest->client_ip;
    h.ip.tot_len = bpf_htons(ip_len + CHANNEL_HEADER);
    h.ip.ttl = RELAY_TTL;
    h.ip.check = ip_checksum((struct iphdr *)((__u8 *)&h + sizeof(struct ethhdr)));
    h.udp.source = dest->server_port;
    h.udp.dest = dest->client_port;
    h.udp.len = bpf_htons(udp_len + CHANNEL_HEADER);
    update_check(&h, &old, 1, channel, length_field);
    __u32 counter = dest->counter;
    verdict = move_headers(ctx, -CHANNEL_HEADER, &h, channel, length_field);
    if (verdict != XDP_TX) return verdict;
    count_flow(&channel_counts, counter, length);
    count(FERRY_XDP_CHANNEL_TO_CLIENT, 1);
    count(FERRY_XDP_CHANNEL_TO_CLIENT_BYTES, length);
    return send(ctx, out_if);
}
