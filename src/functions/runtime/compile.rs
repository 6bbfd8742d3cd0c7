//! Compiling a module: the Wasm features allowed, the fuel each operator costs, and the checks
//! an upload must pass (a core module's header, the guest ABI's exports and imports, the
//! memory and table limits).

use super::super::metering::Fuel;
use super::super::tunables::{table_bytes, TABLE_ELEMENT_BYTES};
use std::sync::Arc;
use wasmer::sys::{CompilerConfig, Cranelift, EngineBuilder};
use wasmer::wasmparser::Operator;
use wasmer::{Engine, ExternType, Module, Type};

/// Metering points for a module's start function (its global initialisers and top-level code).
const START_FUEL: u64 = 100_000_000;

/// The cost of one operator: 1 for every operator that does work, so even `loop br 0` runs
/// out, and nothing for those that only delimit code (every iteration of a loop still pays for
/// the branch that repeats it).
fn cost(op: &Operator) -> u64 {
    match op {
        Operator::Block { .. }
        | Operator::Loop { .. }
        | Operator::Else
        | Operator::End
        | Operator::Nop => 0,
        Operator::Call { .. } | Operator::CallIndirect { .. } => 10,
        Operator::MemoryGrow { .. } | Operator::MemoryFill { .. } | Operator::MemoryCopy { .. } => {
            100
        }
        _ => 1,
    }
}

/// The Wasm features a module may use. Every proposal that would let a module hold memory
/// outside the one capped linear memory is off: several memories, 64-bit memories, shared
/// (threads) memories and exception objects.
fn features() -> wasmer::sys::Features {
    let mut features = wasmer::sys::Features::new();
    features
        .multi_memory(false)
        .memory64(false)
        .threads(false)
        .exceptions(false);
    features
}

/// Compiles a module with metering, for the runtime engine. Returns the module (to inspect)
/// and its serialised artifact. CPU-heavy: call it off the async workers.
pub fn compile(bytes: &[u8]) -> Result<(Module, Vec<u8>), String> {
    // One metering middleware instance can compile only one module. The initial points are
    // what the module's start function (run by `Instance::new`) may use; `handle` then gets the
    // function's own fuel.
    let metering = Arc::new(Fuel::new(START_FUEL, cost));
    let mut compiler = Cranelift::default();
    compiler.push_middleware(metering);
    let engine: Engine = EngineBuilder::new(compiler)
        .set_features(Some(features()))
        .engine()
        .into();
    check_header(bytes)?;
    Module::validate(&engine, bytes).map_err(|e| one_line(&format!("invalid module: {e}")))?;
    let module =
        Module::new(&engine, bytes).map_err(|e| one_line(&format!("cannot compile: {e}")))?;
    let artifact = module
        .serialize()
        .map_err(|e| format!("cannot serialise: {e}"))?;
    Ok((module, artifact.to_vec()))
}

/// Refuses what is not a core WebAssembly module in one sentence, before the validator (whose
/// message for a bad header prints both headers as multi-line byte arrays).
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', a, b, c, d]) => Err(format!(
            "not a core WebAssembly module: binary format version {} (components and other \
             versions are not supported; build a core module for wasm32)",
            u32::from_le_bytes([*a, *b, *c, *d])
        )),
        _ => Err(
            "not a WebAssembly module: it does not start with the `\\0asm` header (upload the \
             compiled .wasm binary, not its text or source)"
                .to_string(),
        ),
    }
}

/// A message with every run of whitespace (line breaks included) made one space.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a compiled module against ABI v1: the exports it must have and the imports it may
/// have; its tables' declared sizes within `max_table_elements`; and its memory minimum plus
/// its tables within `memory_bytes`.
pub fn check_abi(
    module: &Module,
    memory_bytes: u64,
    max_table_elements: u64,
) -> Result<(), String> {
    use wasmer::FunctionType;
    let func =
        |params: &[Type], results: &[Type]| FunctionType::new(params.to_vec(), results.to_vec());
    let mut memory = None;
    let mut alloc = None;
    let mut handle = None;
    for export in module.exports() {
        match (export.name(), export.ty()) {
            ("memory", ExternType::Memory(m)) => memory = Some(*m),
            ("alloc", ExternType::Function(f)) => alloc = Some(f.clone()),
            ("handle", ExternType::Function(f)) => handle = Some(f.clone()),
            _ => {}
        }
    }
    let memory = memory.ok_or("the module must export its memory as `memory`")?;
    match alloc {
        Some(f) if f == func(&[Type::I32], &[Type::I32]) => {}
        Some(f) => return Err(format!("`alloc` must be (i32) -> i32, not {f}")),
        None => return Err("the module must export `alloc: (i32) -> i32`".into()),
    }
    match handle {
        Some(f) if f == func(&[Type::I32, Type::I32], &[Type::I64]) => {}
        Some(f) => return Err(format!("`handle` must be (i32, i32) -> i64, not {f}")),
        None => return Err("the module must export `handle: (i32, i32) -> i64`".into()),
    }
    let allowed = [
        ("log", func(&[Type::I32, Type::I32, Type::I32], &[])),
        ("call", func(&[Type::I32, Type::I32], &[Type::I32])),
        ("result_read", func(&[Type::I32], &[])),
    ];
    for import in module.imports() {
        let ok = import.module() == "emberbase"
            && allowed.iter().any(|(name, ty)| {
                import.name() == *name && matches!(import.ty(), ExternType::Function(f) if f == ty)
            });
        if !ok {
            return Err(format!(
                "import `{}.{}` ({:?}) is not allowed; a module may import emberbase.log, emberbase.call and emberbase.result_read",
                import.module(),
                import.name(),
                import.ty()
            ));
        }
    }
    let tables = table_bytes(module);
    let elements = tables / TABLE_ELEMENT_BYTES;
    if elements > max_table_elements {
        return Err(format!(
            "the module's tables declare {elements} elements, over the limit of {max_table_elements}"
        ));
    }
    let min_bytes = memory.minimum.bytes().0 as u64;
    if min_bytes + tables > memory_bytes {
        return Err(format!(
            "the module's memory starts at {} MiB and its tables take {} KiB, over the limit of {} MiB",
            min_bytes / (1024 * 1024),
            tables / 1024,
            memory_bytes / (1024 * 1024)
        ));
    }
    Ok(())
}
