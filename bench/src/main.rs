//! `just bench`: a release Sluice (`WORKERS` = cores) and its own Redis on this machine,
//! driven by the in-process load generator. Prints a table and writes the figures to
//! `bench-results/<unix time>.json`. Runs several measured rounds and reports each and
//! the median, since machines here are shared and noisy.

mod load;
mod procs;
mod rewrites;
mod stall;

use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use load::{Load, Phase, quantile_ms};
use procs::{Floor, Redis, Seed, Sluice, cpu_seconds, status_kib, steal_jiffies};
use sluice::store::keys;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, bench())
}

async fn bench() -> anyhow::Result<()> {
    let runs: usize = env_or("BENCH_RUNS", 3);
    let secs: u64 = env_or("BENCH_SECS", 10);
    let users: u64 = env_or("BENCH_USERS", 10_000);
    let connections: usize = env_or("BENCH_CONNECTIONS", 50);
    let backlog: u64 = env_or("BENCH_BACKLOG", 100_000);
    // Pace the measured rounds instead of driving them as fast as answers come: CPU per
    // request of two builds is then compared under the same load.
    let rate: Option<f64> = std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0.0);
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = Setup { binary: root.join("target/release/sluice"), policies: root.join("policies/dist"), workers };
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", uuid::Uuid::new_v4().simple()));

    let pace = rate.map_or("as fast as answers come".into(), |r| format!("paced at {r} req/s"));
    println!(
        "throughput: {runs} rounds of {secs} s, {connections} connections, {users} users, WORKERS={workers}, {pace}"
    );
    println!(
        "  each on a fresh Redis and Sluice after a 3 s warm-up, then reserve.lua alone (redis-benchmark, twice),"
    );
    println!(
        "  each beside the seed's design under the same load (bench/seed: Node cluster + Express + rate-limiter-flexible), queued tasks in memory and in BullMQ"
    );
    let load = Load {
        port: 0,
        connections,
        users,
        duration: Duration::from_secs(secs),
        rate,
        max_requests: None,
        keep_queued: false,
        seed: 1,
    };
    let mut rounds = Vec::new();
    let mut seed_rounds: HashMap<SeedQueue, Vec<serde_json::Value>> = HashMap::new();
    for round in 0..runs {
        let dir = scratch.join(format!("round{round}"));
        let full = Load { seed: 7 + round as u64, ..load };
        // Whether Sluice or the seed's design goes first alternates, as with the floor below.
        let seed_first = round % 2 == 1;
        let mut seeds = if seed_first { seed_rounds_beside(&dir, workers, full).await? } else { Vec::new() };
        let (redis, sluice) = setup.warmed_up(&dir, load).await?;
        let full_sluice = Load { port: sluice.port, ..full };
        let mut summary = measured("sluice", &redis, &sluice.workers(), Some(&sluice.task_log), full_sluice).await?;
        drop((sluice, redis));
        if !seed_first {
            seeds = seed_rounds_beside(&dir, workers, full).await?;
        }
        let ceiling = reserve_ceiling(&dir.join("ceiling"), users, CeilingTasks::New)?;
        let overwriting = reserve_ceiling(&dir.join("ceiling-overwriting"), users, CeilingTasks::Overwritten)?;
        let rps = summary["rps"].as_f64().unwrap_or(0.0);
        summary["reserve_lua_alone_per_s"] = json!(ceiling.round());
        summary["share_of_reserve_lua_alone"] = json!(round2(rps / ceiling));
        summary["reserve_lua_alone_overwriting_per_s"] = json!(overwriting.round());
        summary["share_of_reserve_lua_alone_overwriting"] = json!(round2(rps / overwriting));
        for (queue, seed) in &seeds {
            summary[format!("over_{}_rps", queue.name())] =
                json!(round2(rps / seed["rps"].as_f64().unwrap_or(f64::NAN)));
        }
        forget(&dir);
        println!("  round {}: {}", round + 1, summary);
        for (queue, seed) in seeds {
            println!("  {} {}{}: {}", queue.name(), round + 1, if seed_first { " (ran first)" } else { "" }, seed);
            seed_rounds.entry(queue).or_default().push(seed);
        }
        rounds.push(summary);
    }
    let median = median_by(&rounds, "rps");
    let half_rate = median["rps"].as_f64().unwrap_or(0.0) / 2.0;
    // As many rounds as at full rate, each on fresh processes: one 10 s window's p99
    // moves by 2x between identical runs here, with the AOF rewrite and the second-by-second
    // waves of due tasks that fall in it.
    // Each round is paired with the floor at the same rate (see `sluice-floor`), so the two
    // p99s are measured within a minute of each other; which goes first alternates, so a
    // drift of the host's speed through the run does not always favour the same one.
    println!("at half of the median round's rate ({half_rate:.0} req/s), {runs} rounds, each paired with the floor:");
    let (mut half_rounds, mut floor_rounds) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let paced = Load { rate: Some(half_rate), seed: 99 + round as u64, ..load };
        let (sluice_dir, floor_dir) = (scratch.join(format!("half{round}")), scratch.join(format!("floor{round}")));
        let floor_first = round % 2 == 1;
        let (mut summary, floor) = if floor_first {
            let floor = floor_round(&floor_dir, workers, paced).await?;
            (half_round(&setup, &sluice_dir, paced).await?, floor)
        } else {
            let summary = half_round(&setup, &sluice_dir, paced).await?;
            (summary, floor_round(&floor_dir, workers, paced).await?)
        };
        let ratio = summary["p99_ms"].as_f64().unwrap_or(f64::NAN) / floor["p99_ms"].as_f64().unwrap_or(f64::NAN);
        summary["p99_over_floor_p99"] = json!(round2(ratio));
        println!("  round {}: {}", round + 1, summary);
        println!("  floor {}{}: {}", round + 1, if floor_first { " (ran first)" } else { "" }, floor);
        half_rounds.push(summary);
        floor_rounds.push(floor);
    }
    let half_summary = median_by(&half_rounds, "p99_ms");
    let floor_summary = median_by(&floor_rounds, "p99_ms");

    println!("queue: {backlog} tasks over {users} users, then drain");
    let queue = queue_phase(&setup, &scratch.join("queue"), users, backlog, connections).await?;
    println!("  {queue}");
    std::fs::remove_dir_all(&scratch).ok();

    let mut report = json!({
        "machine": { "cores": workers, "note": "load generator, Redis and Sluice share the machine" },
        "command": "just bench",
        "paced_req_per_s": rate,
        "throughput_rounds": rounds,
        "throughput_median": median,
        "half_peak_rounds": half_rounds,
        "half_peak": half_summary,
        "floor_rounds": floor_rounds,
        "floor": floor_summary,
        "queue": queue,
    });
    for queue in SeedQueue::ALL {
        let kept = seed_rounds.remove(&queue).unwrap_or_default();
        report[queue.name()] = median_by(&kept, "rps");
        report[format!("{}_rounds", queue.name())] = json!(kept);
    }
    print_table(&report);
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let out = out_dir.join(format!("{stamp}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&report)?).context("writing results")?;
    println!("figures written to {}", out.display());
    Ok(())
}

/// Drive `load` at a warmed-up server (Sluice or the floor, `name`) and its Redis and
/// measure the phase: latencies by status, requests per second, Redis commands per request,
/// AOF rewrites started, CPU per 1,000 requests of the server's processes, Redis (with its
/// rewrite children that ended meanwhile) and this load generator, how busy that kept the
/// machine, the share of it the hypervisor stole, tasks run per second (lines added to
/// `task_log`, Sluice's), the longest the machine stalled (see `stall`), the server's
/// peak RSS per process, and the answers' latencies split by whether Redis was rewriting its
/// AOF meanwhile (see `rewrites`).
async fn measured(
    name: &str,
    redis: &Redis,
    pids: &[u32],
    task_log: Option<&std::path::Path>,
    load: Load,
) -> anyhow::Result<serde_json::Value> {
    let counters = || -> anyhow::Result<[f64; 6]> {
        let server = pids.iter().map(|p| cpu_seconds(*p)).sum();
        let log = task_log.and_then(|log| std::fs::read(log).ok());
        let ran = log.map_or(0, |text| text.iter().filter(|b| **b == b'\n').count());
        let (cmds, rewrites) = (redis.commands()?, redis.aof_rewrites()?);
        let (redis_cpu, own_cpu) = (cpu_seconds(redis.pid()), cpu_seconds(std::process::id()));
        Ok([cmds as f64, rewrites as f64, server, redis_cpu, own_cpu, ran as f64])
    };
    let before = counters()?;
    let (watchdog, steal_before) = (stall::Watchdog::start(), steal_jiffies());
    let watch = rewrites::Watch::start(&redis.socket)?;
    let mut phase = load::run(load).await?;
    let (longest_stall_ms, steal_after) = (watchdog.finish(), steal_jiffies());
    let rewriting = watch.finish();
    let after = counters()?;
    let [cmds, rewrites, cpu, redis_cpu, own_cpu, ran] = std::array::from_fn(|i| after[i] - before[i]);
    let (n, secs) = (phase.total() as f64, phase.elapsed.as_secs_f64());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as f64;
    let mut summary = latency_summary(&mut phase);
    summary["rps"] = json!((n / secs).round());
    summary["redis_commands_per_request"] = json!(round2(cmds / n));
    summary["aof_rewrites"] = json!(rewrites as u64);
    let rewrite_s = rewriting.iter().fold(0.0, |s, (from, to)| s + (*to - *from).as_secs_f64());
    summary["aof_rewrite_s"] = json!(round2(rewrite_s));
    let (mut during, mut outside) = rewrites::split(&phase.timeline, &rewriting);
    summary["during_aof_rewrite"] = quantiles(&mut during);
    summary["outside_aof_rewrite"] = quantiles(&mut outside);
    summary[format!("{name}_cpu_s_per_1000")] = json!(round3(cpu / n * 1000.0));
    summary["redis_cpu_s_per_1000"] = json!(round3(redis_cpu / n * 1000.0));
    summary["load_generator_cpu_s_per_1000"] = json!(round3(own_cpu / n * 1000.0));
    summary["cpu_busy_share"] = json!(round2((cpu + redis_cpu + own_cpu) / secs / cores));
    if task_log.is_some() {
        summary["tasks_run_per_s"] = json!((ran / secs).round());
    }
    summary["longest_stall_ms"] = json!(longest_stall_ms);
    summary["steal_share"] = json!(steal_share(steal_before, steal_after));
    let peak_rss: Vec<f64> = pids.iter().map(|p| round2(status_kib(*p, "VmHWM") as f64 / 1024.0)).collect();
    summary["peak_rss_mib_per_worker"] = json!(peak_rss);
    Ok(summary)
}

/// The share of the machine's time the hypervisor gave to other guests between two
/// [`steal_jiffies`] readings.
fn steal_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1).max(1);
    round3(after.0.saturating_sub(before.0) as f64 / all as f64)
}

/// A half-peak round of Sluice at `load`'s rate, on a fresh, warmed-up Redis and Sluice.
async fn half_round(setup: &Setup, dir: &std::path::Path, load: Load) -> anyhow::Result<serde_json::Value> {
    let (redis, sluice) = setup.warmed_up(dir, load).await?;
    let load = Load { port: sluice.port, ..load };
    let summary = measured("sluice", &redis, &sluice.workers(), Some(&sluice.task_log), load).await?;
    drop((sluice, redis));
    forget(dir);
    Ok(summary)
}

/// The floor at `load`'s rate: `sluice-floor` on a fresh Redis, as many processes as
/// workers, warmed up and measured as Sluice is.
async fn floor_round(dir: &std::path::Path, workers: usize, load: Load) -> anyhow::Result<serde_json::Value> {
    let redis = Redis::start(dir)?;
    let floor = Floor::start(&redis, workers)?;
    let load = Load { port: floor.port, ..load };
    warm_up(load).await?;
    let summary = measured("floor", &redis, &floor.pids(), None, load).await?;
    drop((floor, redis));
    forget(dir);
    Ok(summary)
}

/// Where the seed's design keeps a task over the limit (`SEED_QUEUE` of `bench/seed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SeedQueue {
    /// A timer in the worker's memory.
    Memory,
    /// A delayed BullMQ job in Redis.
    Bullmq,
}

impl SeedQueue {
    const ALL: [Self; 2] = [Self::Memory, Self::Bullmq];

    /// Its `SEED_QUEUE`.
    fn env(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Bullmq => "bullmq",
        }
    }

    /// Where it keeps a queued task, in the table.
    fn kept(self) -> &'static str {
        match self {
            Self::Memory => "in memory",
            Self::Bullmq => "in BullMQ",
        }
    }

    /// Its name in the report.
    fn name(self) -> String {
        format!("seed_{}", self.env())
    }
}

/// A [`seed_round`] of each queue, under their names.
async fn seed_rounds_beside(
    dir: &std::path::Path,
    workers: usize,
    load: Load,
) -> anyhow::Result<Vec<(SeedQueue, serde_json::Value)>> {
    let mut seeds = Vec::new();
    for queue in SeedQueue::ALL {
        seeds.push((queue, seed_round(&dir.join(queue.name()), workers, load, queue).await?));
    }
    Ok(seeds)
}

/// The seed's design (`bench/seed`) under the full-rate load, on a fresh Redis, warmed up
/// and measured as Sluice is: what Sluice replaces, in the same minutes.
async fn seed_round(
    dir: &std::path::Path,
    workers: usize,
    load: Load,
    queue: SeedQueue,
) -> anyhow::Result<serde_json::Value> {
    let redis = Redis::start(dir)?;
    let seed = Seed::start(&redis, dir, workers, queue.env())?;
    let load = Load { port: seed.port, ..load };
    warm_up(load).await?;
    let summary = measured("seed", &redis, &seed.pids(), Some(&seed.task_log), load).await?;
    drop((seed, redis));
    forget(dir);
    Ok(summary)
}

/// Remove a finished round's files (its processes stopped): a full-rate round alone leaves
/// 50-75 MB of AOF and completion log, and a full run used to keep every round's until it
/// ended.
fn forget(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
}

/// What every phase starts: the release Sluice, its policies, and how many workers.
struct Setup {
    binary: PathBuf,
    policies: PathBuf,
    workers: usize,
}

impl Setup {
    /// A fresh Redis and Sluice under `dir`.
    fn start(&self, dir: &std::path::Path) -> anyhow::Result<(Redis, Sluice)> {
        let redis = Redis::start(dir)?;
        let sluice = Sluice::start(&self.binary, &redis, dir, &self.policies, self.workers)?;
        Ok((redis, sluice))
    }

    /// [`Setup::start`], then [`warm_up`].
    async fn warmed_up(&self, dir: &std::path::Path, load: Load) -> anyhow::Result<(Redis, Sluice)> {
        let (redis, sluice) = self.start(dir)?;
        warm_up(Load { port: sluice.port, ..load }).await?;
        Ok((redis, sluice))
    }
}

/// The warm-up before every measured phase, of Sluice's or the floor's: 3 s of `load` at
/// its own rate (as fast as answers come for a full-rate round), always the same users in
/// the same order (seed 1). Paced rounds warmed up unpaced until 2026-12-03: a half-peak
/// round then spent its window draining the backlog of a warm-up at twice its rate (6,725
/// tasks run a second at 4,247 req/s), a load its own rate never makes.
async fn warm_up(load: Load) -> anyhow::Result<()> {
    load::run(Load { duration: Duration::from_secs(3), seed: 1, ..load }).await?;
    Ok(())
}

/// What each task of the ceiling's calls is.
#[derive(Clone, Copy)]
enum CeilingTasks {
    /// A new task id every call, as every reservation of Sluice's stores a new task: the
    /// due index and the keyspace grow through the run as they do under Sluice.
    New,
    /// Task ids drawn from as many as there are users, so most calls overwrite a task
    /// stored before: the due index stays at that size. A cheaper workload; the only
    /// ceiling up to 5258c2e.
    Overwritten,
}

/// The ceiling Sluice is compared with: `redis-benchmark` of the decision script alone
/// (`reserve.lua`, one task per call, not pipelined, 50 connections, two windows: 1 per s
/// and 20 per min) on a fresh Redis started as Sluice's is. Cheaper than Sluice's work
/// whichever the tasks: each `__rand_int__` is drawn on its own (a call's keys name
/// different users), and nothing is claimed, run or acknowledged. Calls per second.
fn reserve_ceiling(dir: &std::path::Path, users: u64, tasks: CeilingTasks) -> anyhow::Result<f64> {
    let redis = Redis::start(dir)?;
    let sha = redis.cli(&["SCRIPT", "LOAD", include_str!("../../host/src/store/lua/reserve.lua")])?;
    // Two draws of `users` values each make a task id new in (almost) every call.
    let task = match tasks {
        CeilingTasks::New => "t__rand_int__-__rand_int__",
        CeilingTasks::Overwritten => "t__rand_int__",
    };
    let user = "u__rand_int__";
    // Keys, named by Sluice's own `keys`: the due index, the lease set, the user's starts,
    // the task, the bucket. Arguments: task id, user, payload, max delay (-1: none),
    // not-before, lease ms, now (0: Redis TIME), bucket interval (0: none), burst, 2
    // windows: (1, 1000 ms), (20, 60000 ms); then the batch's give-up time (0: none).
    let out = std::process::Command::new("redis-benchmark")
        .arg("-s")
        .arg(&redis.socket)
        .args(["-c", "50", "-n", "200000", "-r", &users.to_string(), "-P", "1", "-q", "evalsha", sha.trim(), "5"])
        .args([keys::DUE, keys::LEASE, &keys::starts(user), &keys::task(task), &keys::bucket(user)])
        .args([task, user, "{}", "-1", "0", "30000", "0", "0", "1", "2", "1", "1000", "20", "60000", "0"])
        .output()
        .context("running redis-benchmark (Debian: redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.split(['\r', '\n']).rfind(|l| l.contains("requests per second"));
    let calls = last.and_then(|l| l.split(": ").last()?.split_whitespace().next()?.parse().ok());
    calls.with_context(|| format!("unexpected redis-benchmark output: {text}"))
}

/// Fill a fresh Sluice with `backlog` tasks, wait for the queue to drain, report lateness
/// of the queued ones and worker memory along the way.
async fn queue_phase(
    setup: &Setup,
    dir: &std::path::Path,
    users: u64,
    backlog: u64,
    connections: usize,
) -> anyhow::Result<serde_json::Value> {
    let (_redis, sluice) = setup.start(dir)?;
    let pids = sluice.workers();
    let rss_start: u64 = pids.iter().map(|p| status_kib(*p, "VmRSS")).sum();
    let fill = Load {
        port: sluice.port,
        connections,
        users,
        duration: Duration::from_secs(600),
        rate: None,
        max_requests: Some(backlog),
        keep_queued: true,
        seed: 4242,
    };
    let filled = load::run(fill).await?;
    let queued: HashMap<String, i64> = filled.queued.into_iter().collect();
    let total = filled.latencies.values().map(Vec::len).sum::<usize>();
    let filled_at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let backlog_span_s = (queued.values().copied().max().unwrap_or(filled_at_ms) - filled_at_ms).max(0) as f64 / 1000.0;
    let mut rss_max = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        rss_max = rss_max.max(pids.iter().map(|p| status_kib(*p, "VmRSS")).sum());
        let lines = std::fs::read_to_string(&sluice.task_log).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = std::fs::read_to_string(&sluice.task_log)?;
    let mut lateness: Vec<u32> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some(v["started_at"].as_i64()? - queued.get(v["task_id"].as_str()?)?))
        .map(|late| (late.max(0) * 1000) as u32)
        .collect();
    let ran = lateness.len();
    Ok(json!({
        "requests": total,
        "queued": queued.len(),
        "queued_ran": ran,
        "backlog_span_s_after_fill": round2(backlog_span_s),
        "lateness_p50_ms": quantile_ms(&mut lateness, 0.50),
        "lateness_p99_ms": quantile_ms(&mut lateness, 0.99),
        "lateness_max_ms": quantile_ms(&mut lateness, 1.0),
        "worker_rss_mib_start": round2(rss_start as f64 / 1024.0 / setup.workers as f64),
        "worker_rss_mib_max_during_drain": round2(rss_max as f64 / 1024.0 / setup.workers as f64),
    }))
}

/// Count, p50, p99 and p99.9 of microsecond latencies, in ms.
fn quantiles(samples: &mut [u32]) -> serde_json::Value {
    json!({
        "count": samples.len(),
        "p50_ms": quantile_ms(samples, 0.50),
        "p99_ms": quantile_ms(samples, 0.99),
        "p999_ms": quantile_ms(samples, 0.999),
    })
}

fn latency_summary(phase: &mut Phase) -> serde_json::Value {
    let mut by_status = serde_json::Map::new();
    for (status, samples) in &mut phase.latencies {
        by_status.insert(status.to_string(), quantiles(samples));
    }
    let mut all: Vec<u32> = phase.latencies.values().flatten().copied().collect();
    json!({
        "requests": all.len(),
        "errors": phase.errors,
        "p50_ms": quantile_ms(&mut all, 0.50),
        "p99_ms": quantile_ms(&mut all, 0.99),
        "p999_ms": quantile_ms(&mut all, 0.999),
        "max_ms": quantile_ms(&mut all, 1.0),
        "by_status": by_status,
    })
}

fn median_by(rounds: &[serde_json::Value], key: &str) -> serde_json::Value {
    let mut sorted: Vec<&serde_json::Value> = rounds.iter().collect();
    sorted.sort_by(|a, b| a[key].as_f64().partial_cmp(&b[key].as_f64()).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).map_or(json!(null), |v| (*v).clone())
}

/// The rounds listed under `key` of the results, none if absent.
fn rounds<'a>(r: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    r[key].as_array().map_or(&[], Vec::as_slice)
}

fn print_table(r: &serde_json::Value) {
    // One figure of each round, in order.
    let each = |list: &str, key: &str| -> String {
        rounds(r, list).iter().map(|x| x[key].to_string()).collect::<Vec<_>>().join(" / ")
    };
    let m = &r["throughput_median"];
    println!();
    println!("| figure (median of rounds) | value |");
    println!("|---|---|");
    let paced = if r["paced_req_per_s"].is_null() { "" } else { " (paced by BENCH_RATE, not a peak)" };
    println!("| POST /task req/s{paced} | {} |", m["rps"]);
    println!("| latency p50 / p99 / p99.9 ms (all) | {} / {} / {} |", m["p50_ms"], m["p99_ms"], m["p999_ms"]);
    for status in ["200", "202", "429"] {
        let s = &m["by_status"][status];
        if !s.is_null() {
            println!(
                "| {status}: count, p50 / p99 / p99.9 ms | {}, {} / {} / {} |",
                s["count"], s["p50_ms"], s["p99_ms"], s["p999_ms"]
            );
        }
    }
    for queue in SeedQueue::ALL {
        let (s, kept) = (&r[queue.name()], queue.kept());
        println!(
            "| the seed's design, queued tasks {kept}, same load: req/s; p50 / p99 ms; CPU s per 1,000 req, its processes / its Redis; errors | {}; {} / {}; {} / {}; {} |",
            s["rps"], s["p50_ms"], s["p99_ms"], s["seed_cpu_s_per_1000"], s["redis_cpu_s_per_1000"], s["errors"]
        );
        println!(
            "| Sluice's req/s over it, each round (its req/s) | {} |",
            rounds(r, "throughput_rounds")
                .iter()
                .zip(rounds(r, &format!("{}_rounds", queue.name())))
                .map(|(x, s)| format!("{} ({})", x[format!("over_{}_rps", queue.name())], s["rps"]))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let h = &r["half_peak"];
    println!(
        "| at half of that rate, median round by p99: p50 / p99 ms (AOF rewrites meanwhile); p99 of each round | {} / {} ({}); {} |",
        h["p50_ms"],
        h["p99_ms"],
        h["aof_rewrites"],
        each("half_peak_rounds", "p99_ms")
    );
    println!(
        "| the same round: machine busy (share of all cores), tasks run per s besides the requests | {}, {} |",
        h["cpu_busy_share"], h["tasks_run_per_s"]
    );
    let split = |list: &str| -> String {
        let lines = rounds(r, list).iter().map(|x| {
            let (o, d) = (&x["outside_aof_rewrite"], &x["during_aof_rewrite"]);
            format!("{} ({}) / {} ({}, {} s)", o["p99_ms"], o["count"], d["p99_ms"], d["count"], x["aof_rewrite_s"])
        });
        lines.collect::<Vec<_>>().join("; ")
    };
    println!(
        "| p99 ms of the answers outside / during an AOF rewrite (answers; seconds of rewrite), each round: half of peak | {} |",
        split("half_peak_rounds")
    );
    println!("| the same at full rate | {} |", split("throughput_rounds"));
    let f = &r["floor"];
    println!(
        "| the floor at that rate (`sluice-floor`: HTTP in, one trivial Redis script, HTTP out), median round by p99: p50 / p99 ms; p99 of each round | {} / {}; {} |",
        f["p50_ms"],
        f["p99_ms"],
        each("floor_rounds", "p99_ms")
    );
    let pairs: Vec<String> = rounds(r, "half_peak_rounds")
        .iter()
        .zip(rounds(r, "floor_rounds"))
        .map(|(h, f)| format!("{} ({} / {})", h["p99_over_floor_p99"], h["steal_share"], f["steal_share"]))
        .collect();
    println!(
        "| Sluice's p99 over the floor's, each round pair at half of peak (steal share: Sluice's round / the floor's) | {} |",
        pairs.join(" / ")
    );
    println!(
        "| CPU s per 1,000 req at half of peak, median round: Sluice / its Redis; the floor / its Redis | {} / {}; {} / {} |",
        h["sluice_cpu_s_per_1000"], h["redis_cpu_s_per_1000"], f["floor_cpu_s_per_1000"], f["redis_cpu_s_per_1000"]
    );
    println!(
        "| share of the machine stolen by the hypervisor, each round: full rate; half of peak; floor | {}; {}; {} |",
        each("throughput_rounds", "steal_share"),
        each("half_peak_rounds", "steal_share"),
        each("floor_rounds", "steal_share")
    );
    println!(
        "| full rate, median round: machine busy, tasks run per s | {}, {} |",
        m["cpu_busy_share"], m["tasks_run_per_s"]
    );
    println!(
        "| Redis commands per request; AOF rewrites in the round | {}; {} |",
        m["redis_commands_per_request"], m["aof_rewrites"]
    );
    println!(
        "| CPU s per 1,000 req: Sluice / Redis / load generator | {} / {} / {} |",
        m["sluice_cpu_s_per_1000"], m["redis_cpu_s_per_1000"], m["load_generator_cpu_s_per_1000"]
    );
    println!(
        "| reserve.lua alone (redis-benchmark, same round), a new task per call: calls/s; Sluice's share | {}; {} |",
        m["reserve_lua_alone_per_s"], m["share_of_reserve_lua_alone"]
    );
    println!(
        "| the same with task ids overwritten (due index stays small): calls/s; Sluice's share | {}; {} |",
        m["reserve_lua_alone_overwriting_per_s"], m["share_of_reserve_lua_alone_overwriting"]
    );
    println!(
        "| longest answer ms, each round: full rate; half of peak | {}; {} |",
        each("throughput_rounds", "max_ms"),
        each("half_peak_rounds", "max_ms")
    );
    println!(
        "| longest stall of the machine ms (a watchdog thread's overshoot; seconds mean a paused VM), each round: full rate; half of peak; floor | {}; {}; {} |",
        each("throughput_rounds", "longest_stall_ms"),
        each("half_peak_rounds", "longest_stall_ms"),
        each("floor_rounds", "longest_stall_ms")
    );
    println!("| peak RSS per worker MiB | {} |", m["peak_rss_mib_per_worker"]);
    let q = &r["queue"];
    println!("| queue: tasks queued / ran | {} / {} |", q["queued"], q["queued_ran"]);
    println!(
        "| queue lateness p50 / p99 / max ms | {} / {} / {} |",
        q["lateness_p50_ms"], q["lateness_p99_ms"], q["lateness_max_ms"]
    );
    println!(
        "| worker RSS MiB at start / max while draining | {} / {} |",
        q["worker_rss_mib_start"], q["worker_rss_mib_max_during_drain"]
    );
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
