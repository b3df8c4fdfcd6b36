use super::*;

fn cnn() -> Classifier {
    Classifier::new_builtin(Arch::SmallCnn, [1, 28, 28], 10, None, Device::Cpu).unwrap()
}

#[test]
fn weights_round_trip_and_foreign_files_are_refused() {
    let _rng = crate::testing::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let a = cnn();
    a.save_weights(&path).unwrap();
    let mut b = cnn();
    b.load_weights(&path).unwrap();
    let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    assert!(a.logits(&x).unwrap().equal(&b.logits(&x).unwrap()));

    // Another architecture's file.
    let mut resnet =
        Classifier::new_builtin(Arch::ResNet20, [1, 28, 28], 10, None, Device::Cpu).unwrap();
    let err = resnet.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("no tensor"), "{err}");

    // The right names in the wrong precision, and a wrong shape.
    let vars = a.var_store().unwrap().variables();
    let as_f64: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Double)))
        .collect();
    Tensor::write_safetensors(&as_f64, &path).unwrap();
    let err = b.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("Double"), "{err}");
    let reshaped: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, t)| (n.clone(), t.flatten(0, -1)))
        .collect();
    Tensor::write_safetensors(&reshaped, &path).unwrap();
    assert!(b.load_weights(&path).is_err());
}

/// Kernels pick their algorithm by batch size (libtorch's CPU GEMM for
/// fewer than about 16 rows, say), so a row's logits could differ in the
/// last bits with the company it is forwarded in. A seeded stream must
/// tally the same to the bit alone and beside other streams.
#[test]
fn a_streams_tally_does_not_depend_on_its_company() {
    let _rng = crate::testing::rng_lock();
    let m = cnn();
    let noise = crate::smoothing::Noise::gaussian(0.25);
    let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mine = NoiseStream::whole(0, 100, 5);
    let tally = |streams: &[NoiseStream], at: usize| {
        let got = m
            .tally_streams(&x, streams, noise, 32, &mut |_| true, true)
            .unwrap();
        got[at].clone().unwrap()
    };
    let alone = tally(&[mine], 0);
    for company in [
        vec![NoiseStream::whole(1, 7, 9), mine],
        vec![
            NoiseStream::whole(1, 45, 9),
            mine,
            NoiseStream::whole(2, 3, 1),
        ],
        vec![
            NoiseStream::whole(2, 30, 2),
            NoiseStream::whole(1, 1, 4),
            mine,
        ],
    ] {
        let at = company.iter().position(|s| *s == mine).unwrap();
        let beside = tally(&company, at);
        assert_eq!(beside.counts, alone.counts);
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&beside.margin_sum), bits(&alone.margin_sum));
        assert_eq!(bits(&beside.margin_sum_sq), bits(&alone.margin_sum_sq));
    }
}

#[test]
fn sample_counts_reject_impossible_sizes() {
    let _rng = crate::testing::rng_lock();
    let m = cnn();
    let x = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    assert!(m
        .sample_counts(&x, i64::MAX, crate::smoothing::Noise::gaussian(0.25), 100)
        .is_err());
    let counts = m
        .sample_counts(&x, 7, crate::smoothing::Noise::gaussian(0.25), 3)
        .unwrap();
    assert_eq!(counts.size(), vec![2, 10]);
    assert_eq!(counts.sum(Kind::Int64).int64_value(&[]), 14);
}
