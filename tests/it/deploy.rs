//! The shipping files: the Dockerfile passes hadolint, every kustomize target
//! in deploy/ renders and validates against the Kubernetes schemas, and the
//! pod's shutdown timing covers the server's drain. Each check is also shown
//! failing on a broken copy, so a broken file cannot slip through.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// hadolint and kubernetes-validate live beside the Python client (scripts/setup.sh).
fn tool(name: &str) -> PathBuf {
    let python = std::env::var("SMOOTHCERT_PYTHON")
        .expect("SMOOTHCERT_PYTHON is unset: run scripts/setup.sh (it installs the linters)");
    Path::new(&python).with_file_name(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs it)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn hadolint(dockerfile: &Path) -> Output {
    run(Command::new(tool("hadolint")).arg(dockerfile))
}

#[test]
fn dockerfile_passes_hadolint_and_a_broken_one_does_not() {
    let out = hadolint(&repo().join("Dockerfile"));
    assert!(out.status.success(), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("Dockerfile");
    let ours = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // An untagged base image (DL3006) and `cd` in a RUN (DL3003).
    std::fs::write(
        &broken,
        ours.replace(
            "FROM debian:bookworm-slim",
            "FROM debian\nRUN cd /tmp && true",
        ),
    )
    .unwrap();
    let out = hadolint(&broken);
    assert!(!out.status.success(), "hadolint accepted:\n{}", text(&out));
    assert!(text(&out).contains("DL3006"), "{}", text(&out));
}

/// `kubectl kustomize DIR`, then kubernetes-validate --strict on the output.
fn render_and_validate(dir: &Path) -> (String, Output) {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kustomize {}: {}",
        dir.display(),
        text(&out)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let validated = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--no-warn"])
        .arg(&file));
    (yaml, validated)
}

#[test]
fn every_overlay_renders_and_validates() {
    for target in [
        "deploy/overlays/cpu",
        "deploy/overlays/gpu",
        "deploy/pipeline",
    ] {
        let (yaml, out) = render_and_validate(&repo().join(target));
        assert!(out.status.success(), "{target}: {}", text(&out));
        assert!(!text(&out).contains("ERROR"), "{target}: {}", text(&out));
        assert!(
            yaml.contains("app.kubernetes.io/name: smoothcert"),
            "{target}"
        );
    }
    let (gpu, _) = render_and_validate(&repo().join("deploy/overlays/gpu"));
    assert!(gpu.contains("nvidia.com/gpu: 1"));
    let (cpu, _) = render_and_validate(&repo().join("deploy/overlays/cpu"));
    assert!(!cpu.contains("nvidia.com/gpu"));
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: ConfigMap",
        "kind: PodDisruptionBudget",
        "kind: HorizontalPodAutoscaler",
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "grafana_dashboard: \"1\"",
        "clusterIP: None",
    ] {
        assert!(cpu.contains(kind), "the base lacks {kind}");
    }
    let (pipeline, _) = render_and_validate(&repo().join("deploy/pipeline"));
    assert!(pipeline.contains("completionMode: Indexed"));
    assert!(pipeline.contains("--counts-worker \"$JOB_COMPLETION_INDEX/8\""));
}

/// `from` and everything beneath it, copied to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, dest).unwrap();
        }
    }
}

#[test]
fn a_broken_manifest_fails_validation() {
    // An overlay over a copy of the real base (kustomize refuses absolute
    // paths) with a field Kubernetes does not know.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    copy_dir(&repo().join("deploy/base"), &base);
    let overlay = dir.path().join("broken");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../base\npatches:\n  - target:\n      kind: Deployment\n    patch: |-\n\
         \x20     - op: add\n        path: /spec/template/spec/containers/0/gpus\n        value: 1\n",
    )
    .unwrap();
    let (_, out) = render_and_validate(&overlay);
    assert!(
        !out.status.success(),
        "validated a Deployment with an unknown field:\n{}",
        text(&out)
    );
}

#[test]
fn pod_shutdown_covers_the_drain_and_the_config_loads() {
    // The ConfigMap's file is a valid configuration...
    let cfg = smoothcert::config::Config::load_with_env(
        Some(&repo().join("deploy/base/smoothcert.toml")),
        Some(Default::default()),
    )
    .unwrap();
    // ...whose drain fits in the pod's termination grace period after preStop.
    let deployment = std::fs::read_to_string(repo().join("deploy/base/deployment.yaml")).unwrap();
    let number_after = |key: &str| -> u64 {
        let line = deployment
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key}"));
        line.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let termination = number_after("terminationGracePeriodSeconds:");
    let pre_stop = number_after("command: [\"sleep\"");
    let drain = cfg.server.grace_period_ms.div_ceil(1000);
    assert!(
        pre_stop + drain + 5 <= termination,
        "preStop {pre_stop} s + drain {drain} s + 5 s margin > terminationGracePeriodSeconds {termination}"
    );
    assert_eq!(cfg.server.grpc_addr.port(), 50051);
    assert!(
        deployment.contains("containerPort: 50051") && deployment.contains("containerPort: 9090")
    );
}
