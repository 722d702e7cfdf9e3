//! The container images `scripts/images.sh` builds (`target/images/*.tar`), run with podman
//! as this machine allows: runc (crun fails under the cgroup hybrid mode), cgroupfs, events
//! in a file, explicit ulimits, never a pull, a storage of each test's own, and the host's
//! network to reach servers on 127.0.0.1. Also: what the archives say of their images,
//! the chart as it renders, and the rest the tests need (free ports, four-letter words,
//! kubectl, the workspace's binaries).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize as _;
use serde_json::Value;

pub mod cluster;

/// The images, as `scripts/images.sh` names their archives.
pub const IMAGES: [&str; 3] = ["paddock-operator", "paddock-sidecar", "paddock-zookeeper"];
/// The uid (and gid) every image runs as.
pub const NON_ROOT: u32 = 65532;
/// Release and namespace the tests render the chart as (README: `-n paddock-system`).
pub const RELEASE: &str = "paddock";
pub const NAMESPACE: &str = "paddock-system";

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// `target/images/<image>.tar`; panics, saying how to make it, when it is missing.
pub fn archive(image: &str) -> PathBuf {
    let path = repo().join("target/images").join(format!("{image}.tar"));
    assert!(path.exists(), "{} is missing: build the images with `bash scripts/images.sh`", path.display());
    path
}

/// The chart's appVersion: the tag of every image.
pub fn app_version() -> String {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("charts/paddock/Chart.yaml")).unwrap())
            .expect("Chart.yaml");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

/// What a docker-archive holds: its one image's names and configuration.
#[derive(Debug, Clone)]
pub struct ArchivedImage {
    pub tags: Vec<String>,
    /// The image configuration (`config`: User, Entrypoint, Cmd, Env, Labels, ...).
    pub config: Value,
    pub layers: usize,
}

pub fn read_archive(path: &Path) -> Result<ArchivedImage> {
    let member = |name: &str| -> Result<Value> {
        let output = Command::new("tar").arg("-xOf").arg(path).arg(name).output().context("running tar")?;
        ensure!(output.status.success(), "{name} in {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let manifest = member("manifest.json")?;
    let images = manifest.as_array().context("manifest.json is a list")?;
    ensure!(images.len() == 1, "{} holds {} images, not one", path.display(), images.len());
    let tags = images[0]["RepoTags"].as_array().context("RepoTags")?;
    let tags = tags.iter().map(|t| t.as_str().map(str::to_owned).context("a tag")).collect::<Result<_>>()?;
    let config = member(images[0]["Config"].as_str().context("Config")?)?;
    let layers = images[0]["Layers"].as_array().map_or(0, Vec::len);
    Ok(ArchivedImage { tags, config: config["config"].clone(), layers })
}

/// An image reference as docker, containerd and the kubelet read it: a name without a
/// registry is Docker Hub's, a Docker Hub name of one component is under `library/`, and
/// a reference without a tag or digest means `:latest`.
pub fn normalize(reference: &str) -> String {
    let (first, rest) = reference.split_once('/').unwrap_or(("", reference));
    let has_registry = !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let (registry, path) = if has_registry { (first, rest.to_owned()) } else { ("docker.io", reference.to_owned()) };
    let path = if registry == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
    let last = path.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':') || last.contains('@');
    format!("{registry}/{path}{}", if tagged { "" } else { ":latest" })
}

/// Renders charts/paddock as release `paddock` in `paddock-system` (CRDs included) through
/// `scripts/helm-template.sh`, with `extra` arguments; the documents, parsed.
pub fn render_chart(extra: &[&str]) -> Result<Vec<Value>> {
    let output = Command::new("bash")
        .arg(repo().join("scripts/helm-template.sh"))
        .args(["--name", RELEASE, "--namespace", NAMESPACE, "--include-crds"])
        .args(extra)
        .output()
        .context("running scripts/helm-template.sh")?;
    ensure!(output.status.success(), "rendering the chart: {}", String::from_utf8_lossy(&output.stderr));
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_slice(&output.stdout) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// The rendered object of `kind` (and `name`, when given).
pub fn object<'a>(documents: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name:?}"))
}

/// The first container of a workload's pod template, and the pod spec.
pub fn pod_spec(workload: &Value) -> (&Value, &Value) {
    let pod = &workload["spec"]["template"]["spec"];
    (pod, &pod["containers"][0])
}

/// podman with a storage, run directory and configuration of its own (removed with it).
pub struct Podman {
    dir: tempfile::TempDir,
    driver: String,
}

impl Podman {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("paddock-podman-").tempdir()?;
        // This machine's facts: crun fails (cgroup hybrid mode), runc works; no systemd
        // cgroup manager or journald for events in these sessions.
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n",
                dir.path().join("events.log").display()
            ),
        )?;
        // Overlay works here; PADDOCK_STORAGE_DRIVER=vfs is the fallback.
        let driver = std::env::var("PADDOCK_STORAGE_DRIVER").unwrap_or_else(|_| "overlay".to_owned());
        Ok(Self { dir, driver })
    }

    /// A `podman` command on this instance's storage.
    pub fn command(&self) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", &self.driver])
            .stdin(Stdio::null());
        if self.driver == "overlay" {
            // Else the driver bind-mounts its directory on itself, and the cleanup process
            // conmon starts when a container exits can leave that mount behind.
            command.args(["--storage-opt", "overlay.skip_mount_home=true"]);
        }
        command
    }

    /// Runs podman with `args`; its stdout, trimmed, or an error with its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let output = self.command().args(args).output().context("running podman (is it installed?)")?;
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        ensure!(output.status.success(), "podman {shown:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Whether `args` succeed (a probe, say).
    pub fn succeeds<S: AsRef<OsStr>>(&self, args: &[S]) -> bool {
        self.command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// Loads `target/images/<image>.tar`; the names podman gave it.
    pub fn load(&self, image: &str) -> Result<String> {
        self.run(&[OsStr::new("load"), OsStr::new("-q"), OsStr::new("-i"), archive(image).as_os_str()])
    }

    /// A directory of this instance's, for what the tests mount into containers.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// The host pid of a running container's first process.
    pub fn pid(&self, container: &str) -> Result<u32> {
        let pid = self.run(&["inspect", "--format", "{{.State.Pid}}", container])?;
        let pid: u32 = pid.parse().with_context(|| format!("the pid of {container}: {pid:?}"))?;
        ensure!(pid > 0, "{container} is not running:\n{}", self.logs(container));
        Ok(pid)
    }

    /// What every container of this instance wrote to stdout and stderr (when a test fails).
    pub fn all_logs(&self) -> String {
        let names = self.run(&["ps", "--all", "--format", "{{.Names}}"]).unwrap_or_default();
        names.lines().map(|name| format!("==> logs of {name}:\n{}\n", self.logs(name))).collect()
    }

    /// What a container wrote to stdout and stderr (for failure messages).
    pub fn logs(&self, container: &str) -> String {
        match self.command().args(["logs", container]).output() {
            Ok(output) => {
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            }
            Err(e) => format!("(no logs: {e})"),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all", "--force", "--time", "0"]).output();
        // conmon runs `podman container cleanup` on this storage when a container exits:
        // wait for those, then unmount whatever is still mounted here (deepest first), so
        // that the directory can be removed.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let _ = eventually(Duration::from_secs(10), "podman's cleanup processes", || !process_mentions(&dir));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&format!("{dir}/")))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").args(["--lazy", point]).status();
        }
    }
}

/// Whether another process's command line mentions `text`.
fn process_mentions(text: &str) -> bool {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit())).any(|e| {
        e.file_name().to_string_lossy() != me
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
    })
}

/// The flags every container gets on this machine: never a pull, the host's network (the
/// servers are on 127.0.0.1), and ulimits within what these sessions allow.
pub fn host_flags() -> Vec<String> {
    ["--pull=never", "--network=host", "--ulimit=nofile=20000:20000", "--ulimit=nproc=32768:32768"]
        .map(str::to_owned)
        .to_vec()
}

/// The real, effective, saved and filesystem uids of a process (/proc/PID/status).
pub fn process_uids(pid: u32) -> Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).context("no Uid line")?;
    line.split_whitespace().map(|u| Ok(u.parse()?)).collect()
}

/// Whether the root filesystem a process sees is mounted read-only (/proc/PID/mountinfo).
pub fn root_is_read_only(pid: u32) -> Result<bool> {
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    // Fields: id parent major:minor root mount-point options ...; the last "/" mount wins.
    let root = mounts.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/")).context("no / mount")?;
    let options = root.split_whitespace().nth(5).context("mount options")?;
    Ok(options.split(',').any(|o| o == "ro"))
}

/// `count` ports free on 127.0.0.1 just now.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A ZooKeeper four-letter word to 127.0.0.1:`port`, and the reply.
pub fn four_letter_word(port: u16, word: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(word.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// kubectl against `kubeconfig`, from the workspace root; `input` on its stdin.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    let mut stdin = child.stdin.take().context("kubectl's stdin")?;
    stdin.write_all(input.unwrap_or_default().as_bytes())?;
    drop(stdin);
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A binary of the workspace, beside the running test (`target/<profile>/deps/..`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the test's directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found beside {}: build it with `cargo build -p paddock-kube-standin --bin {name}`", exe.display())
}

/// Polls `check` every 200 ms until it holds; an error naming `what` after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        ensure!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_reads_them() {
        assert_eq!(normalize("paddock-operator:0.1.0"), "docker.io/library/paddock-operator:0.1.0");
        assert_eq!(normalize("docker.io/library/paddock-operator:0.1.0"), "docker.io/library/paddock-operator:0.1.0");
        assert_eq!(normalize("team/paddock:1"), "docker.io/team/paddock:1");
        assert_eq!(
            normalize("registry.example.com/team/paddock-sidecar:0.1.0"),
            "registry.example.com/team/paddock-sidecar:0.1.0"
        );
        assert_eq!(normalize("localhost:5000/paddock-zookeeper"), "localhost:5000/paddock-zookeeper:latest");
    }
}
