//! Server-Sent Events: a chunked `text/event-stream` response held open on the session.

use super::delivery::{Delivery, Next};
use super::encode::{SSE_KEEPALIVE, SSE_PREAMBLE};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use std::time::Duration;
use tokio::sync::watch;

/// Serves one SSE subscriber until the topic ends, the client leaves, or shutdown.
pub async fn serve(
    session: &mut Session,
    mut delivery: Delivery,
    heartbeat: Duration,
    write_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("transfer-encoding", "chunked")?;
    resp.insert_header("x-accel-buffering", "no")?;
    session.set_keepalive(None);
    session.set_read_timeout(None);
    session.set_write_timeout(Some(write_timeout));
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(Bytes::from_static(SSE_PREAMBLE), false).await?;
    let ended = match delivery.initial() {
        Next::Write(b) => {
            if !b.is_empty() {
                session.write_response_body(b, false).await?;
            }
            false
        }
        Next::End(b, _) => {
            session.write_response_body(b, false).await?;
            true
        }
        Next::Closed => true,
    };
    if !ended {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                next = delivery.next() => match next {
                    Next::Write(b) => session.write_response_body(b, false).await?,
                    Next::End(b, _) => {
                        session.write_response_body(b, false).await?;
                        break;
                    }
                    Next::Closed => break,
                },
                _ = tick.tick() => session.write_response_body(Bytes::from_static(SSE_KEEPALIVE), false).await?,
                // The client sends nothing on an SSE stream: any read result means it left.
                _ = session.read_body_or_idle(true) => return Ok(()),
            }
        }
    }
    session.write_response_body(Bytes::new(), true).await
}
