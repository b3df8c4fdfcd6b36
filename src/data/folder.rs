//! Datasets as PyTorch users keep them.
//!
//! - An image folder, torchvision's `ImageFolder` layout under one folder
//!   per split: `ROOT/train/<class>/<file>` and `ROOT/test/<class>/<file>`,
//!   PNG or JPEG files (other files are skipped, as `ImageFolder` skips
//!   them), classes in sorted folder order, files in sorted name order
//!   within each class. The order is what the inputs' indices refer to, so
//!   counts, held-out sets and evaluations keep naming the same images.
//! - A manifest: one `path label` per line (whitespace between; `#` starts a
//!   comment), a path relative to the manifest's folder and a label that is
//!   a class name or its index; the lines' order is the indices' order.
//!
//! Every image must already have the model's exact size and mode: grey (L,
//! with or without alpha) for C = 1, RGB (with or without alpha) for C = 3;
//! alpha is dropped. Anything else is an error naming the file, since
//! resizing or converting would change what is certified.
use super::{DataError, Dataset, Split};
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The class folders of `dir`, sorted, and each one's image files, sorted.
fn class_folders(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>, DataError> {
    let entries = |d: &Path| -> Result<Vec<PathBuf>, DataError> {
        let io = |source| DataError::Io {
            path: d.to_path_buf(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(d).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if !hidden {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    };
    if !dir.is_dir() {
        return Err(DataError::MissingFile {
            path: dir.to_path_buf(),
            hint: "an image folder holds one folder per split (train/, test/), \
                   each with one folder per class"
                .into(),
        });
    }
    let mut classes = Vec::new();
    for class_dir in entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| DataError::BadFormat {
                path: class_dir.clone(),
                detail: "a class folder's name must be UTF-8".into(),
            })?;
        let files: Vec<PathBuf> = entries(&class_dir)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(DataError::BadFormat {
            path: dir.to_path_buf(),
            detail: "no class folders".into(),
        });
    }
    Ok(classes)
}

/// One split of an image folder (see the module docs). The classes are the
/// split's sorted folder names; where the other split exists too, its
/// classes must be the same, so that a label means one class in both.
pub fn load_image_folder(
    root: &Path,
    split: Split,
    shape: [usize; 3],
) -> Result<Dataset, DataError> {
    let dir = root.join(split.as_str());
    let folders = class_folders(&dir)?;
    let classes: Vec<String> = folders.iter().map(|(c, _)| c.clone()).collect();
    let other = match split {
        Split::Train => Split::Test,
        Split::Test => Split::Train,
    };
    let other_dir = root.join(other.as_str());
    if other_dir.is_dir() {
        let theirs: Vec<String> = class_folders(&other_dir)?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        if theirs != classes {
            return Err(DataError::BadFormat {
                path: dir,
                detail: format!(
                    "its classes {classes:?} differ from those of {} ({theirs:?})",
                    other_dir.display()
                ),
            });
        }
    }
    let mut items = Vec::new();
    for (label, (_, files)) in folders.into_iter().enumerate() {
        items.extend(files.into_iter().map(|f| (f, label as i64)));
    }
    if items.is_empty() {
        return Err(DataError::BadFormat {
            path: dir,
            detail: "no PNG or JPEG files in its class folders".into(),
        });
    }
    read_items(items, shape, classes)
}

/// The class names of `split` of an image folder: its sorted folder names.
pub fn image_folder_classes(root: &Path, split: Split) -> Result<Vec<String>, DataError> {
    Ok(class_folders(&root.join(split.as_str()))?
        .into_iter()
        .map(|(c, _)| c)
        .collect())
}

/// A manifest of `path label` lines (see the module docs); `classes` are
/// the names a label may give (the bundle's labels).
pub fn load_manifest(
    manifest: &Path,
    shape: [usize; 3],
    classes: &[String],
) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                path: manifest.to_path_buf(),
                hint: "a manifest lists one `path label` per line".into(),
            }
        } else {
            DataError::Io {
                path: manifest.to_path_buf(),
                source,
            }
        }
    })?;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |detail: String| DataError::BadFormat {
            path: manifest.to_path_buf(),
            detail: format!("line {}: {detail}", n + 1),
        };
        let (path, label) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `path label`".into()))?;
        let label = label.trim();
        let index = match label.parse::<usize>() {
            Ok(i) if i < classes.len() => i,
            Ok(i) => {
                return Err(bad(format!(
                    "label {i} is out of range (0..{})",
                    classes.len()
                )))
            }
            Err(_) => classes.iter().position(|c| c == label).ok_or_else(|| {
                bad(format!(
                    "label {label:?} is not one of the classes {classes:?}"
                ))
            })?,
        };
        items.push((base.join(path.trim()), index as i64));
    }
    if items.is_empty() {
        return Err(DataError::BadFormat {
            path: manifest.to_path_buf(),
            detail: "no images listed".into(),
        });
    }
    read_items(items, shape, classes.to_vec())
}

fn read_items(
    items: Vec<(PathBuf, i64)>,
    shape: [usize; 3],
    classes: Vec<String>,
) -> Result<Dataset, DataError> {
    let mut images = Vec::with_capacity(items.len() * shape.iter().product::<usize>());
    let mut labels = Vec::with_capacity(items.len());
    for (path, label) in items {
        // Read once: the mode check looks at the header of the same bytes.
        let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        check_mode(&bytes, &path, shape[0])?;
        images.extend(super::decode::decode_named(
            &bytes,
            shape,
            &path.display().to_string(),
        )?);
        labels.push(label);
    }
    Ok(Dataset {
        images,
        labels,
        shape,
        classes,
    })
}

/// Grey files for a one-channel model, RGB files for a three-channel one.
fn check_mode(bytes: &[u8], path: &Path, channels: usize) -> Result<(), DataError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let decoder = reader.into_decoder().map_err(|e| DataError::Undecodable {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    use image::ImageDecoder;
    let found = decoder.color_type().channel_count();
    // Alpha aside: 1 or 2 channels are grey, 3 or 4 are RGB.
    let grey = found <= 2;
    if (channels == 1) != grey {
        return Err(DataError::BadFormat {
            path: path.to_path_buf(),
            detail: format!(
                "a {} image, but the model takes {} ({channels} channel{}); convert the dataset first",
                if grey { "grey" } else { "colour" },
                if channels == 1 { "grey" } else { "RGB" },
                if channels == 1 { "" } else { "s" }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an 8-bit PNG whose every pixel is `v` (grey) or `[v, v/2, 255-v]` (RGB).
    fn png(path: &Path, w: u32, h: u32, rgb: bool, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if rgb {
            image::RgbImage::from_pixel(w, h, image::Rgb([v, v / 2, 255 - v]))
                .save(path)
                .unwrap();
        } else {
            image::GrayImage::from_pixel(w, h, image::Luma([v]))
                .save(path)
                .unwrap();
        }
    }

    #[test]
    fn rgb_image_folder_in_sorted_order_with_planes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for split in ["train", "test"] {
            png(&r.join(split).join("dog/b.png"), 4, 3, true, 40);
            png(&r.join(split).join("dog/a.PNG"), 4, 3, true, 30);
            png(&r.join(split).join("cat/z.png"), 4, 3, true, 10);
            std::fs::write(r.join(split).join("cat/notes.txt"), "skipped").unwrap();
            std::fs::write(r.join(split).join("cat/.hidden.png"), "skipped").unwrap();
        }
        let ds = load_image_folder(r, Split::Test, [3, 3, 4]).unwrap();
        assert_eq!(ds.classes, ["cat", "dog"]);
        assert_eq!(ds.labels, [0, 1, 1]);
        // cat/z, then dog/a (30), then dog/b (40); R plane, then G, then B.
        for (i, v) in [(0, 10u8), (1, 30), (2, 40)] {
            let img = ds.image(i);
            assert_eq!(img.len(), 36);
            assert!(img[..12].iter().all(|&p| p == f32::from(v) / 255.0));
            assert!(img[12..24].iter().all(|&p| p == f32::from(v / 2) / 255.0));
            assert!(img[24..].iter().all(|&p| p == f32::from(255 - v) / 255.0));
        }
    }

    #[test]
    fn wrong_size_mode_or_classes_name_the_file() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        png(&r.join("train/a/1.png"), 5, 5, false, 1);
        png(&r.join("train/b/1.png"), 5, 5, false, 2);
        png(&r.join("test/a/1.png"), 5, 5, false, 3);
        png(&r.join("test/b/1.png"), 5, 5, false, 4);
        let ds = load_image_folder(r, Split::Train, [1, 5, 5]).unwrap();
        assert_eq!((ds.len(), ds.labels.clone()), (2, vec![0, 1]));

        png(&r.join("test/b/2.png"), 6, 5, false, 4);
        let err = load_image_folder(r, Split::Test, [1, 5, 5])
            .unwrap_err()
            .to_string();
        assert!(err.contains("test/b/2.png") && err.contains("6x5"), "{err}");
        std::fs::remove_file(r.join("test/b/2.png")).unwrap();

        png(&r.join("test/b/3.png"), 5, 5, true, 4);
        let err = load_image_folder(r, Split::Test, [1, 5, 5])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test/b/3.png") && err.contains("colour"),
            "{err}"
        );
        let err = load_image_folder(r, Split::Train, [3, 5, 5])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train/a/1.png") && err.contains("grey"),
            "{err}"
        );
        std::fs::remove_file(r.join("test/b/3.png")).unwrap();

        png(&r.join("test/c/1.png"), 5, 5, false, 4);
        let err = load_image_folder(r, Split::Test, [1, 5, 5])
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ"), "{err}");
        let err = load_image_folder(&r.join("nowhere"), Split::Test, [1, 5, 5])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere"), "{err}");
    }

    #[test]
    fn manifest_labels_by_name_or_index() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        png(&r.join("img/x.png"), 2, 2, false, 7);
        png(&r.join("img/y.png"), 2, 2, false, 9);
        let classes = vec!["shirt".to_string(), "boot".to_string()];
        std::fs::write(
            r.join("m.txt"),
            "# path label\nimg/y.png boot\n\nimg/x.png 0\n",
        )
        .unwrap();
        let ds = load_manifest(&r.join("m.txt"), [1, 2, 2], &classes).unwrap();
        assert_eq!(ds.labels, [1, 0]);
        assert_eq!(ds.image(0)[0], 9.0 / 255.0);
        for (bad, needle) in [
            ("img/x.png 2\n", "out of range"),
            ("img/x.png coat\n", "not one of the classes"),
            ("img/x.png\n", "line 1"),
            ("img/none.png 0\n", "none.png"),
        ] {
            std::fs::write(r.join("bad.txt"), bad).unwrap();
            let err = load_manifest(&r.join("bad.txt"), [1, 2, 2], &classes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }
}
