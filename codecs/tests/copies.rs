//! What encoding and decoding bulk bytes costs the heap, counted by a global allocator: a large
//! `Blob` decodes without an allocation (it is a slice of the body), and a body that outgrows
//! the per-thread encode buffer never reallocates it (a `realloc` copies the buffer's whole
//! capacity, written or not). One test, so that nothing else allocates beside it.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
};

use flumen_codec::{Blob, Codec, MsgPack};
use serde_bytes::ByteBuf;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and reallocations `f` makes.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (allocations, reallocations) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        REALLOCATIONS.load(Ordering::SeqCst),
    );
    let value = f();
    (
        value,
        ALLOCATIONS.load(Ordering::SeqCst) - allocations,
        REALLOCATIONS.load(Ordering::SeqCst) - reallocations,
    )
}

#[test]
fn bulk_bytes_cost_the_heap_no_copy_it_can_avoid() {
    let codec = MsgPack::default();
    let blob = Blob::from(vec![5u8; 64 * 1024]);
    for round in 0..4 {
        // A small body first, dropped: the encode buffer is then a partly used chunk that
        // nothing else holds, which `BytesMut` would grow in place.
        drop(codec.encode(&7u32).unwrap());
        // Encoding: a buffer for the body and the header that shares it out, no realloc of the
        // chunk it outgrew.
        let (body, allocations, reallocations) = counted(|| codec.encode(&blob).unwrap());
        assert_eq!(
            reallocations, 0,
            "round {round}: the encode buffer was reallocated"
        );
        assert_eq!(allocations, 2, "round {round}: allocations encoding 64 KiB");
        // Decoding through `decode_body`: the Blob is the body's bytes.
        let (decoded, allocations, _) = counted(|| codec.decode_body::<Blob>(&body).unwrap());
        assert_eq!(decoded, blob);
        assert_eq!(allocations, 0, "round {round}: a Blob decoded with a copy");
        // A `ByteBuf` is a copy: the one allocation a shared Blob saves.
        let (copied, allocations, _) = counted(|| codec.decode_body::<ByteBuf>(&body).unwrap());
        assert_eq!(&copied[..], &blob[..]);
        assert_eq!(
            allocations, 1,
            "round {round}: allocations decoding a ByteBuf"
        );
    }
}
