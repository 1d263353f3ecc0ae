//! A real `redis-server` (Debian's, installed by `scripts/deps.sh`) on a free port of
//! 127.0.0.1, with no persistence: it can be killed and started again, empty, on the same port.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// `requirepass`, if it has one.
    password: Option<String>,
    /// Holds the nodes' `cluster.secret_file`.
    dir: tempfile::TempDir,
}

/// The secret of the tests' clusters.
pub const CLUSTER_SECRET: &str = "7e57c1u57e75ec2e7f0rn0de5a11a9ree0n17bu7n0b0dye15e";

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with_password(None)
    }

    /// A server that answers only clients that give `password`.
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().unwrap();
        let mut server = RedisServer { addr, child: None, password: password.map(str::to_string), dir };
        server.restart();
        server
    }

    /// A `cluster.secret_file` holding [`CLUSTER_SECRET`], for the nodes of this server.
    pub fn secret_file(&self) -> String {
        let path = self.dir.path().join("cluster.secret");
        std::fs::write(&path, format!("{CLUSTER_SECRET}\n")).unwrap();
        path.display().to_string()
    }

    /// `redis://` for this server, without its password.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts it (again), and waits until it answers.
    pub fn restart(&mut self) {
        let mut args = vec!["--port".to_string(), self.addr.port().to_string()];
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        if let Some(password) = &self.password {
            args.extend(["--requirepass".to_string(), password.clone()]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.connection().is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on {}", self.addr);
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn connection(&self) -> Option<redis::Connection> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@{}/0", self.addr),
            None => self.url(),
        };
        let client = redis::Client::open(url).ok()?;
        client.get_connection_with_timeout(Duration::from_secs(1)).ok()
    }

    /// Every key, and every value each holds (strings, hashes, sorted sets, streams), as text.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut c = self.connection().expect("redis answers");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
                let value: redis::Value = match kind.as_str() {
                    "string" => redis::cmd("GET").arg(&key).query(&mut c).unwrap(),
                    "hash" => redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap(),
                    "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query(&mut c).unwrap(),
                    "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut c).unwrap(),
                    other => panic!("a key of type {other}"),
                };
                (key, text(&value))
            })
            .collect()
    }
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        redis::Value::Map(items) => {
            items.iter().map(|(k, v)| format!("{} {}", text(k), text(v))).collect::<Vec<_>>().join(" ")
        }
        other => format!("{other:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
