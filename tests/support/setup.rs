//! A test's configuration, typed, instead of YAML in `format!` strings:
//!
//! ```ignore
//! let setup = Setup::stream("/doc/{id}").every("100ms").with("history", 2).upstream("timeout", "1s");
//! let proxy = Proxy::launch(up.addr, &setup).await;
//! ```
//!
//! One upstream, `app`, on the test's upstream server; routes in the order they are added.
//! The file is written as YAML whose values are JSON (YAML's flow style), so a value is any
//! `serde_json::Value`.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct Setup {
    server: Map<String, Value>,
    cluster: Map<String, Value>,
    upstream: Map<String, Value>,
    routes: Vec<Value>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

impl Setup {
    /// The upstream `app` and no route yet.
    pub fn new() -> Setup {
        let mut upstream = Map::new();
        upstream.insert("servers".into(), json!(["{upstream}"]));
        Setup { server: Map::new(), cluster: Map::new(), upstream, routes: Vec::new() }
    }

    /// A setup whose first route is a stream route on `pattern`.
    pub fn stream(pattern: &str) -> Setup {
        Setup::new().stream_route(pattern)
    }

    /// Adds a stream route (default settings) on `pattern`.
    pub fn stream_route(mut self, pattern: &str) -> Setup {
        self.routes.push(json!({"match": pattern, "upstream": "app", "stream": {}}));
        self
    }

    /// Adds a plain (proxied) route on `pattern`.
    pub fn route(mut self, pattern: &str) -> Setup {
        self.routes.push(json!({"match": pattern, "upstream": "app"}));
        self
    }

    /// Sets `key` of the last route itself (beside `match`, `upstream`, `stream`).
    pub fn on_route(mut self, key: &str, value: impl Into<Value>) -> Setup {
        let route = self.routes.last_mut().expect("a route to set");
        route[key] = value.into();
        self
    }

    /// Sets `key` of the last route's `stream:`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Setup {
        let route = self.routes.last_mut().expect("a route to set");
        let stream = route.get_mut("stream").expect("the last route is a stream route");
        stream[key] = value.into();
        self
    }

    /// Sets `stream.interval` of the last route.
    pub fn every(self, interval: &str) -> Setup {
        self.with("interval", interval)
    }

    /// Sets `key` of the upstream `app`.
    pub fn upstream(mut self, key: &str, value: impl Into<Value>) -> Setup {
        self.upstream.insert(key.into(), value.into());
        self
    }

    /// Sets `key` under `server:` (beside the test's listeners).
    pub fn server(mut self, key: &str, value: impl Into<Value>) -> Setup {
        self.server.insert(key.into(), value.into());
        self
    }

    /// Sets `key` under `cluster:` (which is written only if some key is set).
    pub fn cluster(mut self, key: &str, value: impl Into<Value>) -> Setup {
        self.cluster.insert(key.into(), value.into());
        self
    }

    /// The lines added under `server:`.
    pub fn server_extra(&self) -> String {
        self.server.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect()
    }

    /// Upstreams and routes (`{upstream}` stands for the upstream's address).
    pub fn body(&self) -> String {
        let upstreams = json!({"app": self.upstream});
        let mut body = format!("upstreams: {upstreams}\nroutes: {}\n", Value::Array(self.routes.clone()));
        if !self.cluster.is_empty() {
            body += &format!("cluster: {}\n", Value::Object(self.cluster.clone()));
        }
        body
    }
}
