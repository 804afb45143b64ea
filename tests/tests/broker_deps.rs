//! SPEC §2: the broker never links a parser of untrusted formats or a networking crate.

#[test]
fn broker_dependency_tree_has_no_parsers_or_network_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-p", "broker", "-e", "normal", "--prefix", "none", "--manifest-path", manifest])
        .output()
        .expect("cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"broker"), "{tree}");
    for banned in ["mdns-sd", "tar", "flate2", "goblin", "serde_json", "tokio", "socket2"] {
        assert!(!crates.contains(&banned), "broker depends on {banned}:\n{tree}");
    }
    // mio must be built without its networking feature.
    let features = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--offline", "-p", "broker", "-e", "features", "-i", "mio", "--manifest-path", manifest])
        .output()
        .expect("cargo tree");
    let f = String::from_utf8_lossy(&features.stdout);
    assert!(!f.contains("mio feature \"net\""), "broker pulls mio's net feature:\n{f}");
}
