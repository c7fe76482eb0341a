//! `gearmq generate-docs DIR` (hidden): the man pages and shell completions the .deb
//! package ships, generated from the clap definitions so they never drift from `--help`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Where to write the man pages and completions.
#[derive(Args)]
pub struct GenerateDocsArgs {
    /// Output directory: `man/` gets one page per command (gearmq.1,
    /// gearmq-broker-provision.1, …), `completions/` one file per shell.
    dir: PathBuf,
}

/// Writes `DIR/man/*.1` and `DIR/completions/{gearmq.bash,_gearmq,gearmq.fish}`.
pub fn generate(args: GenerateDocsArgs) -> Result<()> {
    Ok(gearmq_io::docs::write_docs(
        crate::cli_command(),
        "gearmq",
        &args.dir,
    )?)
}
