//! `unpoll demo`: a sample legacy REST API whose data changes on its own, unpoll in front of
//! it, and a page that shows the streams live.

mod api;

use crate::config::{parse_config, Config, ConfigErrors, Problem};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::net::ToSocketAddrs;

/// A TLS listener for the demo (`--tls-listen`, `--tls-cert`, `--tls-key`).
pub struct Tls {
    pub listen: String,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The demo's configuration: `config/demo.yaml` with the addresses given on the command line,
/// and a TLS listener if one is asked for (its files read and checked as any configuration's).
#[allow(clippy::disallowed_methods)] // A lookup once, at start, before anything is served.
pub fn config(listen: &str, admin: &str, api: &str, tls: Option<&Tls>) -> Result<Config, ConfigErrors> {
    let mut text = include_str!("../../config/demo.yaml").to_string();
    if let Some(tls) = tls {
        // Relative to where the demo was started.
        let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let listener =
            serde_json::json!([{"listen": tls.listen, "cert": absolute(&tls.cert), "key": absolute(&tls.key)}]);
        text = text.replacen("server:\n", &format!("server:\n  tls: {listener}\n"), 1);
    }
    let mut config = parse_config(&text)?;
    let api_addr = api.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
        ConfigErrors(vec![Problem { path: "--api".into(), line: None, message: format!("`{api}` is not host:port") }])
    })?;
    if crate::config::same_socket(listen, admin) {
        let message = format!("`{admin}` is also the --listen address");
        return Err(ConfigErrors(vec![Problem { path: "--admin".into(), line: None, message }]));
    }
    config.server.listen = vec![listen.to_string()];
    config.server.admin = Some(admin.to_string());
    for upstream in config.upstreams.values_mut() {
        upstream.servers = vec![crate::config::ServerAddr { name: api.to_string(), addr: api_addr, weight: 1 }];
    }
    Ok(config)
}

/// Adds the sample legacy API, listening on `addr`, to the server.
pub fn add_api(server: &mut Server, addr: &str) {
    let mut service = Service::new("demo legacy API".to_string(), api::LegacyApi::new());
    service.add_tcp(addr);
    server.add_service(service);
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_config_is_valid_and_overridable() {
        let c = super::config("127.0.0.1:18080", "127.0.0.1:19090", "127.0.0.1:13001", None).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:18080"]);
        assert_eq!(c.upstreams["legacy"].servers[0].addr.port(), 13001);
        assert!(c.routes.iter().filter(|r| r.stream.is_some()).count() >= 3);
        let same = super::config("127.0.0.1:18080", "127.0.0.1:18080", "127.0.0.1:13001", None).unwrap_err();
        assert_eq!(same.0[0].path, "--admin");
    }
}
