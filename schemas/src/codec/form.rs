//! The type-free half of strict decoding: what can be said of MessagePack bytes without
//! knowing the type they should hold.
//!
//! [`check`] walks one value (without recursion, so no input can exhaust the stack) and
//! reports, in the order PROTOCOL.md gives them: a value cut short or using the unused
//! format byte `c1`, bytes after the value, a format gearmq never writes or a map key that
//! is not a string or appears twice, and a header longer than needed. [`layout_only`]
//! tells whether bytes the typed reader accepted differ from their canonical encoding
//! only in layout (entry order, an optional field left out, a struct as an array) rather
//! than in the type of some value.

/// What the walk found wrong, in the order the protocol ranks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Issue {
    /// Not one complete MessagePack value (cut short, or the byte `c1`).
    Incomplete(String),
    /// One value, then this many more bytes.
    Trailing(usize),
    /// A format gearmq never writes, a non-string key, a repeated key, bad UTF-8.
    Malformed(String),
    /// A header longer than its value or length needs.
    NotShortest,
}

/// A container being walked: items still to read, and for maps the keys seen.
struct Open<'a> {
    items: u64,
    map: bool,
    keys: Vec<&'a [u8]>,
}

/// Checks that `bytes` hold exactly one MessagePack value in the forms gearmq writes.
/// The first problem by rank wins: incomplete, trailing, malformed, not shortest.
pub(super) fn check(bytes: &[u8]) -> Result<(), Issue> {
    let mut r = Reader { bytes, pos: 0 };
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut malformed: Option<String> = None;
    let mut not_shortest = false;
    loop {
        let is_key = stack
            .last()
            .is_some_and(|top| top.map && top.items % 2 == 0);
        let item = r.item().map_err(Issue::Incomplete)?;
        if !item.shortest {
            not_shortest = true;
        }
        if let Some(why) = item.never_written {
            malformed.get_or_insert(why);
        }
        if is_key {
            match item.kind {
                Kind::Str(key) => {
                    if let Some(top) = stack.last_mut() {
                        top.keys.push(key);
                    }
                }
                _ => {
                    malformed.get_or_insert_with(|| "a map key is not a string".into());
                }
            }
        }
        if let Some(top) = stack.last_mut() {
            top.items -= 1;
        }
        match item.kind {
            Kind::Array(n) if n > 0 => stack.push(Open {
                items: n,
                map: false,
                keys: Vec::new(),
            }),
            Kind::Map(n) if n > 0 => stack.push(Open {
                items: 2 * n,
                map: true,
                keys: Vec::new(),
            }),
            _ => {}
        }
        // Close every container whose last item was just read.
        while stack.last().is_some_and(|top| top.items == 0) {
            if let Some(done) = stack.pop()
                && let Some(key) = repeated(done.keys)
            {
                malformed.get_or_insert_with(|| {
                    format!(
                        "the key {:?} appears twice in one map",
                        String::from_utf8_lossy(key)
                    )
                });
            }
        }
        if stack.is_empty() {
            break;
        }
    }
    if r.pos < bytes.len() {
        return Err(Issue::Trailing(bytes.len() - r.pos));
    }
    if let Some(why) = malformed {
        return Err(Issue::Malformed(why));
    }
    if not_shortest {
        return Err(Issue::NotShortest);
    }
    Ok(())
}

fn repeated(mut keys: Vec<&[u8]>) -> Option<&[u8]> {
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

enum Kind<'a> {
    Scalar,
    Str(&'a [u8]),
    Array(u64),
    Map(u64),
}

struct Item<'a> {
    kind: Kind<'a>,
    shortest: bool,
    never_written: Option<String>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let start = self.pos;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("cut short at byte {start} (needs {n} more bytes)"))?;
        self.pos = end;
        Ok(&self.bytes[start..end])
    }

    fn uint(&mut self, width: u64) -> Result<u64, String> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }

    /// Reads one format byte and its header and payload, not the items of a container.
    fn item(&mut self) -> Result<Item<'a>, String> {
        let at = self.pos;
        let marker = self.take(1)?[0];
        let plain = |kind| Item {
            kind,
            shortest: true,
            never_written: None,
        };
        let never = |what: &str| Item {
            kind: Kind::Scalar,
            shortest: true,
            never_written: Some(format!("{what} at byte {at}: gearmq never writes it")),
        };
        Ok(match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 => plain(Kind::Scalar),
            0x80..=0x8f => plain(Kind::Map(u64::from(marker & 0x0f))),
            0x90..=0x9f => plain(Kind::Array(u64::from(marker & 0x0f))),
            0xa0..=0xbf => self.str(u64::from(marker & 0x1f), true, at)?,
            0xc1 => return Err(format!("the unused format byte c1 at byte {at}")),
            0xc4..=0xc6 => {
                let width = 1 << (marker - 0xc4);
                let len = self.uint(width)?;
                self.take(len)?;
                Item {
                    kind: Kind::Scalar,
                    shortest: width == 1 || len >= limit(width / 2),
                    never_written: None,
                }
            }
            0xc7..=0xc9 => {
                let len = self.uint(1 << (marker - 0xc7))?;
                self.take(1 + len)?;
                never("an ext value")
            }
            0xca | 0xcb => {
                self.take(if marker == 0xca { 4 } else { 8 })?;
                never("a float")
            }
            0xcc..=0xcf => {
                let width = 1 << (marker - 0xcc);
                let v = self.uint(width)?;
                let fits_shorter = if width == 1 { 0x80 } else { limit(width / 2) };
                Item {
                    kind: Kind::Scalar,
                    shortest: v >= fits_shorter,
                    never_written: None,
                }
            }
            0xd0..=0xd3 => {
                self.take(1 << (marker - 0xd0))?;
                never("a signed integer")
            }
            0xd4..=0xd8 => {
                self.take(1 + (1 << (marker - 0xd4)))?;
                never("an ext value")
            }
            0xd9..=0xdb => {
                let width = 1 << (marker - 0xd9);
                let len = self.uint(width)?;
                let shortest = len >= if width == 1 { 32 } else { limit(width / 2) };
                self.str(len, shortest, at)?
            }
            0xdc | 0xdd => {
                let width = if marker == 0xdc { 2 } else { 4 };
                let n = self.uint(width)?;
                self.container(Kind::Array(n), n >= limit_fix(width), n)?
            }
            0xde | 0xdf => {
                let width = if marker == 0xde { 2 } else { 4 };
                let n = self.uint(width)?;
                self.container(Kind::Map(n), n >= limit_fix(width), n.saturating_mul(2))?
            }
            0xe0..=0xff => never("a negative integer"),
        })
    }

    fn str(&mut self, len: u64, shortest: bool, at: usize) -> Result<Item<'a>, String> {
        let s = self.take(len)?;
        Ok(Item {
            kind: Kind::Str(s),
            shortest,
            never_written: std::str::from_utf8(s)
                .is_err()
                .then(|| format!("the string at byte {at} is not UTF-8")),
        })
    }

    /// A container header: `items` values follow, each at least one byte, so a count the
    /// rest of the input cannot hold is cut short here rather than walked.
    fn container(&self, kind: Kind<'a>, shortest: bool, items: u64) -> Result<Item<'a>, String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if items > left {
            return Err(format!(
                "cut short: a container at byte {} announces {items} items, {left} bytes remain",
                self.pos
            ));
        }
        Ok(Item {
            kind,
            shortest,
            never_written: None,
        })
    }
}

/// The first length a header of `width` bytes is needed for (`2^(8·width)`).
fn limit(width: u64) -> u64 {
    1u64 << (8 * width)
}

/// The first count an array16/map16 (`width` 2) or array32/map32 (`width` 4) header is
/// needed for: 16 (past fixarray/fixmap), or 65536.
fn limit_fix(width: u64) -> u64 {
    if width == 2 { 16 } else { limit(2) }
}

/// A MessagePack value read for comparison, borrowing its bytes.
#[derive(Debug)]
enum Value<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Other,
}

/// Whether `input`, which the typed reader accepted, holds the same values as its
/// canonical encoding `canonical`, differing only in layout: map entries in another
/// order, an entry whose canonical value is nil left out, or a map written as an array
/// of its values in order. Anything else (a bin where a str belongs, an array where a
/// bin belongs, a map where a bare enum string belongs, …) is a value of the wrong type.
pub(super) fn layout_only(input: &[u8], canonical: &[u8]) -> bool {
    // Both are single values of a type the reader knows, so nesting is shallow here.
    match (parse(input), parse(canonical)) {
        (Some(a), Some(b)) => same_values(&a, &b),
        _ => false,
    }
}

fn parse(bytes: &[u8]) -> Option<Value<'_>> {
    let mut r = Reader { bytes, pos: 0 };
    let v = value(&mut r, 0)?;
    (r.pos == bytes.len()).then_some(v)
}

fn value<'a>(r: &mut Reader<'a>, depth: usize) -> Option<Value<'a>> {
    // Only reached for inputs the typed reader accepted; the bound is a guard.
    if depth > 64 {
        return None;
    }
    let start = r.pos;
    let marker = *r.bytes.get(start)?;
    let item = r.item().ok()?;
    Some(match item.kind {
        Kind::Str(s) => Value::Str(s),
        Kind::Array(n) => Value::Array(
            (0..n)
                .map(|_| value(r, depth + 1))
                .collect::<Option<Vec<_>>>()?,
        ),
        Kind::Map(n) => Value::Map(
            (0..n)
                .map(|_| Some((value(r, depth + 1)?, value(r, depth + 1)?)))
                .collect::<Option<Vec<_>>>()?,
        ),
        Kind::Scalar => match marker {
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0x00..=0x7f => Value::Uint(u64::from(marker)),
            0xcc..=0xcf => {
                let b = &r.bytes[start + 1..r.pos];
                Value::Uint(b.iter().fold(0, |v, x| (v << 8) | u64::from(*x)))
            }
            0xc4..=0xc6 => {
                let header = 1 + (1usize << (marker - 0xc4));
                Value::Bin(&r.bytes[start + header..r.pos])
            }
            _ => Value::Other,
        },
    })
}

fn same_values(input: &Value<'_>, canonical: &Value<'_>) -> bool {
    match (input, canonical) {
        (Value::Map(i), Value::Map(c)) => {
            i.iter().all(|(k, v)| {
                c.iter()
                    .find(|(ck, _)| same_key(k, ck))
                    .is_some_and(|(_, cv)| same_values(v, cv))
            }) && c
                .iter()
                .all(|(ck, cv)| matches!(cv, Value::Nil) || i.iter().any(|(k, _)| same_key(k, ck)))
        }
        (Value::Array(i), Value::Map(c)) => {
            i.len() == c.len() && i.iter().zip(c).all(|(v, (_, cv))| same_values(v, cv))
        }
        (Value::Array(i), Value::Array(c)) => {
            i.len() == c.len() && i.iter().zip(c).all(|(v, cv)| same_values(v, cv))
        }
        (Value::Nil, Value::Nil) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Uint(a), Value::Uint(b)) => a == b,
        (Value::Str(a), Value::Str(b)) | (Value::Bin(a), Value::Bin(b)) => a == b,
        _ => false,
    }
}

fn same_key(a: &Value<'_>, b: &Value<'_>) -> bool {
    matches!((a, b), (Value::Str(a), Value::Str(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(hex: &str) -> Result<(), Issue> {
        check(&hex::decode(hex.replace(' ', "")).unwrap())
    }

    #[test]
    fn shortest_forms_pass_and_longer_headers_do_not() {
        let padded = |header: &str, body: &str, n: usize| format!("{header}{}", body.repeat(n));
        for ok in [
            "00".to_string(),
            "7f".into(),
            "cc80".into(),
            "cd0100".into(),
            "ce00010000".into(),
            "cf0000000100000000".into(),
            "a0".into(),
            "c400".into(),
            "80".into(),
            "90".into(),
            "c0".into(),
            padded("d920", "61", 32),
            padded("da0100", "61", 256),
            padded("c50100", "00", 256),
            padded("dc0010", "c0", 16),
            format!(
                "de0010{}",
                (0..16)
                    .map(|i| format!("a1{:02x}c0", 0x41 + i))
                    .collect::<String>()
            ),
        ] {
            assert_eq!(issue(&ok), Ok(()), "{ok}");
        }
        for long in [
            "cc7f",
            "cd00ff",
            "ce0000ffff",
            "cf00000000ffffffff",
            "d90161",
            "c50001ff",
            "dc0001c0",
            "de0001a161c0",
        ] {
            assert_eq!(issue(long), Err(Issue::NotShortest), "{long}");
        }
    }

    #[test]
    fn ranks_are_incomplete_trailing_malformed_not_shortest() {
        assert!(matches!(issue("92 c0"), Err(Issue::Incomplete(_))));
        assert!(matches!(issue("c1"), Err(Issue::Incomplete(_))));
        assert!(matches!(issue("dd ffffffff c0"), Err(Issue::Incomplete(_))));
        assert_eq!(issue("c0 c0"), Err(Issue::Trailing(1)));
        assert_eq!(issue("cd0001 c0"), Err(Issue::Trailing(1)));
        assert!(matches!(issue("81 01 c0"), Err(Issue::Malformed(_))));
        assert!(matches!(
            issue("82 a161 c0 a161 c0"),
            Err(Issue::Malformed(_))
        ));
        assert!(matches!(issue("ff"), Err(Issue::Malformed(_))));
        assert!(matches!(
            issue("cb 0000000000000000"),
            Err(Issue::Malformed(_))
        ));
        assert!(matches!(issue("a2 c328"), Err(Issue::Malformed(_))));
        // A malformed key outranks a long header elsewhere.
        assert!(matches!(
            issue("82 cd0001 c0 a161 c0"),
            Err(Issue::Malformed(_))
        ));
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        let mut deep = vec![0x91; 1_000_000];
        deep.push(0xc0);
        assert_eq!(check(&deep), Ok(()));
    }
}
