//! SEQUENTIAL over the lanes: cA and the surrogate's guide from a surrogate
//! task (or from AUTO's calibrated step; or from selection samples when the
//! model has no surrogate), the schedule fixed from them, then the stages,
//! each drawn in slices on the stage lane, until the test stops.
use crate::batcher::{Answer, BatchError, ModelWorkers};
use crate::engine::requests::{BatchTiming, Selected, Slice, TaskParams};
use crate::engine::{sequential_test, EngineError, Method, Outcome, SequentialCertificate, Task};
use crate::methods::Target;
use crate::smoothing::sequential::SequentialDecision;
use crate::smoothing::{AbstainReason, Decision};
use std::time::{Duration, Instant};

/// Where a request's time and samples went, summed over its tasks.
#[derive(Default)]
struct Tally {
    queue: Duration,
    timing: BatchTiming,
    batch_size: usize,
    /// cA's count among the estimation samples drawn so far.
    count_a: u64,
    drawn: u64,
}

impl Tally {
    fn answer(self, outcome: Outcome) -> Answer {
        Answer {
            outcome,
            method: Method::Sequential,
            queue: self.queue,
            timing: self.timing,
            batch_size: self.batch_size,
        }
    }

    fn add(&mut self, a: &Answer) {
        self.queue += a.queue;
        self.timing.sampling += a.timing.sampling;
        self.timing.surrogate += a.timing.surrogate;
        self.batch_size = a.batch_size;
    }
}

/// The sequential test at `target`; `params.n` is its cap. `first` is AUTO's
/// calibrated step, when it falls back here.
pub(super) async fn certify(
    workers: &ModelWorkers,
    pixels: Vec<f32>,
    params: TaskParams,
    target: Target,
    deadline: Instant,
    first: Option<Answer>,
) -> Result<Answer, BatchError> {
    let first = match first {
        Some(a) => Some(a),
        None => surrogate_step(workers, &pixels, params, deadline).await?,
    };
    let (mut selected, guide) = schedule_basis(first.as_ref(), target.guided);
    let test = sequential_test(
        workers.noise(),
        target.radius,
        params.alpha,
        params.n,
        guide,
    )?;
    let mut tally = Tally::default();
    if let Some(a) = &first {
        tally.add(a);
    }
    for (j, stage) in test.schedule.stages().iter().enumerate() {
        let stage_params = TaskParams {
            shift: None,
            ..params
        };
        draw_stage(
            workers,
            &pixels,
            stage_params,
            stage.n,
            deadline,
            &mut selected,
            &mut tally,
        )
        .await?;
        let sel = selected.unwrap_or(Selected::given(0));
        let verdict = test.decide(j, tally.count_a).map_err(EngineError::from)?;
        let Some(decision) = decision(workers, sel.class_a, verdict) else {
            continue;
        };
        let certificate = SequentialCertificate {
            class_a: sel.class_a,
            count_a: tally.count_a,
            n: tally.drawn,
            cap: test.schedule.cap(),
            target_radius: target.radius,
            stages: j + 1,
            guided: guide.is_some(),
            decision,
        };
        return Ok(tally.answer(Outcome::Sequential(certificate, sel)));
    }
    Err(EngineError::Internal("the sequential test ran past its cap").into())
}

/// A plain (uncalibrated) surrogate task for cA and p_hat, when the model
/// has a surrogate.
async fn surrogate_step(
    workers: &ModelWorkers,
    pixels: &[f32],
    params: TaskParams,
    deadline: Instant,
) -> Result<Option<Answer>, BatchError> {
    if !workers.has_surrogate() {
        return Ok(None);
    }
    let plain = TaskParams {
        shift: None,
        ..params
    };
    Ok(Some(
        workers
            .call(Task::Surrogate, pixels.to_vec(), plain, deadline)
            .await?,
    ))
}

/// What the schedule may depend on: cA and p_hat, both fixed before any
/// estimation sample is drawn. p_hat guides it only where the surrogate's
/// class is cA, and only when the target asks for guidance.
fn schedule_basis(first: Option<&Answer>, guided: bool) -> (Option<Selected>, Option<f64>) {
    let (selected, guide) = match first.map(|a| &a.outcome) {
        Some(Outcome::Surrogate(e, sel)) => (
            Some(*sel),
            (e.surrogate_class == e.class_a).then_some(e.p_hat_a),
        ),
        _ => (None, None),
    };
    (selected, guide.filter(|_| guided))
}

/// The decision a stage's verdict makes for cA; `None` to go on to the next stage.
fn decision(
    workers: &ModelWorkers,
    class_a: usize,
    verdict: SequentialDecision,
) -> Option<Decision> {
    match verdict {
        SequentialDecision::Continue => None,
        SequentialDecision::Certified { p_a_lower } => Some(Decision::Certified {
            class: class_a,
            p_a_lower,
            radius: workers.noise().radius(p_a_lower),
        }),
        SequentialDecision::NotReached { p_a_lower } => Some(Decision::Abstain {
            reason: AbstainReason::TargetNotReached,
            p_a_lower,
        }),
    }
}

/// Draws estimation samples up to `stage_n`, a slice at a time; the first
/// slice chooses cA when nothing has yet.
async fn draw_stage(
    workers: &ModelWorkers,
    pixels: &[f32],
    params: TaskParams,
    stage_n: u64,
    deadline: Instant,
    selected: &mut Option<Selected>,
    tally: &mut Tally,
) -> Result<(), BatchError> {
    while tally.drawn < stage_n {
        let num = (stage_n - tally.drawn).min(workers.stage_slice());
        let slice = TaskParams {
            class_a: selected.map(|s| s.class_a),
            slice: Some(Slice {
                start: tally.drawn,
                num,
            }),
            ..params
        };
        let got = loop {
            match workers
                .call(Task::Stage, pixels.to_vec(), slice, deadline)
                .await
            {
                // A request under way waits for room rather than losing the
                // stages it has drawn.
                Err(BatchError::QueueFull { .. }) if tally.drawn > 0 => {
                    if Instant::now() >= deadline {
                        return Err(BatchError::DeadlineExceeded {
                            waited: Duration::ZERO,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                other => break other?,
            }
        };
        let Outcome::Stage(count, sel) = got.outcome else {
            return Err(EngineError::Internal("a stage task returned another outcome").into());
        };
        selected.get_or_insert(sel);
        tally.count_a += count;
        tally.drawn += num;
        tally.queue += got.queue;
        tally.timing.sampling += got.timing.sampling;
        tally.batch_size = got.batch_size;
    }
    Ok(())
}
