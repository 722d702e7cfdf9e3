#!/usr/bin/env bash
# The fault suite on demand, longer than CI's: the whole stack (3-node ensemble on hosts
# of its own, Kubernetes API stand-in, 2 operators, 5 sidecars in 2 namespaces) under
# random faults from a seed, then the checkers. Needs root (network namespaces).
#   bash scripts/chaos.sh --duration 30m            # a seed is drawn and printed
#   bash scripts/chaos.sh --duration 5m --seed 42   # replays a run's fault schedule
#   bash scripts/chaos.sh --broken no-fencing --faults pause-sidecar --duration 1m
#   bash scripts/chaos.sh --tls --duration 10m      # every client over TLS (CI's short run)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "==> building (release)"
cargo build --locked --release -p paddock-sidecar -p paddock-operator -p paddock-chaos --bins
exec "${CARGO_TARGET_DIR:-target}/release/chaos" "$@"
