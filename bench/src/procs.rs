//! The processes under test: a throwaway Redis and a release Sluice, plus what /proc and
//! `INFO` say about their cost.

use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis of our own on a unix socket, configured by the repository's `redis.conf` as
/// `just run` starts it; `BENCH_REDIS_ARGS` appends flags that override it (experiments:
/// `BENCH_REDIS_ARGS="--auto-aof-rewrite-percentage 100"` is Redis's default).
#[derive(Debug)]
pub struct Redis {
    child: Child,
    pub socket: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../redis.conf"))
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .args(std::env::var("BENCH_REDIS_ARGS").unwrap_or_default().split_whitespace())
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { child, socket })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli").arg("-s").arg(&self.socket).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// AOF rewrites started since start, finished or not (`INFO persistence`: Redis counts
    /// a rewrite when it starts one).
    pub fn aof_rewrites(&self) -> anyhow::Result<u64> {
        let info = self.cli(&["INFO", "persistence"])?;
        info_field(&info, "aof_rewrites").context("INFO persistence without aof_rewrites")
    }

    /// Total calls of every command since start (`INFO commandstats`).
    pub fn commands(&self) -> anyhow::Result<u64> {
        let info = self.cli(&["INFO", "commandstats"])?;
        Ok(info
            .lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum())
    }
}

/// A numeric field (`name:value` line) of an `INFO` reply.
pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sluice's release binary under its supervisor.
#[derive(Debug)]
pub struct Sluice {
    child: Child,
    pub port: u16,
    pub task_log: PathBuf,
}

impl Sluice {
    pub fn start(binary: &Path, redis: &Redis, dir: &Path, policies: &Path, workers: usize) -> anyhow::Result<Self> {
        let port = free_port()?;
        let task_log = dir.join("task_log.jsonl");
        let env = HashMap::from([
            ("PORT", port.to_string()),
            ("BIND", "127.0.0.1".to_string()),
            ("WORKERS", workers.to_string()),
            ("REDIS_URL", format!("unix://{}", redis.socket.display())),
            ("POLICY_DIR", policies.display().to_string()),
            ("POLICY", "default".to_string()),
            ("TASK_LOG", task_log.display().to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]);
        let child = Command::new(binary).envs(env).current_dir(dir).stdin(Stdio::null()).spawn()?;
        let sluice = Self { child, port, task_log };
        wait_serving(port, Duration::from_secs(30), || sluice.workers().len() >= workers)
            .context("sluice did not start")?;
        Ok(sluice)
    }

    pub fn workers(&self) -> Vec<u32> {
        children_of(self.child.id())
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep").arg("-P").arg(pid.to_string()).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// The floor servers (`sluice-floor`), one per worker Sluice would run, on one port. Each
/// exits when its stdin closes, so none outlives the bench, even one killed by SIGKILL.
#[derive(Debug)]
pub struct Floor {
    children: Vec<Child>,
    pub port: u16,
}

impl Floor {
    pub fn start(redis: &Redis, workers: usize) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("sluice-floor");
        let mut floor = Self { children: Vec::new(), port: free_port()? };
        for _ in 0..workers {
            let child = Command::new(&binary)
                .env("FLOOR_PORT", floor.port.to_string())
                .env("FLOOR_REDIS", &redis.socket)
                .stdin(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            floor.children.push(child);
        }
        wait_serving(floor.port, Duration::from_secs(10), || true).context("sluice-floor did not start")?;
        for child in &mut floor.children {
            anyhow::ensure!(child.try_wait()?.is_none(), "a sluice-floor process exited at start");
        }
        Ok(floor)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The seed's design (`bench/seed/server.js`: Node cluster + Express +
/// rate-limiter-flexible; `queue` is its `SEED_QUEUE`), one worker per core behind a primary
/// that exits when its stdin closes; each worker exits with the primary.
#[derive(Debug)]
pub struct Seed {
    child: Child,
    pub port: u16,
    pub task_log: PathBuf,
}

impl Seed {
    pub fn start(redis: &Redis, dir: &Path, workers: usize, queue: &str) -> anyhow::Result<Self> {
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("seed");
        anyhow::ensure!(
            app.join("node_modules").is_dir(),
            "{} has no node_modules: run `npm ci --prefix bench/seed` (`just bench` does)",
            app.display()
        );
        let (port, task_log) = (free_port()?, dir.join("seed_log.jsonl"));
        let child = Command::new("node")
            .arg(app.join("server.js"))
            .env("SEED_PORT", port.to_string())
            .env("SEED_REDIS", &redis.socket)
            .env("SEED_WORKERS", workers.to_string())
            .env("SEED_LOG", &task_log)
            .env("SEED_QUEUE", queue)
            .stdin(Stdio::piped())
            .spawn()
            .context("starting node (the seed's design needs Node.js)")?;
        let seed = Self { child, port, task_log };
        wait_serving(port, Duration::from_secs(30), || seed.pids().len() > workers)
            .context("the seed did not start")?;
        Ok(seed)
    }

    /// The primary and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = children_of(self.child.id());
        pids.push(self.child.id());
        pids
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        // The workers first, while the primary still holds their pids.
        for pid in children_of(self.child.id()) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until `port` accepts connections and `ready` holds, then a little longer: with
/// `SO_REUSEPORT` the kernel spreads connections only over the processes that have bound,
/// so the first to accept may not be the last to bind.
fn wait_serving(port: u16, timeout: Duration, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "port {port} not served within {} s", timeout.as_secs());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Jiffies of all cores so far: (stolen by the hypervisor, all). Their ratio over a phase
/// is the share of the machine's time the host gave to other guests.
pub fn steal_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    (cpu.get(7).copied().unwrap_or(0), cpu.iter().take(8).sum())
}

/// CPU seconds (user + system) a process and its waited-for children have used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime, stime, and those of waited-for children (Redis's AOF rewrites are its cost too)
    let ticks: f64 = [11, 12, 13, 14].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}
