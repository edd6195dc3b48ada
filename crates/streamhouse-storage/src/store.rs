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
    /// fsynced before it returns) or `memory://` (tests only).
    pub fn open(url: &str, cache_bytes: usize) -> Result<ObjectStorage, StorageError> {
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
        } else if url == "memory://" {
            Arc::new(object_store::memory::InMemory::new())
        } else {
            return Err(unsupported("expected file://DIR or memory://"));
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
