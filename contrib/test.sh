#!/usr/bin/env bash
# The whole test suite: unit, integration and golden tests, with the Salt tests run against a
# real lab master and minions for each supported Salt version (3007.16, then 3006.29 for the
# Salt tests only). Installs Salt into a cache on first use (about a minute per version).
#   SALTPETER_SALT_VERSIONS="3007.16 3006.29"   which versions (the first runs everything)
set -euo pipefail
cd "$(dirname "$0")/.."
versions=(${SALTPETER_SALT_VERSIONS:-3007.16 3006.29})
labs=()
cleanup() {
  for dir in "${labs[@]}"; do contrib/lab/lab.sh stop --dir "$dir" || true; done
}
trap cleanup EXIT

first=1
for version in "${versions[@]}"; do
  dir="/tmp/saltpeter-test-lab-$version"
  labs+=("$dir")
  contrib/lab/lab.sh start --salt "$version" --dir "$dir" > /dev/null
  env_file="$dir/lab.env"
  if ((first)); then
    echo "== all tests (Salt $version)"
    SALTPETER_LAB_ENV="$env_file" cargo test --locked
    first=0
  else
    echo "== Salt and end-to-end tests again, against Salt $version"
    SALTPETER_LAB_ENV="$env_file" cargo test --locked --test it -- salt_lab engine_lab
  fi
  contrib/lab/lab.sh stop --dir "$dir"
done
