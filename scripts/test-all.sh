#!/usr/bin/env bash
# Every test of the project, in the order that fails fastest:
#   1. unit, property, integration and doc tests of every crate (debug)
#   2. the loom models (cargo test --features loom, at the workspace root)
#   3. Miri over the unsafe modules (arena, page-table entries, frame allocator, llist, trees)
#   4. each cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 60) from its seed corpus
#   5. the multi-thread stress, fault-injection and API tests under ThreadSanitizer and
#      AddressSanitizer + LeakSanitizer (scripts/sanitize.sh; nightly, -Zbuild-std)
# Installs what a fresh machine lacks (cargo-fuzz from crates.io; nightly's miri component).
# Ends with one line "test-all: N passed, M failed" summing the cargo test results.
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

echo "== 1/5 cargo test --workspace"
cargo test --workspace 2>&1 | tee -a "$log"

echo "== 2/5 loom models: cargo test --features loom"
cargo test --features loom 2>&1 | tee -a "$log"

echo "== 3/5 Miri over the unsafe modules"
cargo +nightly miri setup >/dev/null 2>&1 || true
cargo +nightly miri test -p pagetable --lib -- arena:: entry:: frame:: addr:: page:: 2>&1 | tee -a "$log"
cargo +nightly miri test -p vmalloc --lib -- llist:: tree:: free_tree:: busy:: 2>&1 | tee -a "$log"

echo "== 4/5 fuzz targets, ${FUZZ_SECONDS} s each"
bash scripts/fuzz-ci.sh

echo "== 5/5 sanitizers: TSan, ASan + LSan"
bash scripts/sanitize.sh

passed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo "test-all: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
