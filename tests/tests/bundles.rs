//! Bundles (SPEC §5) against the real daemon: a program that loads a shared library
//! shipped in its bundle and reads its data files; hostile bundles refused with
//! `invalid_bundle` and a reason, leaving nothing behind; isolation between bundles.
//! Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::tarball::{entry, gz};
use tests::{c_program, programs, require_root, Client, Daemon};

const APP: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <unistd.h>
int secret(int);
int main(int argc, char **argv) {
    char cwd[256]; getcwd(cwd, sizeof cwd);
    FILE *f = fopen("data/greeting.txt", "r"); char line[64] = "(none)\n";
    if (f) { fgets(line, sizeof line, f); fclose(f); }
    printf("cwd=%s secret=%d greeting=%s", cwd, secret(7), line);
    printf("write-own-bundle=%s\n", fopen("data/new", "w") ? "YES" : "no");
    int others = 0; DIR *d = opendir("/bundles"); struct dirent *e;
    while (d && (e = readdir(d))) if (e->d_name[0] != '.') others++;
    printf("visible-bundles=%d\n", others);
    return argc > 1 ? 9 : 3;
}"#;

/// Builds the bundle directory: bin/app linked against lib/libsecret.so with an
/// `$ORIGIN` rpath, and data/greeting.txt. Returns the .tar.gz bytes.
fn app_bundle(dir: &Path) -> Vec<u8> {
    let b = dir.join("b");
    for d in ["bin", "lib", "data"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    std::fs::write(dir.join("lib.c"), "int secret(int x) { return x * 6; }\n").unwrap();
    std::fs::write(dir.join("app.c"), APP).unwrap();
    let cc = |args: &[&str]| assert!(Command::new("cc").args(args).current_dir(dir).status().unwrap().success());
    cc(&["-shared", "-fPIC", "-o", "b/lib/libsecret.so", "lib.c"]);
    cc(&["-o", "b/bin/app", "app.c", "-Lb/lib", "-lsecret", "-Wl,-rpath,$ORIGIN/../lib"]);
    std::fs::write(b.join("data/greeting.txt"), "hello from the bundle\n").unwrap();
    let tgz = dir.join("b.tar.gz");
    assert!(Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(&b).arg(".").status().unwrap().success());
    std::fs::read(tgz).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dl-bundles-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn upload_bundle(c: &mut Client, tgz: &[u8], exec: &str) -> serde_json::Value {
    c.send_raw(format!("UPLOAD {} {exec}\n", tgz.len()).as_bytes());
    c.send_raw(tgz);
    c.read()
}

/// Entries of the frontend's bundle store (root mode: a tmpfs in its mount namespace).
fn store_entries(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/root/tmp", d.pid()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn root_bundle_runs_with_its_own_library_and_data() {
    if !require_root("root_bundle_runs_with_its_own_library_and_data") {
        return;
    }
    let dir = scratch("app");
    let tgz = app_bundle(&dir);
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let up = upload_bundle(&mut c, &tgz, "bin/app");
    assert_eq!(up["ok"], true, "{up}");
    assert_eq!(up["kind"], "bundle");
    assert_eq!(up["elf"]["static"], false);
    let id = up["id"].as_str().unwrap().to_string();
    // A second bundle, to check they cannot see each other.
    let other = upload_bundle(&mut c, &tgz, "bin/app");
    assert_eq!(other["ok"], true, "{other}");
    assert_eq!(store_entries(&d).len(), 2);

    c.cmd(&format!("START {id}"));
    let s = c.wait_state(&id, "STOPPED", Duration::from_secs(10));
    assert_eq!(s["exit"]["code"], 3, "{s}");
    assert_eq!(s["kind"], "bundle");
    assert_eq!(s["exec_path"], "bin/app");
    let out = c.cmd(&format!("LOGS {id}"))["data"].as_str().unwrap().to_string();
    assert!(out.contains("cwd=/bundle "), "{out}");
    assert!(out.contains("secret=42"), "library from the bundle not used: {out}");
    assert!(out.contains("greeting=hello from the bundle"), "{out}");
    assert!(out.contains("write-own-bundle=no"), "the bundle must be read-only to its session: {out}");
    assert!(out.contains("visible-bundles=0"), "a session sees other bundles: {out}");
    // Arguments reach a bundle program too.
    c.cmd(&format!(r#"START {id} {{"args":["x"]}}"#));
    assert_eq!(c.wait_state(&id, "STOPPED", Duration::from_secs(10))["exit"]["code"], 9);
    // DELETE removes the tree.
    assert_eq!(c.cmd(&format!("DELETE {id}"))["deleted"], true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(store_entries(&d), vec![other["id"].as_str().unwrap().to_string()]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn root_hostile_bundles_are_refused_and_leave_nothing() {
    if !require_root("root_hostile_bundles_are_refused_and_leave_nothing") {
        return;
    }
    let prog = c_program("hello", programs::HELLO, false);
    let ok = entry(b"prog", b'0', 0o755, &prog, b"");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("dotdot", gz(&[entry(b"../../evil", b'0', 0o644, b"x", b""), ok.clone()]), "prog", ".."),
        ("absolute", gz(&[entry(b"/etc/evil", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "absolute"),
        (
            "write through symlink",
            gz(&[
                entry(b"d/", b'5', 0o755, b"", b""),
                entry(b"l", b'2', 0o777, b"", b"d"),
                entry(b"l/f", b'0', 0o644, b"x", b""),
                ok.clone(),
            ]),
            "prog",
            "symlink",
        ),
        ("symlink outside", gz(&[entry(b"l", b'2', 0o777, b"", b"../../../etc"), ok.clone()]), "prog", "outside"),
        ("hard link", gz(&[entry(b"h", b'1', 0o644, b"", b"/etc/passwd"), ok.clone()]), "prog", "hard link"),
        ("device", gz(&[entry(b"null", b'3', 0o666, b"", b""), ok.clone()]), "prog", "device"),
        ("fifo", gz(&[entry(b"p", b'6', 0o644, b"", b""), ok.clone()]), "prog", "fifo"),
        ("setuid", gz(&[entry(b"prog", b'0', 0o4755, &prog, b"")]), "prog", "setuid"),
        ("newline", gz(&[entry(b"a\nb", b'0', 0o644, b"x", b""), ok.clone()]), "prog", "control"),
        ("not gzip", b"this is not gzip".to_vec(), "prog", "not gzip"),
        ("truncated", gz(std::slice::from_ref(&ok))[..200].to_vec(), "prog", "truncated"),
        ("missing exec", gz(std::slice::from_ref(&ok)), "nope", "not in the bundle"),
        ("exec is a dir", gz(&[entry(b"d/", b'5', 0o755, b"", b""), ok.clone()]), "d", "directory"),
        ("exec is a dangling symlink", gz(&[entry(b"l", b'2', 0o777, b"", b"nothing"), ok.clone()]), "l", "dangling"),
        ("exec neither ELF nor script", gz(&[entry(b"s", b'0', 0o755, b"echo hi\n", b"")]), "s", "not an ELF"),
        ("script, relative interpreter", gz(&[entry(b"s", b'0', 0o755, b"#!sh\n", b"")]), "s", "absolute"),
        ("script, interpreter not in view", gz(&[entry(b"s", b'0', 0o755, b"#!/opt/py\n", b"")]), "s", "outside"),
    ];
    let budget = 64u64 << 20;
    let d = Daemon::start(&[
        "--max-total-size",
        &budget.to_string(),
        "--max-upload",
        "16M",
        "--max-bundle-entries",
        "50",
        "--max-bundle-depth",
        "4",
    ]);
    let mut c = d.client();
    for (what, tgz, exec, want) in &cases {
        let r = upload_bundle(&mut c, tgz, exec);
        assert_eq!(r["error"], "invalid_bundle", "{what}: {r}");
        assert!(r["message"].as_str().unwrap().contains(want), "{what}: {r} does not say {want:?}");
    }
    // Bombs and limits: a small upload that extracts past the budget, too many entries,
    // too deep.
    let bomb = gz(&[entry(b"zeros", b'0', 0o644, &vec![0u8; 100 << 20], b""), ok.clone()]);
    assert!(bomb.len() < 1 << 20);
    let t = std::time::Instant::now();
    let r = upload_bundle(&mut c, &bomb, "prog");
    assert_eq!(r["error"], "invalid_bundle", "{r}");
    assert!(r["message"].as_str().unwrap().contains("more than"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "the bomb was not stopped quickly: {:?}", t.elapsed());
    let many: Vec<Vec<u8>> = (0..60).map(|i| entry(format!("f{i}").as_bytes(), b'0', 0o644, b"", b"")).collect();
    assert!(upload_bundle(&mut c, &gz(&many), "f0")["message"].as_str().unwrap().contains("entries"));
    let deep = gz(&[entry(b"a/b/c/d/e/f", b'0', 0o644, b"x", b""), ok.clone()]);
    assert!(upload_bundle(&mut c, &deep, "prog")["message"].as_str().unwrap().contains("deeper"));
    let r = c.cmd("UPLOAD 10 /abs/exec");
    assert_eq!(r["error"], "invalid_bundle");
    c.send_raw(&[0u8; 10]); // the refused bytes are skipped
                            // Nothing was left behind, and the whole budget is still there.
    assert!(c.cmd("LIST")["sessions"].as_array().unwrap().is_empty());
    assert!(store_entries(&d).is_empty(), "refused bundles left files: {:?}", store_entries(&d));
    let big = gz(&[entry(b"blob", b'0', 0o644, &vec![7u8; 60 << 20], b""), ok.clone()]);
    let r = upload_bundle(&mut c, &big, "prog");
    assert_eq!(r["ok"], true, "the budget was not given back: {r}");
    assert!(r["size"].as_u64().unwrap() > 60 << 20);
    // It counts against the budget: a second one does not fit.
    let r = upload_bundle(&mut c, &big, "prog");
    assert_eq!(r["error"], "invalid_bundle", "{r}");
    assert!(store_entries(&d).len() == 1);
}
