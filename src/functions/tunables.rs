//! Engine tunables that keep every memory and table of an instance within the limit of the
//! function being instantiated. wasmer 7's `BaseTunables` has no knobs, so this wraps it and
//! clamps the memory and table types before they are created. The limit is per invocation: the
//! worker thread sets it (`with_limits`) around `Instance::new`, which creates the memories and
//! tables on that thread.
//!
//! One budget in bytes covers both. Tables are fixed at their declared minimum (`table.grow`
//! answers -1), and their bytes are set aside before any memory is created; each memory's
//! maximum is then clamped to what is left, and takes its share, so a module with several
//! memories cannot multiply the limit either.
//!
//! An instance's own memories come from `memories`, which keeps their address space from one
//! invocation for the next; imported and shared memories are wasmer's own.
//!
//! The trait has `unsafe` methods, so this module, `memories` and the artifact loader are the
//! only places that allow unsafe code; this one only delegates.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use wasmer::sys::vm::{
    MemoryError, MemoryStyle, TableStyle, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition,
};
use wasmer::sys::{BaseTunables, Tunables};
use wasmer::{MemoryType, Module, Pages, TableType};

/// What one table element costs the host: wasmer stores each as one pointer.
pub(super) const TABLE_ELEMENT_BYTES: u64 = 8;

thread_local! {
    /// Bytes that memories of the instance being created on this thread may still reserve.
    static MEMORY_BUDGET: Cell<u64> = const { Cell::new(0) };
}

/// The bytes the tables that `module` defines take at instantiation: their declared minimum,
/// which is also their maximum here.
pub(super) fn table_bytes(module: &Module) -> u64 {
    let info = module.info();
    info.tables
        .values()
        .skip(info.num_imported_tables)
        .map(|t| u64::from(t.minimum) * TABLE_ELEMENT_BYTES)
        .sum()
}

/// Runs `f` (which instantiates `module`) with its memories and tables together capped at
/// `bytes`. Fails without running `f` when the tables alone exceed it.
pub(super) fn with_limits<T>(
    bytes: u64,
    module: &Module,
    f: impl FnOnce() -> T,
) -> Result<T, String> {
    let tables = table_bytes(module);
    let Some(memories) = bytes.checked_sub(tables) else {
        return Err(format!(
            "the module's tables take {tables} bytes, over the limit of {bytes}"
        ));
    };
    MEMORY_BUDGET.with(|c| c.set(memories));
    let out = f();
    MEMORY_BUDGET.with(|c| c.set(0));
    Ok(out)
}

/// `BaseTunables` with every memory's maximum clamped to the remaining budget and every table
/// fixed at its minimum.
pub(super) struct CappedTunables {
    base: BaseTunables,
}

impl CappedTunables {
    pub(super) fn new() -> Self {
        CappedTunables {
            base: BaseTunables::new(),
        }
    }

    /// Clamps a memory to the remaining budget and takes its maximum from it.
    fn reserve(&self, ty: &MemoryType) -> Result<MemoryType, MemoryError> {
        let budget = MEMORY_BUDGET.with(|c| c.get());
        let cap = Pages(u32::try_from(budget / wasmer::WASM_PAGE_SIZE as u64).unwrap_or(u32::MAX));
        if ty.minimum > cap {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: cap,
            });
        }
        let mut ty = *ty;
        let maximum = ty.maximum.map_or(cap, |m| m.min(cap));
        ty.maximum = Some(maximum);
        MEMORY_BUDGET.with(|c| c.set(budget - maximum.bytes().0 as u64));
        Ok(ty)
    }
}

/// A table that cannot grow past its declared minimum (its bytes were set aside up front).
fn fixed(ty: &TableType) -> TableType {
    let mut ty = *ty;
    ty.maximum = Some(ty.minimum);
    ty
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
        self.base.create_host_memory(&self.reserve(ty)?, style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let ty = self.reserve(ty)?;
        // SAFETY: forwarded unchanged from the engine, which upholds the contract.
        unsafe {
            match super::memories::create(&ty, style, vm_definition_location) {
                Some(created) => created,
                None => self
                    .base
                    .create_vm_memory(&ty, style, vm_definition_location),
            }
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(&fixed(ty), style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: forwarded unchanged from the engine, which upholds the contract.
        unsafe {
            self.base
                .create_vm_table(&fixed(ty), style, vm_definition_location)
        }
    }
}
