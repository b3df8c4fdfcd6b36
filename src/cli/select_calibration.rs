//! `smoothcert select-calibration`.
use anyhow::{Context, Result};
use smoothcert::pipeline::select;
use smoothcert::smoothing::{ConformalScore, RankRule};

/// Choose CALIBRATED's score and Mondrian bins and AUTO's band on selection
/// inputs (held out from the surrogate's training, disjoint from the
/// calibration inputs), cross-fitted in two halves. Records the selection
/// inputs in the bundle; `calibrate` then refuses them.
#[derive(clap::Args, Debug)]
pub struct SelectCalibrationArgs {
    #[command(flatten)]
    inputs: super::args::HeldOutScoringArgs,
    /// Candidate scores.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "p-gap,log-miss,root-miss,probit"
    )]
    scores: Vec<ConformalScore>,
    /// Candidate Mondrian bin edges, ';' between candidates, ',' between
    /// edges; "none" for one quantile over all inputs.
    #[arg(long, default_value = "none;0.99;0.9,0.99")]
    bins: String,
    /// Candidate margin thresholds for the estimate (see `calibrate
    /// --margin-threshold`), ',' between them; "none" for the surrogate's
    /// p_hat alone.
    #[arg(long, value_delimiter = ',', default_value = "none,2,2.5,3")]
    margin_thresholds: Vec<super::args::MarginThreshold>,
    /// Radii at which certified accuracy is compared with Monte Carlo's.
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75")]
    radii: Vec<f64>,
    /// Candidate lower ends of AUTO's band (its upper end is 0.5).
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2,0.3,0.4,0.45")]
    band_lows: Vec<f64>,
    /// The most certified accuracy AUTO may lose to Monte Carlo at radius 0.
    #[arg(long, default_value_t = 0.005)]
    band_tolerance: f64,
}

impl SelectCalibrationArgs {
    pub fn run(self) -> Result<()> {
        let bin_candidates = self
            .bins
            .split(';')
            .map(|c| {
                let c = c.trim();
                if c == "none" || c.is_empty() {
                    Ok(Vec::new())
                } else {
                    c.split(',')
                        .map(|e| e.trim().parse::<f64>())
                        .collect::<Result<Vec<f64>, _>>()
                        .with_context(|| format!("--bins: {c:?} is not a list of numbers"))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let bundle = self.inputs.bundle.clone();
        let summary = select::select_calibration(&select::SelectOptions {
            base: self
                .inputs
                .options(ConformalScore::default(), RankRule::Marginal, Vec::new())?,
            scores: self.scores,
            bin_candidates,
            margin_thresholds: self.margin_thresholds.iter().map(|t| t.0).collect(),
            radii: self.radii.clone(),
            band_lows: self.band_lows,
            band_tolerance: self.band_tolerance,
        })
        .context("select-calibration failed")?;
        println!(
            "{} selection inputs, cross-fitted in two halves; certified accuracy gap to Monte Carlo at r = {:?}:",
            summary.inputs, self.radii
        );
        for c in &summary.candidates {
            println!(
                "  {:<9} bins {:<14} margin {:<5} overestimates {:>5.1}%  gaps {}{}",
                c.score.as_str(),
                format!("{:?}", c.bin_edges),
                super::args::MarginThreshold(c.margin_threshold).to_string(),
                100.0 * c.overestimation,
                c.accuracy_gap
                    .iter()
                    .map(|g| format!("{:+.1}pp", 100.0 * g))
                    .collect::<Vec<_>>()
                    .join(" "),
                if c.feasible {
                    ""
                } else {
                    "  (a bin too small)"
                }
            );
        }
        println!(
            "chosen: score {}, bins {:?}, margin threshold {}; AUTO band [{}, {}]; written to {}",
            summary.score.as_str(),
            summary.bin_edges,
            super::args::MarginThreshold(summary.margin_threshold),
            summary.band.0,
            summary.band.1,
            bundle.join(select::SUMMARY_FILE).display()
        );
        Ok(())
    }
}
