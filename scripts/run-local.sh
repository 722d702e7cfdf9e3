#!/usr/bin/env bash
# Runs Paddock locally: a real 3-node ZooKeeper ensemble on 127.0.0.1, the Kubernetes API
# stand-in, the operator with the examples applied, and a sidecar; then prints what to
# try (kubectl and curl). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "==> building"
cargo build --locked -p paddock-sidecar -p paddock-operator -p paddock-local --bins
exec target/debug/paddock-local "$@"
