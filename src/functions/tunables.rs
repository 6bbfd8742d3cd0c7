//! Engine tunables that cap every linear memory at the limit of the function being
//! instantiated. wasmer 7's `BaseTunables` has no knobs, so this wraps it and clamps the memory
//! type before the memory is created. The limit is per invocation: the worker thread sets it
//! (`with_memory_cap`) around `Instance::new`, which creates the memories on that thread.
//!
//! The trait has `unsafe` methods, so this module (and the artifact loader) are the only places
//! that allow unsafe code; they only delegate.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use wasmer::sys::vm::{
    MemoryError, MemoryStyle, TableStyle, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition,
};
use wasmer::sys::{BaseTunables, Tunables};
use wasmer::{MemoryType, Pages, TableType};

thread_local! {
    /// The memory limit, in 64 KiB pages, of the instance being created on this thread.
    static CAP_PAGES: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` with linear memories capped at `bytes`.
pub fn with_memory_cap<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    let pages = u32::try_from(bytes / wasmer::WASM_PAGE_SIZE as u64).unwrap_or(u32::MAX);
    CAP_PAGES.with(|c| c.set(pages));
    let out = f();
    CAP_PAGES.with(|c| c.set(0));
    out
}

/// `BaseTunables` with every memory's maximum clamped to the current cap.
pub struct CappedTunables {
    base: BaseTunables,
}

impl CappedTunables {
    pub fn new() -> Self {
        CappedTunables {
            base: BaseTunables::new(),
        }
    }

    fn capped(&self, ty: &MemoryType) -> Result<MemoryType, MemoryError> {
        let cap = Pages(CAP_PAGES.with(|c| c.get()));
        if ty.minimum > cap {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: cap,
            });
        }
        let mut ty = *ty;
        ty.maximum = Some(ty.maximum.map_or(cap, |m| m.min(cap)));
        Ok(ty)
    }
}

impl Tunables for CappedTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        // The style is part of the compiled code, so it must not depend on the cap.
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        self.base.create_host_memory(&self.capped(ty)?, style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let ty = self.capped(ty)?;
        // SAFETY: forwarded unchanged from the engine, which upholds the contract.
        unsafe {
            self.base
                .create_vm_memory(&ty, style, vm_definition_location)
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(ty, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: forwarded unchanged from the engine, which upholds the contract.
        unsafe { self.base.create_vm_table(ty, style, vm_definition_location) }
    }
}
