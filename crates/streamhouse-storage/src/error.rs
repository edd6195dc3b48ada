//! The storage error type.

/// What went wrong reading or writing objects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("object store unavailable while trying to {context} {key}")]
    Unavailable {
        context: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object {key} not found")]
    NotFound {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot write object {key} to the local directory")]
    LocalWrite {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object {key} already exists; objects are never overwritten")]
    AlreadyExists { key: String },
    #[error("corrupt object: {reason}")]
    Corrupt { reason: String },
    #[error("unsupported object store URL {url:?}: {reason}")]
    UnsupportedUrl { url: String, reason: String },
}
