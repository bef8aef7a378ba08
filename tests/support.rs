//! Helpers written once: a throwaway Redis, temp dirs, an in-process service, the real
//! binary under a supervisor, and completion-log reading.

#![allow(dead_code, reason = "each test module uses a different subset")]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tower::ServiceExt;

use sluice::config::Config;
use sluice::worker::Worker;

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sluice-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of our own on a unix socket, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self { child: None, dir: TempDir::new("redis") };
        server.restart();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Start (again) with AOF persistence in the same dir. `everysec`, as `just run` uses:
    /// each write reaches the file (the OS page cache) before Redis answers, so killing
    /// Redis loses nothing it acknowledged; `always` would add an fsync, and the disk's
    /// latency spikes, to every answer.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--dir"])
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Run a redis-cli command against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").arg("-s").arg(self.socket()).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Keep Redis busy with a script for `ms` from about now, as a stalled Redis is:
    /// returns once it has stopped answering; the thread ends with the script, answering
    /// whether it ran.
    pub fn stall(&self, ms: u64) -> std::thread::JoinHandle<bool> {
        let busy = format!(
            "local s = redis.call('TIME') repeat local n = redis.call('TIME') \
             until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > {} return 1",
            ms * 1000
        );
        let socket = self.socket();
        let blocker = std::thread::spawn(move || {
            let out = Command::new("redis-cli").arg("-s").arg(socket).args(["EVAL", &busy, "0"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        });
        self.wait_until_busy();
        blocker
    }

    /// Wait until Redis has stopped answering (the busy script runs): a `PING` on a fresh
    /// connection goes unanswered for 50 ms. (A fixed sleep for redis-cli to start the
    /// script was a race on a loaded machine.)
    fn wait_until_busy(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "Redis never became busy");
            let mut conn = std::os::unix::net::UnixStream::connect(self.socket()).expect("connect");
            conn.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            conn.write_all(b"PING\r\n").expect("ping");
            let mut reply = [0u8; 16];
            match conn.read(&mut reply) {
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return,
                Err(e) => panic!("ping: {e}"),
            }
        }
    }
}

/// A unix-socket proxy in front of a Redis that, once told to, closes a client's
/// connection instead of passing on the next reply (an answer lost after Redis ran the
/// command, as when Redis dies just after running it) or the next request (lost before
/// Redis saw it).
pub struct LossyProxy {
    dir: TempDir,
    /// Lose the next reply, the next request.
    lose: Arc<(AtomicBool, AtomicBool)>,
    accept: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    pub fn start(redis: &RedisServer) -> Self {
        let dir = TempDir::new("proxy");
        let listener = tokio::net::UnixListener::bind(dir.path().join("proxy.sock")).expect("bind");
        let target = redis.socket();
        let lose = Arc::<(AtomicBool, AtomicBool)>::default();
        let accept = tokio::spawn({
            let lose = Arc::clone(&lose);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if let Ok(server) = tokio::net::UnixStream::connect(&target).await {
                        tokio::spawn(Self::relay(client, server, Arc::clone(&lose)));
                    }
                }
            }
        });
        Self { dir, lose, accept }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.dir.path().join("proxy.sock").display())
    }

    /// Close the connection that the next reply comes on, instead of passing the reply on.
    pub fn lose_next_reply(&self) {
        self.lose.0.store(true, Ordering::SeqCst);
    }

    /// Close the connection that the next request comes on, instead of passing it on.
    pub fn lose_next_request(&self) {
        self.lose.1.store(true, Ordering::SeqCst);
    }

    async fn relay(
        client: tokio::net::UnixStream,
        server: tokio::net::UnixStream,
        lose: Arc<(AtomicBool, AtomicBool)>,
    ) {
        let (from_client, to_client) = client.into_split();
        let (from_server, to_server) = server.into_split();
        // Whichever side ends first, both connections close as the halves drop.
        tokio::select! {
            _ = Self::pass(from_client, to_server, &lose.1) => {}
            _ = Self::pass(from_server, to_client, &lose.0) => {}
        }
    }

    /// Copy `from` to `to` until either ends, or until a read comes while `lose` is set.
    async fn pass(
        mut from: tokio::net::unix::OwnedReadHalf,
        mut to: tokio::net::unix::OwnedWriteHalf,
        lose: &AtomicBool,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 || lose.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            to.write_all(&buf[..n]).await?;
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where `just build-policies` puts the example policies.
pub fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/dist")
}

/// Where `just build-test-policies` puts the test-only policies.
pub fn test_policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-policies")
}

/// Copy policy `name` from `from` into `to`.
pub fn install_policy(from: &Path, name: &str, to: &Path) {
    let src = from.join(format!("{name}.wasm"));
    std::fs::copy(&src, to.join(format!("{name}.wasm")))
        .unwrap_or_else(|e| panic!("{}: {e} (run `just build-policies build-test-policies`)", src.display()));
}

/// Environment for a service using `redis`, policy `policy` (copied into its own dir).
pub fn env_for(redis: &RedisServer, dir: &TempDir, policy_src: &Path, policy: &str) -> HashMap<String, String> {
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    install_policy(policy_src, policy, &policies);
    HashMap::from([
        ("REDIS_URL".into(), redis.url()),
        ("POLICY_DIR".into(), policies.display().to_string()),
        ("POLICY".into(), policy.into()),
        ("TASK_LOG".into(), dir.path().join("task_log.jsonl").display().to_string()),
        ("LEASE_MS".into(), "1000".into()),
    ])
}

/// A worker built in-process, driven through its router without a socket.
pub struct Service {
    pub worker: Worker,
    pub app: axum::Router,
    pub dir: TempDir,
}

impl Service {
    pub async fn start(redis: &RedisServer, policy_src: &Path, policy: &str) -> Self {
        Self::start_with(redis, policy_src, policy, &[]).await
    }

    /// Start with extra environment variables (they override the defaults), as
    /// [`Spawned::start_with`].
    pub async fn start_with(redis: &RedisServer, policy_src: &Path, policy: &str, extra: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("svc");
        let mut env = env_for(redis, &dir, policy_src, policy);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config");
        let worker = Worker::build(&config, 0).await.expect("worker builds");
        worker.start_background();
        let app = sluice::http::app(worker.state.clone());
        Self { worker, app, dir }
    }

    /// A second worker on the same Redis, sharing this one's completion log.
    pub async fn peer(&self, redis: &RedisServer, policy_src: &Path, policy: &str) -> Self {
        let log = self.log_path().display().to_string();
        Self::start_with(redis, policy_src, policy, &[("TASK_LOG", &log)]).await
    }

    pub fn log_path(&self) -> PathBuf {
        self.worker.runner.log.path().to_path_buf()
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub async fn post_task(&self, user: &str) -> (StatusCode, Value) {
        self.post_json(&serde_json::json!({ "user_id": user }).to_string()).await
    }

    pub async fn post_json(&self, body: &str) -> (StatusCode, Value) {
        self.send(task_request(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Request::get(path).body(Body::empty()).expect("request")).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        json_of(self.respond(req).await).await
    }

    /// The whole answer to `req`, headers included.
    pub async fn respond(&self, req: Request<Body>) -> axum::response::Response {
        self.app.clone().oneshot(req).await.expect("router is infallible")
    }
}

/// `POST /task` with a JSON `body`.
pub fn task_request(body: &str) -> Request<Body> {
    Request::post("/task")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// An answer's status and JSON body.
pub async fn json_of(response: axum::response::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

impl Drop for Service {
    fn drop(&mut self) {
        self.worker.cancel.cancel();
    }
}

/// One completion-log line.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Completion {
    pub user_id: String,
    pub task_id: String,
    pub started_at: i64,
    pub completed_at: i64,
}

/// Every line of a completion log; panics on a torn or malformed line.
pub fn read_log(path: &Path) -> Vec<Completion> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}"))).collect()
}

/// Poll until `f` returns `Some`, or panic after `timeout`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The real `sluice` binary under its supervisor; killed on drop.
pub struct Spawned {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub task_log: PathBuf,
}

impl Spawned {
    pub fn start(redis: &RedisServer, policy_src: &Path, policy: &str, workers: usize) -> Self {
        Self::start_with(redis, policy_src, policy, workers, &[])
    }

    /// Start with extra environment variables (they override the defaults).
    pub fn start_with(
        redis: &RedisServer,
        policy_src: &Path,
        policy: &str,
        workers: usize,
        extra: &[(&str, &str)],
    ) -> Self {
        let dir = TempDir::new("bin");
        let port = free_port();
        let mut env = env_for(redis, &dir, policy_src, policy);
        env.insert("WORKERS".into(), workers.to_string());
        env.insert("PORT".into(), port.to_string());
        env.insert("BIND".into(), "127.0.0.1".into());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = std::fs::File::create(dir.path().join("sluice.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .envs(&env)
            .env_remove("SLUICE_WORKER_ID")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        Self { child, port, dir, task_log: env["TASK_LOG"].clone().into() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.task_log.clone()
    }

    /// Kill the supervisor and every worker at once, as a machine crash would.
    pub fn kill_everything(&mut self) {
        let workers = children_of(self.child.id());
        signal(self.child.id(), "KILL");
        for pid in workers {
            signal(pid, "KILL");
        }
        let _ = self.child.wait();
    }

    /// Wait for the supervisor to exit, failing the test after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "supervisor did not exit:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `n` distinct worker pids answer `/healthz`.
    pub async fn wait_for_workers(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pids = std::collections::BTreeSet::new();
        while pids.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} workers answered:\n{}", pids.len(), self.output());
            // A fresh connection each time, so SO_REUSEPORT spreads them over the workers.
            let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
            if let Ok(r) = fresh.get(self.url("/healthz")).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                pids.insert(v["pid"].as_u64().expect("pid") as u32);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pids.into_iter().collect()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Wait until the worker `gone` has left and `workers` run again, within `within`;
    /// how long that took.
    pub async fn wait_replaced(&self, gone: u32, workers: usize, within: Duration) -> Duration {
        let since = Instant::now();
        loop {
            let now = children_of(self.child.id());
            if now.len() == workers && !now.contains(&gone) {
                return since.elapsed();
            }
            assert!(since.elapsed() < within, "worker {gone} not gone and replaced:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let workers = children_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            signal(pid, "KILL");
        }
    }
}

/// Send a signal with `kill(1)` (the test suite stays free of `unsafe`).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep").arg("-P").arg(pid.to_string()).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}
