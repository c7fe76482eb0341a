//! Unit specs: what an operator may ask a host to install, and the rules that keep it
//! from being anything else (a path, a shell string, a second unit, a different program).
//!
//! Validation lives here, beside the wire types, so the CLI refuses bad input before
//! signing and every agent refuses it again on arrival (status 4, naming the field).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most arguments a program may be given.
pub const MAX_ARGS: usize = 256;
/// Most environment variables.
pub const MAX_ENV: usize = 128;
/// Longest single argument, path or value, in bytes.
pub const MAX_FIELD: usize = 4096;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 256;

/// An invalid field: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    /// The field, as the CLI and the spec name it (`unit`, `exec`, `args[2]`, `env.PATH`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a unit name: `[a-z0-9][a-z0-9_.-]{0,62}` with no `..`. The unit file is
/// `gearmq-<name>.service`, so a name is never a path.
pub fn check_unit_name(unit: &str) -> Result<(), FieldError> {
    let b = unit.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
        && !unit.contains("..");
    if ok {
        Ok(())
    } else {
        Err(field_err(
            "unit",
            format!(
                "{unit:?} is not a unit name: 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit, no '..'"
            ),
        ))
    }
}

/// The systemd unit file name for a gearmq unit name.
pub fn unit_file_name(unit: &str) -> String {
    format!("gearmq-{unit}.service")
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), FieldError> {
    if v.len() > max {
        return Err(field_err(field, format!("over {max} bytes")));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(field_err(
            field,
            format!("contains the control character {:?}", c),
        ));
    }
    Ok(())
}

fn check_abs_path(field: &str, v: &str) -> Result<(), FieldError> {
    check_text(field, v, MAX_FIELD)?;
    if !v.starts_with('/') {
        return Err(field_err(field, format!("{v:?} is not an absolute path")));
    }
    if v.split('/').any(|c| c == "..") {
        return Err(field_err(field, format!("{v:?} contains '..'")));
    }
    Ok(())
}

/// When systemd restarts the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When it exits unsuccessfully.
    OnFailure,
    /// Always.
    Always,
}

impl RestartPolicy {
    /// The value of systemd's `Restart=`.
    pub fn as_systemd(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// A service to install: argv, never a shell string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// The unit name (see [`check_unit_name`]).
    pub unit: String,
    /// Absolute path of the program.
    pub exec: String,
    /// Its arguments, passed exactly as given.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute).
    pub workdir: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// `MemoryMax=` in bytes.
    pub memory_max: Option<u64>,
    /// `CPUQuota=` in percent of one CPU (1–10000).
    pub cpu_quota: Option<u32>,
    /// `Description=`.
    pub description: Option<String>,
}

impl UnitSpec {
    /// A spec running `exec` with no arguments.
    pub fn new(unit: impl Into<String>, exec: impl Into<String>) -> Self {
        UnitSpec {
            unit: unit.into(),
            exec: exec.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            restart: RestartPolicy::No,
            memory_max: None,
            cpu_quota: None,
            description: None,
        }
    }

    /// Checks every field; the first invalid one is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_unit_name(&self.unit)?;
        check_abs_path("exec", &self.exec)?;
        if self.args.len() > MAX_ARGS {
            return Err(field_err("args", format!("more than {MAX_ARGS} arguments")));
        }
        for (i, a) in self.args.iter().enumerate() {
            check_text(&format!("args[{i}]"), a, MAX_FIELD)?;
        }
        if self.env.len() > MAX_ENV {
            return Err(field_err("env", format!("more than {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            let b = k.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 128
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
            if !ok {
                return Err(field_err(
                    "env",
                    format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            check_text(&format!("env.{k}"), v, MAX_FIELD)?;
        }
        if let Some(w) = &self.workdir {
            check_abs_path("workdir", w)?;
        }
        if let Some(d) = &self.description {
            check_text("description", d, MAX_DESCRIPTION)?;
        }
        if self.cpu_quota.is_some_and(|q| !(1..=10_000).contains(&q)) {
            return Err(field_err("cpu_quota", "must be 1% to 10000%"));
        }
        if self.memory_max.is_some_and(|m| m < 1024 * 1024) {
            return Err(field_err("memory_max", "must be at least 1M"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_never_paths() {
        for ok in ["web", "a.b", "my_app-2", "0"] {
            assert!(check_unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc/x",
            "a/b",
            "a..b",
            ".x",
            "A",
            "a b",
            &"x".repeat(64),
        ] {
            let e = check_unit_name(bad).unwrap_err();
            assert_eq!(e.field, "unit");
        }
    }

    #[test]
    fn spec_fields_are_checked_and_named() {
        let ok = UnitSpec::new("web", "/bin/echo");
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.exec = "bin/echo".into();
        assert_eq!(s.validate().unwrap_err().field, "exec");
        let mut s = ok.clone();
        s.args = vec!["fine".into(), "two\nlines".into()];
        assert_eq!(s.validate().unwrap_err().field, "args[1]");
        let mut s = ok.clone();
        s.args = vec!["nul\0".into()];
        assert_eq!(s.validate().unwrap_err().field, "args[0]");
        let mut s = ok.clone();
        s.env.insert("1BAD".into(), "x".into());
        assert_eq!(s.validate().unwrap_err().field, "env");
        let mut s = ok.clone();
        s.workdir = Some("/srv/../etc".into());
        assert_eq!(s.validate().unwrap_err().field, "workdir");
        let mut s = ok.clone();
        s.cpu_quota = Some(0);
        assert_eq!(s.validate().unwrap_err().field, "cpu_quota");
        // % and $ are data, not errors: the agent escapes them.
        let mut s = ok;
        s.args = vec!["100%".into(), "$HOME".into(), "\"q\" \\".into()];
        assert!(s.validate().is_ok());
    }
}
