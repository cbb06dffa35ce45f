//! `bcl completions SHELL` and `bcl man`: shell completions and man pages generated from the
//! clap definitions (as ripgrep does), so that neither can drift from the flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// `bcl completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `bcl man`.
#[derive(Args)]
pub struct ManArgs {
    /// Writes one page per command (`bcl.1`, `bcl-train-new.1`, `bcl-gallery-build.1`, ...)
    /// into this directory instead of printing `bcl.1`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Prints the completion script of `a.shell` for `cmd`.
pub fn completions(mut cmd: clap::Command, a: &CompletionsArgs) {
    clap_complete::generate(a.shell, &mut cmd, "bcl", &mut std::io::stdout());
}

/// Prints the man page of `cmd`, or writes one per command into `a.out`.
pub fn man(cmd: clap::Command, a: &ManArgs) -> Result<()> {
    match &a.out {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page"),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("{}: writing the man pages", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
    }
}
