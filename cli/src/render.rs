//! Output for people (a table and a summary line) and for programs (`--json`).

use gearmq_orchestrator::{CallResult, HostResult, HostStatus};

/// Formats milliseconds for people: `0.8 ms`, `41 ms`, `2.3 s`.
pub fn ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// Prints the result as a table, failures first, then rejections and a summary.
/// `detail` turns a host's ok data into a short text.
pub fn print_human(
    result: &CallResult,
    display: crate::call::Display,
    detail: impl Fn(&HostResult) -> String,
) {
    let mut rows: Vec<&HostResult> = result.results.iter().filter(|r| display.shows(r)).collect();
    rows.sort_by_key(|r| {
        (
            match r.status {
                HostStatus::NoReply => 0,
                HostStatus::Error => 1,
                HostStatus::Ok => 2,
            },
            r.host.clone(),
        )
    });
    let width = rows
        .iter()
        .map(|r| r.host.as_str().len())
        .max()
        .unwrap_or(4)
        .max(4);
    if !rows.is_empty() {
        println!("{:width$}  {:<9} {:>8}  DETAIL", "HOST", "STATUS", "TIME");
    }
    for r in rows {
        let (status, text) = match r.status {
            HostStatus::Ok => ("ok".to_string(), detail(r)),
            HostStatus::Error => (
                r.code.map(|c| c.as_str().to_string()).unwrap_or_default(),
                r.message.clone().unwrap_or_default(),
            ),
            HostStatus::NoReply => (
                "no reply".to_string(),
                r.message.clone().unwrap_or_default(),
            ),
        };
        let time = r
            .elapsed
            .map(|d| ms(d.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        println!(
            "{:width$}  {:<9} {:>8}  {}",
            r.host.as_str(),
            status,
            time,
            text
        );
    }
    print_summary(result);
}

/// Prints a host that did not answer ok, on stderr-free stdout, as one line.
pub fn print_problem(r: &HostResult) {
    let status = match r.status {
        HostStatus::NoReply => "no reply".to_string(),
        _ => r.code.map(|c| c.as_str().to_string()).unwrap_or_default(),
    };
    println!(
        "{}: {}: {}",
        r.host,
        status,
        r.message.clone().unwrap_or_default()
    );
}

/// Prints rows under a header, columns padded to fit.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        width[i] = h.chars().count();
    }
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:w$}  ", c, w = width[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints the rejected-replies line (if any) and the summary line.
pub fn print_summary(result: &CallResult) {
    let s = &result.summary;
    if !s.rejected.is_empty() {
        let parts: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "rejected replies (not counted as results): {}",
            parts.join(", ")
        );
    }
    if s.audit_missing > 0 {
        println!(
            "audit records missing: {} (the audit log could not take them)",
            s.audit_missing
        );
    }
    if s.duplicates > 0 {
        println!("duplicate replies ignored: {}", s.duplicates);
    }
    let mut line = format!("{}/{} ok", s.ok, s.targets);
    if s.failed > 0 {
        line.push_str(&format!(", {} failed", s.failed));
    }
    if s.no_reply > 0 {
        line.push_str(&format!(", {} no reply", s.no_reply));
    }
    println!("{line} in {}", ms(s.elapsed_ms));
}

/// Prints the documented JSON document on one line.
pub fn print_json(result: &CallResult) {
    println!("{}", result.to_json());
}
