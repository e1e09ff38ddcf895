#!/usr/bin/env bash
# Boot the kernel of benches/qemu-kernel under QEMU (software emulation, no KVM) and run the
# test_vmalloc cases in it, with vmalloc on the CPU's own MMU:
#   1. -smp 1, nr_threads=1
#   2. -smp 4, nr_threads=4 (workers truly in parallel, TLB shootdowns by IPI, the
#      lazy-against-eager shootdown comparison)
#   3. the broken-flush build on -smp 4 (its TLB flush does nothing): it must FAIL, through
#      its stale-TLB test, or the test could not catch what it exists for
# Each boot's serial log is printed (and kept in benches/qemu-kernel/target/qemu-*.log); the
# kernel leaves QEMU through isa-debug-exit: status 33 is PASS, 35 is FAIL.
#
# Arguments are kernel command-line words appended to every boot, e.g.
#   bash scripts/qemu.sh test_loop_count=100000 test_repeat_count=1 sequential_test_order=1
# Default: test_loop_count=10000 test_repeat_count=3 (the smoke template's loop count, 3
# repeats instead of 10 so that the three boots fit CI's time).
# Environment: QEMU_TIMEOUT (seconds per boot, default 300), QEMU_MEM (default 1G).
# Installs what a fresh machine lacks: Debian's qemu-system-x86, the x86_64-unknown-none
# target. Ends with one line "qemu: N passed, M failed" (boots that did as expected).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
kdir="$root/benches/qemu-kernel"
timeout_s="${QEMU_TIMEOUT:-300}"
mem="${QEMU_MEM:-1G}"
params="test_loop_count=10000 test_repeat_count=3 $*"

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "== installing qemu-system-x86 (Debian)"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-none$'; then
    rustup target add x86_64-unknown-none
fi

echo "== building the kernel (release, x86_64-unknown-none) and its broken-flush twin"
out="$kdir/target/x86_64-unknown-none/release/qemu-kernel"
(cd "$kdir" && cargo build --release --quiet)
cp "$out" "$kdir/target/qemu-kernel.elf"
(cd "$kdir" && cargo build --release --quiet --features broken-flush)
cp "$out" "$kdir/target/qemu-kernel-broken.elf"

passed=0
failed=0

# boot NAME ELF CPUS EXPECT(pass|fail) CMDLINE...
boot() {
    local name=$1 elf=$2 cpus=$3 expect=$4
    shift 4
    local log="$kdir/target/qemu-$name.log"
    echo "== boot $name: -smp $cpus, $*"
    local start=$SECONDS status=0
    timeout --foreground "$timeout_s" qemu-system-x86_64 \
        -machine q35 -cpu max -m "$mem" -smp "$cpus" -accel tcg,thread=multi \
        -nodefaults -display none -monitor none -serial stdio -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$elf" -append "$*" </dev/null | tee "$log" || status=${PIPESTATUS[0]}
    local secs=$((SECONDS - start))
    local verdict
    case "$expect:$status" in
        pass:33) verdict=ok ;;
        fail:35)
            if grep -q '^stale_tlb_test: .* -> FAIL' "$log"; then verdict=ok; else verdict=bad; fi
            ;;
        *) verdict=bad ;;
    esac
    if [ "$verdict" = ok ]; then
        passed=$((passed + 1))
        echo "== boot $name: exit status $status, as expected ($expect), ${secs} s"
    else
        failed=$((failed + 1))
        echo "== boot $name: exit status $status, expected $expect (33 pass, 35 fail, 124 timeout), ${secs} s"
    fi
}

boot smp1 "$kdir/target/qemu-kernel.elf" 1 pass nr_threads=1 $params
boot smp4 "$kdir/target/qemu-kernel.elf" 4 pass nr_threads=4 $params
boot smp4-broken-flush "$kdir/target/qemu-kernel-broken.elf" 4 fail \
    nr_threads=4 run_test_mask=0 ipi_compare_loops=0 $params

echo "qemu: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
