//! Two operator replicas: one leads (the Lease says which), the other waits; when the
//! leader dies the other takes the Lease over and reconciles. A leader paused past its
//! renew deadline stops leading before it does anything else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use paddock_kube_standin::ApiServer;
use paddock_operator::crd::{DeletionPolicy, DistributedLock, DistributedLockSpec};
use paddock_recipes::identity::DigestIdentity;
use paddock_testkit::{Ensemble, Operator, OperatorOptions, eventually, init_tracing, workspace_binary};

async fn ready(locks: &Api<DistributedLock>, name: &str) -> bool {
    locks
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.status)
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn lock(name: &str) -> DistributedLock {
    DistributedLock::new(
        name,
        DistributedLockSpec { max_holders: 1, ttl: None, lock_delay: None, deletion_policy: DeletionPolicy::Retain },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_dies() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let client = api.client().unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for doc in include_str!("../../crds/paddock.dev.yaml").split("---\n") {
        crds.create(&PostParams::default(), &serde_yaml::from_str(doc).unwrap()).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let operator_identity = DigestIdentity::generate("paddock-operator");
    let mut replicas = Vec::new();
    for name in ["operator-a", "operator-b"] {
        let mut options = OperatorOptions::new(
            workspace_binary("paddock-operator"),
            &kubeconfig,
            &ensemble.connect_string(),
            &operator_identity.credentials(),
        )
        .pod(name, "default");
        options.lease_duration = Duration::from_secs(3);
        replicas.push(Operator::spawn(options).unwrap());
    }

    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    locks.create(&PostParams::default(), &lock("first")).await.unwrap();
    eventually(Duration::from_secs(60), "the leader reconciles", || ready(&locks, "first")).await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let holder = || async {
        leases.get_opt("paddock-operator").await.unwrap().and_then(|l| l.spec).and_then(|s| s.holder_identity)
    };
    let leader = holder().await.expect("a leader holds the Lease");

    // Kill the leader; the other replica takes over within the lease duration.
    let replica = replicas.iter_mut().find(|r| r.pod_name() == leader).unwrap();
    replica.process.kill();
    locks.create(&PostParams::default(), &lock("second")).await.unwrap();
    eventually(Duration::from_secs(60), "the other replica leads", || async {
        holder().await.is_some_and(|h| h != leader)
    })
    .await;
    eventually(Duration::from_secs(60), "and reconciles", || ready(&locks, "second")).await;
}

/// A TCP relay in front of the API stand-in for one replica, noting every request line it
/// sends (when, method, path): which replica wrote what.
struct Tap {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

impl Tap {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            let line = regex::Regex::new(r"(GET|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.1$").unwrap();
            while let Ok((downstream, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (mut down_read, mut down_write) = downstream.into_split();
                let (mut up_read, mut up_write) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut up_read, &mut down_write).await;
                });
                let (log, line) = (log.clone(), line.clone());
                tokio::spawn(async move {
                    let (mut buf, mut pending) = (vec![0u8; 16384], Vec::new());
                    loop {
                        let n = match down_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let at = Instant::now();
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                            let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                            if let Some(c) = line.captures(&text) {
                                log.lock().unwrap().push((at, c[1].to_owned(), c[2].to_owned()));
                            }
                            pending.drain(..end + 2);
                        }
                        if up_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, requests }
    }

    /// Requests other than reads and the Lease's own, sent at or after `since`.
    fn writes_since(&self, since: Instant) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|(at, method, path)| *at >= since && method != "GET" && !path.contains("/leases"))
            .map(|(_, method, path)| format!("{method} {path}"))
            .collect()
    }

    fn lease_writes_before(&self, until: Instant) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|(at, method, path)| *at < until && method == "PUT" && path.contains("/leases")).count()
    }
}

/// Issue 12, item 8: the leader is paused (SIGSTOP) just after a renewal, for longer than
/// its renew deadline (2/3 of the lease) but shorter than the lease. When it resumes it
/// must stop leading — the other replica takes over — and write nothing but the Lease
/// (it gives it up) before it leads again: not even the lock applied while it was paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_renew_deadline_stops_leading_and_writes_nothing() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let client = api.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    paddock_testkit::kubectl(&write(&dir, "kubeconfig", &api.kubeconfig()), &["apply", "-f", "crds/"]).unwrap();
    let operator_identity = DigestIdentity::generate("paddock-operator");
    let lease_duration = Duration::from_secs(6);
    let mut replicas = Vec::new();
    for name in ["operator-a", "operator-b"] {
        let tap = Tap::start(api.addr).await;
        let kubeconfig = api.kubeconfig().replace(&api.url(), &format!("http://{}", tap.addr));
        let mut options = OperatorOptions::new(
            workspace_binary("paddock-operator"),
            write(&dir, &format!("kubeconfig-{name}"), &kubeconfig),
            &ensemble.connect_string(),
            &operator_identity.credentials(),
        )
        .pod(name, "default");
        options.lease_duration = lease_duration;
        replicas.push((Operator::spawn(options).unwrap(), tap));
    }

    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    locks.create(&PostParams::default(), &lock("first")).await.unwrap();
    eventually(Duration::from_secs(60), "the leader reconciles", || ready(&locks, "first")).await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let spec = || async { leases.get_opt("paddock-operator").await.unwrap().and_then(|l| l.spec).unwrap_or_default() };
    let leader = spec().await.holder_identity.expect("a leader holds the Lease");
    let (replica, tap) = replicas.iter_mut().find(|(r, _)| r.pod_name() == leader).unwrap();

    // Pause it right after a renewal, so the lease is far from expired when it resumes.
    let renewed = spec().await.renew_time;
    let deadline = Instant::now() + Duration::from_secs(30);
    while spec().await.renew_time == renewed {
        assert!(Instant::now() < deadline, "the leader renews its Lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replica.process.pause().unwrap();
    let paused = Instant::now();
    locks.create(&PostParams::default(), &lock("during-pause")).await.unwrap();
    tokio::time::sleep_until((paused + lease_duration * 3 / 4).into()).await;
    let resumed = Instant::now();
    replica.process.resume().unwrap();
    assert!(tap.lease_writes_before(paused) > 0, "the tap sees the leader's renewals");

    eventually(Duration::from_secs(20), "the other replica takes the Lease over", || async {
        spec().await.holder_identity.is_some_and(|h| h != leader)
    })
    .await;
    eventually(Duration::from_secs(60), "and reconciles the lock applied meanwhile", || ready(&locks, "during-pause"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(spec().await.holder_identity.as_deref(), Some(leader.as_str()));
    let writes = tap.writes_since(resumed);
    assert!(writes.is_empty(), "the paused leader wrote after its renew deadline: {writes:?}");
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Issue 12, item 8: without `POD_NAME` a replica still needs an identity no other replica
/// has. The process id is not one: every replica's container runs it as pid 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pod_name_a_replica_leads_under_an_identity_of_its_own() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write(&dir, "kubeconfig", &api.kubeconfig());
    let operator_identity = DigestIdentity::generate("paddock-operator");
    let mut options = OperatorOptions::new(
        workspace_binary("paddock-operator"),
        &kubeconfig,
        &ensemble.connect_string(),
        &operator_identity.credentials(),
    )
    .pod("", "default");
    options.lease_duration = Duration::from_secs(3);
    let replica = Operator::spawn(options).unwrap();
    let pid = replica.process.pid().unwrap().to_string();
    let leases: Api<Lease> = Api::namespaced(api.client().unwrap(), "default");
    let mut identity = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while identity.is_none() {
        assert!(Instant::now() < deadline, "the replica takes the Lease");
        identity = leases.get_opt("paddock-operator").await.unwrap().and_then(|l| l.spec?.holder_identity);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let identity = identity.unwrap();
    assert!(
        !identity.trim_start_matches("paddock-operator-").eq(&pid) && !identity.ends_with(&format!("-{pid}")),
        "the identity {identity:?} is made of the process id {pid}, which every container's replica shares"
    );
    assert!(identity.len() >= "paddock-operator-".len() + 16, "the identity has a random part: {identity:?}");
}
