//! Small filesystem helpers shared by the modules that write results.
use std::io::Write;
use std::path::{Path, PathBuf};

/// `path` with `.tmp` appended to its file name (`a.json` -> `a.json.tmp`).
fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, so a
/// reader (or a resumed run) only ever sees the old or the complete new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// FNV-1a (64 bit): a stable fingerprint of bytes (not a security hash).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// [`fnv1a`] of a file's bytes, in hex: tells one set of weights from another.
pub fn fingerprint(path: &Path) -> std::io::Result<String> {
    Ok(format!("{:016x}", fnv1a(&std::fs::read(path)?)))
}

/// The file beside `path` that shares its stem: (`runs/mc.tsv`, `params.json`)
/// -> `runs/mc.params.json`.
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    path.with_file_name(format!("{stem}.{suffix}"))
}
