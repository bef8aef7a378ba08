//! The Sluice policy ABI, version 1. This module is the specification; the host
//! (`sluice`) and the guest SDK both use these constants, never string literals.
//!
//! A policy is a WebAssembly **core module** (not a component, not wasm-bindgen
//! output) that imports only functions from module [`IMPORT_MODULE`] and exports:
//!
//! | export                 | signature                     | meaning                                   |
//! |------------------------|-------------------------------|-------------------------------------------|
//! | `memory`               | memory                        | the guest's linear memory                 |
//! | [`EXPORT_ABI_VERSION`] | `() -> i32`                   | must return [`ABI_VERSION`]               |
//! | [`EXPORT_ALLOC`]       | `(len: i32) -> i32`           | a guest buffer of `len` bytes, 0 on failure |
//! | [`EXPORT_DECIDE`]      | `(ptr: i32, len: i32) -> i32` | decide on the request at `ptr`; returns a pointer to a [`DECISION_SIZE`]-byte decision record |
//!
//! Host functions (module [`IMPORT_MODULE`]):
//!
//! | import                | signature                                                              |
//! |-----------------------|------------------------------------------------------------------------|
//! | [`IMPORT_RESERVE`]    | `(windows_ptr: i32, windows_len: i32, max_delay_ms: i64, out_ptr: i32) -> i32` |
//! | [`IMPORT_RESERVE_BUCKET`] | `(interval_ms: i64, burst: i64, max_delay_ms: i64, out_ptr: i32) -> i32` |
//! | [`IMPORT_NOW_MS`]     | `() -> i64`                                                            |
//! | [`IMPORT_LOG`]        | `(level: i32, ptr: i32, len: i32)`                                     |
//!
//! ## A call, step by step
//! 1. The host calls `sluice_alloc(len)` and writes the request record (below) into the
//!    returned buffer. The guest owns the buffer; the host never frees it. The host may
//!    skip the call and reuse the buffer of an earlier `sluice_alloc` of at least `len`
//!    bytes on the same instance (it does, to save a call per decision).
//! 2. The host calls `sluice_decide(ptr, len)`. During the call the guest may call the
//!    host functions. One reservation (`reserve` or `reserve_bucket`) per decision.
//! 3. `sluice_decide` returns a pointer to the decision record (below), owned by the
//!    guest and valid until the next call into the guest.
//!
//! One instance serves one decision at a time and is reused for later decisions, so
//! globals persist between calls; policies must not rely on that.
//!
//! ## Encodings (all integers little-endian)
//! **Request record**, three length-prefixed fields, each `u32 len` then `len` bytes:
//! the user id (UTF-8, 1-128 bytes), the plan (UTF-8, empty when the request named
//! none), the payload (JSON text, `null` when absent).
//!
//! **Window** (input of `reserve`): [`WINDOW_SIZE`] bytes, `u64 limit` then
//! `u64 window_ms`. At most [`MAX_WINDOWS`] windows; `1 <= limit <= MAX_LIMIT`,
//! `1 <= window_ms <= MAX_WINDOW_MS`.
//!
//! **Reservation** (output of `reserve`, written at `out_ptr`): [`RESERVATION_SIZE`]
//! bytes, `i64 slot_ms` then `i64 now_ms`, both unix milliseconds of the Redis clock.
//!
//! **Decision record**: [`DECISION_SIZE`] bytes: `u32 kind` (a `DECISION_*` constant),
//! `u32 reason_len`, `i64 value`, `u32 reason_ptr`, `u32` padding. `value` is the
//! run-at time (unix ms) for [`DECISION_QUEUE`], the retry-after in ms for
//! [`DECISION_REJECT`], unused otherwise. The reason (UTF-8, at most
//! [`MAX_REASON_LEN`] bytes are read) explains a reject or an error.
//!
//! ## `reserve`: the atomic multi-window check-and-reserve
//! Finds the earliest start time `slot >= now` for the current request's task such that
//! every window holds at most `limit` starts of this user's tasks in any `window_ms`, and
//! no earlier-reserved task of the user starts later (FIFO). If `slot - now <=
//! max_delay_ms`, the slot is taken and the task stored in one atomic Redis step
//! ([`RESERVE_RESERVED`]); otherwise nothing is consumed and `slot` is the earliest
//! start ([`RESERVE_TOO_FAR`]). A decision that reserved must admit (when `slot <=
//! now`) or queue until `slot`; a reject or a trap after a reservation makes the host
//! cancel it, so a task is never half-stored.
//!
//! ## `reserve_bucket`: the same, with a token bucket
//! Like `reserve`, but the start must conform to a token bucket checked with GCRA: up to
//! `burst` starts at once, refilled one per `interval_ms` (`1 <= interval_ms <=
//! MAX_WINDOW_MS`, `1 <= burst <= MAX_LIMIT`). Same output record and return codes.
//!
//! ## Return codes of `reserve` and `reserve_bucket`
//! `>= 0` is a result ([`RESERVE_RESERVED`], [`RESERVE_TOO_FAR`]); `< 0` an error the
//! policy made ([`ERR_BAD_POINTER`], [`ERR_BAD_WINDOW`], [`ERR_ALREADY_RESERVED`]).
//! Infrastructure failures (Redis down) never reach the guest: the host aborts the
//! call and answers 503 itself.
//!
//! ## Limits the host enforces
//! Fuel ([`decision_fuel`]: [`FUEL_PER_DECISION`] units, roughly one per wasm instruction,
//! and [`FUEL_PER_REQUEST_BYTE`] per byte of the request), of which each host call takes
//! its share too: [`FUEL_PER_RESERVE`] for `reserve` and `reserve_bucket` whatever they
//! answer (each may be a Redis script call), [`FUEL_PER_LOG`] for `log`, [`FUEL_PER_NOW`]
//! for `now_ms`. So a decision makes fewer than ten reservation attempts, fifty log lines
//! and a thousand clock reads per million units (a
//! request at the 64 KiB body limit brings about two million more), and a policy
//! that retries in a loop runs out of fuel instead of hammering Redis or the log. Linear
//! memory up to [`MAX_MEMORY_BYTES`], tables up to [`MAX_TABLE_ELEMENTS`] entries, no
//! imports besides the table above (no WASI: no files, no network, no clock but
//! `now_ms`). A module breaking a limit traps (a `memory.grow` or `table.grow` past it
//! returns -1); the host answers 503 for that decision and replaces the instance.

/// Version of this ABI; bumped on any incompatible change.
pub const ABI_VERSION: u32 = 1;

/// Module name of every host function.
pub const IMPORT_MODULE: &str = "sluice";
/// Host function: the atomic multi-window check-and-reserve.
pub const IMPORT_RESERVE: &str = "reserve";
/// Host function: the atomic token-bucket (GCRA) check-and-reserve.
pub const IMPORT_RESERVE_BUCKET: &str = "reserve_bucket";
/// Host function: unix milliseconds by the host's Redis-aligned clock.
pub const IMPORT_NOW_MS: &str = "now_ms";
/// Host function: write a log line attributed to the policy.
pub const IMPORT_LOG: &str = "log";

/// Export: the guest's linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// Export: returns [`ABI_VERSION`].
pub const EXPORT_ABI_VERSION: &str = "sluice_abi_version";
/// Export: allocate the request buffer.
pub const EXPORT_ALLOC: &str = "sluice_alloc";
/// Export: decide on one request.
pub const EXPORT_DECIDE: &str = "sluice_decide";

/// `reserve` result: slot taken, task stored.
pub const RESERVE_RESERVED: i32 = 0;
/// `reserve` result: the earliest slot is more than `max_delay_ms` away; nothing consumed.
pub const RESERVE_TOO_FAR: i32 = 1;
/// `reserve` error: a pointer or length outside guest memory, or too many windows.
pub const ERR_BAD_POINTER: i32 = -1;
/// `reserve` error: a limit or window out of range, or a negative `max_delay_ms`.
pub const ERR_BAD_WINDOW: i32 = -2;
/// `reserve` error: this decision already reserved.
pub const ERR_ALREADY_RESERVED: i32 = -3;

/// Decision kind: start the task now.
pub const DECISION_ADMIT: u32 = 0;
/// Decision kind: start the task at `value` (unix ms).
pub const DECISION_QUEUE: u32 = 1;
/// Decision kind: refuse the task; retry after `value` ms.
pub const DECISION_REJECT: u32 = 2;
/// Decision kind: the policy failed; `reason` says why.
pub const DECISION_ERROR: u32 = 3;

/// Bytes of one window record.
pub const WINDOW_SIZE: usize = 16;
/// Bytes of the reservation record.
pub const RESERVATION_SIZE: usize = 16;
/// Bytes of the decision record.
pub const DECISION_SIZE: usize = 24;
/// Most windows one `reserve` may check.
pub const MAX_WINDOWS: usize = 8;
/// Largest `limit` of a window.
pub const MAX_LIMIT: u64 = 10_000;
/// Longest window: one day.
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// Longest `max_delay_ms`: one day.
pub const MAX_DELAY_MS: u64 = 86_400_000;
/// Longest reason or log message the host reads.
pub const MAX_REASON_LEN: usize = 1024;
/// Fuel granted to one decision, besides [`FUEL_PER_REQUEST_BYTE`] for its request.
pub const FUEL_PER_DECISION: u64 = 1_000_000;
/// Fuel granted to a decision per byte of its request record, for reading it: the SDK's
/// decoding checks the text is UTF-8, about 2.5 units a byte of ASCII and up to 25 a byte
/// of multi-byte text, so a 64 KiB payload in Cyrillic alone took more than
/// [`FUEL_PER_DECISION`]. A valid request must never run a policy out of fuel by its size.
pub const FUEL_PER_REQUEST_BYTE: u64 = 32;

/// The fuel a decision on a request record of `len` bytes gets.
pub const fn decision_fuel(len: usize) -> u64 {
    FUEL_PER_DECISION + FUEL_PER_REQUEST_BYTE * len as u64
}
/// Fuel one `reserve` or `reserve_bucket` call takes: a tenth of a decision's.
pub const FUEL_PER_RESERVE: u64 = FUEL_PER_DECISION / 10;
/// Fuel one `log` call takes: a fiftieth of a decision's.
pub const FUEL_PER_LOG: u64 = FUEL_PER_DECISION / 50;
/// Fuel one `now_ms` call takes: a thousandth of a decision's. A host call costs the
/// host far more than the one unit of the instruction that makes it; free, a loop of
/// `now_ms` calls held the worker's thread for a million clock reads.
pub const FUEL_PER_NOW: u64 = FUEL_PER_DECISION / 1000;
/// Most entries of a policy instance's tables (the function table a compiler emits for
/// indirect calls holds tens to hundreds).
pub const MAX_TABLE_ELEMENTS: usize = 10_000;
/// Largest linear memory of a policy instance.
pub const MAX_MEMORY_BYTES: usize = 16 << 20;

/// Log levels of [`IMPORT_LOG`].
pub const LOG_ERROR: i32 = 0;
/// Warning.
pub const LOG_WARN: i32 = 1;
/// Information.
pub const LOG_INFO: i32 = 2;
/// Debugging detail.
pub const LOG_DEBUG: i32 = 3;
