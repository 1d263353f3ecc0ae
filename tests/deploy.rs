//! What `deploy/` ships: the systemd unit is hardened, and the license is there.

use std::process::Command;

#[test]
fn the_systemd_unit_is_rated_ok_by_systemd_analyze() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/unpoll.service")])
        .output()
        .expect("systemd-analyze (./scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let overall = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let score: f64 =
        overall.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(score <= 2.0, "the unit is rated {overall}");
    let unit = include_str!("../deploy/unpoll.service");
    for line in [
        "Type=notify",
        "RuntimeDirectory=unpoll",
        "LimitNOFILE=",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} is missing from the unit");
    }
}

#[test]
fn the_license_the_manifest_names_is_there() {
    let license = include_str!("../LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(include_str!("../Cargo.toml").contains("license = \"Apache-2.0\""));
}
