//! deploy/paddock.yaml is the chart rendered as scripts/deploy-manifest.sh renders it:
//! regenerate it with that script when the chart changes.

use paddock_images_test::repo;

#[test]
fn deploy_paddock_yaml_is_the_chart_rendered_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("paddock.yaml");
    let status = std::process::Command::new("bash")
        .arg(repo().join("scripts/deploy-manifest.sh"))
        .arg(&fresh)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/deploy-manifest.sh failed");
    let committed = std::fs::read_to_string(repo().join("deploy/paddock.yaml")).unwrap();
    assert!(
        committed == std::fs::read_to_string(&fresh).unwrap(),
        "deploy/paddock.yaml is stale: run `bash scripts/deploy-manifest.sh`"
    );
    // No password in it: the operator's identity is a Secret the user creates.
    assert!(!committed.contains("\nkind: Secret\n"), "deploy/paddock.yaml holds no Secret");
    assert!(committed.contains("name: paddock-operator-zookeeper"), "the operator reads the Secret the header creates");
    for image in ["paddock-operator", "paddock-sidecar", "paddock-zookeeper"] {
        assert!(committed.contains(&format!("\"{image}:")), "{image} is the image scripts/images.sh builds");
    }
}
