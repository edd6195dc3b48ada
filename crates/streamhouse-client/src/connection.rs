//! One pipelined TCP connection to a broker: frames requests, routes responses by correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes, VersionRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{boxed, ClientError};

/// The `client_id` sent in every request header.
pub const CLIENT_ID: &str = "streamhouse";

/// Largest response frame we accept (guards against a garbage length prefix).
const MAX_FRAME_BYTES: usize = 1 << 30;

/// Default time to wait for a response before giving up with [`ClientError::Timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Waiters for responses, keyed by correlation id.
#[derive(Default)]
struct Pending {
    waiters: HashMap<i32, oneshot::Sender<Bytes>>,
    /// Set once the reader saw EOF or an error; no new waiters are accepted then.
    closed: bool,
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock(p: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    // A poisoned lock only means another task panicked mid-update of a HashMap; the map
    // itself is still usable.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: SharedPending,
    next_correlation_id: AtomicI32,
    /// Server version range per API key, from the ApiVersions handshake.
    versions: OnceLock<HashMap<i16, VersionRange>>,
    request_timeout: Duration,
    write_failed: AtomicBool,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One TCP connection to a broker.
///
/// Requests are pipelined: any number of tasks may call [`Connection::send`] at once; each
/// request gets its own correlation id and a background reader task hands each response to
/// the request that is waiting for it. Cloning is cheap and shares the socket. When the last
/// clone is dropped the socket closes.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.inner.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A response that has been requested (the frame is written) but may not have arrived yet.
pub(crate) struct PendingResponse<T> {
    conn: Connection,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    rx: oneshot::Receiver<Bytes>,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: Decodable> PendingResponse<T> {
    /// Waits for the response (up to the connection's request timeout) and decodes it.
    pub(crate) async fn wait(self) -> Result<T, ClientError> {
        let guard = WaiterGuard {
            pending: &self.conn.inner.pending,
            correlation_id: self.correlation_id,
        };
        let frame = match tokio::time::timeout(self.conn.inner.request_timeout, self.rx).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(ClientError::Disconnected),
            Err(_) => {
                // Like Kafka's clients: a request that timed out closes its connection.
                // Responses come in order, so everything behind it would wait too, and the
                // broker may be paused or gone; the next request reconnects (to the leader
                // that refreshed metadata names).
                drop(guard);
                self.conn.close();
                return Err(ClientError::Timeout {
                    operation: format!(
                        "{:?} request to {} (correlation id {})",
                        self.api_key, self.conn.inner.addr, self.correlation_id
                    ),
                });
            }
        };
        drop(guard);
        decode_response(frame, self.api_key, self.version, self.correlation_id)
    }
}

/// Removes a waiter when the waiting future is dropped or times out.
struct WaiterGuard<'a> {
    pending: &'a SharedPending,
    correlation_id: i32,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiters.remove(&self.correlation_id);
    }
}

impl Connection {
    /// Connects to `addr` and performs the ApiVersions handshake.
    pub async fn connect(addr: &str) -> Result<Connection, ClientError> {
        Self::connect_with_timeout(addr, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// Like [`Connection::connect`], with a custom per-request timeout (also used for connecting).
    pub async fn connect_with_timeout(
        addr: &str,
        request_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = match tokio::time::timeout(request_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_owned(),
                    source: Arc::new(e),
                })
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    operation: format!("connecting to {addr}"),
                })
            }
        };
        // Latency matters more than packet count for a request/response protocol.
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let pending: SharedPending = Arc::default();
        let reader = tokio::spawn(read_loop(read, pending.clone(), addr.to_owned()));
        let conn = Connection {
            inner: Arc::new(Inner {
                addr: addr.to_owned(),
                writer: tokio::sync::Mutex::new(write),
                pending,
                next_correlation_id: AtomicI32::new(1),
                versions: OnceLock::new(),
                request_timeout,
                write_failed: AtomicBool::new(false),
                reader: reader.abort_handle(),
            }),
        };
        let versions = conn.api_versions_handshake().await?;
        // Only this function sets it, once; ignoring the impossible "already set" is fine.
        let _ = conn.inner.versions.set(versions);
        Ok(conn)
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Closes the connection: waiting requests fail with `Disconnected`, later ones at once.
    pub fn close(&self) {
        self.inner.write_failed.store(true, Ordering::Relaxed);
        self.inner.reader.abort();
        let mut p = lock(&self.inner.pending);
        p.closed = true;
        p.waiters.clear();
    }

    /// Whether the socket is known to be closed (every further request fails).
    pub fn is_closed(&self) -> bool {
        self.inner.write_failed.load(Ordering::Relaxed) || lock(&self.inner.pending).closed
    }

    /// The broker's supported version range for `api_key`, if it supports the API at all.
    pub fn server_versions(&self, api_key: ApiKey) -> Option<VersionRange> {
        self.inner
            .versions
            .get()
            .and_then(|v| v.get(&(api_key as i16)).copied())
    }

    /// The highest version of `api_key` in both the broker's range and `client`.
    pub fn negotiate(&self, api_key: ApiKey, client: VersionRange) -> Result<i16, ClientError> {
        let unsupported = || ClientError::UnsupportedVersion {
            api_key: api_key as i16,
            client_min: client.min,
            client_max: client.max,
        };
        let server = self.server_versions(api_key).ok_or_else(unsupported)?;
        let common = server.intersect(&client);
        if common.is_empty() {
            return Err(unsupported());
        }
        Ok(common.max)
    }

    /// The version [`Connection::send`] would use for request type `R`.
    pub fn version_for<R: Request>(&self) -> Result<i16, ClientError> {
        self.negotiate(api_key_of::<R>()?, R::VERSIONS)
    }

    /// Sends `req` at the highest version both sides support and waits for its response.
    pub async fn send<R: Request>(&self, req: R) -> Result<R::Response, ClientError> {
        let version = self.version_for::<R>()?;
        self.send_versioned(req, version).await
    }

    /// Sends `req` at the highest common version that is at most `max_version`.
    ///
    /// Used where newer versions change the request's shape (e.g. Produce/Fetch v13 identify
    /// topics by id, which this client does not track).
    pub async fn send_capped<R: Request>(
        &self,
        req: R,
        max_version: i16,
    ) -> Result<R::Response, ClientError> {
        let client = VersionRange {
            min: R::VERSIONS.min,
            max: R::VERSIONS.max.min(max_version),
        };
        let version = self.negotiate(api_key_of::<R>()?, client)?;
        self.send_versioned(req, version).await
    }

    /// Sends `req` at exactly `version` and waits for its response.
    pub async fn send_versioned<R: Request>(
        &self,
        req: R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        self.start::<R>(&req, version).await?.wait().await
    }

    /// Writes a request whose response the broker will not send (Produce with `acks = 0`).
    ///
    /// No waiter is registered; the call returns once the frame is written.
    pub async fn send_no_response<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<(), ClientError> {
        let api_key = api_key_of::<R>()?;
        let correlation_id = self.next_correlation_id();
        let frame = encode_frame(req, api_key, version, correlation_id)?;
        self.write_frame(frame).await
    }

    /// Writes the request frame and returns a handle to await the response with.
    ///
    /// Frames are written in call order, so a caller that awaits `start` before starting the
    /// next request gets the broker to see its requests in that order.
    pub(crate) async fn start<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<PendingResponse<R::Response>, ClientError> {
        let api_key = api_key_of::<R>()?;
        let correlation_id = self.next_correlation_id();
        let frame = encode_frame(req, api_key, version, correlation_id)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.pending);
            if pending.closed {
                return Err(ClientError::Disconnected);
            }
            pending.waiters.insert(correlation_id, tx);
        }
        if let Err(e) = self.write_frame(frame).await {
            lock(&self.inner.pending).waiters.remove(&correlation_id);
            return Err(e);
        }
        Ok(PendingResponse {
            conn: self.clone(),
            api_key,
            version,
            correlation_id,
            rx,
            _marker: std::marker::PhantomData,
        })
    }

    fn next_correlation_id(&self) -> i32 {
        // Wraps at i32::MAX; ids only need to be unique among requests in flight.
        self.inner
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed)
    }

    async fn write_frame(&self, frame: Bytes) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Disconnected);
        }
        let mut writer = self.inner.writer.lock().await;
        let res = async {
            writer.write_all(&frame).await?;
            writer.flush().await
        }
        .await;
        if let Err(e) = res {
            self.inner.write_failed.store(true, Ordering::Relaxed);
            tracing::debug!(addr = %self.inner.addr, error = %e, "write to broker failed");
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends ApiVersions (v3, falling back to v0) and returns the broker's ranges.
    async fn api_versions_handshake(&self) -> Result<HashMap<i16, VersionRange>, ClientError> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self.start(&req, 3).await?.wait().await {
            // A broker that does not know v3 answers in v0 format with UNSUPPORTED_VERSION
            // (35), which may fail to decode as v3 or decode with that error code.
            Ok(resp) if resp.error_code == 0 => resp,
            Ok(_) | Err(ClientError::Corrupt { .. }) => {
                self.start(&ApiVersionsRequest::default(), 0)
                    .await?
                    .wait()
                    .await?
            }
            Err(e) => return Err(e),
        };
        if resp.error_code != 0 {
            return Err(ClientError::kafka(resp.error_code, Some("ApiVersions")));
        }
        Ok(version_map(&resp))
    }
}

fn version_map(resp: &ApiVersionsResponse) -> HashMap<i16, VersionRange> {
    resp.api_keys
        .iter()
        .map(|k| {
            (
                k.api_key,
                VersionRange {
                    min: k.min_version,
                    max: k.max_version,
                },
            )
        })
        .collect()
}

/// The [`ApiKey`] of request type `R`.
pub(crate) fn api_key_of<R: Request>() -> Result<ApiKey, ClientError> {
    ApiKey::try_from(R::KEY).map_err(|()| ClientError::InvalidInput {
        message: format!("unknown api key {}", R::KEY),
    })
}

/// Encodes a whole request frame: 4-byte big-endian length, request header, body.
pub fn encode_frame<R: Encodable>(
    req: &R,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<Bytes, ClientError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = api_key.request_header_version(version);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| ClientError::Encode {
            what: "request header",
            source: boxed(e),
        })?;
    req.encode(&mut buf, version)
        .map_err(|e| ClientError::Encode {
            what: "request body",
            source: boxed(e),
        })?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| ClientError::InvalidInput {
        message: format!("request of {} bytes is too large", buf.len()),
    })?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes a response frame (without its length prefix): header, then body at `version`.
pub fn decode_response<T: Decodable>(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
    expected_correlation_id: i32,
) -> Result<T, ClientError> {
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| ClientError::corrupt("response header", e.to_string()))?;
    if header.correlation_id != expected_correlation_id {
        return Err(ClientError::corrupt(
            "response header",
            format!(
                "correlation id {} where {} was expected",
                header.correlation_id, expected_correlation_id
            ),
        ));
    }
    T::decode(&mut frame, version)
        .map_err(|e| ClientError::corrupt("response body", format!("{api_key:?} v{version}: {e}")))
}

/// Reads frames until EOF or error, handing each to the waiter registered for its correlation id.
async fn read_loop(mut read: OwnedReadHalf, pending: SharedPending, addr: String) {
    let result = read_frames(&mut read, &pending).await;
    match &result {
        Ok(()) => tracing::debug!(%addr, "broker closed the connection"),
        Err(e) => tracing::debug!(%addr, error = %e, "broker connection failed"),
    }
    let mut p = lock(&pending);
    p.closed = true;
    // Dropping the senders wakes every waiter with `Disconnected`.
    p.waiters.clear();
}

async fn read_frames(read: &mut OwnedReadHalf, pending: &SharedPending) -> Result<(), ClientError> {
    loop {
        let mut len_buf = [0u8; 4];
        match read.read_exact(&mut len_buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = usize::try_from(i32::from_be_bytes(len_buf))
            .map_err(|_| ClientError::corrupt("response frame", "negative length"))?;
        if !(4..=MAX_FRAME_BYTES).contains(&len) {
            return Err(ClientError::corrupt(
                "response frame",
                format!("length {len} out of range"),
            ));
        }
        let mut frame = BytesMut::zeroed(len);
        read.read_exact(&mut frame).await?;
        let frame = frame.freeze();
        let correlation_id = (&frame[..]).get_i32();
        let waiter = lock(pending).waiters.remove(&correlation_id);
        match waiter {
            // The receiver may have given up (timeout); nothing to do then.
            Some(tx) => drop(tx.send(frame)),
            None => tracing::debug!(correlation_id, "response for no waiting request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    #[test]
    fn frame_round_trips_header_and_body() {
        for version in [0i16, 4, 9, 12] {
            let req = MetadataRequest::default().with_topics(None);
            let req = if version == 0 {
                MetadataRequest::default()
            } else {
                req
            };
            let frame = encode_frame(&req, ApiKey::Metadata, version, 42).expect("encode");
            let mut buf = frame.clone();
            let len = buf.get_i32();
            assert_eq!(usize::try_from(len).expect("len"), frame.len() - 4);
            let header = decode_request_header_from_buffer(&mut buf).expect("header");
            assert_eq!(header.request_api_key, ApiKey::Metadata as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.as_deref(), Some(CLIENT_ID));
            let body = MetadataRequest::decode(&mut buf, version).expect("body");
            assert_eq!(body, req);
            assert!(!buf.has_remaining());
        }
    }

    #[test]
    fn response_with_wrong_correlation_id_is_corrupt() {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, 0)
            .expect("encode");
        ApiVersionsResponse::default()
            .encode(&mut buf, 0)
            .expect("encode");
        let frame = buf.freeze();
        let ok: ApiVersionsResponse =
            decode_response(frame.clone(), ApiKey::ApiVersions, 0, 7).expect("decode");
        assert_eq!(ok.error_code, 0);
        let err = decode_response::<ApiVersionsResponse>(frame, ApiKey::ApiVersions, 0, 8);
        assert!(matches!(err, Err(ClientError::Corrupt { .. })));
    }
}
