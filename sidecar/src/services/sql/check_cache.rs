//! The statements a plugin's grant has passed, kept so that a statement
//! the plugin sends again is not parsed and walked again: the check is a
//! function of the grant, the door and the statement's text alone, and the
//! cache lives in the grant (built at each load), so a reload that changes
//! the grant starts empty. Only passes are kept: a refused statement is
//! checked every time.
//!
//! Bounded per grant: at most [`MAX_ENTRIES`] statements of at most
//! [`MAX_STATEMENT`] bytes each (≈ 1 MiB with their results); when full it
//! is emptied, so a plugin that sends ever new statements costs what it
//! would without it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Checked, Door};

/// Statements kept per grant.
pub const MAX_ENTRIES: usize = 256;
/// Longest statement kept, in bytes.
pub const MAX_STATEMENT: usize = 4096;

/// One grant's passed statements, by door and text.
#[derive(Debug, Default)]
pub struct CheckCache {
    /// One map per door (the check depends on it).
    passed: Mutex<[HashMap<Box<str>, Checked>; 2]>,
}

fn slot(door: Door) -> usize {
    match door {
        Door::Gatehouse => 0,
        Door::Spin => 1,
    }
}

impl CheckCache {
    /// What the check made of `statement` through `door`, if it passed
    /// before.
    pub fn get(&self, door: Door, statement: &str) -> Option<Checked> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed[slot(door)].get(statement).cloned()
    }

    /// Keeps a pass, if the statement is short enough.
    pub fn put(&self, door: Door, statement: &str, checked: &Checked) {
        if statement.len() > MAX_STATEMENT {
            return;
        }
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        if passed.iter().map(HashMap::len).sum::<usize>() >= MAX_ENTRIES {
            passed.iter_mut().for_each(HashMap::clear);
        }
        passed[slot(door)].insert(Box::from(statement), checked.clone());
    }

    /// Statements kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.passed.lock().unwrap_or_else(|p| p.into_inner()).iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sql::{Dialect, SqlPolicy, check_for};

    fn checked(statement: &str) -> Checked {
        let policy = SqlPolicy::from_toml("statements = [\"select\"]\n[tables]\nt = [\"select\"]\n").unwrap();
        check_for(Door::Gatehouse, Dialect::Sqlite, &policy, statement).unwrap()
    }

    /// A pass is found again by its door and exact text only; long
    /// statements are not kept; a full cache starts over rather than grow.
    #[test]
    fn passes_are_kept_by_door_and_text_within_bounds() {
        let cache = CheckCache::default();
        let one = checked("SELECT * FROM t WHERE a = ?");
        cache.put(Door::Gatehouse, "SELECT * FROM t WHERE a = ?", &one);
        assert_eq!(cache.get(Door::Gatehouse, "SELECT * FROM t WHERE a = ?"), Some(one.clone()));
        assert_eq!(cache.get(Door::Spin, "SELECT * FROM t WHERE a = ?"), None, "another door");
        assert_eq!(cache.get(Door::Gatehouse, "select * FROM t WHERE a = ?"), None, "another text");

        let long = format!("SELECT * FROM t WHERE a = ? {}", " ".repeat(MAX_STATEMENT));
        cache.put(Door::Gatehouse, &long, &one);
        assert_eq!(cache.get(Door::Gatehouse, &long), None);
        let at_bound = format!("SELECT * FROM t WHERE a = ?{}", " ".repeat(MAX_STATEMENT - 27));
        assert_eq!(at_bound.len(), MAX_STATEMENT);
        cache.put(Door::Gatehouse, &at_bound, &one);
        assert!(cache.get(Door::Gatehouse, &at_bound).is_some());

        for i in 0..MAX_ENTRIES - 2 {
            cache.put(Door::Gatehouse, &format!("SELECT * FROM t WHERE a = {i}"), &one);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        cache.put(Door::Spin, "SELECT a FROM t", &one);
        assert_eq!(cache.len(), 1, "full: emptied, then the new pass kept");
        assert!(cache.get(Door::Spin, "SELECT a FROM t").is_some());
    }
}
