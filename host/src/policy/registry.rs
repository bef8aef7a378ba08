//! The policies a worker has loaded, and the watcher that keeps them in step with
//! `POLICY_DIR`. A file goes live only once it has stopped changing for one scan and
//! has passed validation; a refused file leaves the last good version serving. The
//! policy in use is never unloaded, even when its file disappears.

use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

use super::{Engine, Policy, PolicyName};

/// How often the folder is scanned; a change is live after two scans at most.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// Largest policy module the host reads: the example policies are 20-60 KiB, and a file
/// far larger is a mistake (a debug build, the wrong file), refused without being kept.
pub const MAX_MODULE_BYTES: u64 = 8 << 20;

/// Size and modification time: what tells a changed file without reading it.
type Stamp = (u64, SystemTime);

/// A file the host refused to load.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// sha256 of the refused bytes.
    pub sha256: String,
    /// Why it was refused.
    pub error: String,
    /// When, unix ms.
    pub at: i64,
}

#[derive(Debug, Default)]
struct Entry {
    live: Option<Arc<Policy>>,
    refused: Option<Refusal>,
    /// Stamp of the last version processed (loaded or refused).
    processed: Option<Stamp>,
    /// Stamp seen by the previous scan, to tell a file still being written.
    last_seen: Option<Stamp>,
}

/// One policy as `GET /policies` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    /// Name (file stem).
    pub name: String,
    /// sha256 of the live module, lowercase hex (absent if none ever loaded).
    pub sha256: Option<String>,
    /// When the live module was loaded, unix ms.
    pub loaded_at: Option<i64>,
    /// ABI version the live module speaks.
    pub abi_version: u32,
    /// Whether this is the policy `POST /task` uses.
    pub active: bool,
    /// The last refused version, if any refusal is newer than the live module.
    pub refused: Option<Refusal>,
}

/// The loaded policies of one worker.
#[derive(Debug)]
pub struct Registry {
    engine: Engine,
    dir: PathBuf,
    active: PolicyName,
    entries: RwLock<HashMap<PolicyName, Entry>>,
}

impl Registry {
    /// An empty registry over `dir`; `active` is the policy `POST /task` uses.
    pub fn new(engine: Engine, dir: PathBuf, active: PolicyName) -> Self {
        Self { engine, dir, active, entries: RwLock::new(HashMap::new()) }
    }

    /// The policy `POST /task` uses.
    pub fn active_name(&self) -> &PolicyName {
        &self.active
    }

    /// A live policy by name.
    pub fn get(&self, name: &PolicyName) -> Option<Arc<Policy>> {
        self.entries.read().expect("registry lock poisoned").get(name).and_then(|e| e.live.clone())
    }

    /// Every known policy, sorted by name.
    pub fn list(&self) -> Vec<PolicyInfo> {
        let entries = self.entries.read().expect("registry lock poisoned");
        let mut out: Vec<PolicyInfo> = entries
            .iter()
            .map(|(name, e)| PolicyInfo {
                name: name.to_string(),
                sha256: e.live.as_ref().map(|p| p.sha256.clone()),
                loaded_at: e.live.as_ref().map(|p| unix_ms(p.loaded_at)),
                abi_version: limiter_wasm::abi::ABI_VERSION,
                active: *name == self.active,
                refused: e.refused.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Load everything in the folder now, without waiting for files to settle (start-up).
    pub async fn load_all(&self) {
        self.scan(true).await;
    }

    /// Rescan the folder every [`SCAN_INTERVAL`] until cancelled.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(SCAN_INTERVAL) => self.scan(false).await,
            }
        }
    }

    async fn scan(&self, eager: bool) {
        // The folder is read on the blocking pool: a slow disk never stalls the requests.
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || wasm_files(&dir)).await;
        let files = match listed.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read policy folder: {e}");
                return;
            }
        };
        for (name, path, stamp) in &files {
            if self.should_load(name, *stamp, eager) {
                self.load_file(name, path, *stamp).await;
            }
        }
        self.forget_removed(&files);
    }

    /// Record `stamp` and say whether the file is new, changed and settled.
    fn should_load(&self, name: &PolicyName, stamp: Stamp, eager: bool) -> bool {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let entry = entries.entry(name.clone()).or_default();
        let settled = eager || entry.last_seen == Some(stamp);
        entry.last_seen = Some(stamp);
        settled && entry.processed != Some(stamp)
    }

    async fn load_file(&self, name: &PolicyName, path: &Path, stamp: Stamp) {
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || read_module(&owned)).await;
        let (bytes, sha256) = match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(read) => read,
            Err(e) => return tracing::warn!(policy = %name, "cannot read {}: {e}", path.display()),
        };
        let unchanged = self.get(name).is_some_and(|p| p.sha256 == sha256);
        let result = match bytes {
            _ if unchanged => Ok(None),
            Err(size) => Err(format!("{size} bytes, more than the {MAX_MODULE_BYTES} a policy module may have")),
            Ok(bytes) => self.engine.load(name, bytes, sha256.clone()).await.map(Some),
        };
        let mut entries = self.entries.write().expect("registry lock poisoned");
        let entry = entries.entry(name.clone()).or_default();
        entry.processed = Some(stamp);
        match result {
            // The live version's own bytes are back (a rollback): a refusal no longer stands.
            Ok(None) => {
                if entry.refused.take().is_some() {
                    tracing::info!(policy = %name, %sha256, "the live version is back on disk; refusal cleared");
                }
            }
            Ok(Some(policy)) => {
                tracing::info!(policy = %name, sha256 = %policy.sha256, "policy loaded");
                entry.live = Some(Arc::new(policy));
                entry.refused = None;
            }
            Err(error) => {
                tracing::error!(policy = %name, %sha256, "policy refused, the last good version keeps serving: {error:?}");
                entry.refused = Some(Refusal { sha256, error, at: unix_ms(SystemTime::now()) });
            }
        }
    }

    fn forget_removed(&self, files: &[(PolicyName, PathBuf, Stamp)]) {
        let mut entries = self.entries.write().expect("registry lock poisoned");
        entries.retain(|name, entry| {
            if files.iter().any(|(n, _, _)| n == name) {
                return true;
            }
            if *name == self.active && entry.live.is_some() {
                if entry.processed.is_some() {
                    tracing::warn!(policy = %name, "file of the policy in use was removed; keeping the last good version");
                    entry.processed = None;
                    entry.last_seen = None;
                }
                return true;
            }
            tracing::info!(policy = %name, "policy file removed; unloaded");
            false
        });
    }
}

/// A policy file's bytes, or its size if that is over [`MAX_MODULE_BYTES`].
type Module = Result<Arc<[u8]>, u64>;

/// A policy file and its sha256; the bytes of a file over [`MAX_MODULE_BYTES`] are hashed
/// as they are read, never all held.
fn read_module(path: &Path) -> std::io::Result<(Module, String)> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    (&mut file).take(MAX_MODULE_BYTES + 1).read_to_end(&mut bytes)?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(&bytes);
    if bytes.len() as u64 <= MAX_MODULE_BYTES {
        return Ok((Ok(bytes.into()), hex::encode(hasher.finalize())));
    }
    let rest = std::io::copy(&mut file, &mut hasher)?;
    Ok((Err(bytes.len() as u64 + rest), hex::encode(hasher.finalize())))
}

fn wasm_files(dir: &Path) -> std::io::Result<Vec<(PolicyName, PathBuf, Stamp)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_stem().and_then(|s| s.to_str()).and_then(PolicyName::new);
        let (Some(name), Some("wasm")) = (name, path.extension().and_then(|e| e.to_str())) else { continue };
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() {
            out.push((name, path, (meta.len(), meta.modified().unwrap_or(UNIX_EPOCH))));
        }
    }
    Ok(out)
}

/// Unix milliseconds of a system time.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
