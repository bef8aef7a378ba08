//! The wasm32 side of the ABI: raw imports, the request buffer, and the glue behind
//! [`crate::export_policy!`]. The only `unsafe` in a policy build lives here.

use crate::abi::{
    DECISION_ADMIT, DECISION_ERROR, DECISION_QUEUE, DECISION_REJECT, RESERVATION_SIZE, RESERVE_RESERVED,
    RESERVE_TOO_FAR,
};
use crate::codec::{DecisionRecord, decode_request, encode_windows};
use crate::{Bucket, Decision, Host, HostError, Level, Request, Reservation, Window};
use std::cell::RefCell;

// The module and names must equal abi::IMPORT_MODULE / IMPORT_*; attributes need literals.
#[link(wasm_import_module = "sluice")]
unsafe extern "C" {
    #[link_name = "reserve"]
    fn host_reserve(windows_ptr: *const u8, windows_len: i32, max_delay_ms: i64, out_ptr: *mut u8) -> i32;
    #[link_name = "reserve_bucket"]
    fn host_reserve_bucket(interval_ms: i64, burst: i64, max_delay_ms: i64, out_ptr: *mut u8) -> i32;
    #[link_name = "now_ms"]
    fn host_now_ms() -> i64;
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: i32);
}

thread_local! {
    /// The request buffer handed to the host by `sluice_alloc`.
    static REQUEST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The decision record and its reason, valid until the next call.
    static DECISION: RefCell<([u8; crate::abi::DECISION_SIZE], String)> =
        const { RefCell::new(([0; crate::abi::DECISION_SIZE], String::new())) };
}

/// `sluice_alloc`: (re)size the request buffer and return its address.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else { return 0 };
    REQUEST.with_borrow_mut(|buf| {
        buf.clear();
        buf.resize(len, 0);
        buf.as_mut_ptr() as i32
    })
}

/// `sluice_decide`: decode the request, run the policy, encode its decision.
pub fn decide<F>(ptr: i32, len: i32, policy: F) -> i32
where
    F: Fn(&Request<'_>, &mut WasmHost) -> Result<Decision, HostError>,
{
    let outcome = REQUEST.with_borrow(|buf| {
        // The host wrote the request into our own buffer (possibly one allocated for an
        // earlier, longer request); check it passed that buffer back.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if ptr != buf.as_ptr() as i32 || len > buf.len() {
            return Err("request not in the sluice_alloc buffer".to_string());
        }
        let req = decode_request(&buf[..len]).ok_or_else(|| "malformed request record".to_string())?;
        policy(&req, &mut WasmHost).map_err(|e| e.to_string())
    });
    let (kind, value, reason) = match outcome {
        Ok(Decision::Admit) => (DECISION_ADMIT, 0, String::new()),
        Ok(Decision::Queue { run_at_ms }) => (DECISION_QUEUE, run_at_ms, String::new()),
        Ok(Decision::Reject { retry_after_ms, reason }) => (DECISION_REJECT, retry_after_ms as i64, reason),
        Err(reason) => (DECISION_ERROR, 0, reason),
    };
    DECISION.with_borrow_mut(|(record, text)| {
        *text = reason;
        *record =
            DecisionRecord { kind, value, reason_ptr: text.as_ptr() as u32, reason_len: text.len() as u32 }.encode();
        record.as_ptr() as i32
    })
}

fn reservation(code: i32, out: &[u8; RESERVATION_SIZE], max_delay_ms: u64) -> Result<Reservation, HostError> {
    let slot_ms = i64::from_le_bytes(out[..8].try_into().expect("8 bytes"));
    let now_ms = i64::from_le_bytes(out[8..].try_into().expect("8 bytes"));
    match code {
        RESERVE_RESERVED => Ok(Reservation::Reserved { slot_ms, now_ms }),
        RESERVE_TOO_FAR => Ok(Reservation::TooFar { slot_ms, now_ms, max_delay_ms }),
        err => Err(HostError::from_code(err)),
    }
}

/// The real host, reached through the imports.
#[derive(Debug)]
pub struct WasmHost;

impl Host for WasmHost {
    fn reserve(&mut self, windows: &[Window], max_delay_ms: u64) -> Result<Reservation, HostError> {
        let encoded = encode_windows(windows);
        let mut out = [0u8; RESERVATION_SIZE];
        let max_delay = i64::try_from(max_delay_ms).unwrap_or(i64::MAX);
        // SAFETY: both pointers are to live buffers of the lengths passed; the host only
        // reads `encoded` and writes RESERVATION_SIZE bytes to `out`.
        let code = unsafe { host_reserve(encoded.as_ptr(), windows.len() as i32, max_delay, out.as_mut_ptr()) };
        reservation(code, &out, max_delay_ms)
    }

    fn reserve_bucket(&mut self, bucket: Bucket, max_delay_ms: u64) -> Result<Reservation, HostError> {
        let mut out = [0u8; RESERVATION_SIZE];
        let (interval, burst) = (bucket.interval_ms as i64, bucket.burst as i64);
        let max_delay = i64::try_from(max_delay_ms).unwrap_or(i64::MAX);
        // SAFETY: `out` is a live buffer of RESERVATION_SIZE bytes, all the host writes.
        let code = unsafe { host_reserve_bucket(interval, burst, max_delay, out.as_mut_ptr()) };
        reservation(code, &out, max_delay_ms)
    }

    fn now_ms(&self) -> i64 {
        // SAFETY: no arguments, no memory access.
        unsafe { host_now_ms() }
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Error => crate::abi::LOG_ERROR,
            Level::Warn => crate::abi::LOG_WARN,
            Level::Info => crate::abi::LOG_INFO,
            Level::Debug => crate::abi::LOG_DEBUG,
        };
        // SAFETY: the host reads `len` bytes from a live string.
        unsafe { host_log(level, message.as_ptr(), message.len() as i32) }
    }
}
