//! The ways a step can end other than success, and what a retry must redo.

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The caller cancelled the export.
    #[error("cancelled")]
    Cancelled,
    /// Another worker holds the job now (our lease expired): stop touching it.
    #[error("lease lost")]
    LeaseLost,
    /// This process is shutting down; the job is released for another worker.
    #[error("shutting down")]
    Shutdown,
    /// The run cannot know whether a write it made took effect (the database went away
    /// during the commit and did not come back in time): it stops touching the job and
    /// leaves it to its lease, so that the next run decides from what was recorded.
    #[error("outcome unknown: {0}")]
    Unrecorded(String),
    /// A real failure. `public` is what the caller reads in `error_message`; `source` goes to
    /// the logs only.
    #[error("{public}: {source}")]
    Failed {
        public: String,
        source: Box<dyn std::error::Error + Send + Sync>,
        kind: FailureKind,
    },
}

/// Where a failure happened, which decides what a retry must redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Reading from the database: the snapshot's transaction may be gone, open a fresh one.
    Read,
    /// Writing to storage: the snapshot is intact and can be read again.
    Write,
    /// Not worth retrying (a broken invariant).
    Fatal,
}

impl StepError {
    /// A failure with a caller-safe message.
    pub fn failed(
        kind: FailureKind,
        public: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StepError::Failed {
            public: public.into(),
            source: source.into(),
            kind,
        }
    }

    /// A database failure while reading contacts.
    pub fn read(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StepError::failed(
            FailureKind::Read,
            "reading contacts from the database failed",
            source,
        )
    }

    /// A storage failure while writing the file.
    pub fn write(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = source.into();
        let public = if is_storage_full(source.as_ref()) {
            "writing the export file to storage failed: the storage is full"
        } else {
            "writing the export file to storage failed"
        };
        StepError::failed(FailureKind::Write, public, source)
    }
}

/// Whether an error, or one of its causes, is a full disk or quota (`ENOSPC`, `EDQUOT`).
fn is_storage_full(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

impl StepError {
    /// Whether the failure is the database's connection going away (worth waiting for, then
    /// trying again), rather than the step's own.
    pub fn is_transient(&self) -> bool {
        let StepError::Failed { source, .. } = self else {
            return false;
        };
        let first: &(dyn std::error::Error + 'static) = source.as_ref();
        std::iter::successors(Some(first), |e| e.source()).any(|e| {
            if let Some(db) = e.downcast_ref::<crate::db::DbError>() {
                db.is_transient()
            } else if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
                crate::db::is_transient_postgres_error(pg)
            } else if let Some(query) = e.downcast_ref::<diesel::result::Error>() {
                crate::db::is_transient_query_error(query)
            } else {
                false
            }
        })
    }
}

impl From<diesel::result::Error> for StepError {
    fn from(e: diesel::result::Error) -> Self {
        StepError::read(e)
    }
}

impl From<crate::db::DbError> for StepError {
    fn from(e: crate::db::DbError) -> Self {
        StepError::read(e)
    }
}

impl From<crate::queue::JobError> for StepError {
    fn from(e: crate::queue::JobError) -> Self {
        match e {
            crate::queue::JobError::Fenced(_) => StepError::LeaseLost,
            crate::queue::JobError::Db(e) => StepError::read(e),
        }
    }
}

impl From<crate::queue::UnreadableOutput> for StepError {
    /// A stored output that does not read fails the export: running the step again over what
    /// it did could not be right.
    fn from(e: crate::queue::UnreadableOutput) -> Self {
        StepError::failed(
            FailureKind::Fatal,
            format!("the record of step {} cannot be read", e.step),
            e,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_storage_says_so() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let StepError::Failed { public, .. } = StepError::write(full) else {
            unreachable!()
        };
        assert_eq!(
            public,
            "writing the export file to storage failed: the storage is full"
        );
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let StepError::Failed { public, .. } = StepError::write(other) else {
            unreachable!()
        };
        assert_eq!(public, "writing the export file to storage failed");
    }
}
