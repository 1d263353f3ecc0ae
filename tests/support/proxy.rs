//! Starts the real `unpoll` binary on free ports with a test's configuration.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// A free port below the kernel's ephemeral range (32768 and up), where the test upstreams
/// (bound to port 0) never land, so only another proxy picking the same random port could
/// take it first; `wait_ready` then notices and the start is retried.
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Proxy {
    /// Starts unpoll with `body` (upstreams and routes; `{upstream}` is replaced by
    /// `upstream`) and `server_extra` lines added under `server:`.
    pub async fn start(upstream: SocketAddr, body: &str) -> Proxy {
        Proxy::start_with(upstream, "", body).await
    }

    /// Starts unpoll with a typed [`super::Setup`].
    pub async fn launch(upstream: SocketAddr, setup: &super::Setup) -> Proxy {
        Proxy::start_with(upstream, &setup.server_extra(), &setup.body()).await
    }

    pub async fn start_with(upstream: SocketAddr, server_extra: &str, body: &str) -> Proxy {
        Proxy::start_args(upstream, server_extra, body, &[]).await
    }

    /// Like [`Proxy::start_with`], with more arguments after `run -c FILE`.
    pub async fn start_args(upstream: SocketAddr, server_extra: &str, body: &str, args: &[&str]) -> Proxy {
        Proxy::start_full(upstream, server_extra, body, args, None, &[]).await
    }

    /// Like [`Proxy::start_with`], in a process whose open-files limit is `limit`.
    pub async fn start_with_open_files(upstream: SocketAddr, server_extra: &str, body: &str, limit: u32) -> Proxy {
        Proxy::start_full(upstream, server_extra, body, &[], Some(limit), &[]).await
    }

    /// Like [`Proxy::start_with`], with more environment variables.
    pub async fn start_with_env(upstream: SocketAddr, server_extra: &str, body: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_full(upstream, server_extra, body, &[], None, env).await
    }

    /// Like [`Proxy::start`], reading its file as a Kubernetes ConfigMap volume holds it:
    /// `unpoll.yaml` → `..data/unpoll.yaml`, `..data` → `..v1` (see [`Proxy::swap_configmap`]).
    pub async fn start_configmap(upstream: SocketAddr, body: &str) -> Proxy {
        Proxy::start_full(upstream, "", body, &["--configmap-layout"], None, &[]).await
    }

    /// Updates the configuration as the kubelet updates a ConfigMap volume: the new file in a
    /// new directory, `..data` swapped to it in one rename, the old directory removed.
    pub fn swap_configmap(&self, upstream: SocketAddr, body: &str, version: u32) {
        let dir = self.dir.path();
        let fresh = dir.join(format!("..v{version}"));
        std::fs::create_dir(&fresh).unwrap();
        std::fs::write(fresh.join("unpoll.yaml"), config_text(self.addr, self.admin, upstream, "", body)).unwrap();
        let _ = std::fs::remove_file(dir.join("..data_tmp"));
        std::os::unix::fs::symlink(format!("..v{version}"), dir.join("..data_tmp")).unwrap();
        let old = std::fs::read_link(dir.join("..data")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }

    async fn start_full(
        upstream: SocketAddr,
        server_extra: &str,
        body: &str,
        args: &[&str],
        open_files: Option<u32>,
        env: &[(&str, &str)],
    ) -> Proxy {
        // Ports are picked by binding port 0; if another process takes one first, unpoll
        // exits and we try again with new ports.
        for _ in 0..5 {
            let port = free_port();
            // Two different ports: unpoll refuses an admin address that is also a listen one.
            let admin_port = std::iter::repeat_with(free_port).find(|&p| p != port).unwrap();
            let (addr, admin): (SocketAddr, SocketAddr) =
                (format!("127.0.0.1:{port}").parse().unwrap(), format!("127.0.0.1:{admin_port}").parse().unwrap());
            let config = config_text(addr, admin, upstream, server_extra, body);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("unpoll.yaml");
            // `--configmap-layout` is the launcher's, not unpoll's: it lays the file out as a
            // ConfigMap volume does.
            let configmap = args.contains(&"--configmap-layout");
            let args: Vec<&str> = args.iter().copied().filter(|a| *a != "--configmap-layout").collect();
            if configmap {
                std::fs::create_dir(dir.path().join("..v1")).unwrap();
                std::fs::write(dir.path().join("..v1/unpoll.yaml"), config).unwrap();
                std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
                std::os::unix::fs::symlink("..data/unpoll.yaml", &path).unwrap();
            } else {
                std::fs::write(&path, config).unwrap();
            }
            let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
            let child = unpoll_command(open_files)
                .envs(env.iter().copied())
                .args(["--log-level", "info", "run", "-c"])
                .arg(&path)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start unpoll");
            let mut proxy = Proxy { addr, admin, child, dir };
            if proxy.wait_ready().await {
                return proxy;
            }
            eprintln!("unpoll did not start; retrying with other ports:\n{}", proxy.log());
            let _ = proxy.child.kill();
        }
        panic!("unpoll did not start");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut settled = false;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            // Ours, not another process's that holds the same port (pingora keeps retrying a
            // port in use instead of exiting).
            let pid = self.child.id().to_string();
            let healthy = super::http_get(self.admin, "/healthz")
                .await
                .is_some_and(|r| r.status == 200 && r.header("x-unpoll-pid") == Some(pid.as_str()));
            if healthy && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                // Pingora logs "is in use" while it retries a taken port: the listener that
                // answered is someone else's. Look twice, a little apart.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if self.log().contains("is in use") {
                    return false;
                }
                if settled {
                    return true;
                }
                settled = true;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("unpoll.yaml")
    }

    /// Rewrites the configuration file (same listeners) in one write.
    pub fn write_config(&self, upstream: SocketAddr, server_extra: &str, body: &str) {
        let text = config_text(self.addr, self.admin, upstream, server_extra, body);
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Sends a signal by name (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (up to `limit`) for the process to exit.
    pub async fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        let r = super::http_get(self.admin, "/metrics").await.expect("admin answers");
        String::from_utf8(r.body).unwrap()
    }

    /// The value of one metric series, matched by name and every given label. A series the
    /// proxy does not report is not 0: the test fails, printing the series of that name it
    /// saw (so a renamed metric or label cannot pass a `== 0` check).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        match super::metric_value(&text, name, labels) {
            Some(v) => v,
            None => panic!("{}", super::absent(&text, name, labels)),
        }
    }

    /// Like [`Proxy::metric`], for a series that may rightly be absent.
    pub async fn metric_if_present(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        super::metric_value(&self.metrics().await, name, labels)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- unpoll log ---\n{}", self.log());
        }
    }
}

/// The `unpoll` binary, run with an open-files limit of `open_files` when given (through the
/// shell's `ulimit`, which lowers both the soft and the hard limit).
pub fn unpoll_command(open_files: Option<u32>) -> Command {
    match open_files {
        None => Command::new(env!("CARGO_BIN_EXE_unpoll")),
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_unpoll")]);
            c
        }
    }
}

/// A whole configuration file: the test's listeners, then `server_extra` lines and `body`.
pub fn config_text(
    addr: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    server_extra: &str,
    body: &str,
) -> String {
    format!(
        "server:\n  listen: [\"{addr}\"]\n  admin: \"{admin}\"\n  threads: 2\n{server_extra}\n{}",
        body.replace("{upstream}", &upstream.to_string())
    )
}
