//! The metadata store's error type.

/// What went wrong in a metadata operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("invalid argument: {message}")]
    Invalid { message: String },
    #[error("metadata store unavailable while trying to {context}")]
    Unavailable {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("metadata schema migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    #[error("corrupt metadata: {message}")]
    Corrupt { message: String },
    #[error("unsupported metadata URL {url:?} (expected sqlite://… or postgres://…)")]
    UnsupportedUrl { url: String },
}

impl MetadataError {
    /// Wraps a database error with what the store was doing.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> MetadataError {
        move |source| MetadataError::Unavailable { context, source }
    }
}
