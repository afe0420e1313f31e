#!/usr/bin/env bash
# Builds the static sp-wrapper (musl) for minions, installing what it needs when missing:
# the rustup target and Debian's musl-tools. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target" > /dev/null
fi
if ! command -v musl-gcc > /dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools > /dev/null ||
      { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools > /dev/null; }
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools > /dev/null
  fi
fi
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --quiet --release --locked \
  --no-default-features --bin sp-wrapper --target "$target"
echo "target/$target/release/sp-wrapper"
