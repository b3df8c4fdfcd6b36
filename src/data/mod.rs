//! Datasets and single images, as the models see them: `f32` pixels in
//! [0, 1], one image after another in C x H x W row-major order (so a whole
//! dataset is N x C x H x W and goes to a tensor without copying).
//!
//! Formats: Fashion-MNIST's IDX files (Debian's `dataset-fashion-mnist`,
//! gzipped or not), CIFAR-10's binary batches, and PNG/JPEG images for single
//! requests. Every loader validates headers and lengths and names the file in
//! its errors, because a silently misread dataset shows up much later as a
//! model that does not learn or a certificate for the wrong input.
mod cifar;
mod decode;
mod folder;
pub mod idx;
mod source;
#[cfg(test)]
mod tests;

pub use cifar::load_cifar10;
pub use decode::{decode_image, load_image};
pub use folder::{image_folder_classes, load_image_folder, load_manifest};
pub use idx::load_fashion_mnist;
pub use source::DatasetSource;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A labelled set of images; `images` holds `len() * image_numel()` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// C, H, W of one image.
    pub shape: [usize; 3],
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (C * H * W).
    pub fn image_numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// FNV-1a of the labels and pixels, in hex: tells one set of images from
    /// another whatever the files are called.
    pub fn fingerprint(&self) -> String {
        let mut bytes = Vec::with_capacity(self.labels.len() * 8 + self.images.len() * 4);
        bytes.extend(self.labels.iter().flat_map(|l| l.to_le_bytes()));
        bytes.extend(self.images.iter().flat_map(|p| p.to_le_bytes()));
        format!("{:016x}", crate::fsutil::fnv1a(&bytes))
    }

    /// The `i`-th image, C x H x W. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_numel();
        &self.images[i * n..(i + 1) * n]
    }
}

/// The datasets smoothcert can load by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Cifar10,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 2] = [DatasetKind::FashionMnist, DatasetKind::Cifar10];

    /// The name used on the command line and in `model.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// Where the files usually are: Debian's package for Fashion-MNIST; for
    /// CIFAR-10 (not packaged) the unpacked binary archive under `data/`.
    pub fn default_dir(self) -> PathBuf {
        match self {
            DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            DatasetKind::Cifar10 => PathBuf::from("data/cifar-10-batches-bin"),
        }
    }

    /// Class names, indexed by label.
    pub fn classes(self) -> Vec<String> {
        let names: &[&str] = match self {
            DatasetKind::FashionMnist => &[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            DatasetKind::Cifar10 => &[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// C, H, W of one image.
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetKind::FashionMnist => [1, 28, 28],
            DatasetKind::Cifar10 => [3, 32, 32],
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DataError::UnknownName {
                what: "dataset",
                name: s.to_string(),
                expected: "fashion-mnist, cifar10",
            })
    }
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Split::Train, Split::Test]
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DataError::UnknownName {
                what: "split",
                name: s.to_string(),
                expected: "train, test",
            })
    }
}

/// Loads `split` of dataset `kind` from `dir`.
pub fn load(kind: DatasetKind, dir: &Path, split: Split) -> Result<Dataset, DataError> {
    match kind {
        DatasetKind::FashionMnist => load_fashion_mnist(dir, split),
        DatasetKind::Cifar10 => load_cifar10(dir, split),
    }
}

/// Everything that can go wrong reading data; each variant names the file
/// (or the image) so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: not found; {hint}", path.display())]
    MissingFile { path: PathBuf, hint: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },
    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    BadFormat { path: PathBuf, detail: String },
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    #[error("{}: label {label} of item {index} is out of range (0..{classes})", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u8,
        classes: usize,
    },
    #[error("{what}: cannot decode the image: {reason}")]
    Undecodable { what: String, reason: String },
    #[error("{what}: {found_w}x{found_h} pixels (WxH), but the model expects {expected_w}x{expected_h}; resize it first")]
    WrongImageSize {
        what: String,
        found_w: usize,
        found_h: usize,
        expected_w: usize,
        expected_h: usize,
    },
    #[error("{what}: the model expects {channels} channels; only 1 (grey) or 3 (RGB) images are supported")]
    UnsupportedChannels { what: String, channels: usize },
    #[error("unknown {what} {name:?}; expected one of: {expected}")]
    UnknownName {
        what: &'static str,
        name: String,
        expected: &'static str,
    },
}

/// Reads a whole file, turning "not found" into [`DataError::MissingFile`] with `hint`.
pub(crate) fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                path: path.to_path_buf(),
                hint: hint.to_string(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Pixel bytes to [0, 1] floats; 255 maps to exactly 1.0.
pub(crate) fn bytes_to_unit(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| f32::from(b) / 255.0).collect()
}

impl DataError {
    /// The message without its subject (the image's name), for a caller that
    /// names the subject itself, as a gRPC error names the request field.
    pub fn without_subject(&self) -> String {
        let full = self.to_string();
        match self {
            DataError::Undecodable { what, .. }
            | DataError::WrongImageSize { what, .. }
            | DataError::UnsupportedChannels { what, .. } => full
                .strip_prefix(&format!("{what}: "))
                .map_or_else(|| full.clone(), str::to_string),
            _ => full,
        }
    }
}
