#!/usr/bin/env python3
"""Write the libFuzzer dictionaries fuzz/dict/<target>.dict.

The harnesses decode operations with `arbitrary`: an enum's variant is picked by a
little-endian u32 tag, variant k of n for tags in [k * 2^32 / n, (k + 1) * 2^32 / n). Random
bytes pick some variant anyway, so the tokens here are the exact tag of each variant (the
middle of its interval): libFuzzer's dictionary mutations then insert or overwrite whole
operation starts, which keeps the following operations aligned more often than byte
mutations do. `alloc_free_mt` prefixes every operation with its thread byte (0 or 1).
The variant counts must match the `Op` enums in src/ (a test in src/lib.rs checks them).

Usage: python3 fuzz/make_dicts.py   (from anywhere; rewrites fuzz/dict/*.dict)
"""

import os

# target -> (variant names in declaration order, prefix bytes of an operation)
TARGETS = {
    "alloc_free": (
        "Vmalloc VmallocUser VmallocApi NodeRange Vfree VfreeAtomic Vread Vwrite Purge MapRam "
        "UnmapRam UnmapAliases Vmap Vunmap GetVmArea AllocVmArea FreeVmArea Ioremap Iounmap "
        "FindVmArea Info Remap UserUnmap UserWrite Inject Cpu".split(),
        [b""],
    ),
    "alloc_free_mt": (
        "Vmalloc NodeRange Vfree VfreeAtomic Vread Vwrite MapRam Purge UnmapAliases Find".split(),
        [b"\x00", b"\x01"],
    ),
    "free_tree": ("Alloc Peek Free Insert AllocAt Reserve".split(), [b""]),
    "pagetable": (
        "Map MapContiguous Unmap Protect Populate CleanUp Copy Fault Write Ballast".split(),
        [b""],
    ),
    "llist": (
        "Add AddBatch AddBatchRaw DelAll DelFirst Reverse PopFront PushFront AddChain "
        "Release".split(),
        [b""],
    ),
}


def tag(k: int, n: int) -> bytes:
    """The little-endian u32 in the middle of variant k's interval."""
    return (((2 * k + 1) << 31) // n).to_bytes(4, "little")


def esc(b: bytes) -> str:
    return "".join(f"\\x{x:02x}" for x in b)


def main() -> None:
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dict")
    os.makedirs(d, exist_ok=True)
    for target, (names, prefixes) in TARGETS.items():
        lines = [f"# {target}: the arbitrary tag of each Op variant (fuzz/make_dicts.py)"]
        for k, name in enumerate(names):
            for p in prefixes:
                suffix = f"_t{p[0]}" if p else ""
                lines.append(f'{name}{suffix}="{esc(p + tag(k, len(names)))}"')
        with open(os.path.join(d, f"{target}.dict"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
