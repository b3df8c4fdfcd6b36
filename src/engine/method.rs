//! The one name for "how a radius was produced", shared by the CLI, the
//! configuration, the TSV files, the metrics labels and (through
//! `server::validation`) the proto.
use serde::{Deserialize, Serialize};

/// How a radius is produced. Named in every response, row, file and report.
// Read through `FromStr`, so that every reader (config, JSON, TSV) accepts
// the same spellings and names the accepted values when refusing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Method {
    /// Cohen et al.'s Monte Carlo CERTIFY: a certificate at level 1 - alpha.
    #[value(name = "monte_carlo", alias = "mc", alias = "monte-carlo")]
    MonteCarlo,
    /// Accelerated Smoothing: cA from n0 samples, the count predicted by the
    /// bundle's surrogate. An estimate of the Monte Carlo certificate, not a guarantee.
    Surrogate,
    /// The surrogate's p_hat[cA] lowered by the bundle's conformal calibration:
    /// exceeds the Monte Carlo radius with probability at most delta. An estimate.
    Calibrated,
    /// Calibrated where decisive, else Monte Carlo with the same cA (the
    /// sequential test, given a target radius); each answer names the
    /// method that produced it.
    Auto,
    /// An exact certificate at a target radius: a staged sequential test on
    /// fresh samples, sized by the surrogate when there is one. A certificate.
    Sequential,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::MonteCarlo,
        Method::Surrogate,
        Method::Calibrated,
        Method::Auto,
        Method::Sequential,
    ];

    /// The name used everywhere: CLI values, config, TSV rows, metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::MonteCarlo => "monte_carlo",
            Method::Surrogate => "surrogate",
            Method::Calibrated => "calibrated",
            Method::Auto => "auto",
            Method::Sequential => "sequential",
        }
    }

    /// The name in messages, as the proto spells it (CALIBRATED).
    pub fn label(self) -> String {
        self.as_str().to_ascii_uppercase()
    }

    /// What this method's radii are; `None` for AUTO, whose every answer
    /// names the method (and so the kind) that produced it.
    pub fn radius_kind(self) -> Option<RadiusKind> {
        match self {
            Method::MonteCarlo | Method::Sequential => Some(RadiusKind::Certificate),
            Method::Surrogate | Method::Calibrated => Some(RadiusKind::Estimate),
            Method::Auto => None,
        }
    }

    /// Whether it needs the bundle's surrogate (SEQUENTIAL uses one when
    /// there is one, and runs its plain schedule when not).
    pub fn needs_surrogate(self) -> bool {
        matches!(self, Method::Surrogate | Method::Calibrated | Method::Auto)
    }

    /// Whether it needs the bundle's conformal calibration.
    pub fn needs_calibration(self) -> bool {
        matches!(self, Method::Calibrated | Method::Auto)
    }

    /// The engine task a request of this method starts with (AUTO may go on
    /// to a Monte Carlo task).
    pub fn first_task(self) -> Task {
        match self {
            Method::MonteCarlo => Task::MonteCarlo,
            Method::Sequential => Task::Stage,
            _ => Task::Surrogate,
        }
    }
}

/// What a radius promises: a certificate at level 1 - alpha, or an estimate
/// of one (see the methods' docs). Responses, TSV rows and reports read it
/// from the method or the outcome that produced the radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RadiusKind {
    Certificate,
    Estimate,
}

impl RadiusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RadiusKind::Certificate => "certificate",
            RadiusKind::Estimate => "estimate",
        }
    }

    /// A run's kind: its methods' one kind, or "mixed" (AUTO, or a file of several).
    pub fn of_run(kinds: impl IntoIterator<Item = Option<RadiusKind>>) -> &'static str {
        let mut kinds = kinds.into_iter();
        match kinds.next().flatten() {
            Some(first) if kinds.all(|k| k == Some(first)) => first.as_str(),
            _ => "mixed",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Method {
    type Error = String;

    fn try_from(s: String) -> Result<Method, String> {
        s.parse()
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    /// Accepts `as_str`'s names, their kebab-case spelling, and "mc" (the
    /// name TSV files written before the names were unified carry).
    fn from_str(s: &str) -> Result<Method, String> {
        let normal = s.trim().to_ascii_lowercase().replace('-', "_");
        match normal.as_str() {
            "mc" => Ok(Method::MonteCarlo),
            other => Method::ALL
                .into_iter()
                .find(|m| m.as_str() == other)
                .ok_or_else(|| {
                    format!(
                        "unknown method {s:?}; one of: {}",
                        Method::ALL.map(Method::as_str).join(", ")
                    )
                }),
        }
    }
}

/// What one engine call computes for a request, and so which lane runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// n0 selection samples and one surrogate pass (SURROGATE, CALIBRATED,
    /// AUTO's first step).
    Surrogate,
    /// n0 selection samples (none when cA is given) and n estimation samples.
    MonteCarlo,
    /// PREDICT: n samples and the binomial test.
    Predict,
    /// One slice of a sequential test's stage: cA (selection samples when
    /// not given) and its count among a slice of the estimation samples.
    Stage,
}

impl Task {
    /// Metrics label, and the name of the lane that runs it.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Surrogate => "surrogate",
            Task::MonteCarlo => "monte_carlo",
            Task::Predict => "predict",
            Task::Stage => "stage",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips_to_one_name() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
            assert_eq!(m.as_str().replace('_', "-").parse::<Method>(), Ok(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), m);
            let value = <Method as clap::ValueEnum>::to_possible_value(&m).unwrap();
            assert_eq!(value.get_name(), m.as_str());
        }
        assert_eq!("mc".parse::<Method>(), Ok(Method::MonteCarlo));
        assert_eq!(
            serde_json::from_str::<Method>("\"mc\"").unwrap(),
            Method::MonteCarlo
        );
        let err = "nonsense".parse::<Method>().unwrap_err();
        assert!(
            err.contains("monte_carlo, surrogate, calibrated, auto, sequential"),
            "{err}"
        );
    }
}
