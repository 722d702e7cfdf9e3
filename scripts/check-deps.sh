#!/usr/bin/env bash
# Fails when a crate of the workspace declares a dependency its sources never name (no
# cargo-machete or cargo-udeps offline, so this is a small one of our own):
# - a [dependencies] entry must be named in the sources of the crate's lib or bins (so a
#   dependency only the tests use belongs in [dev-dependencies]);
# - a [dev-dependencies] entry must be named in some target's sources, and must not repeat
#   a [dependencies] entry without adding features;
# - a [build-dependencies] entry must be named in build.rs;
# - every [workspace.dependencies] entry must be inherited by some crate.
# "Named" means `crate_name::`, `use crate_name`, `extern crate crate_name`, `crate_name as`
# or an attribute's `= "crate_name"` (`#[serde(with = "humantime_serde")]`), outside
# comment lines. A dependency needed without being named (for its features, say) goes in
# the crate's `[package.metadata.cargo-machete] ignored = ["name"]` (the key cargo-machete
# reads), with a comment saying why.
# Also fails when a library with `test = false` (no unit-test binary is built) has unit
# tests, which would then never run.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_DEPS_METADATA="$(cargo metadata --format-version 1 --no-deps --offline)" python3 - <<'PY'
import json, os, re, sys, tomllib

meta = json.loads(os.environ["CHECK_DEPS_METADATA"])
members = set(meta["workspace_members"])
problems = []
checked = 0

def rust_files(paths):
    for path in paths:
        if os.path.isfile(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != "target"]
            yield from (os.path.join(root, f) for f in files if f.endswith(".rs"))

def code(paths):
    text = []
    for path in sorted(set(rust_files(paths))):
        with open(path) as f:
            text.extend(l for l in f if not l.lstrip().startswith("//"))
    return "".join(text)

def named(ident, text):
    ident = re.escape(ident)
    return re.search(
        rf'(?<![\w:]){ident}\s*::|\buse\s+{ident}\b|\bextern\s+crate\s+{ident}\b|(?<![\w:]){ident}\s+as\b|=\s*"{ident}(?:"|::)',
        text,
    )

inherited = set()
for package in meta["packages"]:
    if package["id"] not in members:
        continue
    root = os.path.dirname(package["manifest_path"])
    with open(package["manifest_path"], "rb") as f:
        manifest = tomllib.load(f)
    for table in ("dependencies", "dev-dependencies", "build-dependencies"):
        for key, spec in manifest.get(table, {}).items():
            if isinstance(spec, dict) and spec.get("workspace"):
                inherited.add(key)
    ignored = set(((package.get("metadata") or {}).get("cargo-machete") or {}).get("ignored", []))
    # Sources by what they build: the lib and bins, every target, build.rs.
    dirs = {"normal": [], "dev": [], "build": []}
    for target in package["targets"]:
        where = os.path.dirname(target["src_path"])
        if "custom-build" in target["kind"]:
            dirs["build"].append(target["src_path"])
            continue
        dirs["dev"].append(where)
        if set(target["kind"]) & {"lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro", "bin"}:
            dirs["normal"].append(where)
    sources = {kind: code(paths) for kind, paths in dirs.items()}
    for target in package["targets"]:
        if "lib" in target["kind"] and not target["test"] and "#[cfg(test)]" in code([os.path.dirname(target["src_path"])]):
            problems.append(f"{package['name']}: the library has unit tests but test = false, so they never run")
    normal = {d["rename"] or d["name"]: d for d in package["dependencies"] if d["kind"] is None}
    for dep in package["dependencies"]:
        key = dep["rename"] or dep["name"]
        kind = dep["kind"] or "normal"
        section = {"normal": "dependencies", "dev": "dev-dependencies", "build": "build-dependencies"}[kind]
        checked += 1
        if key in ignored:
            continue
        where = f"{package['name']}: [{section}] {key}"
        if not named(key.replace("-", "_"), sources[kind]):
            hint = " (only the tests name it: a dev-dependency)" if kind == "normal" and named(key.replace("-", "_"), sources["dev"]) else ""
            problems.append(f"{where} is never named in its sources{hint}")
        elif kind == "dev" and key in normal:
            base = normal[key]
            if set(dep["features"]) <= set(base["features"]) and not base["optional"]:
                problems.append(f"{where} repeats [dependencies] {key} and adds no features")

with open("Cargo.toml", "rb") as f:
    workspace_deps = tomllib.load(f).get("workspace", {}).get("dependencies", {})
for key in sorted(set(workspace_deps) - inherited):
    problems.append(f"workspace: [workspace.dependencies] {key} is inherited by no crate")

for problem in problems:
    print(f"check-deps: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"check-deps: {checked} declared dependencies of {len(members)} crates, each one named in its sources; "
      f"{len(workspace_deps)} workspace dependencies, each one inherited")
PY

