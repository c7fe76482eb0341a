//! What the fault and attack tests saw, for RELIABILITY.md: each observation a JSON line
//! appended to the file `deploy/reliability.sh` names.

use std::io::Write;

/// Environment variable naming a JSON-lines file the tests append their observations
/// to (`deploy/reliability.sh` sets it and renders RELIABILITY.md).
pub const OBSERVATIONS_ENV: &str = "GEARMQ_RELIABILITY_OUT";

/// Appends one observation (`{"test", "fault", "observed"}`) to the file named by
/// [`OBSERVATIONS_ENV`], if set; always prints it, so a plain test run shows it too.
pub fn observe(test: &str, fault: &str, observed: serde_json::Value) {
    let line = serde_json::json!({"test": test, "fault": fault, "observed": observed});
    println!("observation: {line}");
    if let Ok(path) = std::env::var(OBSERVATIONS_ENV) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match f {
            // One write of one line: appends of a few hundred bytes do not interleave.
            Ok(mut f) => {
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
            Err(e) => eprintln!("cannot append to {path}: {e}"),
        }
    }
}
