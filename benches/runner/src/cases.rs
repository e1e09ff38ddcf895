//! The test cases of `lib/test_vmalloc.c`, each as the module defines it, over a
//! [`VmallocImpl`].
//!
//! Ids are the module's: test `i` of its table has id `1 << i`, so a kernel `run_test_mask`
//! selects the same tests here. Ids 256 and 512 (`kvfree_rcu_*_vmalloc_test`) need RCU and have
//! no counterpart; masks may name them, they simply select nothing.
//!
//! Each case returns `Ok(())` for "passed" (the module's 0) and an error describing the first
//! failure otherwise; like the module, a case that fails part-way still frees everything it
//! allocated. `align_shift_alloc_test` is *expected* to fail: it passes when the allocator
//! refuses an alignment it cannot satisfy with a clean "no space"/"invalid" error, after every
//! alignment up to 1 GiB succeeded.
//!
//! `pcpu_alloc_test` has no percpu allocator to call here. Its analogue keeps the module's
//! shape (35,000 small objects, sizes 1..=1024 bytes, alignments 2..=2048, all live at once,
//! then all freed) and takes each object from per-CPU vmap blocks: a one-page `vm_map_ram` of
//! a frame from a small per-worker pool, with a one-byte store at an aligned offset inside it.
//! That is the part of vmalloc the kernel's percpu chunks lean on: many small, long-lived
//! mappings carved from per-CPU state.
//!
//! No shared state: every case works on its worker's own allocations.

use core::fmt;

use crate::params::Params;
use crate::rng::Rng;
use vmalloc_impls::{ImplError, PAGE_SIZE, VmallocImpl};

/// `THREAD_ALIGN` of x86_64 without KASAN: `THREAD_SIZE` = 16 KiB.
pub const THREAD_ALIGN: u64 = 16 << 10;
/// Live areas held by `long_busy_list_alloc_test`.
pub const LONG_BUSY_LIST_LEN: usize = 15_000;
/// Objects held by `pcpu_alloc_test`.
pub const PCPU_OBJECTS: usize = 35_000;
/// Frames each worker maps over and over in `pcpu_alloc_test`.
pub const PCPU_POOL: usize = 8;
/// Alignments up to `1 << ALIGN_SHIFT_MUST_WORK` must succeed in `align_shift_alloc_test`.
pub const ALIGN_SHIFT_MUST_WORK: u32 = 30;

/// What a case needs: the allocator, the parameters, the worker's random numbers.
pub struct Ctx<'a> {
    /// The implementation under test.
    pub imp: &'a dyn VmallocImpl,
    /// The module parameters.
    pub params: &'a Params,
    /// The worker's generator.
    pub rng: &'a mut Rng,
}

/// Why a case failed: the operation and the allocator's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseError(pub String);

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Attach the failing operation to an [`ImplError`].
fn op(what: impl FnOnce() -> String) -> impl FnOnce(ImplError) -> CaseError {
    move |e| CaseError(format!("{}: {e}", what()))
}

/// One test of the module.
#[derive(Debug, Clone, Copy)]
pub struct TestCase {
    /// Position in the module's table (id = `1 << index`).
    pub index: u32,
    /// The module's name.
    pub name: &'static str,
    /// Whether failure is the expected outcome (align_shift_alloc_test).
    pub expected_to_fail: bool,
    /// The body.
    pub run: fn(&mut Ctx<'_>) -> Result<(), CaseError>,
}

impl TestCase {
    /// The module's id (`run_test_mask` bit).
    pub fn id(&self) -> u32 {
        1 << self.index
    }
}

/// The module's table, without the two RCU tests (ids 256 and 512).
pub const TESTS: [TestCase; 9] = [
    TestCase {
        index: 0,
        name: "fix_size_alloc_test",
        expected_to_fail: false,
        run: fix_size_alloc_test,
    },
    TestCase {
        index: 1,
        name: "full_fit_alloc_test",
        expected_to_fail: false,
        run: full_fit_alloc_test,
    },
    TestCase {
        index: 2,
        name: "long_busy_list_alloc_test",
        expected_to_fail: false,
        run: long_busy_list_alloc_test,
    },
    TestCase {
        index: 3,
        name: "random_size_alloc_test",
        expected_to_fail: false,
        run: random_size_alloc_test,
    },
    TestCase {
        index: 4,
        name: "fix_align_alloc_test",
        expected_to_fail: false,
        run: fix_align_alloc_test,
    },
    TestCase {
        index: 5,
        name: "random_size_align_alloc_test",
        expected_to_fail: false,
        run: random_size_align_alloc_test,
    },
    TestCase {
        index: 6,
        name: "align_shift_alloc_test",
        expected_to_fail: true,
        run: align_shift_alloc_test,
    },
    TestCase {
        index: 7,
        name: "pcpu_alloc_test",
        expected_to_fail: false,
        run: pcpu_alloc_test,
    },
    TestCase {
        index: 10,
        name: "vm_map_ram_test",
        expected_to_fail: false,
        run: vm_map_ram_test,
    },
];

/// The module's tests without a counterpart here: (id, name, reason).
pub const ABSENT: [(u32, &str, &str); 2] = [
    (256, "kvfree_rcu_1_arg_vmalloc_test", "needs RCU"),
    (512, "kvfree_rcu_2_arg_vmalloc_test", "needs RCU"),
];

/// The tests `mask` selects, in id order.
pub fn selected(mask: u32) -> impl Iterator<Item = &'static TestCase> {
    TESTS.iter().filter(move |t| mask & t.id() != 0)
}

/// Look a test up by name.
pub fn by_name(name: &str) -> Option<&'static TestCase> {
    TESTS.iter().find(|t| t.name == name)
}

/// Linux's `fls`.
fn fls(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

/// `full_fit_alloc_test`'s junk length: `fls(num_online_cpus()) * 32 MiB / PAGE_SIZE`.
pub fn full_fit_junk_length() -> usize {
    fls(pagetable::cpu::nr_cpu_ids() as u64) as usize * (32 << 20) / PAGE_SIZE as usize
}

/// Frames one worker may hold at once in test `t` (sizes the arena).
pub fn peak_frames(t: &TestCase, p: &Params) -> u64 {
    let array = |n: usize| (n as u64 * 8).div_ceil(PAGE_SIZE);
    match t.index {
        // A huge area is a whole number of 2 MiB runs (each 2 MiB aligned in the arena).
        0 if p.use_huge && p.pages() >= 512 => u64::from(p.pages()).next_multiple_of(512) + 512,
        0 => u64::from(p.pages()),
        1 => {
            let j = full_fit_junk_length();
            2 * j as u64 + 2 * array(j) + 1
        }
        2 => LONG_BUSY_LIST_LEN as u64 + array(LONG_BUSY_LIST_LEN) + 101,
        3 => 100,
        4 => 5,
        5 => 10,
        6 => 1,
        7 => PCPU_POOL as u64,
        _ => u64::from(p.pages()),
    }
}

/// vmalloc, store `value` at the start, vfree; frees on every path.
fn alloc_touch_free(imp: &dyn VmallocImpl, size: u64, value: u8) -> Result<(), CaseError> {
    let p = imp
        .vmalloc(size)
        .map_err(op(|| format!("vmalloc({size:#x})")))?;
    let w = imp
        .write_byte(p, value)
        .map_err(op(|| format!("store at {p:#x}")));
    let f = imp.vfree(p).map_err(op(|| format!("vfree({p:#x})")));
    w.and(f)
}

/// vfree every `Some` address, keeping the first error.
fn free_all(imp: &dyn VmallocImpl, addrs: &[Option<u64>]) -> Result<(), CaseError> {
    let mut res = Ok(());
    for &a in addrs.iter().flatten() {
        let r = imp.vfree(a).map_err(op(|| format!("vfree({a:#x})")));
        if res.is_ok() {
            res = r;
        }
    }
    res
}

/// Test id 1: `nr_pages` (default 1) pages, store one byte, free; with `use_huge`, the pages
/// come from `vmalloc_huge` (2 MiB leaves from 512 pages up), as the module does.
pub fn fix_size_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    let size = u64::from(c.params.pages()) * PAGE_SIZE;
    for _ in 0..c.params.test_loop_count {
        if c.params.use_huge {
            let p = c
                .imp
                .vmalloc_huge(size)
                .map_err(op(|| format!("vmalloc_huge({size:#x})")))?;
            let w = c
                .imp
                .write_byte(p, 0)
                .map_err(op(|| format!("store at {p:#x}")));
            let f = c.imp.vfree(p).map_err(op(|| format!("vfree({p:#x})")));
            w.and(f)?;
        } else {
            alloc_touch_free(c.imp, size, 0)?;
        }
    }
    Ok(())
}

/// Test id 2: fill `2 * junk` one-page areas, free every other one, then allocate and free one
/// page at a time: each allocation fits a hole exactly.
pub fn full_fit_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    let junk = full_fit_junk_length();
    let array_bytes = 8 * junk as u64;
    let imp = c.imp;
    let ptr_arr = imp
        .vmalloc(array_bytes)
        .map_err(op(|| "vmalloc(ptr array)".into()))?;
    let junk_arr = match imp.vmalloc(array_bytes) {
        Ok(a) => a,
        Err(e) => {
            let _ = imp.vfree(ptr_arr);
            return Err(CaseError(format!("vmalloc(junk array): {e}")));
        }
    };
    // Like the module, failed allocations are not checked here; vfree(NULL) is a no-op.
    let mut ptr = Vec::with_capacity(junk);
    let mut junk_ptr = Vec::with_capacity(junk);
    for _ in 0..junk {
        ptr.push(imp.vmalloc(PAGE_SIZE).ok());
        junk_ptr.push(imp.vmalloc(PAGE_SIZE).ok());
    }
    let mut res = free_all(imp, &junk_ptr);
    if res.is_ok() {
        for _ in 0..c.params.test_loop_count {
            if let Err(e) = alloc_touch_free(imp, PAGE_SIZE, 1) {
                res = Err(e);
                break;
            }
        }
    }
    let cleanup = free_all(imp, &ptr).and(free_all(imp, &[Some(ptr_arr), Some(junk_arr)]));
    res.and(cleanup)
}

/// Test id 4: 15,000 live one-page areas, then 100 pages + 1 page, store, free, in a loop.
pub fn long_busy_list_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    let imp = c.imp;
    let arr = imp
        .vmalloc(8 * LONG_BUSY_LIST_LEN as u64)
        .map_err(op(|| "vmalloc(ptr array)".into()))?;
    let busy: Vec<Option<u64>> = (0..LONG_BUSY_LIST_LEN)
        .map(|_| imp.vmalloc(PAGE_SIZE).ok())
        .collect();
    let mut res = Ok(());
    for _ in 0..c.params.test_loop_count {
        let p1 = match imp.vmalloc(100 * PAGE_SIZE) {
            Ok(p) => p,
            Err(e) => {
                res = Err(CaseError(format!("vmalloc(100 pages): {e}")));
                break;
            }
        };
        let p2 = match imp.vmalloc(PAGE_SIZE) {
            Ok(p) => p,
            Err(e) => {
                let _ = imp.vfree(p1);
                res = Err(CaseError(format!("vmalloc(1 page): {e}")));
                break;
            }
        };
        let w = imp
            .write_byte(p1, 0)
            .and_then(|()| imp.write_byte(p2, 1))
            .map_err(op(|| "store".into()));
        let f = imp
            .vfree(p1)
            .and_then(|()| imp.vfree(p2))
            .map_err(op(|| "vfree".into()));
        if let Err(e) = w.and(f) {
            res = Err(e);
            break;
        }
    }
    let cleanup = free_all(imp, &busy).and(free_all(imp, &[Some(arr)]));
    res.and(cleanup)
}

/// Test id 8: 1..=100 pages, store one byte, free.
pub fn random_size_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    for _ in 0..c.params.test_loop_count {
        let n = u64::from(c.rng.inclusive(1, 100));
        alloc_touch_free(c.imp, n * PAGE_SIZE, 1)?;
    }
    Ok(())
}

/// Test id 16: 5 zeroed pages aligned to `THREAD_ALIGN << 1` (32 KiB), free.
pub fn fix_align_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    for _ in 0..c.params.test_loop_count {
        let p = c
            .imp
            .vmalloc_align(5 * PAGE_SIZE, THREAD_ALIGN << 1)
            .map_err(op(|| "vmalloc_align(5 pages, 32 KiB)".into()))?;
        c.imp.vfree(p).map_err(op(|| format!("vfree({p:#x})")))?;
    }
    Ok(())
}

/// Test id 32: one random byte picks align `1 << (rnd % 23)` and `(rnd % 10) + 1` pages.
pub fn random_size_align_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    for _ in 0..c.params.test_loop_count {
        let rnd = u32::from(c.rng.u8());
        let align = 1u64 << (rnd % 23);
        let size = u64::from(rnd % 10 + 1) * PAGE_SIZE;
        let p = c
            .imp
            .vmalloc_align(size, align)
            .map_err(op(|| format!("vmalloc_align({size:#x}, {align:#x})")))?;
        c.imp.vfree(p).map_err(op(|| format!("vfree({p:#x})")))?;
    }
    Ok(())
}

/// Test id 64 (expected to fail): one page aligned to `1 << i` for every `i` below 64.
///
/// Passes when some alignment above 1 GiB is refused with `NoSpace`/`Invalid`; fails if a
/// smaller one is refused, if the refusal is another kind of error, or if nothing is refused.
pub fn align_shift_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    for i in 0..u64::BITS {
        let align = 1u64 << i;
        match c.imp.vmalloc_align(PAGE_SIZE, align) {
            Ok(p) => c.imp.vfree(p).map_err(op(|| format!("vfree({p:#x})")))?,
            Err(e @ (ImplError::NoSpace { .. } | ImplError::Invalid(_))) => {
                return if i > ALIGN_SHIFT_MUST_WORK {
                    Ok(())
                } else {
                    Err(CaseError(format!("alignment 1 << {i} refused: {e}")))
                };
            }
            Err(e) => return Err(CaseError(format!("alignment 1 << {i}: {e}"))),
        }
    }
    Err(CaseError(
        "every alignment up to 1 << 63 succeeded; expected a refusal".into(),
    ))
}

/// Test id 128, the analogue: 35,000 small objects live at once in per-CPU vmap blocks.
pub fn pcpu_alloc_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    let imp = c.imp;
    let arr = imp
        .vmalloc(8 * PCPU_OBJECTS as u64)
        .map_err(op(|| "vmalloc(array)".into()))?;
    let mut pool = Vec::with_capacity(PCPU_POOL);
    let mut res = Ok(());
    for _ in 0..PCPU_POOL {
        match imp.alloc_pages(1) {
            Ok(b) => pool.push(b),
            Err(e) => {
                res = Err(CaseError(format!("alloc_pages(1): {e}")));
                break;
            }
        }
    }
    let mut objs: Vec<u64> = Vec::with_capacity(if res.is_ok() { PCPU_OBJECTS } else { 0 });
    if res.is_ok() {
        for i in 0..PCPU_OBJECTS {
            let size = u64::from(c.rng.inclusive(1, (PAGE_SIZE / 4) as u32));
            let align = 1u64 << c.rng.inclusive(1, 11);
            let batch = &pool[i % PCPU_POOL];
            // Like the module: a failed allocation marks the test failed, the loop goes on.
            match imp.vm_map_ram(batch) {
                Ok(v) => {
                    objs.push(v);
                    let room = PAGE_SIZE - size;
                    let off = (c.rng.next_u64() % (room + 1)) & !(align - 1);
                    if let Err(e) = imp.write_byte(v + off, i as u8) {
                        if res.is_ok() {
                            res = Err(CaseError(format!("store at {:#x}: {e}", v + off)));
                        }
                    }
                }
                Err(e) => {
                    if res.is_ok() {
                        res = Err(CaseError(format!("vm_map_ram(1 page): {e}")));
                    }
                }
            }
        }
    }
    for v in objs {
        if let Err(e) = imp.vm_unmap_ram(v, 1) {
            if res.is_ok() {
                res = Err(CaseError(format!("vm_unmap_ram({v:#x}): {e}")));
            }
        }
    }
    for b in pool {
        if let Err(e) = imp.free_pages(b) {
            if res.is_ok() {
                res = Err(CaseError(format!("free_pages: {e}")));
            }
        }
    }
    res.and(free_all(imp, &[Some(arr)]))
}

/// Test id 1024: `nr_pages` (default 1) frames mapped with `vm_map_ram`, store, unmap.
pub fn vm_map_ram_test(c: &mut Ctx<'_>) -> Result<(), CaseError> {
    let n = c.params.pages() as usize;
    let imp = c.imp;
    let pages = imp
        .alloc_pages(n)
        .map_err(op(|| format!("alloc_pages({n})")))?;
    let mut res = Ok(());
    for _ in 0..c.params.test_loop_count {
        let v = match imp.vm_map_ram(&pages) {
            Ok(v) => v,
            Err(e) => {
                res = Err(CaseError(format!("vm_map_ram({n} pages): {e}")));
                break;
            }
        };
        let w = imp
            .write_byte(v, b'a')
            .map_err(op(|| format!("store at {v:#x}")));
        let u = imp
            .vm_unmap_ram(v, n)
            .map_err(op(|| format!("vm_unmap_ram({v:#x})")));
        if let Err(e) = w.and(u) {
            res = Err(e);
            break;
        }
    }
    let f = imp.free_pages(pages).map_err(op(|| "free_pages".into()));
    res.and(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_module() {
        let ids: Vec<u32> = TESTS.iter().map(TestCase::id).collect();
        assert_eq!(ids, [1, 2, 4, 8, 16, 32, 64, 128, 1024]);
        assert_eq!(selected(i32::MAX as u32).count(), 9);
        assert_eq!(selected(256 | 512).count(), 0);
        assert_eq!(selected(23).map(|t| t.name).collect::<Vec<_>>().len(), 4);
        assert_eq!(by_name("vm_map_ram_test").map(TestCase::id), Some(1024));
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn junk_length_follows_lazy_max_pages() {
        let j = full_fit_junk_length();
        assert_eq!(j % 8192, 0);
        assert!(j >= 8192);
    }
}
