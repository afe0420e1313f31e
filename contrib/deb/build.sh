#!/usr/bin/env bash
# Builds the Debian packages, with dpkg-deb only (no extra tool):
#   saltpeter_<v>_<arch>.deb   the daemon and operator commands (/usr/bin/saltpeter), its systemd
#                              unit, /etc/saltpeter with a starter file, /var/lib and /var/log dirs
#   sp-wrapper_<v>_<arch>.deb  the static (musl) wrapper for minions, as /usr/bin/sp-wrapper (the
#                              daemon package's starter config makes that every job's wrapper;
#                              the Salt formula is the other way to put it on minions)
# Usage: contrib/deb/build.sh [OUT_DIR]          (default: target/deb)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/deb}
mkdir -p "$out"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)

contrib/deb/static-wrapper.sh
cargo build --quiet --release --locked --bin saltpeter

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# The daemon.
d="$stage/saltpeter"
install -D -m 0755 target/release/saltpeter "$d/usr/bin/saltpeter"
install -d -m 0755 "$d/lib/systemd/system" "$d/etc/saltpeter" "$d/DEBIAN"
sed 's#/usr/local/bin/saltpeter#/usr/bin/saltpeter#' contrib/salt/saltpeter/files/saltpeter.service \
  > "$d/lib/systemd/system/saltpeter.service"
cat > "$d/etc/saltpeter/00-saltpeter.yaml" <<'YAML'
# saltpeter's own settings; jobs go into more *.yaml files in this directory.
# See `saltpeter check -c /etc/saltpeter` and README's "The config directory".
saltpeter_config:
  database: /var/lib/saltpeter/history.db
  logdir: /var/log/saltpeter
  default_wrapper_path: /usr/bin/sp-wrapper
YAML
echo "/etc/saltpeter/00-saltpeter.yaml" > "$d/DEBIAN/conffiles"
cat > "$d/DEBIAN/control" <<CONTROL
Package: saltpeter
Version: $version
Architecture: $arch
Maintainer: saltpeter developers <saltpeter@localhost>
Section: admin
Priority: optional
Depends: libc6
Recommends: salt-master
Description: distributed cron for SaltStack fleets (daemon)
 Schedules jobs from /etc/saltpeter, fires them through the Salt master natively
 and follows every target to its exit code; serves an API, a web UI and metrics.
CONTROL
cat > "$d/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
# State and logs (the unit's StateDirectory/LogsDirectory create them too).
install -d -m 0750 /var/lib/saltpeter /var/log/saltpeter
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # Not started here: it needs the jobs and a readable master key; run `saltpeter doctor` first.
  systemctl enable saltpeter.service >/dev/null 2>&1 || true
fi
POSTINST
cat > "$d/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop saltpeter.service || true
  systemctl disable saltpeter.service >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm"
dpkg-deb --root-owner-group --build "$d" "$out/saltpeter_${version}_${arch}.deb" > /dev/null

# The wrapper: static, so one package fits every minion of the architecture.
w="$stage/sp-wrapper"
install -D -m 0755 target/x86_64-unknown-linux-musl/release/sp-wrapper "$w/usr/bin/sp-wrapper"
install -d -m 0755 "$w/DEBIAN"
cat > "$w/DEBIAN/control" <<CONTROL
Package: sp-wrapper
Version: $version
Architecture: $arch
Maintainer: saltpeter developers <saltpeter@localhost>
Section: admin
Priority: optional
Description: saltpeter's job wrapper for Salt minions (static binary)
 Started by Salt for each saltpeter job: detaches, runs the command as the job's
 user in its own process group and streams its output back to the daemon.
CONTROL
dpkg-deb --root-owner-group --build "$w" "$out/sp-wrapper_${version}_${arch}.deb" > /dev/null
ls -1 "$out"/*.deb
