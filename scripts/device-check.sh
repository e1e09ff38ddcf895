#!/usr/bin/env bash
# Device check (a machine with many real cores and no Rust toolchain): run from a folder
# holding stripped release test binaries named after their test file (vmalloc_lib,
# pagetable_lib, reclaim, stress, ...) and two builds of `benches/examples/pair` (pair_old,
# pair_new). It runs every test binary at the real CPU count, some at simulated 64 and 1
# CPUs, the concurrency tests 20 times, and 1-page vmalloc+vfree scaling at 1..16 threads,
# old against new. Prepare the folder with:
#   cargo test --release --no-run -p vmalloc -p pagetable; cargo build --release -p benches --example pair
#   then `strip -o <dir>/<name> target/release/deps/<name>-<hash>` for each, and this script.
set -u
cd "$(dirname "$0")"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "nproc $(nproc)"; lscpu | grep -E "Model name|^CPU\(s\)" || true
fails=0
run() { # name, env...
    local t=$1; shift
    local start=$(date +%s%N)
    if env "$@" timeout 120 ./$t -q --test-threads=4 > "$OUT/$t.$*.txt" 2>&1; then r=ok; else r=FAIL; fails=$((fails+1)); fi
    printf "%-16s %-22s %s %s %dms\n" "$t" "$*" "$r" "$(grep -E '^test result' "$OUT/$t.$*.txt" | tail -1 | cut -c1-60)" "$(( ($(date +%s%N) - start) / 1000000 ))"
}
ALL="vmalloc_lib pagetable_lib reclaim stress kva vmap_block api access bad_input concurrent fault_injection remap_ioremap fuzz_regressions_029f fuzz_regressions_1d4c no_alloc model mmap_mapping"
echo "== every test binary at the real CPU count"
for t in $ALL; do run $t KVMALLOC_NR_CPUS=; done
echo "== at simulated 64 and 1 CPUs"
for n in 64 1; do for t in vmalloc_lib reclaim stress kva vmap_block api; do run $t KVMALLOC_NR_CPUS=$n; done; done
echo "== concurrency tests x20 on real cores"
for i in $(seq 1 20); do for t in reclaim stress kva vmap_block concurrent; do run $t KVMALLOC_NR_CPUS= RUN=$i; done; done
echo "== pair scaling (1-page vmalloc+vfree, M pairs/s over all threads), old vs new"
for th in 1 2 4 8 16; do
  for b in pair_old pair_new pair_old pair_new; do
    printf "%s %2d: " $b $th; ./$b --pairs 400000 --threads $th 2>&1 | grep -oE "= [0-9.]+ Mpairs/s" || echo error
  done
done
echo "FAILS $fails"
