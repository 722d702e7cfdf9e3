#!/usr/bin/env bash
# Builds Paddock's three container images from Debian packages only: no base image comes
# from any container registry, and nothing but the Debian mirror is needed (once).
#
#   target/images/paddock-operator.tar    the operator's release binary
#   target/images/paddock-sidecar.tar     the sidecar the webhook injects, and the paddock command
#   target/images/paddock-zookeeper.tar   Debian's ZooKeeper 3.8, a headless JRE, the chart's scripts
#
# Each is a docker-archive holding one image, named as the chart's defaults name it
# (paddock-operator:<appVersion>, ...), for `kind load image-archive`, `docker load`,
# `podman load`, or `skopeo copy docker-archive:... docker://<registry>/...`.
#
# How: root filesystems made by mmdebstrap (--variant=extract: the packages below and their
# dependencies, no Recommends, no docs but copyright files, no iconv modules), cached in
# target/images/rootfs/ under a key of everything that goes into them, so a rebuild fetches
# nothing; then buildah builds images/<image>/Containerfile (FROM scratch + that root
# filesystem) in a storage of its own (target/images/storage), offline.
#
# Usage: bash scripts/images.sh [--refresh] [--expect-cached] [--max-seconds N]
#   --refresh        make the root filesystems again (newer Debian packages)
#   --expect-cached  fail unless every root filesystem came from the cache
#   --max-seconds N  fail when the whole run took longer than N seconds
# Needs root, mmdebstrap and buildah (scripts/install-deps.sh installs them).
set -euo pipefail
started=$(date +%s%N)
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

refresh=false expect_cached=false max_seconds=""
while [ $# -gt 0 ]; do
  case "$1" in
    --refresh) refresh=true ;;
    --expect-cached) expect_cached=true ;;
    --max-seconds) max_seconds="$2"; shift ;;
    *) echo "usage: $0 [--refresh] [--expect-cached] [--max-seconds N]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run scripts/images.sh as root (mmdebstrap and buildah run as root here)" >&2; exit 1; }
for tool in mmdebstrap buildah python3 strip readelf; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is missing: run scripts/install-deps.sh (as root)" >&2; exit 1; }
done

out="$root/target/images"
bins="${CARGO_TARGET_DIR:-$root/target}/release"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/paddock/Chart.yaml)"
[ -n "$version" ] || { echo "no appVersion in charts/paddock/Chart.yaml" >&2; exit 1; }
source_url="https://github.com/paddock-dev/paddock"
suite=bookworm
# Image timestamps (and the files' in the layers) from the last commit, not the clock, so
# that the same sources give the same image id (cached layers keep the time they got).
epoch="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
storage=(--root "$out/storage" --runroot "$out/storage-run" --storage-driver "${PADDOCK_STORAGE_DRIVER:-overlay}")
mkdir -p "$out/rootfs" "$out/context"

echo "==> release binaries (cargo build --release -p paddock-operator -p paddock-sidecar; paddock-cli static)"
cargo build --release --locked -q -p paddock-operator -p paddock-sidecar --bins
# The paddock command is copied into app containers of any image (musl, distroless, an
# older glibc) by the webhook's paddock-cli init container, so it is linked statically
# (glibc's static-pie; the flag goes to the final link only, so its dependencies build as
# usual).
cargo rustc --release --locked -q -p paddock-cli --bin paddock -- -C target-feature=+crt-static
if readelf -lW "$bins/paddock" | grep -q 'program interpreter'; then
  echo "$bins/paddock is dynamically linked: it would not run in every app container" >&2
  exit 1
fi

# The chart's start script and probe, as it renders them with its default values.
echo "==> the chart's ZooKeeper scripts (scripts/helm-template.sh)"
zk_ctx="$out/context/paddock-zookeeper"
mkdir -p "$zk_ctx"
bash scripts/helm-template.sh --name paddock --namespace paddock-system | python3 -c '
import sys, yaml
for doc in yaml.safe_load_all(sys.stdin):
    if doc and doc["kind"] == "ConfigMap" and "start.sh" in doc.get("data", {}):
        for name in ("start.sh", "probe.sh"):
            with open(sys.argv[1] + "/" + name, "w") as f:
                f.write(doc["data"][name])
        sys.exit(0)
sys.exit("no ConfigMap with start.sh in the rendered chart")
' "$zk_ctx"

# What the packages' maintainer scripts would have done, which --variant=extract does not
# run: the CA bundle of update-ca-certificates, and the `java` of update-alternatives.
ca_hook='cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1"/etc/ssl/certs/ca-certificates.crt'
java_hook='java="$(cd "$1"/usr/lib/jvm && echo java-17-openjdk-*/bin/java)"; ln -s "../lib/jvm/$java" "$1"/usr/bin/java'
options=(--variant=extract --skip=output/dev --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/lib/*/gconv/*'
  --extract-hook="$ca_hook")
base=libc6,libgcc-s1,ca-certificates

# rootfs NAME PACKAGES [HOOK]: the cached tarball of that root filesystem, made when
# missing, in tarballs[NAME]; cached[NAME] says which.
declare -A cached=() tarballs=()
rootfs() {
  local name="$1" packages="$2" hook="${3:-}"
  local extra=()
  [ -n "$hook" ] && extra=(--extract-hook="$hook")
  local key
  key="$( (echo "$suite $packages"; printf '%s\n' "${options[@]}" "${extra[@]}"; cat /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null; mmdebstrap --version) | sha256sum | cut -c1-16)"
  local tarball="$out/rootfs/$name-$key.tar"
  if [ -f "$tarball" ] && ! $refresh; then
    cached[$name]=reused
  else
    echo "==> root filesystem $name: mmdebstrap $suite $packages"
    rm -f "$out/rootfs/$name"-*.tar
    mmdebstrap -q "${options[@]}" "${extra[@]}" --include="$packages" "$suite" "${tarball%.tar}.part.tar"
    mv "${tarball%.tar}.part.tar" "$tarball"
    cached[$name]=made
  fi
  tarballs[$name]="$tarball"
}
rootfs base "$base"
rootfs zookeeper "$base,openjdk-17-jre-headless,libzookeeper-java,libslf4j-java,bash" "$java_hook"
echo "    root filesystems: base ${cached[base]}, zookeeper ${cached[zookeeper]} (target/images/rootfs/)"

# context IMAGE ROOTFS FILES...: the build context of images/<image>/Containerfile.
context() {
  local image="$1" tarball="$2"
  shift 2
  local dir="$out/context/$image"
  mkdir -p "$dir"
  ln -f "$tarball" "$dir/rootfs.tar" 2>/dev/null || cp "$tarball" "$dir/rootfs.tar"
  cp images/passwd images/group "$dir/"
  for binary in "$@"; do
    strip -o "$dir/$binary" "$bins/$binary"
  done
}
context paddock-operator "${tarballs[base]}" paddock-operator
context paddock-sidecar "${tarballs[base]}" paddock-sidecar paddock
context paddock-zookeeper "${tarballs[zookeeper]}"

summary=()
for image in paddock-operator paddock-sidecar paddock-zookeeper; do
  echo "==> $image:$version (buildah, images/${image#paddock-}/Containerfile)"
  ref="docker.io/library/$image:$version"
  buildah "${storage[@]}" bud -q --format docker --layers --timestamp "$epoch" \
    --build-arg VERSION="$version" --build-arg SOURCE="$source_url" \
    -f "images/${image#paddock-}/Containerfile" -t "$ref" "$out/context/$image" >/dev/null
  # The archive is written again only when it holds another image (docker-archive names
  # its config "<image id>.json").
  id="$(buildah "${storage[@]}" images --no-trunc --format '{{.ID}}' "$ref")"
  id="${id#sha256:}"
  if ! tar -xOf "$out/$image.tar" manifest.json 2>/dev/null | grep -q "\"$id.json\""; then
    rm -f "$out/$image.tar"
    buildah "${storage[@]}" push -q "$ref" "docker-archive:$out/$image.tar:$image:$version"
  fi
  size="$(buildah "${storage[@]}" images --format '{{.Size}}' "$ref")"
  archive="$(du -m "$out/$image.tar" | cut -f1)"
  summary+=("$(printf '%-18s %-8s %10s  target/images/%s.tar (%s MB)' "$image" "$version" "$size" "$image" "$archive")")
done
# Images and layers no tag names any more (an older binary's).
buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true

elapsed=$(( ($(date +%s%N) - started) / 1000000 ))
echo
printf '%-18s %-8s %10s  %s\n' IMAGE TAG SIZE ARCHIVE
printf '%s\n' "${summary[@]}"
printf 'built in %d.%01d s; root filesystems: base %s, zookeeper %s\n' $((elapsed / 1000)) $((elapsed % 1000 / 100)) \
  "${cached[base]}" "${cached[zookeeper]}"
if $expect_cached && [ "${cached[base]}${cached[zookeeper]}" != reusedreused ]; then
  echo "expected every root filesystem from the cache" >&2
  exit 1
fi
if [ -n "$max_seconds" ] && [ "$elapsed" -gt $((max_seconds * 1000)) ]; then
  echo "took longer than $max_seconds s" >&2
  exit 1
fi
