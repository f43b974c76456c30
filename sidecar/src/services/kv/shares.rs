//! A semaphore per plugin name, made on first use: each plugin's share of
//! something all plugins draw on (the write queue's bytes, the PostgreSQL
//! backend's connections for reads), so that one plugin waits on its own
//! share instead of in front of everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// One share of `size` permits per plugin name. Names come from policy
/// files, never from a guest, so the map is as large as the plugins that
/// used it.
#[derive(Debug)]
pub struct PluginShares {
    size: usize,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl PluginShares {
    /// Shares of `size` permits each.
    pub fn new(size: usize) -> PluginShares {
        PluginShares { size, shares: Mutex::default() }
    }

    /// `plugin`'s share.
    pub fn of(&self, plugin: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = shares.get(plugin) {
            return Arc::clone(share);
        }
        let share = Arc::new(Semaphore::new(self.size));
        shares.insert(plugin.to_string(), Arc::clone(&share));
        share
    }
}
