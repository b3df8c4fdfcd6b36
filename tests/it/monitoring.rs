//! The Grafana dashboard and the PrometheusRule in deploy/base, checked
//! against a live server: every PromQL expression parses, every metric it
//! names is on the server's /metrics (or is a recording rule, or one of the
//! few series Prometheus and kube-state-metrics provide), every label it
//! matches or groups by is on that metric, every label value it names is one
//! the service writes, and every metric the service exports is on the
//! dashboard. Each check is also shown failing on a broken copy.

use crate::common::{config, png, request, scrape, start, tensor, test_images};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier};
use smoothcert::server::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tonic::IntoRequest;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Series that come from elsewhere: Prometheus's own scrape status, and
/// kube-state-metrics for container restarts.
const EXTERNAL: [&str; 2] = ["up", "kube_pod_container_status_restarts_total"];

/// Labels Prometheus attaches to every scraped series (ServiceMonitor targets).
const TARGET_LABELS: [&str; 6] = [
    "namespace",
    "pod",
    "job",
    "instance",
    "container",
    "service",
];

/// Every label value a `code` label can carry.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A scrape: each sample name with the label sets of its series.
type Scrape = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn parse_scrape(text: &str) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').expect("an unclosed label set");
                let mut labels = BTreeMap::new();
                // The service's label values hold no commas or quotes.
                for pair in line[open + 1..close].split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    labels.insert(k.to_string(), v.trim_matches('"').to_string());
                }
                (&line[..open], labels)
            }
            None => (line.split_whitespace().next().unwrap(), BTreeMap::new()),
        };
        out.entry(name.to_string()).or_default().push(labels);
    }
    out
}

/// Every expression in the rules file, with where it is, and the names it records.
fn rule_expressions(yaml: &str) -> (Vec<(String, String)>, BTreeSet<String>) {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("the rules file is YAML");
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in doc["spec"]["groups"].as_sequence().expect("spec.groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["record"]
                .as_str()
                .or_else(|| rule["alert"].as_str())
                .expect("a rule records or alerts")
                .to_string();
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_string());
            }
            let expr = rule["expr"].as_str().expect("a rule has an expr");
            exprs.push((name, expr.to_string()));
        }
    }
    (exprs, recorded)
}

/// Every query on the dashboard (panels and the model variable), with
/// Grafana's variables replaced by what they stand for.
fn dashboard_expressions(json: &str) -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let grafana = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("${model}", ".*")
            .replace("$model", ".*")
    };
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title");
        for t in panel["targets"].as_array().expect("targets") {
            out.push((
                title.to_string(),
                grafana(t["expr"].as_str().expect("a target expr")),
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(METRIC, LABEL): the metric, with the label matched.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .expect("a label_values query");
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            out.push((
                format!("variable {}", var["name"]),
                format!("{metric}{{{}=~\".+\"}}", label.trim()),
            ));
        }
    }
    out
}

/// A vector selector: its metric name and its label matchers (op, label, value).
struct Selector {
    name: String,
    matchers: Vec<(MatchOp, String, String)>,
}

/// The selectors in `expr`, and each aggregation's `by` labels with the
/// metric names beneath it.
fn walk(expr: &Expr, selectors: &mut Vec<Selector>, groupings: &mut Vec<(String, Vec<String>)>) {
    match expr {
        Expr::VectorSelector(vs) => selectors.push(Selector {
            name: vs.name.clone().unwrap_or_default(),
            matchers: vs
                .matchers
                .matchers
                .iter()
                .map(|m| (m.op.clone(), m.name.clone(), m.value.clone()))
                .collect(),
        }),
        Expr::MatrixSelector(ms) => {
            walk(&Expr::VectorSelector(ms.vs.clone()), selectors, groupings)
        }
        Expr::Aggregate(a) => {
            let mut inner = Vec::new();
            walk(&a.expr, &mut inner, groupings);
            if let Some(LabelModifier::Include(labels)) = &a.modifier {
                let names: Vec<String> = inner.iter().map(|s| s.name.clone()).collect();
                for l in &labels.labels {
                    groupings.push((l.clone(), names.clone()));
                }
            }
            selectors.extend(inner);
            if let Some(p) = &a.param {
                walk(p, selectors, groupings);
            }
        }
        Expr::Binary(b) => {
            walk(&b.lhs, selectors, groupings);
            walk(&b.rhs, selectors, groupings);
        }
        Expr::Paren(p) => walk(&p.expr, selectors, groupings),
        Expr::Unary(u) => walk(&u.expr, selectors, groupings),
        Expr::Subquery(s) => walk(&s.expr, selectors, groupings),
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, selectors, groupings);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Everything wrong with `exprs` against the scrape; empty when all is well.
fn problems(exprs: &[(String, String)], recorded: &BTreeSet<String>, live: &Scrape) -> Vec<String> {
    let mut out = Vec::new();
    let label_values = |metric: &str, label: &str| -> BTreeSet<String> {
        live.get(metric)
            .into_iter()
            .flatten()
            .filter_map(|series| series.get(label).cloned())
            .collect()
    };
    for (place, text) in exprs {
        let expr = match parser::parse(text) {
            Ok(e) => e,
            Err(e) => {
                out.push(format!("{place}: does not parse: {e}\n  {text}"));
                continue;
            }
        };
        let (mut selectors, mut groupings) = (Vec::new(), Vec::new());
        walk(&expr, &mut selectors, &mut groupings);
        for s in &selectors {
            if recorded.contains(&s.name) || EXTERNAL.contains(&s.name.as_str()) {
                continue;
            }
            if !live.contains_key(&s.name) {
                out.push(format!("{place}: no metric {} on /metrics", s.name));
                continue;
            }
            for (op, label, value) in &s.matchers {
                if label == "__name__" || TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let seen = label_values(&s.name, label);
                if seen.is_empty() {
                    out.push(format!("{place}: {} has no label {label}", s.name));
                    continue;
                }
                // Name the values it matches; a pattern like .* names none.
                let named: Vec<&str> = match op {
                    MatchOp::Equal | MatchOp::NotEqual => vec![value.as_str()],
                    MatchOp::Re(_) | MatchOp::NotRe(_)
                        if value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_|.".contains(c))
                            && !value.contains(".*")
                            && !value.contains(".+") =>
                    {
                        value.split('|').collect()
                    }
                    _ => vec![],
                };
                for v in named {
                    let known = seen.contains(v) || (label == "code" && GRPC_CODES.contains(&v));
                    if !known {
                        out.push(format!(
                            "{place}: {}{{{label}}} never takes the value {v:?} (seen: {seen:?})",
                            s.name
                        ));
                    }
                }
            }
        }
        for (label, metrics) in &groupings {
            if TARGET_LABELS.contains(&label.as_str()) || label == "le" {
                continue;
            }
            let has = metrics.iter().any(|m| {
                recorded.contains(m)
                    || EXTERNAL.contains(&m.as_str())
                    || !label_values(m, label).is_empty()
            });
            if !has {
                out.push(format!(
                    "{place}: groups by {label}, which none of {metrics:?} has"
                ));
            }
        }
    }
    out
}

/// A live server that has answered every method once, a bad request and a
/// request for a model it does not have; its /metrics, parsed.
async fn live_scrape() -> Scrape {
    let (server, mut client) = start(config("")).await;
    let (images, _) = test_images(1);
    // Monte Carlo and SEQUENTIAL at a small n; the calibrated methods need their own.
    let options = |method: pb::Method| pb::CertifyOptions {
        method: method as i32,
        n: matches!(method, pb::Method::MonteCarlo | pb::Method::Sequential).then_some(1_000),
        ..Default::default()
    };
    for method in [
        pb::Method::Surrogate,
        pb::Method::MonteCarlo,
        pb::Method::Calibrated,
        pb::Method::Auto,
    ] {
        client
            .certify(request(tensor(&images[0], &[1, 28, 28]), options(method)))
            .await
            .unwrap();
    }
    let mut seq = options(pb::Method::Sequential);
    seq.target_radius = Some(0.25);
    client
        .certify(request(tensor(&images[0], &[1, 28, 28]), seq))
        .await
        .unwrap();
    let bad = request(
        pb::certify_request::Input::Image(b"not an image".to_vec()),
        options(pb::Method::Surrogate),
    );
    assert!(client.certify(bad).await.is_err());
    let mut unknown = request(
        pb::certify_request::Input::Image(png(&images[0])),
        options(pb::Method::Surrogate),
    );
    unknown.model = "no-such-model".into();
    assert!(client.certify(unknown).await.is_err());
    // An abstention: 1,000 samples cannot certify an L2 radius of 1.5 at sigma = 0.25.
    let mut far = options(pb::Method::Sequential);
    far.target_radius = Some(1.5);
    client
        .certify(request(tensor(&images[0], &[1, 28, 28]), far))
        .await
        .unwrap();
    // A dropped request: its deadline passes while its samples are drawn.
    let mut slow = request(
        tensor(&images[0], &[1, 28, 28]),
        pb::CertifyOptions {
            method: pb::Method::MonteCarlo as i32,
            n: Some(1_000_000),
            ..Default::default()
        },
    )
    .into_request();
    slow.set_timeout(std::time::Duration::from_millis(200));
    assert!(client.certify(slow).await.is_err());
    let mut text = scrape(&server).await;
    for _ in 0..100 {
        if text.contains("smoothcert_dropped_total{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = scrape(&server).await;
    }
    server.shutdown();
    server.wait().await.unwrap();
    parse_scrape(&text)
}

fn files() -> (String, String) {
    (
        std::fs::read_to_string(repo().join("deploy/base/prometheusrule.yaml")).unwrap(),
        std::fs::read_to_string(repo().join("deploy/base/dashboards/smoothcert.json")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_what_a_live_server_exports() {
    let live = live_scrape().await;
    let (rules, dashboard) = files();
    let (rule_exprs, recorded) = rule_expressions(&rules);
    let panel_exprs = dashboard_expressions(&dashboard);
    assert!(rule_exprs.len() >= 10 && panel_exprs.len() >= 15);

    let found = problems(&rule_exprs, &recorded, &live);
    assert!(found.is_empty(), "the rules:\n{}", found.join("\n"));
    let found = problems(&panel_exprs, &BTreeSet::new(), &live);
    assert!(found.is_empty(), "the dashboard:\n{}", found.join("\n"));

    // The alerts an on-call engineer needs are there.
    for alert in [
        "SmoothcertErrorRatioHigh",
        "SmoothcertLatencyBudgetFastBurn",
        "SmoothcertQueueSaturated",
        "SmoothcertModelNotServing",
        "SmoothcertPodRestarting",
    ] {
        assert!(
            rule_exprs.iter().any(|(n, _)| n == alert),
            "no alert {alert}"
        );
    }
    // Every metric family the service exports is on the dashboard.
    let on_dashboard: String = panel_exprs.iter().map(|(_, e)| e.as_str()).collect();
    let families: BTreeSet<&str> = live
        .keys()
        .filter(|k| k.starts_with("smoothcert_"))
        .map(|k| {
            ["_bucket", "_count", "_sum", "_total", "_created"]
                .iter()
                .find_map(|suffix| k.strip_suffix(suffix))
                .unwrap_or(k)
        })
        .collect();
    assert!(families.len() >= 12, "{families:?}");
    for family in families {
        assert!(
            on_dashboard.contains(family),
            "{family} is not on the dashboard"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_or_panel_is_caught() {
    let live = live_scrape().await;
    let (rules, dashboard) = files();
    let broken_rules = rules
        .replacen("smoothcert_queue_depth", "smoothcert_queue_depht", 1)
        .replacen(
            "method=~\"surrogate|calibrated|auto\"",
            "method=~\"surrogate|calibrated|automatic\"",
            1,
        )
        .replacen("by (namespace, model)", "by (namespace, modle)", 1);
    let (exprs, recorded) = rule_expressions(&broken_rules);
    let found = problems(&exprs, &recorded, &live).join("\n");
    assert!(
        found.contains("no metric smoothcert_queue_depht"),
        "{found}"
    );
    assert!(found.contains("\"automatic\""), "{found}");
    assert!(found.contains("groups by modle"), "{found}");

    let broken_dashboard = dashboard.replacen(
        "sum by (method, outcome) (rate(",
        "sum by (method, outcome) (rate((",
        1,
    );
    let found = problems(
        &dashboard_expressions(&broken_dashboard),
        &BTreeSet::new(),
        &live,
    )
    .join("\n");
    assert!(found.contains("does not parse"), "{found}");
}
