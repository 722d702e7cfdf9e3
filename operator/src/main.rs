//! paddock-operator: reconciles DistributedLock and WorkQueue resources into ZooKeeper.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use paddock_operator::controller::{self, Context};
use paddock_operator::ensemble_ca::{EnsembleCa, OwnFiles};
use paddock_operator::leader::{LeaderElection, Leadership, default_identity};
use paddock_operator::reconcile::certificate::IssuingCa;
use paddock_operator::reconcile::identity::{IdentitySettings, NamespaceAuth};
use paddock_operator::webhook::WebhookContext;
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::tls::{TlsFiles, ZkTls};
use paddock_recipes::{Layout, Session, SessionOptions};

#[derive(Debug, Parser)]
#[command(name = "paddock-operator", version, about = "Reconciles DistributedLock and WorkQueue into ZooKeeper")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML), as `crds/` holds them.
    Crd,
    /// Run the controllers (the Kubernetes API from KUBECONFIG or the pod's service account).
    Run(Box<RunArgs>),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// ZooKeeper connect string.
    #[arg(long, env = "PADDOCK_ZOOKEEPER", value_name = "PADDOCK_ZOOKEEPER")]
    zookeeper: String,
    /// Root of Paddock's subtree.
    #[arg(long, env = "PADDOCK_ZK_ROOT", value_name = "PADDOCK_ZK_ROOT", default_value = "/paddock")]
    zk_root: String,
    /// The operator's own digest identity `user:password` (its admin identity; required
    /// with digest namespace identities).
    #[arg(long, env = "PADDOCK_ZK_AUTH", value_name = "PADDOCK_ZK_AUTH", hide_env_values = true)]
    zk_auth: Option<String>,
    /// How namespaces authenticate to ZooKeeper: `x509` (a client certificate per
    /// namespace; the default with PADDOCK_ZK_TLS_CA) or `digest` (user:password, the
    /// default without TLS, where it crosses the network in the clear).
    #[arg(long, env = "PADDOCK_NAMESPACE_AUTH", value_name = "PADDOCK_NAMESPACE_AUTH")]
    namespace_auth: Option<AuthKind>,
    /// PEM file of the CA that signs namespace certificates (x509); the ZooKeeper servers
    /// must trust it (their ssl.trustStore).
    #[arg(long, env = "PADDOCK_CLIENT_CA_CERT", value_name = "PADDOCK_CLIENT_CA_CERT")]
    client_ca_cert: Option<std::path::PathBuf>,
    /// PEM file of that CA's private key.
    #[arg(long, env = "PADDOCK_CLIENT_CA_KEY", value_name = "PADDOCK_CLIENT_CA_KEY")]
    client_ca_key: Option<std::path::PathBuf>,
    /// How long a namespace certificate is valid; it is renewed after two thirds of it.
    #[arg(long, env = "PADDOCK_CLIENT_CERT_LIFETIME", value_name = "PADDOCK_CLIENT_CERT_LIFETIME", default_value = "720h", value_parser = humantime::parse_duration)]
    client_cert_lifetime: Duration,
    /// PEM file of the CA that signed the ZooKeeper servers' certificates: set, the operator
    /// connects over TLS only, verifying that each server's certificate names its host.
    #[arg(long, env = "PADDOCK_ZK_TLS_CA", value_name = "PADDOCK_ZK_TLS_CA")]
    zk_tls_ca: Option<std::path::PathBuf>,
    /// PEM file of the operator's client certificate (with `PADDOCK_ZK_TLS_KEY`); read again
    /// every 10 s, so a rotated one is used from the next connection on.
    #[arg(long, env = "PADDOCK_ZK_TLS_CERT", value_name = "PADDOCK_ZK_TLS_CERT")]
    zk_tls_cert: Option<std::path::PathBuf>,
    /// PEM file of the private key of `PADDOCK_ZK_TLS_CERT`.
    #[arg(long, env = "PADDOCK_ZK_TLS_KEY", value_name = "PADDOCK_ZK_TLS_KEY")]
    zk_tls_key: Option<std::path::PathBuf>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", value_name = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This replica's name in the Lease (unset: the host's name and a random part).
    #[arg(long, env = "POD_NAME", value_name = "POD_NAME")]
    pod_name: Option<String>,
    /// How long a leader's Lease lasts without renewal.
    #[arg(long, env = "PADDOCK_LEASE_DURATION", value_name = "PADDOCK_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PADDOCK_METRICS_LISTEN", value_name = "PADDOCK_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: std::net::SocketAddr,
    /// ZooKeeper session timeout.
    #[arg(long, env = "PADDOCK_SESSION_TIMEOUT", value_name = "PADDOCK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    #[command(flatten)]
    webhook: paddock_operator::webhook::WebhookSettings,
    #[command(flatten)]
    ensemble: paddock_operator::ensemble_certs::RollSettings,
    #[command(flatten)]
    ensemble_ca: paddock_operator::ensemble_ca::EnsembleCaSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthKind {
    Digest,
    X509,
}

/// The namespace identities the settings ask for, checked; and whether digest credentials
/// would cross the network in the clear. x509 certificates are signed by the CA of
/// `PADDOCK_CLIENT_CA_CERT`, or else by the operator's own (`own_ca`).
fn namespace_auth(args: &RunArgs, own_ca: Option<&EnsembleCa>) -> anyhow::Result<(NamespaceAuth, bool)> {
    let tls = args.zk_tls_ca.is_some();
    match args.namespace_auth.unwrap_or(if tls { AuthKind::X509 } else { AuthKind::Digest }) {
        AuthKind::Digest => {
            anyhow::ensure!(
                args.zk_auth.is_some(),
                "PADDOCK_NAMESPACE_AUTH=digest needs the operator's PADDOCK_ZK_AUTH"
            );
            if !tls {
                tracing::warn!(
                    "namespace identities are digest credentials over plain connections: anyone on the pod network \
                     can read them and act as any namespace; use TLS (PADDOCK_ZK_TLS_CA) and PADDOCK_NAMESPACE_AUTH=x509"
                );
            }
            Ok((NamespaceAuth::Digest, !tls))
        }
        AuthKind::X509 => {
            let (Some(ca), Some(_)) = (&args.zk_tls_ca, &args.zk_tls_cert) else {
                anyhow::bail!(
                    "PADDOCK_NAMESPACE_AUTH=x509 needs TLS with the operator's own certificate: set PADDOCK_ZK_TLS_CA, \
                     PADDOCK_ZK_TLS_CERT and PADDOCK_ZK_TLS_KEY (or PADDOCK_NAMESPACE_AUTH=digest)"
                )
            };
            let read = |path: &std::path::Path, setting: &str| {
                std::fs::read_to_string(path).with_context(|| format!("{setting} {}", path.display()))
            };
            let (cert, key) = match (&args.client_ca_cert, &args.client_ca_key, own_ca) {
                (Some(cert), Some(key), _) => {
                    (read(cert, "PADDOCK_CLIENT_CA_CERT")?, read(key, "PADDOCK_CLIENT_CA_KEY")?)
                }
                (None, None, Some(own)) => {
                    let (cert, key) = own.ca_material();
                    (cert.to_owned(), key.to_owned())
                }
                _ => anyhow::bail!(
                    "PADDOCK_NAMESPACE_AUTH=x509: set PADDOCK_CLIENT_CA_CERT and PADDOCK_CLIENT_CA_KEY, the CA that \
                     signs namespace certificates (the ZooKeeper servers must trust it), or PADDOCK_ZOOKEEPER_CA_SECRET"
                ),
            };
            let client_ca = IssuingCa::new(&cert, &key, read(ca, "PADDOCK_ZK_TLS_CA")?, args.client_cert_lifetime)
                .context("PADDOCK_CLIENT_CA_CERT, PADDOCK_CLIENT_CA_KEY, PADDOCK_CLIENT_CERT_LIFETIME")?;
            Ok((NamespaceAuth::X509(Box::new(client_ca)), false))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Crd => {
            print!("{}", paddock_operator::crd::crds_yaml());
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

/// The files the operator writes when it issues its own certificate.
fn own_files(args: &RunArgs) -> OwnFiles {
    OwnFiles {
        ca: args.zk_tls_ca.clone(),
        cert: args.zk_tls_cert.clone(),
        key: args.zk_tls_key.clone(),
        server_cert: args.ensemble.server_cert.clone(),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing();
    let operator = args.zk_auth.as_deref().map(DigestIdentity::parse).transpose().context("PADDOCK_ZK_AUTH")?;
    let layout = Layout::new(&args.zk_root).context("PADDOCK_ZK_ROOT")?;
    let ensemble_certs = args.ensemble.clone().checked(&args.zookeeper)?;
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    // With its own CA, the operator writes its TLS files before anything reads them.
    let own_ca = EnsembleCa::start(&args.ensemble_ca, client.clone(), &args.namespace, own_files(&args)).await?;
    let (auth, cleartext) = namespace_auth(&args, own_ca.as_ref())?;
    let renewals = own_ca.map(|ca| tokio::spawn(ca.run()));
    let tls = TlsFiles::from_settings(args.zk_tls_ca.clone(), args.zk_tls_cert.clone(), args.zk_tls_key.clone())?
        .map(ZkTls::load)
        .transpose()?;
    let session = Session::start(SessionOptions {
        connect: args.zookeeper.clone(),
        session_timeout: args.session_timeout,
        digest_auth: operator.as_ref().map(DigestIdentity::credentials),
        tls,
    });
    let leadership = Leadership::new();
    let identity = IdentitySettings { root: layout.root().to_owned(), operator, auth, cleartext };
    let ctx = Arc::new(Context::new(client.clone(), session.clone(), layout, identity, leadership.clone()));
    // Every replica serves the webhook, leader or not.
    let webhook_stop = tokio_util::sync::CancellationToken::new();
    let webhook = WebhookContext { client: client.clone(), admissions: ctx.metrics.admissions.clone() };
    paddock_operator::webhook::start(
        args.webhook,
        webhook,
        &args.namespace,
        &args.zookeeper,
        &args.zk_root,
        webhook_stop.clone(),
    )
    .await
    .context("starting the sidecar-injection webhook")?;
    let _stop_webhook = webhook_stop.drop_guard();
    // Ready from here: the webhook (if any) serves. Readiness gates only the webhook
    // Service, and the webhook needs the Kubernetes API, not ZooKeeper.
    serve_metrics(args.metrics_listen, ctx.clone()).await?;

    let identity = args.pod_name.filter(|name| !name.is_empty()).unwrap_or_else(default_identity);
    // The leader restarts the managed ensemble when a server serves a replaced certificate.
    let _restarts = ensemble_certs.map(|c| c.spawn(client.clone(), args.namespace.clone(), leadership.clone()));
    let election =
        LeaderElection::new(client, &args.namespace, "paddock-operator", &identity, args.lease_duration, leadership);
    let ca_replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut shutdown = Box::pin(stop_signal(renewals, ca_replaced.clone()));
    tokio::select! {
        _ = election.acquire() => {}
        _ = &mut shutdown => return stopped(&ca_replaced),
    }
    tracing::info!(zookeeper = %args.zookeeper, root = %args.zk_root, identity, "paddock-operator leading");
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = lost_rx => {}
        }
    };
    // The controllers check the leadership before every write, so they act on nothing
    // once it has ended, even before `hold` has noticed (a process paused past its renew
    // deadline resumes with every timer due at once).
    let controllers = controller::run(ctx, stop);
    let lost = tokio::select! {
        _ = controllers => None,
        lost = election.hold() => { let _ = lost_tx.send(()); Some(lost) }
    };
    election.release().await;
    session.close().await;
    if let Some(lost) = lost {
        anyhow::bail!("stopped leading ({lost:?}); exiting so that a restart rejoins the election");
    }
    stopped(&ca_replaced)
}

/// SIGTERM or SIGINT; or the end of the own CA's renewals, when its Secret holds another
/// CA now (`ca_replaced` is set then).
async fn stop_signal(renewals: Option<tokio::task::JoinHandle<()>>, ca_replaced: Arc<std::sync::atomic::AtomicBool>) {
    let replaced = async {
        match renewals {
            Some(renewals) => {
                let _ = renewals.await;
                ca_replaced.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = replaced => {}
    }
}

/// How a stopped operator exits: an error when its CA was replaced, so that it is
/// restarted with the new one.
fn stopped(ca_replaced: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    if ca_replaced.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("the CA in PADDOCK_ZOOKEEPER_CA_SECRET was replaced; exiting so that a restart signs with it");
    }
    tracing::info!("paddock-operator stopped");
    Ok(())
}

/// `/metrics` (Prometheus), `/healthz`, `/readyz` (serving; the body says whether a
/// ZooKeeper session is connected — an outage must not take the webhook out of its Service).
async fn serve_metrics(listen: std::net::SocketAddr, ctx: Arc<Context>) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("PADDOCK_METRICS_LISTEN {listen}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(ctx): axum::extract::State<Arc<Context>>| async move { ctx.metrics.encode() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|axum::extract::State(ctx): axum::extract::State<Arc<Context>>| async move {
                if ctx.session.is_connected() {
                    "ready; ZooKeeper session connected"
                } else {
                    "ready; no ZooKeeper session (reconnecting)"
                }
            }),
        )
        .with_state(ctx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
