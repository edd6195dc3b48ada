//! An in-memory LRU of object bytes, bounded by total size. Objects a flush just wrote go in
//! whole, so fetches of recent data never touch the object store; ranges read back from the
//! store go in too, keyed by their range.

use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

/// A cached piece of an object: the whole object (`range` = `None`) or one range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    object: String,
    range: Option<Range<u64>>,
}

/// A size-bounded LRU cache of object bytes.
#[derive(Debug)]
pub struct ObjectCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

#[derive(Debug)]
struct Inner {
    entries: lru::LruCache<CacheKey, Bytes>,
    bytes: usize,
}

impl ObjectCache {
    pub fn new(max_bytes: usize) -> Self {
        ObjectCache {
            inner: Mutex::new(Inner {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    /// Caches a whole object.
    pub fn insert_object(&self, object: &str, bytes: Bytes) {
        self.insert(
            CacheKey {
                object: object.to_string(),
                range: None,
            },
            bytes,
        );
    }

    /// Caches one range of an object.
    pub fn insert_range(&self, object: &str, range: Range<u64>, bytes: Bytes) {
        self.insert(
            CacheKey {
                object: object.to_string(),
                range: Some(range),
            },
            bytes,
        );
    }

    fn insert(&self, key: CacheKey, bytes: Bytes) {
        if bytes.len() > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.bytes += bytes.len();
        if let Some(old) = inner.entries.put(key, bytes) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    /// The bytes of `range` of `object`, if the whole object or exactly that range is cached.
    pub fn get(&self, object: &str, range: &Range<u64>) -> Option<Bytes> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = CacheKey {
            object: object.to_string(),
            range: None,
        };
        if let Some(whole) = inner.entries.get(&key) {
            let start = usize::try_from(range.start).ok()?;
            let end = usize::try_from(range.end).ok()?;
            return (end <= whole.len() && start <= end).then(|| whole.slice(start..end));
        }
        key.range = Some(range.clone());
        inner.entries.get(&key).cloned()
    }

    /// Bytes currently held.
    pub fn size(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_ranges_of_whole_objects_and_evicts_least_recent() {
        let cache = ObjectCache::new(10);
        cache.insert_object("a", Bytes::from_static(b"0123456"));
        assert_eq!(cache.get("a", &(2..4)).unwrap(), Bytes::from_static(b"23"));
        assert_eq!(cache.get("a", &(2..40)), None);
        cache.insert_range("b", 0..3, Bytes::from_static(b"xyz"));
        assert_eq!(cache.size(), 10);
        assert_eq!(cache.get("b", &(0..3)).unwrap(), Bytes::from_static(b"xyz"));
        cache.insert_object("c", Bytes::from_static(b"cc"));
        // "a" was least recently used and goes first.
        assert_eq!(cache.get("a", &(0..1)), None);
        assert!(cache.get("b", &(0..3)).is_some());
        assert!(cache.size() <= 10);
        cache.insert_object("huge", Bytes::from(vec![0u8; 11]));
        assert_eq!(cache.get("huge", &(0..1)), None);
    }
}
