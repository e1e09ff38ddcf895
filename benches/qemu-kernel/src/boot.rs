//! The entry: QEMU's `-kernel` loads this ELF at its physical addresses and, finding the PVH
//! note (`XEN_ELFNOTE_PHYS32_ENTRY`), enters `pvh_start` in 32-bit protected mode with paging
//! off and EBX holding the physical address of an `hvm_start_info` (memory map, command
//! line, ACPI RSDP).
//!
//! The stub clears `.bss`, builds boot page tables (the first 4 GiB mapped twice with 2 MiB
//! pages: identity, and at [`PAGE_OFFSET`], where the direct map lives for good), enables
//! PAE, long mode, NX and paging, loads a 64-bit GDT and calls [`kernel_main`] on the boot
//! stack. [`BootInfo::read`] then copies what the start info says into kernel memory before
//! anything can overwrite the low memory it lies in.

use crate::memory::{MAX_REGIONS, MemRegion, MemoryMap};

/// Where the direct map of physical memory starts (Linux's x86_64 `PAGE_OFFSET`, PML4 slot
/// 273): physical `p` is at `PAGE_OFFSET + p`.
pub const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;

/// Size of the boot CPU's stack (in `.bss`).
pub const BOOT_STACK_BYTES: usize = 256 << 10;

// The PVH note, the 32-bit entry, the long-mode switch, the boot tables, the GDT and the boot
// stack. GDT selectors: 0x08 64-bit code, 0x10 data (the AP trampoline uses the same values).
core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info, kept for kernel_main */
    mov $__bss_start, %edi      /* clear .bss (the boot tables and stack are in it) */
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $boot_stack_top, %esp

    mov $boot_pdpt, %eax        /* PML4[0] (identity) and PML4[273] (direct map) */
    or $3, %eax
    mov %eax, boot_pml4
    mov %eax, boot_pml4 + 273 * 8
    mov $boot_pd, %eax          /* PDPT[0..4] -> the four page directories */
    or $3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
.Lpdpt:
    mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop .Lpdpt
    mov $boot_pd, %edi          /* 2048 leaves of 2 MiB: present, writable, huge */
    mov $0x83, %eax
    mov $2048, %ecx
.Lpd:
    mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop .Lpd

    mov %cr4, %eax              /* PAE */
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER: long mode, no-execute */
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax              /* paging, write protect, protected mode */
    or $0x80010001, %eax
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi
    call kernel_main
.Lhang:
    cli
    hlt
    jmp .Lhang

    .section .rodata.boot, "a"
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
    .balign 8
    .global boot_gdt_ptr
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip {stack}
boot_stack_top:
"#,
    stack = const BOOT_STACK_BYTES,
    options(att_syntax)
);

unsafe extern "C" {
    /// First byte of the kernel image (linker script).
    static __kernel_start: u8;
    /// First byte after the kernel image, `.bss` included (linker script).
    static __kernel_end: u8;
}

/// Physical `[start, end)` of the kernel image (identity-mapped: addresses are physical).
pub fn kernel_image() -> (u64, u64) {
    // Only the addresses of the linker-script symbols are taken, never their bytes.
    (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    )
}

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336e_c578;

/// The longest command line kept.
pub const CMDLINE_MAX: usize = 512;

/// What the boot loader told the kernel, copied out of low memory.
#[derive(Debug)]
pub struct BootInfo {
    /// The physical memory map.
    pub memory: MemoryMap,
    /// The command line (`-append`), as bytes.
    pub cmdline: [u8; CMDLINE_MAX],
    /// Its length.
    pub cmdline_len: usize,
    /// Physical address of the ACPI RSDP (0 if none was given).
    pub rsdp: u64,
}

impl BootInfo {
    /// Read the PVH start info at physical `start_info` (still identity-mapped by the boot
    /// tables). `None` if its magic is wrong or it has no memory map (version 0).
    pub fn read(start_info: u32) -> Option<BootInfo> {
        let base = u64::from(start_info);
        let magic = read_phys::<u32>(base);
        let version = read_phys::<u32>(base + 4);
        if magic != START_INFO_MAGIC || version < 1 {
            return None;
        }
        let cmdline_paddr = read_phys::<u64>(base + 24);
        let rsdp = read_phys::<u64>(base + 32);
        let memmap = read_phys::<u64>(base + 40);
        let entries = read_phys::<u32>(base + 48) as usize;
        let mut memory = MemoryMap {
            regions: [MemRegion::default(); MAX_REGIONS],
            len: 0,
        };
        for i in 0..entries.min(MAX_REGIONS) {
            let e = memmap + 24 * i as u64;
            memory.regions[i] = MemRegion {
                start: read_phys::<u64>(e),
                len: read_phys::<u64>(e + 8),
                kind: read_phys::<u32>(e + 16),
            };
            memory.len += 1;
        }
        let mut cmdline = [0u8; CMDLINE_MAX];
        let mut cmdline_len = 0;
        if cmdline_paddr != 0 {
            while cmdline_len < CMDLINE_MAX {
                let b = read_phys::<u8>(cmdline_paddr + cmdline_len as u64);
                if b == 0 {
                    break;
                }
                cmdline[cmdline_len] = b;
                cmdline_len += 1;
            }
        }
        Some(BootInfo {
            memory,
            cmdline,
            cmdline_len,
            rsdp,
        })
    }

    /// The command line as text (invalid UTF-8 reads as empty).
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

/// Read a `T` at physical address `pa` through the boot identity map (low 4 GiB), before the
/// kernel's own tables exist, or through the direct map after.
pub fn read_phys<T: Copy>(pa: u64) -> T {
    let p = (PAGE_OFFSET + pa) as *const T;
    // SAFETY: physical memory below 4 GiB is mapped at `PAGE_OFFSET` by the boot tables and
    // RAM and firmware tables stay mapped there in the kernel's tables; the callers read
    // firmware-provided structures (start info, memory map, ACPI tables) that nothing writes
    // concurrently. `read_unaligned` has no alignment requirement.
    unsafe { core::ptr::read_unaligned(p) }
}
