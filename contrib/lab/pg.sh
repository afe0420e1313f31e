#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and the quick start: Debian's `postgresql` package
# (installed if missing), a cluster in a temporary directory owned by the `postgres` user,
# listening on loopback only, trust authentication (loopback, tests only).
#   contrib/lab/pg.sh start [--dir DIR] [--port PORT]   prints the server's URL
#   contrib/lab/pg.sh stop  [--dir DIR]
#   contrib/lab/pg.sh restart [--dir DIR]              (tests: a server restarted mid-run)
set -euo pipefail
cmd=${1:-}; shift || true
dir=/tmp/saltpeter-pg
port=55432
while (($#)); do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1 || true)
  if [[ -z $found ]]; then
    echo "== installing PostgreSQL (Debian's package)" >&2
    if [[ $(id -u) -eq 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql > /dev/null ||
        { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql > /dev/null; }
    else
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql > /dev/null
    fi
    found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$found"
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case $cmd in
  start)
    b=$(bin)
    if [[ -f $dir/port ]] && as_pg "$b/pg_ctl" -D "$dir/data" status > /dev/null 2>&1; then
      echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres?sslmode=disable"
      exit 0
    fi
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then chown postgres "$dir"; fi
    if [[ ! -d $dir/data ]]; then
      as_pg "$b/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 > "$dir/initdb.log"
    fi
    echo "$port" > "$dir/port"
    # Sockets in the directory itself: no /run/postgresql needed.
    as_pg "$b/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start > /dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
    ;;
  stop)
    b=$(bin)
    if [[ -d $dir/data ]]; then
      as_pg "$b/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  restart)
    b=$(bin)
    as_pg "$b/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart > /dev/null
    ;;
  *)
    echo "usage: $0 start|stop|restart [--dir DIR] [--port PORT]" >&2
    exit 2
    ;;
esac
