//! The IDX format of (Fashion-)MNIST: a big-endian header (magic number, one
//! u32 per dimension) followed by the unsigned bytes of the array.
//!
//! Files may be gzipped (as Debian ships them) or plain; gzip is recognised by
//! its content, not by the name, so a renamed file still loads.
use super::{bytes_to_unit, read_file, DataError, Dataset, DatasetKind, Split};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Magic number of an unsigned-byte array with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte array with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const FASHION_MNIST_HINT: &str =
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir";

/// An unsigned-byte IDX array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an IDX file's bytes (after any gunzip), insisting on `magic` and
/// on a length that matches the header exactly.
pub fn parse_idx(bytes: &[u8], path: &Path, magic: u32) -> Result<IdxArray, DataError> {
    let what = match magic {
        IMAGES_MAGIC => "IDX images: unsigned bytes, 3 dimensions",
        LABELS_MAGIC => "IDX labels: unsigned bytes, 1 dimension",
        _ => "IDX unsigned-byte array",
    };
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!("{} bytes, too short for an IDX magic number", bytes.len()),
        });
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "{} bytes, shorter than its {header}-byte IDX header",
                bytes.len()
            ),
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|numel| numel.checked_add(header))
        .ok_or_else(|| DataError::BadFormat {
            path: path.to_path_buf(),
            detail: format!("IDX dimensions {dims:?} overflow"),
        })?;
    match bytes.len().cmp(&expected) {
        std::cmp::Ordering::Less => Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "the header promises dimensions {dims:?} ({expected} bytes) but the data has {} bytes",
                bytes.len()
            ),
        }),
        std::cmp::Ordering::Greater => Err(DataError::BadFormat {
            path: path.to_path_buf(),
            detail: format!(
                "{} bytes of trailing data after the {expected} bytes that dimensions {dims:?} describe",
                bytes.len() - expected
            ),
        }),
        std::cmp::Ordering::Equal => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
    }
}

/// Gunzips `bytes` if they start with the gzip magic, else returns them as they are.
pub(crate) fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DataError::Truncated {
                    path: path.to_path_buf(),
                    detail: "the gzip stream ends early (an incomplete download?)".into(),
                }
            } else {
                DataError::BadFormat {
                    path: path.to_path_buf(),
                    detail: format!("corrupt gzip data: {e}"),
                }
            }
        })?;
    Ok(out)
}

/// Reads and parses one IDX file, gzipped or not.
pub fn read_idx(path: &Path, magic: u32) -> Result<IdxArray, DataError> {
    let bytes = maybe_gunzip(read_file(path, FASHION_MNIST_HINT)?, path)?;
    parse_idx(&bytes, path, magic)
}

/// `dir/name.gz` if it exists, else `dir/name` if that exists, else a
/// missing-file error naming both.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.exists() {
        Ok(gz)
    } else if plain.exists() {
        Ok(plain)
    } else {
        Err(DataError::MissingFile {
            path: gz,
            hint: format!("nor is {name} there; {FASHION_MNIST_HINT}"),
        })
    }
}

/// Loads a Fashion-MNIST split from its four IDX files in `dir`
/// (`train-*` / `t10k-*`, gzipped or plain).
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let kind = DatasetKind::FashionMnist;
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, IMAGES_MAGIC)?;
    let labels = read_idx(&labels_path, LABELS_MAGIC)?;

    let shape = kind.shape();
    if images.dims[1..] != shape[1..] {
        return Err(DataError::BadFormat {
            path: images_path,
            detail: format!(
                "images are {}x{} but Fashion-MNIST's are {}x{}",
                images.dims[1], images.dims[2], shape[1], shape[2]
            ),
        });
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::CountMismatch {
            images_path,
            labels_path,
            images: images.dims[0],
            labels: labels.dims[0],
        });
    }
    let classes = kind.classes();
    let labels = check_labels(&labels.data, classes.len(), &labels_path)?;
    Ok(Dataset {
        images: bytes_to_unit(&images.data),
        labels,
        shape,
        classes,
    })
}

/// Label bytes to `i64`, refusing any label outside `0..classes`.
pub(crate) fn check_labels(
    bytes: &[u8],
    classes: usize,
    path: &Path,
) -> Result<Vec<i64>, DataError> {
    bytes
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            if (label as usize) < classes {
                Ok(i64::from(label))
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index,
                    label,
                    classes,
                })
            }
        })
        .collect()
}
