//! The sidecar's router called in-process (tower `oneshot`), against a real ensemble:
//! no sidecar process, no port. For cases that are about the API over the services, not
//! about the process (signals, restarts, logs).

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use clap::Parser;
use paddock_recipes::{LockConfig, QueueConfig};
use paddock_sidecar::{App, Config};
use paddock_testkit::{Ensemble, eventually, init_tracing, provision};
use serde_json::Value;
use tower::ServiceExt;

const NS: &str = "in-process";

async fn app(ensemble: &Ensemble) -> App {
    let config = Config::try_parse_from([
        "paddock-sidecar",
        "--zookeeper",
        &ensemble.connect_string(),
        "--pod-name",
        "pod-a",
        "--pod-namespace",
        NS,
        "--listen",
        "127.0.0.1:0",
    ])
    .expect("a valid config");
    let app = App::new(config).expect("the app starts");
    eventually(Duration::from_secs(20), "the session is up", || async {
        call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await.0 == StatusCode::OK
    })
    .await;
    app
}

async fn call(app: &App, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.router().oneshot(request).await.expect("the router answers");
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, to_bytes(body, 1 << 20).await.unwrap().to_vec())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_goes_through_enqueue_next_and_ack() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, NS, "jobs", QueueConfig::default()).await.unwrap();
    let app = app(&ensemble).await;

    let (status, _, body) = call(&app, Request::post("/queue/jobs").body(Body::from("resize 42.jpg")).unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let id = json(&body)["id"].as_str().expect("an id").to_owned();

    let (status, headers, body) =
        call(&app, Request::get("/queue/next?queue=jobs&wait=5s").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"resize 42.jpg");
    assert_eq!(headers["paddock-item-id"], id.as_str());
    assert_eq!(headers["paddock-attempt"], "1");

    let (status, _, _) = call(&app, Request::post(format!("/queue/jobs/{id}/ack")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) =
        call(&app, Request::post(format!("/queue/jobs/{id}/ack")).body(Body::empty()).unwrap()).await;
    assert_eq!((status, json(&body)["error"].as_str()), (StatusCode::CONFLICT, Some("claim-lost")), "acked once only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_granted_with_a_token_and_refused_to_a_second_owner() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::lock(&admin, NS, "orders", LockConfig::default()).await.unwrap();
    let app = app(&ensemble).await;
    let acquire = |owner: &str| {
        Request::post("/lock")
            .header("content-type", "application/json")
            .body(Body::from(format!(r#"{{"name":"orders","owner":"{owner}","wait":"0s"}}"#)))
            .unwrap()
    };

    let (status, _, body) = call(&app, acquire("a")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body)["token"].as_i64().is_some_and(|t| t > 0), "a fencing token");
    let (status, _, body) = call(&app, acquire("b")).await;
    assert_eq!((status, json(&body)["error"].as_str()), (StatusCode::CONFLICT, Some("lock-busy")));
}
