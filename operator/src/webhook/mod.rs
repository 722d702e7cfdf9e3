//! The sidecar-injection webhook: a mutating admission webhook over HTTPS that adds the
//! Paddock sidecar to pods annotated `paddock.dev/inject: "true"`. Every replica serves
//! it (the Service balances over them), leader or not.
//!
//! - `inject`: what injection does to a pod (pure).
//! - `cli`: what `paddock.dev/cli: "true"` adds to it: the `paddock` command (pure).
//! - `admission`: AdmissionReview in, AdmissionReview out.
//! - `patch`: the injected pod as a JSONPatch on the pod the API server sent.
//! - `certs`: the serving certificate and the caBundle.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod inject;
mod patch;
pub mod tls_identity;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::ResourceRequirements;

pub use self::admission::Webhook;
pub use self::inject::SidecarTemplate;
use crate::metrics::AdmissionMetrics;

/// What the webhook needs of the operator: the Kubernetes API (to look up a namespace's
/// credentials Secret, and for its certificate) and its metric.
#[derive(Clone)]
pub struct WebhookContext {
    pub client: kube::Client,
    pub admissions: AdmissionMetrics,
}

/// The webhook's settings (the chart sets them; see `charts/paddock`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// Serve the webhook (HTTPS) on this address; unset, no webhook runs.
    #[arg(long, env = "PADDOCK_WEBHOOK_LISTEN", value_name = "PADDOCK_WEBHOOK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The webhook Service's name: the self-signed certificate covers `<name>.<namespace>.svc`.
    #[arg(
        long,
        env = "PADDOCK_WEBHOOK_SERVICE",
        value_name = "PADDOCK_WEBHOOK_SERVICE",
        default_value = "paddock-webhook"
    )]
    pub service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps (self-signed mode).
    #[arg(long, env = "PADDOCK_WEBHOOK_CONFIG", value_name = "PADDOCK_WEBHOOK_CONFIG")]
    pub configuration: Option<String>,
    /// The Secret (operator's namespace) where replicas share the self-signed certificate.
    #[arg(
        long,
        env = "PADDOCK_WEBHOOK_TLS_SECRET",
        value_name = "PADDOCK_WEBHOOK_TLS_SECRET",
        default_value = "paddock-webhook-tls"
    )]
    pub tls_secret: String,
    /// Read `tls.crt` and `tls.key` from this directory (cert-manager) instead of making them.
    #[arg(long, env = "PADDOCK_WEBHOOK_CERT_DIR", value_name = "PADDOCK_WEBHOOK_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// The sidecar image.
    #[arg(long, env = "PADDOCK_SIDECAR_IMAGE", value_name = "PADDOCK_SIDECAR_IMAGE", default_value = concat!("paddock-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    #[arg(long, env = "PADDOCK_SIDECAR_PULL_POLICY", value_name = "PADDOCK_SIDECAR_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_pull_policy: String,
    /// The sidecar's resources, as the JSON of a container's `resources`.
    #[arg(long, env = "PADDOCK_SIDECAR_RESOURCES", value_name = "PADDOCK_SIDECAR_RESOURCES", default_value = r#"{"requests":{"cpu":"20m","memory":"32Mi"},"limits":{"memory":"64Mi"}}"#, value_parser = parse_resources)]
    pub sidecar_resources: ResourceRequirements,
    /// Connect string the sidecars use (default: the operator's own).
    #[arg(long, env = "PADDOCK_SIDECAR_ZOOKEEPER", value_name = "PADDOCK_SIDECAR_ZOOKEEPER")]
    pub sidecar_zookeeper: Option<String>,
    /// The sidecar's API port on loopback.
    #[arg(long, env = "PADDOCK_SIDECAR_PORT", value_name = "PADDOCK_SIDECAR_PORT", default_value_t = 7420)]
    pub sidecar_port: u16,
    /// The sidecar's probe port.
    #[arg(
        long,
        env = "PADDOCK_SIDECAR_HEALTH_PORT",
        value_name = "PADDOCK_SIDECAR_HEALTH_PORT",
        default_value_t = 7421
    )]
    pub sidecar_health_port: u16,
    /// Native sidecars (init container with restartPolicy Always): `auto` asks the API
    /// server's version (1.29+), `always` or `never` decide.
    #[arg(long, env = "PADDOCK_NATIVE_SIDECARS", value_name = "PADDOCK_NATIVE_SIDECARS", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub native_sidecars: String,
}

fn parse_resources(value: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(value)
        .map_err(|e| format!("{e}; expected e.g. {{\"requests\":{{\"cpu\":\"20m\",\"memory\":\"32Mi\"}}}}"))
}

/// Whether the cluster runs native sidecars: Kubernetes 1.29 or later.
pub fn supports_native_sidecars(info: &k8s_openapi::apimachinery::pkg::version::Info) -> bool {
    let number = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().unwrap_or(0);
    (number(&info.major), number(&info.minor)) >= (1, 29)
}

/// Starts the webhook server (and the certificate upkeep) when `settings.listen` is set.
/// Returns once it listens; it stops with `shutdown`.
pub async fn start(
    settings: WebhookSettings,
    ctx: WebhookContext,
    namespace: &str,
    zookeeper: &str,
    zk_root: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = settings.listen else {
        tracing::info!("PADDOCK_WEBHOOK_LISTEN unset: no sidecar injection from this replica");
        return Ok(());
    };
    let client = ctx.client.clone();
    let native = match settings.native_sidecars.as_str() {
        "always" => true,
        "never" => false,
        _ => {
            let info = client.apiserver_version().await.context("asking the API server's version")?;
            supports_native_sidecars(&info)
        }
    };
    let template = SidecarTemplate {
        image: settings.sidecar_image.clone(),
        pull_policy: settings.sidecar_pull_policy.clone(),
        zookeeper: settings.sidecar_zookeeper.clone().unwrap_or_else(|| zookeeper.to_owned()),
        zk_root: zk_root.to_owned(),
        resources: settings.sidecar_resources.clone(),
        port: settings.sidecar_port,
        health_port: settings.sidecar_health_port,
        native,
    };

    let tls = serving_tls(&settings, &client, namespace).await?;
    let webhook = Arc::new(Webhook::new(ctx, template));
    let app = admission::router(webhook);
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(listen, tls).handle(handle.clone()).serve(app.into_make_service());
    tokio::spawn(async move {
        if let Err(err) = server.await {
            tracing::error!(error = %err, "the webhook server stopped");
        }
    });
    let listening = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    listening.listening().await.with_context(|| format!("PADDOCK_WEBHOOK_LISTEN {listen}: cannot listen"))?;
    tracing::info!(%listen, native_sidecars = native, "sidecar-injection webhook serving");
    Ok(())
}

/// The TLS the webhook serves with, kept current: cert-manager's files (reloaded when they
/// change) or the self-signed certificate the replicas share (followed, its CA written
/// into the caBundle).
async fn serving_tls(
    settings: &WebhookSettings,
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<RustlsConfig> {
    Ok(match &settings.cert_dir {
        Some(dir) => {
            let cert = certs::from_dir(dir)?;
            let tls = RustlsConfig::from_config(cert.rustls()?);
            tokio::spawn(certs::reload_from_dir(dir.clone(), tls.clone(), cert));
            tls
        }
        None => {
            let names = certs::service_dns_names(&settings.service, namespace);
            let cert = certs::shared_self_signed(client.clone(), namespace, &settings.tls_secret, &names).await?;
            let tls = RustlsConfig::from_config(cert.rustls()?);
            tokio::spawn(certs::follow_shared(
                client.clone(),
                namespace.to_owned(),
                settings.tls_secret.clone(),
                settings.configuration.clone(),
                tls.clone(),
                cert,
            ));
            tls
        }
    })
}
