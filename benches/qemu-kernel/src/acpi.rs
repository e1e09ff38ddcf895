//! The CPUs, from ACPI: RSDP (given by the PVH start info, else found in the BIOS area) ->
//! RSDT or XSDT -> MADT ("APIC"), whose processor entries list each CPU's local APIC id.
//! Read once at boot through the boot tables' direct map of the low 4 GiB, before the
//! kernel's own tables (which map RAM only) are loaded.

use crate::boot::read_phys;
use crate::percpu::MAX_CPUS;

/// The CPUs the MADT lists as enabled (or online-capable), boot CPU first.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    /// Local APIC ids; `[0]` is the boot CPU's.
    pub apic_ids: [u32; MAX_CPUS],
    /// How many there are.
    pub len: usize,
}

impl Cpus {
    /// Just the boot CPU (no usable MADT).
    pub fn only(bsp: u32) -> Cpus {
        let mut apic_ids = [0; MAX_CPUS];
        apic_ids[0] = bsp;
        Cpus { apic_ids, len: 1 }
    }

    /// The ids.
    pub fn ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }
}

/// Whether the `len` bytes at `pa` sum to zero (ACPI checksums).
fn checksum_ok(pa: u64, len: u64) -> bool {
    (0..len).fold(0u8, |s, i| s.wrapping_add(read_phys::<u8>(pa + i))) == 0
}

/// Find the RSDP in the EBDA's first KiB or the BIOS area `0xe0000..0x100000`.
fn scan_rsdp() -> Option<u64> {
    let ebda = u64::from(read_phys::<u16>(0x40e)) << 4;
    let areas = [(ebda, ebda + 1024), (0xe0000, 0x100000)];
    areas.into_iter().find_map(|(s, e)| {
        (s..e)
            .step_by(16)
            .find(|&p| read_phys::<[u8; 8]>(p) == *b"RSD PTR " && checksum_ok(p, 20))
    })
}

/// The MADT's physical address, if any.
fn find_madt(rsdp: u64) -> Option<u64> {
    if read_phys::<[u8; 8]>(rsdp) != *b"RSD PTR " || !checksum_ok(rsdp, 20) {
        return None;
    }
    let revision = read_phys::<u8>(rsdp + 15);
    let (root, entry) = if revision >= 2 && read_phys::<u64>(rsdp + 24) != 0 {
        (read_phys::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(read_phys::<u32>(rsdp + 16)), 4)
    };
    let len = u64::from(read_phys::<u32>(root + 4));
    if !checksum_ok(root, len) {
        return None;
    }
    (36..len).step_by(entry as usize).find_map(|off| {
        let t = if entry == 8 {
            read_phys::<u64>(root + off)
        } else {
            u64::from(read_phys::<u32>(root + off))
        };
        (read_phys::<[u8; 4]>(t) == *b"APIC").then_some(t)
    })
}

/// The CPUs (the boot CPU, APIC id `bsp`, first), or just the boot CPU without a MADT.
pub fn cpus(rsdp: u64, bsp: u32) -> Cpus {
    let rsdp = if rsdp != 0 { Some(rsdp) } else { scan_rsdp() };
    let Some(madt) = rsdp.and_then(find_madt) else {
        return Cpus::only(bsp);
    };
    let mut out = Cpus::only(bsp);
    let len = u64::from(read_phys::<u32>(madt + 4));
    let mut off = 44;
    while off + 2 <= len {
        let (kind, elen) = (
            read_phys::<u8>(madt + off),
            u64::from(read_phys::<u8>(madt + off + 1)),
        );
        if elen < 2 {
            break;
        }
        let entry = match kind {
            // Processor local APIC: ACPI id, APIC id, flags.
            0 => Some((
                u32::from(read_phys::<u8>(madt + off + 3)),
                read_phys::<u32>(madt + off + 4),
            )),
            // Processor local x2APIC: reserved, x2APIC id, flags.
            9 => Some((
                read_phys::<u32>(madt + off + 4),
                read_phys::<u32>(madt + off + 8),
            )),
            _ => None,
        };
        if let Some((id, flags)) = entry {
            // Bit 0: enabled; bit 1: online capable.
            if flags & 0b11 != 0 && id != bsp && out.len < MAX_CPUS {
                out.apic_ids[out.len] = id;
                out.len += 1;
            }
        }
        off += elen;
    }
    out
}
