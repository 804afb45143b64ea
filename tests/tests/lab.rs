//! A lab of rigs over unicast DNS-SD (RFC 6763 §11), inside `../shared/tools/netns-pair`
//! only: a real authoritative server (BIND's `named`, from Debian's packages) in the
//! `rig` namespace serves `lab.example` and takes TSIG-signed updates; daemons there
//! register themselves; `lantern` in `client` browses, picks and runs. `dig` (BIND's, an
//! independent implementation) checks what is in the zone. Needs root (ip netns), named,
//! dig and tsig-keygen (scripts/install-deps installs bind9 and bind9-dnsutils).

use std::path::PathBuf;
use std::process::Command;
use tests::{bin_dir, require_root};

fn netns_pair() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/netns-pair")
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

const ZONE: &str = "$TTL 60
@ IN SOA ns.lab.example. admin.lab.example. 1 60 60 600 60
@ IN NS ns.lab.example.
ns IN A 10.77.0.1
";

#[test]
fn root_lab_of_rigs_over_unicast_dns_sd_with_bind() {
    if !require_root("root_lab_of_rigs_over_unicast_dns_sd_with_bind") {
        return;
    }
    let tools = ["named", "dig", "nsupdate", "tsig-keygen"];
    if let Some(missing) = tools.iter().find(|t| !have(t)) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{missing} is missing (scripts/install-deps installs bind9)"
        );
        eprintln!("SKIPPED: no {missing}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("dl-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cfg/lantern")).unwrap();
    let o = dir.display().to_string();
    let key = Command::new("tsig-keygen").args(["-a", "hmac-sha256", "rig-update"]).output().unwrap();
    assert!(key.status.success());
    let write600 = |name: &str, data: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join(name), data).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write600("key.conf", &key.stdout);
    // The same key name with another secret: the server refuses its signature.
    write600("bad.key", b"hmac-sha256:rig-update:d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCE=");
    std::fs::write(dir.join("open.key"), &key.stdout).unwrap(); // mode 644: refused
                                                                // A rig wanting a token nobody here has: the least loaded, and never chosen.
    write600("tokens", b"alice a-token-of-twenty-characters\n");
    std::fs::write(dir.join("lab.example.zone"), ZONE).unwrap();
    // The server allows exactly what contrib/dns-sd/named.conf.snippet allows.
    let snippet =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/dns-sd/named.conf.snippet"))
            .unwrap();
    let start = snippet.find("update-policy {").expect("the snippet has an update-policy");
    let end = start + snippet[start..].find("};").unwrap() + 2;
    let policy = &snippet[start..end];
    std::fs::write(
        dir.join("named.conf"),
        format!(
            r#"include "{o}/key.conf";
options {{ directory "{o}"; pid-file "{o}/named.pid"; listen-on port 53 {{ 10.77.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; dnssec-validation no; }};
zone "lab.example" {{ type primary; file "{o}/lab.example.zone"; {policy} }};
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("resolv.conf"), "nameserver 10.77.0.1\n").unwrap();
    std::fs::write(dir.join("cfg/lantern/config.toml"), "domains = [\"lab.example\"]\ndns_server = \"10.77.0.1\"\n")
        .unwrap();
    // A copy of a real program with its ELF machine changed to aarch64's.
    let mut arm = std::fs::read("/bin/true").unwrap();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(dir.join("true-aarch64"), arm).unwrap();
    // The daemons name their host `<hostname>-<port>` in the domain.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host: String = hostname.trim().split('.').next().unwrap().to_ascii_lowercase();
    let (d, l) =
        (bin_dir().join("debuglantern").display().to_string(), bin_dir().join("lantern").display().to_string());
    let dns = "--dns-sd-domain lab.example --dns-sd-server 10.77.0.1 --dns-sd-refresh 3s";
    let common = "--insecure-no-auth --no-mdns";
    // rig a: one session at most, filled; rig b: 1 of 4; a third named "rig b" too is
    // renamed "rig b (2)": 1 of 8, the least loaded, but its quota of one session per
    // identity is used up.
    let script = format!(
        r#"set -u
mount --bind {o}/resolv.conf /etc/resolv.conf
ip netns exec rig named -g -c {o}/named.conf > {o}/named.log 2>&1 & N=$!
sleep 1.5
ip netns exec rig {d} --listen 10.77.0.1:4444 {common} --max-sessions 1 --dns-sd-name 'rig a' {dns} --dns-sd-key {o}/key.conf 2>{o}/a.log & A=$!
ip netns exec rig {d} --listen 10.77.0.1:4445 {common} --max-sessions 4 --dns-sd-name 'rig b' {dns} --dns-sd-key {o}/key.conf 2>{o}/b.log & B=$!
sleep 2
ip netns exec rig {d} --listen 10.77.0.1:4446 {common} --max-sessions 8 --quota-sessions 1 --dns-sd-name 'rig b' {dns} --dns-sd-key {o}/key.conf 2>{o}/c.log & C=$!
ip netns exec rig {d} --listen 10.77.0.1:4447 {common} {dns} --dns-sd-key {o}/bad.key 2>{o}/bad.log & X=$!
ip netns exec rig {d} --listen 10.77.0.1:4449 --no-mdns --auth-tokens {o}/tokens --dns-sd-name locked {dns} --dns-sd-key {o}/key.conf 2>{o}/locked.log & L=$!
ip netns exec rig {d} --listen 10.77.0.1:4448 {common} {dns} --dns-sd-key {o}/open.key 2>{o}/open.log; echo "open=$?" > {o}/open.exit
sleep 3
C1="ip netns exec client env XDG_CONFIG_HOME={o}/none"
$C1 {l} discover --domain lab.example --dns-server 10.77.0.1 --json > {o}/discover.json 2>{o}/discover.err
$C1 {l} discover --domain lab.example > {o}/discover-resolv.txt 2>&1
ip netns exec client dig +short @10.77.0.1 'rig\032a._mydebug._tcp.lab.example' TXT > {o}/dig-txt.txt
$C1 {l} --rig 10.77.0.1:4444 upload /bin/true > {o}/fill-a.txt 2>&1
$C1 {l} --rig 10.77.0.1:4445 upload /bin/true > {o}/fill-b.txt 2>&1
$C1 {l} --rig 10.77.0.1:4446 upload /bin/true > {o}/fill-c.txt 2>&1
# Someone deletes rig b's records (BIND's own nsupdate): the next refresh puts them back.
printf 'server 10.77.0.1\nupdate delete rig\\032b._mydebug._tcp.lab.example.\nsend\n' | ip netns exec client nsupdate -k {o}/key.conf
ip netns exec client dig +short @10.77.0.1 'rig\032b._mydebug._tcp.lab.example' SRV > {o}/dig-deleted.txt
sleep 4.5
ip netns exec client dig +short @10.77.0.1 'rig\032b._mydebug._tcp.lab.example' SRV > {o}/dig-restored.txt
C2="ip netns exec client env XDG_CONFIG_HOME={o}/cfg"
$C2 {l} rigs > {o}/rigs.txt 2>&1
$C2 {l} --rig any --json upload /bin/true > {o}/any-upload.json 2>{o}/any-upload.err
$C2 {l} --rig any run /bin/echo -- hello from the lab > {o}/any-run.out 2>{o}/any-run.err; echo "run=$?" > {o}/any-run.exit
$C2 {l} --rig 'rig b (2)' --json list > {o}/by-name.json 2>&1
$C2 {l} --rig any upload {o}/true-aarch64 > {o}/arm.out 2>&1; echo "arm=$?" > {o}/arm.exit
$C2 {l} --rig 'any:arch=aarch64' upload /bin/true > {o}/arm-filter.out 2>&1
ip netns exec client bash -c 'exec 3<>/dev/tcp/10.77.0.1/4447; echo HELLO >&3; head -1 <&3' > {o}/bad-hello.json
kill -TERM $A; wait $A; echo "a=$?" > {o}/a.exit
ip netns exec client dig +short @10.77.0.1 _mydebug._tcp.lab.example PTR > {o}/dig-after.txt
ip netns exec client dig +short @10.77.0.1 {host}-4444.lab.example A > {o}/dig-host-after.txt
$C1 {l} discover --domain lab.example --dns-server 10.77.0.1 --json > {o}/discover-after.json 2>&1
kill -TERM $B $C $X $L; wait $B $C $X $L
kill $N; wait $N
"#
    );
    let st = Command::new(netns_pair()).args(["bash", "-c", &script]).status().expect("netns-pair");
    assert!(st.success(), "netns-pair failed");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let logs = || {
        ["a.log", "b.log", "c.log", "bad.log", "open.log"]
            .iter()
            .map(|f| format!("{f}:\n{}\n", read(f)))
            .collect::<String>()
            + &read("named.log")
                .lines()
                .filter(|l| l.contains("update") || l.contains("TSIG"))
                .collect::<Vec<_>>()
                .join("\n")
    };
    // Browsing: every registered rig, with port, address and TXT (txtvers first).
    let v: serde_json::Value = serde_json::from_str(&read("discover.json"))
        .unwrap_or_else(|e| panic!("{e}: {} {}\n{}", read("discover.json"), read("discover.err"), logs()));
    let rigs = v["rigs"].as_array().unwrap();
    let names: Vec<&str> = rigs.iter().map(|r| r["instance"].as_str().unwrap()).collect();
    assert_eq!(names, ["locked", "rig a", "rig b", "rig b (2)"], "{v}\n{}", logs());
    assert_eq!(rigs[0]["txt"]["auth"], "token");
    let a = &rigs[1];
    assert_eq!(a["port"], 4444);
    assert_eq!(a["addresses"], serde_json::json!(["10.77.0.1"]));
    assert_eq!(a["domain"], "lab.example");
    assert_eq!(a["txt"]["txtvers"], "1");
    assert_eq!(a["txt"]["max_sessions"], "1");
    assert_eq!(a["txt"]["arch"], std::env::consts::ARCH);
    assert_eq!(a["txt"]["auth"], "none");
    assert!(read("dig-txt.txt").starts_with("\"txtvers=1\" "), "{}", read("dig-txt.txt"));
    // The server from /etc/resolv.conf when none is given.
    assert!(
        read("discover-resolv.txt").contains(&format!("rig b (2)  {host}-4446.lab.example.:4446")),
        "{}",
        read("discover-resolv.txt")
    );
    // Refreshing restores records deleted behind the rig's back.
    assert_eq!(read("dig-deleted.txt"), "", "nsupdate did not delete");
    assert!(read("dig-restored.txt").contains(" 4445 "), "not restored: {:?}\n{}", read("dig-restored.txt"), logs());
    // lantern rigs: load per rig.
    let rigs_txt = read("rigs.txt");
    let line =
        |name: &str| rigs_txt.lines().find(|l| l.starts_with(&format!("{name:<28}"))).unwrap_or_default().to_string();
    assert!(line("rig a").contains(" 1/1 "), "{rigs_txt}");
    assert!(line("rig b").contains(" 1/4 "), "{rigs_txt}");
    assert!(line("rig b (2)").contains(" 1/8 ") && line("rig b (2)").contains("lab.example"), "{rigs_txt}");
    assert!(line("locked").contains(" token ") && line("locked").contains(" 0/64 "), "{rigs_txt}");
    // --rig any: rig a is full, rig b (2) (1 of 8) comes before rig b (1 of 4); its
    // quota refuses, and rig b takes it.
    let up: serde_json::Value = serde_json::from_str(&read("any-upload.json"))
        .unwrap_or_else(|e| panic!("{e}: {} {}", read("any-upload.json"), read("any-upload.err")));
    assert_eq!(up["rig"]["instance"], "rig b", "{up} {}", read("any-upload.err"));
    let err = read("any-upload.err");
    assert!(err.contains("rig \"rig b (2)\" refused: limit_reached"), "{err}");
    assert!(err.contains("lantern: rig \"rig b\" at 10.77.0.1:4445 (lab.example)"), "{err}");
    assert_eq!(read("any-run.out"), "hello from the lab\n", "{}", read("any-run.err"));
    assert_eq!(read("any-run.exit"), "run=0\n");
    assert!(read("any-run.err").contains("rig \"rig b\""), "{}", read("any-run.err"));
    // An instance name found in a configured domain works as --rig.
    assert!(read("by-name.json").contains(r#""sessions":[{"#), "{}", read("by-name.json"));
    // No rig of the file's architecture: the error says which there are.
    let arm = read("arm.out");
    assert!(
        arm.contains("(aarch64)") && arm.contains(&format!("the rigs found have: {}", std::env::consts::ARCH)),
        "{arm}"
    );
    assert_eq!(read("arm.exit"), "arm=3\n", "{arm}");
    assert!(read("arm-filter.out").contains("no rig found matches arch=aarch64"), "{}", read("arm-filter.out"));
    // A wrong key: a HELLO warning, and the daemon serves.
    let hello: serde_json::Value = serde_json::from_str(&read("bad-hello.json"))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", read("bad-hello.json"), logs()));
    let warnings = hello["warnings"].to_string();
    assert!(warnings.contains("not registered in DNS-SD") && warnings.contains("BADSIG"), "{hello}");
    assert_eq!(hello["dns_sd"]["registered"], false);
    assert_eq!(hello["load"]["sessions"], 0);
    // A key file others can read: refused at start.
    assert_eq!(read("open.exit"), "open=1\n");
    assert!(read("open.log").contains("readable by group or others"), "{}", read("open.log"));
    // SIGTERM: rig a's records are gone from the zone (checked with dig) and from browsing.
    assert_eq!(read("a.exit"), "a=0\n");
    let after = read("dig-after.txt");
    assert!(!after.contains("rig\\032a.") && after.contains("rig\\032b."), "{after}");
    assert_eq!(read("dig-host-after.txt"), "", "the host record goes too");
    let v: serde_json::Value = serde_json::from_str(&read("discover-after.json")).unwrap();
    let names: Vec<&str> = v["rigs"].as_array().unwrap().iter().map(|r| r["instance"].as_str().unwrap()).collect();
    assert_eq!(names, ["locked", "rig b", "rig b (2)"]);
    assert!(read("a.log").contains("withdrew \"rig a\""), "{}", read("a.log"));
    if std::env::var_os("KEEP_LAB").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
