#!/usr/bin/env bash
# Builds the Debian package of ferry: ferryd and ferry (the Swift runtime linked in statically, so
# the package needs nothing beyond Debian's libssl3, libsystemd0, libnats3.4 and libbpf1), systemd units for a
# `ferry` system user with the hardened sandbox of deploy/systemd, the configuration in
# /etc/ferry (a conffile), the state directory /var/lib/ferry, man pages made from `--help`, and
# the dashboard, alert rules and certificate hooks of deploy/ in /usr/share/ferry. Installing does not start the
# service: the configuration needs the relay's address, realm, secret and certificates first.
#
#   scripts/package-deb.sh [--out DIR] [--skip-build]
#
# Prints the path of the .deb. Checked by Tests/integration/test_package.py (lintian, install,
# systemd-analyze verify, ferry config check, a probe of the installed ferryd, purge).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/.build/deb
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --skip-build) build=0; shift ;;
    *) echo "usage: $0 [--out DIR] [--skip-build]" >&2; exit 2 ;;
  esac
done

if [ $build = 1 ]; then
  # The Swift runtime statically, symbols bound at load: scripts/build-release.sh, the build the
  # tests made too (so this one finds it done). (lintian's informational
  # hardening-no-fortify-functions stays: -Xcc -D_FORTIFY_SOURCE=2 would rebuild every module for
  # the few libc calls of the C shims, a minute more of every CI run.)
  scripts/build-release.sh >&2
fi
bin=$root/.build/release
for b in ferryd ferry; do
  if ldd "$bin/$b" | grep -q libswiftCore; then
    echo "$bin/$b links the Swift runtime dynamically: build with --static-swift-stdlib" >&2
    exit 1
  fi
done

version=$(sed -n 's/.*static let string = "\(.*\)".*/\1/p' Sources/FerryConfig/Version.swift)
arch=$(dpkg --print-architecture)
pkg=ferry
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$pkg
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/ferry" \
  "$stage/usr/share/doc/$pkg" "$stage/usr/share/man/man1" "$stage/usr/share/man/man8" \
  "$stage/usr/share/$pkg/grafana" "$stage/usr/share/$pkg/prometheus" "$stage/usr/share/lintian/overrides"

# Binaries, stripped of symbols (a backtrace still names functions from the dynamic symbol table).
for b in ferryd ferry; do
  install -m 0755 "$bin/$b" "$stage/usr/bin/$b"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/$b"
done

# Units: deploy/systemd's, for the packaged paths and the `ferry` user. The service binds its own
# sockets unless ferryd.socket (and the others) are enabled for socket activation.
sed -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e '/^Requires=ferryd.socket/d' \
    -e 's|^# SIGTERM, and a hardened sandbox, as the system user ferry.*|# SIGTERM, and a hardened sandbox, as the system user ferry (the Debian package).|' \
    -e '/^# With socket activation/,/^# without it, remove/d' \
    deploy/systemd/ferryd.service > "$stage/lib/systemd/system/ferryd.service"
sed -i '/^# SIGTERM, and a hardened sandbox, as the system user/a # Socket activation is optional: enable ferryd.socket (and ferryd-admin.socket, ferryd-tls.socket)\n# and ferryd takes the passed sockets by name; otherwise it binds its listeners itself.' \
  "$stage/lib/systemd/system/ferryd.service"
for s in ferryd.socket ferryd-admin.socket ferryd-tls.socket; do
  install -m 0644 "deploy/systemd/$s" "$stage/lib/systemd/system/$s"
done
chmod 0644 "$stage/lib/systemd/system/"*

# 0644 in the archive; postinst makes it root:ferry 0640 (it holds the shared secret).
install -m 0644 deploy/ferry.toml "$stage/etc/ferry/ferry.toml"
install -m 0644 config/ferry.example.toml "$stage/usr/share/doc/$pkg/ferry.example.toml"
install -m 0644 deploy/grafana/ferry-dashboard.json "$stage/usr/share/$pkg/grafana/"
install -d "$stage/usr/share/$pkg/certbot"
install -m 0755 deploy/certbot/ferry-deploy-hook deploy/certbot/ferry-self-signed "$stage/usr/share/$pkg/certbot/"
install -m 0644 deploy/prometheus/ferry-alerts.yml deploy/prometheus/ferry-alerts.test.yml "$stage/usr/share/$pkg/prometheus/"
# engine.xdp's capabilities, as a drop-in the operator installs (docs/xdp.md): not granted by default.
install -d "$stage/usr/share/$pkg/systemd"
install -m 0644 deploy/systemd/ferryd-xdp.conf "$stage/usr/share/$pkg/systemd/"
install -m 0644 README.md "$stage/usr/share/doc/$pkg/README.md"
for d in docs/*.md; do install -m 0644 "$d" "$stage/usr/share/doc/$pkg/"; done

# Man pages from the commands' own help (the same text as docs/cli.md's flags).
manpage() { # name section summary helptext
  local name=$1 section=$2 summary=$3 text=$4
  {
    echo ".TH ${name^^} $section \"$(date -u +%Y-%m-%d -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")\" \"ferry $version\""
    echo ".SH NAME"
    echo "$name \\- $summary"
    echo ".SH DESCRIPTION"
    echo ".nf"
    sed -e 's/\\/\\\\/g' -e 's/^\./\\\&./' <<<"$text"
    echo ".fi"
    echo ".SH SEE ALSO"
    echo "/usr/share/doc/ferry/README.md, /usr/share/doc/ferry/cli.md, /usr/share/doc/ferry/configuration.md"
  } | gzip -9n > "$stage/usr/share/man/man$section/$name.$section.gz"
}
ferry_help=$("$bin/ferry" help)
for c in tunnel probe bench status keygen pubkey token config version; do
  ferry_help+=$'\n\n'"$("$bin/ferry" help $c)"
done
manpage ferry 1 "peer and operator tool of the Ferry relay: tunnel, probe, bench, status, keys, tokens" "$ferry_help"
manpage ferryd 8 "Ferry relay and signaling server for WireGuard overlays" "$("$bin/ferryd" --help)"

# Debian's copyright and changelog.
cat > "$stage/usr/share/doc/$pkg/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ferry
Source: https://github.com/ferry-relay/ferry

Files: *
Copyright: 2026 The Ferry developers
License: Apache-2.0

License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
changelog_date=$(date -u -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat > "$work/changelog.Debian" <<EOF
$pkg ($version-1) unstable; urgency=medium

  * ferry $version: ferryd, ferry, systemd units, configuration, man pages.

 -- Ferry developers <ferry@example.org>  $changelog_date
EOF
gzip -9n -c "$work/changelog.Debian" > "$stage/usr/share/doc/$pkg/changelog.Debian.gz"

# lintian: no error or warning but this one (Tests/integration/test_package.py). Its
# informational spelling-error-in-binary hints are in the statically linked ICU and Foundation
# (truncated words of their tables), not in Ferry's strings.
cat > "$stage/usr/share/lintian/overrides/$pkg" <<'EOF'
# Built for operators' own repositories and machines, not uploaded to Debian: no ITP bug.
ferry: initial-upload-closes-no-bugs *
EOF

# Dependencies of the binaries, from their ELF needs (dpkg-shlibdeps wants a debian/control).
mkdir -p "$work/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" > "$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O -e"$stage/usr/bin/ferryd" -e"$stage/usr/bin/ferry" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version-1
Architecture: $arch
Maintainer: Ferry developers <ferry@example.org>
Installed-Size: $size
Depends: $depends, adduser
Section: net
Priority: optional
Homepage: https://github.com/ferry-relay/ferry
Description: relay and signaling server for WireGuard overlay networks
 Ferry runs in each cloud region of an overlay network (NetBird, Tailscale,
 ZeroTier, Netmaker style) so that WireGuard peers that cannot reach each
 other directly still connect: STUN, TURN over UDP, TCP and TLS with
 coturn-compatible shared-secret credentials, and signaling over TLS.
 .
 This package has the server (ferryd), the peer and operator tool (ferry),
 hardened systemd units running as the system user ferry, Prometheus alert
 rules and a Grafana dashboard.
EOF
printf '/etc/ferry/ferry.toml\n' > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd ferry >/dev/null; then
        adduser --system --group --home /var/lib/ferry --no-create-home --gecos "Ferry relay" ferry >/dev/null
    fi
    install -d -o ferry -g ferry -m 0750 /var/lib/ferry
    chown root:ferry /etc/ferry /etc/ferry/ferry.toml
    chmod 0750 /etc/ferry
    chmod 0640 /etc/ferry/ferry.toml
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade restarts a running relay (drained: SIGTERM, then start); a first
        # installation leaves it stopped until it is configured and enabled.
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart ferryd.service >/dev/null || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "ferry: edit /etc/ferry/ferry.toml (its secret, relay address, realm and certificate paths are placeholders: 'ferry config check' refuses it until they are replaced), check it with 'ferry config check /etc/ferry/ferry.toml', then 'systemctl enable --now ferryd'"
    fi
fi
exit 0
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop ferryd.service ferryd.socket ferryd-admin.socket ferryd-tls.socket >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper "$( [ "$1" = purge ] && echo purge || echo disable )" \
            ferryd.service ferryd.socket ferryd-admin.socket ferryd-tls.socket >/dev/null 2>&1 || true
    fi
fi
if [ "$1" = purge ]; then
    # The relay's state (nonce and signaling keys). The user stays, as Debian keeps system
    # users: files it owned elsewhere would otherwise pass to a later user of its uid.
    rm -rf /var/lib/ferry
    rmdir /etc/ferry 2>/dev/null || true
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/${pkg}_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
