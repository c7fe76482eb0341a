//! Units' output read from the journal, by running `journalctl` with arguments (never
//! a shell) and reading its JSON lines, bounded in bytes and time.
//!
//! Entries are matched on fields journald sets itself, which a process cannot forge:
//! `_SYSTEMD_UNIT=<unit>` for the system manager's units, `_SYSTEMD_USER_UNIT=<unit>`
//! with `_UID=<the agent's uid>` for a user manager's. A follow stream keeps the
//! cursor of the last entry it sent, or the time it started when there was none yet.

use crate::config::BusKind;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Most bytes of `journalctl` output read for one call; the rest is cut.
const MAX_JOURNALCTL_OUTPUT: u64 = 16 * 1024 * 1024;
/// Longest a `journalctl` call may take.
const JOURNALCTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes counted per line besides its text (its framing in a reply), as for files.
const LINE_OVERHEAD: usize = 5;

/// Where a journal reader continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalPos {
    /// After the entry with this cursor.
    After(String),
    /// From this time on (µs since the epoch): no entry had been seen yet.
    Since(u64),
}

/// Lines read from the journal and where reading continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalChunk {
    /// The messages, oldest first.
    pub lines: Vec<String>,
    /// Whether lines were left out (over the byte limit, or a backlog skipped).
    pub truncated: bool,
    /// The cursor of the last entry read, if any.
    pub cursor: Option<String>,
}

/// A reader of one manager's units in one journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// `journalctl --directory`, or the system's journal.
    dir: Option<PathBuf>,
    /// Whose units: the system manager's, or the user manager's of this uid.
    user: Option<u32>,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(rename = "__CURSOR")]
    cursor: String,
    #[serde(rename = "MESSAGE", default)]
    message: Message,
}

/// journalctl's JSON `MESSAGE`: a string, an array of bytes (not UTF-8), or null.
#[derive(serde::Deserialize, Default)]
#[serde(untagged)]
enum Message {
    Text(String),
    Bytes(Vec<u8>),
    #[default]
    None,
}

impl Message {
    fn into_line(self) -> String {
        match self {
            Message::Text(s) => s,
            Message::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::None => String::new(),
        }
    }
}

impl Journal {
    /// A reader of `bus`'s units (a user manager's: this process's uid) in `dir`, or
    /// in the system's journal.
    pub fn new(dir: Option<PathBuf>, bus: BusKind) -> Journal {
        Journal {
            dir,
            user: match bus {
                BusKind::System => None,
                BusKind::User => Some(rustix::process::getuid().as_raw()),
            },
        }
    }

    /// The last `lines` messages of `unit` (a systemd unit name), newest last, at most
    /// `max_bytes` of them, and the cursor of the newest.
    pub async fn tail(
        &self,
        unit: &str,
        lines: usize,
        max_bytes: usize,
    ) -> io::Result<JournalChunk> {
        let mut args = vec!["--lines".to_string(), lines.to_string()];
        args.extend(self.matches(unit));
        let entries = self.run(&args).await?;
        let cursor = entries.last().map(|e| e.cursor.clone());
        // Newest first until the budget is spent.
        let mut budget = max_bytes;
        let mut kept = Vec::new();
        let mut truncated = false;
        for e in entries.into_iter().rev() {
            let line = e.message.into_line();
            let cost = line.len() + LINE_OVERHEAD;
            if cost > budget {
                truncated = true;
                break;
            }
            budget -= cost;
            kept.push(line);
        }
        kept.reverse();
        Ok(JournalChunk {
            lines: kept,
            truncated,
            cursor,
        })
    }

    /// Messages of `unit` after `pos`, oldest first, at most `max_lines` (a bigger
    /// backlog is skipped to its newest `max_lines`: `truncated`) and `max_bytes`
    /// (what does not fit is read next time). The cursor is the last entry returned.
    pub async fn after(
        &self,
        unit: &str,
        pos: &JournalPos,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<JournalChunk> {
        let mut args = match pos {
            JournalPos::After(c) => vec![format!("--after-cursor={c}")],
            JournalPos::Since(us) => {
                vec![format!("--since=@{}.{:06}", us / 1_000_000, us % 1_000_000)]
            }
        };
        args.extend(["--lines".to_string(), max_lines.to_string()]);
        args.extend(self.matches(unit));
        let entries = self.run(&args).await?;
        let mut chunk = JournalChunk {
            truncated: entries.len() >= max_lines,
            ..JournalChunk::default()
        };
        let mut budget = max_bytes;
        for e in entries {
            let line = e.message.into_line();
            let cost = line.len() + LINE_OVERHEAD;
            if cost > budget && !chunk.lines.is_empty() {
                break;
            }
            budget = budget.saturating_sub(cost);
            chunk.lines.push(line);
            chunk.cursor = Some(e.cursor);
        }
        Ok(chunk)
    }

    /// The match arguments for `unit`: fields journald sets, not the sender.
    fn matches(&self, unit: &str) -> Vec<String> {
        match self.user {
            None => vec![format!("_SYSTEMD_UNIT={unit}")],
            Some(uid) => vec![format!("_SYSTEMD_USER_UNIT={unit}"), format!("_UID={uid}")],
        }
    }

    /// Runs `journalctl` with `args` and reads its entries.
    async fn run(&self, args: &[String]) -> io::Result<Vec<Entry>> {
        let mut cmd = tokio::process::Command::new("journalctl");
        cmd.args(["--no-pager", "--quiet", "--output=json", "--all"]);
        if let Some(d) = &self.dir {
            cmd.arg("--directory").arg(d);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run journalctl: {e}")))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let read = async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(MAX_JOURNALCTL_OUTPUT)
                .read_to_end(&mut out)
                .await?;
            let mut err = Vec::new();
            (&mut stderr).take(4096).read_to_end(&mut err).await?;
            let status = child.wait().await?;
            Ok::<_, io::Error>((out, err, status))
        };
        let (out, err, status) = tokio::time::timeout(JOURNALCTL_TIMEOUT, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "journalctl took over 10 s"))??;
        if !status.success() && out.is_empty() {
            return Err(io::Error::other(format!(
                "journalctl failed ({status}): {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(parse_entries(&out))
    }
}

/// The entries of journalctl's JSON lines; a line that does not parse (the last one,
/// cut at the output limit) is skipped.
fn parse_entries(out: &[u8]) -> Vec<Entry> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Entry>(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_text_bytes_or_nothing_and_cut_lines_skipped() {
        let out = br#"{"__CURSOR":"c1","MESSAGE":"hello"}
{"__CURSOR":"c2","MESSAGE":[104,105,255]}
{"__CURSOR":"c3","MESSAGE":null}
{"__CURSOR":"c4","MESS"#;
        let e = parse_entries(out);
        assert_eq!(e.len(), 3);
        let lines: Vec<String> = e.into_iter().map(|e| e.message.into_line()).collect();
        assert_eq!(lines, ["hello", "hi\u{fffd}", ""]);
    }

    #[test]
    fn matches_are_fields_journald_sets() {
        let system = Journal::new(None, BusKind::System);
        assert_eq!(
            system.matches("nginx.service"),
            ["_SYSTEMD_UNIT=nginx.service"]
        );
        let user = Journal::new(None, BusKind::User);
        let m = user.matches("web.service");
        assert_eq!(m[0], "_SYSTEMD_USER_UNIT=web.service");
        assert!(m[1].starts_with("_UID="));
    }
}
