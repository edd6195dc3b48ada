//! Object store I/O: create-only puts and ranged gets, through the read cache.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::cache::ObjectCache;
use crate::error::StorageError;

/// Counters of object store traffic (for the bench and, later, metrics).
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
}

impl ObjectStorage {
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: usize) -> Self {
        ObjectStorage {
            store,
            cache: Arc::new(ObjectCache::new(cache_bytes)),
            stats: Arc::default(),
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
        let store: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(unsupported("no directory given"));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| unsupported(&format!("cannot create the directory: {e}")))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| unsupported(&e.to_string()))?
                .with_fsync(true);
            Arc::new(local)
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
        Ok(ObjectStorage::new(store, cache_bytes))
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Writes a new object; fails rather than overwrite one that exists. On success the
    /// bytes are durable in the store and also cached.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let len = bytes.len() as u64;
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
            .map_err(|source| match source {
                object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
                    key: key.to_string(),
                },
                source => StorageError::Unavailable {
                    context: "write",
                    key: key.to_string(),
                    source,
                },
            })?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats.put_bytes.fetch_add(len, Ordering::Relaxed);
        self.cache.insert_object(key, bytes);
        Ok(())
    }

    /// Reads `range` of an object, from the cache when it can.
    pub async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        if let Some(bytes) = self.cache.get(key, &range) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes);
        }
        let bytes = self
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
            })?;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .get_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.cache.insert_range(key, range, bytes.clone());
        Ok(bytes)
    }

    /// Reads a whole object (tools and tests), bypassing the cache.
    pub async fn read_object(&self, key: &str) -> Result<Bytes, StorageError> {
        let result =
            self.store
                .get(&Path::from(key))
                .await
                .map_err(|source| StorageError::Unavailable {
                    context: "read",
                    key: key.to_string(),
                    source,
                })?;
        result
            .bytes()
            .await
            .map_err(|source| StorageError::Unavailable {
                context: "read",
                key: key.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
