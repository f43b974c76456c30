//! How much host memory one invocation may make the sidecar hold on its
//! behalf, outside its own linear memory: resource-table handles (each
//! `wasi:http` `fields` and outgoing body holds host memory) and the
//! `wasi:http` requests and responses it has open. Both are derived from
//! the policy's `[limits] memory`, half each, so that what one invocation
//! makes the host hold is at most its `memory` plus [`HANDLE_FLOOR_BYTES`]
//! plus one request's `max_request` + `max_response`.
//!
//! Why counted per invocation: fuel for host calls is reset on every call
//! and a resource lives until the invocation ends, so a guest that
//! multiplies small objects (fields, clones, bodies, unsent requests)
//! would otherwise hold gigabytes.

/// Largest in-memory size of one `wasi:http` `fields` resource
/// (`WasiHttpCtx::set_field_size_limit`; wasmtime's default is 128 KiB).
/// The custom door's own bound on guest headers is 64 × 8 KiB values, but
/// headers past 64 KiB are refused by most servers anyway.
pub const FIELD_SIZE_LIMIT: usize = 64 * 1024;
/// Largest write to an outgoing body (`p2_outgoing_body_chunk_size`).
pub const OUTGOING_BODY_CHUNK: usize = 64 * 1024;
/// Writes an outgoing body buffers before the guest must wait
/// (`p2_outgoing_body_buffer_chunks`; the channel holds one more).
pub const OUTGOING_BODY_CHUNKS: usize = 1;
/// The most host memory one table handle can hold: an outgoing body's
/// buffered chunks (a `fields` holds at most [`FIELD_SIZE_LIMIT`]).
pub const MAX_BYTES_PER_HANDLE: usize = (OUTGOING_BODY_CHUNKS + 1) * OUTGOING_BODY_CHUNK;
/// Handles an invocation always gets, whatever its memory: enough for a
/// `wasi:http/proxy` component serving one request while it sends a few.
pub const MIN_HANDLES: usize = 128;
/// The constant part of the bound: [`MIN_HANDLES`] handles of
/// [`MAX_BYTES_PER_HANDLE`] (16 MiB).
pub const HANDLE_FLOOR_BYTES: usize = MIN_HANDLES * MAX_BYTES_PER_HANDLE;
/// Open `wasi:http` requests (sent, or with a response not yet dropped)
/// an invocation may have at once, at most, whatever its memory.
pub const MAX_OPEN_REQUESTS: usize = 64;
/// Longest method or authority a guest may set on an `outgoing-request`:
/// a real method is a short token and a real authority a host name (at
/// most 253 bytes) and a port, so 1 KiB keeps every one while a handle
/// stays well within [`MAX_BYTES_PER_HANDLE`].
pub const MAX_REQUEST_STRING: usize = 1024;

/// Resource-table entries one invocation may have: half its memory in
/// handles of [`MAX_BYTES_PER_HANDLE`], at least [`MIN_HANDLES`].
pub fn max_handles(memory: u64) -> usize {
    let half = usize::try_from(memory / 2).unwrap_or(usize::MAX);
    (half / MAX_BYTES_PER_HANDLE).max(MIN_HANDLES)
}

/// `wasi:http` requests one invocation may have open: half its memory in
/// requests of `max_request` + `max_response` (each is buffered whole),
/// at least one, at most [`MAX_OPEN_REQUESTS`].
pub fn max_open_requests(memory: u64, max_request: u64, max_response: u64) -> usize {
    let per_request = max_request.saturating_add(max_response).max(1);
    let fits = usize::try_from((memory / 2) / per_request).unwrap_or(usize::MAX);
    fits.clamp(1, MAX_OPEN_REQUESTS)
}

/// The bound this module promises for one invocation, in bytes: handles
/// and open requests together.
pub fn host_bytes_bound(memory: u64, max_request: u64, max_response: u64) -> u64 {
    let handles = max_handles(memory) as u64 * MAX_BYTES_PER_HANDLE as u64;
    let per_request = max_request.saturating_add(max_response);
    handles + max_open_requests(memory, max_request, max_response) as u64 * per_request
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_bound_is_memory_plus_a_constant() {
        let (request, response) = (MIB, 4 * MIB);
        for memory in [2 * MIB, 16 * MIB, 64 * MIB, 512 * MIB, 4096 * MIB] {
            let bound = host_bytes_bound(memory, request, response);
            let constant = HANDLE_FLOOR_BYTES as u64 + request + response;
            assert!(bound <= memory + constant, "{memory}: {bound}");
        }
        assert_eq!(HANDLE_FLOOR_BYTES, 16 << 20);
    }

    #[test]
    fn table_sizes() {
        assert_eq!(max_handles(2 * MIB), MIN_HANDLES);
        assert_eq!(max_handles(64 * MIB), 256);
        assert_eq!(max_open_requests(2 * MIB, MIB, 4 * MIB), 1);
        assert_eq!(max_open_requests(64 * MIB, MIB, 4 * MIB), 6);
        assert_eq!(max_open_requests(4096 * MIB, 1, 1), MAX_OPEN_REQUESTS);
    }
}
