//! Which PostgreSQL errors are worth retrying. One function, tested on its own.
//!
//! Retriable: the connection is gone or never came up, the server is starting, stopping or
//! out of resources, or a transaction lost a serialization or deadlock race. Everything else
//! (a constraint, a type, a permission, a missing table) would fail again the same way:
//! it is permanent, and the projection stops rather than skip a row.

use tokio_postgres::error::SqlState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Retriable,
    Permanent,
}

/// Classifies an error by its SQLSTATE; `None` (no SQLSTATE) means an I/O or protocol
/// failure of the connection itself, which is retriable.
pub fn classify_code(code: Option<&SqlState>) -> Class {
    let Some(code) = code else {
        return Class::Retriable;
    };
    let c = code.code();
    let retriable_class = ["08", "53", "57", "58"].iter().any(|p| c.starts_with(p));
    let retriable_code = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
    ]
    .iter()
    .any(|s| s == code);
    // 57014 (query canceled) is in class 57 but comes from a statement timeout or an
    // operator's cancel: retrying is still right, the batch was rolled back whole.
    if retriable_class || retriable_code {
        Class::Retriable
    } else {
        Class::Permanent
    }
}

/// An error in words an operator can act on: the server's own message and SQLSTATE when
/// there is one (tokio-postgres's Display says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({}): {}", d.severity(), d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Classifies a client error.
pub fn classify(e: &tokio_postgres::Error) -> Class {
    if e.is_closed() {
        return Class::Retriable;
    }
    classify_code(e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_server_state_errors_are_retriable() {
        for code in [
            None,
            Some(SqlState::CONNECTION_FAILURE),
            Some(SqlState::CONNECTION_EXCEPTION),
            Some(SqlState::ADMIN_SHUTDOWN),
            Some(SqlState::CRASH_SHUTDOWN),
            Some(SqlState::CANNOT_CONNECT_NOW),
            Some(SqlState::TOO_MANY_CONNECTIONS),
            Some(SqlState::DISK_FULL),
            Some(SqlState::T_R_SERIALIZATION_FAILURE),
            Some(SqlState::T_R_DEADLOCK_DETECTED),
            Some(SqlState::IO_ERROR),
        ] {
            assert_eq!(classify_code(code.as_ref()), Class::Retriable, "{code:?}");
        }
    }

    #[test]
    fn data_and_schema_errors_are_permanent() {
        for code in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::CHECK_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::SYNTAX_ERROR,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::RAISE_EXCEPTION,
        ] {
            assert_eq!(classify_code(Some(&code)), Class::Permanent, "{code:?}");
        }
    }
}
