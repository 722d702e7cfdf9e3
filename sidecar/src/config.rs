//! The sidecar's settings, from flags or the environment (the pod spec sets the
//! environment). A bad setting fails at start with a message that names it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use paddock_recipes::tls::{TlsFiles, ZkTls};
use paddock_recipes::{Layout, Name};

/// Worker threads when `PADDOCK_WORKER_THREADS` is unset (fewer on fewer cores).
pub const DEFAULT_WORKER_THREADS: usize = 2;

#[derive(Debug, Clone, Parser)]
#[command(name = "paddock-sidecar", version, about = "Locks and work queues over ZooKeeper, on a localhost HTTP API")]
pub struct Config {
    /// ZooKeeper connect string, e.g. `zk-0:2181,zk-1:2181,zk-2:2181`.
    #[arg(long, env = "PADDOCK_ZOOKEEPER", value_name = "PADDOCK_ZOOKEEPER", value_parser = parse_connect_string)]
    pub zookeeper: String,

    /// Address of the HTTP API. Keep it on loopback: only the pod's own containers may call it.
    #[arg(long, env = "PADDOCK_LISTEN", value_name = "PADDOCK_LISTEN", default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,

    /// Optional second address serving only `/healthz` and `/readyz`, for the kubelet's
    /// probes (they come from the node, not from loopback), e.g. `0.0.0.0:7421`.
    #[arg(long, env = "PADDOCK_HEALTH_LISTEN", value_name = "PADDOCK_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Root of Paddock's subtree in ZooKeeper.
    #[arg(long, env = "PADDOCK_ZK_ROOT", value_name = "PADDOCK_ZK_ROOT", default_value = "/paddock", value_parser = parse_root)]
    pub zk_root: Layout,

    /// This pod's name (downward API); the default owner of its locks.
    #[arg(long, env = "POD_NAME", value_name = "POD_NAME", value_parser = parse_pod_name)]
    pub pod_name: String,

    /// This pod's namespace (downward API); selects `<root>/<namespace>`.
    #[arg(long, env = "POD_NAMESPACE", value_name = "POD_NAMESPACE", value_parser = parse_namespace)]
    pub pod_namespace: Name,

    /// ZooKeeper session timeout: how long after losing contact the ensemble frees this
    /// pod's locks and claims.
    #[arg(long, env = "PADDOCK_SESSION_TIMEOUT", value_name = "PADDOCK_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_session_timeout)]
    pub session_timeout: Duration,

    /// The queue `GET /queue/next` serves when the request names none.
    #[arg(long, env = "PADDOCK_QUEUE", value_name = "PADDOCK_QUEUE", value_parser = parse_queue)]
    pub queue: Option<Name>,

    /// ZooKeeper digest credentials `user:password` of this namespace's identity.
    #[arg(long, env = "PADDOCK_ZK_AUTH", value_name = "PADDOCK_ZK_AUTH", hide_env_values = true, value_parser = parse_digest)]
    pub zk_auth: Option<String>,

    /// File holding the digest credentials instead (a mounted Secret).
    #[arg(long, env = "PADDOCK_ZK_AUTH_FILE", value_name = "PADDOCK_ZK_AUTH_FILE", conflicts_with = "zk_auth")]
    pub zk_auth_file: Option<std::path::PathBuf>,

    /// PEM file of the CA that signed the ZooKeeper servers' certificates: set, the sidecar
    /// connects over TLS only and verifies that each server's certificate names its host.
    #[arg(long, env = "PADDOCK_ZK_TLS_CA", value_name = "PADDOCK_ZK_TLS_CA")]
    pub zk_tls_ca: Option<std::path::PathBuf>,

    /// PEM file of this client's certificate (with `PADDOCK_ZK_TLS_KEY`), for servers that
    /// require client certificates; read again every 10 s, so a rotated one is used from
    /// the next connection on.
    #[arg(long, env = "PADDOCK_ZK_TLS_CERT", value_name = "PADDOCK_ZK_TLS_CERT")]
    pub zk_tls_cert: Option<std::path::PathBuf>,

    /// PEM file of the private key of `PADDOCK_ZK_TLS_CERT`.
    #[arg(long, env = "PADDOCK_ZK_TLS_KEY", value_name = "PADDOCK_ZK_TLS_KEY")]
    pub zk_tls_key: Option<std::path::PathBuf>,

    /// The operator's x509 identity (its certificate's subject, as ZooKeeper writes it):
    /// with a client certificate, the nodes this sidecar creates carry an ACL for its own
    /// identity and this one, so that the operator can read and remove them.
    #[arg(long, env = "PADDOCK_ZK_OPERATOR_ID", value_name = "PADDOCK_ZK_OPERATOR_ID", requires = "zk_tls_cert")]
    pub zk_operator_id: Option<String>,

    /// How long SIGTERM waits for in-flight requests before releasing and exiting.
    #[arg(long, env = "PADDOCK_SHUTDOWN_GRACE", value_name = "PADDOCK_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Most connections served at once (the API and the probe port each): further
    /// connections wait in the listen backlog until one ends. The API serves one pod; a
    /// thread of the app that long-polls holds one connection.
    #[arg(long, env = "PADDOCK_MAX_CONNECTIONS", value_name = "PADDOCK_MAX_CONNECTIONS", default_value = "512", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// How long a connection may take to send a request's headers before it is closed
    /// (a client that connects and sends nothing, or half a request, holds no slot longer).
    #[arg(long, env = "PADDOCK_HEADER_READ_TIMEOUT", value_name = "PADDOCK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Threads that serve the API and the ZooKeeper session (the runtime's workers); unset:
    /// two, or one where the pod has one core. Not one per core of the node: a sidecar in
    /// every pod of a 32-core node would start 32 each. One gives each request the shortest
    /// path (lowest latency); more serve more concurrent requests (docs/benchmarks.md).
    #[arg(long, env = "PADDOCK_WORKER_THREADS", value_name = "PADDOCK_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: Option<u16>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "PADDOCK_LOG_FORMAT", value_name = "PADDOCK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// The runtime's worker threads: `PADDOCK_WORKER_THREADS`, else two, or one on one core
    /// (the cores the process may use: its cgroup's CPU limit counts).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(DEFAULT_WORKER_THREADS)
        })
    }

    /// The digest credentials from `--zk-auth` or the file named by `--zk-auth-file`.
    pub fn digest_auth(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.zk_auth_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("PADDOCK_ZK_AUTH_FILE {}: {e}", path.display()))?;
            return parse_digest(text.trim()).map(Some).map_err(|e| anyhow::anyhow!("PADDOCK_ZK_AUTH_FILE: {e}"));
        }
        Ok(self.zk_auth.clone())
    }

    /// The TLS settings, read and checked (None: plain text); an error names the setting.
    pub fn zk_tls(&self) -> anyhow::Result<Option<ZkTls>> {
        let files = TlsFiles::from_settings(self.zk_tls_ca.clone(), self.zk_tls_cert.clone(), self.zk_tls_key.clone())?;
        Ok(files.map(ZkTls::load).transpose()?)
    }
}

fn parse_connect_string(value: &str) -> Result<String, String> {
    let hosts = value.split('/').next().unwrap_or_default();
    if hosts.is_empty() {
        return Err("expected host:port[,host:port...], e.g. 127.0.0.1:2181".into());
    }
    for host in hosts.split(',') {
        let Some((name, port)) = host.rsplit_once(':') else {
            return Err(format!("{host:?} has no port; expected host:port, e.g. 127.0.0.1:2181"));
        };
        if name.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{host:?} is not host:port with a port from 1 to 65535"));
        }
    }
    Ok(value.to_owned())
}

fn parse_root(value: &str) -> Result<Layout, String> {
    Layout::new(value).map_err(|e| e.to_string())
}

fn parse_namespace(value: &str) -> Result<Name, String> {
    Name::new("namespace", value).map_err(|e| e.to_string())
}

fn parse_queue(value: &str) -> Result<Name, String> {
    Name::new("queue", value).map_err(|e| e.to_string())
}

/// Pod names are DNS-1123 subdomains (up to 253 characters, dots allowed).
fn parse_pod_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty() && value.len() <= 253 && value.split('.').all(|label| Name::new("pod", label).is_ok());
    if ok { Ok(value.to_owned()) } else { Err("must be a Kubernetes pod name (DNS-1123 subdomain)".into()) }
}

fn parse_session_timeout(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{e}; use a duration like 10s or 1500ms"))?;
    if d < Duration::from_millis(500) || d > Duration::from_secs(120) {
        return Err("must be between 500ms and 120s".into());
    }
    Ok(d)
}

fn parse_digest(value: &str) -> Result<String, String> {
    paddock_recipes::identity::DigestIdentity::parse(value).map(|_| value.to_owned()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let base =
            ["paddock-sidecar", "--zookeeper", "127.0.0.1:2181", "--pod-name", "web-0", "--pod-namespace", "team-a"];
        Config::try_parse_from(base.iter().chain(args))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7420");
        assert_eq!(c.zk_root.root(), "/paddock");
        assert_eq!(c.session_timeout, Duration::from_secs(10));
        assert_eq!(c.queue, None);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.worker_threads(), cores.min(2), "two workers, or one on one core, whatever the node has");
        assert_eq!(parse(&["--worker-threads", "5"]).unwrap().worker_threads(), 5);
    }

    #[test]
    fn bad_settings_name_themselves() {
        for (args, setting) in [
            (&["--session-timeout", "soon"][..], "PADDOCK_SESSION_TIMEOUT"),
            (&["--session-timeout", "10ms"][..], "PADDOCK_SESSION_TIMEOUT"),
            (&["--listen", "nowhere"][..], "PADDOCK_LISTEN"),
            (&["--zk-root", "paddock/"][..], "PADDOCK_ZK_ROOT"),
            (&["--zookeeper", "zk"][..], "PADDOCK_ZOOKEEPER"),
            (&["--pod-namespace", "Team_A"][..], "POD_NAMESPACE"),
            (&["--queue", "../x"][..], "PADDOCK_QUEUE"),
            (&["--zk-auth", "nopassword"][..], "PADDOCK_ZK_AUTH"),
            (&["--worker-threads", "0"][..], "PADDOCK_WORKER_THREADS"),
            (&["--worker-threads", "many"][..], "PADDOCK_WORKER_THREADS"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_operator_id_comes_with_a_client_certificate() {
        let err = parse(&["--zk-operator-id", "CN=paddock-operator,O=paddock"]).unwrap_err().to_string();
        assert!(err.contains("PADDOCK_ZK_TLS_CERT"), "{err}");
        let c = parse(&[
            "--zk-tls-ca",
            "/ca.crt",
            "--zk-tls-cert",
            "/tls.crt",
            "--zk-tls-key",
            "/tls.key",
            "--zk-operator-id",
            "CN=paddock-operator,O=paddock",
        ])
        .unwrap();
        assert_eq!(c.zk_operator_id.as_deref(), Some("CN=paddock-operator,O=paddock"));
    }
}
