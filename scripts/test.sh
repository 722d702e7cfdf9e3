#!/usr/bin/env bash
# The whole test suite: structure limits, unused dependencies, formatting, lints, and every
# test against real ZooKeeper ensembles that the tests start themselves. This is what CI
# runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "==> structure: file and function sizes of the product crates"
bash scripts/check-structure.sh
echo "==> every declared dependency is used (scripts/check-deps.sh)"
bash scripts/check-deps.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
# The container images, built twice: the second run must reuse the cached root filesystems
# (it prints how long it took). Then they run with podman, as the chart runs them.
echo "==> container images (scripts/images.sh)"
bash scripts/images.sh
echo "==> container images again, from the cached root filesystems"
bash scripts/images.sh --expect-cached
echo "==> the images, run with podman (tools/images-test)"
# The Kubernetes API stand-in the operator's container talks to: a binary of a crate
# without tests of its own, so `cargo test --workspace` does not build it.
cargo build --locked -p paddock-kube-standin --bin kube-standin
cargo test --locked -p paddock-images-test -- --ignored
