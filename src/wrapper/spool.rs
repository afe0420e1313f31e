//! Output waiting for the daemon, on disk: the job's output is appended whatever the connection
//! state, so the job never blocks on a full pipe. Bytes are released once acknowledged; when
//! everything is acknowledged the file is emptied. Bounded: past the cap, the head is kept,
//! the newest output is kept in a ring of the same size, and the middle is replaced by a note
//! saying how much was dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct Spool {
    dir: std::path::PathBuf,
    log: File,
    /// Stream offset of the log file's first byte.
    base: u64,
    /// Stream offset just past the last byte in the log.
    end: u64,
    /// Everything before this stream offset is acknowledged.
    released: u64,
    /// Most bytes the log holds before overflow goes to the ring.
    head_cap: u64,
    ring: Option<Ring>,
    ring_cap: u64,
    /// Bytes dropped so far by overflows already written out.
    pub dropped_total: u64,
}

struct Ring {
    file: File,
    /// Bytes ever written to the ring in this overflow.
    written: u64,
}

/// Creates an anonymous file (unlinked at once) in `dir`.
fn anonymous(dir: &Path, tag: &str) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            ".sp-wrapper-{}-{tag}-{attempt}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create a spool file"))
}

impl Spool {
    /// A spool holding at most about `max_bytes` (half head, half tail) in `dir`.
    pub fn create(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        let max = max_bytes.max(2);
        Ok(Spool {
            dir: dir.to_path_buf(),
            log: anonymous(dir, "spool")?,
            base: 0,
            end: 0,
            released: 0,
            head_cap: max / 2,
            ring: None,
            ring_cap: max - max / 2,
            dropped_total: 0,
        })
    }

    /// Appends output. Never blocks on the daemon.
    pub fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.ring.is_none() && self.end - self.released + data.len() as u64 <= self.head_cap {
            self.log.write_all_at(data, self.end - self.base)?;
            self.end += data.len() as u64;
            return Ok(());
        }
        // Full: keep the newest bytes in the ring.
        if self.ring.is_none() {
            self.ring = Some(Ring {
                file: anonymous(&self.dir, "ring")?,
                written: 0,
            });
        }
        let cap = self.ring_cap;
        let ring = self.ring.as_mut().expect("just set");
        // Only the last `cap` bytes of `data` can survive.
        let skip = (data.len() as u64).saturating_sub(cap);
        let mut pos = ring.written + skip;
        let mut rest = &data[skip as usize..];
        while !rest.is_empty() {
            let at = pos % cap;
            let n = rest.len().min((cap - at) as usize);
            ring.file.write_all_at(&rest[..n], at)?;
            rest = &rest[n..];
            pos += n as u64;
        }
        ring.written += data.len() as u64;
        Ok(())
    }

    /// Stream offset of the first byte not yet acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.released
    }

    /// Stream offset just past the last byte available to send.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Reads up to `max` bytes at stream offset `from` (which must not be released).
    pub fn read(&mut self, from: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let len = (self.end.saturating_sub(from)).min(max as u64) as usize;
        let mut buf = vec![0; len];
        self.log.read_exact_at(&mut buf, from - self.base)?;
        Ok(buf)
    }

    /// Everything before `upto` is acknowledged: it may go. When all is acknowledged, the file
    /// is emptied and, after an overflow, the dropped note and the kept tail become sendable.
    pub fn release(&mut self, upto: u64) -> std::io::Result<()> {
        self.released = self.released.max(upto.min(self.end));
        if self.released == self.end {
            self.log.set_len(0)?;
            self.base = self.end;
            self.flush_ring()?;
        }
        Ok(())
    }

    /// Moves an overflow's tail into the log, after a note about the dropped middle.
    fn flush_ring(&mut self) -> std::io::Result<()> {
        let Some(mut ring) = self.ring.take() else {
            return Ok(());
        };
        let cap = self.ring_cap;
        let kept = ring.written.min(cap);
        let dropped = ring.written - kept;
        self.dropped_total += dropped;
        let note = format!(
            "\n[saltpeter: {dropped} bytes of output dropped here: the daemon was unreachable and the wrapper's spool was full]\n"
        );
        let mut tail = vec![0; kept as usize];
        if ring.written <= cap {
            ring.file.read_exact_at(&mut tail, 0)?;
        } else {
            let split = (ring.written % cap) as usize;
            ring.file.seek(SeekFrom::Start(split as u64))?;
            ring.file.read_exact(&mut tail[..kept as usize - split])?;
            ring.file
                .read_exact_at(&mut tail[kept as usize - split..], 0)?;
        }
        let mut pos = self.end - self.base;
        if dropped > 0 {
            self.log.write_all_at(note.as_bytes(), pos)?;
            pos += note.len() as u64;
            self.end += note.len() as u64;
        }
        self.log.write_all_at(&tail, pos)?;
        self.end += tail.len() as u64;
        self.log.flush()?;
        Ok(())
    }

    /// Whether output is held back in an overflow ring (it becomes sendable once the log is
    /// acknowledged).
    pub fn overflowing(&self) -> bool {
        self.ring.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Spool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = s.released;
        loop {
            let chunk = s.read(at, 7).unwrap();
            if chunk.is_empty() {
                s.release(at).unwrap();
                if s.end() == at {
                    return out;
                }
                continue;
            }
            at += chunk.len() as u64;
            out.extend(chunk);
        }
    }

    #[test]
    fn passes_everything_through_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path(), 1000).unwrap();
        s.append(b"hello ").unwrap();
        s.append(b"world\r\n").unwrap();
        assert_eq!(drain(&mut s), b"hello world\r\n");
        s.append(b"again").unwrap();
        assert_eq!(drain(&mut s), b"again");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool files are anonymous"
        );
    }

    #[test]
    fn keeps_head_and_tail_and_says_how_much_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path(), 20).unwrap();
        for i in 0..10u8 {
            s.append(&[b'a' + i; 5]).unwrap();
        }
        assert!(s.overflowing());
        let out = String::from_utf8(drain(&mut s)).unwrap();
        // Head: 10 bytes; tail: the last 10; dropped: 30.
        assert!(
            out.starts_with("aaaaabbbbb\n[saltpeter: 30 bytes of output dropped here"),
            "{out}"
        );
        assert!(out.ends_with("iiiiijjjjj"), "{out}");
        assert_eq!(s.dropped_total, 30);
    }
}
