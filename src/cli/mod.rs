//! The command line: the parser, one module per command, and the dispatch.
//!
//! Each command's arguments are a `clap::Args` struct in its own module
//! with a `run` that builds the library's options and calls the library;
//! flags that several commands share are declared once in [`args`].
mod args;
mod bench;
mod bench_serve;
mod bench_soak;
mod calibrate;
mod certify;
mod fit_tail_map;
mod import;
mod info;
mod merge_counts;
mod pipeline;
mod report;
mod sample_counts;
mod select_calibration;
mod serve;
mod train_base;
mod train_surrogate;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "smoothcert",
    version,
    about = "Randomized-smoothing robustness certificates"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands, in the order `--help` lists them; each one's help is its
/// arguments struct's doc comment.
#[derive(Subcommand, Debug)]
pub enum Command {
    TrainBase(train_base::TrainBaseArgs),
    SampleCounts(sample_counts::SampleCountsArgs),
    TrainSurrogate(train_surrogate::TrainSurrogateArgs),
    MergeCounts(merge_counts::MergeCountsArgs),
    Certify(certify::CertifyArgs),
    FitTailMap(fit_tail_map::FitTailMapArgs),
    Calibrate(calibrate::CalibrateArgs),
    Import(import::ImportArgs),
    Pipeline(Box<pipeline::PipelineArgs>),
    SelectCalibration(select_calibration::SelectCalibrationArgs),
    Report(report::ReportArgs),
    Bench(bench::BenchArgs),
    BenchCertify(bench::BenchCertifyArgs),
    BenchAdaptive(bench::BenchAdaptiveArgs),
    BenchServe(bench_serve::BenchServeArgs),
    BenchSoak(bench_soak::BenchSoakArgs),
    Info(info::InfoArgs),
    Serve(serve::ServeArgs),
}

impl Command {
    /// Whether the command sets up logging itself (`serve`, from its
    /// configuration) rather than from RUST_LOG.
    pub fn configures_logging(&self) -> bool {
        matches!(self, Command::Serve(_))
    }
}

/// Runs the command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::TrainBase(args) => args.run(),
        Command::SampleCounts(args) => args.run(),
        Command::TrainSurrogate(args) => args.run(),
        Command::MergeCounts(args) => args.run(),
        Command::Certify(args) => args.run(),
        Command::FitTailMap(args) => args.run(),
        Command::Calibrate(args) => args.run(),
        Command::Import(args) => args.run(),
        Command::Pipeline(args) => args.run(),
        Command::SelectCalibration(args) => args.run(),
        Command::Report(args) => args.run(),
        Command::Bench(args) => args.run(),
        Command::BenchCertify(args) => args.run(),
        Command::BenchAdaptive(args) => args.run(),
        Command::BenchServe(args) => args.run(),
        Command::BenchSoak(args) => args.run(),
        Command::Info(args) => args.run(),
        Command::Serve(args) => args.run(),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{error::ErrorKind, CommandFactory, Parser};

    /// `line`'s words after the program name.
    fn words(line: &str) -> impl Iterator<Item = &str> {
        std::iter::once("smoothcert").chain(line.split_whitespace())
    }

    /// The kind and rendered text of the error of a command line that must not parse.
    fn rejected(line: &str) -> (ErrorKind, String) {
        let err = Cli::try_parse_from(words(line)).expect_err(line);
        (err.kind(), err.render().to_string())
    }

    /// The matches of `line`'s subcommand; `line` must also parse into `Cli`.
    fn accepted(line: &str) -> clap::ArgMatches {
        if let Err(e) = Cli::try_parse_from(words(line)) {
            panic!("{line}: {}", e.render());
        }
        let matches = Cli::command().get_matches_from(words(line));
        matches.subcommand().expect("a subcommand").1.clone()
    }

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn import_lines_as_the_readme_writes_them_parse() {
        let m = accepted(
            "import --torchscript model.pt --out models/my-model --labels cat,dog \
             --shape 3,32,32 --sigma 0.25 --image-folder data/pets",
        );
        let shape: Vec<usize> = m.get_many("shape").unwrap().copied().collect();
        assert_eq!(shape, [3, 32, 32]);
        // Labels from the folder's names; manifests come in pairs.
        accepted("import --torchscript m.pt --out b --shape 1,28,28 --sigma 0.25 --image-folder d");
        accepted(
            "import --torchscript m.pt --out b --labels a,b --shape 1,28,28 --sigma 0.25 \
             --train-manifest tr.txt --test-manifest te.txt",
        );
        for line in [
            "import --torchscript m.pt --out b --shape 1,28,28 --sigma 0.25",
            "import --torchscript m.pt --out b --labels a,b --shape 1,28,28 --sigma 0.25 \
             --train-manifest tr.txt",
            "import --torchscript m.pt --out b --shape 1,28,28 --sigma 0.25 --image-folder d \
             --train-manifest tr.txt --test-manifest te.txt",
        ] {
            rejected(line);
        }
    }

    #[test]
    fn the_kubernetes_pipeline_plan_parses() {
        // The flags every pipeline pod runs with (deploy/pipeline/plan.yaml):
        // a typo there would fail only in the cluster.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/pipeline/plan.yaml");
        let plan: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let flags = plan["data"]["flags"].as_str().expect("data.flags");
        let m = accepted(&format!("pipeline {flags}"));
        assert_eq!(m.get_one::<u64>("nominal_n"), Some(&100_000));
        let m = accepted(&format!("pipeline {flags} --counts-worker 7/8"));
        assert!(m.contains_id("counts_worker"));
        let (kind, _) = rejected(&format!("pipeline {flags} --counts-worker 8/8"));
        assert_eq!(kind, ErrorKind::ValueValidation);
    }

    #[test]
    fn bad_enum_values_are_errors_naming_the_accepted_ones() {
        for (line, accepted) in [
            (
                "calibrate --bundle b --counts c --score nonsense",
                "p-gap log-miss root-miss",
            ),
            (
                "certify --bundle b --out x.tsv --method nonsense",
                "monte_carlo surrogate calibrated auto",
            ),
            (
                "certify --bundle b --out x.tsv --split nonsense",
                "train test",
            ),
            ("sample-counts --bundle b --out c --split dev", "train test"),
            (
                "train-base --out b --dataset mnist",
                "fashion-mnist cifar10",
            ),
            (
                "train-base --out b --arch vgg",
                "small-cnn resnet20 resnet110",
            ),
            (
                "train-surrogate --bundle b --counts c --arch vgg",
                "small-cnn resnet20 resnet110",
            ),
            (
                "train-surrogate --bundle b --counts c --loss mse",
                "js soft-ce",
            ),
        ] {
            let (kind, text) = rejected(line);
            assert_eq!(kind, ErrorKind::InvalidValue, "{line}: {text}");
            assert!(text.contains("possible values"), "{line}: {text}");
            for value in accepted.split_whitespace() {
                assert!(text.contains(value), "{line}: {value} missing from {text}");
            }
        }
    }

    #[test]
    fn enum_values_keep_their_spellings() {
        use smoothcert::data::{DatasetKind, Split};
        use smoothcert::engine::Method;
        use smoothcert::model::Arch;
        use smoothcert::smoothing::ConformalScore;

        let calibrate = "calibrate --bundle b --counts c";
        for (spelling, score) in [
            ("p-gap", ConformalScore::PGap),
            ("p_gap", ConformalScore::PGap),
            ("log-miss", ConformalScore::LogMiss),
            ("log_miss", ConformalScore::LogMiss),
            ("root-miss", ConformalScore::RootMiss),
            ("root_miss", ConformalScore::RootMiss),
        ] {
            let m = accepted(&format!("{calibrate} --score {spelling}"));
            assert_eq!(m.get_one("score"), Some(&score), "{spelling}");
        }
        let m = accepted(calibrate);
        assert_eq!(m.get_one("score"), Some(&ConformalScore::PGap));

        let certify = "certify --bundle b --out x.tsv";
        for (spelling, method) in [
            ("mc", Method::MonteCarlo),
            ("monte_carlo", Method::MonteCarlo),
            ("monte-carlo", Method::MonteCarlo),
            ("surrogate", Method::Surrogate),
            ("calibrated", Method::Calibrated),
            ("auto", Method::Auto),
        ] {
            let m = accepted(&format!("{certify} --method {spelling}"));
            assert_eq!(m.get_one("method"), Some(&method), "{spelling}");
        }
        let m = accepted(certify);
        assert_eq!(m.get_one("method"), Some(&Method::MonteCarlo));
        assert_eq!(m.get_one("split"), Some(&Split::Test));
        // Split and dataset names were case-insensitive before they were value enums.
        let m = accepted(&format!("{certify} --split TRAIN"));
        assert_eq!(m.get_one("split"), Some(&Split::Train));

        for kind in DatasetKind::ALL {
            let m = accepted(&format!("train-base --out b --dataset {kind}"));
            assert_eq!(m.get_one("dataset"), Some(&kind));
        }
        let m = accepted("train-base --out b --dataset CIFAR10");
        assert_eq!(m.get_one("dataset"), Some(&DatasetKind::Cifar10));
        let m = accepted("train-base --out b");
        assert_eq!(m.get_one("dataset"), Some(&DatasetKind::FashionMnist));
        assert_eq!(m.get_one("arch"), Some(&Arch::SmallCnn));
        for name in Arch::NAMES {
            let m = accepted(&format!(
                "train-surrogate --bundle b --counts c --arch {name}"
            ));
            assert_eq!(m.get_one::<Arch>("arch").map(|a| a.name()), Some(*name));
        }
    }

    #[test]
    fn device_is_resolved_when_the_command_runs() {
        // Every spelling parses (CUDA may be absent here); the command resolves it.
        for spec in ["auto", "cpu", "cuda", "cuda:1", "gpu"] {
            let m = accepted(&format!("bench --bundle b --device {spec}"));
            assert_eq!(m.get_one::<String>("device"), Some(&spec.to_string()));
        }
        let m = accepted("certify --bundle b --out x.tsv");
        assert_eq!(m.get_one::<String>("device"), Some(&"auto".to_string()));
    }

    /// The flags a group declares once keep each command's default and help.
    #[test]
    fn shared_flags_keep_each_commands_defaults_and_help() {
        let band = smoothcert::config::DEFAULT_AUTO_BAND;
        let m = accepted("certify --bundle b --out x.tsv");
        assert_eq!(m.get_one::<u64>("n0"), Some(&100));
        assert_eq!(m.get_one::<u64>("n"), None);
        assert_eq!(m.get_one::<f64>("alpha"), Some(&0.001));
        // No --batch: the device's forward batch, resolved when the command runs.
        assert_eq!(m.get_one::<i64>("batch"), None);
        let shipped = std::path::Path::new("models/fashion-mnist-sigma0.25");
        assert_eq!(
            super::args::forward_batch(None, tch::Device::Cpu, shipped),
            smoothcert::model::forward_batch_for(tch::Device::Cpu, 0, [1, 28, 28])
        );
        assert_eq!(
            super::args::forward_batch(Some(7), tch::Device::Cpu, shipped),
            7
        );
        // On a GPU the default shrinks with the input: 4096 small images, far
        // fewer 224 x 224 RGB ones, never below 64.
        let gpu = tch::Device::Cuda(0);
        let batch = |s| smoothcert::model::forward_batch_for(gpu, 0, s);
        assert_eq!(batch([1, 28, 28]), 4096);
        assert_eq!(batch([3, 32, 32]), 4096);
        assert_eq!(batch([3, 224, 224]), 4096 * 3 * 32 * 32 / (3 * 224 * 224));
        assert_eq!(batch([3, 1024, 1024]), 64);
        assert_eq!(
            smoothcert::model::forward_batch_for(gpu, 500, [3, 224, 224]),
            500
        );
        assert_eq!(m.get_one::<f64>("auto_band_low"), Some(&band.0));
        assert_eq!(m.get_one::<f64>("auto_band_high"), Some(&band.1));

        let m = accepted("bench-certify --bundle b");
        assert_eq!(m.get_one::<u64>("n0"), Some(&100));
        assert_eq!(m.get_one::<u64>("n"), Some(&100_000));
        assert_eq!(m.get_one::<f64>("alpha"), Some(&0.001));
        assert_eq!(m.get_one::<i64>("batch"), None);
        assert_eq!(m.get_one::<f64>("auto_band_low"), Some(&band.0));

        let help = |command: &str, arg: &str| {
            let cli = Cli::command();
            let sub = cli.find_subcommand(command).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_id() == arg).unwrap();
            arg.get_help().map(|h| h.to_string()).unwrap_or_default()
        };
        assert!(help("certify", "n").starts_with("Samples (mc)"));
        assert!(help("certify", "batch").starts_with("Forward batch"));
        assert!(help("certify", "auto_band_low").starts_with("AUTO falls back"));
        assert_eq!(help("bench-certify", "n"), "");
        assert!(help("bench-certify", "batch").contains("the device's"));
        assert!(help("bench-certify", "auto_band_low").starts_with("AUTO's band"));
    }
}
