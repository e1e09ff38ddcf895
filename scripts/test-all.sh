#!/usr/bin/env bash
# Every test of the project, in the order that fails fastest:
#   1. unit, property, integration and doc tests of every crate (debug), at the machine's
#      CPU count
#   2. the no_std core: `pagetable` and `vmalloc` built without `std` for x86_64-unknown-none,
#      and the std-free platform test (a fake kernel platform, direct-map RAM, a workqueue
#      hook) run against the crates compiled without `std`
#   3. the unit, integration and stress tests again as if the machine had 1, 2, 16 and 64 CPUs
#      (KVMALLOC_NR_CPUS: every CPU-derived default, per-CPU cache, shard and worker count
#      follows it; threads outnumber CPUs at 1, CPUs outnumber threads at 64)
#   4. the loom models (cargo test --features loom, at the workspace root)
#   5. Miri over the modules with unsafe code (arena, page-table entries, frame allocator,
#      llist, trees, the B+ tree busy index, nodes, shards, kva, purge, deferred frees)
#   6. each cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 60) from its seed corpus
#   7. the multi-thread stress, fault-injection and API tests under ThreadSanitizer and
#      AddressSanitizer + LeakSanitizer (scripts/sanitize.sh; nightly, -Zbuild-std)
#   8. the kernel of benches/qemu-kernel booted under QEMU (scripts/qemu.sh): the
#      test_vmalloc cases on the real MMU on 1 and 4 CPUs, the stale-TLB test, IPI shootdown
#      counts, and the broken-flush build, which must fail
# Installs what a fresh machine lacks (cargo-fuzz from crates.io; nightly's miri component;
# Debian's qemu-system-x86).
# Ends with one line "test-all: N passed, M failed" summing the cargo test results and the
# QEMU boots.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
log="$(mktemp "${TMPDIR:-/tmp}/test-all.XXXXXX")"
trap 'rm -f "$log"' EXIT

if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^miri'; then
    rustup +nightly component add miri rust-src
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-none$'; then
    rustup target add x86_64-unknown-none
fi

echo "== 1/8 cargo test --workspace"
cargo test --workspace 2>&1 | tee -a "$log"

echo "== 2/8 no_std core: x86_64-unknown-none build, std-free platform test"
cargo build -p pagetable -p vmalloc --no-default-features --target x86_64-unknown-none
cargo test -p vmalloc --no-default-features --test platform 2>&1 | tee -a "$log"

for n in 1 2 16 64; do
    echo "== 3/8 cargo test --workspace --lib --tests with KVMALLOC_NR_CPUS=$n"
    KVMALLOC_NR_CPUS=$n cargo test --workspace --lib --tests 2>&1 | tee -a "$log"
done

echo "== 4/8 loom models: cargo test --features loom"
cargo test --features loom 2>&1 | tee -a "$log"

echo "== 5/8 Miri over the modules with unsafe code"
cargo +nightly miri setup >/dev/null 2>&1 || true
cargo +nightly miri test -p pagetable --lib -- arena:: entry:: frame:: addr:: page:: 2>&1 | tee -a "$log"
cargo +nightly miri test -p vmalloc --lib -- llist:: tree:: free_tree:: busy:: \
    area:: kva:: purge:: deferred:: bptree:: node:: shard:: 2>&1 | tee -a "$log"

echo "== 6/8 fuzz targets, ${FUZZ_SECONDS} s each"
bash scripts/fuzz-ci.sh

echo "== 7/8 sanitizers: TSan, ASan + LSan"
bash scripts/sanitize.sh

echo "== 8/8 QEMU: the kernel on 1 and 4 CPUs, and the broken-flush build (must fail)"
qemu_status=0
bash scripts/qemu.sh 2>&1 | tee -a "$log" || qemu_status=$?

passed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
qemu_line=$(grep -E '^qemu: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
if [ -n "$qemu_line" ]; then
    passed=$((passed + $(echo "$qemu_line" | sed -E 's/qemu: ([0-9]+) passed.*/\1/')))
    failed=$((failed + $(echo "$qemu_line" | sed -E 's/.* ([0-9]+) failed$/\1/')))
elif [ "$qemu_status" -ne 0 ]; then
    failed=$((failed + 1))
fi
echo "test-all: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
