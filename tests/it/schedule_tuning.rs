//! How the guided schedule's knobs were chosen: a simulation on the bundle's
//! CALIBRATION images (test i % 50 == 25; never the evaluation images), with
//! each image's pA taken as its Monte Carlo proportion at N = 100,000 and
//! the surrogate's tail-mapped p_hat[cA] from `calibration_summary.json`.
//! Not part of the suite (it takes a minute in release):
//!
//!   cargo test --release --test it schedule_tuning:: -- --ignored --nocapture
use smoothcert::smoothing::clopper_pearson_lower;
use smoothcert::smoothing::sequential::{
    Guide, Schedule, SequentialDecision, SequentialTest, FUTILITY, GUIDE,
};

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// (estimation samples drawn, certified) for one stream of pA = p.
fn run(test: &SequentialTest, p: f64, rng: &mut Rng) -> (u64, bool) {
    let (mut k, mut drawn) = (0u64, 0u64);
    for (j, stage) in test.schedule.stages().iter().enumerate() {
        while drawn < stage.n {
            k += u64::from(rng.uniform() < p);
            drawn += 1;
        }
        match test.decide(j, k).unwrap() {
            SequentialDecision::Continue => continue,
            SequentialDecision::Certified { .. } => return (drawn, true),
            SequentialDecision::NotReached { .. } => return (drawn, false),
        }
    }
    (drawn, false)
}

#[test]
#[ignore]
fn guided_schedule_knobs_on_the_calibration_images() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fashion-mnist-sigma0.25/calibration_summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let inputs: Vec<(f64, Option<f64>)> = summary["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = s["p_mc_a"].as_f64().unwrap();
            let guide =
                (s["class_a"] == s["surrogate_class"]).then(|| s["p_hat_a"].as_f64().unwrap());
            (p, guide)
        })
        .collect();
    let (alpha, cap, sigma, reps) = (0.001, 100_000u64, 0.25, 3);
    let variants: Vec<(String, Option<Guide>)> = std::iter::once(("plain".to_string(), None))
        .chain(
            [
                (0.5, 1.0, 8),
                (0.5, 0.0, 8),
                (0.5, 0.0, 4),
                (0.5, 0.5, 4),
                (0.7, 0.0, 4),
                (0.3, 0.0, 4),
            ]
            .into_iter()
            .map(|(first_share, z, max_factor)| {
                (
                    format!("guided share {first_share} z {z} max {max_factor}x"),
                    Some(Guide {
                        first_share,
                        z,
                        max_factor,
                    }),
                )
            }),
        )
        .collect();
    println!("shipped: {GUIDE:?}");
    for eps in [0.25f64, 0.5, 0.75] {
        let ps = smoothcert::smoothing::Noise::Gaussian { sigma }
            .p_star(eps)
            .unwrap();
        println!("\neps {eps}:");
        for (name, guide) in &variants {
            let mut rng = Rng(eps.to_bits());
            let (mut passes, mut certified, mut mc_certified) = (0u64, 0u64, 0u64);
            for &(p, hat) in &inputs {
                let schedule = match (guide, hat) {
                    (Some(g), Some(h)) => Schedule::guided_with(alpha, cap, ps, h, *g).unwrap(),
                    _ => Schedule::plain(alpha, cap, ps).unwrap(),
                };
                let test = SequentialTest::new(schedule, ps, FUTILITY).unwrap();
                for _ in 0..reps {
                    let (n, c) = run(&test, p, &mut rng);
                    passes += n;
                    certified += u64::from(c);
                    // Monte Carlo at the cap: its own draw.
                    let k = (0..cap).filter(|_| rng.uniform() < p).count() as u64;
                    let l = clopper_pearson_lower(k, cap, alpha).unwrap();
                    mc_certified += u64::from(l >= ps && l > 0.5);
                }
            }
            let total = (inputs.len() * reps) as f64;
            println!(
                "  {name:<34} mean estimation passes {:>8.0}  certified {:.1} %  (Monte Carlo {:.1} %)",
                passes as f64 / total,
                100.0 * certified as f64 / total,
                100.0 * mc_certified as f64 / total
            );
        }
    }
}
