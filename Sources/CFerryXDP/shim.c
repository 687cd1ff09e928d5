#include "ferry_xdp_loader.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct ferry_xdp {
    struct bpf_object *object;
    int program;
    int maps[FERRY_XDP_MAP_COUNT];
};

// libbpf prints its diagnostics through this hook: the last warning is kept for the error ferryd
// reports (loading happens once, on the main thread, before the workers start).
static char last_message[512];

static int keep_last(enum libbpf_print_level level, const char *format, va_list args) {
    if (level == LIBBPF_DEBUG) return 0;
    vsnprintf(last_message, sizeof(last_message), format, args);
    size_t n = strlen(last_message);
    while (n > 0 && last_message[n - 1] == '\n') last_message[--n] = 0;
    return 0;
}

static void fail(char *err, size_t errlen, const char *what, int code) {
    if (last_message[0])
        snprintf(err, errlen, "%s: %s (%s)", what, strerror(code), last_message);
    else
        snprintf(err, errlen, "%s: %s", what, strerror(code));
}

static int size_map(struct bpf_object *obj, const char *name, uint32_t entries) {
    struct bpf_map *map = bpf_object__find_map_by_name(obj, name);
    return map && entries > 0 ? bpf_map__set_max_entries(map, entries) : -1;
}

struct ferry_xdp *ferry_xdp_load(const void *object, size_t size, const struct ferry_xdp_sizes *sizes,
                                 char *err, size_t errlen) {
    static const char *names[FERRY_XDP_MAP_COUNT] = {
        "relay4", "relay_counts", "relay_ports", "stats",
        "channel_in4", "channel_out4", "channel_counts", "turn_ports", "turn_config", "tx_ports",
    };
    last_message[0] = 0;
    libbpf_set_print(keep_last);
    struct bpf_object *obj = bpf_object__open_mem(object, size, NULL);
    if (!obj) {
        fail(err, errlen, "opening the XDP object", errno);
        return NULL;
    }
    if (size_map(obj, "relay4", sizes->relay_flows) || size_map(obj, "relay_counts", sizes->relay_counters) ||
        size_map(obj, "channel_in4", sizes->channels) || size_map(obj, "channel_out4", sizes->channels) ||
        size_map(obj, "channel_counts", sizes->channel_counters)) {
        fail(err, errlen, "sizing the XDP maps", EINVAL);
        bpf_object__close(obj);
        return NULL;
    }
    if (bpf_object__load(obj)) {
        fail(err, errlen, "loading the XDP program", errno);
        bpf_object__close(obj);
        return NULL;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(obj, "ferry_xdp");
    struct ferry_xdp *x = calloc(1, sizeof(*x));
    if (!prog || !x) {
        fail(err, errlen, "finding the XDP program", ENOENT);
        free(x);
        bpf_object__close(obj);
        return NULL;
    }
    x->object = obj;
    x->program = bpf_program__fd(prog);
    for (int i = 0; i < FERRY_XDP_MAP_COUNT; i++) x->maps[i] = bpf_object__find_map_fd_by_name(obj, names[i]);
    return x;
}

int ferry_xdp_map_fd(const struct ferry_xdp *x, enum ferry_xdp_map which) { return x->maps[which]; }

int ferry_xdp_attach(const struct ferry_xdp *x, int ifindex, int native) {
    LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = native ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE);
    int fd = bpf_link_create(x->program, ifindex, BPF_XDP, &opts);
    return fd < 0 ? -errno : fd;
}

void ferry_xdp_close(struct ferry_xdp *x) {
    if (!x) return;
    bpf_object__close(x->object);
    free(x);
}

int ferry_xdp_update(int map_fd, const void *key, const void *value) {
    return bpf_map_update_elem(map_fd, key, value, BPF_ANY) ? -errno : 0;
}

int ferry_xdp_delete(int map_fd, const void *key) {
    return bpf_map_delete_elem(map_fd, key) ? -errno : 0;
}

int ferry_xdp_lookup(int map_fd, const void *key, void *value) {
    return bpf_map_lookup_elem(map_fd, key, value) ? -errno : 0;
}

int ferry_xdp_possible_cpus(void) { return libbpf_num_possible_cpus(); }
