//! What one invocation may take from the host: memory and tables across
//! every instance inside the component, and how many core instances,
//! memories and tables it may have at all.
//!
//! Why per invocation and not per memory: a component can contain many
//! core instances, each with its own linear memory. A limit checked per
//! memory lets a 40-instance component take 40 times the policy's memory;
//! the limiter below adds every memory of the store together. The counts
//! are also enforced by the pooling allocator (see `engine`), so one
//! invocation can never take more than its share of the shared pool.

/// Core instances one component may create (a Rust component has about
/// three: the program and two small shims; Python ones a dozen or so).
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Linear memories one component may have (one is usual; two leaves room
/// for composed components).
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may have.
pub const MAX_TABLES_PER_COMPONENT: u32 = 8;
/// Table elements one invocation may have across all its tables.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The `ResourceLimiter` of one invocation's store.
pub(crate) struct InvocationLimiter {
    max_memory: usize,
    memory: usize,
    table_elements: usize,
    exceeded: bool,
}

impl InvocationLimiter {
    pub(crate) fn new(max_memory: u64) -> Self {
        InvocationLimiter {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            memory: 0,
            table_elements: 0,
            exceeded: false,
        }
    }

    /// Whether a request for memory was refused, so that the trap it
    /// usually leads to (allocation failure aborts a Rust guest) is
    /// reported as `quota-exceeded`.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for InvocationLimiter {
    /// Also asked for each memory's initial size (with `current` 0), so
    /// `memory` is the sum over every memory the store has created.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_sub(current).saturating_add(desired);
        if total > self.max_memory {
            self.exceeded = true;
            return Ok(false);
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_COMPONENT as usize
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn memory_is_counted_across_memories() {
        let mut limiter = InvocationLimiter::new(100);
        // Two memories created at 40 bytes each, then one grows.
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(limiter.memory_growing(40, 60, None).unwrap());
        assert!(!limiter.exceeded());
        // A third memory of 1 byte would bring the total past 100.
        assert!(!limiter.memory_growing(0, 1, None).unwrap());
        assert!(limiter.exceeded());
    }

    #[test]
    fn table_elements_are_counted_across_tables() {
        let mut limiter = InvocationLimiter::new(100);
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(!limiter.table_growing(0, 1, None).unwrap());
    }
}
