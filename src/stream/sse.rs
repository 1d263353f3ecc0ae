//! Server-Sent Events: a chunked `text/event-stream` response held open on the client's
//! connection. Events arrive already framed as HTTP chunks (see `encode`).

use super::delivery::{Delivery, Next};
use super::downstream::{Downstream, WriteFailed};
use super::encode::{SSE_END, SSE_KEEPALIVE, SSE_PREAMBLE};
use bytes::BytesMut;
use std::time::Duration;
use tokio::sync::watch;

/// The response head of every SSE stream.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nx-accel-buffering: no\r\n\r\n";

/// Serves one SSE subscriber until the topic ends, the client leaves, or shutdown.
pub async fn serve(
    mut down: Downstream,
    mut delivery: Delivery,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WriteFailed> {
    // The head, the retry preamble and the subscriber's first events in one write.
    let (initial, ended) = match delivery.initial() {
        Next::Write(b) => (b, false),
        Next::End(b, _) => (b, true),
        Next::Closed => (bytes::Bytes::new(), true),
    };
    let mut first = Vec::with_capacity(HEAD.len() + SSE_PREAMBLE.len() + initial.len());
    first.extend_from_slice(HEAD);
    first.extend_from_slice(SSE_PREAMBLE);
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
                    Next::Write(b) => down.write(&b).await?,
                    Next::End(b, _) => {
                        down.write(&b).await?;
                        break;
                    }
                    Next::Closed => break,
                },
                _ = tick.tick() => down.write(SSE_KEEPALIVE).await?,
                // The client sends nothing on an SSE stream: any read result means it left.
                _ = down.read(&mut input) => return Ok(()),
            }
        }
    }
    down.write(SSE_END).await?;
    down.close().await;
    Ok(())
}
