//! The kernel command line (`-append`): `lib/test_vmalloc.c`'s module parameters in their
//! modprobe form (`test_loop_count=1000 nr_threads=4`), validated as the hosted runner and
//! the module do (`nr_threads` clamped to 1..=65535, a zero loop or repeat count becomes 1,
//! `use_huge` refused), plus this kernel's own keys: `seed`, `stale_tlb_rounds` (rounds of
//! the stale-TLB test, 0 to skip it) and `ipi_compare_loops` (iterations per CPU of the
//! lazy-against-eager shootdown comparison, 0 to skip it).

/// `run_test_mask`'s default (`INT_MAX`: every test).
pub const DEFAULT_RUN_TEST_MASK: u32 = i32::MAX as u32;

/// The parameters, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Workers started together (`nr_threads`).
    pub nr_threads: u32,
    /// Iterations of each test's loop (`test_loop_count`).
    pub test_loop_count: u32,
    /// Times each worker runs each test (`test_repeat_count`).
    pub test_repeat_count: u32,
    /// Tests in id order instead of a per-worker shuffle (`sequential_test_order`).
    pub sequential_test_order: bool,
    /// Bit `i` runs the test with id `1 << i` (`run_test_mask`).
    pub run_test_mask: u32,
    /// Pages of `fix_size_alloc_test` and `vm_map_ram_test` (`nr_pages`, 0 means 1).
    pub nr_pages: u32,
    /// The workers' random seed.
    pub seed: u64,
    /// Rounds of the stale-TLB test.
    pub stale_tlb_rounds: u32,
    /// Iterations per CPU of the shootdown comparison.
    pub ipi_compare_loops: u32,
}

impl Default for Params {
    /// The module's defaults, seed 7, 8 stale-TLB rounds, 300 comparison iterations.
    fn default() -> Self {
        Self {
            nr_threads: 1,
            test_loop_count: 1_000_000,
            test_repeat_count: 1,
            sequential_test_order: false,
            run_test_mask: DEFAULT_RUN_TEST_MASK,
            nr_pages: 0,
            seed: 7,
            stale_tlb_rounds: 8,
            ipi_compare_loops: 300,
        }
    }
}

impl Params {
    /// `nr_pages`, or 1 when it is 0.
    pub fn pages(&self) -> u32 {
        self.nr_pages.max(1)
    }

    /// Parse a command line; the error names the offending word.
    pub fn parse(cmdline: &str) -> Result<Params, &str> {
        let mut p = Params::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').ok_or(word)?;
            let int = || parse_int(value).ok_or(word);
            match key {
                "nr_threads" => p.nr_threads = int()?.clamp(1, u64::from(u16::MAX)) as u32,
                "test_loop_count" => p.test_loop_count = int_max(int()?, word)?.max(1),
                "test_repeat_count" => p.test_repeat_count = int_max(int()?, word)?.max(1),
                "sequential_test_order" => p.sequential_test_order = int()? != 0,
                "run_test_mask" => p.run_test_mask = int_max(int()?, word)?,
                "nr_pages" => p.nr_pages = int_max(int()?, word)?,
                "use_huge" if int()? == 0 => {}
                "seed" => p.seed = int()?,
                "stale_tlb_rounds" => p.stale_tlb_rounds = int_max(int()?, word)?,
                "ipi_compare_loops" => p.ipi_compare_loops = int_max(int()?, word)?,
                _ => return Err(word),
            }
        }
        Ok(p)
    }
}

/// A value the kernel's `int` holds.
fn int_max(v: u64, word: &str) -> Result<u32, &str> {
    if v <= i32::MAX as u64 {
        Ok(v as u32)
    } else {
        Err(word)
    }
}

/// Decimal or `0x` hexadecimal.
fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
