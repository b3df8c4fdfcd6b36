//! The `smoothcert` binary as a user runs it: it starts without any
//! LD_LIBRARY_PATH (libtorch is found through the rpath), chains
//! certify -> report, and fails with a message that names the problem.
use smoothcert::testing::write_threshold_bundle;
use std::path::Path;
use std::process::{Command, Output};

fn smoothcert(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smoothcert"))
        .args(args)
        .current_dir(cwd)
        .env_remove("LD_LIBRARY_PATH")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run smoothcert")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn info_runs_without_library_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = smoothcert(&["info"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cuda available:"), "{}", text(&out));
}

#[test]
fn certify_then_report() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    write_threshold_bundle(&bundle, [1, 28, 28], 0.5, 0.25);
    let b = bundle.to_str().unwrap();
    let out = smoothcert(
        &[
            "certify",
            "--bundle",
            b,
            "--method",
            "mc",
            "--split",
            "test",
            "--skip",
            "100",
            "--max",
            "3",
            "--n0",
            "20",
            "--n",
            "500",
            "--batch",
            "256",
            "--device",
            "cpu",
            "--out",
            "out/mc.tsv",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let tsv = std::fs::read_to_string(dir.path().join("out/mc.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 4, "{tsv}");
    assert!(tsv
        .starts_with("idx\tlabel\tpredict\tradius\tcorrect\ttime\tmethod\tcount_a\tn\tp_a_lower"));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/mc.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["inputs"], 3);
    // "mc" is still accepted; every file names the method by its one name.
    assert_eq!(summary["method"], "monte_carlo");

    let out = smoothcert(&["report", "out/mc.tsv", "--out-dir", "rep"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| mc | monte_carlo |"), "{stdout}");
    for f in ["rep/report.json", "rep/certified_accuracy.png"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = smoothcert(
        &["certify", "--bundle", "nowhere", "--out", "x.tsv"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("nowhere/model.toml"), "{}", text(&out));

    let out = smoothcert(
        &[
            "certify", "--bundle", "b", "--out", "x.tsv", "--method", "guess",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--method"), "{}", text(&out));

    let out = smoothcert(&["train-base", "--out", "b", "--arch", "vgg"], dir.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("small-cnn"), "{}", text(&out));

    let out = smoothcert(&["report", "missing.tsv", "--out-dir", "r"], dir.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.tsv"), "{}", text(&out));
}

/// A real interruption: the process is killed once its first chunk is on
/// disk; the rerun keeps that chunk and finishes the rest.
#[test]
fn sample_counts_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist-sigma0.25");
    let args = [
        "sample-counts",
        "--bundle",
        bundle.to_str().unwrap(),
        "--split",
        "test",
        "--skip",
        "500",
        "--n",
        "4000",
        "--chunk",
        "2",
        "--batch",
        "100",
        "--device",
        "cpu",
        "--out",
        "c.safetensors",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_smoothcert"))
        .args(args)
        .current_dir(dir.path())
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = dir
        .path()
        .join("c.safetensors.parts/chunk-000000.safetensors");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !first.exists() {
        assert!(std::time::Instant::now() < deadline, "no chunk written");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dir.path().join("c.safetensors").exists(),
        "finished before the kill: the test needs a longer run"
    );
    let kept = smoothcert::pipeline::counts::Counts::read(&first).unwrap();

    let out = smoothcert(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let all =
        smoothcert::pipeline::counts::Counts::read(&dir.path().join("c.safetensors")).unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(&all.indices[..2], &kept.indices[..]);
    assert_eq!(&all.counts[..20], &kept.counts[..]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("c.summary.json")).unwrap())
            .unwrap();
    assert!(
        summary["chunks_resumed"].as_u64().unwrap() >= 1,
        "{summary}"
    );
}

/// `smoothcert serve` as a deployment runs it: configured by the environment,
/// JSON logs, SIGTERM ends it with status 0; a bad key stops it at start.
#[test]
fn serve_starts_logs_json_and_exits_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_smoothcert"))
        .arg("serve")
        .current_dir(repo)
        .env_remove("LD_LIBRARY_PATH")
        .env("OMP_NUM_THREADS", "1")
        .env("SMOOTHCERT__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("SMOOTHCERT__SERVER__METRICS_ADDR", "127.0.0.1:0")
        .env("SMOOTHCERT__LOGGING__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let message = v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        lines.push(message.clone());
        if message == "serving" {
            let ok = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {lines:?}");
    assert!(lines.iter().any(|l| l == "serving"), "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("stopped"),
        "{lines:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_smoothcert"))
        .arg("serve")
        .current_dir(repo)
        .env("SMOOTHCERT__LIMITS__REQUEST_TIMEOUT_MS", "soon")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("request_timeout_ms"), "{}", text(&out));
}

/// A stop while a model is still loading ends the process within the grace
/// period: here the bundle's manifest is a FIFO nobody writes, a load that
/// never finishes (as on a hung network volume).
#[test]
fn sigterm_during_model_loading_exits_within_the_grace_period() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("hung");
    std::fs::create_dir(&bundle).unwrap();
    let fifo = bundle.join("model.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             grace_period_ms = 3000\n[logging]\nformat = \"json\"\n\
             [[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
            bundle.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smoothcert"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("LD_LIBRARY_PATH")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let loading = line.contains("loading models");
        log.push(line);
        if loading {
            break;
        }
    }
    // The loader is now blocked on the FIFO.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    log.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
    assert!(
        took < Duration::from_millis(3000),
        "took {took:?} with a 3 s grace period; log: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("stopped while loading models")),
        "{log:#?}"
    );
}
