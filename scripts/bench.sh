#!/usr/bin/env bash
# Benchmarks: Paddock against ZooKeeper's own limit, Apache Curator and kazoo, on one
# 3-node ensemble started for the run. Installs the peers (Debian's Curator, kazoo from
# PyPI), builds in release mode, prints one table.
#   bash scripts/bench.sh                 # everything (about 10-20 minutes on 2 cores)
#   bash scripts/bench.sh --quick         # every benchmark with tiny sizes
#   bash scripts/bench.sh locks queues    # some of: limit locks queues queue-depth footprint
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "==> building (release)"
cargo build --release --locked -p paddock-sidecar -p paddock-bench --bin paddock-sidecar --bin bench
exec "${CARGO_TARGET_DIR:-target}/release/bench" "$@"
