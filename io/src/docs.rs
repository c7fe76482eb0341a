//! Man pages and shell completions written from a program's clap definition, so what
//! the .deb packages ship never drifts from `--help` (`gearmq generate-docs DIR`,
//! `gearmq-agent --generate-docs DIR`).

use crate::files::FileError;
use clap_complete::Shell;
use std::path::Path;

/// Writes `DIR/man/` (one page per visible subcommand of `cmd`) and `DIR/completions/`
/// (bash, zsh and fish, for the binary named `bin`).
pub fn write_docs(cmd: clap::Command, bin: &str, dir: &Path) -> Result<(), FileError> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|source| FileError::Io {
            action: "create",
            path: d.clone(),
            source,
        })?;
    }
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|source| FileError::Io {
        action: "write man pages to",
        path: man.clone(),
        source,
    })?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, bin, &completions).map_err(|source| {
            FileError::Io {
                action: "write completions to",
                path: completions.clone(),
                source,
            }
        })?;
    }
    Ok(())
}
