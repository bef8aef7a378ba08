//! Guest SDK for Sluice rate-limit policies.
//!
//! A policy is one function `fn(&Request, &mut impl Host) -> Result<Decision, HostError>`
//! exported with [`export_policy!`]. Built for `wasm32-unknown-unknown` it talks to the
//! Sluice host through the ABI specified in [`abi`]; built natively it runs against
//! [`testing::MemoryHost`], an in-memory double of the host, so policy logic is tested
//! with `cargo test` in microseconds. Policy code never needs `unsafe`.

pub mod abi;
pub mod codec;
#[cfg(target_arch = "wasm32")]
mod sys;
pub mod testing;
mod types;

pub use types::{Bucket, Decision, HostError, Level, Request, Reservation, Window};

/// What a policy may ask of its host. The Sluice host implements it over Redis; the
/// [`testing::MemoryHost`] double implements it in memory.
pub trait Host {
    /// Atomically reserve the earliest start for the current task that keeps every
    /// window, unless that start is more than `max_delay_ms` away (see [`abi`]).
    fn reserve(&mut self, windows: &[Window], max_delay_ms: u64) -> Result<Reservation, HostError>;
    /// Atomically reserve the earliest start the token bucket allows (GCRA), unless it
    /// is more than `max_delay_ms` away (see [`abi`]).
    fn reserve_bucket(&mut self, bucket: Bucket, max_delay_ms: u64) -> Result<Reservation, HostError>;
    /// Unix milliseconds by the host's clock.
    fn now_ms(&self) -> i64;
    /// Write a log line attributed to the policy.
    fn log(&self, level: Level, message: &str);
}

/// Export `$decide` as the policy of this crate: generates the ABI exports on wasm32
/// and nothing natively (native tests call the function directly). The policy crate's
/// `edge` feature leaves them out, for the wasm-bindgen build (`limiter-edge`).
#[macro_export]
macro_rules! export_policy {
    ($decide:path) => {
        /// ABI export: the ABI version this policy speaks.
        #[cfg(all(target_arch = "wasm32", not(feature = "edge")))]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_abi_version() -> i32 {
            $crate::abi::ABI_VERSION as i32
        }

        /// ABI export: a buffer for the request record.
        #[cfg(all(target_arch = "wasm32", not(feature = "edge")))]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_alloc(len: i32) -> i32 {
            $crate::__private::alloc(len)
        }

        /// ABI export: decide on the request at `ptr`.
        #[cfg(all(target_arch = "wasm32", not(feature = "edge")))]
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_decide(ptr: i32, len: i32) -> i32 {
            $crate::__private::decide(ptr, len, $decide)
        }
    };
}

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private {
    pub use crate::sys::{WasmHost, alloc, decide};
}
