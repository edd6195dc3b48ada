//! Object store I/O: create-only puts and ranged gets, through the read cache.
//!
//! Every request is counted twice: in [`StoreStats`] (the bench reads those) and in the
//! `streamhouse_object_store_*` and `streamhouse_cache_hits_total` metrics, which
//! [`describe_metrics`] describes.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::cache::ObjectCache;
use crate::error::StorageError;

const REQUESTS: &str = "streamhouse_object_store_requests_total";
const BYTES: &str = "streamhouse_object_store_bytes_total";
const LATENCY: &str = "streamhouse_object_store_latency_seconds";
const ERRORS: &str = "streamhouse_object_store_errors_total";
const CACHE_HITS: &str = "streamhouse_cache_hits_total";

/// How much of a large object is written to a local directory between two syncs. At 10 MiB/s
/// of produce on 2 cores, compaction passes raised the produce p99 over 300 s from 11.0 ms to
/// 21-22 ms with whole-object fsyncs, 17 ms with 1 MiB pieces, 13.0-14.8 ms with 256 KiB,
/// 12.5-12.9 ms with 128 KiB (docs/architecture.md has the runs) and 13.7 ms with 64 KiB
/// pieces, which slowed compaction itself (5.4 GB merged in 300 s instead of 5.6).
const LOCAL_PIECE_BYTES: usize = 128 << 10;

/// A key no object is ever written under: [`ObjectStorage::ping`] asks for it.
const PING_KEY: &str = "streamhouse-ping/never-written";

/// Gives the object store metrics their help text and units. Call once at start, after the
/// `metrics` recorder is installed.
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Object store requests, by op (put, get, delete, list), failed ones included."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes written (put) and read (get) by successful object store requests."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "Duration of each object store request, by op."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Object store requests that failed, by op, whatever the cause."
    );
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Ranged reads answered by the in-memory cache without an object store request."
    );
}

/// Records one object store request that started at `started`: its duration, and the bytes
/// it moved (`Some`) or its failure (`None`).
fn observe(op: &'static str, started: Instant, moved: Option<u64>) {
    counter!(REQUESTS, "op" => op).increment(1);
    histogram!(LATENCY, "op" => op).record(started.elapsed().as_secs_f64());
    match moved {
        Some(bytes) => counter!(BYTES, "op" => op).increment(bytes),
        None => counter!(ERRORS, "op" => op).increment(1),
    }
}

/// Counters of object store traffic (for the bench; the metrics count the same requests).
#[derive(Debug, Default)]
pub struct StoreStats {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub cache_hits: AtomicU64,
}

/// Explicit settings for `s3://` object stores. Each one that is set overrides the matching
/// `AWS_*` environment variable (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`).
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for S3Options {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// How `s3://` requests are retried. A produce is answered only once its flush's object
/// write is done, and flushes run one at a time, so a write stuck in retries holds every
/// produce of the agent. object_store's default (10 retries, a random backoff that may grow
/// to 15 s per retry, up to 3 min) held them for a random 2 to 45 s while the server was
/// down. With backoffs of at most 1 s a write to a server that refuses connections gives
/// up within about 7 s, no retry starts once 10 s have passed, and the flush fails with a
/// retriable error (KAFKA_STORAGE_ERROR) that producers retry.
fn s3_retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: std::time::Duration::from_secs(10),
    }
}

/// The object store with its cache in front.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    cache: Arc<ObjectCache>,
    stats: Arc<StoreStats>,
    /// The same store when it is a local directory: large objects are written to it in
    /// synced pieces (see [`put_local_in_pieces`]).
    local: Option<Arc<LocalFileSystem>>,
}

impl ObjectStorage {
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: usize) -> Self {
        ObjectStorage {
            store,
            cache: Arc::new(ObjectCache::new(cache_bytes)),
            stats: Arc::default(),
            local: None,
        }
    }

    /// Opens the store named by a URL: `file:///abs/dir` (created if missing; every write is
    /// fsynced before it returns), `s3://bucket[/prefix]` (configured from the `AWS_*`
    /// environment) or `memory://` (tests only).
    pub fn open(url: &str, cache_bytes: usize) -> Result<ObjectStorage, StorageError> {
        ObjectStorage::open_with(url, cache_bytes, &S3Options::default())
    }

    /// [`ObjectStorage::open`], with explicit `s3://` settings that override the environment.
    pub fn open_with(
        url: &str,
        cache_bytes: usize,
        s3: &S3Options,
    ) -> Result<ObjectStorage, StorageError> {
        let unsupported = |reason: &str| StorageError::UnsupportedUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let mut local_dir = None;
        let store: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(unsupported("no directory given"));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| unsupported(&format!("cannot create the directory: {e}")))?;
            let local = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| unsupported(&e.to_string()))?
                .with_fsync(true);
            let local = Arc::new(local);
            local_dir = Some(local.clone());
            local
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(unsupported("no bucket given"));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(s3_retry_config());
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(allow_http) = s3.allow_http {
                builder = builder.with_allow_http(allow_http);
            }
            let s3_store = builder.build().map_err(|e| unsupported(&e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3_store)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3_store, prefix))
            }
        } else if url == "memory://" {
            Arc::new(object_store::memory::InMemory::new())
        } else {
            return Err(unsupported(
                "expected file://DIR, s3://BUCKET[/PREFIX] or memory://",
            ));
        };
        Ok(ObjectStorage {
            local: local_dir,
            ..ObjectStorage::new(store, cache_bytes)
        })
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Writes a new object; fails rather than overwrite one that exists. On success the
    /// bytes are durable in the store and also cached.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.put_create(key, bytes, true).await
    }

    /// [`ObjectStorage::put_new`] for compaction's large outputs: not cached (they would only
    /// push recent flushes out of the cache), and on a local directory written in synced
    /// pieces (see [`put_local_in_pieces`]).
    pub async fn put_new_uncached(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.put_create(key, bytes, false).await
    }

    /// Writes a new object, create-only; `cache` tells a flush's object (cached, written in
    /// one piece) from a compaction's (neither; in synced pieces on a local directory).
    async fn put_create(&self, key: &str, bytes: Bytes, cache: bool) -> Result<(), StorageError> {
        let len = bytes.len() as u64;
        let started = Instant::now();
        let written = match &self.local {
            Some(local) if !cache => put_local_in_pieces(local, key, bytes.clone()).await,
            _ => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                self.store
                    .put_opts(
                        &Path::from(key),
                        PutPayload::from_bytes(bytes.clone()),
                        opts,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|source| put_error(key, source))
            }
        };
        observe("put", started, written.as_ref().ok().map(|_| len));
        written?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats.put_bytes.fetch_add(len, Ordering::Relaxed);
        if cache {
            self.cache.insert_object(key, bytes);
        }
        Ok(())
    }

    /// Deletes an object; one that is already gone is not an error. Cached pieces of it are
    /// left to age out: keys are never reused, so nothing asks for them again.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let started = Instant::now();
        let deleted = match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Unavailable {
                context: "delete",
                key: key.to_string(),
                source,
            }),
        };
        observe("delete", started, deleted.as_ref().ok().map(|_| 0));
        deleted
    }

    /// Every object under `prefix` (a `/`-separated key prefix), with its last-modified
    /// time in milliseconds since the Unix epoch (the object store's clock).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, StorageError> {
        use futures_util::TryStreamExt;
        let started = Instant::now();
        let listed: Result<Vec<object_store::ObjectMeta>, _> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await;
        observe("list", started, listed.as_ref().ok().map(|_| 0));
        let listed = listed.map_err(|source| StorageError::Unavailable {
            context: "list",
            key: prefix.to_string(),
            source,
        })?;
        Ok(listed
            .into_iter()
            .map(|meta| {
                (
                    meta.location.to_string(),
                    meta.last_modified.timestamp_millis(),
                )
            })
            .collect())
    }

    /// Reads `range` of an object, from the cache when it can.
    pub async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        if range.is_empty() {
            // An index entry log compaction left without records: nothing to ask for.
            return Ok(Bytes::new());
        }
        if let Some(bytes) = self.cache.get(key, &range) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            counter!(CACHE_HITS).increment(1);
            return Ok(bytes);
        }
        let started = Instant::now();
        let read = self
            .store
            .get_range(&Path::from(key), range.clone())
            .await
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => StorageError::NotFound {
                    key: key.to_string(),
                    source,
                },
                source => StorageError::Unavailable {
                    context: "read",
                    key: key.to_string(),
                    source,
                },
            });
        observe("get", started, read.as_ref().ok().map(|b| b.len() as u64));
        let bytes = read?;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .get_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.cache.insert_range(key, range, bytes.clone());
        Ok(bytes)
    }

    /// Reads a whole object (tools and tests), bypassing the cache.
    pub async fn read_object(&self, key: &str) -> Result<Bytes, StorageError> {
        let unavailable = |source| StorageError::Unavailable {
            context: "read",
            key: key.to_string(),
            source,
        };
        let started = Instant::now();
        let read = match self.store.get(&Path::from(key)).await {
            Ok(result) => result.bytes().await.map_err(unavailable),
            Err(source) => Err(unavailable(source)),
        };
        observe("get", started, read.as_ref().ok().map(|b| b.len() as u64));
        read
    }

    /// Checks that the object store answers, with one cheap request (the metadata of a key
    /// that is never written: "not found" is an answer). Not counted in [`StoreStats`] or
    /// the request metrics.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self.store.head(&Path::from(PING_KEY)).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Unavailable {
                context: "reach",
                key: PING_KEY.to_string(),
                source,
            }),
        }
    }
}

/// What a failed create-only write of `key` is: the object exists already, or the store
/// could not be written.
fn put_error(key: &str, source: object_store::Error) -> StorageError {
    match source {
        object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
            key: key.to_string(),
        },
        source => StorageError::Unavailable {
            context: "write",
            key: key.to_string(),
            source,
        },
    }
}

/// Writes a large object to a local directory [`LOCAL_PIECE_BYTES`] at a time, each piece
/// synced before the next is written, then publishes it under `key` with a hard link
/// (create-only, as every put is) and fsyncs the directory. `object_store`'s local put writes
/// the whole object and then fsyncs it once, which hands the disk all of a 64 MiB compaction
/// output at once: every flush's fsync queues behind it, so the produce p99 doubled while
/// compaction ran. Small pieces keep the disk's queue short. The crate has no way to sync as
/// it writes, hence this by hand; linking and deleting still go through it. The bytes are
/// first written under `<key>.part`, a key no commit ever names: if the process dies before
/// the link, garbage collection deletes that file as an orphan.
async fn put_local_in_pieces(
    local: &Arc<LocalFileSystem>,
    key: &str,
    bytes: Bytes,
) -> Result<(), StorageError> {
    let part = Path::from(format!("{key}.part"));
    let file_path = local
        .path_to_filesystem(&part)
        .map_err(|source| put_error(key, source))?;
    let write = move || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = match std::fs::File::create_new(&file_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = file_path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::File::create_new(&file_path)?
            }
            opened => opened?,
        };
        for piece in bytes.chunks(LOCAL_PIECE_BYTES) {
            file.write_all(piece)?;
            file.sync_data()?;
        }
        file.sync_all()
    };
    let written = match tokio::task::spawn_blocking(write).await {
        Ok(written) => written,
        Err(e) => Err(std::io::Error::other(e)),
    };
    let linked = match written {
        Err(source) => Err(StorageError::LocalWrite {
            key: key.to_string(),
            source,
        }),
        Ok(()) => local
            .copy_if_not_exists(&part, &Path::from(key))
            .await
            .map_err(|source| put_error(key, source)),
    };
    // Whether or not it was linked, the part is garbage now (or an orphan, if this fails).
    if let Err(e) = local.delete(&part).await {
        if !matches!(e, object_store::Error::NotFound { .. }) {
            tracing::warn!(object = %part, error = %e, "cannot delete a written part; garbage collection will");
        }
    }
    linked
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Key, Label};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};

    type Snapshot = std::collections::HashMap<
        CompositeKey,
        (Option<Unit>, Option<metrics::SharedString>, DebugValue),
    >;

    #[tokio::test]
    async fn objects_are_create_only_and_ranges_read_back() {
        let s = ObjectStorage::open("memory://", 0).unwrap();
        s.put_new("a/b", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert!(matches!(
            s.put_new("a/b", Bytes::from_static(b"other")).await,
            Err(StorageError::AlreadyExists { .. })
        ));
        assert_eq!(
            s.read_range("a/b", 6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );
        assert!(matches!(
            s.read_range("missing", 0..1).await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn large_local_objects_are_written_in_pieces_and_create_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStorage::open(&format!("file://{}", dir.path().display()), 0).unwrap();
        // Three and a half pieces, into a directory that does not exist yet.
        let len = LOCAL_PIECE_BYTES * 7 / 2;
        let bytes = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        s.put_new_uncached("data/a/1.sho", bytes.clone())
            .await
            .unwrap();
        assert_eq!(s.read_object("data/a/1.sho").await.unwrap(), bytes);
        assert!(matches!(
            s.put_new_uncached("data/a/1.sho", Bytes::from_static(b"other"))
                .await,
            Err(StorageError::AlreadyExists { .. })
        ));
        assert_eq!(s.read_object("data/a/1.sho").await.unwrap(), bytes);
        // No part is left behind, after a write or a refused one.
        let listed: Vec<String> = s
            .list("data")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(listed, vec!["data/a/1.sho".to_string()]);
        assert_eq!(s.stats().puts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn objects_are_listed_by_prefix_and_deleted_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStorage::open(&format!("file://{}", dir.path().display()), 1 << 20).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for key in ["data/a/1.sho", "data/b/2.sho", "other/3"] {
            s.put_new_uncached(key, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let mut listed = s.list("data").await.unwrap();
        listed.sort();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["data/a/1.sho", "data/b/2.sho"]);
        assert!(
            listed.iter().all(|(_, ms)| *ms >= before - 2000),
            "{listed:?}"
        );
        s.delete("data/a/1.sho").await.unwrap();
        s.delete("data/a/1.sho").await.unwrap();
        assert!(matches!(
            s.read_range("data/a/1.sho", 0..1).await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(s.list("data").await.unwrap().len(), 1);
        // Uncached: the read goes to the store.
        s.read_range("data/b/2.sho", 0..1).await.unwrap();
        assert_eq!(s.stats().cache_hits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn local_files_are_written_under_the_directory() {
        let dir = std::env::temp_dir().join(format!("sh-store-{}", std::process::id()));
        let url = format!("file://{}", dir.display());
        let s = ObjectStorage::open(&url, 1 << 20).unwrap();
        s.put_new("x/y.obj", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("x/y.obj")).unwrap(), b"abc");
        assert_eq!(
            s.read_range("x/y.obj", 1..3).await.unwrap(),
            Bytes::from_static(b"bc")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn ping_answers_while_the_store_can_be_asked() {
        let memory = ObjectStorage::open("memory://", 0).unwrap();
        memory.ping().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let local = ObjectStorage::open(&url, 0).unwrap();
        local.ping().await.unwrap();
        // A file where the ping key's directory would be: the store cannot look the key up.
        std::fs::write(dir.path().join("streamhouse-ping"), b"in the way").unwrap();
        let err = local.ping().await.unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
        // Pings are not traffic.
        assert_eq!(local.stats().gets.load(Ordering::Relaxed), 0);
    }

    /// A counter's value in a snapshot of a debugging recorder (0 when it was never touched).
    fn counter(
        snapshot: &Snapshot,
        name: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> u64 {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
        let key = CompositeKey::new(MetricKind::Counter, Key::from_parts(name, labels));
        match snapshot.get(&key) {
            Some((_, _, DebugValue::Counter(n))) => *n,
            _ => 0,
        }
    }

    #[tokio::test]
    async fn requests_are_counted_in_metrics_and_stats_alike() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let s = ObjectStorage::open("memory://", 1 << 20).unwrap();
        s.put_new("a", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        s.put_new("a", Bytes::from_static(b"again"))
            .await
            .unwrap_err();
        // Cached by the put: no request.
        assert_eq!(s.read_range("a", 0..5).await.unwrap(), &b"hello"[..]);
        let uncached = ObjectStorage::new(s.store.clone(), 0);
        assert_eq!(
            uncached.read_range("a", 6..11).await.unwrap(),
            &b"world"[..]
        );
        uncached.read_range("missing", 0..1).await.unwrap_err();
        s.ping().await.unwrap();

        let snapshot = snapshotter.snapshot().into_hashmap();
        let requests = "streamhouse_object_store_requests_total";
        let bytes = "streamhouse_object_store_bytes_total";
        let errors = "streamhouse_object_store_errors_total";
        assert_eq!(counter(&snapshot, requests, &[("op", "put")]), 2);
        assert_eq!(counter(&snapshot, bytes, &[("op", "put")]), 11);
        assert_eq!(counter(&snapshot, errors, &[("op", "put")]), 1);
        assert_eq!(counter(&snapshot, requests, &[("op", "get")]), 2);
        assert_eq!(counter(&snapshot, bytes, &[("op", "get")]), 5);
        assert_eq!(counter(&snapshot, errors, &[("op", "get")]), 1);
        assert_eq!(counter(&snapshot, "streamhouse_cache_hits_total", &[]), 1);
        for op in ["put", "get"] {
            let labels = vec![Label::new("op", op)];
            let key = Key::from_parts("streamhouse_object_store_latency_seconds", labels);
            match snapshot.get(&CompositeKey::new(MetricKind::Histogram, key)) {
                Some((_, _, DebugValue::Histogram(seconds))) => assert_eq!(seconds.len(), 2),
                other => panic!("no latency histogram for {op}: {other:?}"),
            }
        }
        // The bench's counters count successful requests, as before.
        assert_eq!(s.stats().puts.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().put_bytes.load(Ordering::Relaxed), 11);
        assert_eq!(s.stats().cache_hits.load(Ordering::Relaxed), 1);
        assert_eq!(uncached.stats().gets.load(Ordering::Relaxed), 1);
        assert_eq!(uncached.stats().get_bytes.load(Ordering::Relaxed), 5);
    }
}
