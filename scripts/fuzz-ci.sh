#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time, failing on the first crash.
#
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated targets (default: all, from `cargo fuzz list`:
#                  alloc_free, alloc_free_mt, free_tree, llist, pagetable)
#
# Each target starts from a COPY of its checked-in seed corpus (fuzz/corpus/<target>) in a
# temporary directory, so libFuzzer's new inputs never dirty the tree, and uses its
# dictionary (fuzz/dict/<target>.dict) when there is one. A crash, a timeout (-timeout: one
# input running for more than 60 s, e.g. a deadlock in alloc_free_mt) or an out-of-memory
# leaves its input in fuzz/artifacts/<target>/ (ignored by git) and this script exits
# non-zero after printing how to replay it. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`, which scripts/test-all.sh does on a fresh machine).
#
# Runs the exact command of the project's design, `cargo fuzz run <target>` (no `+nightly`):
# fuzz/rust-toolchain.toml selects nightly (cargo-fuzz needs `-Zsanitizer=address`) and its
# components for every cargo command in fuzz/, whatever the machine's default toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-ci.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Build once up front (so the per-target time budget is spent fuzzing, and a build error
# is reported as such).
cargo fuzz build

failed=""
for t in $TARGETS; do
    mkdir -p "$work/$t"
    if [ -d "corpus/$t" ]; then
        cp -R "corpus/$t/." "$work/$t/"
    fi
    extra=()
    if [ -f "dict/$t.dict" ]; then
        extra+=("-dict=$PWD/dict/$t.dict")
    fi
    echo "== fuzz $t for ${FUZZ_SECONDS} s (seeds: $(ls "$work/$t" | wc -l))"
    log="$work/$t.log"
    if cargo fuzz run "$t" "$work/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=60 -rss_limit_mb=4096 \
        -print_final_stats=1 ${extra[@]+"${extra[@]}"} >"$log" 2>&1; then
        # The last status line (cov/ft/corpus/exec/s) and the final stats.
        grep -E '^#[0-9]+' "$log" | tail -n 1 || true
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    else
        tail -n 60 "$log"
        art="$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/Test unit written to //')"
        echo "!! $t FAILED${art:+; replay: (cd fuzz && cargo fuzz run $t $art)}"
        failed="$failed $t"
    fi
done

if [ -n "$failed" ]; then
    echo "fuzz targets failed:$failed"
    exit 1
fi
echo "fuzz: all targets ran ${FUZZ_SECONDS} s without a crash"
