#!/usr/bin/env bash
# Runs Paddock locally: a real 3-node ZooKeeper ensemble on 127.0.0.1 and a sidecar
# against it, then prints what to try. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "==> building"
cargo build --locked -p paddock-sidecar -p paddock-e2e --bins
exec target/debug/paddock-local "$@"
