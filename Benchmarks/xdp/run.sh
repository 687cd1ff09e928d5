#!/usr/bin/env bash
# Builds the generator, the sink and the C forwarder, builds ferryd in release mode, and runs the
# XDP benchmark in two network namespaces (root). Extra arguments go to run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/Benchmarks/relay-build.sh"
# A pass-through XDP program for the peers' veth (run.py says why).
printf '#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\nSEC("xdp") int pass(struct xdp_md *c) { return XDP_PASS; }\nchar _l[] SEC("license") = "GPL";\n' \
  | clang -O2 -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -x c -c - -o "$out/xdp-pass.o"
command -v ethtool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ethtool >/dev/null
exec python3 "$here/run.py" --ferryd "$root/.build/release/ferryd" --bindir "$out" "$@"
