//! The roles' indices and files, as sample-counts cuts them.
use super::*;

fn role(skip: usize, shards: usize, used: &[usize]) -> CountsRole {
    CountsRole {
        split: Split::Test,
        n: 100,
        skip,
        shards,
        used: used.to_vec(),
        margins: false,
    }
}

#[test]
fn roles_cover_the_indices_sample_counts_samples() {
    // Shard i of k by position among every skip-th index, as sample-counts cuts it.
    assert_eq!(
        role(1, 4, &[1]).indices(10),
        [1, 5, 9].into_iter().collect()
    );
    assert_eq!(
        role(5, 2, &[0, 1]).indices(20),
        [0, 5, 10, 15].into_iter().collect()
    );
    assert_eq!(role(5, 2, &[1]).indices(20), [5, 15].into_iter().collect());
    let eval = EvalRole {
        offset: 2,
        skip: 4,
        max: Some(2),
        n: 10,
    };
    assert_eq!(eval.indices(20), [2, 6].into_iter().collect());
    let files = role(3, 8, &[0, 2]).files(Path::new("c"));
    assert_eq!(
        files[1].1,
        Path::new("c/test-n100-skip3/shard-2-of-8.safetensors")
    );
    assert_eq!(files[1].0.to_string(), "2/8");
    assert!(role(1, 4, &[4]).validate("x").is_err());
    assert!(role(1, 4, &[]).validate("x").is_err());
    assert!(role(1, 4, &[1, 1]).validate("x").is_err());
}
