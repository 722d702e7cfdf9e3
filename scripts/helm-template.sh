#!/usr/bin/env bash
# Renders charts/paddock the way `helm template` would, without helm: builds the renderer
# (tools/helm-render, Go text/template + sprig from Debian's packages) once and runs it.
# Arguments are the renderer's, e.g.
#   bash scripts/helm-template.sh --name paddock --namespace paddock-system
#   bash scripts/helm-template.sh --set zookeeper.enabled=false --set zookeeper.connectString=zk:2181
#   bash scripts/helm-template.sh -f my-values.yaml --include-crds --notes
# The chart defaults to charts/paddock; pass another chart directory to render that one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/helm-render"
mkdir -p "$out"
if [ ! -x "$out/helm-render" ] || [ "$root/tools/helm-render/main.go" -nt "$out/helm-render" ]; then
  command -v go >/dev/null 2>&1 || { echo "go is missing: run scripts/install-deps.sh (as root)" >&2; exit 1; }
  (cd "$root/tools/helm-render" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
    GOCACHE="$out/gocache" go build -o "$out/helm-render" .)
fi
chart=()
for arg in "$@"; do [ -d "$arg" ] && chart=("$arg"); done
[ ${#chart[@]} -eq 0 ] && chart=("$root/charts/paddock")
# A directory argument is the chart; pass it once, at the end.
args=()
for arg in "$@"; do [ -d "$arg" ] || args+=("$arg"); done
exec "$out/helm-render" "${args[@]}" "${chart[@]}"
