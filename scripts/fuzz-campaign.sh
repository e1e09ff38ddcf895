#!/usr/bin/env bash
# A long fuzzing campaign of one cargo-fuzz target, outside CI, counted for the fuzz tally
# (docs/FUZZING.md, "Long campaigns").
#
#   bash scripts/fuzz-campaign.sh <target> [workers]
#
#   FUZZ_SECONDS   seconds per worker (default 3600); FUZZ_RUNS, if set, executions per
#                  worker instead (libFuzzer's -runs)
#   FUZZ_CORPUS    the working corpus (default fuzz/target/campaign/<target>/corpus; seeded
#                  from fuzz/corpus/<target> when it does not exist yet; kept between runs)
#   FUZZ_MAX_LEN   libFuzzer's -max_len (default: none, i.e. the longest corpus input)
#   FUZZ_FLAVOUR   "cheap" (default): `-s none --no-trace-compares`; "asan": the build CI
#                  runs (AddressSanitizer, comparison tracing), `cargo fuzz build` as typed
#   FUZZ_NICE      niceness of the workers (default 19: builds and tests keep the CPU)
#   GLIBC_TUNABLES glibc's malloc tunables (default below; an empty value keeps glibc's own)
#
# Why a cheap flavour: an execution costs in proportion to its input's operations, and most
# of that cost in the CI build is instrumentation, not the code under test. Replaying a
# fixed corpus, the `-s none` build spends about half its time in the comparison hooks
# (`__sanitizer_cov_trace_cmp8` and `__sanitizer_cov_trace_const_cmp8`, called at every
# compare of every loop); without them the same inputs run 2.8x to 3x faster, with the same
# edge coverage. Debug assertions and overflow checks stay on (fuzz/Cargo.toml's release
# profile), so every invariant check of the harnesses and the library still fires; what is
# given up is ASan's memory checks (CI's build keeps them) and the comparison-guided
# mutations (the harnesses decode operation tags from `arbitrary` ranges, which the
# dictionaries already spell out).
#
# Why the malloc tunables: with glibc's defaults, every buffer of 128 KiB or more is its own
# mmap (`alloc_free_mt`'s objects reach 128 KiB, and each has a shadow copy and read
# buffers), and the heaps of the harness threads, new at every input, are trimmed back to
# the kernel when their memory is freed; the next input faults every page in again. A high
# mmap threshold and no trimming keep that memory in the process: replaying the same 1,500
# `alloc_free_mt` inputs with the same build took 0.58 s of system time instead of 1.18
# (means of three rounds, docs/FUZZING.md). What the code under test does is unchanged.
#
# Each worker is its own libFuzzer process with its own -seed, all sharing the working
# corpus (libFuzzer reloads the other workers' new inputs). A crash stops its worker and
# leaves the input in fuzz/target/campaign/<target>/; the script then exits non-zero. At the
# end it prints one row for the tally: executions (the sum of each worker's final
# `number_of_executed_units`), wall time, CPU seconds and executions per CPU-second, and
# the last worker's cov/ft/corpus.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

target="${1:?usage: fuzz-campaign.sh <target> [workers]}"
workers="${2:-1}"
seconds="${FUZZ_SECONDS:-3600}"
flavour="${FUZZ_FLAVOUR:-cheap}"
niceness="${FUZZ_NICE:-19}"
dir="$PWD/target/campaign/$target"
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.trim_threshold=4294967295:glibc.malloc.mmap_threshold=33554432}"
corpus="${FUZZ_CORPUS:-$dir/corpus}"

case "$flavour" in
cheap)
    build_args=(-s none --no-trace-compares --target-dir "$PWD/target/campaign/build")
    bin="$PWD/target/campaign/build/x86_64-unknown-linux-gnu/release/$target"
    ;;
asan)
    build_args=()
    bin="$PWD/target/x86_64-unknown-linux-gnu/release/$target"
    ;;
*)
    echo "FUZZ_FLAVOUR must be cheap or asan, not $flavour" >&2
    exit 2
    ;;
esac

cargo fuzz build "${build_args[@]}" "$target"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD -- .. 2>/dev/null; then
    rev="$rev+dirty"
fi

mkdir -p "$dir"
if [ ! -d "$corpus" ]; then
    mkdir -p "$corpus"
    if [ -d "corpus/$target" ]; then
        cp -R "corpus/$target/." "$corpus/"
    fi
fi

args=(-timeout=60 -rss_limit_mb=4096 -print_final_stats=1 "-artifact_prefix=$dir/")
if [ -f "dict/$target.dict" ]; then
    args+=("-dict=$PWD/dict/$target.dict")
fi
if [ -n "${FUZZ_RUNS:-}" ]; then
    args+=("-runs=$FUZZ_RUNS")
else
    args+=("-max_total_time=$seconds")
fi
if [ -n "${FUZZ_MAX_LEN:-}" ]; then
    args+=("-max_len=$FUZZ_MAX_LEN")
fi

echo "== $target: $workers worker(s), $flavour build of $rev, corpus $corpus ($(ls "$corpus" | wc -l) inputs)"
start="$(date -u +%s)"
pids=()
for w in $(seq 1 "$workers"); do
    # Bash's `time` of the worker alone (a `cpu USER SYS` line at the end of its log): its
    # CPU seconds, whatever else runs on the machine.
    (
        cd "$dir"
        exec 2>"worker-$w.log"
        TIMEFORMAT='cpu %U %S'
        time nice -n "$niceness" "$bin" "${args[@]}" "-seed=$((start + w))" "$corpus"
    ) &
    pids+=("$!")
done

failed=0
for p in "${pids[@]}"; do
    wait "$p" || failed=1
done
wall=$(($(date -u +%s) - start))

execs=0
cpu=0
for w in $(seq 1 "$workers"); do
    log="$dir/worker-$w.log"
    n="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1)"
    execs=$((execs + ${n:-0}))
    c="$(grep -E '^cpu ' "$log" | tail -n 1 | awk '{printf "%d", $2 + $3}')"
    cpu=$((cpu + ${c:-0}))
    # Slow units are written too ("slow-unit-"): only a crash, leak, timeout or OOM counts.
    if grep -qE '^==[0-9]+== ERROR|Test unit written to .*(crash|leak|timeout|oom)-' "$log"; then
        echo "!! worker $w found something: $log"
        grep -E 'Test unit written to' "$log" || true
        failed=1
    fi
done
# The last worker's last status line (not a stale log of an earlier run with more workers).
last="$(grep -hE '^#[0-9]+' "$dir/worker-$workers.log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[KM]?b' || true)"
rate=0
if [ "$cpu" -gt 0 ]; then
    rate=$((execs / cpu))
fi
echo "| $target | $(date -u '+%Y-%m-%d %H:%M') | $execs | $wall s | $cpu CPU-s | $rate exec/CPU-s | $last | $flavour build of $rev, $workers worker(s)${FUZZ_MAX_LEN:+, -max_len=$FUZZ_MAX_LEN} |"
exit "$failed"
