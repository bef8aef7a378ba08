//! Tracing set-up. Every line starts with the process it came from (`supervisor` or
//! `worker=N`), so the interleaved output of all workers stays readable.

use std::io::Write;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Install the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(tag: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = Tagged(Arc::from(format!("{tag} ")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false).init();
}

struct Tagged(Arc<str>);

/// Buffers one event and writes it, tag first, in a single write to stderr on drop.
struct TaggedLine {
    tag: Arc<str>,
    line: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Tagged {
    type Writer = TaggedLine;
    fn make_writer(&'a self) -> TaggedLine {
        TaggedLine { tag: self.0.clone(), line: self.0.as_bytes().to_vec() }
    }
}

impl Write for TaggedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TaggedLine {
    fn drop(&mut self) {
        if self.line.len() > self.tag.len() {
            let _ = std::io::stderr().lock().write_all(&self.line);
        }
    }
}
