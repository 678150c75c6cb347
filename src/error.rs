//! The library's error type: one enum whose messages name the thing that was wrong.
//!
//! Messages are lower-case and say what to do where there is something to do. The CLI
//! maps each variant to an exit code through [`Error::exit_code`]; nothing here prints.

use std::fmt;

/// Every failure the library reports.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused the connection.
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),

    /// A statement failed on the server or the connection broke mid-way.
    #[error("{}", DbMessage(.0))]
    Db(#[from] tokio_postgres::Error),

    /// The `pgconductor` schema is not installed.
    #[error("schema pgconductor is not installed in this database: run pgc migrate")]
    SchemaMissing,

    /// The schema is older than this build of pgc expects.
    #[error("schema pgconductor is at version {found}, this pgc needs {needed}: run pgc migrate")]
    SchemaBehind {
        /// The highest applied migration.
        found: i32,
        /// The highest migration this build embeds.
        needed: i32,
    },

    /// The schema is newer than this build of pgc knows.
    #[error(
        "schema pgconductor is at version {found}, newer than this pgc knows ({known}): upgrade pgc"
    )]
    SchemaAhead {
        /// The highest applied migration.
        found: i32,
        /// The highest migration this build embeds.
        known: i32,
    },

    /// An applied migration's recorded checksum differs from the embedded file.
    #[error(
        "migration {version} ({name}) was applied with a different checksum: the file changed after it ran; restore it (migrations are forward-only)"
    )]
    ChecksumMismatch {
        /// Migration number.
        version: i32,
        /// Migration name.
        name: String,
    },

    /// The user gave something pgc cannot accept (exit code 2).
    #[error("{0}")]
    Invalid(String),

    /// No execution has this id.
    #[error("no execution with id {0}")]
    NotFound(uuid::Uuid),

    /// No execution belongs to this trace id.
    #[error("no execution in trace {0}")]
    TraceNotFound(String),

    /// The execution has already finished, so it cannot be changed.
    #[error("execution {id} has already finished ({status})")]
    Finished {
        /// Execution id.
        id: uuid::Uuid,
        /// Its final status.
        status: String,
    },

    /// The database kept changing under a retried operation (a race lost several times).
    #[error("{0}")]
    Contended(String),

    /// Reading a file or a stream failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error: 2 for bad input (including malformed
    /// connection settings), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        use crate::db::ConnectError;
        match self {
            Error::Invalid(_)
            | Error::Connect(
                ConnectError::InvalidUrl(_)
                | ConnectError::InvalidEnv { .. }
                | ConnectError::InvalidSettings(_),
            ) => 2,
            _ => 1,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders a tokio-postgres error on one line: the server's message and detail when there
/// is one, the driver's text otherwise.
struct DbMessage<'a>(&'a tokio_postgres::Error);

impl fmt::Display for DbMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(f, "database error: {}", db.message())?;
            if let Some(detail) = db.detail() {
                write!(f, " ({detail})")?;
            }
            Ok(())
        } else if self.0.is_closed() {
            write!(f, "the database connection closed unexpectedly")
        } else {
            write!(f, "database error: {}", self.0)
        }
    }
}
