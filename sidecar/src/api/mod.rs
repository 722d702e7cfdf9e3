//! The HTTP API: one module per area, each exposing a `router()`; `router` merges them.

mod events;
pub mod health;
mod lock_observe;
mod lock_sets;
mod locks;
mod metrics;
mod queue_acks;
mod queue_admin;
mod queues;
mod status;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::LatencyUnit;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::state::AppState;

/// Largest request body accepted: a queue payload of up to 1,000,000 bytes (the most a
/// znode holds with its envelope), or a batch of that size. Queues may set a lower limit.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(locks::router())
        .merge(events::router())
        .merge(metrics::router())
        .merge(queues::router())
        .merge(queue_admin::router())
        .merge(status::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .layer(TraceLayer::new_for_http().on_response(in_micros()).on_failure(log_failure))
        .with_state(state)
}

/// What the probe port (`PADDOCK_HEALTH_LISTEN`) serves: the probes and `/metrics`. It
/// listens on all addresses, for the kubelet and Prometheus, so it is read-only: never
/// the lock or queue API, which stays on loopback for the pod's own containers.
pub fn probe_router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(metrics::scrape_router())
        .fallback(not_on_the_probe_port)
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .layer(TraceLayer::new_for_http().on_response(in_micros()).on_failure(log_failure))
        .with_state(state)
}

/// Each response's latency at debug level, in microseconds: most take less than one
/// millisecond, which tower-http's default unit would print as 0.
fn in_micros() -> DefaultOnResponse {
    DefaultOnResponse::new().latency_unit(LatencyUnit::Micros)
}

async fn not_on_the_probe_port() -> crate::error::ApiError {
    crate::error::ApiError::not_found(
        "no-such-endpoint",
        "this port serves /healthz, /readyz and /metrics only; the lock and queue API is on PADDOCK_URL (loopback)",
    )
}

/// A 503 is expected while ZooKeeper is away (the app is told to retry, and `/readyz`
/// logs the change once): debug. Any other server error is one a person must look at.
fn log_failure(class: ServerErrorsFailureClass, latency: std::time::Duration, _span: &tracing::Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(classification = %class, ?latency, "response failed")
        }
        other => tracing::error!(classification = %other, ?latency, "response failed"),
    }
}

#[cfg(test)]
mod tests {
    //! The router, `api/openapi.json` and the README describe the same API.

    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use paddock_recipes::{Layout, Name, Session, SessionOptions};
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use crate::context::ServiceContext;
    use crate::events::EventBus;
    use crate::locks::LockService;
    use crate::metrics::Metrics;
    use crate::queues::QueueService;
    use crate::state::AppState;

    /// A state whose ZooKeeper is unreachable: every route answers without one.
    fn offline_state() -> AppState {
        let session = Session::start(SessionOptions {
            connect: "127.0.0.1:1".into(),
            session_timeout: Duration::from_secs(10),
            digest_auth: None,
            tls: None,
        });
        let ctx = ServiceContext {
            pod_name: "pod".into(),
            namespace: Name::new("namespace", "default").unwrap(),
            layout: Layout::new("/paddock").unwrap(),
            session: session.clone(),
            events: EventBus::new(),
            metrics: Arc::new(Metrics::new()),
        };
        let shutdown = CancellationToken::new();
        let locks = LockService::new(ctx.clone());
        let queues = QueueService::new(ctx.clone(), shutdown.clone());
        AppState {
            session,
            locks,
            queues,
            default_queue: None,
            events: ctx.events,
            metrics: ctx.metrics,
            shutdown,
            readiness: Arc::default(),
        }
    }

    fn documented() -> Vec<(String, String)> {
        let spec: Value = serde_json::from_str(super::metrics::OPENAPI).expect("openapi.json is JSON");
        let mut routes = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in ["get", "post", "delete", "put", "patch"] {
                if item.get(method).is_some() {
                    routes.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes
    }

    #[tokio::test]
    async fn every_documented_route_is_served() {
        let router = super::router(offline_state());
        for (method, path) in documented() {
            if path == "/events" {
                continue; // a stream that does not end; served (see the lock tests)
            }
            let uri = path.replace("{name}", "orders").replace("{id}", "b9-000000000001.0000000001");
            let request = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} not routed");
            assert!(
                status != StatusCode::NOT_FOUND || serde_json::from_slice::<Value>(&body).is_ok(),
                "{method} {path} not routed"
            );
        }
    }

    /// Every family, with a sample (labelled families show nothing until they have one).
    fn metrics_with_every_series() -> Metrics {
        let metrics = Metrics::new();
        let label = crate::metrics::queue_label("example");
        for family in [
            &metrics.queue_enqueued,
            &metrics.queue_delivered,
            &metrics.queue_acked,
            &metrics.queue_nacked,
            &metrics.queue_redelivered,
            &metrics.queue_dead_lettered,
            &metrics.queue_claims_stale,
            &metrics.queue_extended,
            &metrics.queue_visibility_timeouts,
            &metrics.queue_duplicates,
            &metrics.queue_purged,
        ] {
            family.get_or_create(&label).inc_by(0);
        }
        for family in [
            &metrics.queue_ready_items,
            &metrics.queue_in_flight_items,
            &metrics.queue_delayed_items,
            &metrics.queue_dead_letters,
        ] {
            family.get_or_create(&label).set(0);
        }
        metrics.queue_oldest_ready_age_seconds.get_or_create(&label).set(0.0);
        let lock = crate::metrics::lock_label("example");
        metrics.lock_held_seconds.get_or_create(&lock).set(0.0);
        metrics.lock_hold_seconds.get_or_create(&lock).observe(0.0);
        metrics.lock_grants_stale.get_or_create(&lock).inc_by(0);
        metrics.lock_delays.inc_by(0);
        metrics.unknown_config_fields("queue", "/example", &["future".to_owned()]);
        metrics
    }

    /// Whether `/metrics` has the series `name` (a histogram's `_bucket`, `_sum` and
    /// `_count` included).
    fn exports(exported: &str, name: &str) -> bool {
        exported.lines().filter(|l| !l.starts_with('#')).any(|l| l.split(['{', ' ']).next() == Some(name))
    }

    /// The chart's alerts and dashboard name only series the sidecar exports (the
    /// operator's own, `paddock_operator_*`, are checked in its crate): a misspelt or
    /// removed metric fails here, not in someone's Grafana.
    #[test]
    fn the_charts_alerts_and_dashboard_name_only_metrics_that_exist() {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/paddock");
        let exported = metrics_with_every_series().encode();
        let mut checked = 0;
        for file in ["templates/monitoring.yaml", "dashboards/paddock.json"] {
            let text = std::fs::read_to_string(format!("{chart}/{file}")).unwrap();
            for name in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("paddock_") && !name.starts_with("paddock_operator_") {
                    assert!(
                        exports(&exported, name),
                        "{file} names {name}, which /metrics does not export:\n{exported}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "the chart's expressions were read ({checked} names)");
    }

    #[test]
    fn the_readme_names_every_endpoint_and_metric_that_exists() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for (_, path) in documented() {
            let shown = path.replace("{name}", "").replace("{id}", "");
            let stem = shown.split("//").next().unwrap().trim_end_matches('/');
            assert!(readme.contains(stem), "README does not mention {path}");
        }
        let exported = metrics_with_every_series().encode();
        let named: Vec<&str> = readme
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                ["paddock_lock", "paddock_queue", "paddock_zookeeper", "paddock_config"]
                    .iter()
                    .any(|p| w.starts_with(p))
            })
            .collect();
        assert!(named.len() >= 10, "the README lists the metrics");
        for metric in named {
            // A labelled family without samples yet shows only its `# TYPE` line (no `_total`).
            let family = format!("# TYPE {} ", metric.trim_end_matches("_total"));
            assert!(
                exported.contains(metric) || exported.contains(&family),
                "README names metric {metric}, which /metrics does not export:\n{exported}"
            );
        }
    }
}
