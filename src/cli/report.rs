//! `smoothcert report`.
use anyhow::{Context, Result};
use smoothcert::pipeline::report;
use std::path::PathBuf;

/// Certified accuracy vs radius, ACR, abstention and timing of certify TSVs.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1.0")]
    radii: Vec<f64>,
    #[arg(long, default_value = "report")]
    out_dir: PathBuf,
}

impl ReportArgs {
    pub fn run(self) -> Result<()> {
        let opts = report::ReportOptions {
            radii: self.radii,
            out_dir: self.out_dir,
        };
        let md = report::run_report(&self.files, &opts).context("report failed")?;
        println!("{md}");
        Ok(())
    }
}
