//! The host functions a policy may import (see `limiter_wasm::abi`), and the per-store
//! state they work on. Guest memory is only touched through bounds-checked slices, so
//! a hostile pointer or length becomes an error code, never a host fault.

use limiter_wasm::abi::{
    self, ERR_ALREADY_RESERVED, ERR_BAD_POINTER, FUEL_PER_LOG, FUEL_PER_NOW, FUEL_PER_RESERVE, MAX_REASON_LEN,
    RESERVATION_SIZE, WINDOW_SIZE,
};
use limiter_wasm::codec::{decode_windows, validate_bucket};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Caller, Linker, Memory, StoreLimits, Trap};

use crate::store::clock::{Clock, local_ms};
use crate::store::{NewTask, Reserved, SlotRule, Store, StoreError};

/// What a live decision needs from the host: Redis, the task, the lease to take.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Redis.
    pub store: Store,
    /// The task being decided on.
    pub task: Arc<NewTask>,
    /// Lease to take when the task is admitted.
    pub lease: Duration,
    /// The Redis-aligned clock.
    pub clock: Arc<Clock>,
}

/// The data of one policy instance's store.
#[derive(Debug)]
pub struct HostState {
    /// Memory limits of the instance.
    pub limits: StoreLimits,
    /// Name of the policy, for its log lines.
    pub policy: Arc<str>,
    /// The live call, or `None` for a smoke call (validation), which never touches Redis.
    pub call: Option<CallContext>,
    /// What `reserve` stored during this call, if anything.
    pub reserved: Option<Reserved>,
    /// A Redis failure during this call; the call was aborted because of it.
    pub failure: Option<StoreError>,
    /// The guest's exported memory, once instantiated: found once, not by name on every
    /// host call.
    pub memory: Option<Memory>,
}

/// Define every host function in `linker`.
pub fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_RESERVE,
        |mut caller: Caller<'_, HostState>, (w_ptr, w_len, max_delay, out_ptr): (i32, i32, i64, i32)| {
            Box::new(async move { reserve(&mut caller, w_ptr, w_len, max_delay, out_ptr).await })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_RESERVE_BUCKET,
        |mut caller: Caller<'_, HostState>, (interval, burst, max_delay, out_ptr): (i64, i64, i64, i32)| {
            Box::new(async move { reserve_bucket(&mut caller, interval, burst, max_delay, out_ptr).await })
        },
    )?;
    linker.func_wrap(abi::IMPORT_MODULE, abi::IMPORT_NOW_MS, |mut caller: Caller<'_, HostState>| {
        charge(&mut caller, FUEL_PER_NOW)?;
        Ok(caller.data().call.as_ref().map_or_else(local_ms, |c| c.clock.now_ms()))
    })?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_LOG,
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            charge(&mut caller, FUEL_PER_LOG)?;
            let len = usize::try_from(len).unwrap_or(0).min(MAX_REASON_LEN);
            let text = guest_bytes(&mut caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned());
            let text = text.unwrap_or_else(|| "<log message out of bounds>".into());
            let policy = caller.data().policy.clone();
            // Escaped (`{:?}`): a policy's text is one log line, never a forged other one.
            match level {
                abi::LOG_ERROR => tracing::error!(%policy, "{text:?}"),
                abi::LOG_WARN => tracing::warn!(%policy, "{text:?}"),
                abi::LOG_INFO => tracing::info!(%policy, "{text:?}"),
                _ => tracing::debug!(%policy, "{text:?}"),
            }
            Ok(())
        },
    )?;
    Ok(())
}

async fn reserve(
    caller: &mut Caller<'_, HostState>,
    w_ptr: i32,
    w_len: i32,
    max_delay: i64,
    out_ptr: i32,
) -> wasmtime::Result<i32> {
    charge(caller, FUEL_PER_RESERVE)?;
    let Some(count) = usize::try_from(w_len).ok().filter(|n| *n <= abi::MAX_WINDOWS) else {
        return Ok(ERR_BAD_POINTER);
    };
    let Some(bytes) = guest_bytes(caller, w_ptr, count * WINDOW_SIZE) else { return Ok(ERR_BAD_POINTER) };
    if guest_bytes(caller, out_ptr, RESERVATION_SIZE).is_none() {
        return Ok(ERR_BAD_POINTER);
    }
    let windows = match decode_windows(&bytes, max_delay) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let rule = SlotRule {
        windows: windows.iter().map(|w| (w.limit, w.window_ms)).collect(),
        max_delay_ms: Some(max_delay as u64),
        ..SlotRule::default()
    };
    take(caller, rule, out_ptr).await
}

async fn reserve_bucket(
    caller: &mut Caller<'_, HostState>,
    interval: i64,
    burst: i64,
    max_delay: i64,
    out_ptr: i32,
) -> wasmtime::Result<i32> {
    charge(caller, FUEL_PER_RESERVE)?;
    if guest_bytes(caller, out_ptr, RESERVATION_SIZE).is_none() {
        return Ok(ERR_BAD_POINTER);
    }
    if let Err(code) = validate_bucket(interval, burst, max_delay) {
        return Ok(code);
    }
    let rule = SlotRule {
        bucket: Some((interval as u64, burst as u64)),
        max_delay_ms: Some(max_delay as u64),
        ..SlotRule::default()
    };
    take(caller, rule, out_ptr).await
}

/// The shared end of both reservations: one per decision, then Redis, then the answer.
async fn take(caller: &mut Caller<'_, HostState>, rule: SlotRule, out_ptr: i32) -> wasmtime::Result<i32> {
    if caller.data().reserved.is_some() {
        return Ok(ERR_ALREADY_RESERVED);
    }
    let outcome = match caller.data().call.clone() {
        Some(call) => call.store.reserve(&call.task, &rule, call.lease).await,
        None => Ok(Reserved::Queued { slot_ms: local_ms() + 1_000, now_ms: local_ms() }),
    };
    let reserved = match outcome {
        Ok(r) => r,
        Err(e) => {
            caller.data_mut().failure = Some(e);
            return Err(wasmtime::Error::msg("redis unavailable during reserve"));
        }
    };
    let (code, slot, now) = match reserved {
        Reserved::Admitted { slot_ms, now_ms } | Reserved::Queued { slot_ms, now_ms } => {
            (abi::RESERVE_RESERVED, slot_ms, now_ms)
        }
        Reserved::TooFar { slot_ms, now_ms } => (abi::RESERVE_TOO_FAR, slot_ms, now_ms),
    };
    if code == abi::RESERVE_RESERVED {
        caller.data_mut().reserved = Some(reserved);
    }
    let mut out = [0u8; RESERVATION_SIZE];
    out[..8].copy_from_slice(&slot.to_le_bytes());
    out[8..].copy_from_slice(&now.to_le_bytes());
    write_guest(caller, out_ptr, &out)?;
    Ok(code)
}

/// Take a host call's fuel from the decision's; without enough left the call traps as a
/// wasm instruction would (see `limiter_wasm::abi`, "Limits the host enforces").
fn charge(caller: &mut Caller<'_, HostState>, cost: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    caller.set_fuel(left.saturating_sub(cost))?;
    if left < cost { Err(Trap::OutOfFuel.into()) } else { Ok(()) }
}

fn memory(caller: &mut Caller<'_, HostState>) -> Option<Memory> {
    // By name until the instance is set up (a start function may call the host).
    caller.data().memory.or_else(|| caller.get_export(abi::EXPORT_MEMORY).and_then(|e| e.into_memory()))
}

/// A copy of `len` guest bytes at `ptr`, or `None` if any of them is out of bounds.
pub fn guest_bytes(caller: &mut Caller<'_, HostState>, ptr: i32, len: usize) -> Option<Vec<u8>> {
    let memory = memory(caller)?;
    let start = u32::try_from(ptr).ok()? as usize;
    memory.data(&*caller).get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

fn write_guest(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = memory(caller).ok_or_else(|| wasmtime::Error::msg("policy exports no memory"))?;
    let start = u32::try_from(ptr).map_err(|_| wasmtime::Error::msg("negative pointer"))? as usize;
    memory.write(&mut *caller, start, bytes).map_err(|e| wasmtime::Error::msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Module, Store, StoreLimitsBuilder};

    /// A guest that hands its arguments straight to `reserve`.
    const PROBE: &str = r#"(module
        (import "sluice" "reserve" (func $r (param i32 i32 i64 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "probe") (param i32 i32 i64 i32) (result i32)
            (call $r (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"#;

    fn probe() -> impl FnMut(i32, i32, i64, i32) -> i32 {
        let engine = Engine::new(wasmtime::Config::new().consume_fuel(true)).expect("engine");
        let mut linker = Linker::new(&engine);
        define(&mut linker).expect("host functions");
        let module = Module::new(&engine, wat::parse_str(PROBE).expect("wat")).expect("module");
        let limits = StoreLimitsBuilder::new().build();
        let state =
            HostState { limits, policy: "probe".into(), call: None, reserved: None, failure: None, memory: None };
        let mut store = Store::new(&engine, state);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let instance = runtime.block_on(linker.instantiate_async(&mut store, &module)).expect("instance");
        let func = instance.get_typed_func::<(i32, i32, i64, i32), i32>(&mut store, "probe").expect("probe");
        move |a, b, c, d| {
            store.data_mut().reserved = None;
            store.set_fuel(abi::FUEL_PER_DECISION).expect("fuel");
            runtime.block_on(func.call_async(&mut store, (a, b, c, d))).expect("reserve never traps on bad input")
        }
    }

    proptest::proptest! {
        #[test]
        fn hostile_arguments_get_error_codes_never_a_fault(
            ptr in proptest::num::i32::ANY, count in -2i32..20, delay in proptest::num::i64::ANY, out in proptest::num::i32::ANY,
        ) {
            let code = probe()(ptr, count, delay, out);
            proptest::prop_assert!([abi::ERR_BAD_POINTER, abi::ERR_BAD_WINDOW, abi::RESERVE_RESERVED, abi::RESERVE_TOO_FAR].contains(&code), "code {}", code);
        }
    }

    #[test]
    fn in_bounds_zero_windows_reserve_and_a_second_reserve_is_refused() {
        let mut call = probe();
        // Memory is zeroed: one window of limit 0 is invalid; zero windows are fine.
        assert_eq!(call(0, 1, 0, 64), abi::ERR_BAD_WINDOW);
        assert_eq!(call(0, 0, 1_000, 64), abi::RESERVE_RESERVED);
        assert_eq!(call(65_536 - 8, 0, 0, 65_536 - 16), abi::RESERVE_RESERVED);
        assert_eq!(call(0, 0, 0, 65_536 - 15), abi::ERR_BAD_POINTER);
    }
}
