//! The no-op plugin: returns its input, built without the standard library
//! so that its component imports nothing but the shared types. The
//! invocation benchmark uses it to measure the sidecar's own cost per call,
//! free of any guest start-up work.
#![no_std]

extern crate alloc;

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

struct Noop;

impl Guest for Noop {
    fn handle(input: Document) -> Result<Document, Error> {
        Ok(input)
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: String::from("noop"),
            version: String::from(env!("CARGO_PKG_VERSION")),
            description: String::from("Returns its input; no standard library"),
        }
    }
}

export!(Noop);

/// Every invocation runs in a fresh instance, so memory is never reused
/// within one: a bump allocator is enough. It starts in a static arena that
/// is part of the initial memory image, and grows linear memory only when
/// the arena is used up, because each `memory.grow` costs the host two
/// `mprotect` calls (see BENCHMARKS.md).
struct Bump;

const PAGE: usize = 64 * 1024;
const ARENA_SIZE: usize = 16 * 1024;

static mut ARENA: [u8; ARENA_SIZE] = [0; ARENA_SIZE];
static mut NEXT: usize = 0;
static mut END: usize = 0;

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: wasm guests are single-threaded.
        unsafe {
            if NEXT == 0 {
                NEXT = core::ptr::addr_of_mut!(ARENA) as usize;
                END = NEXT + ARENA_SIZE;
                return self.alloc(layout);
            }
            let start = (NEXT + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size();
            if end > END {
                let pages = layout.size().div_ceil(PAGE) + 1;
                let old = core::arch::wasm32::memory_grow(0, pages);
                if old == usize::MAX {
                    return core::ptr::null_mut();
                }
                NEXT = old * PAGE;
                END = NEXT + pages * PAGE;
                return self.alloc(layout);
            }
            NEXT = end;
            start as *mut u8
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;

/// The canonical ABI's allocation hook. With the standard library it comes
/// from wasi-libc; without it, the guest provides its own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the caller passes a valid alignment and, when `old_len` is
    // non-zero, a block previously returned by this function.
    unsafe {
        let layout = Layout::from_size_align_unchecked(new_len, align);
        let ptr = ALLOCATOR.alloc(layout);
        if ptr.is_null() {
            core::arch::wasm32::unreachable();
        }
        if old_len != 0 {
            core::ptr::copy_nonoverlapping(old_ptr, ptr, old_len.min(new_len));
        }
        ptr
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
