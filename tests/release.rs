//! `scripts/release.sh` as a release runs it, packaging the suite's own build (`PROFILE=dev
//! NO_BUILD=1`: the same steps on the binary at hand), and its artifacts taken apart: the Debian
//! package's files, fields and conffiles, its binary's `--version`, `check` of the packaged
//! configuration and `systemd-analyze verify` of the packaged unit; the tarball's files; the
//! checksums. (`docs/releasing.md` is the procedure.)

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_release_artifacts_hold_the_binary_the_configuration_and_the_unit() {
    let out = tempfile::tempdir().unwrap();
    run(Command::new(format!("{ROOT}/scripts/release.sh"))
        .env("PROFILE", "dev")
        .env("NO_BUILD", "1")
        .env("OUT", out.path()));
    let arch = run(Command::new("dpkg").arg("--print-architecture")).trim().to_string();
    let deb = out.path().join(format!("unpoll_{VERSION}-1_{arch}.deb"));
    let tarball = format!("unpoll-{VERSION}-{}-linux.tar.gz", std::env::consts::ARCH);
    assert!(
        deb.exists() && out.path().join(&tarball).exists(),
        "{:?}",
        std::fs::read_dir(out.path()).unwrap().collect::<Vec<_>>()
    );

    // The checksums cover both.
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 2, "{sums}");
    run(Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(out.path()));

    // The package: its fields, its conffile, and the files it installs.
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(&deb).args(["Package", "Version", "Depends"]));
    assert!(fields.contains("Package: unpoll") && fields.contains(&format!("Version: {VERSION}-1")), "{fields}");
    assert!(fields.contains("adduser"), "{fields}");
    let conffiles = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/unpoll/unpoll.yaml");
    let postinst = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(
        postinst.contains("adduser --system") && postinst.contains("chown root:unpoll /etc/unpoll/unpoll.yaml"),
        "{postinst}"
    );
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root.path()));
    let r = root.path();
    for file in [
        "usr/bin/unpoll",
        "etc/unpoll/unpoll.yaml",
        "lib/systemd/system/unpoll.service",
        "usr/share/doc/unpoll/copyright",
        "usr/share/doc/unpoll/CHANGELOG.md",
    ] {
        assert!(r.join(file).is_file(), "{file} is missing from the package");
    }
    let binary = r.join("usr/bin/unpoll");
    let version = run(Command::new(&binary).arg("--version"));
    assert!(version.contains(VERSION) && version.contains("(commit "), "{version}");
    let config = r.join("etc/unpoll/unpoll.yaml");
    let checked = run(Command::new(&binary).arg("check").arg("-c").arg(&config));
    assert!(checked.contains(": ok ("), "{checked}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("  upgrade_sock: /run/unpoll/upgrade.sock\n"), "the socket in the unit's RuntimeDirectory");

    // The packaged unit is the repository's, with /usr/bin and the package's user, and
    // systemd accepts it (pointed at the extracted binary, which is not installed here).
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/unpoll.service")).unwrap();
    assert_eq!(unit, std::fs::read_to_string(format!("{ROOT}/deploy/debian/unpoll.service")).unwrap());
    let verify_dir = tempfile::tempdir().unwrap();
    let here = verify_dir.path().join("unpoll.service");
    std::fs::write(&here, unit.replace("/usr/bin/unpoll", binary.to_str().unwrap())).unwrap();
    run(Command::new("systemd-analyze").arg("verify").arg(&here));

    // The tarball: the binary, the licence, the README, the changelog, a configuration and the unit.
    let listing = run(Command::new("tar").arg("-tzf").arg(out.path().join(&tarball)));
    let name = tarball.trim_end_matches(".tar.gz");
    for file in ["unpoll", "LICENSE", "README.md", "CHANGELOG.md", "unpoll.yaml", "unpoll.service"] {
        assert!(listing.lines().any(|l| l == format!("{name}/{file}")), "{file} is missing: {listing}");
    }
}

#[test]
fn the_packaged_unit_is_the_repository_unit_with_the_package_user_and_paths() {
    let plain = std::fs::read_to_string(Path::new(ROOT).join("deploy/unpoll.service")).unwrap();
    let packaged = std::fs::read_to_string(Path::new(ROOT).join("deploy/debian/unpoll.service")).unwrap();
    let body = |unit: &str| unit.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    let expected = body(&plain)
        .replace("/usr/local/bin/unpoll", "/usr/bin/unpoll")
        .replace("DynamicUser=yes", "User=unpoll\nGroup=unpoll");
    assert_eq!(body(&packaged), expected, "the units differ beyond the binary's path and the user");
}

#[test]
fn the_changelog_and_the_clients_name_this_version() {
    let changelog = std::fs::read_to_string(Path::new(ROOT).join("CHANGELOG.md")).unwrap();
    let first = changelog.lines().find(|l| l.starts_with("## [") && !l.starts_with("## [Unreleased]")).unwrap();
    assert!(
        first.starts_with(&format!("## [{VERSION}] - ")),
        "the newest release in CHANGELOG.md is {first}, Cargo.toml says {VERSION}"
    );
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join("clients/js/package.json")).unwrap())
            .unwrap();
    let js_version = js["version"].as_str().unwrap();
    let js_changelog = std::fs::read_to_string(Path::new(ROOT).join("clients/js/CHANGELOG.md")).unwrap();
    assert!(
        js_changelog.contains(&format!("## [{js_version}] - ")),
        "clients/js/CHANGELOG.md has no entry for {js_version}"
    );
}
