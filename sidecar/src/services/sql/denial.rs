//! Why a statement was refused: a [`Rule`] to branch on, and a message for
//! people that names the construct, the rule and where it was found. Names
//! taken from the statement are escaped and bounded before they enter the
//! message, so it can go to a log line, an error a guest sees, or a
//! terminal as it is.

use std::fmt;

/// The rule a statement broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Longer than [`super::MAX_STATEMENT`]: not parsed.
    TooLarge,
    /// No statement at all (empty, only comments or `;`).
    Empty,
    /// The dialect's parser refused it (or nested deeper than it allows).
    Unparsable,
    /// More than one statement in one call.
    Stacked,
    /// Expressions or sub-queries nested past [`super::MAX_DEPTH`].
    TooDeep,
    /// More than [`super::MAX_FUNCTION_CALLS`] function calls or
    /// [`super::MAX_OPERATORS`] operators.
    TooManyCalls,
    /// A statement kind the policy does not list in `statements`.
    StatementKind,
    /// A statement never allowed (DDL, `SET`, `COPY`, `PRAGMA`, ...).
    NeverAllowed,
    /// `BEGIN`/`COMMIT`/`END`/`ROLLBACK` where the door or policy does not
    /// allow them, or in a form that is not a plain one.
    TransactionControl,
    /// `UPDATE` or `DELETE` without `WHERE`.
    WithoutWhere,
    /// A table not granted for this kind of access.
    Table,
    /// A column not granted, or `*` on a table whose columns are restricted.
    Column,
    /// A schema other than the one the gateway fixes, or a system table.
    Schema,
    /// A function outside the allow-list.
    Function,
    /// A function in `FROM` that the policy does not list.
    TableFunction,
    /// A literal under `params_only`, or a literal form the dialect check
    /// does not accept.
    Literal,
    /// A placeholder of another dialect, or mixed placeholder styles.
    Placeholder,
    /// `FOR UPDATE`/`FOR SHARE` without `row_locking`.
    RowLocking,
    /// `SELECT … INTO`.
    SelectInto,
    /// A name the databases could read differently from the checker (a
    /// CTE referenced before it is defined, `U&` escapes, over-long names).
    Ambiguous,
    /// A construct the checker does not know: refused (fail closed).
    Unsupported,
}

/// A refused statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denial {
    /// The rule it broke.
    pub rule: Rule,
    /// What was refused and why, with the place (`in WHERE › sub-query`);
    /// statement text in it is escaped and bounded.
    pub message: String,
}

impl Denial {
    pub(crate) fn new(rule: Rule, message: String) -> Denial {
        Denial { rule, message }
    }

    /// Whether the statement is malformed rather than refused: the
    /// gateway answers `invalid-input` for these and `denied` otherwise.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self.rule, Rule::TooLarge | Rule::Empty | Rule::Unparsable)
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A name from the statement, as it may appear in a message.
pub(crate) fn shown(name: &str) -> String {
    crate::guest_text::escape(name, crate::guest_text::SHORT)
}
