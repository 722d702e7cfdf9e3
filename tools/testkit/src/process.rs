//! Child processes for tests: a sidecar standing for a pod, or any helper binary, with
//! signals for fault injection (SIGSTOP/SIGCONT/SIGKILL/SIGTERM). Dropping a handle kills
//! the process; `PR_SET_PDEATHSIG` kills it if the test binary itself dies.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ensemble::free_ports;

/// A child process with fault-injection signals.
#[derive(Debug)]
pub struct ProcessHandle {
    name: String,
    child: Option<Child>,
    stopped: bool,
}

impl ProcessHandle {
    /// Spawns `command` (stdin closed) tied to this thread's lifetime.
    pub fn spawn(name: impl Into<String>, command: Command) -> Result<Self> {
        Self::spawn_with_stdin(name, command, false)
    }

    /// As `spawn`, keeping the stdin the command was given when `keep_stdin`.
    pub fn spawn_with_stdin(name: impl Into<String>, mut command: Command, keep_stdin: bool) -> Result<Self> {
        let name = name.into();
        if !keep_stdin {
            command.stdin(Stdio::null());
        }
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that spawned it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child: Some(child), stopped: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's piped stdin and stdout, once.
    pub fn take_stdio(&mut self) -> Option<(std::process::ChildStdin, std::process::ChildStdout)> {
        let child = self.child.as_mut()?;
        Some((child.stdin.take()?, child.stdout.take()?))
    }

    /// The child's piped stdout, once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on our own unreaped child.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!("signal {signal} to {}: {}", self.name, std::io::Error::last_os_error());
        }
        match signal {
            libc::SIGSTOP => self.stopped = true,
            libc::SIGCONT => self.stopped = false,
            _ => {}
        }
        Ok(())
    }

    /// SIGSTOP: the process keeps its sockets but does nothing (a hung pod).
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILL and reap: a crashed pod.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit (SIGKILL after that).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("process already reaped")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            None => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to start a sidecar process standing for one pod.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub binary: PathBuf,
    pub zookeeper: String,
    pub pod_name: String,
    pub namespace: String,
    pub zk_root: String,
    pub session_timeout: Duration,
    /// Extra environment (e.g. `PADDOCK_QUEUE`).
    pub env: Vec<(String, String)>,
    /// Where stdout/stderr go; None inherits the test's.
    pub log_file: Option<PathBuf>,
}

impl SidecarOptions {
    pub fn new(binary: impl AsRef<Path>, zookeeper: impl Into<String>, pod_name: &str, namespace: &str) -> Self {
        Self {
            binary: binary.as_ref().to_owned(),
            zookeeper: zookeeper.into(),
            pod_name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            zk_root: "/paddock".to_owned(),
            session_timeout: Duration::from_secs(10),
            env: Vec::new(),
            log_file: None,
        }
    }

    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where the sidecar's stdout and stderr go (appended).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }
}

/// A running sidecar: its process and the address its HTTP API listens on.
#[derive(Debug)]
pub struct Sidecar {
    pub process: ProcessHandle,
    pub addr: SocketAddr,
    options: SidecarOptions,
}

impl Sidecar {
    /// Starts a sidecar on a free port and waits until `/readyz` answers 200.
    pub async fn start(options: SidecarOptions) -> Result<Self> {
        Self::start_polling(options, Duration::from_millis(20)).await
    }

    /// Starts a sidecar on a free port without waiting for it to be ready (a test of a
    /// sidecar that cannot connect, say).
    pub fn spawn(options: SidecarOptions) -> Result<Self> {
        let port = free_ports(1)?[0];
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let process = spawn_sidecar(&options, addr)?;
        Ok(Self { process, addr, options })
    }

    /// As `start`, polling `/readyz` every `interval` (start-up benchmarks poll fast).
    pub async fn start_polling(options: SidecarOptions, interval: Duration) -> Result<Self> {
        let port = free_ports(1)?[0];
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let process = spawn_sidecar(&options, addr)?;
        let mut sidecar = Self { process, addr, options };
        sidecar.wait_ready_polling(Duration::from_secs(30), interval).await?;
        Ok(sidecar)
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:7420`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pod_name(&self) -> &str {
        &self.options.pod_name
    }

    /// SIGKILLs the sidecar and starts it again on the same address (a restarted pod
    /// keeps its name and port), waiting until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = spawn_sidecar(&self.options, self.addr)?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_ready_polling(timeout, Duration::from_millis(20)).await
    }

    async fn wait_ready_polling(&mut self, timeout: Duration, interval: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if self.process.has_exited() {
                bail!("sidecar {} exited before it was ready", self.options.pod_name);
            }
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sidecar {} not ready within {timeout:?}", self.options.pod_name);
            }
            tokio::time::sleep(interval).await;
        }
    }
}

fn spawn_sidecar(options: &SidecarOptions, addr: SocketAddr) -> Result<ProcessHandle> {
    let mut command = Command::new(&options.binary);
    command
        .env("PADDOCK_ZOOKEEPER", &options.zookeeper)
        .env("PADDOCK_LISTEN", addr.to_string())
        .env("PADDOCK_ZK_ROOT", &options.zk_root)
        .env("POD_NAME", &options.pod_name)
        .env("POD_NAMESPACE", &options.namespace)
        .env("PADDOCK_SESSION_TIMEOUT", humantime_ms(options.session_timeout))
        // Sidecar logs in tests: warnings only unless PADDOCK_TEST_SIDECAR_LOG says otherwise.
        .env("RUST_LOG", std::env::var("PADDOCK_TEST_SIDECAR_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .envs(options.env.iter().map(|(k, v)| (k, v)));
    if let Some(path) = &options.log_file {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        command.stdout(log.try_clone()?).stderr(log);
    }
    ProcessHandle::spawn(format!("sidecar {}", options.pod_name), command)
}

fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
