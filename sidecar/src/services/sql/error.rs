//! Errors of the SQL gateway, one variant per guest-visible kind.
//!
//! Every message is safe to log and to hand to a guest as it is: text that
//! comes from the statement or from the database (its error message, a
//! constraint's name) is escaped and bounded where the error is built
//! ([`SqlError::from_database`]), never passed through raw.

use std::time::Duration;

use crate::ErrorKind;
use crate::guest_text;

use super::Denial;

/// Why a SQL call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The policy refuses the statement (or the alias is not granted).
    #[error("{0}")]
    Denied(String),
    /// Bad SQL, bad parameters, a value the gateway cannot carry.
    #[error("{0}")]
    InvalidInput(String),
    /// A result past `max_rows` or `max_result_bytes`: refused, never
    /// truncated.
    #[error("{0}")]
    TooLarge(String),
    /// The plugin holds all the connections its share allows.
    #[error("{message}")]
    RateLimited {
        /// Why.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The statement ran past its deadline and was stopped.
    #[error("{0}")]
    Timeout(String),
    /// A constraint refused the write (SQLSTATE class 23, SQLite
    /// `SQLITE_CONSTRAINT`).
    #[error("{0}")]
    Conflict(String),
    /// The database is down, or its pool has no connection for now.
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
        /// When to try again, if known.
        retry_after: Option<Duration>,
    },
    /// A bug in the gateway.
    #[error("{0}")]
    Internal(String),
}

impl SqlError {
    /// The kind a guest sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SqlError::Denied(_) => ErrorKind::Denied,
            SqlError::InvalidInput(_) => ErrorKind::InvalidInput,
            SqlError::TooLarge(_) => ErrorKind::QuotaExceeded,
            SqlError::RateLimited { .. } => ErrorKind::RateLimited,
            SqlError::Timeout(_) => ErrorKind::Timeout,
            SqlError::Conflict(_) => ErrorKind::Conflict,
            SqlError::Unavailable { .. } => ErrorKind::Unavailable,
            SqlError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The wait a guest is told to honour, for the transient kinds.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SqlError::RateLimited { retry_after, .. } => Some(*retry_after),
            SqlError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A denial of the statement check: malformed statements are
    /// `invalid-input`, the rest `denied` (the message names the construct).
    pub fn from_denial(denial: Denial) -> SqlError {
        if denial.is_invalid_input() {
            SqlError::InvalidInput(denial.message)
        } else {
            SqlError::Denied(denial.message)
        }
    }

    /// An error SQLite reported on a connection the gateway steps itself
    /// ([`super::sqlite_step`]): its extended result code and message, as
    /// [`SqlError::from_database`] reads them from sqlx.
    pub fn from_sqlite(code: i32, message: &str) -> SqlError {
        database_error(true, &code.to_string(), message)
    }

    /// An error sqlx reports while running a statement, by what the
    /// database said (SQLSTATE or SQLite's code). The database's own text
    /// is kept, escaped and bounded: it may quote the guest's values.
    pub fn from_database(error: sqlx::Error) -> SqlError {
        let text = |e: &dyn std::fmt::Display| guest_text::escape(&e.to_string(), guest_text::LINE);
        match &error {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
                database_error(sqlite, &code, db.message())
            }
            sqlx::Error::PoolTimedOut => SqlError::Unavailable {
                message: "no database connection free within the acquire timeout".into(),
                retry_after: Some(RETRY_BUSY),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => SqlError::Unavailable {
                message: format!("database unavailable: {}", text(&error)),
                retry_after: Some(RETRY_UNAVAILABLE),
            },
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
                SqlError::InvalidInput(format!("a value cannot be carried: {}", text(&error)))
            }
            _ => SqlError::Internal(format!("database error: {}", text(&error))),
        }
    }
}

/// What a transient refusal tells the guest to wait when the pool or the
/// plugin's share is full.
pub const RETRY_BUSY: Duration = Duration::from_millis(100);
/// What `unavailable` tells the guest to wait when the database is down.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

enum Class {
    Constraint,
    TooLarge,
    Timeout,
    Denied,
    Unavailable,
    Busy,
    Input,
}

impl Class {
    /// The door's error of this class, with the database's own `message`
    /// (escaped and bounded).
    fn error(self, message: String) -> SqlError {
        match self {
            Class::Constraint => SqlError::Conflict(format!("constraint violated: {message}")),
            Class::TooLarge => SqlError::TooLarge(format!(
                "the statement needs more than the database allows (max_value_bytes, the SQLite \
                 heap limit, a function's cost bound, the length of its compiled program, \
                 max_database_bytes): {message}"
            )),
            Class::Timeout => SqlError::Timeout(format!("statement stopped at its deadline: {message}")),
            Class::Denied => SqlError::Denied(format!("the database refused the statement: {message}")),
            Class::Unavailable => SqlError::Unavailable {
                message: format!("database unavailable: {message}"),
                retry_after: Some(RETRY_UNAVAILABLE),
            },
            Class::Busy => {
                SqlError::RateLimited { message: format!("database busy: {message}"), retry_after: RETRY_BUSY }
            }
            Class::Input => SqlError::InvalidInput(format!("the database refused the statement: {message}")),
        }
    }
}

/// The door's error for what the database said: its code (SQLSTATE, or
/// SQLite's extended result code as text) and its own message, escaped
/// and bounded (it may quote the guest's values).
fn database_error(sqlite: bool, code: &str, message: &str) -> SqlError {
    // SQLite reports a function its authorizer refused as a plain error
    // (code 1), not SQLITE_AUTH, in these words.
    let refused_function = sqlite && message.starts_with("not authorized to use function");
    let class = if refused_function { Class::Denied } else { classify(sqlite, code) };
    class.error(guest_text::escape(message, guest_text::LINE))
}

/// PostgreSQL's SQLSTATE (five characters) or SQLite's extended result
/// code (a number; sqlx reports it as text).
fn classify(sqlite: bool, code: &str) -> Class {
    if sqlite {
        let number = code.parse::<u32>().unwrap_or(1);
        // SQLite: the primary code is the low byte.
        return match number & 0xff {
            19 => Class::Constraint,                 // SQLITE_CONSTRAINT
            18 | 7 | 13 => Class::TooLarge, // SQLITE_TOOBIG (max_value_bytes), SQLITE_NOMEM (heap limit), SQLITE_FULL (max_database_bytes, or the disk)
            9 => Class::Timeout,            // SQLITE_INTERRUPT (the progress handler)
            23 => Class::Denied,            // SQLITE_AUTH (the authorizer)
            5 | 6 => Class::Busy,           // SQLITE_BUSY, SQLITE_LOCKED
            10 | 14 | 26 | 11 => Class::Unavailable, // IOERR, CANTOPEN, NOTADB, CORRUPT
            _ => Class::Input,
        };
    }
    match code.get(..2) {
        Some("23") => Class::Constraint,
        // query_canceled: statement_timeout.
        _ if code == "57014" => Class::Timeout,
        Some("42") if code == "42501" => Class::Denied, // insufficient_privilege
        // Connection, resources, operator intervention, system errors.
        Some("08" | "53" | "57" | "58") => Class::Unavailable,
        // Serialization failure, deadlock: retry.
        Some("40") => Class::Busy,
        _ => Class::Input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a malformed statement (too large, empty, unparsable) is
    /// `invalid-input`; every other denial is `denied`, its message whole.
    #[test]
    fn denials_are_invalid_input_only_when_malformed() {
        use super::super::denial::Rule;
        for rule in [Rule::TooLarge, Rule::Empty, Rule::Unparsable] {
            assert!(
                matches!(SqlError::from_denial(Denial::new(rule, "m".into())), SqlError::InvalidInput(m) if m == "m")
            );
        }
        for rule in [Rule::Table, Rule::Stacked, Rule::Unsupported, Rule::Function, Rule::TooDeep] {
            let denial = Denial::new(rule, "not granted".into());
            assert_eq!(denial.to_string(), "not granted");
            assert!(matches!(SqlError::from_denial(denial), SqlError::Denied(m) if m == "not granted"), "{rule:?}");
        }
    }

    #[test]
    fn codes_are_classified() {
        for (code, kind) in [
            ("23505", ErrorKind::Conflict),
            ("23503", ErrorKind::Conflict),
            ("57014", ErrorKind::Timeout),
            ("42501", ErrorKind::Denied),
            ("42601", ErrorKind::InvalidInput),
            ("08006", ErrorKind::Unavailable),
            ("57P01", ErrorKind::Unavailable),
            ("40P01", ErrorKind::RateLimited),
            ("sqlite 2067", ErrorKind::Conflict),
            ("sqlite 1555", ErrorKind::Conflict),
            ("sqlite 9", ErrorKind::Timeout),
            ("sqlite 23", ErrorKind::Denied),
            ("sqlite 1", ErrorKind::InvalidInput),
            ("sqlite 5", ErrorKind::RateLimited),
            ("sqlite 14", ErrorKind::Unavailable),
            ("sqlite 18", ErrorKind::QuotaExceeded),
            ("sqlite 7", ErrorKind::QuotaExceeded),
            ("sqlite 13", ErrorKind::QuotaExceeded),
        ] {
            let (sqlite, code) = match code.strip_prefix("sqlite ") {
                Some(code) => (true, code),
                None => (false, code),
            };
            let error = match classify(sqlite, code) {
                Class::Constraint => SqlError::Conflict(String::new()),
                Class::TooLarge => SqlError::TooLarge(String::new()),
                Class::Timeout => SqlError::Timeout(String::new()),
                Class::Denied => SqlError::Denied(String::new()),
                Class::Unavailable => SqlError::Unavailable { message: String::new(), retry_after: None },
                Class::Busy => SqlError::RateLimited { message: String::new(), retry_after: RETRY_BUSY },
                Class::Input => SqlError::InvalidInput(String::new()),
            };
            assert_eq!(error.kind(), kind, "{code}");
        }
    }

    /// sqlx's errors by what they say about the database: what it said
    /// itself (a real SQLite error: a constraint), no connection free, the
    /// connection or server gone, a value that cannot be carried, and
    /// anything else.
    #[tokio::test]
    async fn sqlx_errors_are_told_by_their_kind() {
        use sqlx::Connection as _;
        let mut connection = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&mut connection).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut connection).await.unwrap();
        let duplicate = sqlx::query("INSERT INTO t VALUES (1)").execute(&mut connection).await.unwrap_err();
        let gone = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for (error, kind) in [
            (duplicate, ErrorKind::Conflict),
            (sqlx::Error::PoolTimedOut, ErrorKind::Unavailable),
            (sqlx::Error::Io(gone()), ErrorKind::Unavailable),
            (sqlx::Error::Protocol("cut".into()), ErrorKind::Unavailable),
            (sqlx::Error::PoolClosed, ErrorKind::Unavailable),
            (sqlx::Error::WorkerCrashed, ErrorKind::Unavailable),
            (sqlx::Error::Decode("no".into()), ErrorKind::InvalidInput),
            (sqlx::Error::Encode("no".into()), ErrorKind::InvalidInput),
            (sqlx::Error::RowNotFound, ErrorKind::Internal),
        ] {
            let text = error.to_string();
            let told = SqlError::from_database(error);
            assert_eq!(told.kind(), kind, "{text}: {told:?}");
            let retry = matches!(told, SqlError::Unavailable { .. }).then_some(());
            assert_eq!(told.retry_after().map(drop), retry, "{text}");
        }
    }
}
