//! Micro-benchmarks: one policy decision through wasmtime with the host functions served
//! in memory (no Redis), and compiling + validating a policy module.

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use sluice::policy::{Engine, PolicyName};

/// The default policy's bytes and their sha256.
fn policy_bytes() -> (Arc<[u8]>, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/dist/default.wasm");
    let bytes = std::fs::read(path).expect("run `just build-policies` first");
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    (bytes.into(), sha256)
}

fn decision(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let engine = Engine::new().expect("engine");
    let name = PolicyName::new("default").expect("name");
    let (bytes, sha256) = policy_bytes();
    let policy = runtime.block_on(engine.load(&name, bytes, sha256)).expect("loads");
    let request = limiter_wasm::codec::encode_request("user-42", None, "null");
    // All iterations inside one block_on: the figure is the decision, not entering a runtime.
    c.bench_function("decide: default policy, reused instance, in-memory host", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    policy.dry_run(&request).await.expect("decides");
                }
                started.elapsed()
            })
        })
    });
}

fn compile(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
    let engine = Engine::new().expect("engine");
    let name = PolicyName::new("default").expect("name");
    let (bytes, sha256) = policy_bytes();
    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.bench_function("compile + validate default.wasm", |b| {
        b.iter(|| runtime.block_on(engine.load(&name, bytes.clone(), sha256.clone())).expect("loads"))
    });
    group.finish();
}

criterion_group!(benches, decision, compile);
criterion_main!(benches);
