//! The demo's "legacy" REST API: plain JSON over GET, data that changes with time, and one
//! per-user endpoint that reads `Authorization`. It knows nothing of unpoll.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct LegacyApi {
    started: Instant,
    requests: AtomicU64,
    /// GETs of the departures board, which unpoll polls: the page compares them with what
    /// polling tabs would have made.
    board_requests: AtomicU64,
}

const DESTINATIONS: [&str; 8] =
    ["Amsterdam", "Berlin", "Copenhagen", "Dresden", "Edinburgh", "Florence", "Geneva", "Hamburg"];
const STATUSES: [&str; 4] = ["on time", "boarding", "delayed", "departed"];

impl LegacyApi {
    pub fn new() -> LegacyApi {
        LegacyApi { started: Instant::now(), requests: AtomicU64::new(0), board_requests: AtomicU64::new(0) }
    }

    /// Seconds since start: the clock every document is computed from.
    fn tick(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The trains on the board now: a new one joins every 4 s; six are shown.
    fn trains(&self) -> Vec<Value> {
        let t = self.tick();
        let first = t / 4;
        (first..first + 6)
            .map(|n| {
                let age = t.saturating_sub(n * 4);
                let delay = (n * 7 + t / 3) % 5 * ((n % 3 == 0) as u64);
                json!({
                    "id": n,
                    "train": format!("IC {}", 100 + n % 900),
                    "destination": DESTINATIONS[(n % 8) as usize],
                    "platform": 1 + n % 6,
                    "delay_min": delay,
                    "status": STATUSES[((age / 5) % 4) as usize],
                })
            })
            .collect()
    }

    /// The board as a list, in order of departure.
    fn departures(&self) -> Value {
        json!({"station": "Centraal", "departures": self.trains()})
    }

    /// The same trains keyed by their id: a shape RFC 7396 merge patches can change one train
    /// at a time (they replace arrays whole).
    fn platforms(&self) -> Value {
        let trains: serde_json::Map<String, Value> =
            self.trains().into_iter().map(|t| (t["train"].as_str().unwrap_or("").to_string(), t)).collect();
        json!({"station": "Centraal", "trains": trains})
    }

    fn notifications(&self, user: &str) -> Value {
        let t = self.tick();
        let unread = (t / 3) % 5;
        let items: Vec<Value> = (0..unread)
            .map(|i| json!({"id": format!("{user}-{}", t / 3 - i), "text": format!("Hello {user}, message {}", t / 3 - i)}))
            .collect();
        json!({"user": user, "unread": unread, "items": items})
    }

    fn order(&self, id: &str) -> Value {
        let stage = (self.tick() / 2) % 5;
        let states = ["received", "packed", "shipped", "out for delivery", "delivered"];
        json!({"id": id, "status": states[stage as usize], "updates": stage + 1, "eta_min": 40 - stage * 10})
    }
}

impl Default for LegacyApi {
    fn default() -> Self {
        LegacyApi::new()
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

fn json_reply(status: u16, v: Value) -> Response<Vec<u8>> {
    reply(status, "application/json", serde_json::to_vec(&v).expect("a Value always serialises"))
}

#[async_trait]
impl ServeHttp for LegacyApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let user = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|u| !u.is_empty() && u.len() <= 32 && u.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(str::to_string);
        match path.as_str() {
            "/" | "/index.html" => reply(200, "text/html; charset=utf-8", include_bytes!("page.html").to_vec()),
            "/favicon.ico" => reply(204, "image/x-icon", Vec::new()),
            // The project's JavaScript client, which the page uses.
            "/unpoll-client/index.js" => {
                reply(200, "text/javascript; charset=utf-8", include_bytes!("../../clients/js/index.js").to_vec())
            }
            "/unpoll-client/patch.js" => {
                reply(200, "text/javascript; charset=utf-8", include_bytes!("../../clients/js/patch.js").to_vec())
            }
            "/api/departures" => {
                self.board_requests.fetch_add(1, Ordering::Relaxed);
                json_reply(200, self.departures())
            }
            "/api/trains" => json_reply(200, self.platforms()),
            "/api/me/notifications" => match user {
                Some(user) => json_reply(200, self.notifications(&user)),
                None => json_reply(401, json!({"error": "send Authorization: Bearer <name>"})),
            },
            "/api/stats" => json_reply(
                200,
                json!({
                    "requests": n,
                    "departures_requests": self.board_requests.load(Ordering::Relaxed),
                    "uptime_s": self.tick(),
                }),
            ),
            p => match p.strip_prefix("/api/orders/") {
                Some(id) if !id.is_empty() && !id.contains('/') => json_reply(200, self.order(id)),
                _ => json_reply(404, json!({"error": "not found"})),
            },
        }
    }
}
