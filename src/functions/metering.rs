//! Fuel: a wasmer middleware that meters every operator a guest executes, cheaper than
//! `wasmer_middlewares::Metering` for the same guarantee.
//!
//! Both take each basic block's cost (the sum of its operators' costs) from a counter.
//! `Metering` does it where the block ends and also compares the counter with the cost there
//! and traps; here the comparison happens only where execution can come back again: at each
//! function's entry and at each loop's head. Between two such points a run executes only an
//! acyclic path of one function, so it can go past its fuel by at most that path's cost before
//! it traps. The counter is signed: below zero is out of fuel.
//!
//! The counter lives in the instance's context, so every subtraction is a load and a store of
//! one memory word, and each depends on the one before: that chain, not the arithmetic, is
//! what metering costs (a naive `fib(30)` over HTTP took 6.4 ms unmetered and 9.7 ms when each
//! block paid at its end and a call ended a block; ARCHITECTURE.md has the figures). So a
//! block here is paid for at its *start*: its operators are held back until its end is seen,
//! and then emitted after the subtraction of their cost. A block that follows a branch or a
//! function's entry check then subtracts from the value the compiler still has in a register,
//! and only a call's return needs a fresh load. Calls do not end a block (the callee checks at
//! its entry what the caller has paid so far, including the call), and the operators that
//! only delimit code (`block`, `loop`, `else`, `end`, `nop`) cost nothing, so a function's
//! fall-through return subtracts nothing.
//!
//! The counter and the exhausted flag are exported as the globals `wasmer_metering_remaining_points`
//! and `wasmer_metering_points_exhausted`, as `Metering` names them, and read with [`remaining`].

use std::sync::Mutex;
use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{
    AsStoreMut, ExportIndex, GlobalInit, GlobalType, Instance, LocalFunctionIndex, Mutability, Type,
};
use wasmer_types::{GlobalIndex, ModuleInfo};

const REMAINING: &str = "wasmer_metering_remaining_points";
const EXHAUSTED: &str = "wasmer_metering_points_exhausted";

/// The module middleware: one instance meters one module (its globals are that module's).
pub(super) struct Fuel {
    initial: u64,
    cost: fn(&Operator) -> u64,
    globals: Mutex<Option<(GlobalIndex, GlobalIndex)>>,
}

impl std::fmt::Debug for Fuel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fuel")
            .field("initial", &self.initial)
            .finish()
    }
}

impl Fuel {
    /// Meters with `cost` per operator; `initial` is what the module's start function may use.
    pub(super) fn new(initial: u64, cost: fn(&Operator) -> u64) -> Fuel {
        Fuel {
            initial,
            cost,
            globals: Mutex::new(None),
        }
    }
}

impl ModuleMiddleware for Fuel {
    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let globals = *self.globals.lock().unwrap_or_else(|p| p.into_inner());
        Box::new(FunctionFuel {
            cost: self.cost,
            globals,
            accumulated: 0,
            block: Vec::new(),
            entered: false,
        })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let mut globals = self.globals.lock().unwrap_or_else(|p| p.into_inner());
        if globals.is_some() {
            return Err(MiddlewareError::new(
                "Fuel",
                "one Fuel middleware meters one module",
            ));
        }
        let remaining = info
            .globals
            .push(GlobalType::new(Type::I64, Mutability::Var));
        info.global_initializers.push(GlobalInit::I64Const(
            i64::try_from(self.initial).unwrap_or(i64::MAX),
        ));
        info.exports
            .insert(REMAINING.to_string(), ExportIndex::Global(remaining));
        let exhausted = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports
            .insert(EXHAUSTED.to_string(), ExportIndex::Global(exhausted));
        *globals = Some((remaining, exhausted));
        Ok(())
    }
}

struct FunctionFuel<'a> {
    cost: fn(&Operator) -> u64,
    globals: Option<(GlobalIndex, GlobalIndex)>,
    /// The cost of the block so far.
    accumulated: u64,
    /// The block's operators, held back until its end so that its cost is paid at its start.
    block: Vec<Operator<'a>>,
    /// Whether the entry check was emitted.
    entered: bool,
}

impl std::fmt::Debug for FunctionFuel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionFuel")
            .field("accumulated", &self.accumulated)
            .finish()
    }
}

/// Where a block ends: the sources and targets of branches.
fn ends_block(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Loop { .. }
            | Operator::End
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::BrIf { .. }
            | Operator::Return
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
    )
}

impl<'a> FunctionMiddleware<'a> for FunctionFuel<'a> {
    fn feed(
        &mut self,
        operator: Operator<'a>,
        state: &mut MiddlewareReaderState<'a>,
    ) -> Result<(), MiddlewareError> {
        let Some((remaining, exhausted)) = self.globals else {
            return Err(MiddlewareError::new("Fuel", "the module was not prepared"));
        };
        let (remaining, exhausted) = (remaining.as_u32(), exhausted.as_u32());
        let check = [
            Operator::GlobalGet {
                global_index: remaining,
            },
            Operator::I64Const { value: 0 },
            Operator::I64LtS,
            Operator::If {
                blockty: BlockType::Empty,
            },
            Operator::I32Const { value: 1 },
            Operator::GlobalSet {
                global_index: exhausted,
            },
            Operator::Unreachable,
            Operator::End,
        ];
        if !self.entered {
            self.entered = true;
            state.extend(&check);
        }
        self.accumulated += (self.cost)(&operator);
        if !ends_block(&operator) {
            self.block.push(operator);
            return Ok(());
        }
        let is_loop = matches!(operator, Operator::Loop { .. });
        if self.accumulated > 0 {
            state.extend(&[
                Operator::GlobalGet {
                    global_index: remaining,
                },
                Operator::I64Const {
                    value: i64::try_from(self.accumulated).unwrap_or(i64::MAX),
                },
                Operator::I64Sub,
                Operator::GlobalSet {
                    global_index: remaining,
                },
            ]);
            self.accumulated = 0;
        }
        state.extend(self.block.drain(..));
        state.push_operator(operator);
        if is_loop {
            state.extend(&check);
        }
        Ok(())
    }
}

/// Sets the fuel of a run and clears the exhausted flag.
pub(super) fn set(store: &mut impl AsStoreMut, instance: &Instance, points: u64) {
    let points = i64::try_from(points).unwrap_or(i64::MAX);
    if let Ok(global) = instance.exports.get_global(REMAINING) {
        let _ = global.set(store, wasmer::Value::I64(points));
    }
    if let Ok(global) = instance.exports.get_global(EXHAUSTED) {
        let _ = global.set(store, wasmer::Value::I32(0));
    }
}

/// The fuel left, or `None` once it ran out: the guest trapped on it, or went below zero on a
/// path that ended before the next check.
pub(super) fn remaining(store: &mut impl AsStoreMut, instance: &Instance) -> Option<u64> {
    let exhausted = instance
        .exports
        .get_global(EXHAUSTED)
        .ok()
        .map(|g| g.get(store));
    if let Some(wasmer::Value::I32(1)) = exhausted {
        return None;
    }
    match instance
        .exports
        .get_global(REMAINING)
        .ok()
        .map(|g| g.get(store))
    {
        Some(wasmer::Value::I64(left)) => u64::try_from(left).ok(),
        _ => Some(0),
    }
}
