//! The command line: `check` lists every problem; `--help` explains each command.

use std::process::Command;

fn unpoll(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unpoll")).args(args).output().expect("run unpoll")
}

#[test]
fn check_lists_every_problem_with_its_key_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "upstreams:\n  app:\n    servers: []\nroutes:\n  - match: orders\n    upstream: missing\n    stream:\n      interval: soon\n      colour: red\n",
    )
    .unwrap();
    let out = unpoll(&["check", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    for expected in [
        "upstreams.app.servers: the server list is empty",
        "routes[0].match:",
        "routes[0].stream.interval:",
        "routes[0].stream.colour: unknown key",
        // Each with the line of its key.
        "upstreams.app.servers: the server list is empty (line 3)",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(
        err.lines().any(|l| l.contains("routes[0].stream.colour: unknown key") && l.ends_with("(line 9)")),
        "{err}"
    );
}

#[test]
fn check_reports_syntax_errors_with_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "routes:\n  - match: /x\n   upstream: [\n").unwrap();
    let out = unpoll(&["check", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("(line "));
}

#[test]
fn shipped_configurations_are_valid() {
    for file in ["config/example.yaml", "config/demo.yaml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = unpoll(&["check", "-c", &path]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8(out.stdout).unwrap().contains(": ok"));
    }
}

#[test]
fn help_explains_each_command() {
    let out = unpoll(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["run", "check", "demo"] {
        assert!(text.contains(cmd), "{text}");
    }
    let run = String::from_utf8(unpoll(&["run", "--help"]).stdout).unwrap();
    assert!(run.contains("--config"));
}

#[test]
fn run_refuses_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "routes: []\n").unwrap();
    let out = unpoll(&["run", "-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("upstreams"));
}

#[test]
fn check_refuses_more_connections_than_the_open_files_limit_allows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.yaml");
    let routes = "upstreams:\n  app:\n    servers: ['127.0.0.1:1']\nroutes:\n  - match: /*\n    upstream: app\n";
    std::fs::write(&path, format!("server:\n  max_connections: 5000\n{routes}")).unwrap();
    let check = |path: &std::path::Path| {
        let out = Command::new("sh")
            .args(["-c", "ulimit -n 1000 && exec \"$0\" check -c \"$1\"", env!("CARGO_BIN_EXE_unpoll")])
            .arg(path)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stderr).unwrap())
    };
    let (ok, err) = check(&path);
    assert!(!ok);
    assert!(err.contains("server.max_connections: 5000 is more than this process can hold open"), "{err}");
    assert!(err.contains("open-files limit is 1000"), "{err}");
    std::fs::write(&path, format!("server:\n  max_connections: 600\n{routes}")).unwrap();
    assert!(check(&path).0, "600 fits in 1000");
}

/// Runs unpoll with `args` and waits at most 10 s for it to exit: its status and stderr, or
/// `None` (after killing it) if it kept running.
fn run_until_exit(args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unpoll"))
        .args(args)
        // As many Rust users have it set: a start-up error stays one line all the same.
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
            return Some((status, text));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_port_in_use_is_a_clear_error_not_a_healthy_looking_zombie() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let routes = "upstreams:\n  app:\n    servers: ['127.0.0.1:1']\nroutes:\n  - match: /*\n    upstream: app\n";
    for (listen, admin) in [(taken_addr.clone(), free()), (free(), taken_addr.clone())] {
        let path = dir.path().join("unpoll.yaml");
        std::fs::write(&path, format!("server:\n  listen: ['{listen}']\n  admin: '{admin}'\n{routes}")).unwrap();
        let (status, err) =
            run_until_exit(&["run", "-c", path.to_str().unwrap()]).expect("unpoll kept running with a port in use");
        assert!(!status.success(), "{err}");
        assert!(err.contains("cannot listen on") && err.contains(&taken_addr), "{err}");
        assert!(!err.contains("serving on"), "it announced serving: {err}");
        // One line, the cause said once, no backtrace.
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines.last().copied().unwrap_or_default();
        assert!(last.starts_with("unpoll: cannot listen on"), "{err}");
        assert_eq!(err.matches("cannot listen on").count(), 1, "{err}");
        assert!(!err.contains("Caused by") && !err.contains("backtrace"), "{err}");
    }
    // The demo prints its URLs only once it holds them.
    for flag in ["--listen", "--admin", "--api"] {
        let (a, b, c) = (free(), free(), free());
        let mut args = vec!["demo", "--listen", &a, "--admin", &b, "--api", &c];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = &taken_addr;
        let (status, out) = run_until_exit(&args).expect("the demo kept running with a port in use");
        assert!(!status.success() && out.contains(&taken_addr), "{flag}: {out}");
        assert!(!out.contains("open        http://"), "{flag}: the demo printed its URLs: {out}");
    }
}

#[test]
fn nginx_and_pingora_habits_work_at_the_top_level() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "upstreams:\n  app:\n    servers: ['127.0.0.1:1']\nroutes:\n  - match: /*\n    upstream: app\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "upstreams: {}\n").unwrap();
    let out = unpoll(&["-t", "-c", good.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": ok"), "{out:?}");
    assert!(!unpoll(&["-t", "-c", bad.to_str().unwrap()]).status.success());
    let version = String::from_utf8(unpoll(&["--version"]).stdout).unwrap();
    let commit = version.split("(commit ").nth(1).and_then(|c| c.strip_suffix(")\n")).unwrap_or("");
    assert!(version.starts_with(&format!("unpoll {}", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
}
