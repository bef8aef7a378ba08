//! The load generator: N keep-alive HTTP/1.1 connections on one thread, each sending
//! `POST /task` for a random user of a fixed population, closed-loop (as fast as answers
//! come) or paced to a target rate. Latencies are kept per status code.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one load phase measured.
#[derive(Debug, Default)]
pub struct Phase {
    /// Answers by status code, each a list of latencies in microseconds.
    pub latencies: BTreeMap<u16, Vec<u32>>,
    /// Every answer's send time and latency in microseconds, whatever its status.
    pub timeline: Vec<(Instant, u32)>,
    /// Requests that failed at the connection level.
    pub errors: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// `task_id -> run_at` of every 202, when asked to keep them.
    pub queued: Vec<(String, i64)>,
}

impl Phase {
    /// Answers received.
    pub fn total(&self) -> usize {
        self.latencies.values().map(Vec::len).sum()
    }
}

/// Options of one phase.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub port: u16,
    pub connections: usize,
    pub users: u64,
    pub duration: Duration,
    /// Requests per second in all, or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many requests in all.
    pub max_requests: Option<u64>,
    /// Keep `task_id -> run_at` of queued answers.
    pub keep_queued: bool,
    pub seed: u64,
}

/// Run one phase.
pub async fn run(load: Load) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let deadline = started + load.duration;
    let per_conn_budget = load.max_requests.map(|m| m.div_ceil(load.connections as u64));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..load.connections {
        let seed = load.seed.wrapping_add(conn as u64 * 0x9e37_79b9_7f4a_7c15);
        tasks.spawn_local(connection(load, conn, seed, deadline, per_conn_budget));
    }
    let mut phase = Phase::default();
    while let Some(result) = tasks.join_next().await {
        let part = result??;
        for (status, mut lat) in part.latencies {
            phase.latencies.entry(status).or_default().append(&mut lat);
        }
        phase.errors += part.errors;
        phase.timeline.extend(part.timeline);
        phase.queued.extend(part.queued);
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

async fn connection(
    load: Load,
    index: usize,
    mut seed: u64,
    deadline: Instant,
    budget: Option<u64>,
) -> anyhow::Result<Phase> {
    let mut stream = TcpStream::connect(("127.0.0.1", load.port)).await?;
    stream.set_nodelay(true)?;
    let interval = load.rate.map(|r| Duration::from_secs_f64(load.connections as f64 / r));
    // Paced connections start staggered, so they do not send in lockstep bursts.
    let mut next =
        Instant::now() + interval.map_or(Duration::ZERO, |every| every * index as u32 / load.connections as u32);
    let mut phase = Phase::default();
    let mut sent = 0u64;
    let (mut request, mut response) = (Vec::with_capacity(256), Vec::with_capacity(1024));
    while Instant::now() < deadline && budget.is_none_or(|b| sent < b) {
        if let Some(every) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += every;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let body = format!(r#"{{"user_id":"user-{}"}}"#, seed % load.users);
        request.clear();
        write!(
            request,
            "POST /task HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let t0 = Instant::now();
        sent += 1;
        // A failed write, a closed connection or a malformed answer: an error, and this
        // connection stops.
        let answer = match stream.write_all(&request).await {
            Ok(()) => read_response(&mut stream, &mut response).await.unwrap_or(None),
            Err(_) => None,
        };
        let Some((status, body)) = answer else {
            phase.errors += 1;
            break;
        };
        let latency = t0.elapsed().as_micros() as u32;
        phase.latencies.entry(status).or_default().push(latency);
        phase.timeline.push((t0, latency));
        if load.keep_queued && status == 202 {
            let v: serde_json::Value = serde_json::from_slice(body)?;
            if let (Some(id), Some(at)) = (v["task_id"].as_str(), v["run_at"].as_i64()) {
                phase.queued.push((id.to_owned(), at));
            }
        }
    }
    Ok(phase)
}

/// Read one HTTP/1.1 response with a `content-length` body (every answer of Sluice's has
/// one) into `buf`: its status and body, or `None` if the connection closed first. A
/// plain read loop rather than an HTTP client library: the generator shares the machine
/// with what it measures, so it should cost as little of it as it can.
async fn read_response<'b>(stream: &mut TcpStream, buf: &'b mut Vec<u8>) -> anyhow::Result<Option<(u16, &'b [u8])>> {
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut head = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = head.parse(buf)? {
            let status = head.code.context("response without a status")?;
            let length = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
            let length: usize =
                std::str::from_utf8(length.context("response without content-length")?.value)?.parse()?;
            while buf.len() < head_len + length {
                if stream.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            return Ok(Some((status, &buf[head_len..head_len + length])));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The `q`-quantile (0..=1) of unsorted microsecond samples, in milliseconds.
pub fn quantile_ms(samples: &mut [u32], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    f64::from(samples[idx]) / 1000.0
}
