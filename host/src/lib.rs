//! Sluice: a per-user rate limiter with a Redis-backed queue, whose admit-or-queue
//! decisions are made by WebAssembly policies.
//!
//! - [`config`]: the one `Config`, from the environment and `.env`.
//! - [`supervisor`]: one worker process per core; restarts; clean shutdown.
//! - [`worker`]: one process: HTTP, policy watcher, queue consumer, completion log.
//! - [`http`]: the router, handlers and the one `AppError`.
//! - [`policy`]: wasmtime engine, host functions, the registry of loaded policies.
//! - [`queue`]: submitting tasks through the policy; the consumer of due tasks.
//! - [`store`]: Redis: keys, Lua scripts, the Redis-aligned clock.
//! - [`task`]: validated ids and task records.
//! - [`completion_log`]: the shared append-only log of task runs.
//! - [`logging`]: tracing set-up, each line tagged with its process.
#![forbid(unsafe_code)]

pub mod completion_log;
pub mod config;
pub mod http;
pub mod logging;
pub mod policy;
pub mod queue;
pub mod store;
pub mod supervisor;
pub mod task;
pub mod worker;
