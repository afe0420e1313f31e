#!/usr/bin/env bash
# A real Salt lab on loopback: one salt-master and N salt-minions, run as root with private
# directories and free ports. Used by the integration tests, CI and the quick start.
#
#   contrib/lab/lab.sh start [--minions N] [--salt VERSION] [--dir DIR] [--ipc-mode tcp]
#   contrib/lab/lab.sh stop  [--dir DIR]
#   contrib/lab/lab.sh env   [--dir DIR]      # the lab's settings, as sourceable KEY=VALUE lines
#   contrib/lab/lab.sh stop-minion|start-minion ID [--dir DIR]
#   contrib/lab/lab.sh restart-master|stop-master|start-master [--dir DIR]
#
# Salt is installed with pip into a venv under $SALTPETER_LAB_CACHE (default ~/.cache/saltpeter-lab),
# once per version; later starts reuse it. Supported: 3007.16 (default) and 3006.29, the LTS line.
# Newer releases need a certifi the package registry here lacks, hence the pins.
# `start` is idempotent: a lab that is already up is left as it is and its settings printed.
set -euo pipefail

SALT_VERSION="${SALTPETER_SALT_VERSION:-3007.16}"
LAB_DIR="${SALTPETER_LAB_DIR:-/tmp/saltpeter-lab}"
CACHE="${SALTPETER_LAB_CACHE:-$HOME/.cache/saltpeter-lab}"
MINIONS=3
IPC_MODE=ipc
PYTHON="${PYTHON:-python3}"

die() { echo "lab: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

cmd="${1:-}"; shift || true
arg_id=""
while (($#)); do
  case "$1" in
    --minions) MINIONS="$2"; shift 2 ;;
    --salt) SALT_VERSION="$2"; shift 2 ;;
    --dir) LAB_DIR="$2"; shift 2 ;;
    --ipc-mode) IPC_MODE="$2"; shift 2 ;;
    -*) die "unknown option $1" ;;
    *) arg_id="$1"; shift ;;
  esac
done
case "$SALT_VERSION" in
  3007.16|3006.29) ;;
  *) die "unsupported Salt version $SALT_VERSION (3007.16 or 3006.29)" ;;
esac

VENV="$CACHE/venv-$SALT_VERSION"
ETC="$LAB_DIR/etc"

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install_salt() {
  if [[ -x "$VENV/bin/salt-master" ]] && "$VENV/bin/python" -c "import salt.version as v; assert v.__version__ == '$SALT_VERSION'" 2>/dev/null; then
    return
  fi
  log "installing salt $SALT_VERSION into $VENV (about a minute)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "salt==$SALT_VERSION"
}

# The original Saltpeter's Python wrapper (its package without its daemon's dependencies, and
# the websockets library it needs), for tests of this daemon against it. Pinned like Salt:
# 0.9.30 is the release closest to the reference (0.9.31, never published); 0.9.32's wrapper
# fails every job that is not killed ("cannot access local variable 'retcode'").
ORIGINAL_SALTPETER=0.9.30
WEBSOCKETS=17.4
install_original_wrapper() {
  local shim="$VENV/bin/sp_wrapper.py"
  if [[ -x "$shim" ]] && "$VENV/bin/python" -c "import websockets, saltpeter.wrapper, saltpeter.version as v; assert v.__version__ == '$ORIGINAL_SALTPETER'" 2>/dev/null; then
    return
  fi
  log "installing the original wrapper (saltpeter $ORIGINAL_SALTPETER) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "websockets==$WEBSOCKETS"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "saltpeter==$ORIGINAL_SALTPETER"
  printf '#!%s\nfrom saltpeter.wrapper import main\nmain()\n' "$VENV/bin/python" > "$shim"
  chmod 755 "$shim"
}

# An SMTP server for the email notification tests (contrib/lab/smtp_sink.py), pinned like Salt.
AIOSMTPD=1.4.6
SMTP_SINK="$(cd "$(dirname "$0")" && pwd)/smtp_sink.py"
install_smtp_sink() {
  if "$VENV/bin/python" -c "import aiosmtpd; assert aiosmtpd.__version__ == '$AIOSMTPD'" 2>/dev/null; then
    return
  fi
  log "installing aiosmtpd $AIOSMTPD into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD"
}

print_env() {
  [[ -f "$LAB_DIR/lab.env" ]] || die "no lab in $LAB_DIR (run: $0 start)"
  cat "$LAB_DIR/lab.env"
}

write_configs() {
  local publish_port ret_port
  publish_port=$(free_port); ret_port=$(free_port)
  mkdir -p "$ETC" "$LAB_DIR/master/srv/salt"
  cat > "$ETC/master" <<CONF
interface: 127.0.0.1
publish_port: $publish_port
ret_port: $ret_port
root_dir: $LAB_DIR/master
pki_dir: $LAB_DIR/master/pki
cachedir: $LAB_DIR/master/cache
sock_dir: $LAB_DIR/master/sock
pidfile: $LAB_DIR/master/salt-master.pid
log_file: $LAB_DIR/master/master.log
log_level_logfile: info
key_logfile: $LAB_DIR/master/key.log
auto_accept: True
user: root
worker_threads: 2
file_roots: {base: [$LAB_DIR/master/srv/salt]}
CONF
  if [[ "$IPC_MODE" == tcp ]]; then
    {
      echo "ipc_mode: tcp"
      echo "tcp_master_pub_port: $(free_port)"
      echo "tcp_master_pull_port: $(free_port)"
      echo "tcp_master_publish_pull: $(free_port)"
      echo "tcp_master_workers: $(free_port)"
    } >> "$ETC/master"
  fi
  local i
  for ((i = 1; i <= MINIONS; i++)); do
    local id="minion-$i"
    local d="$LAB_DIR/$id"
    mkdir -p "$LAB_DIR/etc-$id"
    cat > "$LAB_DIR/etc-$id/minion" <<CONF
master: 127.0.0.1
master_port: $ret_port
publish_port: $publish_port
id: $id
root_dir: $d
pki_dir: $d/pki
cachedir: $d/cache
sock_dir: $d/sock
pidfile: $d/salt-minion.pid
log_file: $d/minion.log
user: root
CONF
  done
  {
    echo "LAB_DIR=$LAB_DIR"
    echo "SALT_VERSION=$SALT_VERSION"
    echo "SALT_BIN=$VENV/bin"
    echo "ORIGINAL_WRAPPER=$VENV/bin/sp_wrapper.py"
    echo "LAB_PYTHON=$VENV/bin/python"
    echo "SMTP_SINK=$SMTP_SINK"
    echo "MASTER_CONFIG=$ETC/master"
    echo "RET_PORT=$ret_port"
    echo "PUBLISH_PORT=$publish_port"
    echo "SOCK_DIR=$LAB_DIR/master/sock"
    echo "CACHEDIR=$LAB_DIR/master/cache"
    echo "EVENT_SOCKET=$LAB_DIR/master/sock/master_event_pub.ipc"
    echo "IPC_MODE=$IPC_MODE"
    echo "MINIONS='$(seq -f 'minion-%g' -s ' ' 1 "$MINIONS")'"
  } > "$LAB_DIR/lab.env"
}

start_master() {
  "$VENV/bin/salt-master" -c "$ETC" -d
  local deadline=$((SECONDS + 60))
  until [[ -s "$LAB_DIR/master/cache/.root_key" ]] && { [[ "$IPC_MODE" == tcp ]] || [[ -S "$LAB_DIR/master/sock/master_event_pub.ipc" ]]; }; do
    ((SECONDS < deadline)) || die "salt-master did not come up (see $LAB_DIR/master/master.log)"
    sleep 0.2
  done
}

start_minion() {
  local id="$1"
  pid_alive "$LAB_DIR/$id/salt-minion.pid" && return
  # Salt's cmd.run shell is the minion's $SHELL; pin it so error texts do not depend on
  # whoever started the lab (bash says "No such file or directory", dash "not found").
  SHELL=/bin/sh "$VENV/bin/salt-minion" -c "$LAB_DIR/etc-$id" -d
}

wait_all_answer() {
  local want="$1" deadline=$((SECONDS + 120)) got
  while :; do
    got=$("$VENV/bin/salt" -c "$ETC" '*' test.ping --static --out=json --timeout=5 2>/dev/null \
      | "$PYTHON" -c 'import json,sys
try: d=json.load(sys.stdin)
except Exception: d={}
print(sum(1 for v in d.values() if v is True))' || echo 0)
    ((got >= want)) && return
    ((SECONDS < deadline)) || die "only $got of $want minions answer test.ping"
    sleep 1
  done
}

stop_pidfile() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    # Children first: minions keep per-job processes around for a while.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

lab_up() {
  [[ -f "$LAB_DIR/lab.env" ]] || return 1
  pid_alive "$LAB_DIR/master/salt-master.pid" || return 1
  local id
  for id in $(sed -n "s/^MINIONS='\(.*\)'/\1/p" "$LAB_DIR/lab.env"); do
    pid_alive "$LAB_DIR/$id/salt-minion.pid" || return 1
  done
}

case "$cmd" in
  start)
    [[ $(id -u) == 0 ]] || die "the lab runs as root"
    if lab_up; then
      # A lab started by an older version of this script: add what it lacks.
      install_original_wrapper
      install_smtp_sink
      grep -q '^ORIGINAL_WRAPPER=' "$LAB_DIR/lab.env" \
        || echo "ORIGINAL_WRAPPER=$VENV/bin/sp_wrapper.py" >> "$LAB_DIR/lab.env"
      grep -q '^LAB_PYTHON=' "$LAB_DIR/lab.env" || echo "LAB_PYTHON=$VENV/bin/python" >> "$LAB_DIR/lab.env"
      grep -q '^SMTP_SINK=' "$LAB_DIR/lab.env" || echo "SMTP_SINK=$SMTP_SINK" >> "$LAB_DIR/lab.env"
      print_env
      exit 0
    fi
    install_salt
    install_original_wrapper
    install_smtp_sink
    "$0" stop --dir "$LAB_DIR" >/dev/null 2>&1 || true
    rm -rf "$LAB_DIR"
    mkdir -p "$LAB_DIR"
    write_configs
    started=$SECONDS
    start_master
    for ((i = 1; i <= MINIONS; i++)); do start_minion "minion-$i"; done
    wait_all_answer "$MINIONS"
    log "salt $SALT_VERSION master and $MINIONS minion(s) ready in $((SECONDS - started)) s"
    print_env
    ;;
  stop)
    [[ -d "$LAB_DIR" ]] || exit 0
    for pidfile in "$LAB_DIR"/minion-*/salt-minion.pid "$LAB_DIR/master/salt-master.pid"; do
      stop_pidfile "$pidfile"
    done
    ;;
  env) print_env ;;
  stop-minion) [[ -n "$arg_id" ]] || die "which minion?"; stop_pidfile "$LAB_DIR/$arg_id/salt-minion.pid" ;;
  start-minion) [[ -n "$arg_id" ]] || die "which minion?"; start_minion "$arg_id" ;;
  stop-master) stop_pidfile "$LAB_DIR/master/salt-master.pid" ;;
  start-master) start_master ;;
  restart-master)
    stop_pidfile "$LAB_DIR/master/salt-master.pid"
    rm -f "$LAB_DIR/master/cache/.root_key"
    start_master
    ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
