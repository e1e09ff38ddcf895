#!/usr/bin/env bash
# Sanitizer runs (nightly, -Zbuild-std so that std itself is instrumented):
#   thread : ThreadSanitizer over the multi-threaded tests (stress, concurrent page tables,
#            KVA stress, vmap blocks, accesses, the API tests, both crates' unit tests).
#   address: AddressSanitizer + LeakSanitizer over every test binary of pagetable and vmalloc
#            (incl. the mmap-arena tests and fault injection: nothing may leak on error paths).
# Doctests are not run (single-threaded examples; RUSTDOCFLAGS is set too, should one add --doc).
#
# Knobs (environment):
#   SANITIZERS="thread address"  which sanitizers to run, in that order
#   SANITIZE_TARGET_DIR=DIR      target dirs DIR/<sanitizer> (default: ${CARGO_TARGET_DIR:-target}/sanitize);
#                                each sanitizer needs its own: never share one with a normal build
#   SANITIZE_JOBS=N              cargo -j (default 2)
#   SANITIZE_TOOLCHAIN=nightly   the nightly toolchain to use
#   TSAN_EXTRA / ASAN_EXTRA      extra TSAN_OPTIONS / ASAN_OPTIONS (space separated)
# Prints one line per run ("PASS|FAIL <sanitizer> <package>/<test> ...") and a summary line;
# exits non-zero if any run fails or any sanitizer report appears. Full logs stay in
# SANITIZE_TARGET_DIR/logs.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

SANITIZERS="${SANITIZERS:-thread address}"
TOOLCHAIN="${SANITIZE_TOOLCHAIN:-nightly}"
JOBS="${SANITIZE_JOBS:-2}"
base="${SANITIZE_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/sanitize}"
case "$base" in /*) ;; *) base="$root/$base" ;; esac
logs="$base/logs"
mkdir -p "$logs"

# --- toolchain -------------------------------------------------------------------------------
if ! rustc "+$TOOLCHAIN" -V >/dev/null 2>&1; then
    echo "sanitize: toolchain '$TOOLCHAIN' missing (rustup toolchain install nightly --component rust-src)" >&2
    exit 2
fi
if ! rustup "+$TOOLCHAIN" component list --installed 2>/dev/null | grep -q '^rust-src'; then
    # Needed by -Zbuild-std. If this fails offline, the check below says so.
    rustup component add rust-src --toolchain "$TOOLCHAIN" || true
fi
sysroot="$(rustc "+$TOOLCHAIN" --print sysroot)"
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
    echo "sanitize: rust-src is not installed for '$TOOLCHAIN' and could not be added" >&2
    exit 2
fi
# An explicit --target keeps build scripts and proc-macros (host artifacts) uninstrumented.
target="$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')"

# --- what runs under which sanitizer ----------------------------------------------------------
# Each run: "<package> <cargo test target selection> [-- <libtest args>]".
thread_runs=(
    "pagetable --lib"
    "pagetable --test concurrent"
    "vmalloc --lib"
    "vmalloc --test stress"
    "vmalloc --test kva"
    "vmalloc --test vmap_block"
    "vmalloc --test access"
    "vmalloc --test api"
)
# Not under ASan: pagetable's arena_rss and frame_rss assert on the process's resident set, which
# ASan inflates by design (shadow memory, allocator metadata and quarantine: frame_rss sees
# +4.9 MiB for 16 MiB of never-touched frames). The MAP_NORESERVE arena itself works under ASan
# (mmap_mapping reserves 16 GiB).
address_runs=(
    "pagetable --lib"
    "pagetable --test concurrent"
    "pagetable --test mmap_mapping"
    "pagetable --test model"
    "pagetable --test fuzz_regressions"
    "vmalloc --lib"
    "vmalloc --test stress"
    "vmalloc --test fault_injection"
    "vmalloc --test kva"
    "vmalloc --test vmap_block"
    "vmalloc --test access"
    "vmalloc --test api"
    "vmalloc --test remap_ioremap"
    "vmalloc --test no_alloc"
    "vmalloc --test fuzz_regressions"
)

# The sanitizers' own switches: stop at the first report, keep both stacks of a lock-order
# inversion; ASan: leak checking at exit (LeakSanitizer), stack use-after-return too.
# Suppressions, if ever needed, go in scripts/tsan-suppressions.txt, one commented line each.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 exitcode=66${TSAN_EXTRA:+ $TSAN_EXTRA}"
if [ -f "$root/scripts/tsan-suppressions.txt" ]; then
    TSAN_OPTIONS="$TSAN_OPTIONS suppressions=$root/scripts/tsan-suppressions.txt"
fi
export ASAN_OPTIONS="detect_leaks=1 halt_on_error=1 detect_stack_use_after_return=1${ASAN_EXTRA:+ $ASAN_EXTRA}"
export RUST_BACKTRACE=1
# CARGO_ENCODED_RUSTFLAGS would override RUSTFLAGS; a global RUSTFLAGS would mix into ours.
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
# Cheaper cold builds: reports only need file:line; incremental state is never reused in CI.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

pass=0
fail=0
report_pattern='WARNING: ThreadSanitizer|ERROR: AddressSanitizer|ERROR: LeakSanitizer|SUMMARY: (Thread|Address|Leak)Sanitizer'

for san in $SANITIZERS; do
    case "$san" in
        thread) runs=("${thread_runs[@]}") ;;
        address) runs=("${address_runs[@]}") ;;
        *) echo "sanitize: unknown sanitizer '$san' (thread, address)" >&2; exit 2 ;;
    esac
    export CARGO_TARGET_DIR="$base/$san"
    export RUSTFLAGS="-Zsanitizer=$san"
    export RUSTDOCFLAGS="-Zsanitizer=$san"
    cargo_test=(cargo "+$TOOLCHAIN" test -Zbuild-std --target "$target" -j "$JOBS")

    # One build per sanitizer of every selected test binary.
    selection=()
    for run in "${runs[@]}"; do
        sel="${run%% -- *}"
        selection+=("$sel")
    done
    # Build each package's chosen targets in one cargo call (a --test name exists in one
    # package only).
    start=$(date +%s)
    for pkg in pagetable vmalloc; do
        pkg_targets=()
        for sel in "${selection[@]}"; do
            read -r -a words <<<"$sel"
            [ "${words[0]}" = "$pkg" ] && pkg_targets+=("${words[@]:1}")
        done
        [ ${#pkg_targets[@]} -eq 0 ] && continue
        if ! "${cargo_test[@]}" -p "$pkg" "${pkg_targets[@]}" --no-run >"$logs/$san-build-$pkg.log" 2>&1; then
            echo "FAIL $san build $pkg (log: $logs/$san-build-$pkg.log)"
            tail -30 "$logs/$san-build-$pkg.log"
            exit 1
        fi
    done
    echo "---- $san: build $(( $(date +%s) - start )) s"

    for run in "${runs[@]}"; do
        sel="${run%% -- *}"
        extra=()
        if [ "$sel" != "$run" ]; then
            read -r -a extra <<<"${run#* -- }"
        fi
        read -r -a words <<<"$sel"
        pkg="${words[0]}"
        name="$pkg/${words[*]:1}"
        name="${name//--lib/lib}"
        name="${name//--test /}"
        log="$logs/$san-${name//\//-}.log"
        t0=$(date +%s)
        status=0
        "${cargo_test[@]}" -p "$pkg" "${words[@]:1}" -- "${extra[@]}" >"$log" 2>&1 || status=$?
        secs=$(( $(date +%s) - t0 ))
        result="$(grep -E '^test result: ' "$log" | tail -1 | sed -E 's/^test result: //; s/; finished in .*//')"
        if [ "$status" -eq 0 ] && ! grep -qE "$report_pattern" "$log"; then
            pass=$((pass + 1))
            echo "PASS $san $name: ${result:-no result line} (${secs} s)"
        else
            fail=$((fail + 1))
            echo "FAIL $san $name: exit $status, ${result:-no result line} (${secs} s, log: $log)"
            # Show the sanitizer report (or the panic) in the CI log.
            if grep -qE "$report_pattern" "$log"; then
                awk '/WARNING: ThreadSanitizer|ERROR: (Address|Leak)Sanitizer/ { p = 1 }
                     p { print; if (++n >= 80 || /^SUMMARY: /) exit }' "$log"
            else
                grep -E -A12 "panicked at|^failures:" "$log" | head -40
            fi
        fi
    done
done

echo "sanitize: $pass passed, $fail failed (${SANITIZERS})"
[ "$fail" -eq 0 ]
