//! Unit file text from a [`UnitSpec`]: a pure function, so what systemd will run can be
//! checked without systemd.
//!
//! systemd's unit syntax gives meaning to `%` (specifiers), `$` (variables in
//! `ExecStart=`), `\` and `"` (escapes and quoting), and a trailing `\` (line
//! continuation). Every value is escaped for the setting it goes into, so the program
//! receives exactly the bytes that were asked for. Control characters never get here:
//! [`UnitSpec::validate`] refuses them.

use gearmq_schemas::units::{FieldError, UnitSpec};
use std::path::Path;

/// The first line of every unit file gearmq writes; a file without it is not gearmq's.
pub fn marker_line(unit: &str) -> String {
    format!("# gearmq-managed unit={unit}; written by gearmq-agent, edits are overwritten")
}

/// Who a unit's program runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// As the user manager's own user (user bus): no `User=` line applies.
    ManagerUser,
    /// `DynamicUser=yes`: a fresh unprivileged user (system bus default).
    DynamicUser,
    /// `User=<name>` (system bus, `systemd.run_as`).
    User(String),
    /// No user line: root (system bus with `systemd.allow_root`).
    Root,
}

/// Everything besides the spec that goes into a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings<'a> {
    /// Who the program runs as.
    pub run_as: RunAs,
    /// The file the program's output is appended to (absolute); `None`: the journal.
    pub output_file: Option<&'a Path>,
    /// The target that pulls the unit in at boot when it is enabled:
    /// `multi-user.target` on the system bus, `default.target` on a user manager.
    pub wanted_by: &'a str,
}

/// The unit file for `spec`. Fails (naming the field) only for values the unit syntax
/// cannot carry unchanged; `spec` must already be [`UnitSpec::validate`]d.
pub fn render_unit(spec: &UnitSpec, settings: &RenderSettings<'_>) -> Result<String, FieldError> {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(marker_line(&spec.unit));
    line("[Unit]".into());
    let description = match &spec.description {
        Some(d) => plain_value("description", d)?,
        None => format!("gearmq unit {}", spec.unit),
    };
    line(format!("Description={description}"));
    line(String::new());
    line("[Service]".into());
    // exec: the start job fails when the program cannot be executed, instead of
    // reporting "started" for a unit that never ran.
    line("Type=exec".into());
    let mut exec = quote_exec_word(&spec.exec);
    for a in &spec.args {
        exec.push(' ');
        exec.push_str(&quote_exec_word(a));
    }
    line(format!("ExecStart={exec}"));
    // `reload` sends SIGHUP to the main process, the usual "reread your config".
    line("ExecReload=/bin/kill -HUP $MAINPID".into());
    for (k, v) in &spec.env {
        line(format!("Environment={}", quote_environment(k, v)));
    }
    if let Some(w) = &spec.workdir {
        line(format!("WorkingDirectory={}", plain_value("workdir", w)?));
    }
    line(format!("Restart={}", spec.restart.as_systemd()));
    if let Some(m) = spec.memory_max {
        line(format!("MemoryMax={m}"));
    }
    if let Some(q) = spec.cpu_quota {
        line(format!("CPUQuota={q}%"));
    }
    match settings.output_file {
        Some(f) => {
            let output = f.to_string_lossy();
            line(format!(
                "StandardOutput=append:{}",
                plain_value("output file", &output)?
            ));
        }
        None => line("StandardOutput=journal".into()),
    }
    line("StandardError=inherit".into());
    match &settings.run_as {
        RunAs::ManagerUser | RunAs::Root => {}
        RunAs::DynamicUser => line("DynamicUser=yes".into()),
        RunAs::User(u) => line(format!("User={u}")),
    }
    line(String::new());
    line("[Install]".into());
    line(format!("WantedBy={}", settings.wanted_by));
    Ok(out)
}

/// One `ExecStart=` word: double-quoted, with `\`, `"`, `%` and `$` escaped.
pub fn quote_exec_word(word: &str) -> String {
    let mut q = String::with_capacity(word.len() + 2);
    q.push('"');
    for c in word.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '%' => q.push_str("%%"),
            '$' => q.push_str("$$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// One `Environment=` assignment: `"K=V"` with `\`, `"` and `%` escaped (systemd does
/// not expand `$` there, so it stays as it is).
pub fn quote_environment(key: &str, value: &str) -> String {
    let mut q = String::with_capacity(key.len() + value.len() + 3);
    q.push('"');
    q.push_str(key);
    q.push('=');
    for c in value.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '%' => q.push_str("%%"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A setting taken verbatim up to the end of the line (`Description=`,
/// `WorkingDirectory=`): only specifiers are escaped. Such values cannot carry a
/// trailing `\` (line continuation) or surrounding blanks (trimmed by systemd).
fn plain_value(field: &str, v: &str) -> Result<String, FieldError> {
    if v.ends_with('\\') {
        return Err(FieldError {
            field: field.into(),
            reason: "must not end with a backslash".into(),
        });
    }
    if v.trim() != v {
        return Err(FieldError {
            field: field.into(),
            reason: "must not start or end with blanks".into(),
        });
    }
    Ok(v.replace('%', "%%"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::units::RestartPolicy;

    fn settings(run_as: RunAs) -> RenderSettings<'static> {
        RenderSettings {
            run_as,
            output_file: Some(Path::new("/var/lib/gearmq/web1/logs/web.log")),
            wanted_by: "multi-user.target",
        }
    }

    #[test]
    fn exec_words_are_quoted_and_escaped() {
        assert_eq!(quote_exec_word("/bin/echo"), "\"/bin/echo\"");
        assert_eq!(quote_exec_word("a b"), "\"a b\"");
        assert_eq!(quote_exec_word("100%"), "\"100%%\"");
        assert_eq!(quote_exec_word("$HOME"), "\"$$HOME\"");
        assert_eq!(quote_exec_word("${X}"), "\"$${X}\"");
        assert_eq!(quote_exec_word("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quote_exec_word("back\\slash"), "\"back\\\\slash\"");
        assert_eq!(quote_exec_word(";"), "\";\"");
        assert_eq!(quote_exec_word(""), "\"\"");
    }

    #[test]
    fn environment_escapes_percent_quotes_and_backslashes_not_dollars() {
        assert_eq!(
            quote_environment("K", "a%b \"c\" $HOME \\"),
            "\"K=a%%b \\\"c\\\" $HOME \\\\\""
        );
    }

    #[test]
    fn system_bus_unit_runs_as_a_dynamic_user_by_default() {
        let mut spec = UnitSpec::new("web", "/usr/bin/python3");
        spec.args = vec!["-m".into(), "http.server".into(), "8080".into()];
        spec.env.insert("GREETING".into(), "50% off".into());
        spec.workdir = Some("/srv/web".into());
        spec.restart = RestartPolicy::OnFailure;
        spec.memory_max = Some(512 * 1024 * 1024);
        spec.cpu_quota = Some(50);
        spec.description = Some("Web 100%".into());
        let text = render_unit(&spec, &settings(RunAs::DynamicUser)).unwrap();
        assert_eq!(
            text,
            "# gearmq-managed unit=web; written by gearmq-agent, edits are overwritten\n\
             [Unit]\n\
             Description=Web 100%%\n\
             \n\
             [Service]\n\
             Type=exec\n\
             ExecStart=\"/usr/bin/python3\" \"-m\" \"http.server\" \"8080\"\n\
             ExecReload=/bin/kill -HUP $MAINPID\n\
             Environment=\"GREETING=50%% off\"\n\
             WorkingDirectory=/srv/web\n\
             Restart=on-failure\n\
             MemoryMax=536870912\n\
             CPUQuota=50%\n\
             StandardOutput=append:/var/lib/gearmq/web1/logs/web.log\n\
             StandardError=inherit\n\
             DynamicUser=yes\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        );
    }

    #[test]
    fn journal_mode_sends_output_to_the_journal() {
        let spec = UnitSpec::new("web", "/bin/true");
        let mut s = settings(RunAs::DynamicUser);
        s.output_file = None;
        let t = render_unit(&spec, &s).unwrap();
        assert!(
            t.contains("\nStandardOutput=journal\nStandardError=inherit\n"),
            "{t}"
        );
        assert!(!t.contains("append:"), "{t}");
    }

    #[test]
    fn user_lines_follow_the_run_as_setting() {
        let spec = UnitSpec::new("web", "/bin/true");
        let user = render_unit(&spec, &settings(RunAs::User("svc".into()))).unwrap();
        assert!(user.contains("\nUser=svc\n"), "{user}");
        assert!(!user.contains("DynamicUser"), "{user}");
        for run_as in [RunAs::Root, RunAs::ManagerUser] {
            let t = render_unit(&spec, &settings(run_as)).unwrap();
            assert!(!t.contains("User="), "{t}");
        }
        let t = render_unit(&spec, &settings(RunAs::ManagerUser)).unwrap();
        assert!(t.contains("Description=gearmq unit web\n"), "{t}");
        assert!(t.starts_with(&marker_line("web")), "{t}");
    }

    #[test]
    fn trailing_backslash_and_blanks_are_refused_by_field() {
        let mut spec = UnitSpec::new("web", "/bin/true");
        spec.description = Some("ends in \\".into());
        let e = render_unit(&spec, &settings(RunAs::DynamicUser)).unwrap_err();
        assert_eq!(e.field, "description");
        let mut spec = UnitSpec::new("web", "/bin/true");
        spec.workdir = Some("/srv/x ".into());
        let e = render_unit(&spec, &settings(RunAs::DynamicUser)).unwrap_err();
        assert_eq!(e.field, "workdir");
        // In ExecStart a trailing backslash is inside quotes and escaped.
        let mut spec = UnitSpec::new("web", "/bin/echo");
        spec.args = vec!["a\\".into()];
        let t = render_unit(&spec, &settings(RunAs::DynamicUser)).unwrap();
        assert!(t.contains("ExecStart=\"/bin/echo\" \"a\\\\\"\n"), "{t}");
    }
}
