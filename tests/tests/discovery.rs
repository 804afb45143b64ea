//! mDNS discovery (SPEC §9), inside `../shared/tools/netns-pair` only: a private "rig" and
//! "client" host joined by a veth, with no route to any real interface. The daemon
//! advertises in `rig`; `lantern discover` and python-zeroconf (an independent mDNS
//! implementation) browse from `client`. Needs root (ip netns) and python3 with zeroconf
//! (scripts/install-deps installs it).

use std::path::PathBuf;
use std::process::Command;
use tests::{bin_dir, require_root};

const BROWSE: &str = r#"
import sys, time
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
zc = Zeroconf(interfaces=[sys.argv[1]])
def on(zeroconf, service_type, name, state_change):
    print("EVENT", state_change.name, name, flush=True)
    if state_change is ServiceStateChange.Added:
        info = zeroconf.get_service_info(service_type, name, 3000)
        if info:
            keys = [k.decode() for k in info.properties]
            props = {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()}
            print("INFO", name, info.port, info.parsed_addresses(), keys, props, flush=True)
ServiceBrowser(zc, "_mydebug._tcp.local.", handlers=[on])
time.sleep(float(sys.argv[2]))
zc.close()
"#;

fn netns_pair() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/netns-pair")
}

#[test]
fn root_discovery_in_two_private_hosts_with_an_independent_browser_and_goodbye() {
    if !require_root("root_discovery_in_two_private_hosts_with_an_independent_browser_and_goodbye") {
        return;
    }
    let zeroconf = Command::new("python3").args(["-c", "import zeroconf"]).status().is_ok_and(|s| s.success());
    if !zeroconf {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 zeroconf is missing (scripts/install-deps installs it)"
        );
        eprintln!("SKIPPED: no python3 zeroconf");
        return;
    }
    assert!(netns_pair().exists(), "{} is missing", netns_pair().display());
    let dir = std::env::temp_dir().join(format!("dl-mdns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("browse.py"), BROWSE).unwrap();
    let (d, l, o) = (bin_dir().join("debuglantern"), bin_dir().join("lantern"), dir.display().to_string());
    // Two daemons with the same name on the rig: the second renames itself.
    let script = format!(
        r#"set -u
ip netns exec rig {d} --listen 10.77.0.1:4444 --insecure-no-auth --mdns-name 'twin rig' 2>{o}/rig1.log & D1=$!
sleep 2
ip netns exec rig {d} --listen 10.77.0.1:4445 --insecure-no-auth --mdns-name 'twin rig' 2>{o}/rig2.log & D2=$!
sleep 3
ip netns exec client {l} discover --timeout 3 --json > {o}/discover.json
ip netns exec client {l} --rig 'twin rig (2)' --json list > {o}/by-name.json 2>&1
ip netns exec client python3 {o}/browse.py 10.77.0.2 9 > {o}/browse.log 2>&1 & B=$!
sleep 4
kill -TERM $D1 $D2; wait $D1; echo "exit1=$?" > {o}/exit; wait $D2; echo "exit2=$?" >> {o}/exit
wait $B
"#,
        d = d.display(),
        l = l.display(),
    );
    let st = Command::new(netns_pair()).args(["sh", "-c", &script]).status().expect("netns-pair");
    assert!(st.success(), "netns-pair failed");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let logs = format!("rig1:\n{}\nrig2:\n{}", read("rig1.log"), read("rig2.log"));
    assert!(read("rig1.log").contains("advertising \"twin rig\""), "{logs}");
    assert!(read("rig2.log").contains("advertising \"twin rig (2)\""), "the name conflict was not renamed: {logs}");
    // lantern discover: both, with port, address and TXT.
    let v: serde_json::Value =
        serde_json::from_str(&read("discover.json")).unwrap_or_else(|e| panic!("{e}: {}", read("discover.json")));
    let rigs = v["rigs"].as_array().unwrap();
    let one = rigs.iter().find(|r| r["instance"] == "twin rig").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(one["port"], 4444);
    assert_eq!(one["addresses"], serde_json::json!(["10.77.0.1"]));
    assert_eq!(one["txt"]["txtvers"], "1");
    assert_eq!(one["txt"]["protovers"], "1");
    assert_eq!(one["txt"]["auth"], "none");
    assert!(one["txt"]["hostid"].as_str().unwrap().len() == 16);
    assert!(rigs.iter().any(|r| r["instance"] == "twin rig (2)" && r["port"] == 4445), "{v}");
    // A discovered instance name works as --rig.
    assert!(read("by-name.json").contains(r#""sessions":[]"#), "{}", read("by-name.json"));
    // The independent implementation: found with TXT (txtvers first), then the goodbye.
    let browse = read("browse.log");
    let info = browse.lines().find(|l| l.starts_with("INFO twin rig._mydebug")).unwrap_or_else(|| panic!("{browse}"));
    assert!(info.contains(" 4444 ") && info.contains("10.77.0.1"), "{info}");
    assert!(info.contains("['txtvers', "), "txtvers must come first: {info}");
    assert!(browse.contains("EVENT Removed twin rig._mydebug._tcp.local."), "no goodbye seen:\n{browse}");
    assert!(browse.contains("EVENT Removed twin rig (2)._mydebug._tcp.local."), "no goodbye seen:\n{browse}");
    assert_eq!(read("exit"), "exit1=0\nexit2=0\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_loopback_only_daemon_does_not_advertise() {
    if !require_root("root_loopback_only_daemon_does_not_advertise") {
        return;
    }
    // Started on the host, on loopback: no mDNS at all (and so nothing on real interfaces).
    let d = tests::Daemon::start(&[]);
    assert_eq!(d.client().cmd("HELLO")["mdns"], serde_json::Value::Null);
    assert!(!d.log().contains("advertising"), "{}", d.log());
}
