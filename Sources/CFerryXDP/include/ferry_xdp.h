// The XDP fast path's maps as the kernel program (Sources/FerryXDP/bpf/ferry_xdp.bpf.c) and ferryd
// both see them: one header, so their layouts cannot drift. Addresses and ports are in network
// byte order, receiver indices as WireGuard puts them on the wire (the four bytes as they are).
// docs/xdp.md says what the program forwards and what it passes up.
#ifndef FERRY_XDP_H
#define FERRY_XDP_H

#ifdef __bpf__
#include <linux/types.h>
typedef __u8 fx_u8;
typedef __u16 fx_u16;
typedef __u32 fx_u32;
typedef __u64 fx_u64;
#else
#include <stddef.h>
#include <stdint.h>
typedef uint8_t fx_u8;
typedef uint16_t fx_u16;
typedef uint32_t fx_u32;
typedef uint64_t fx_u64;
#endif

// A native-relay flow: WireGuard data from (source address, source port) to any relay port
// carrying this receiver index. Mirrors RelaySessions' byIndex table (user space, too, forwards
// alike whichever relay port a packet arrives on).
struct ferry_relay_key {
    fx_u32 source_ip;
    fx_u16 source_port;
    fx_u16 pad;
    fx_u32 index;
};

// Where such a packet goes (the partner's bound address) and the slot of its counters.
struct ferry_relay_dest {
    fx_u32 dest_ip;
    fx_u16 dest_port;
    fx_u16 pad;
    fx_u32 counter;
};

// Per flow direction, per CPU: what the kernel forwarded (bytes: UDP payloads, as user space counts).
struct ferry_flow_count {
    fx_u64 packets;
    fx_u64 bytes;
};

// A TURN channel, client to peer: ChannelData over UDP from (client address, client port) to a
// TURN listener's port, on channel `channel` (the two bytes as on the wire). Mirrors a bound
// channel of a UDP client's allocation (TURNFastPath).
struct ferry_channel_in_key {
    fx_u32 client_ip;
    fx_u16 client_port;
    fx_u16 server_port;
    fx_u16 channel;
    fx_u16 pad;
};

// Where its data goes: from the allocation's relayed address to the peer. `relay_ip` 0: the
// relayed socket is bound to every address, and the route picks the source. `expiry`:
// monotonic nanoseconds (bpf_ktime_get_ns) at which the channel, its permission or its
// allocation lapses first; from then on the entry forwards nothing, whenever ferryd removes it.
struct ferry_channel_in_dest {
    fx_u32 relay_ip;
    fx_u32 peer_ip;
    fx_u16 relay_port;
    fx_u16 peer_port;
    fx_u32 counter;
    fx_u64 expiry;
};

// A TURN channel, peer to client: a datagram from (peer address, peer port) to a relayed port.
struct ferry_channel_out_key {
    fx_u32 peer_ip;
    fx_u16 peer_port;
    fx_u16 relay_port;
};

// Where it goes, as ChannelData on `channel`: to the client, from the listener's address and
// port it reached (`server_ip` 0: a listener bound to every address; the route picks). A
// datagram to another address than `relay_ip` (when not 0) is not the relayed socket's.
struct ferry_channel_out_dest {
    fx_u32 client_ip;
    fx_u32 server_ip;
    fx_u32 relay_ip;
    fx_u16 client_port;
    fx_u16 server_port;
    fx_u16 channel;
    fx_u16 pad;
    fx_u32 counter;
    fx_u64 expiry;
};

// Where TURN's relayed ports are (host order; 0, 0 when ferryd serves no TURN over UDP).
struct ferry_turn_config {
    fx_u16 relay_port_min;
    fx_u16 relay_port_max;
    fx_u32 pad;
};

// The program's own per-CPU counters (index into the stats map).
enum ferry_xdp_stat {
    FERRY_XDP_FORWARDED = 0,       // rewritten and sent on (XDP_TX, or XDP_REDIRECT to another attached interface)
    FERRY_XDP_FORWARDED_BYTES,     // their UDP payload bytes
    FERRY_XDP_PASS_NO_ENTRY,       // WireGuard data to a relay port with no entry: user space decides
    FERRY_XDP_PASS_NOT_DATA,       // to a relay port but not WireGuard data (control, handshakes)
    FERRY_XDP_PASS_FRAGMENT,       // a fragment, or IP options: never parsed here
    FERRY_XDP_PASS_TRUNCATED,      // lengths that do not add up
    FERRY_XDP_PASS_NO_ROUTE,       // no route, or no neighbour yet (user space's send resolves it)
    FERRY_XDP_PASS_FORWARDING_OFF, // the interface does not forward: the kernel refuses XDP route lookups
    FERRY_XDP_CHANNEL_TO_PEER,     // TURN ChannelData stripped and sent to its peer
    FERRY_XDP_CHANNEL_TO_PEER_BYTES,
    FERRY_XDP_CHANNEL_TO_CLIENT,   // a peer's datagram sent to its client as ChannelData
    FERRY_XDP_CHANNEL_TO_CLIENT_BYTES,
    FERRY_XDP_PASS_EXPIRED,        // an entry past its expiry: user space decides (and removes it)
    FERRY_XDP_PASS_PADDED,         // ChannelData with padding after its data (legal, rare over UDP)
    FERRY_XDP_PASS_TOO_BIG,        // the ChannelData header would take it past the route's MTU
    FERRY_XDP_PASS_NO_HEADROOM,    // the driver left no room in front for the ChannelData header
    FERRY_XDP_PASS_CHECKSUM_PARTIAL, // the UDP checksum is still to be completed (a local or virtual sender's offload)
    FERRY_XDP_REDIRECTED,          // of the packets forwarded, those sent out of another attached interface
    FERRY_XDP_PASS_OTHER_INTERFACE, // routed out of an interface the program is not attached to
    FERRY_XDP_STAT_COUNT
};

#endif
