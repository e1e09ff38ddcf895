//! The test cases of `lib/test_vmalloc.c`, as the hosted runner (`benches/runner`) defines
//! them, run in the kernel on the CPU's MMU: every store is a real store through the
//! vmalloc'd virtual address, and the module's arrays of pointers (`ptr = vmalloc(sizeof(void
//! *) * n)`) are vmalloc'd and written through their addresses too.
//!
//! Ids are the module's (`1 << index`); 256 and 512 (`kvfree_rcu_*`) need RCU and are absent.
//! Each case returns `Ok` (the module's 0) or the first failure; a case that fails part-way
//! still frees what it allocated. `align_shift_alloc_test` passes when an alignment above
//! 1 GiB is refused with a clean "no space"/"too large"/"invalid" error after every smaller
//! one worked.
//! `pcpu_alloc_test` is the hosted runner's analogue (35,000 small objects carved from
//! per-CPU vmap blocks with `vm_map_ram`, all live at once). Each loop iteration ends with a
//! scheduling point ([`sched::preempt_point`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use pagetable::{PAGE_SIZE, PhysFrame, VirtAddr, Zone};
use vmalloc::{Gfp, PAGE_KERNEL, VmFlags, Vmalloc, VmallocError};

use crate::params::Params;
use crate::platform::Kernel;
use crate::rng::Rng;
use crate::sched;

/// `THREAD_ALIGN` of x86_64 without KASAN (16 KiB).
pub const THREAD_ALIGN: u64 = 16 << 10;
/// Live areas of `long_busy_list_alloc_test`.
pub const LONG_BUSY_LIST_LEN: usize = 15_000;
/// Objects of `pcpu_alloc_test`.
pub const PCPU_OBJECTS: usize = 35_000;
/// Frames each worker maps over and over in `pcpu_alloc_test`.
pub const PCPU_POOL: usize = 8;
/// Alignments up to `1 << 30` must succeed in `align_shift_alloc_test`.
pub const ALIGN_SHIFT_MUST_WORK: u32 = 30;

/// What a case needs.
pub struct Ctx<'a> {
    /// The kernel's vmalloc.
    pub vm: &'a Vmalloc<Kernel>,
    /// The module parameters.
    pub params: &'a Params,
    /// The worker's random numbers.
    pub rng: &'a mut Rng,
    /// `num_online_cpus()`.
    pub online_cpus: usize,
}

/// Why a case failed.
pub type CaseResult = Result<(), String>;

/// One test of the module.
#[derive(Debug, Clone, Copy)]
pub struct TestCase {
    /// Position in the module's table (id = `1 << index`).
    pub index: u32,
    /// The module's name.
    pub name: &'static str,
    /// Whether failure is the expected outcome.
    pub expected_to_fail: bool,
    /// The body.
    pub run: fn(&mut Ctx<'_>) -> CaseResult,
}

impl TestCase {
    /// The module's id.
    pub fn id(&self) -> u32 {
        1 << self.index
    }
}

const fn case(index: u32, name: &'static str, run: fn(&mut Ctx<'_>) -> CaseResult) -> TestCase {
    TestCase {
        index,
        name,
        expected_to_fail: index == 6,
        run,
    }
}

/// The module's table without the RCU tests.
pub const TESTS: [TestCase; 9] = [
    case(0, "fix_size_alloc_test", fix_size_alloc_test),
    case(1, "full_fit_alloc_test", full_fit_alloc_test),
    case(2, "long_busy_list_alloc_test", long_busy_list_alloc_test),
    case(3, "random_size_alloc_test", random_size_alloc_test),
    case(4, "fix_align_alloc_test", fix_align_alloc_test),
    case(
        5,
        "random_size_align_alloc_test",
        random_size_align_alloc_test,
    ),
    case(6, "align_shift_alloc_test", align_shift_alloc_test),
    case(7, "pcpu_alloc_test", pcpu_alloc_test),
    case(10, "vm_map_ram_test", vm_map_ram_test),
];

/// The tests `mask` selects, in id order.
pub fn selected(mask: u32) -> impl Iterator<Item = &'static TestCase> {
    TESTS.iter().filter(move |t| mask & t.id() != 0)
}

/// Store `value` at `addr` through the MMU.
fn store(addr: VirtAddr, value: u8) {
    // SAFETY: every caller passes an address inside an area it allocated itself (vmalloc or
    // vm_map_ram, mapped writable with PAGE_KERNEL before the call returned) and has not
    // freed yet; nothing else accesses that byte meanwhile.
    unsafe { (addr.as_u64() as *mut u8).write_volatile(value) };
}

/// An array of `n` addresses in vmalloc'd memory (the module's `ptr` arrays).
struct AddrArray {
    base: VirtAddr,
    n: usize,
}

impl AddrArray {
    fn new(vm: &Vmalloc<Kernel>, n: usize) -> Result<Self, String> {
        let base = vm
            .vmalloc(8 * n as u64)
            .map_err(|e| format!("vmalloc(array of {n}): {e}"))?;
        Ok(Self { base, n })
    }

    fn slot(&self, i: usize) -> *mut u64 {
        assert!(i < self.n);
        (self.base.as_u64() + 8 * i as u64) as *mut u64
    }

    fn set(&self, i: usize, v: u64) {
        // SAFETY: `slot` is inside the array's own vmalloc area (checked index), which this
        // worker owns until `free`.
        unsafe { self.slot(i).write_volatile(v) };
    }

    fn get(&self, i: usize) -> u64 {
        // SAFETY: as in `set`.
        unsafe { self.slot(i).read_volatile() }
    }

    /// vfree every non-null address stored, then the array; the first error.
    fn free(self, vm: &Vmalloc<Kernel>, entries: bool) -> CaseResult {
        let mut res = Ok(());
        if entries {
            for i in 0..self.n {
                let r = vfree(vm, self.get(i));
                if res.is_ok() {
                    res = r;
                }
            }
        }
        res.and(vfree(vm, self.base.as_u64()))
    }
}

fn vfree(vm: &Vmalloc<Kernel>, addr: u64) -> CaseResult {
    if addr == 0 {
        return Ok(());
    }
    vm.vfree(VirtAddr::new_truncate(addr))
        .map_err(|e| format!("vfree({addr:#x}): {e}"))
}

/// vmalloc, store `value` at the start, vfree.
fn alloc_touch_free(vm: &Vmalloc<Kernel>, size: u64, value: u8) -> CaseResult {
    let p = vm
        .vmalloc(size)
        .map_err(|e| format!("vmalloc({size:#x}): {e}"))?;
    store(p, value);
    vfree(vm, p.as_u64())
}

/// `__vmalloc_node(size, align, GFP_KERNEL | __GFP_ZERO)` over the whole range.
fn vmalloc_align(vm: &Vmalloc<Kernel>, size: u64, align: u64) -> Result<VirtAddr, VmallocError> {
    let (start, end) = vm.range();
    vm.vmalloc_node_range(
        size,
        align,
        start,
        end,
        Gfp::ZERO,
        PAGE_KERNEL,
        VmFlags::empty(),
        None,
    )
}

/// `full_fit_alloc_test`'s junk length: `fls(num_online_cpus()) * 32 MiB / PAGE_SIZE`.
pub fn full_fit_junk_length(online_cpus: usize) -> usize {
    let fls = usize::BITS - online_cpus.max(1).leading_zeros();
    fls as usize * (32 << 20) / PAGE_SIZE as usize
}

/// Id 1: `nr_pages` pages, store, free.
fn fix_size_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    let size = u64::from(c.params.pages()) * PAGE_SIZE;
    for _ in 0..c.params.test_loop_count {
        alloc_touch_free(c.vm, size, 0)?;
        sched::preempt_point();
    }
    Ok(())
}

/// Id 2: `2 * junk` one-page areas, every other one freed, then one page at a time into the
/// holes.
fn full_fit_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    let junk = full_fit_junk_length(c.online_cpus);
    let vm = c.vm;
    let ptr = AddrArray::new(vm, junk)?;
    let junk_ptr = match AddrArray::new(vm, junk) {
        Ok(a) => a,
        Err(e) => {
            let _ = ptr.free(vm, false);
            return Err(e);
        }
    };
    // Like the module, failed allocations are not checked here (vfree(NULL) is a no-op).
    for i in 0..junk {
        ptr.set(i, vm.vmalloc(PAGE_SIZE).map_or(0, |a| a.as_u64()));
        junk_ptr.set(i, vm.vmalloc(PAGE_SIZE).map_or(0, |a| a.as_u64()));
    }
    let mut res = junk_ptr.free(vm, true);
    if res.is_ok() {
        for _ in 0..c.params.test_loop_count {
            if let Err(e) = alloc_touch_free(vm, PAGE_SIZE, 1) {
                res = Err(e);
                break;
            }
            sched::preempt_point();
        }
    }
    res.and(ptr.free(vm, true))
}

/// Id 4: 15,000 live one-page areas, then 100 pages + 1 page, store, free, in a loop.
fn long_busy_list_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    let vm = c.vm;
    let busy = AddrArray::new(vm, LONG_BUSY_LIST_LEN)?;
    for i in 0..LONG_BUSY_LIST_LEN {
        busy.set(i, vm.vmalloc(PAGE_SIZE).map_or(0, |a| a.as_u64()));
    }
    let mut res = Ok(());
    for _ in 0..c.params.test_loop_count {
        let p1 = match vm.vmalloc(100 * PAGE_SIZE) {
            Ok(p) => p,
            Err(e) => {
                res = Err(format!("vmalloc(100 pages): {e}"));
                break;
            }
        };
        let p2 = match vm.vmalloc(PAGE_SIZE) {
            Ok(p) => p,
            Err(e) => {
                let _ = vfree(vm, p1.as_u64());
                res = Err(format!("vmalloc(1 page): {e}"));
                break;
            }
        };
        store(p1, 0);
        store(p2, 1);
        if let Err(e) = vfree(vm, p1.as_u64()).and(vfree(vm, p2.as_u64())) {
            res = Err(e);
            break;
        }
        sched::preempt_point();
    }
    res.and(busy.free(vm, true))
}

/// Id 8: 1..=100 pages, store, free.
fn random_size_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    for _ in 0..c.params.test_loop_count {
        let n = u64::from(c.rng.inclusive(1, 100));
        alloc_touch_free(c.vm, n * PAGE_SIZE, 1)?;
        sched::preempt_point();
    }
    Ok(())
}

/// Id 16: 5 zeroed pages aligned to `THREAD_ALIGN << 1`, free.
fn fix_align_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    for _ in 0..c.params.test_loop_count {
        let p = vmalloc_align(c.vm, 5 * PAGE_SIZE, THREAD_ALIGN << 1)
            .map_err(|e| format!("vmalloc_align(5 pages, 32 KiB): {e}"))?;
        vfree(c.vm, p.as_u64())?;
        sched::preempt_point();
    }
    Ok(())
}

/// Id 32: one random byte picks align `1 << (rnd % 23)` and `(rnd % 10) + 1` pages.
fn random_size_align_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    for _ in 0..c.params.test_loop_count {
        let rnd = u32::from(c.rng.u8());
        let align = 1u64 << (rnd % 23);
        let size = u64::from(rnd % 10 + 1) * PAGE_SIZE;
        let p = vmalloc_align(c.vm, size, align)
            .map_err(|e| format!("vmalloc_align({size:#x}, {align:#x}): {e}"))?;
        vfree(c.vm, p.as_u64())?;
        sched::preempt_point();
    }
    Ok(())
}

/// Id 64 (expected to fail): one page aligned to `1 << i` for every `i` below 64.
fn align_shift_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    for i in 0..u64::BITS {
        match vmalloc_align(c.vm, PAGE_SIZE, 1u64 << i) {
            Ok(p) => vfree(c.vm, p.as_u64())?,
            Err(
                VmallocError::NoSpace { .. }
                | VmallocError::TooLarge { .. }
                | VmallocError::InvalidAlign { .. }
                | VmallocError::InvalidSize { .. }
                | VmallocError::InvalidRange { .. },
            ) if i > ALIGN_SHIFT_MUST_WORK => return Ok(()),
            Err(e) => return Err(format!("alignment 1 << {i} refused: {e}")),
        }
    }
    Err("every alignment up to 1 << 63 succeeded; expected a refusal".into())
}

/// Id 128, the analogue: 35,000 small objects live at once in per-CPU vmap blocks.
fn pcpu_alloc_test(c: &mut Ctx<'_>) -> CaseResult {
    let vm = c.vm;
    let arr = AddrArray::new(vm, PCPU_OBJECTS)?;
    let frames = vm.frames();
    let mut pool: Vec<PhysFrame> = Vec::with_capacity(PCPU_POOL);
    let mut res = Ok(());
    for _ in 0..PCPU_POOL {
        match frames.alloc(Zone::Normal) {
            Ok(f) => pool.push(f),
            Err(e) => {
                res = Err(format!("alloc_pages(1): {e}"));
                break;
            }
        }
    }
    let mut live = 0;
    if res.is_ok() {
        for i in 0..PCPU_OBJECTS {
            let size = u64::from(c.rng.inclusive(1, (PAGE_SIZE / 4) as u32));
            let align = 1u64 << c.rng.inclusive(1, 11);
            // Like the module: a failed allocation marks the test failed, the loop goes on.
            match vm.vm_map_ram(&pool[i % PCPU_POOL..][..1], None, PAGE_KERNEL) {
                Ok(v) => {
                    arr.set(live, v.as_u64());
                    live += 1;
                    let room = PAGE_SIZE - size;
                    let off = (c.rng.next_u64() % (room + 1)) & !(align - 1);
                    store(v + off, i as u8);
                }
                Err(e) => {
                    if res.is_ok() {
                        res = Err(format!("vm_map_ram(1 page): {e}"));
                    }
                }
            }
        }
    }
    for i in 0..live {
        let v = arr.get(i);
        if let Err(e) = vm.vm_unmap_ram(VirtAddr::new_truncate(v), 1)
            && res.is_ok()
        {
            res = Err(format!("vm_unmap_ram({v:#x}): {e}"));
        }
    }
    if let Err(e) = frames.free_bulk(&pool)
        && res.is_ok()
    {
        res = Err(format!("free_pages: {e}"));
    }
    res.and(arr.free(vm, false))
}

/// Id 1024: `nr_pages` frames mapped with `vm_map_ram`, store, unmap.
fn vm_map_ram_test(c: &mut Ctx<'_>) -> CaseResult {
    let n = c.params.pages() as usize;
    let vm = c.vm;
    let frames = vm.frames();
    let mut pages = Vec::with_capacity(n);
    for _ in 0..n {
        match frames.alloc(Zone::Normal) {
            Ok(f) => pages.push(f),
            Err(e) => {
                let _ = frames.free_bulk(&pages);
                return Err(format!("alloc_pages({n}): {e}"));
            }
        }
    }
    let mut res = Ok(());
    for _ in 0..c.params.test_loop_count {
        let v = match vm.vm_map_ram(&pages, None, PAGE_KERNEL) {
            Ok(v) => v,
            Err(e) => {
                res = Err(format!("vm_map_ram({n} pages): {e}"));
                break;
            }
        };
        store(v, b'a');
        if let Err(e) = vm.vm_unmap_ram(v, n) {
            res = Err(format!("vm_unmap_ram({v:?}): {e}"));
            break;
        }
        sched::preempt_point();
    }
    let f = frames
        .free_bulk(&pages)
        .map(|_| ())
        .map_err(|e| format!("free_pages: {e}"));
    res.and(f)
}
