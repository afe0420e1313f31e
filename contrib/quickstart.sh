#!/usr/bin/env bash
# Quick start: build saltpeter, start a Salt lab (one master, two minions, as root on loopback),
# and run the daemon on example jobs that fire every few seconds, so real runs with real exit
# codes show up within a minute. Ctrl-C stops the daemon; `contrib/lab/lab.sh stop --dir
# /tmp/saltpeter-quickstart-lab` stops the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin saltpeter --bin sp-wrapper
lab_dir=/tmp/saltpeter-quickstart-lab
master=$(contrib/lab/lab.sh start --minions 2 --dir "$lab_dir" | sed -n 's/^MASTER_CONFIG=//p')
dir=/tmp/saltpeter-quickstart
mkdir -p "$dir"
cp contrib/examples/quickstart.yaml "$dir/"
cat > "$dir/00-lab.yaml" <<CONF
# Written by contrib/quickstart.sh: the lab's master and this build's wrapper.
saltpeter_config:
  salt_master_config: $master
  machines_ws_bind_addr: 127.0.0.1
  default_saltpeter_server_host: 127.0.0.1
  default_wrapper_path: $PWD/target/release/sp-wrapper
  logdir: $dir/log
  database: $dir/state/history.db
  api_ws_bind_addr: 127.0.0.1
CONF
echo "quickstart: jobs in $dir, job logs in $dir/log, web UI and API on http://127.0.0.1:8888; Ctrl-C to stop" >&2
exec target/release/saltpeter run -c "$dir"
