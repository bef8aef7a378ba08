//! The completion log: one JSON line per task run, appended by every worker to one file.
//! The file is opened `O_APPEND` and each batch of lines goes out in a single `write`, so lines
//! from different processes never interleave or tear. Lines reach the page cache, not
//! the disk, before the task is acknowledged: durable against a crash of Sluice, not of
//! the machine (the OS flushes within seconds). Failed writes are counted.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct Completion<'a> {
    /// The user the task ran for.
    pub user_id: &'a str,
    /// The task.
    pub task_id: &'a str,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms.
    pub completed_at: i64,
}

/// The shared log file of this process.
#[derive(Debug)]
pub struct CompletionLog {
    file: File,
    path: std::path::PathBuf,
    failed_writes: AtomicU64,
}

impl CompletionLog {
    /// Open (creating) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file, path: path.to_owned(), failed_writes: AtomicU64::new(0) })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line per entry, all in a single write: every line lands, whole, or the
    /// write fails.
    pub fn append(&self, entries: &[Completion<'_>]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(entries.len() * 128);
        for entry in entries {
            serde_json::to_writer(&mut lines, entry).expect("a completion always serializes");
            lines.push(b'\n');
        }
        // `write`, not `write_all`: a partial write would tear a line, so treat it as a failure.
        let result = (&self.file).write(&lines).and_then(|n| {
            if n == lines.len() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("short write: {n} of {} bytes", lines.len())))
            }
        });
        if result.is_err() {
            self.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Writes that failed since start.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_whole_lines() {
        let dir = std::env::temp_dir().join(format!("sluice-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("log.jsonl");
        let log = CompletionLog::open(&path).expect("open");
        for i in 0..3 {
            log.append(&[Completion { user_id: "u", task_id: "t", started_at: i, completed_at: i + 1 }])
                .expect("write");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with(r#"{"user_id":"u","task_id":"t","started_at":0,"completed_at":1}"#));
        assert_eq!(log.failed_writes(), 0);
        std::fs::remove_dir_all(dir).ok();
    }
}
