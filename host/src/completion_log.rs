//! The completion log: one JSON line per task run, appended by every worker to one file.
//! The file is opened `O_APPEND` and each batch of lines goes out in a single `write`, so lines
//! from different processes never interleave. Lines reach the page cache, not the disk,
//! before the task is acknowledged: durable against a crash of Sluice, not of the machine
//! (the OS flushes within seconds). Failed writes are counted.
//!
//! A write cut short (a full disk) ends inside a line. That write fails, so its tasks are
//! not acknowledged and run again, written whole then; the piece left is ended with a
//! newline at once, or, if that fails too, by this process's next write. So it stays one
//! broken line, instead of swallowing the line written after it. (Another worker's write
//! in between can still land after the piece: all of them share the full disk.)

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// A write of this process ended inside a line, and the newline that ends it could not
    /// be written yet: the next write starts with it.
    torn: AtomicBool,
}

impl CompletionLog {
    /// Open (creating) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file, path: path.to_owned(), failed_writes: AtomicU64::new(0), torn: AtomicBool::new(false) })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line per entry, all in a single write: every line lands, whole, or the
    /// write fails.
    pub fn append(&self, entries: &[Completion<'_>]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(entries.len() * 128 + 1);
        if self.torn.load(Ordering::Relaxed) {
            lines.push(b'\n');
        }
        for entry in entries {
            serde_json::to_writer(&mut lines, entry).expect("a completion always serializes");
            lines.push(b'\n');
        }
        let result = write_lines(&self.file, &lines, &self.torn);
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

/// Write `lines` to `out` in one `write`, not `write_all`: a write cut short has ended inside
/// a line, so it fails, and the piece it left is ended with a newline at once. `torn` says
/// whether a piece is left unended (a newline is owed): cleared once one is written, set
/// when a cut write's newline fails too.
fn write_lines(mut out: impl Write, lines: &[u8], torn: &AtomicBool) -> std::io::Result<()> {
    let written = out.write(lines)?;
    if written > 0 {
        torn.store(false, Ordering::Relaxed);
    }
    if written == lines.len() {
        return Ok(());
    }
    if written > 0 && !matches!(out.write(b"\n"), Ok(1)) {
        torn.store(true, Ordering::Relaxed);
    }
    Err(std::io::Error::other(format!("short write: {written} of {} bytes", lines.len())))
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

    /// A file on a disk that is filling up: each write takes at most the next of `caps`
    /// bytes (none left: any number), and a write it takes nothing of fails as a full
    /// disk's does.
    struct Disk {
        bytes: Vec<u8>,
        caps: Vec<usize>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let cap = if self.caps.is_empty() { usize::MAX } else { self.caps.remove(0) };
            let n = buf.len().min(cap);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write cut inside a line fails, and leaves one broken line: ended at once when the
    /// disk takes one more byte, else by the next write, never joined to the next line.
    #[test]
    fn a_write_cut_short_leaves_one_broken_line() {
        let torn = AtomicBool::new(false);
        let first = b"{\"task_id\":\"a\"}\n{\"task_id\":\"b\"}\n";
        let next = b"{\"task_id\":\"c\"}\n";
        let want = "{\"task_id\":\"a\"}\n{\"tas\n{\"task_id\":\"c\"}\n";
        // The cut write takes a's line and 5 bytes of b's; the newline after it goes in.
        let mut disk = Disk { bytes: Vec::new(), caps: vec![21, 1] };
        assert!(write_lines(&mut disk, first, &torn).is_err());
        assert!(!torn.load(Ordering::Relaxed));
        write_lines(&mut disk, next, &torn).expect("write");
        assert_eq!(String::from_utf8(disk.bytes).expect("utf-8"), want);

        // The newline is refused too: the next write owes it, and pays it.
        let mut disk = Disk { bytes: Vec::new(), caps: vec![21, 0] };
        assert!(write_lines(&mut disk, first, &torn).is_err());
        assert!(torn.load(Ordering::Relaxed));
        let owed = [&b"\n"[..], next].concat();
        write_lines(&mut disk, &owed, &torn).expect("write");
        assert!(!torn.load(Ordering::Relaxed));
        assert_eq!(String::from_utf8(disk.bytes).expect("utf-8"), want);

        // A write refused whole leaves nothing owed, and keeps owed what was.
        let mut full = Disk { bytes: Vec::new(), caps: vec![0] };
        assert!(write_lines(&mut full, next, &torn).is_err());
        assert!(!torn.load(Ordering::Relaxed));
        torn.store(true, Ordering::Relaxed);
        let mut full = Disk { bytes: Vec::new(), caps: vec![0] };
        assert!(write_lines(&mut full, &owed, &torn).is_err());
        assert!(torn.load(Ordering::Relaxed));
    }
}
