//! wasmtime, owned by the host: the engine configuration (fuel, memory limits, async
//! host calls), validation of a module before it may serve, a small pool of reusable
//! instances per policy, and running one decision.

use limiter_wasm::abi::{self, DECISION_SIZE, FUEL_PER_DECISION, MAX_MEMORY_BYTES, MAX_REASON_LEN, MAX_TABLE_ELEMENTS};
use limiter_wasm::codec::{DecisionRecord, encode_request};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{ExternType, InstancePre, Linker, Memory, Module, StoreLimitsBuilder, Trap, TypedFunc};

use super::host_fns::{self, CallContext, HostState};
use super::{PolicyError, PolicyName, Verdict};
use crate::store::Reserved;

/// Most instances of one policy version alive at once in a worker: decisions beyond them
/// wait for one (a decision holds its instance while it awaits Redis), up to
/// [`INSTANCE_WAIT`]. Each may grow to [`MAX_MEMORY_BYTES`], so this bounds what a
/// version's memory can take: 1 GiB at worst.
const MAX_INSTANCES: usize = 64;
/// Longest wait for a free instance; past it the submission is answered 503, overloaded
/// (all 64 held means decisions waiting on a slow Redis), with nothing stored.
const INSTANCE_WAIT: Duration = Duration::from_millis(250);
/// An instance whose memory grew more than this during its decisions is dropped after
/// one, not kept for the next (a request near the 64 KiB limit grows one by a page or two).
const MAX_POOLED_GROWTH: usize = 1 << 20;

/// The wasmtime engine and the linker holding the host functions; one per worker.
#[derive(Clone)]
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Arc<Linker<HostState>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that meters fuel and runs host calls asynchronously.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        // Fuel, not epochs: an epoch deadline would also count time spent awaiting Redis.
        config.consume_fuel(true);
        config.max_wasm_stack(512 * 1024);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        host_fns::define(&mut linker)?;
        Ok(Self { engine, linker: Arc::new(linker) })
    }

    /// Compile and validate `bytes`, whose sha256 is `sha256` (lowercase hex, as the caller
    /// read it), as policy `name`: it must compile, import nothing but the host ABI, export
    /// the ABI version we speak and every required export, and pass a smoke decision.
    /// Compilation runs on the blocking pool, off the request path.
    pub async fn load(&self, name: &PolicyName, bytes: Arc<[u8]>, sha256: String) -> Result<Policy, String> {
        let engine = self.engine.clone();
        let module = tokio::task::spawn_blocking(move || Module::new(&engine, &bytes))
            .await
            .map_err(|e| format!("compiler task failed: {e}"))?
            .map_err(|e| format!("not a valid wasm module: {e:#}"))?;
        check_imports(&module)?;
        let pre =
            self.linker.instantiate_pre(&module).map_err(|e| format!("imports do not match the host ABI: {e:#}"))?;
        let policy = Policy {
            name: name.clone(),
            sha256,
            loaded_at: SystemTime::now(),
            pre,
            pool: Mutex::new(Vec::new()),
            instances: Semaphore::new(MAX_INSTANCES),
        };
        let mut instance = policy.instantiate().await.map_err(|e| format!("cannot instantiate: {e}"))?;
        let version = instance
            .version
            .call_async(&mut instance.store, ())
            .await
            .map_err(|e| format!("{}: {e:#}", abi::EXPORT_ABI_VERSION))?;
        if version != abi::ABI_VERSION as i32 {
            return Err(format!("speaks ABI version {version}, the host speaks {}", abi::ABI_VERSION));
        }
        let request = encode_request("sluice-smoke-test", None, "null");
        policy.run(&mut instance, None, &request).await.map_err(|e| format!("smoke decision failed: {e}"))?;
        Ok(policy)
    }
}

fn check_imports(module: &Module) -> Result<(), String> {
    for import in module.imports() {
        let known = [abi::IMPORT_RESERVE, abi::IMPORT_RESERVE_BUCKET, abi::IMPORT_NOW_MS, abi::IMPORT_LOG];
        if import.module() != abi::IMPORT_MODULE || !known.contains(&import.name()) {
            return Err(format!("imports {}::{}, which the host does not provide", import.module(), import.name()));
        }
    }
    let exports = [abi::EXPORT_MEMORY, abi::EXPORT_ABI_VERSION, abi::EXPORT_ALLOC, abi::EXPORT_DECIDE];
    for name in exports {
        match (name, module.get_export(name)) {
            (_, None) => return Err(format!("missing export {name}")),
            (abi::EXPORT_MEMORY, Some(ExternType::Memory(_))) => {}
            (abi::EXPORT_MEMORY, Some(_)) => return Err(format!("export {name} is not a memory")),
            (_, Some(ExternType::Func(_))) => {}
            (_, Some(_)) => return Err(format!("export {name} is not a function")),
        }
    }
    Ok(())
}

/// A loaded policy: its module ready to instantiate and a pool of idle instances.
pub struct Policy {
    /// Its name.
    pub name: PolicyName,
    /// sha256 of the `.wasm` bytes, lowercase hex.
    pub sha256: String,
    /// When it went live in this worker.
    pub loaded_at: SystemTime,
    pre: InstancePre<HostState>,
    pool: Mutex<Vec<Instance>>,
    /// One permit per instance that may be alive ([`MAX_INSTANCES`]).
    instances: Semaphore,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("name", &self.name).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

struct Instance {
    store: wasmtime::Store<HostState>,
    memory: Memory,
    version: TypedFunc<(), i32>,
    alloc: TypedFunc<i32, i32>,
    decide: TypedFunc<(i32, i32), i32>,
    /// Its memory's size when it was made.
    initial_memory: usize,
    /// The guest buffer from the last `sluice_alloc`: address and size.
    request_buf: Option<(i32, usize)>,
}

/// What one decision produced: the verdict, and what `reserve` stored, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The policy's verdict.
    pub verdict: Verdict,
    /// The reservation made during the decision.
    pub reserved: Option<Reserved>,
}

/// A decision that failed, with any reservation it made (which the caller must undo).
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: PolicyError,
    /// The reservation made before it went wrong.
    pub reserved: Option<Reserved>,
}

impl Policy {
    async fn instantiate(&self) -> Result<Instance, PolicyError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MAX_MEMORY_BYTES)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(1)
            .tables(4)
            .memories(1)
            .build();
        let state = HostState {
            limits,
            policy: self.name.as_str().into(),
            call: None,
            reserved: None,
            failure: None,
            memory: None,
        };
        let mut store = wasmtime::Store::new(self.pre.module().engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_fuel(FUEL_PER_DECISION).map_err(trap)?;
        let instance = self.pre.instantiate_async(&mut store).await.map_err(trap)?;
        let missing = |what: &str| PolicyError::Failed(format!("export {what} missing or of the wrong type"));
        let memory = instance.get_memory(&mut store, abi::EXPORT_MEMORY).ok_or_else(|| missing(abi::EXPORT_MEMORY))?;
        store.data_mut().memory = Some(memory);
        Ok(Instance {
            initial_memory: memory.data_size(&store),
            memory,
            version: instance
                .get_typed_func(&mut store, abi::EXPORT_ABI_VERSION)
                .map_err(|_| missing(abi::EXPORT_ABI_VERSION))?,
            alloc: instance.get_typed_func(&mut store, abi::EXPORT_ALLOC).map_err(|_| missing(abi::EXPORT_ALLOC))?,
            decide: instance.get_typed_func(&mut store, abi::EXPORT_DECIDE).map_err(|_| missing(abi::EXPORT_DECIDE))?,
            request_buf: None,
            store,
        })
    }

    /// An idle instance from the pool, or a new one.
    async fn check_out(&self) -> Result<Instance, PolicyError> {
        let pooled = self.pool.lock().expect("policy pool lock poisoned").pop();
        match pooled {
            Some(instance) => Ok(instance),
            None => self.instantiate().await,
        }
    }

    /// Return an instance that decided without failing, unless its memory grew much.
    fn check_in(&self, instance: Instance) {
        let grown = instance.memory.data_size(&instance.store) - instance.initial_memory;
        if grown <= MAX_POOLED_GROWTH {
            self.pool.lock().expect("policy pool lock poisoned").push(instance);
        } else {
            tracing::debug!(policy = %self.name, grown, "instance not pooled: its memory grew");
        }
    }

    /// A permit to have an instance alive, waited for up to [`INSTANCE_WAIT`]. (Taken
    /// without a timer when one is free: no clock read on the common path.)
    async fn permit(&self) -> Result<SemaphorePermit<'_>, PolicyError> {
        if let Ok(permit) = self.instances.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(INSTANCE_WAIT, self.instances.acquire()).await {
            Ok(permit) => Ok(permit.expect("the instance semaphore is never closed")),
            Err(_) => Err(PolicyError::Busy(INSTANCE_WAIT.as_millis() as u64)),
        }
    }

    /// Decide on one request. A failed instance is dropped, never reused.
    pub async fn decide(&self, call: CallContext, request: &[u8]) -> Result<Outcome, Failure> {
        let _alive = self.permit().await.map_err(|error| Failure { error, reserved: None })?;
        let mut instance = self.check_out().await.map_err(|error| Failure { error, reserved: None })?;
        let result = self.run(&mut instance, Some(call), request).await;
        let reserved = instance.store.data_mut().reserved.take();
        instance.store.data_mut().call = None;
        match result {
            Ok(verdict) => {
                self.check_in(instance);
                Ok(Outcome { verdict, reserved })
            }
            Err(error) => Err(Failure { error, reserved }),
        }
    }

    /// Decide with the host functions answered in memory (no Redis; `reserve` pretends
    /// to queue a second out): the wasm and host-call cost of a decision, for benchmarks.
    pub async fn dry_run(&self, request: &[u8]) -> Result<Verdict, PolicyError> {
        let _alive = self.permit().await?;
        let mut instance = self.check_out().await?;
        let verdict = self.run(&mut instance, None, request).await?;
        self.check_in(instance);
        Ok(verdict)
    }

    async fn run(
        &self,
        instance: &mut Instance,
        call: Option<CallContext>,
        request: &[u8],
    ) -> Result<Verdict, PolicyError> {
        let data = instance.store.data_mut();
        data.call = call;
        data.reserved = None;
        data.failure = None;
        instance.store.set_fuel(abi::decision_fuel(request.len())).map_err(trap)?;
        let result = self.call_guest(instance, request).await;
        match (result, instance.store.data_mut().failure.take()) {
            (_, Some(store_error)) => Err(PolicyError::Store(store_error)),
            (result, None) => result,
        }
    }

    async fn call_guest(&self, instance: &mut Instance, request: &[u8]) -> Result<Verdict, PolicyError> {
        let len = i32::try_from(request.len()).map_err(|_| PolicyError::Failed("request too large".into()))?;
        // Reuse the guest's request buffer when it is big enough: one call fewer per decision.
        let ptr = match instance.request_buf {
            Some((ptr, capacity)) if capacity >= request.len() => ptr,
            _ => {
                let ptr = instance.alloc.call_async(&mut instance.store, len).await.map_err(trap)?;
                if ptr == 0 {
                    return Err(PolicyError::Failed("sluice_alloc returned null".into()));
                }
                instance.request_buf = Some((ptr, request.len()));
                ptr
            }
        };
        write(&instance.memory, &mut instance.store, ptr, request)?;
        let record_ptr = instance.decide.call_async(&mut instance.store, (ptr, len)).await.map_err(trap)?;
        let mut record = [0u8; DECISION_SIZE];
        read(&instance.memory, &instance.store, record_ptr, &mut record)?;
        let record = DecisionRecord::decode(&record);
        // A reason explains a reject or an error: an admit's or a queue's is never read.
        let reason = match record.kind {
            abi::DECISION_REJECT | abi::DECISION_ERROR if record.reason_len > 0 => {
                let mut reason = vec![0u8; (record.reason_len as usize).min(MAX_REASON_LEN)];
                read(&instance.memory, &instance.store, record.reason_ptr as i32, &mut reason)?;
                String::from_utf8_lossy(&reason).into_owned()
            }
            _ => String::new(),
        };
        match record.kind {
            abi::DECISION_ADMIT => Ok(Verdict::Admit),
            abi::DECISION_QUEUE => Ok(Verdict::Queue { run_at_ms: record.value }),
            abi::DECISION_REJECT => Ok(Verdict::Reject { retry_after_ms: record.value.max(0) as u64, reason }),
            abi::DECISION_ERROR => Err(PolicyError::Failed(reason)),
            other => Err(PolicyError::Failed(format!("unknown decision kind {other}"))),
        }
    }
}

fn write(memory: &Memory, store: &mut wasmtime::Store<HostState>, ptr: i32, bytes: &[u8]) -> Result<(), PolicyError> {
    let offset = u32::try_from(ptr).map_err(|_| PolicyError::Failed("negative pointer".into()))? as usize;
    memory.write(store, offset, bytes).map_err(|_| PolicyError::Failed("request buffer out of bounds".into()))
}

fn read(memory: &Memory, store: &wasmtime::Store<HostState>, ptr: i32, out: &mut [u8]) -> Result<(), PolicyError> {
    let offset = u32::try_from(ptr).map_err(|_| PolicyError::Failed("negative pointer".into()))? as usize;
    memory.read(store, offset, out).map_err(|_| PolicyError::Failed("decision record out of bounds".into()))
}

fn trap(e: wasmtime::Error) -> PolicyError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyError::OutOfFuel,
        _ => PolicyError::Trap(format!("{e:#}")),
    }
}
