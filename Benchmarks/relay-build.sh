# Sourced by the relay benchmarks' run.sh: builds the generator, the sink and the C forwarder
# into $out, ferryd in release mode, and installs coturn if missing. Needs $root.
out="$root/Benchmarks/out"
mkdir -p "$out"
command -v turnserver >/dev/null || "$root/scripts/setup.sh" test
gcc -O2 -Wall -o "$out/tgen" "$root/Benchmarks/turn-relay/tgen.c"
for p in cforward loadgen sink; do gcc -O2 -Wall -o "$out/$p" "$root/Benchmarks/udp-forward/$p.c"; done
("$root/scripts/build-release.sh" --product ferryd >/dev/null)
