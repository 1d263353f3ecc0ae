//! What the README's set-up commands install, found by running them with the system's
//! installers and cargo replaced by recorders (on a PATH that holds nothing else): the demo's
//! script installs cmake, when it is missing, and nothing else.

use std::path::Path;
use std::process::Command;

/// Writes an executable shell script `name` into `dir`.
fn tool(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
}

#[test]
fn the_demo_script_installs_cmake_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let record = format!("echo \"$(/usr/bin/basename \"$0\") $*\" >> '{}'", log.display());
    // What the script may call: recorded, or the real thing where it only reads.
    for name in ["apt-get", "sudo", "cargo", "npm", "pip", "pip3", "python3", "curl"] {
        tool(dir.path(), name, &record);
    }
    tool(dir.path(), "id", "echo 0"); // as root: no sudo
    tool(dir.path(), "dirname", "exec /usr/bin/dirname \"$@\"");
    tool(dir.path(), "bash", "exec /bin/bash \"$@\"");
    let root = env!("CARGO_MANIFEST_DIR");
    // No cmake on this PATH: the script must install it.
    let out = Command::new("/bin/bash")
        .arg(Path::new(root).join("scripts/demo.sh"))
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0], "apt-get update -qq");
    assert_eq!(calls[1], "apt-get install -y -qq cmake", "cmake and nothing else: {calls:#?}");
    assert!(calls[2].starts_with("cargo run --manifest-path") && calls[2].ends_with("--release -- demo"), "{calls:#?}");
}
