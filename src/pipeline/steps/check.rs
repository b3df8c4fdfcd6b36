//! The plan's checks before anything runs: disjoint roles, and a surrogate
//! or calibration already in the bundle that is this plan's.
use super::PipelineOptions;
use crate::data::Split;
use crate::model::Bundle;
use crate::pipeline::{calibrate, InputList, PipelineError};
use crate::smoothing::RankRule;
use std::collections::BTreeSet;

/// Everything that can be known wrong before hours of sampling: the roles'
/// images must not overlap (a tail map, a calibration or an evaluation on
/// images another role used would promise what it cannot), and a surrogate
/// or calibration already in the bundle must be this plan's.
pub(super) fn check_plan(
    opts: &PipelineOptions,
    reaches_calibrate: bool,
) -> Result<(), PipelineError> {
    opts.train.validate("train counts")?;
    opts.calibration.validate("calibration counts")?;
    if let Some(t) = &opts.tail {
        t.validate("tail-map counts")?;
    }
    check_flags(opts)?;
    let bundle = Bundle::load(&opts.bundle)?;
    check_existing_surrogate(opts, &bundle, reaches_calibrate)?;
    let (_, test) =
        crate::pipeline::bundle_dataset(&bundle, Split::Test, opts.data_dir.as_deref())?;
    let len = test.len();
    if reaches_calibrate && !opts.recalibrate {
        let calibration = bundle
            .surrogate
            .as_ref()
            .and_then(|s| s.calibration.as_ref());
        if let Some(c) = calibration.filter(|c| calibration_matches(opts, c)) {
            let planned = opts.calibration.indices(len);
            if !calibrated_on(&bundle, &planned)? {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a calibration on other inputs than this plan's calibration role \
                     ({} inputs there, {} in the plan); pass --recalibrate to replace it",
                    opts.bundle.display(),
                    c.m,
                    planned.len()
                )));
            }
        }
    }
    check_disjoint_roles(opts, len)
}

/// The numbers and splits the flags give.
fn check_flags(opts: &PipelineOptions) -> Result<(), PipelineError> {
    if opts.eval.skip == 0
        || opts.eval.n == 0
        || opts.chunk == 0
        || opts.calibration_chunk == 0
        || opts.epochs == 0
    {
        return Err(PipelineError::Invalid(
            "--eval-skip, --eval-n, --chunk, --calibration-chunk and --epochs must be at least 1"
                .into(),
        ));
    }
    crate::pipeline::surrogate::margin_tail::check_weight(opts.margin_tail)?;
    // Else the train counts would be sampled whole before training refused them.
    if opts.margin_tail > 0.0 && !opts.train.margins {
        return Err(PipelineError::Invalid(
            "--margin-tail above 0 needs train counts that record their margins".into(),
        ));
    }
    if opts.calibration.n != opts.nominal_n {
        return Err(PipelineError::Invalid(format!(
            "the calibration counts must be at the nominal N ({}), not {}",
            opts.nominal_n, opts.calibration.n
        )));
    }
    if opts.train.split != Split::Train
        || opts.calibration.split != Split::Test
        || opts.tail.as_ref().is_some_and(|t| t.split != Split::Test)
    {
        return Err(PipelineError::Invalid(
            "the surrogate trains on the train split; the tail map, calibration and evaluation use the test split".into(),
        ));
    }
    Ok(())
}

/// A surrogate already in the bundle must stand in for this plan's N, keep
/// its tail map, and hold a calibration of this plan's parameters (unless
/// --recalibrate).
fn check_existing_surrogate(
    opts: &PipelineOptions,
    bundle: &Bundle,
    reaches_calibrate: bool,
) -> Result<(), PipelineError> {
    if let Some(s) = &bundle.surrogate {
        // Checked before any counts are sampled: a bundle from before the
        // margin tail would otherwise get its train set sampled again (with
        // margins) for a surrogate that is then kept as it was.
        if let Some(trained) = s.training.as_ref().map(|t| t.margin_tail.unwrap_or(0.0)) {
            if trained != opts.margin_tail {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a surrogate trained with --margin-tail {trained}, not {}; \
                     pass --margin-tail {trained} to keep it (and its counts), or start \
                     from a bundle without [surrogate]",
                    opts.bundle.display(),
                    opts.margin_tail
                )));
            }
        }
        if s.nominal_n != opts.nominal_n {
            return Err(PipelineError::Invalid(format!(
                "{} holds a surrogate for a nominal N of {}, not --nominal-n {}",
                opts.bundle.display(),
                s.nominal_n,
                opts.nominal_n
            )));
        }
        if opts.tail.is_none() && s.tail_map.is_some() {
            return Err(PipelineError::Invalid(format!(
                "{} holds a tail map, which --no-tail-map cannot take back (the calibration \
                 measured the surrogate with it); leave the flag out, or start from a bundle \
                 without [surrogate.tail_map]",
                opts.bundle.display()
            )));
        }
        if let Some(c) = &s.calibration {
            if reaches_calibrate && !calibration_matches(opts, c) && !opts.recalibrate {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a calibration with other parameters (score {}, margin threshold {}, \
                     delta {}, N {}, n0 {}, {} rank, {} bins) than this plan's (score {}, margin \
                     threshold {}, delta {}, N {}, n0 {}, marginal, no bins); pass --recalibrate \
                     to replace it, or choose flags that match it",
                    opts.bundle.display(),
                    c.score.as_str(),
                    threshold_str(c.margin_threshold),
                    c.delta,
                    c.n,
                    c.n0,
                    c.rank_rule.as_str(),
                    c.bins.len(),
                    opts.score.as_str(),
                    threshold_str(opts.margin_threshold),
                    opts.delta,
                    opts.nominal_n,
                    opts.n0
                )));
            }
        }
    }
    Ok(())
}

/// The test split's roles (calibration, evaluation, tail map) each hold
/// images, and no image is in two.
fn check_disjoint_roles(opts: &PipelineOptions, len: usize) -> Result<(), PipelineError> {
    let mut roles = vec![
        ("calibration", opts.calibration.indices(len)),
        ("evaluation", opts.eval.indices(len)),
    ];
    if let Some(t) = &opts.tail {
        roles.push(("tail map", t.indices(len)));
    }
    for (name, set) in &roles {
        if set.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "the {name} role has no images in the test split's {len}"
            )));
        }
    }
    for (i, (a, sa)) in roles.iter().enumerate() {
        for (b, sb) in &roles[i + 1..] {
            if let Some(idx) = sa.intersection(sb).next() {
                return Err(PipelineError::Invalid(format!(
                    "test image {idx} is in both the {a} and the {b} role; choose shards and \
                     offsets that keep them apart"
                )));
            }
        }
    }
    Ok(())
}

pub(super) fn threshold_str(t: Option<f64>) -> String {
    t.map_or_else(|| "none".into(), |z| z.to_string())
}

/// Whether the bundle's calibration inputs are exactly `planned` (test split).
pub(super) fn calibrated_on(
    bundle: &Bundle,
    planned: &BTreeSet<usize>,
) -> Result<bool, PipelineError> {
    let Some(used) = InputList::read_if_any(&bundle.dir.join(calibrate::INPUTS_FILE))? else {
        return Ok(false);
    };
    Ok(used.split == Split::Test
        && used.indices.len() == planned.len()
        && used
            .indices
            .iter()
            .all(|&i| usize::try_from(i).is_ok_and(|i| planned.contains(&i))))
}

pub(super) fn calibration_matches(opts: &PipelineOptions, c: &crate::model::Calibration) -> bool {
    c.score == opts.score
        && c.margin_threshold == opts.margin_threshold
        && c.delta == opts.delta
        && c.n == opts.nominal_n
        && c.n0 == opts.n0
        && c.seed == opts.seed
        && c.bins.is_empty()
        && c.rank_rule == RankRule::Marginal
}
