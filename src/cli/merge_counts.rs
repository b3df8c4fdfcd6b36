//! `smoothcert merge-counts`.
use anyhow::{Context, Result};
use smoothcert::pipeline::counts;
use std::path::PathBuf;

/// Join count shards of one run into one file.
#[derive(clap::Args, Debug)]
pub struct MergeCountsArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

impl MergeCountsArgs {
    pub fn run(self) -> Result<()> {
        let merged = counts::merge_counts(&self.files, &self.out).context("merge-counts failed")?;
        println!(
            "{}: {} inputs x {} samples from {} file(s)",
            self.out.display(),
            merged.len(),
            merged.meta.n,
            self.files.len()
        );
        Ok(())
    }
}
