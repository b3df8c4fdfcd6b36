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
