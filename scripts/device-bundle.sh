#!/usr/bin/env bash
# Build the folder that scripts/device-check.sh runs from on a machine with many cores and no
# Rust toolchain: stripped release test binaries of `vmalloc` and `pagetable` (named after
# their test file: vmalloc_lib, pagetable_lib, stress, kva, ...; a name both crates use gets
# the crate as suffix, e.g. fuzz_regressions_vmalloc), their list (tests.list), the `pair`,
# `kvapair` and `area_bytes` examples, the `test_vmalloc` runner, and device-check.sh itself.
#
#   scripts/device-bundle.sh [OUT_DIR]        (default target/device-bundle)
#   OLD_TREE=/path/to/old/worktree scripts/device-bundle.sh
#       also builds that tree's `pair` and `kvapair` (as pair_old, kvapair_old; the new ones
#       are also copied as pair_new), for old-against-new scaling runs.
#
# Then copy OUT_DIR to the machine and run `OUT=/tmp/out ./device-check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/device-bundle}"
mkdir -p "$out"
list="$out/tests.list"
: > "$list"
cargo test --release --no-run -p vmalloc -p pagetable --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, collections
rows = []
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    kind = m["target"]["kind"][0]
    # "path+file:///.../allocator#vmalloc@0.1.0", or "...pagetable#0.1.0" (name = folder)
    path, _, frag = m["package_id"].partition("#")
    crate = frag.split("@")[0] if "@" in frag else path.rstrip("/").split("/")[-1]
    name = m["target"]["name"]
    rows.append((crate, "lib" if kind == "lib" else name, m["executable"]))
count = collections.Counter(n for _, n, _ in rows)
for crate, name, exe in rows:
    short = crate + "_lib" if name == "lib" else (name + "_" + crate if count[name] > 1 else name)
    print(short, exe)
' | while read -r name exe; do
        strip -o "$out/$name" "$exe"
        echo "$name" >> "$list"
    done
cargo build --release -p benches --example pair --example kvapair --example area_bytes
cargo build --release -p test-vmalloc
for e in pair kvapair area_bytes; do strip -o "$out/$e" "target/release/examples/$e"; done
cp "$out/pair" "$out/pair_new"
strip -o "$out/test_vmalloc" target/release/test_vmalloc
if [ -n "${OLD_TREE:-}" ]; then
    (cd "$OLD_TREE" && cargo build --release -p benches --example pair --example kvapair)
    strip -o "$out/pair_old" "$OLD_TREE/target/release/examples/pair"
    strip -o "$out/kvapair_old" "$OLD_TREE/target/release/examples/kvapair"
fi
cp scripts/device-check.sh "$out/"
echo "device-bundle: $(wc -l < "$list") test binaries and the benchmarks in $out"
