//! Linear memories kept from one invocation for the next.
//!
//! Every invocation gets a fresh instance, and wasmer's own memory maps ~8 GiB of address space
//! for it and unmaps it when the store drops. On this machine that was about half of a small
//! invocation's cost (a before-write hook's, a trigger's): `munmap` makes the kernel interrupt
//! the other core to flush its TLB, and every page the guest touches faults in afresh.
//! Here a memory's reservation goes back to a small pool when its store drops, cleared, and
//! the next instance takes it: no mapping, no unmapping, and a small memory's pages stay
//! resident.
//!
//! What keeps one invocation's data from the next (these functions may belong to different
//! apps' users): a region enters the pool only after every byte that was accessible is zero
//! again (written over with zeros when small, given back to the kernel with `MADV_DONTNEED`
//! otherwise, which reads as zeros), and a region that cannot be cleared is unmapped. Memories
//! use wasmer's static style, whose compiled code leaves bounds to the page protections, so
//! exactly the memory's current size is readable and writable: a region taken from the pool is
//! narrowed to the new memory's size before the instance sees it, and the rest stays
//! `PROT_NONE` up to the end of the reservation (the 4 GiB of wasm32 addresses and the guard).
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::Mutex;
use wasmer::sys::vm::{LinearMemory, MemoryError, MemoryStyle, VMMemory, VMMemoryDefinition};
use wasmer::{MemoryType, Pages};

/// Regions the pool keeps at most (the worker pools' threads use one each at a time).
const KEPT: usize = 16;

/// Up to this many accessible bytes a returned region is cleared by writing zeros, and its
/// pages stay resident for the next instance; past it the kernel takes the pages back.
const CLEAR_BY_WRITING: usize = 256 * 1024;

/// Reserved regions, each cleared: every accessible byte is zero.
static POOL: Mutex<Vec<Region>> = Mutex::new(Vec::new());

/// The address space a static memory needs: the wasm32 range and the offset guard after it.
fn reservation(style: &MemoryStyle) -> Option<usize> {
    let bound = MemoryStyle::static_bound().bytes().0;
    bound.checked_add(usize::try_from(style.offset_guard_size()).ok()?)
}

/// One reservation: `len` bytes of address space, of which the first `accessible` are
/// readable and writable and the rest `PROT_NONE`.
#[derive(Debug)]
struct Region {
    base: NonNull<u8>,
    len: usize,
    accessible: usize,
}

// SAFETY: a region is one private mapping, owned by one memory (or the pool) at a time.
unsafe impl Send for Region {}

fn os_error(call: &str) -> MemoryError {
    MemoryError::Region(format!("{call}: {}", std::io::Error::last_os_error()))
}

impl Region {
    /// Maps `len` bytes of inaccessible address space.
    fn reserve(len: usize) -> Result<Region, MemoryError> {
        // SAFETY: a new anonymous mapping at an address the kernel chooses touches nothing else.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| os_error("mmap"))?;
        Ok(Region {
            base,
            len,
            accessible: 0,
        })
    }

    /// Makes exactly the first `bytes` accessible (a multiple of the page size, within `len`).
    /// Pages it takes away are given back to the kernel first, so they read as zeros if they
    /// are made accessible again.
    fn set_accessible(&mut self, bytes: usize) -> Result<(), MemoryError> {
        if bytes > self.len {
            return Err(MemoryError::Region(format!(
                "{bytes} bytes do not fit a reservation of {}",
                self.len
            )));
        }
        let base = self.base.as_ptr();
        if bytes > self.accessible {
            // SAFETY: the range lies inside this region's own mapping.
            let done = unsafe {
                libc::mprotect(
                    base.add(self.accessible).cast(),
                    bytes - self.accessible,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if done != 0 {
                return Err(os_error("mprotect"));
            }
        } else if bytes < self.accessible {
            let (start, len) = (
                // SAFETY: `bytes` is inside the mapping.
                unsafe { base.add(bytes) }.cast(),
                self.accessible - bytes,
            );
            // SAFETY: the range lies inside this region's own mapping, and nothing refers to
            // its contents: the region belongs to no instance while it is narrowed.
            let done = unsafe {
                libc::madvise(start, len, libc::MADV_DONTNEED) == 0
                    && libc::mprotect(start, len, libc::PROT_NONE) == 0
            };
            if !done {
                return Err(os_error("madvise or mprotect"));
            }
        }
        self.accessible = bytes;
        Ok(())
    }

    /// Makes every accessible byte zero; false if the kernel refused.
    fn clear(&mut self) -> bool {
        let base = self.base.as_ptr();
        if self.accessible <= CLEAR_BY_WRITING {
            // SAFETY: the first `accessible` bytes are mapped readable and writable, and no
            // instance uses the region any more.
            unsafe { std::ptr::write_bytes(base, 0, self.accessible) };
            true
        } else {
            // SAFETY: as above; a private anonymous mapping reads as zeros after this.
            unsafe { libc::madvise(base.cast(), self.accessible, libc::MADV_DONTNEED) == 0 }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps this region's own mapping, which nothing refers to any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A cleared region of `len` bytes from the pool (one already `bytes` wide if there is one),
/// or a new one; narrowed or widened to `bytes`.
fn take(len: usize, bytes: usize) -> Result<Region, MemoryError> {
    let kept = POOL.lock().ok().and_then(|mut pool| {
        let at = pool
            .iter()
            .position(|r| r.len == len && r.accessible == bytes)
            .or_else(|| pool.iter().position(|r| r.len == len))?;
        Some(pool.swap_remove(at))
    });
    let mut region = match kept {
        Some(region) => region,
        None => Region::reserve(len)?,
    };
    region.set_accessible(bytes)?;
    Ok(region)
}

/// Gives a region back to the pool, cleared, or unmaps it.
fn give_back(mut region: Region) {
    if !region.clear() {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        if pool.len() < KEPT {
            pool.push(region);
        }
    }
}

/// A memory on a pooled region, for an instance whose `VMContext` holds its definition.
#[derive(Debug)]
struct PooledMemory {
    /// Always `Some` until the memory drops.
    region: Option<Region>,
    size: Pages,
    ty: MemoryType,
    style: MemoryStyle,
    definition: NonNull<VMMemoryDefinition>,
}

// SAFETY: the definition lives in the instance that owns this memory, as with wasmer's own
// memories, and is only written through `&mut self`.
unsafe impl Send for PooledMemory {}
// SAFETY: as above; `&self` methods only read.
unsafe impl Sync for PooledMemory {}

/// Creates a memory of `ty` (already within the function's limit) on a pooled region, or
/// `None` when its style or kind is not one the pool serves (wasmer's own memory then does).
///
/// # Safety
/// `definition` must point to the instance's definition of this memory, valid for as long as
/// the memory is used, as for `Tunables::create_vm_memory`.
pub(super) unsafe fn create(
    ty: &MemoryType,
    style: &MemoryStyle,
    definition: NonNull<VMMemoryDefinition>,
) -> Option<Result<VMMemory, MemoryError>> {
    if ty.shared || !matches!(style, MemoryStyle::Static) {
        return None;
    }
    let len = reservation(style)?;
    let bytes = ty.minimum.bytes().0;
    let region = match take(len, bytes) {
        Ok(region) => region,
        Err(e) => return Some(Err(e)),
    };
    let mut definition = definition;
    // SAFETY: the caller passes the instance's definition of this memory.
    unsafe {
        let d = definition.as_mut();
        d.base = region.base.as_ptr();
        d.current_length = bytes;
    }
    let memory = PooledMemory {
        region: Some(region),
        size: ty.minimum,
        ty: *ty,
        style: *style,
        definition,
    };
    Some(Ok(VMMemory(Box::new(memory))))
}

impl LinearMemory for PooledMemory {
    fn ty(&self) -> MemoryType {
        let mut ty = self.ty;
        ty.minimum = self.size;
        ty
    }

    fn size(&self) -> Pages {
        self.size
    }

    fn style(&self) -> MemoryStyle {
        self.style
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        if delta.0 == 0 {
            return Ok(self.size);
        }
        let refused = MemoryError::CouldNotGrow {
            current: self.size,
            attempted_delta: delta,
        };
        let Some(new) = self
            .size
            .checked_add(delta)
            .filter(|n| *n <= Pages::max_value() && self.ty.maximum.is_none_or(|m| *n <= m))
        else {
            return Err(refused);
        };
        let Some(region) = self.region.as_mut() else {
            return Err(refused);
        };
        region.set_accessible(new.bytes().0)?;
        let previous = self.size;
        self.size = new;
        // SAFETY: the definition is the instance's, valid while the instance uses this memory.
        unsafe { self.definition.as_mut().current_length = new.bytes().0 };
        Ok(previous)
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.definition
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::UnsupportedOperation {
            message: "a function's memory cannot be cloned".into(),
        })
    }

    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::UnsupportedOperation {
            message: "a function's memory cannot be copied".into(),
        })
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        if let Some(region) = self.region.take() {
            give_back(region);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = wasmer::WASM_PAGE_SIZE;

    fn bytes(region: &Region, at: usize, len: usize) -> &[u8] {
        // SAFETY: the tests read only accessible bytes of a region they own.
        unsafe { std::slice::from_raw_parts(region.base.as_ptr().add(at), len) }
    }

    fn fill(region: &mut Region, value: u8) {
        // SAFETY: as above, writing.
        unsafe { std::ptr::write_bytes(region.base.as_ptr(), value, region.accessible) };
    }

    /// A private pool would be cleaner, but the pool is process-wide by design; these tests
    /// use a reservation length no memory has, so no other test takes their regions.
    const LEN: usize = 64 * PAGE;

    #[test]
    fn a_region_comes_back_zeroed_and_as_wide_as_asked() {
        for (width, grown) in [(PAGE, 2 * PAGE), (2 * PAGE, 8 * PAGE), (PAGE, 40 * PAGE)] {
            let mut region = take(LEN, width).expect("take");
            region.set_accessible(grown).expect("grow");
            fill(&mut region, 0xAB);
            give_back(region);
            let region = take(LEN, width).expect("take again");
            assert_eq!(region.accessible, width);
            assert!(bytes(&region, 0, width).iter().all(|b| *b == 0));
            give_back(region);
        }
    }

    #[test]
    fn a_region_refuses_to_grow_past_its_reservation() {
        let mut region = take(LEN, PAGE).expect("take");
        assert!(region.set_accessible(LEN + PAGE).is_err());
        assert_eq!(region.accessible, PAGE);
        give_back(region);
    }
}
