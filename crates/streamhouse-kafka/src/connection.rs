//! One client connection: reads length-prefixed frames, hands each request to its handler in
//! arrival order, and writes the responses back in that same order while later requests are
//! already being processed (Kafka clients pipeline requests on one connection).
//!
//! A frame that is too large, a header that does not decode, or an API or version we do not
//! serve closes this connection with a logged reason; nothing else is affected.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::handlers::Handler;
use crate::stats::OpenConnection;

/// Requests read but not yet answered, per connection; reading pauses beyond this.
const MAX_IN_FLIGHT: usize = 512;

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("request frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: i64, max: usize },
    #[error("malformed request: {reason}")]
    Malformed { reason: String },
    #[error("unsupported request: API key {api_key} version {version}")]
    Unsupported { api_key: i16, version: i16 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves one connection until the client closes it, it misbehaves, or shutdown.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler>,
    max_request_bytes: usize,
    shutdown: CancellationToken,
) {
    let _open = OpenConnection::new();
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let (responses, mut queue) = mpsc::channel::<JoinHandle<Option<Bytes>>>(MAX_IN_FLIGHT);

    let writer = tokio::spawn(async move {
        while let Some(pending) = queue.recv().await {
            match pending.await {
                Ok(Some(frame)) => {
                    if let Err(e) = write_half.write_all(&frame).await {
                        debug!(%peer, error = %e, "client went away before its response");
                        return;
                    }
                }
                Ok(None) => {} // acks=0 produce: no response
                Err(e) => {
                    warn!(%peer, error = %e, "request handler failed; closing the connection");
                    return;
                }
            }
        }
        let _ = write_half.shutdown().await;
    });

    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, max_request_bytes) => frame,
            _ = shutdown.cancelled() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                debug!(%peer, "client closed the connection");
                break;
            }
            Err(ConnectionError::Io(e)) => {
                debug!(%peer, error = %e, "connection read failed");
                break;
            }
            Err(e) => {
                warn!(%peer, reason = %e, "closing connection");
                break;
            }
        };
        match handler.dispatch(frame, peer).await {
            Ok(pending) => {
                if responses.send(pending).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                warn!(%peer, reason = %e, "closing connection");
                break;
            }
        }
    }
    drop(responses);
    let _ = writer.await;
}

/// Reads one frame body (without its length prefix); `None` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, ConnectionError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len);
    let size = usize::try_from(size)
        .ok()
        .filter(|size| *size <= max)
        .ok_or(ConnectionError::FrameTooLarge {
            size: i64::from(size),
            max,
        })?;
    if size < 8 {
        return Err(ConnectionError::Malformed {
            reason: format!("frame of {size} bytes is shorter than a request header"),
        });
    }
    let mut body = BytesMut::zeroed(size);
    reader.read_exact(&mut body).await?;
    Ok(Some(body.freeze()))
}
