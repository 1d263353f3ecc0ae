//! The Lua scripts every node runs against Redis (and [`refresh`], the typed call of the one
//! both a follower and a leader's keeper make): each one step, atomic on the server. A
//! topic's keys share one hash tag (`{<hash>}`), so every script touches one slot.
//!
//! Keys of a topic (see [`super::message::Keys`]):
//! - `lease`: the token of the node that polls the topic, expiring after `cluster.lease`;
//! - `nodes`: a sorted set of the nodes with the topic, each scored by when its interest
//!   expires (Redis's own clock, so nodes' clocks never matter);
//! - `state`: a hash of the current `epoch`, `version`, `doc` and the document's `tag`, and
//!   the `owner` token of whoever published last;
//! - `stream`: the history, one entry per version (id `<version>-1`), with its JSON Patch `j`
//!   and merge patch `m` where it had them and the patches' tag `t`, trimmed to the route's
//!   `history`;
//! - the channel (not a key): every event and error, as it is published.

use super::message::Keys;
use super::{Cluster, Down};
use redis::{Script, Value};
use std::sync::LazyLock;

/// Renews this node's interest and, when the lease is its own, the lease; takes the lease
/// when nobody holds it and `want_lead`. Returns `{leading, other nodes, epoch, version,
/// failover}`: failover is 1 when it took a lease whose last publisher never let go of it.
///
/// KEYS: lease, nodes, state, stream. ARGV: token, lease ms, node, want_lead, retain ms.
pub static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], lease)
local others = redis.call('ZCARD', KEYS[2]) - 1
local holder = redis.call('GET', KEYS[1])
local leading = 0
local failover = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], lease)
  leading = 1
elseif not holder and ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
  leading = 1
  local owner = redis.call('HGET', KEYS[3], 'owner')
  if owner and owner ~= ARGV[1] then failover = 1 end
end
if leading == 1 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
local st = redis.call('HMGET', KEYS[3], 'epoch', 'version')
return {leading, others, st[1] or '', st[2] or '0', failover}
"#,
    )
});

/// What a [`refresh`] found.
pub struct Refreshed {
    pub leading: bool,
    /// Other nodes have the topic too.
    pub others: bool,
    /// The stored epoch (empty: nothing stored) and version.
    pub epoch: String,
    pub version: u64,
    /// It took a lease whose last publisher never let go of it.
    pub failover: bool,
}

/// Runs [`REFRESH`] for a topic: renews `token`'s interest (and lease), taking the lease when
/// it is free and `want_lead`; the stored state outlives it by `retain` ms.
pub async fn refresh(
    cluster: &Cluster,
    keys: &Keys,
    token: &str,
    want_lead: bool,
    retain: u64,
) -> Result<Refreshed, Down> {
    let reply: Vec<Value> = cluster
        .run(
            "refresh",
            REFRESH
                .key(&keys.lease)
                .key(&keys.nodes)
                .key(&keys.state)
                .key(&keys.stream)
                .arg(token)
                .arg(cluster.settings.lease.as_millis() as u64)
                .arg(&cluster.settings.node)
                .arg(if want_lead { "1" } else { "0" })
                .arg(retain),
        )
        .await?;
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => *n,
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        _ => 0,
    };
    Ok(Refreshed {
        leading: int(reply.first()) == 1,
        others: int(reply.get(1)) > 0,
        epoch: text(reply.get(2)),
        version: int(reply.get(3)).max(0) as u64,
        failover: int(reply.get(4)) == 1,
    })
}

/// A script reply's value as text (empty for nil).
pub fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Publishes one version, fenced: only the lease holder may, and only the next version of the
/// stored epoch, unless `reset` (a new epoch, which replaces the history). The payload is what
/// subscribing nodes receive; the document and patches are cut out of it at the offsets given.
/// Returns 1 when published, 0 when this node no longer holds the lease, -1 when the version
/// does not follow the stored one.
///
/// KEYS: lease, state, stream, channel. ARGV: token, epoch, version, payload, document offset
/// and length, JSON Patch offset and length (-1: none), merge patch offset and length,
/// history, retain ms, reset, the document's tag, the patches' tag.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local v = tonumber(ARGV[3])
if ARGV[13] == '1' then
  redis.call('DEL', KEYS[3])
else
  local st = redis.call('HMGET', KEYS[2], 'epoch', 'version')
  if st[1] ~= ARGV[2] or tonumber(st[2]) ~= v - 1 then return -1 end
end
local p = ARGV[4]
local function cut(off, len)
  return string.sub(p, tonumber(off) + 1, tonumber(off) + tonumber(len))
end
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'version', v, 'doc', cut(ARGV[5], ARGV[6]), 'tag', ARGV[14], 'owner', ARGV[1])
local fields = {'t', ARGV[15]}
if tonumber(ARGV[8]) >= 0 then table.insert(fields, 'j'); table.insert(fields, cut(ARGV[7], ARGV[8])) end
if tonumber(ARGV[10]) >= 0 then table.insert(fields, 'm'); table.insert(fields, cut(ARGV[9], ARGV[10])) end
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[11], v .. '-1', unpack(fields))
redis.call('PEXPIRE', KEYS[2], ARGV[12])
redis.call('PEXPIRE', KEYS[3], ARGV[12])
redis.call('PUBLISH', KEYS[4], p)
return 1
"#,
    )
});

/// Sends an error to every node, if this node holds the lease. Returns 1 or 0.
///
/// KEYS: lease, channel. ARGV: token, payload.
pub static TELL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"#,
    )
});

/// Sends a refresh to every node (see `relay`). Returns the number of nodes that heard it.
///
/// KEYS: the refresh channel. ARGV: payload.
pub static RELAY: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('PUBLISH', KEYS[1], ARGV[1])"));

/// Reads the stored state and the history from a version on, in one step. Returns `{epoch,
/// version, document, entries, document tag}`.
///
/// KEYS: state, stream. ARGV: the first version wanted.
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local st = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'doc', 'tag')
if not st[1] then return {'', '0', '', {}, ''} end
local entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-1', '+')
return {st[1], st[2], st[3], entries, st[4] or ''}
"#,
    )
});

/// This node no longer has the topic: its interest goes, and its lease if it holds it.
///
/// KEYS: lease, nodes, state. ARGV: token, node.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('HGET', KEYS[3], 'owner') == ARGV[1] then redis.call('HDEL', KEYS[3], 'owner') end
end
return 1
"#,
    )
});
