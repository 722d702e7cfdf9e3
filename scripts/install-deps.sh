#!/usr/bin/env bash
# Installs what Paddock's local run and tests need on a fresh Debian machine (as root):
# Debian's zookeeper package (3.8) with a JDK, and Apache Curator (libcurator-recipes-java)
# as a peer for interop tests, kazoo (PyPI) for the benchmarks, and Go with sprig, yaml.v3
# and gojsonschema, from which tools/helm-render builds offline to render the Helm chart in
# tests (no helm binary is packaged); and what scripts/images.sh builds the container images
# with and the image tests run them with: mmdebstrap, buildah, podman with runc, skopeo (to
# push them), uidmap, python3-yaml; and Prometheus 2.42 with promtool, which the
# monitoring tests scrape a sidecar with and check the chart's alerting rules with.
# Idempotent.
set -euo pipefail

need=()
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
[ -f /usr/share/java/slf4j-simple.jar ] || need+=(libslf4j-java)
[ -f /usr/share/java/curator-recipes.jar ] || need+=(libcurator-recipes-java)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
# The chart renderer (tools/helm-render): GO111MODULE=off GOPATH=/usr/share/gocode go build.
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || need+=(golang-github-masterminds-sprig-dev)
[ -d /usr/share/gocode/src/gopkg.in/yaml.v3 ] || need+=(golang-gopkg-yaml.v3-dev)
[ -d /usr/share/gocode/src/github.com/xeipuuv/gojsonschema ] || need+=(golang-github-xeipuuv-gojsonschema-dev)
# The images (scripts/images.sh) and their tests (tools/images-test): runc, not crun, which
# fails on these machines (cgroup hybrid mode).
for tool in mmdebstrap buildah podman runc skopeo; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# kazoo (PyPI) is the Python peer of the benchmarks, whose quick run is part of the tests.
python3 -c 'import kazoo' 2>/dev/null || { echo "==> installing kazoo (pip)"; python3 -m pip install -q kazoo; }
# The packages enable system-wide servers (2181, 9090); the tests run their own.
for service in zookeeper prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done
echo "==> $(dpkg-query -W -f 'zookeeper ${Version}' zookeeper 2>/dev/null || echo zookeeper) and $(java -version 2>&1 | head -1) ready"
