//! CIFAR-10's "binary version": each record is one label byte followed by
//! 3072 pixel bytes, the red, green and blue 32x32 planes in row-major order.
//! That is already C x H x W, so records are copied plane for plane.
use super::idx::check_labels;
use super::{bytes_to_unit, read_file, DataError, Dataset, DatasetKind, Split};
use std::path::{Path, PathBuf};

const HINT: &str = "download the CIFAR-10 binary version (cifar-10-binary.tar.gz, \
     https://www.cs.toronto.edu/~kriz/cifar.html), unpack it so that \
     data/cifar-10-batches-bin exists, or pass --data-dir";

/// The batch files of a split, in the order their records are concatenated.
pub(crate) fn batch_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Accepts both the batch directory itself and the directory it was unpacked
/// into (which holds `cifar-10-batches-bin/`).
fn resolve_dir(dir: &Path, first: &str) -> PathBuf {
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join(first).exists() && nested.join(first).exists() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Loads a CIFAR-10 split from the binary batch files in `dir`.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let kind = DatasetKind::Cifar10;
    let shape = kind.shape();
    let classes = kind.classes();
    let pixels: usize = shape.iter().product();
    let record = 1 + pixels;
    let files = batch_files(split);
    let dir = resolve_dir(dir, &files[0]);

    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in &files {
        let path = dir.join(name);
        let bytes = read_file(&path, HINT)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::Truncated {
                path,
                detail: format!(
                    "{} bytes is not a whole number of {record}-byte records (1 label + {pixels} pixels)",
                    bytes.len()
                ),
            });
        }
        let label_bytes: Vec<u8> = bytes.chunks_exact(record).map(|r| r[0]).collect();
        labels.extend(check_labels(&label_bytes, classes.len(), &path)?);
        images.reserve(bytes.len());
        for r in bytes.chunks_exact(record) {
            images.extend(bytes_to_unit(&r[1..]));
        }
    }
    Ok(Dataset {
        images,
        labels,
        shape,
        classes,
    })
}
