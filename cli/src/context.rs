//! What every command gets from the global options: the config file, passed down (no
//! process-wide state); and connecting, with a command's delegation token.

use anyhow::{Context as _, Result, bail};
use gearmq_orchestrator::{Orchestrator, OrchestratorConfig, Selection};
use std::path::{Path, PathBuf};

/// The global options of one `gearmq` run.
#[derive(Clone)]
pub struct Context {
    /// `--config`: the orchestrator config file.
    pub config: PathBuf,
}

impl Context {
    /// The context of a run with config file `config`.
    pub fn new(config: PathBuf) -> Context {
        Context { config }
    }

    /// Loads the orchestrator config.
    pub fn load_config(&self) -> Result<OrchestratorConfig> {
        Ok(OrchestratorConfig::load(&self.config)?)
    }

    /// Connects to the broker as the configured identity; with a token file
    /// (`--token`), every request carries the token and may go only to the token's
    /// audience.
    pub async fn connect(
        &self,
        config: &OrchestratorConfig,
        selection: &Selection,
        token_file: Option<&Path>,
    ) -> Result<Orchestrator> {
        let token = match token_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?;
                gearmq_schemas::token::peek(&bytes)
                    .with_context(|| format!("{} is not a delegation token", path.display()))?;
                Some(bytes)
            }
            None => None,
        };
        let mut orch = Orchestrator::connect(config).await?;
        match &token {
            Some(token) => {
                let (_, header) = gearmq_schemas::token::peek(token)?;
                if *selection != Selection::Hosts(vec![header.audience.clone()]) {
                    bail!(
                        "the token is for host {} only: name exactly that host",
                        header.audience
                    );
                }
                orch.set_token(token.clone());
            }
            None if orch.role() == gearmq_schemas::Role::Host => bail!(
                "{} signs as host {}: a host may only make delegated requests, with --token FILE \
                 (an operator mints one with `gearmq token mint`)",
                config.credential_file.display(),
                orch.name()
            ),
            None => {}
        }
        if *selection == Selection::All && orch.inventory().is_empty() {
            bail!(
                "the inventory {} holds no host credentials",
                config.inventory_dir.display()
            );
        }
        Ok(orch)
    }
}
