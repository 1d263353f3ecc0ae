//! Server-Sent Events: a chunked `text/event-stream` response held open on the client's
//! connection. Events arrive already framed as HTTP chunks (see `encode`).

use super::delivery::{Delivery, Next};
use super::downstream::{Downstream, WriteFailed};
use crate::wire::encode::{unchunk, SSE_END, SSE_KEEPALIVE, SSE_PREAMBLE};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::sync::watch;

/// The response head of an SSE stream to an HTTP/1.1 client.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nx-accel-buffering: no\r\n";

/// The head for an HTTP/1.0 client, which knows no chunks: the body ends when the connection
/// closes.
const HEAD_HTTP10: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
connection: close\r\nx-accel-buffering: no\r\n";

/// Serves one SSE subscriber until the topic ends, the client leaves, or shutdown. Events come
/// framed as HTTP chunks; for an HTTP/1.0 client (`http10`) the framing is taken off and the
/// response is delimited by closing the connection. `extra_head` holds more header lines, each
/// ending in CRLF.
pub async fn serve(
    mut down: Downstream,
    mut delivery: Delivery,
    heartbeat: Duration,
    http10: bool,
    extra_head: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WriteFailed> {
    let body = |b: Bytes| if http10 { unchunk(&b) } else { b };
    let keepalive = body(Bytes::from_static(SSE_KEEPALIVE));
    // The head, the retry preamble and the subscriber's first events in one write.
    let (initial, ended) = match delivery.initial() {
        Next::Write(b) => (b, false),
        Next::End(b, _) => (b, true),
        Next::Closed => (Bytes::new(), true),
    };
    let (head, preamble, initial) =
        (if http10 { HEAD_HTTP10 } else { HEAD }, body(Bytes::from_static(SSE_PREAMBLE)), body(initial));
    let mut first = Vec::with_capacity(head.len() + preamble.len() + initial.len());
    first.extend_from_slice(head);
    // More header lines (a sticky cookie), each ending in CRLF; then the blank line.
    if let Some(extra) = &extra_head {
        first.extend_from_slice(extra.as_bytes());
    }
    first.extend_from_slice(b"\r\n");
    first.extend_from_slice(&preamble);
    first.extend_from_slice(&initial);
    down.write(&first).await?;
    drop((first, initial));
    if !ended {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // One wait for shutdown for the whole stream, not one per event.
        let stopping = shutdown.changed();
        tokio::pin!(stopping);
        let mut input = BytesMut::new();
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                next = delivery.next() => match next {
                    Next::Write(b) => down.write(&body(b)).await?,
                    Next::End(b, _) => {
                        down.write(&body(b)).await?;
                        break;
                    }
                    Next::Closed => break,
                },
                _ = tick.tick() => down.write(&keepalive).await?,
                // The client sends nothing on an SSE stream: any read result means it left.
                _ = down.read(&mut input) => return Ok(()),
            }
        }
    }
    if !http10 {
        down.write(SSE_END).await?;
    }
    down.close().await;
    Ok(())
}
