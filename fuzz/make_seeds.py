#!/usr/bin/env python3
"""Write the scripted part of the seed corpora: fuzz/corpus/<target>/seed-*.

Every byte string is a valid input (the harnesses decode a few header bytes, then one
`arbitrary`-derived operation after another until the bytes run out), so a seed is just
bytes: here, for each target, a few pseudo-random inputs of several lengths (a fixed RNG
seed, so the files never change) that decode to long mixed operation sequences, which
libFuzzer would otherwise take a long time to grow to. The rest of each corpus is inputs
found by `cargo fuzz run` and minimized with `cargo fuzz cmin` (named by their SHA-1).

Usage: python3 fuzz/make_seeds.py   (from anywhere; rewrites only seed-* files)
"""

import os
import random

# target -> lengths of the scripted seeds (bytes)
TARGETS = {
    "alloc_free": [64, 256, 512, 1024, 2048, 2048, 4096],
    "free_tree": [32, 128, 512, 1024, 2048],
    "pagetable": [32, 128, 512, 1024, 2048],
    "llist": [32, 128, 512, 1024],
    # Last: the RNG is shared in this order, so a target added at the end leaves the seeds
    # of the others unchanged.
    "alloc_free_mt": [64, 256, 512, 1024, 2048],
}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(20240601)
    for target, lengths in TARGETS.items():
        d = os.path.join(here, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for i, n in enumerate(lengths):
            data = bytes(rng.getrandbits(8) for _ in range(n))
            with open(os.path.join(d, f"seed-{i:02}-{n}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
