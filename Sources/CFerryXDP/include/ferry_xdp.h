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

// The program's own per-CPU counters (index into the stats map).
enum ferry_xdp_stat {
    FERRY_XDP_FORWARDED = 0,       // rewritten and sent back out (XDP_TX)
    FERRY_XDP_FORWARDED_BYTES,     // their UDP payload bytes
    FERRY_XDP_PASS_NO_ENTRY,       // WireGuard data to a relay port with no entry: user space decides
    FERRY_XDP_PASS_NOT_DATA,       // to a relay port but not WireGuard data (control, handshakes)
    FERRY_XDP_PASS_FRAGMENT,       // a fragment, or IP options: never parsed here
    FERRY_XDP_PASS_TRUNCATED,      // lengths that do not add up
    FERRY_XDP_PASS_NO_ROUTE,       // no neighbour or route out of the arrival interface
    FERRY_XDP_PASS_FORWARDING_OFF, // the interface does not forward: the kernel refuses XDP route lookups
    FERRY_XDP_STAT_COUNT
};

#endif
