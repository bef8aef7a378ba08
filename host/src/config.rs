//! Configuration: one `Config`, read from the environment (and `.env`), every default
//! in one place, validated at start so a bad value fails before anything serves.

use anyhow::{Context, bail};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::PolicyName;

/// Everything a Sluice process is told from outside.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port every worker serves on (`PORT`, 3000).
    pub port: u16,
    /// Address to bind (`BIND`, 0.0.0.0).
    pub bind: std::net::IpAddr,
    /// Redis to keep counters and the queue in (`REDIS_URL`, redis://127.0.0.1:6379).
    pub redis_url: String,
    /// Worker processes (`WORKERS`, the number of available cores).
    pub workers: NonZeroUsize,
    /// Folder of `<name>.wasm` policies, watched for changes (`POLICY_DIR`, policies/dist).
    pub policy_dir: PathBuf,
    /// Policy applied to `POST /task` (`POLICY`, default).
    pub policy: PolicyName,
    /// Completion log file shared by all workers (`TASK_LOG`, ./task_log.jsonl).
    pub task_log: PathBuf,
    /// How long a claimed task is leased before another worker may run it (`LEASE_MS`, 5000).
    pub lease: Duration,
    /// Longest wait for one Redis answer before answering 503 (`REDIS_TIMEOUT_MS`, 1000).
    pub redis_timeout: Duration,
    /// How long completed tasks stay visible to `GET /task/{id}` (`TASK_TTL_SECS`, 86400).
    pub task_ttl: Duration,
    /// Most `POST /task` submissions one worker handles at once before shedding with 503
    /// (`MAX_IN_FLIGHT`, 1024).
    pub max_in_flight: usize,
}

impl Config {
    /// Read `.env` (if present) and the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        // A missing .env is normal; a malformed one is an error worth stopping for.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e).context("reading .env"),
        }
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Build from any key lookup (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let workers = NonZeroUsize::new(parse_in(&get, "WORKERS", cores, 1..=256)?).context("WORKERS is at least 1")?;
        let policy = get("POLICY").unwrap_or_else(|| "default".into());
        let lease_ms = parse_in(&get, "LEASE_MS", 5_000, 100..=3_600_000)?;
        // Answers must come within 2 s.
        let redis_timeout_ms = parse_in(&get, "REDIS_TIMEOUT_MS", 1_000, 10..=1_900)?;
        // 0 would refuse every submission (503) or delete each record as it is acknowledged;
        // past these bounds the semaphore panics or Redis refuses the expiry (ten years).
        let max_in_flight = parse_in(&get, "MAX_IN_FLIGHT", 1_024, 1..=1_000_000)?;
        let task_ttl_secs = parse_in(&get, "TASK_TTL_SECS", 86_400, 1..=10 * 365 * 86_400)?;
        if let Some(filter) = get("RUST_LOG") {
            tracing_subscriber::EnvFilter::try_new(&filter)
                .with_context(|| format!("RUST_LOG is not a valid log filter: {filter:?}"))?;
        }
        let redis_url = get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        redis::Client::open(redis_url.as_str())
            .with_context(|| format!("REDIS_URL is not a valid Redis URL: {redis_url}"))?;
        Ok(Self {
            // 0 would have each worker listen on a port of its own, none of them known.
            port: parse_in(&get, "PORT", 3000, 1..=u16::MAX)?,
            bind: parse(&get, "BIND", std::net::IpAddr::from([0, 0, 0, 0]))?,
            redis_url,
            workers,
            policy_dir: get("POLICY_DIR").unwrap_or_else(|| "policies/dist".into()).into(),
            policy: PolicyName::new(&policy)
                .with_context(|| format!("POLICY {policy:?} is not a valid policy name"))?,
            task_log: get("TASK_LOG").unwrap_or_else(|| "./task_log.jsonl".into()).into(),
            lease: Duration::from_millis(lease_ms),
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            task_ttl: Duration::from_secs(task_ttl_secs),
            max_in_flight,
        })
    }
}

/// [`parse`], refusing a value outside `range`.
fn parse_in<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let value = parse(get, key, default)?;
    if !range.contains(&value) {
        bail!("{key} must be between {} and {}, got {value}", range.start(), range.end());
    }
    Ok(value)
}

fn parse<T>(get: &impl Fn(&str) -> Option<String>, key: &str, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match get(key) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| anyhow::anyhow!("{key}={raw:?} is invalid: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_sane() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.port, 3000);
        assert_eq!(c.policy.as_str(), "default");
        assert_eq!(c.task_log, PathBuf::from("./task_log.jsonl"));
    }

    #[test]
    fn bad_values_fail_with_the_key_named() {
        for (key, value) in [
            ("PORT", "70000"),
            ("PORT", "0"),
            ("WORKERS", "0"),
            ("POLICY", "../x"),
            ("LEASE_MS", "abc"),
            ("REDIS_URL", "http://x"),
            ("MAX_IN_FLIGHT", "0"),
            ("MAX_IN_FLIGHT", "18446744073709551615"),
            ("TASK_TTL_SECS", "0"),
            ("TASK_TTL_SECS", "18446744073709551615"),
            ("RUST_LOG", "sluice=loud"),
        ] {
            let err = config(&[(key, value)]).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
