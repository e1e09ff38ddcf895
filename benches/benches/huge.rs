//! Huge vmalloc against 4 KiB pages: `vmalloc_huge(1 GiB)` + `vfree` + purge against
//! `vmalloc(1 GiB)` + `vfree` + purge, on the default instance (x86_64's vmalloc range over
//! an 8 GiB `MAP_NORESERVE` mmap arena; the data frames are never touched, so the work
//! measured is the frame allocator, the page tables and the KVA layer).
//!
//! Besides the times, the bench prints what each mapping costs in page tables and in TLB
//! reach, measured once before the timing: the page-table frames the area needs (frames in
//! use minus the data frames), and, in the TLB model, the page walks (misses) and the
//! entries left after one CPU touches one byte of every 4 KiB page of the area.
//!
//! Both sides run in one process, one after the other in each group, so they see the same
//! machine load; the ratio of their times is what BENCHMARKS.md records.
//!
//! Run: `cargo bench -p benches --bench huge -- --warm-up-time 1 --measurement-time 5`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pagetable::{PAGE_SIZE, TlbEntries, TlbFlush};
use vmalloc::{Gfp, PMD_SIZE, Vmalloc, VmallocConfig};

/// The area: 1 GiB.
const SIZE: u64 = 1 << 30;

/// What one mapping of the area costs, measured on a fresh instance.
fn footprint(huge: bool) -> (u64, u64, TlbEntries) {
    let vm = Vmalloc::new(VmallocConfig::default()).expect("instance");
    let used0 = vm.frame_stats().used;
    let a = if huge {
        vm.vmalloc_huge(SIZE, Gfp::KERNEL)
    } else {
        vm.vmalloc(SIZE)
    }
    .expect("1 GiB");
    let tables = vm.frame_stats().used - used0 - SIZE / PAGE_SIZE;
    let model = vm.tlb_model().expect("the TLB model");
    let misses0 = model.stats().misses;
    let mut b = [0u8];
    for off in (0..SIZE).step_by(PAGE_SIZE as usize) {
        vm.vread(a + off, &mut b);
    }
    let walks = model.stats().misses - misses0;
    let entries = model.entries();
    vm.vfree(a).expect("vfree");
    (tables, walks, entries)
}

fn bench(c: &mut Criterion) {
    for huge in [false, true] {
        let (tables, walks, entries) = footprint(huge);
        println!(
            "huge/footprint {}: page-table frames {tables}, TLB-model walks to touch every \
             page {walks}, entries held after {} (4 KiB) + {} (2 MiB)",
            if huge { "2MiB" } else { "4KiB" },
            entries.small,
            entries.huge
        );
    }
    let vm = Vmalloc::new(VmallocConfig::default()).expect("instance");
    let mut g = c.benchmark_group("huge/map_unmap_1GiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("4KiB", |b| {
        b.iter(|| {
            let a = vm.vmalloc(black_box(SIZE)).expect("vmalloc");
            vm.vfree(a).expect("vfree");
            vm.purge_vmap_area_lazy();
        })
    });
    g.bench_function("2MiB", |b| {
        b.iter(|| {
            let a = vm
                .vmalloc_huge(black_box(SIZE), Gfp::KERNEL)
                .expect("vmalloc_huge");
            debug_assert_eq!(a.as_u64() % PMD_SIZE, 0);
            vm.vfree(a).expect("vfree");
            vm.purge_vmap_area_lazy();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
