#!/usr/bin/env bash
# The whole test suite: unit, integration and golden tests, with the Salt tests run against a
# real lab master and minions for each supported Salt version (3007.16, then 3006.29 for the
# Salt tests only), and the store's tests on both SQLite and PostgreSQL. Installs Salt into a
# cache on first use (about a minute per version), Chromium plus playwright-core for the web
# UI test, and PostgreSQL (Debian's package) for a throwaway server.
#   SALTPETER_SALT_VERSIONS="3007.16 3006.29"   which versions (the first runs everything)
set -euo pipefail
cd "$(dirname "$0")/.."
versions=(${SALTPETER_SALT_VERSIONS:-3007.16 3006.29})

# The web UI test drives Debian's Chromium with playwright-core (pinned in tests/ui).
if ! command -v chromium > /dev/null; then
  echo "== installing Chromium (Debian's package)"
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null ||
      { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null; }
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null
  fi
fi
if [[ ! -d tests/ui/node_modules/playwright-core ]]; then
  echo "== installing playwright-core for the UI test"
  npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error
fi
# PostgreSQL (Debian's package, installed if missing) in a throwaway cluster: the store's
# tests run on it as well as on SQLite, and several daemons share it in the HA lab tests.
pg_dir=/tmp/saltpeter-test-pg
SALTPETER_TEST_POSTGRES=$(contrib/lab/pg.sh start --dir "$pg_dir")
SALTPETER_TEST_POSTGRES_DIR=$pg_dir
export SALTPETER_TEST_POSTGRES SALTPETER_TEST_POSTGRES_DIR
# The static (musl) wrapper operators ship to minions: the formula test installs it on the
# lab's minions through Salt and runs jobs through it.
echo "== building the static sp-wrapper"
SALTPETER_STATIC_WRAPPER="$(pwd)/$(contrib/deb/static-wrapper.sh)"
export SALTPETER_STATIC_WRAPPER
labs=()
cleanup() {
  for dir in "${labs[@]}"; do contrib/lab/lab.sh stop --dir "$dir" || true; done
  contrib/lab/pg.sh stop --dir "$pg_dir" || true
}
trap cleanup EXIT

first=1
for version in "${versions[@]}"; do
  dir="/tmp/saltpeter-test-lab-$version"
  labs+=("$dir")
  contrib/lab/lab.sh start --salt "$version" --dir "$dir" > /dev/null
  env_file="$dir/lab.env"
  if ((first)); then
    echo "== all tests (Salt $version; the store on PostgreSQL)"
    SALTPETER_LAB_ENV="$env_file" cargo test --locked
    echo "== the store's tests again, on SQLite"
    env -u SALTPETER_TEST_POSTGRES cargo test --locked --lib history::
    first=0
  else
    echo "== Salt and end-to-end tests again, against Salt $version"
    SALTPETER_LAB_ENV="$env_file" cargo test --locked --test it -- salt_lab engine_lab doctor formula
  fi
  contrib/lab/lab.sh stop --dir "$dir"
done
