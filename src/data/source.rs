//! Where a bundle's images come from: one of the built-in datasets, an image
//! folder, or a pair of manifests. A bundle records its source in
//! `provenance.dataset` and every counts file records the source it counted,
//! so that every pipeline step reads the same images by the same indices.
use super::{DataError, Dataset, DatasetKind, Split};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Serialized untagged: a built-in dataset is its name (`"fashion-mnist"`,
/// as every bundle and counts file wrote it before folders existed), a
/// folder `{ image_folder = "/data/flowers" }`, manifests
/// `{ train_manifest = "...", test_manifest = "..." }`. Read through
/// [`SourceRepr`], so that a wrong name or a mixed table gets a message
/// saying what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged, try_from = "SourceRepr")]
pub enum DatasetSource {
    Builtin(DatasetKind),
    ImageFolder {
        image_folder: PathBuf,
    },
    Manifests {
        train_manifest: PathBuf,
        test_manifest: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SourceRepr {
    Name(String),
    Table(SourceTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTable {
    image_folder: Option<PathBuf>,
    train_manifest: Option<PathBuf>,
    test_manifest: Option<PathBuf>,
}

impl TryFrom<SourceRepr> for DatasetSource {
    type Error = String;

    fn try_from(repr: SourceRepr) -> Result<Self, String> {
        match repr {
            SourceRepr::Name(name) => name
                .parse::<DatasetKind>()
                .map(DatasetSource::Builtin)
                .map_err(|e| e.to_string()),
            SourceRepr::Table(SourceTable {
                image_folder: Some(image_folder),
                train_manifest: None,
                test_manifest: None,
            }) => Ok(DatasetSource::ImageFolder { image_folder }),
            SourceRepr::Table(SourceTable {
                image_folder: None,
                train_manifest: Some(train_manifest),
                test_manifest: Some(test_manifest),
            }) => DatasetSource::manifests(train_manifest, test_manifest).map_err(|e| e.to_string()),
            SourceRepr::Table(_) => Err(
                "a dataset is a built-in name (fashion-mnist, cifar10), { image_folder = \"DIR\" } \
                 or { train_manifest = \"FILE\", test_manifest = \"FILE\" }"
                    .into(),
            ),
        }
    }
}

impl From<DatasetKind> for DatasetSource {
    fn from(kind: DatasetKind) -> Self {
        DatasetSource::Builtin(kind)
    }
}

impl DatasetSource {
    /// Two manifests that `--data-dir` can relocate: different files with
    /// different names (relocated, both are looked for by name in one folder).
    pub fn manifests(train_manifest: PathBuf, test_manifest: PathBuf) -> Result<Self, DataError> {
        if train_manifest.file_name() == test_manifest.file_name() {
            return Err(DataError::BadFormat {
                path: test_manifest,
                detail: format!(
                    "the train and test manifests need different file names (the train one is {})",
                    train_manifest.display()
                ),
            });
        }
        Ok(DatasetSource::Manifests {
            train_manifest,
            test_manifest,
        })
    }

    /// Whether it is one of smoothcert's own datasets, whose files never
    /// change; a user's folder or manifest can, so counts record a
    /// fingerprint of its images.
    pub fn is_builtin(&self) -> bool {
        matches!(self, DatasetSource::Builtin(_))
    }

    /// An image folder's or the manifests' paths made absolute, so that a
    /// bundle keeps pointing at its images from any working directory.
    pub fn absolute(self) -> Result<Self, DataError> {
        let abs = |p: PathBuf| {
            std::path::absolute(&p).map_err(|source| DataError::Io { path: p, source })
        };
        Ok(match self {
            DatasetSource::Builtin(k) => DatasetSource::Builtin(k),
            DatasetSource::ImageFolder { image_folder } => DatasetSource::ImageFolder {
                image_folder: abs(image_folder)?,
            },
            DatasetSource::Manifests {
                train_manifest,
                test_manifest,
            } => DatasetSource::Manifests {
                train_manifest: abs(train_manifest)?,
                test_manifest: abs(test_manifest)?,
            },
        })
    }

    /// Loads `split` at the bundle's `shape`; `classes` are the bundle's
    /// labels. `data_dir` relocates the files, as a Kubernetes volume or
    /// another machine does: a built-in dataset's folder, an image folder's
    /// root, or the folder both manifests are in.
    pub fn load(
        &self,
        split: Split,
        shape: [usize; 3],
        classes: &[String],
        data_dir: Option<&Path>,
    ) -> Result<Dataset, DataError> {
        let ds = match self {
            DatasetSource::Builtin(kind) => {
                let dir = data_dir.map_or_else(|| kind.default_dir(), Path::to_path_buf);
                super::load(*kind, &dir, split)?
            }
            DatasetSource::ImageFolder { image_folder } => {
                super::load_image_folder(data_dir.unwrap_or(image_folder), split, shape)?
            }
            DatasetSource::Manifests {
                train_manifest,
                test_manifest,
            } => {
                let manifest = match split {
                    Split::Train => train_manifest,
                    Split::Test => test_manifest,
                };
                let manifest = match (data_dir, manifest.file_name()) {
                    (Some(dir), Some(name)) => dir.join(name),
                    _ => manifest.clone(),
                };
                super::load_manifest(&manifest, shape, classes)?
            }
        };
        // A folder's label is its class folder's position: the names must be
        // the model's labels, in order, or every label means another class.
        // (A manifest's labels are the model's by construction; a built-in
        // dataset may serve a model of fewer classes, as the tests' do.)
        let mismatch = matches!(self, DatasetSource::ImageFolder { .. }) && ds.classes != classes;
        if mismatch {
            return Err(DataError::BadFormat {
                path: self.path_for(split, data_dir),
                detail: format!(
                    "classes {:?}, but the model's labels are {:?}",
                    ds.classes, classes
                ),
            });
        }
        Ok(ds)
    }

    /// The name a client may see: a built-in dataset's, or the kind and the
    /// last path component of a user's (never the server's full paths).
    pub fn public_name(&self) -> String {
        let last = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match self {
            DatasetSource::Builtin(k) => k.to_string(),
            DatasetSource::ImageFolder { image_folder } => {
                format!("image-folder:{}", last(image_folder))
            }
            DatasetSource::Manifests { test_manifest, .. } => {
                format!("manifest:{}", last(test_manifest))
            }
        }
    }

    /// The file or folder `split` is read from, for messages.
    fn path_for(&self, split: Split, data_dir: Option<&Path>) -> PathBuf {
        match (self, data_dir) {
            (_, Some(d)) => d.to_path_buf(),
            (DatasetSource::Builtin(k), None) => k.default_dir(),
            (DatasetSource::ImageFolder { image_folder }, None) => {
                image_folder.join(split.as_str())
            }
            (
                DatasetSource::Manifests {
                    train_manifest,
                    test_manifest,
                },
                None,
            ) => match split {
                Split::Train => train_manifest.clone(),
                Split::Test => test_manifest.clone(),
            },
        }
    }
}

impl fmt::Display for DatasetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSource::Builtin(k) => write!(f, "{k}"),
            DatasetSource::ImageFolder { image_folder } => {
                write!(f, "image folder {}", image_folder.display())
            }
            DatasetSource::Manifests {
                train_manifest,
                test_manifest,
            } => write!(
                f,
                "manifests {} and {}",
                train_manifest.display(),
                test_manifest.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        dataset: DatasetSource,
    }

    #[test]
    fn builtin_names_still_read_and_folders_round_trip() {
        // Every bundle and counts file written before folders existed.
        let old: Holder = toml::from_str("dataset = \"fashion-mnist\"").unwrap();
        assert_eq!(old.dataset, DatasetKind::FashionMnist.into());
        let json: Holder = serde_json::from_str(r#"{"dataset":"cifar10"}"#).unwrap();
        assert_eq!(json.dataset, DatasetKind::Cifar10.into());
        for source in [
            DatasetSource::ImageFolder {
                image_folder: "/data/flowers".into(),
            },
            DatasetSource::Manifests {
                train_manifest: "/m/train.txt".into(),
                test_manifest: "/m/test.txt".into(),
            },
        ] {
            let h = Holder { dataset: source };
            let back: Holder = toml::from_str(&toml::to_string(&h).unwrap()).unwrap();
            assert_eq!(back, h);
            let back: Holder = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
            assert_eq!(back, h);
        }
        let e = toml::from_str::<Holder>("dataset = \"mnist\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fashion-mnist, cifar10"), "{e}");
        for mixed in [
            "dataset = { image_folder = \"a\", train_manifest = \"b\" }",
            "dataset = { train_manifest = \"b\" }",
            "dataset = { image_folders = \"a\" }",
        ] {
            assert!(toml::from_str::<Holder>(mixed).is_err(), "{mixed}");
        }
        let same = "dataset = { train_manifest = \"x/list.txt\", test_manifest = \"y/list.txt\" }";
        let e = toml::from_str::<Holder>(same).unwrap_err().to_string();
        assert!(e.contains("different file names"), "{e}");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let s = DatasetSource::ImageFolder {
            image_folder: "rel/dir".into(),
        }
        .absolute()
        .unwrap();
        let DatasetSource::ImageFolder { image_folder } = s else {
            panic!("{s:?}")
        };
        assert!(image_folder.is_absolute() && image_folder.ends_with("rel/dir"));
    }

    #[test]
    fn data_dir_relocates_folders_and_manifests_and_classes_must_match_labels() {
        let root = tempfile::tempdir().unwrap();
        let moved = root.path().join("moved");
        for split in ["train", "test"] {
            for (class, v) in [("a", 10u8), ("b", 200u8)] {
                let dir = moved.join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                image::GrayImage::from_pixel(2, 2, image::Luma([v]))
                    .save(dir.join("1.png"))
                    .unwrap();
            }
        }
        std::fs::write(moved.join("test.txt"), "test/b/1.png b\ntest/a/1.png 0\n").unwrap();
        let labels = ["a".to_string(), "b".to_string()];
        // Recorded somewhere else; found where --data-dir says.
        let folder = DatasetSource::ImageFolder {
            image_folder: "/nowhere".into(),
        };
        let ds = folder
            .load(Split::Test, [1, 2, 2], &labels, Some(&moved))
            .unwrap();
        assert_eq!(ds.labels, [0, 1]);
        assert!(folder.load(Split::Test, [1, 2, 2], &labels, None).is_err());
        let manifests = DatasetSource::Manifests {
            train_manifest: "/nowhere/train.txt".into(),
            test_manifest: "/nowhere/test.txt".into(),
        };
        let ds = manifests
            .load(Split::Test, [1, 2, 2], &labels, Some(&moved))
            .unwrap();
        assert_eq!(ds.labels, [1, 0]);
        let three = ["a".to_string(), "b".to_string(), "c".to_string()];
        let e = folder
            .load(Split::Test, [1, 2, 2], &three, Some(&moved))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model's labels are"), "{e}");
        // A folder's names must be the labels, in order.
        let renamed = ["a".to_string(), "z".to_string()];
        assert!(folder
            .load(Split::Test, [1, 2, 2], &renamed, Some(&moved))
            .is_err());
        assert_eq!(folder.public_name(), "image-folder:nowhere");
    }
}
