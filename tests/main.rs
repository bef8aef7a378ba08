//! Integration tests: one binary, helpers in `support`. Every test starts its own
//! `redis-server` on a unix socket in a temp dir; none touches a shared Redis.
//! Policies come from `just build-policies` / `just build-test-policies`.

mod api;
mod cases;
mod reliability;
mod sandbox;
mod schedule;
mod supervisor;
mod support;
