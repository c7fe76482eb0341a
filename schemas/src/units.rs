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

/// The suffix of every unit name gearmq acts on in systemd.
pub const SERVICE_SUFFIX: &str = ".service";
/// The prefix of the systemd name of every unit gearmq creates.
pub const MANAGED_PREFIX: &str = "gearmq-";
/// Longest systemd unit name (systemd's own limit).
pub const MAX_SYSTEMD_UNIT_NAME: usize = 255;

/// Checks the name of a unit gearmq creates: `[a-z0-9][a-z0-9_.-]{0,62}` with no `..`,
/// not ending in `.service` (such a name is an existing unit's, [`UnitName`]). The unit
/// file is `gearmq-<name>.service`, so a name is never a path.
pub fn check_unit_name(unit: &str) -> Result<(), FieldError> {
    let b = unit.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
        && !unit.contains("..")
        && !unit.ends_with(SERVICE_SUFFIX);
    if ok {
        Ok(())
    } else {
        Err(field_err(
            "unit",
            format!(
                "{unit:?} is not a unit name: 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit, no '..', not ending in '.service'"
            ),
        ))
    }
}

/// Checks the full systemd name of an existing unit of the host (one gearmq did not
/// create): 1 to 255 bytes of `A-Z a-z 0-9 : _ . @ -`, ending in `.service` with a
/// non-empty stem that starts with a letter or digit, at most one `@`, and not
/// `gearmq-…` (gearmq's own units are named without prefix and suffix). Never a path.
pub fn check_existing_unit_name(unit: &str) -> Result<(), FieldError> {
    let stem = unit.strip_suffix(SERVICE_SUFFIX).unwrap_or("");
    let b = stem.as_bytes();
    let ok = !b.is_empty()
        && unit.len() <= MAX_SYSTEMD_UNIT_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'_' | b'.' | b'@' | b'-'))
        && b.iter().filter(|c| **c == b'@').count() <= 1
        && !unit.contains("..")
        && !unit.starts_with(MANAGED_PREFIX);
    if ok {
        Ok(())
    } else {
        Err(field_err(
            "unit",
            format!(
                "{unit:?} is not an existing unit's name: up to 255 characters of A-Z, a-z, 0-9, ':', '_', '.', '@', '-', ending in '.service', starting with a letter or digit, at most one '@', not 'gearmq-…' (gearmq's own units are named without prefix and suffix)"
            ),
        ))
    }
}

/// What a request's unit name denotes: one of gearmq's own units by its short name
/// (`web` → `gearmq-web.service`), or an existing unit of the host by its full
/// systemd name (`nginx.service`), which only a host's `[[existing]]` allowlist
/// opens to gearmq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitName<'a> {
    /// A unit gearmq creates.
    Managed(&'a str),
    /// An existing unit of the host.
    Existing(&'a str),
}

impl<'a> UnitName<'a> {
    /// Parses `unit`: a name ending in `.service` is an existing unit's full name, any
    /// other a gearmq unit's; each checked by its own rule.
    pub fn parse(unit: &'a str) -> Result<Self, FieldError> {
        if unit.ends_with(SERVICE_SUFFIX) {
            check_existing_unit_name(unit).map(|()| UnitName::Existing(unit))
        } else {
            check_unit_name(unit).map(|()| UnitName::Managed(unit))
        }
    }

    /// The unit's name in systemd.
    pub fn systemd_name(self) -> String {
        match self {
            UnitName::Managed(u) => unit_file_name(u),
            UnitName::Existing(u) => u.to_string(),
        }
    }
}

/// The systemd unit file name for a gearmq unit name.
pub fn unit_file_name(unit: &str) -> String {
    format!("{MANAGED_PREFIX}{unit}{SERVICE_SUFFIX}")
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

/// Environment variables that make a program load or run code other than the program
/// named in `exec`: exact names. With [`LOADER_ENV_PREFIXES`] this is the list an agent
/// refuses in a unit's `env` unless its `systemd.allowed_loader_env` names the variable
/// ([`is_loader_env`]). It covers the C library and the common interpreters; a program
/// with a plugin variable of its own is not covered (and `PATH`, which programs need,
/// is left alone: `exec` is an absolute path).
pub const LOADER_ENV: &[&str] = &[
    // glibc: iconv modules are shared objects; tunables steer the dynamic loader.
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    // OpenSSL: a config file can load engines and providers (shared objects).
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    // bash: a file sourced by every non-interactive shell; options from the
    // environment (xtrace), and the PS4 prompt whose expansions xtrace runs. (`ENV` is
    // read by interactive shells only, and is a common application variable.)
    "BASH_ENV",
    "SHELLOPTS",
    "PS4",
    // Python: module search path, installation root, start-up file, user site (.pth
    // files there run code).
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    // Perl: module path, `-M` options, debugger.
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "PERL5DB",
    // Ruby: library path, `-r` options.
    "RUBYLIB",
    "RUBYOPT",
    // Node.js: `--require`/`--import` options, module path.
    "NODE_OPTIONS",
    "NODE_PATH",
    // Java: `-javaagent:`/`-agentpath:` options, class path.
    "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
    "CLASSPATH",
    // PHP: ini files (`auto_prepend_file`, extensions).
    "PHPRC",
    "PHP_INI_SCAN_DIR",
];

/// Prefixes of loader variables: every variable starting with one is one. `LD_` is
/// the dynamic loader's family (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`,
/// `LD_DEBUG_OUTPUT`, `LD_PROFILE`, …); Lua's come with version suffixes
/// (`LUA_INIT_5_4`).
pub const LOADER_ENV_PREFIXES: &[&str] = &["LD_", "LUA_INIT", "LUA_PATH", "LUA_CPATH"];

/// Whether environment variable `key` changes what code a program loads (see
/// [`LOADER_ENV`]). Names are case-sensitive, as the loader and interpreters read them.
pub fn is_loader_env(key: &str) -> bool {
    LOADER_ENV.contains(&key) || LOADER_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
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
        assert!(check_unit_name("nginx.service").is_err());
    }

    #[test]
    fn existing_unit_names_are_full_systemd_names_and_never_paths() {
        for ok in [
            "nginx.service",
            "postgresql@15-main.service",
            "getty@tty1.service",
            "systemd-journald.service",
            "A:b_c.d-e.service",
        ] {
            assert_eq!(UnitName::parse(ok).unwrap(), UnitName::Existing(ok), "{ok}");
            assert_eq!(UnitName::parse(ok).unwrap().systemd_name(), ok);
        }
        for bad in [
            ".service",
            "-x.service",
            "../x.service",
            "a/b.service",
            "a..b.service",
            "a@b@c.service",
            "gearmq-web.service",
            "a b.service",
            "a\\x2d.service",
            "nginx.socket",
            &format!("{}.service", "x".repeat(248)),
        ] {
            let e = check_existing_unit_name(bad).unwrap_err();
            assert_eq!(e.field, "unit", "{bad}");
        }
        assert_eq!(UnitName::parse("web").unwrap(), UnitName::Managed("web"));
        assert_eq!(
            UnitName::parse("web").unwrap().systemd_name(),
            "gearmq-web.service"
        );
        // Only services are existing units; anything else is a gearmq unit's name.
        assert_eq!(
            UnitName::parse("a.socket").unwrap(),
            UnitName::Managed("a.socket")
        );
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

    #[test]
    fn loader_variables_are_recognised_by_name_and_family() {
        for k in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "LD_DEBUG_OUTPUT",
            "LD_PROFILE",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "PYTHONPATH",
            "PERL5OPT",
            "NODE_OPTIONS",
            "JAVA_TOOL_OPTIONS",
            "BASH_ENV",
            "LUA_INIT_5_4",
            "OPENSSL_CONF",
        ] {
            assert!(is_loader_env(k), "{k}");
        }
        for k in [
            "PATH",
            "HOME",
            "LANG",
            "RUST_LOG",
            "ld_preload",
            "OLD_PRELOAD",
            "XLD_LIBRARY_PATH",
            "PYTHONPATHX",
            "LDFLAGS",
        ] {
            assert!(!is_loader_env(k), "{k}");
        }
        // Every listed name is itself a valid variable name a spec could carry.
        for k in LOADER_ENV {
            let mut s = UnitSpec::new("web", "/bin/echo");
            s.env.insert((*k).to_string(), "x".into());
            assert!(s.validate().is_ok(), "{k}");
        }
    }
}
