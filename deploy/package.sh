#!/usr/bin/env bash
# The .deb packages of gearmq, built with Debian's own dpkg-deb (nothing to install):
#   deploy/package.sh                # release build, then the packages
#   deploy/package.sh --profile dev  # target/debug's binaries as they are (built by
#                                    # `cargo build --workspace`); builds nothing
#   deploy/package.sh --out DIR      # somewhere else than target/debian
# Writes target/debian/gearmq-agent_<version>_<arch>.deb (the host daemon, its hardened
# unit, /etc/gearmq/agent.toml as a conffile, /var/lib/gearmq) and
# target/debian/gearmq_<version>_<arch>.deb (the operator's CLI), each with man pages
# and bash, zsh and fish completions generated from its clap definitions.
# Maintainer scripts: deploy/debian/. Tested by tests/tests/e2e/packages.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

profile=release
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --out) out="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --out=*) out="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  release)
    cargo build --release --locked -p gearmq-agent -p gearmq-cli --bins
    bindir="$target/release"
    ;;
  dev | debug)
    # Never built here: a build of two packages alone would unify features differently
    # from the workspace build and rebuild the binaries the tests are running.
    bindir="$target/debug"
    ;;
  *) echo "package.sh: --profile is release or dev, not '$profile'" >&2; exit 2 ;;
esac
for b in gearmq gearmq-agent; do
  if [ ! -x "$bindir/$b" ]; then
    echo "package.sh: $bindir/$b is missing (build it first: cargo build --workspace)" >&2
    exit 2
  fi
done
out="${out:-$target/debian}"
mkdir -p "$out"

version=$("$bindir/gearmq" --version | awk '{print $2}')
agent_version=$("$bindir/gearmq-agent" --version | awk '{print $2}')
if [ "$version" != "$agent_version" ]; then
  echo "package.sh: gearmq is $version but gearmq-agent is $agent_version" >&2
  exit 2
fi
arch=$(dpkg --print-architecture)
# Release packages get Debian's usual xz; dev ones, for the tests, a fast gzip.
if [ "$profile" = release ]; then compress=(-Zxz); else compress=(-Zgzip -z1); fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/gearmq-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# Depends: the package of every shared library the binary links, libc6 at least at the
# newest GLIBC_ symbol version it uses (what dpkg-shlibdeps would say, without dpkg-dev).
depends_of() {
  local bin=$1 deps=() lib path pkg glibc
  while read -r lib path; do
    # dpkg knows a library by the path its package put it at (/lib or /usr/lib).
    pkg=$(dpkg -S "$path" 2>/dev/null | sed -n '1s/:.*//p') || true
    if [ -z "$pkg" ]; then
      pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | sed -n '1s/:.*//p') || true
    fi
    if [ -z "$pkg" ]; then
      echo "package.sh: no Debian package holds $path ($lib, linked by $bin)" >&2
      exit 2
    fi
    if [ "$pkg" = libc6 ]; then
      glibc=$(grep -aoE 'GLIBC_2\.[0-9]+(\.[0-9]+)?' "$bin" | sort -Vu | tail -1)
      pkg="libc6 (>= ${glibc#GLIBC_})"
    fi
    deps+=("$pkg")
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
  printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g'
}

# Copies a binary; line tables (dev profile) and other debug sections go.
install_bin() {
  install -D -m 0755 "$1" "$2"
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "$2"; fi
}

# Man pages (gzip -9n: no name or time inside) and completions where Debian's shells
# look for them.
install_docs() {
  local bin=$1 docs=$2 root=$3 page
  install -d -m 0755 "$root/usr/share/man/man1"
  for page in "$docs"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
    chmod 0644 "$root/usr/share/man/man1/$(basename "$page").gz"
  done
  install -D -m 0644 "$docs/completions/$bin.bash" "$root/usr/share/bash-completion/completions/$bin"
  install -D -m 0644 "$docs/completions/_$bin" "$root/usr/share/zsh/vendor-completions/_$bin"
  install -D -m 0644 "$docs/completions/$bin.fish" "$root/usr/share/fish/vendor_completions.d/$bin.fish"
}

# DEBIAN/control and DEBIAN/md5sums of the tree at $1, then the .deb.
build_deb() {
  local root=$1 package=$2 depends=$3 description=$4 size
  (cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: gearmq maintainers <gearmq@example.invalid>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://example.invalid/gearmq
Description: $description
EOF
  chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" \
    "$out/${package}_${version}_${arch}.deb" >/dev/null
  echo "$out/${package}_${version}_${arch}.deb"
}

# gearmq-agent: the host daemon.
root="$stage/gearmq-agent"
"$bindir/gearmq-agent" --generate-docs "$stage/docs-agent"
install_bin "$bindir/gearmq-agent" "$root/usr/bin/gearmq-agent"
# The unit runs /usr/bin/gearmq-agent --config /etc/gearmq/agent.toml: the paths below.
grep -q '^ExecStart=/usr/bin/gearmq-agent --config /etc/gearmq/agent.toml' deploy/gearmq-agent.service ||
  { echo "package.sh: deploy/gearmq-agent.service no longer runs /usr/bin/gearmq-agent --config /etc/gearmq/agent.toml" >&2; exit 2; }
install -D -m 0644 deploy/gearmq-agent.service "$root/lib/systemd/system/gearmq-agent.service"
install -D -m 0644 deploy/agent.example.toml "$root/etc/gearmq/agent.toml"
install -d -m 0700 "$root/var/lib/gearmq"
install -d -m 0755 "$root/var/lib/gearmq-artifacts"
install_docs gearmq-agent "$stage/docs-agent" "$root"
install -D -m 0644 deploy/debian/copyright "$root/usr/share/doc/gearmq-agent/copyright"
install -d -m 0755 "$root/DEBIAN"
echo /etc/gearmq/agent.toml >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "deploy/debian/gearmq-agent.$s" "$root/DEBIAN/$s"
done
build_deb "$root" gearmq-agent "$(depends_of "$root/usr/bin/gearmq-agent")" \
  "gearmq host agent: runs signed systemd requests from a RabbitMQ broker
 gearmq manages systemd services on a fleet of Linux hosts over RabbitMQ. The agent
 consumes this host's request queue, verifies every request's Ed25519 signature and
 the caller's credential, manages the units it was asked to (install, start, stop,
 status, logs, ...) through systemd's D-Bus API, and signs every reply.
 .
 Ships a hardened systemd unit (not enabled on installation: the host's key and
 credential come first) and an example /etc/gearmq/agent.toml."

# gearmq: the operator's command line.
root="$stage/gearmq"
"$bindir/gearmq" generate-docs "$stage/docs-cli"
install_bin "$bindir/gearmq" "$root/usr/bin/gearmq"
install_docs gearmq "$stage/docs-cli" "$root"
install -D -m 0644 deploy/debian/copyright "$root/usr/share/doc/gearmq/copyright"
install -D -m 0644 deploy/orchestrator.example.toml \
  "$root/usr/share/doc/gearmq/examples/orchestrator.example.toml"
install -d -m 0755 "$root/DEBIAN"
install -m 0755 deploy/debian/gearmq.postrm "$root/DEBIAN/postrm"
build_deb "$root" gearmq "$(depends_of "$root/usr/bin/gearmq")" \
  "gearmq command line: manage systemd services on a fleet over RabbitMQ
 gearmq manages systemd services on a fleet of Linux hosts over RabbitMQ, every
 request and reply Ed25519-signed. The gearmq command asks hosts to ping, install,
 start, stop, restart, delete, report status, list, show logs and facts; sets up a
 fleet (issuer, enrollment, credentials, TLS certificates); provisions the broker;
 verifies audit logs; and runs the unit commands on this host alone (gearmq local)."
