//! The daemon binary refuses bad input before it starts, with errors naming file, line and key.
//! (This test also makes `cargo test` build the `tandemd` binary the end-to-end tests run.)

use std::process::Command;

fn run_tandemd(config: &str, node: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandemd"))
        .arg("--config")
        .arg(&path)
        .arg("--node")
        .arg(node)
        .env("TANDEM_LOG", "off")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD_NODES: &str = r#"
[[nodes]]
name = "n1"
peer_addr = "127.0.0.1:1"
admin_addr = "127.0.0.1:2"
"#;

#[test]
fn bad_address_is_refused_naming_file_line_and_key() {
    let config = r#"[cluster]
name = "demo"
data_dir = "data"

[[nodes]]
name = "n1"
peer_addr = "127.0.0.1:99999"
admin_addr = "127.0.0.1:7201"
"#;
    let (ok, stderr) = run_tandemd(config, "n1");
    assert!(!ok);
    assert!(stderr.contains("cluster.toml"), "{stderr}");
    assert!(stderr.contains('7'), "line 7 named: {stderr}");
    assert!(stderr.contains("peer_addr"), "{stderr}");
}

#[test]
fn unknown_key_is_refused() {
    let config = format!(
        "[cluster]\nname = \"demo\"\ndata_dir = \"data\"\nnode_timout_ms = 5\n{GOOD_NODES}"
    );
    let (ok, stderr) = run_tandemd(&config, "n1");
    assert!(!ok);
    assert!(stderr.contains("node_timout_ms"), "{stderr}");
    assert!(stderr.contains("cluster.toml"), "{stderr}");
}

#[test]
fn unknown_node_is_refused_listing_the_known_ones() {
    let config = format!("[cluster]\nname = \"demo\"\ndata_dir = \"data\"\n{GOOD_NODES}");
    let (ok, stderr) = run_tandemd(&config, "n9");
    assert!(!ok);
    assert!(stderr.contains("n9") && stderr.contains("n1"), "{stderr}");
}
