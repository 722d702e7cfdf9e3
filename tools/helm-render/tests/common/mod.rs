//! What the chart's tests share: the renderer (built once per test run) and the parse of
//! its output into documents.

#![allow(dead_code)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

pub const RELEASE: &str = "paddock";
pub const NAMESPACE: &str = "paddock-system";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("the workspace").to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/paddock")
}

/// Builds tools/helm-render once per test run (offline, Debian's Go packages in GOPATH mode).
pub fn renderer() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-render");
        std::fs::create_dir_all(&out).unwrap();
        let binary = out.join("helm-render");
        let build = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(repo().join("tools/helm-render"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOFLAGS", "")
            .env("GOCACHE", out.join("gocache"))
            .output()
            .expect("running `go build` (is golang-go installed? scripts/install-deps.sh installs it)");
        assert!(
            build.status.success(),
            "building tools/helm-render failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        binary
    })
}

/// Runs the renderer on `chart`: Ok(stdout) when it succeeds, Err(stderr) when it fails.
pub fn render_chart(chart: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(renderer()).args(args).arg(chart).output().expect("running helm-render");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8(output.stderr).unwrap())
    }
}

/// Renders charts/paddock as release "paddock" in "paddock-system" with `extra` arguments.
pub fn render(extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["--name", RELEASE, "--namespace", NAMESPACE, "--include-crds"];
    args.extend_from_slice(extra);
    render_chart(&chart_dir(), &args)
}

/// Splits helm's output into (source, document), checking its format: every document
/// starts with `# Source: <chart>/...` (the documents of a multi-document CRD file follow
/// their file's one).
pub fn documents(output: &str) -> Vec<(String, Value)> {
    assert!(output.starts_with("---\n# Source: "), "helm's format: {}", &output[..output.len().min(200)]);
    let mut chunks = vec![String::new()];
    for line in output.lines() {
        if line == "---" {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().unwrap();
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let mut source = String::new();
    let mut docs = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.trim().is_empty()) {
        if let Some(s) = chunk.lines().next().and_then(|l| l.strip_prefix("# Source: ")) {
            assert!(s.contains("/templates/") || s.contains("/crds/"), "a source in the chart: {s}");
            source = s.to_owned();
        } else {
            assert!(source.contains("/crds/"), "a template document without its Source line:\n{chunk}");
        }
        let value: Value = serde_yaml::from_str(chunk).unwrap_or_else(|e| panic!("{source} is not YAML: {e}\n{chunk}"));
        docs.push((source.clone(), value));
    }
    docs
}
