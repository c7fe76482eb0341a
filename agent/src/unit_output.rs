//! Unit output files: what `logs` reads back, and their rotation.
//!
//! No journald is assumed: each unit's stdout and stderr are appended by systemd to
//! `state_dir/logs/<unit>.log` (`StandardOutput=append:`). systemd keeps that file open
//! in append mode, so rotation is copy-and-truncate: the content goes to `<unit>.log.1`
//! and the file is cut to zero; the program's next write lands at the new end. A rename
//! would leave systemd writing into the renamed file. Lines written between the copy
//! and the truncation are lost: a window of one copy, accepted for a size cap.

use gearmq_schemas::actions::LogsResult;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes counted per line on top of its text (MessagePack string header and slack),
/// so a reply's line bytes stay under the cap when encoded.
const LINE_OVERHEAD: usize = 5;

/// New lines read from an output file since an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Complete lines, oldest first, without newlines.
    pub lines: Vec<String>,
    /// Where the next read starts.
    pub next_offset: u64,
    /// Whether bytes were skipped (the file was truncated under the reader, or a
    /// backlog beyond the cap was dropped, or a line was cut).
    pub truncated: bool,
}

/// The output files of every unit.
#[derive(Debug, Clone)]
pub struct UnitOutput {
    dir: PathBuf,
    rotate_at: u64,
}

impl UnitOutput {
    /// Output files in `state_dir/logs`, rotated past `rotate_at` bytes.
    pub fn new(state_dir: &Path, rotate_at: u64) -> Self {
        UnitOutput {
            dir: state_dir.join("logs"),
            rotate_at,
        }
    }

    /// The file unit `unit` appends to.
    pub fn path(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.log"))
    }

    fn rotated_path(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.log.1"))
    }

    /// Creates the directory (systemd creates the file, not its directory).
    pub fn ensure_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)
    }

    /// The current size of unit `unit`'s file (0 when there is none): where a follower
    /// starts.
    pub fn end_offset(&self, unit: &str) -> u64 {
        fs::metadata(self.path(unit)).map(|m| m.len()).unwrap_or(0)
    }

    /// The last `lines` lines of unit `unit`'s output (the rotated file included when
    /// the current one is short), at most `max_bytes` of them.
    pub fn tail(&self, unit: &str, lines: usize, max_bytes: usize) -> io::Result<LogsResult> {
        let mut result = LogsResult::default();
        if lines == 0 {
            return Ok(result);
        }
        let (mut current, cut) = tail_lines(&self.path(unit), max_bytes)?;
        let mut truncated = cut;
        if current.len() < lines && !cut {
            let used: usize = current.iter().map(|l| l.len() + LINE_OVERHEAD).sum();
            let (mut older, older_cut) =
                tail_lines(&self.rotated_path(unit), max_bytes.saturating_sub(used))?;
            truncated = older_cut;
            older.append(&mut current);
            current = older;
        }
        if current.len() > lines {
            current.drain(..current.len() - lines);
        }
        // The byte cap, keeping the newest lines.
        let mut budget = max_bytes;
        let mut keep = 0;
        for l in current.iter().rev() {
            let cost = l.len() + LINE_OVERHEAD;
            if cost > budget {
                truncated = true;
                break;
            }
            budget -= cost;
            keep += 1;
        }
        current.drain(..current.len() - keep);
        result.lines = current;
        result.truncated = truncated && result.lines.len() < lines;
        Ok(result)
    }

    /// Complete lines of unit `unit` written at or after `offset`, at most `max_bytes`
    /// of them. With `partial`, a last line without its newline is included too (the
    /// end of a stream). A file shorter than `offset` was rotated: reading restarts at
    /// its beginning.
    pub fn read_from(
        &self,
        unit: &str,
        offset: u64,
        max_bytes: usize,
        partial: bool,
    ) -> io::Result<Chunk> {
        let path = self.path(unit);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Chunk {
                    next_offset: 0,
                    truncated: offset > 0,
                    ..Chunk::default()
                });
            }
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let mut chunk = Chunk::default();
        let mut start = offset;
        if len < offset {
            start = 0;
            chunk.truncated = true;
        }
        // A backlog far beyond one reply is skipped rather than queued without bound.
        let backlog_cap = (max_bytes as u64).saturating_mul(4);
        if len - start > backlog_cap {
            start = len - max_bytes as u64;
            chunk.truncated = true;
            // Resume at the next line start.
            f.seek(SeekFrom::Start(start))?;
            let mut probe = Vec::new();
            (&mut f).take(max_bytes as u64).read_to_end(&mut probe)?;
            match probe.iter().position(|b| *b == b'\n') {
                Some(i) => start += i as u64 + 1,
                None => start = len,
            }
        }
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut f).take(max_bytes as u64).read_to_end(&mut buf)?;
        let mut consumed = 0usize;
        let mut budget = max_bytes;
        while consumed < buf.len() {
            let rest = &buf[consumed..];
            let (line, used) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], i + 1),
                None if partial || rest.len() == max_bytes => (rest, rest.len()),
                None => break,
            };
            let cost = line.len() + LINE_OVERHEAD;
            if cost > budget && !chunk.lines.is_empty() {
                break;
            }
            if used == rest.len() && rest.last() != Some(&b'\n') && !partial {
                // A line longer than a whole reply: sent cut.
                chunk.truncated = true;
            }
            budget = budget.saturating_sub(cost);
            chunk.lines.push(String::from_utf8_lossy(line).into_owned());
            consumed += used;
        }
        chunk.next_offset = start + consumed as u64;
        Ok(chunk)
    }

    /// Rotates unit `unit`'s file if it is over the cap; `true` if it did.
    pub fn rotate_if_needed(&self, unit: &str) -> io::Result<bool> {
        let path = self.path(unit);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if len <= self.rotate_at {
            return Ok(false);
        }
        fs::copy(&path, self.rotated_path(unit))?;
        // Truncate in place: systemd's O_APPEND descriptor keeps writing to this file.
        OpenOptions::new().write(true).open(&path)?.set_len(0)?;
        Ok(true)
    }

    /// Removes unit `unit`'s output files.
    pub fn remove(&self, unit: &str) -> io::Result<()> {
        for p in [self.path(unit), self.rotated_path(unit)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The complete lines in the last `max_bytes` of `path` (none if it does not exist),
/// and whether earlier content was left out.
fn tail_lines(path: &Path, max_bytes: usize) -> io::Result<(Vec<String>, bool)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    // One byte more than the budget, to see whether the window starts at a line start.
    let start = len.saturating_sub(max_bytes as u64 + 1);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(len - start).read_to_end(&mut buf)?;
    let mut cut = false;
    let mut body = &buf[..];
    if start > 0 {
        cut = true;
        match body.iter().position(|b| *b == b'\n') {
            Some(i) => body = &body[i + 1..],
            None => body = &[],
        }
    }
    let text = String::from_utf8_lossy(body);
    let lines = text.lines().map(str::to_string).collect();
    Ok((lines, cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn setup() -> (tempfile::TempDir, UnitOutput) {
        let d = tempfile::tempdir().unwrap();
        let out = UnitOutput::new(d.path(), 64 * 1024);
        out.ensure_dir().unwrap();
        (d, out)
    }

    fn append(out: &UnitOutput, unit: &str, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.path(unit))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn tail_returns_the_last_lines_within_the_byte_cap() {
        let (_d, out) = setup();
        assert_eq!(out.tail("web", 10, 1024).unwrap(), LogsResult::default());
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        append(&out, "web", &text);
        let r = out.tail("web", 3, 1024).unwrap();
        assert_eq!(r.lines, vec!["line 98", "line 99", "line 100"]);
        assert!(!r.truncated);
        // 100 lines asked, ~12 bytes each: the cap keeps the newest that fit.
        let r = out.tail("web", 100, 120).unwrap();
        assert!(r.truncated);
        assert_eq!(r.lines.last().unwrap(), "line 100");
        assert!(
            r.lines
                .iter()
                .map(|l| l.len() + LINE_OVERHEAD)
                .sum::<usize>()
                <= 120
        );
        assert_eq!(out.tail("web", 0, 1024).unwrap().lines.len(), 0);
    }

    #[test]
    fn rotation_copies_then_truncates_and_tail_reads_both() {
        let d = tempfile::tempdir().unwrap();
        let out = UnitOutput::new(d.path(), 10);
        out.ensure_dir().unwrap();
        append(&out, "web", "old 1\nold 2\n");
        // The writer keeps its append descriptor across the rotation.
        let mut writer = OpenOptions::new()
            .append(true)
            .open(out.path("web"))
            .unwrap();
        assert!(out.rotate_if_needed("web").unwrap());
        assert_eq!(out.end_offset("web"), 0);
        writer.write_all(b"new 1\n").unwrap();
        assert_eq!(fs::read_to_string(out.path("web")).unwrap(), "new 1\n");
        let r = out.tail("web", 3, 1024).unwrap();
        assert_eq!(r.lines, vec!["old 1", "old 2", "new 1"]);
        assert!(!out.rotate_if_needed("web").unwrap());
        out.remove("web").unwrap();
        assert!(!out.path("web").exists());
    }

    #[test]
    fn read_from_gives_complete_lines_and_survives_truncation() {
        let (_d, out) = setup();
        let c = out.read_from("web", 0, 1024, false).unwrap();
        assert_eq!(c, Chunk::default());
        append(&out, "web", "a\nb\npart");
        let c = out.read_from("web", 0, 1024, false).unwrap();
        assert_eq!(c.lines, vec!["a", "b"]);
        assert_eq!(c.next_offset, 4);
        append(&out, "web", "ial\n");
        let c2 = out.read_from("web", c.next_offset, 1024, false).unwrap();
        assert_eq!(c2.lines, vec!["partial"]);
        append(&out, "web", "tail");
        let end = out.read_from("web", c2.next_offset, 1024, true).unwrap();
        assert_eq!(end.lines, vec!["tail"]);
        // Truncated under the reader: start again at 0, say so.
        fs::write(out.path("web"), "x\n").unwrap();
        let c3 = out.read_from("web", end.next_offset, 1024, false).unwrap();
        assert_eq!(c3.lines, vec!["x"]);
        assert!(c3.truncated);
    }

    #[test]
    fn read_from_is_bounded_by_bytes() {
        let (_d, out) = setup();
        let text: String = (0..50).map(|i| format!("{i:09}\n")).collect();
        append(&out, "web", &text);
        let mut offset = 0;
        let mut all = Vec::new();
        loop {
            let c = out.read_from("web", offset, 128, false).unwrap();
            assert!(
                c.lines
                    .iter()
                    .map(|l| l.len() + LINE_OVERHEAD)
                    .sum::<usize>()
                    <= 128
            );
            if c.lines.is_empty() {
                break;
            }
            offset = c.next_offset;
            all.extend(c.lines);
        }
        // 500 bytes is within the 4x backlog: every line arrives, in order.
        assert_eq!(all.len(), 50);
        assert_eq!(all[49], "000000049");
        // A backlog beyond 4x is skipped to the newest lines.
        let big: String = (0..200).map(|i| format!("{i:09}\n")).collect();
        append(&out, "web", &big);
        let c = out.read_from("web", offset, 128, false).unwrap();
        assert!(c.truncated);
        assert!(c.lines[0].as_str() > "000000150", "{:?}", c.lines);
    }
}
