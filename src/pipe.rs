//! An in-process pipe of byte buffers: lets code that pushes bytes (the write path,
//! `cat`) feed code that pulls them through `Read` (the tar crate), on another thread;
//! and a reader that reads ahead of its consumer on a thread of its own.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// The writing end; dropping it ends the stream.
pub struct PipeWriter(SyncSender<std::io::Result<Vec<u8>>>);

/// The reading end; reads return 0 once the writer is gone and all bytes are read,
/// or the writer's error once the bytes before it are read.
pub struct PipeReader {
    rx: Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

/// A pipe holding at most `capacity` buffers in flight.
pub fn pipe(capacity: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(capacity);
    (
        PipeWriter(tx),
        PipeReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            failed: false,
        },
    )
}

impl PipeWriter {
    /// Sends a buffer without copying it; `false` when the reader is gone.
    pub fn send(&self, data: Vec<u8>) -> bool {
        self.0.send(Ok(data)).is_ok()
    }

    /// Ends the stream with an error, which the reader gets after the bytes sent
    /// before it.
    pub fn fail(self, e: std::io::Error) {
        // A reader that is gone has no use for it.
        let _ = self.0.send(Err(e));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.send(data.to_vec()) {
            Ok(data.len())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the reading side stopped",
            ))
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.failed {
                return Err(std::io::Error::other("the source failed before"));
            }
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads `source` on a thread of its own, up to a bound ahead of its consumer: a
/// producer upstream (`pg_dump | gzip`) keeps running while the consumer works in
/// bursts (re-creating a span of compressed data) instead of stalling on a full
/// pipe. Buffers of `buffer_bytes`, at most `buffers` of them waiting; a read
/// error reaches the consumer after the bytes before it.
pub fn read_ahead(
    mut source: Box<dyn Read + Send>,
    buffers: usize,
    buffer_bytes: usize,
) -> PipeReader {
    let (tx, rx) = pipe(buffers);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; buffer_bytes];
        let mut filled = 0;
        let read = loop {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    // Half full is enough to pass on: a slow source's bytes must
                    // not wait for a whole buffer.
                    if filled >= buffer_bytes / 2 {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        if filled > 0 && !tx.send(buf) {
            return;
        }
        match read {
            Err(e) => return tx.fail(e),
            Ok(()) if filled == 0 => return,
            Ok(()) => {}
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `data` in short reads, then fails if `fail`.
    struct Source {
        data: Vec<u8>,
        at: usize,
        fail: bool,
    }

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return if self.fail {
                    Err(std::io::Error::other("disk on fire"))
                } else {
                    Ok(0)
                };
            }
            let n = out.len().min(777).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_gives_every_byte_then_the_error() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for fail in [false, true] {
            let source = Source {
                data: data.clone(),
                at: 0,
                fail,
            };
            let mut r = read_ahead(Box::new(source), 2, 4096);
            let mut got = Vec::new();
            let result = r.read_to_end(&mut got);
            assert!(got == data, "every byte before the end or the error");
            match result {
                Ok(n) => assert!(!fail && n == data.len()),
                Err(e) => assert!(fail && e.to_string() == "disk on fire", "{e}"),
            }
        }
    }
}
