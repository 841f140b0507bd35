//! A node's work per event does not grow with shards nothing touches.
//!
//! The same seed runs at two sizes, the second with four times the shards. Once every shard
//! is ACTIVE and the data plane is quiet, the cluster idles for a while with no faults, no
//! client and no workload: only its own ticks, heartbeats, reports and lease grants. Over
//! that tail, the work of the nodes per event is measured as allocations (a global allocator
//! of this test counts them per thread): the mean and the largest event must stay about the
//! same at four times the shards. A walk over every shard on a heartbeat, a report or a
//! grant allocates per shard in this code base, and would show. A walk that allocates
//! nothing would not: this measure is blind to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use tandem_sim::{run_metered, SimConfig, StepCosts};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is passed to the system allocator as it came.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Seed 38 at scale (16 nodes), with `shards` wide shards, no faults and five
/// seconds of idle tail.
fn idle_costs(shards: usize) -> StepCosts {
    let config = SimConfig {
        nodes: 16,
        wide_shards: shards,
        fault_duration: Duration::ZERO,
        idle_tail: Duration::from_secs(5),
        ..SimConfig::at_scale(38)
    };
    let started = std::time::Instant::now();
    match run_metered(config, allocations) {
        Ok((report, costs)) => {
            println!(
                "{shards} shards: {costs} (simulated {:.1} s in {:.1?})",
                report.end_time_us as f64 / 1e6,
                started.elapsed()
            );
            costs
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn idle_work_per_event_does_not_grow_with_shards() {
    let small = idle_costs(1_000);
    let large = idle_costs(4_000);
    for costs in [&small, &large] {
        // Four measured seconds of 16 nodes' ticks alone are thousands of events.
        assert!(costs.events > 10_000, "the tail ran: {costs}");
        assert!(costs.total > 0, "the meter counts: {costs}");
    }
    // 3,000 more shards: a walk over them on any event would cost thousands more. The mean
    // may grow a little: a data-plane tick looks at a slice of every replica (a sweep in
    // 1/SWEEP_TICKS parts, so that a missed timer is found): 10.3 against 12.7 allocations.
    assert!(
        large.mean() <= small.mean() * 1.25 + 5.0,
        "the mean event costs more with 4x the shards: {small} vs {large}"
    );
    assert!(
        large.max.0 <= small.max.0 * 2 + 1_000,
        "the costliest event costs more with 4x the shards: {small} vs {large}"
    );
}
