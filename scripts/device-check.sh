#!/usr/bin/env bash
# Device check (a machine with many real cores and no Rust toolchain): run from the folder
# scripts/device-bundle.sh builds (stripped release test binaries named after their test
# file, listed in tests.list; pair_old / pair_new and kvapair / kvapair_old; area_bytes;
# test_vmalloc; this script). It runs every test binary at the real CPU count, some at
# simulated 64 and 1 CPUs, the concurrency tests 20 times, 1-page vmalloc+vfree scaling at
# 1..16 threads, old against new, and issue 12's scaling figures: the KVA fixed and random
# patterns on ours and every peer at 1..16 threads (kvapair, and kvapair_old if given), the
# one-thread lock floor with the peers behind their lock (kvapair --floor --locked),
# bytes per live area (area_bytes), the runner's --compare (two charts in $OUT) and Linux's
# vmap-nodes configuration (run_test_mask=7 nr_threads=64). Any binary missing from the
# folder is skipped. THREADS (default "1 2 4 8 16") sets the counts of the scaling runs;
# SKIP_TESTS=1 skips the test binaries (scaling figures only); VMAP_NODES_LOOPS (default
# 1000000, Linux's) is the last run's test_loop_count.
#   scripts/device-bundle.sh DIR   (OLD_TREE=<worktree of the old build> for the *_old ones)
#   copy DIR over, then: OUT=/tmp/out DIR/device-check.sh
set -u
cd "$(dirname "$0")"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "nproc $(nproc)"; lscpu | grep -E "Model name|^CPU\(s\)" || true
fails=0
run() { # name, env...
    local t=$1; shift
    [ -x ./$t ] || return 0
    local start=$(date +%s%N)
    if env "$@" timeout 120 ./$t -q --test-threads=4 > "$OUT/$t.$*.txt" 2>&1; then r=ok; else r=FAIL; fails=$((fails+1)); fi
    printf "%-16s %-22s %s %s %dms\n" "$t" "$*" "$r" "$(grep -E '^test result' "$OUT/$t.$*.txt" | tail -1 | cut -c1-60)" "$(( ($(date +%s%N) - start) / 1000000 ))"
}
if [ -f tests.list ]; then ALL="$(tr '\n' ' ' < tests.list)"; else
ALL="vmalloc_lib pagetable_lib reclaim stress kva vmap_block api access bad_input concurrent fault_injection remap_ioremap fuzz_regressions_vmalloc fuzz_regressions_pagetable no_alloc model mmap_mapping calls edges huge stacks vrealloc"; fi
if [ -z "${SKIP_TESTS:-}" ]; then
echo "== every test binary at the real CPU count"
for t in $ALL; do run $t KVMALLOC_NR_CPUS=; done
echo "== at simulated 64 and 1 CPUs"
for n in 64 1; do for t in vmalloc_lib reclaim stress kva vmap_block api; do run $t KVMALLOC_NR_CPUS=$n; done; done
echo "== concurrency tests x20 on real cores"
for i in $(seq 1 20); do for t in reclaim stress kva vmap_block concurrent; do run $t KVMALLOC_NR_CPUS= RUN=$i; done; done
fi
THREADS="${THREADS:-1 2 4 8 16}"
echo "== pair scaling (1-page vmalloc+vfree, M pairs/s over all threads), old vs new"
for th in $THREADS; do
  for b in pair_old pair_new pair_old pair_new; do
    [ -x ./$b ] || continue
    printf "%s %2d: " $b $th; ./$b --pairs 400000 --threads $th 2>&1 | grep -oE "= [0-9.]+ Mpairs/s" || echo error
  done
done
PEERS=kva,kva-single-lock,range-alloc,offset-allocator,free-list,vmem,btreemap-first-fit
for k in kvapair kvapair_old; do
  [ -x ./$k ] || continue
  for pat in fixed random; do
    echo "== $k $pat pattern, M pairs/s over all threads"
    for th in $THREADS; do
      ./$k --alloc $PEERS --pattern $pat --threads $th --pairs 400000 2>/dev/null || { echo "$k $pat $th: error"; fails=$((fails+1)); }
    done
  done
done
if [ -x ./kvapair ]; then
  for pat in fixed random; do
    echo "== kvapair $pat pattern, one thread: the lock floor, and the peers behind their lock"
    ./kvapair --floor --locked --alloc $PEERS --pattern $pat --pairs 400000 2>/dev/null || { echo "kvapair --floor $pat: error"; fails=$((fails+1)); }
  done
fi
if [ -x ./area_bytes ]; then
  echo "== bytes per live area (1,000,000 live 2-page areas)"
  ./area_bytes --areas 1000000 || fails=$((fails+1))
fi
if [ -x ./test_vmalloc ]; then
  echo "== test_vmalloc --compare (charts in \$OUT)"
  ./test_vmalloc --compare --compare_threads ${THREADS// /,} --chart "$OUT/compare.svg" || fails=$((fails+1))
  echo "== test_vmalloc run_test_mask=7 nr_threads=64 (Linux's vmap-nodes figure)"
  t0=$SECONDS
  ./test_vmalloc run_test_mask=7 nr_threads=64 test_loop_count=${VMAP_NODES_LOOPS:-1000000} || fails=$((fails+1))
  echo "run_test_mask=7 nr_threads=64 test_loop_count=${VMAP_NODES_LOOPS:-1000000}: $((SECONDS - t0)) s wall"
fi
echo "FAILS $fails"
