// Thin C glue over libbpf (Debian's libbpf-dev) for ferryd's XDP fast path: open and load the
// program from its object bytes with the tables sized, attach it to an interface through a BPF
// link, and the map calls. Policy (what goes in the maps, when, which interfaces) is Swift's
// (FerryXDP). libbpf's headers stay here: Swift sees only these functions.
#ifndef FERRY_XDP_LOADER_H
#define FERRY_XDP_LOADER_H

#include <stddef.h>
#include <stdint.h>

struct ferry_xdp;

enum ferry_xdp_map {
    FERRY_XDP_MAP_RELAY4 = 0, FERRY_XDP_MAP_COUNTS, FERRY_XDP_MAP_PORTS, FERRY_XDP_MAP_STATS,
    FERRY_XDP_MAP_CHANNEL_IN4, FERRY_XDP_MAP_CHANNEL_OUT4, FERRY_XDP_MAP_CHANNEL_COUNTS,
    FERRY_XDP_MAP_TURN_PORTS, FERRY_XDP_MAP_TURN_CONFIG, FERRY_XDP_MAP_TX_PORTS, FERRY_XDP_MAP_COUNT
};

// Sizes of the maps that depend on the configuration (each at least 1).
struct ferry_xdp_sizes {
    uint32_t relay_flows;       // relay4
    uint32_t relay_counters;    // relay_counts
    uint32_t channels;          // channel_in4 and channel_out4 each
    uint32_t channel_counters;  // channel_counts
};

// Loads the program into the kernel with its maps sized. NULL on failure, with libbpf's or the
// kernel's reason in `err`.
struct ferry_xdp *ferry_xdp_load(const void *object, size_t size, const struct ferry_xdp_sizes *sizes,
                                 char *err, size_t errlen);

// The descriptor of one of the program's maps (owned by the loaded object).
int ferry_xdp_map_fd(const struct ferry_xdp *x, enum ferry_xdp_map which);

// Attaches the program to `ifindex` through a BPF link, in the driver (native) or generic mode.
// Returns the link's descriptor (closing it, or the process ending, detaches: nothing of a
// ferryd outlives it) or -errno.
int ferry_xdp_attach(const struct ferry_xdp *x, int ifindex, int native);

// Unloads the program and frees its maps (once every link is closed).
void ferry_xdp_close(struct ferry_xdp *x);

// Map calls: 0 or -errno.
int ferry_xdp_update(int map_fd, const void *key, const void *value);
int ferry_xdp_delete(int map_fd, const void *key);
int ferry_xdp_lookup(int map_fd, const void *key, void *value);

// CPUs a per-CPU map holds a value for (libbpf_num_possible_cpus), or -errno.
int ferry_xdp_possible_cpus(void);

#endif
