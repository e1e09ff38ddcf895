#!/usr/bin/env bash
# Every test of the project, in the order that fails fastest:
#   1. unit, property and integration tests of every crate (debug)
#   2. the loom models (cargo test --features loom, at the workspace root)
#   3. Miri over the unsafe modules (llist, arena, page-table entries, frame allocator, trees)
#   4. each cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 60)
# Installs what a fresh machine lacks (cargo-fuzz from crates.io; nightly's miri component).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^miri'; then
    rustup +nightly component add miri rust-src
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

echo "== 1/4 cargo test --workspace"
cargo test --workspace

echo "== 2/4 loom models: cargo test --features loom"
cargo test --features loom

echo "== 3/4 Miri"
cargo +nightly miri setup >/dev/null 2>&1 || true
cargo +nightly miri test -p pagetable --lib -- arena entry frame addr page
cargo +nightly miri test -p vmalloc --lib -- llist tree free_tree busy

echo "== 4/4 fuzz targets, ${FUZZ_SECONDS} s each"
for target in $(cd fuzz && cargo +nightly fuzz list); do
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096)
done
echo "all tests passed"
