//! `get_vm_area`, `alloc_vm_area` and `ioremap` in the `alloc_free` target: reservations
//! with nothing mapped (or device memory mapped), their ioremap alignment, their exact
//! `VmArea`, the refusal of RAM for `ioremap` and of the flags only the vmalloc layer sets.

use pagetable::PhysAddr;
use vmalloc::{PAGE_KERNEL_IO, VmFlags, VmallocError};

use super::model::{ARENA_BYTES, Area, KVA_END, KVA_START, Kind, PAGE};
use super::ops::{ioremap_align, kva_check};
use super::{Bits, Handle, Size, World};

/// The flags `get_vm_area` accepts (`vmalloc::vmap`'s `GET_VM_AREA_FLAGS`).
const GET_VM_AREA_FLAGS: VmFlags = VmFlags::IOREMAP
    .union(VmFlags::MAP)
    .union(VmFlags::USERMAP)
    .union(VmFlags::NO_GUARD);

/// Device memory for `ioremap` (far above the arena).
const DEVICE: u64 = 0x1_0000_0000;

impl World {
    pub(super) fn get_vm_area(&mut self, size: Size, bits: Bits, populate: bool) {
        let step = self.step;
        let b = bits.0;
        let mut flags = VmFlags::empty();
        for (bit, f) in [
            (0, VmFlags::IOREMAP),
            (1, VmFlags::NO_GUARD),
            (2, VmFlags::USERMAP),
            (3, VmFlags::VPAGES),
            (4, VmFlags::ALLOC),
            (5, VmFlags::MAP),
        ] {
            if b & (1 << bit) != 0 {
                flags |= f;
            }
        }
        if populate {
            flags = VmFlags::IOREMAP;
        }
        let bytes = size.bytes();
        let pages = bytes.div_ceil(PAGE);
        let guard = if flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE
        };
        let total = pages * PAGE + guard;
        let align = if flags.contains(VmFlags::IOREMAP) {
            ioremap_align(pages * PAGE)
        } else {
            PAGE
        };
        // `get_vm_area` takes only the caller's kinds (Linux 6.x: the library's own flags,
        // VPAGES and ALLOC included, are refused with the flags outside the allowed set).
        let pre = if !(flags - GET_VM_AREA_FLAGS).is_empty() {
            Err(VmallocError::InvalidFlags {
                flags: flags - GET_VM_AREA_FLAGS,
            })
        } else if bytes == 0 {
            Err(VmallocError::InvalidSize { size: 0 })
        } else {
            kva_check(bytes, total, align, KVA_START, KVA_END)
        };
        let st = self.frames.stats();
        self.arm();
        let mut ptes = Vec::new();
        let got = if populate {
            self.vm.alloc_vm_area(bytes, Some(&mut ptes))
        } else {
            self.vm.get_vm_area(bytes, flags)
        };
        self.disarm();
        self.sync();
        let area = match (pre, got) {
            (Err(e), got) => {
                assert_eq!(got.map(|a| a.start), Err(e), "step {step}: get_vm_area");
                return;
            }
            (Ok((align, lo, hi)), Err(e)) => {
                self.check_alloc_failure(&e, bytes, total, align, lo, hi, st.free, st.used, 4);
                return;
            }
            (Ok((align, lo, hi)), Ok(area)) => {
                self.check_new_range(area.start, total, align, lo, hi);
                if populate {
                    assert_eq!(
                        ptes.len() as u64,
                        pages,
                        "step {step}: alloc_vm_area's PTE slots"
                    );
                }
                area
            }
        };
        assert_eq!(
            (
                area.end,
                area.info.flags,
                area.info.nr_pages,
                area.info.phys_addr
            ),
            (area.start + total, flags, 0, None),
            "step {step}: get_vm_area's VmArea"
        );
        self.add_area(Area {
            start: area.start,
            end: area.end,
            flags,
            nr_pages: 0,
            phys: None,
            kind: Kind::Reserved,
        });
        self.handles.push(Handle {
            addr: area.start,
            len: pages * PAGE,
            count: 0,
        });
    }

    pub(super) fn ioremap(&mut self, phys: u16, off: u16, size: u16) {
        let step = self.step;
        let off = u64::from(off) % PAGE;
        let base = if phys.is_multiple_of(8) {
            (u64::from(phys) * PAGE) % ARENA_BYTES
        } else {
            DEVICE + u64::from(phys) * PAGE
        };
        let p = base + off;
        let size = if size.is_multiple_of(16) {
            0
        } else {
            u64::from(size) % (64 * PAGE) + 1
        };
        let len = if size == 0 {
            0
        } else {
            ((p + size - 1) / PAGE + 1) * PAGE - base
        };
        let align = ioremap_align(len);
        let pre = if size == 0 {
            Err(VmallocError::InvalidSize { size: 0 })
        } else if base < ARENA_BYTES {
            Err(VmallocError::IoremapOfRam { phys: p, size })
        } else {
            kva_check(len, len + PAGE, align, KVA_START, KVA_END)
        };
        let st = self.frames.stats();
        self.arm();
        let got = self
            .vm
            .ioremap(PhysAddr::new_truncate(p), size, PAGE_KERNEL_IO);
        self.disarm();
        self.sync();
        let va = match (pre, got) {
            (Err(e), got) => {
                assert_eq!(got, Err(e), "step {step}: ioremap");
                return;
            }
            (Ok((align, lo, hi)), Err(e)) => {
                self.check_alloc_failure(&e, len, len + PAGE, align, lo, hi, st.free, st.used, 4);
                return;
            }
            (Ok((align, lo, hi)), Ok(va)) => {
                let start = va.as_u64() - off;
                assert_eq!(va.as_u64() % PAGE, off, "step {step}: ioremap offset");
                self.check_new_range(start, len + PAGE, align, lo, hi);
                start
            }
        };
        let t = self
            .vm
            .kernel_space()
            .translate(World::va(va))
            .expect("ioremap mapped");
        assert_eq!(
            t.pa.as_u64(),
            base,
            "step {step}: ioremap maps the wrong address"
        );
        self.add_area(Area {
            start: va,
            end: va + len + PAGE,
            flags: VmFlags::IOREMAP,
            nr_pages: 0,
            phys: Some(base),
            kind: Kind::Ioremap { pages: len / PAGE },
        });
        self.handles.push(Handle {
            addr: va + off,
            len: len - off,
            count: 0,
        });
    }
}
