//! The certification TSV: one row per input. The first six columns are Cohen
//! et al.'s (`idx label predict radius correct time`), so their analysis
//! scripts read our files; the rest say which method produced the radius and
//! the numbers behind it, so every radius can be recomputed and no surrogate
//! estimate passes for a Monte Carlo certificate.
use crate::engine::Method;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The header line, without its newline.
pub const HEADER: &str = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tmethod\tcount_a\tn\tp_a_lower\tabstain_reason\tdelta\tclass_a\tn0_drawn";

/// The header before the calibrated methods (no delta, class_a, n0_drawn):
/// still read, never appended to.
pub const LEGACY_HEADER: &str =
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\tmethod\tcount_a\tn\tp_a_lower\tabstain_reason";

const COLUMNS: usize = 14;
const LEGACY_COLUMNS: usize = 11;

/// One certified (or abstained) input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertRow {
    /// Index of the input in its dataset split.
    pub idx: usize,
    pub label: i64,
    /// The smoothed classifier's class, or -1 when it abstains.
    pub predict: i64,
    /// Certified L2 radius; 0 when abstaining.
    pub radius: f64,
    /// `predict == label` (false when abstaining).
    pub correct: bool,
    /// Seconds spent on this input.
    pub time: f64,
    /// Which method produced the radius (files written before the names
    /// were unified say "mc" for monte_carlo; both parse).
    pub method: Method,
    /// Count of the predicted class among the `n` samples (nominal for a surrogate).
    pub count_a: u64,
    pub n: u64,
    /// One-sided Clopper-Pearson lower bound on pA.
    pub p_a_lower: f64,
    /// Empty when certified, else e.g. "low_confidence", "class_mismatch", "not_significant".
    pub abstain_reason: Option<String>,
    /// Method calibrated: the stated overestimation probability (empty otherwise).
    pub delta: Option<f64>,
    /// cA, the class the selection samples chose (also when abstaining).
    pub class_a: Option<usize>,
    /// Selection samples drawn (below n0 when adaptive n0 stopped early).
    pub n0_drawn: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TsvError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a smoothcert certify TSV: the header is {found:?}, expected {HEADER:?}", path.display())]
    Header { path: PathBuf, found: String },
    #[error("{}: line {line}: {detail}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// A row that does not parse, before it is attributed to a file and line.
    #[error("{0}")]
    Parse(String),
}

impl TsvError {
    fn at(self, path: &Path, line: usize) -> TsvError {
        match self {
            TsvError::Parse(detail) => TsvError::Line {
                path: path.to_path_buf(),
                line,
                detail,
            },
            other => other,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TsvError + '_ {
    move |source| TsvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl CertRow {
    /// The row as a TSV line, without the newline. `p_a_lower` gets 12
    /// decimals so that `sigma * Phi^-1(p_a_lower)` reproduces the radius to
    /// about 1e-6 even for pA near 1, where Phi^-1 is steep.
    pub fn to_line(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        format!(
            "{}\t{}\t{}\t{:.6}\t{}\t{:.4}\t{}\t{}\t{}\t{:.12}\t{}\t{}\t{}\t{}",
            self.idx,
            self.label,
            self.predict,
            self.radius,
            u8::from(self.correct),
            self.time,
            self.method,
            self.count_a,
            self.n,
            self.p_a_lower,
            self.abstain_reason.as_deref().unwrap_or(""),
            opt(self.delta.map(|d| d.to_string())),
            opt(self.class_a.map(|c| c.to_string())),
            opt(self.n0_drawn.map(|c| c.to_string())),
        )
    }

    /// Parses one line (a trailing `\r` or `\n` is ignored).
    pub fn parse_line(line: &str) -> Result<Self, TsvError> {
        Self::parse_columns(line, COLUMNS)
    }

    /// Parses one line of a file whose header has `columns` columns: the
    /// current or the legacy one, never a mix, so that a line cut short by
    /// an interruption is not taken for a legacy row.
    fn parse_columns(line: &str, columns: usize) -> Result<Self, TsvError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != columns {
            return Err(TsvError::Parse(format!(
                "{} columns, expected {columns} ({:?})",
                fields.len(),
                if columns == COLUMNS {
                    HEADER
                } else {
                    LEGACY_HEADER
                }
            )));
        }
        fn opt<T: std::str::FromStr>(fields: &[&str], i: usize) -> Result<Option<T>, TsvError>
        where
            T::Err: std::fmt::Display,
        {
            match fields.get(i) {
                None | Some(&"") => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|e| {
                    let name = HEADER.split('\t').nth(i).unwrap_or("?");
                    TsvError::Parse(format!("column {name}: {v:?}: {e}"))
                }),
            }
        }
        fn num<T: std::str::FromStr>(fields: &[&str], i: usize) -> Result<T, TsvError>
        where
            T::Err: std::fmt::Display,
        {
            let name = HEADER.split('\t').nth(i).unwrap_or("?");
            fields[i]
                .parse()
                .map_err(|e| TsvError::Parse(format!("column {name}: {:?}: {e}", fields[i])))
        }
        let correct = match fields[4] {
            "0" => false,
            "1" => true,
            other => {
                return Err(TsvError::Parse(format!(
                    "column correct: {other:?} is neither 0 nor 1"
                )))
            }
        };
        let method: Method = fields[6]
            .parse()
            .map_err(|e| TsvError::Parse(format!("column method: {e}")))?;
        let row = CertRow {
            idx: num(&fields, 0)?,
            label: num(&fields, 1)?,
            predict: num(&fields, 2)?,
            radius: num(&fields, 3)?,
            correct,
            time: num(&fields, 5)?,
            method,
            count_a: num(&fields, 7)?,
            n: num(&fields, 8)?,
            p_a_lower: num(&fields, 9)?,
            abstain_reason: Some(fields[10].to_string()).filter(|s| !s.is_empty()),
            delta: opt(&fields, 11)?,
            class_a: opt(&fields, 12)?,
            n0_drawn: opt(&fields, 13)?,
        };
        if row.predict == -1 && row.correct {
            return Err(TsvError::Parse(
                "an abstaining row (predict -1) is marked correct".into(),
            ));
        }
        Ok(row)
    }
}

/// Accepts the current header, and the legacy one when `legacy_ok`; returns
/// the header's column count.
fn check_header(path: &Path, first: &str, legacy_ok: bool) -> Result<usize, TsvError> {
    let first = first.trim_end_matches(['\n', '\r']);
    if first == HEADER {
        Ok(COLUMNS)
    } else if legacy_ok && first == LEGACY_HEADER {
        Ok(LEGACY_COLUMNS)
    } else {
        Err(TsvError::Header {
            path: path.to_path_buf(),
            found: first.to_string(),
        })
    }
}

/// Reads every row of a certify TSV, checking the header. Strict: a line
/// that does not parse is an error, including the partial last line an
/// interrupted run leaves (rerunning `certify` with the same `--out` resumes
/// and repairs it).
pub fn read_tsv(path: &Path) -> Result<Vec<CertRow>, TsvError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut lines = text.split_inclusive('\n');
    let columns = check_header(path, lines.next().unwrap_or(""), true)?;
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let number = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        match CertRow::parse_columns(line, columns) {
            Ok(row) => rows.push(row),
            Err(e) if !line.ends_with('\n') => {
                return Err(TsvError::Line {
                    path: path.to_path_buf(),
                    line: number,
                    detail: format!(
                        "incomplete last line (an interrupted run? rerun certify with the same --out to resume): {e}"
                    ),
                })
            }
            Err(e) => return Err(e.at(path, number)),
        }
    }
    Ok(rows)
}

/// For resuming an interrupted run: reads the rows that are complete
/// (newline-terminated and parse), truncates the file after the last of
/// them, and returns the file opened for appending with those rows. Creates
/// the file with the header if it is missing (or empty, or holds only part
/// of the header). Errors if the header differs, or if a newline-terminated
/// line in the middle does not parse: that is damage, not an interruption,
/// and truncating there would throw finished work away.
pub fn open_for_resume(path: &Path) -> Result<(File, Vec<CertRow>), TsvError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let header_line = format!("{HEADER}\n");

    let header_end = match bytes.iter().position(|&b| b == b'\n') {
        Some(pos) => {
            let first = String::from_utf8_lossy(&bytes[..pos]);
            check_header(path, &first, false)?;
            pos + 1
        }
        None if header_line.as_bytes().starts_with(&bytes) => {
            // Missing, empty, or interrupted while the header was written.
            file.set_len(0).map_err(io_err(path))?;
            file.write_all(header_line.as_bytes())
                .and_then(|_| file.flush())
                .map_err(io_err(path))?;
            return Ok((file, Vec::new()));
        }
        None => {
            return Err(TsvError::Header {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    };

    let mut rows = Vec::new();
    let mut keep = header_end;
    let mut line_no = 1;
    let mut rest = &bytes[header_end..];
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        line_no += 1;
        let line = std::str::from_utf8(&rest[..pos]).map_err(|e| TsvError::Line {
            path: path.to_path_buf(),
            line: line_no,
            detail: format!("not UTF-8: {e}"),
        })?;
        if !line.trim().is_empty() {
            rows.push(CertRow::parse_line(line).map_err(|e| e.at(path, line_no))?);
        }
        keep += pos + 1;
        rest = &rest[pos + 1..];
    }
    if keep < bytes.len() {
        tracing::info!(
            path = %path.display(),
            dropped_bytes = bytes.len() - keep,
            "dropping the incomplete last line of an interrupted run"
        );
        file.set_len(keep as u64).map_err(io_err(path))?;
        file.sync_data().map_err(io_err(path))?;
    }
    // Append mode writes at the end regardless; seeking there keeps the
    // reported position honest for callers that look.
    file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok((file, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(idx: usize, abstain: bool) -> CertRow {
        CertRow {
            idx,
            label: (idx % 10) as i64,
            predict: if abstain { -1 } else { (idx % 10) as i64 },
            radius: if abstain { 0.0 } else { 0.123456 },
            correct: !abstain,
            time: 0.0123,
            method: if idx.is_multiple_of(2) {
                Method::MonteCarlo
            } else {
                Method::Surrogate
            },
            count_a: 99_123,
            n: 100_000,
            p_a_lower: 0.987654321012,
            abstain_reason: abstain.then(|| "low_confidence".to_string()),
            delta: idx.is_multiple_of(3).then_some(0.05),
            class_a: Some(idx % 10),
            n0_drawn: Some(100),
        }
    }

    #[test]
    fn header_has_cohens_columns_first() {
        let cols: Vec<&str> = HEADER.split('\t').collect();
        assert_eq!(cols.len(), COLUMNS);
        assert_eq!(
            &cols[..6],
            ["idx", "label", "predict", "radius", "correct", "time"]
        );
    }

    #[test]
    fn rows_round_trip() {
        for r in [row(0, false), row(1, true), row(7, false)] {
            let line = r.to_line();
            assert!(!line.contains('\n'));
            assert_eq!(line.split('\t').count(), COLUMNS);
            assert_eq!(CertRow::parse_line(&line).unwrap(), r, "{line}");
        }
        let line = row(3, true).to_line();
        assert!(
            line.starts_with("3\t3\t-1\t0.000000\t0\t0.0123\tsurrogate\t"),
            "{line}"
        );
        assert!(
            line.contains("\t0.987654321012\tlow_confidence\t"),
            "{line}"
        );
        // CRLF files (edited on Windows) still parse.
        assert_eq!(
            CertRow::parse_line(&format!("{}\r\n", row(2, false).to_line())).unwrap(),
            row(2, false)
        );
    }

    #[test]
    fn bad_lines_are_rejected() {
        let good = row(4, false).to_line();
        for bad in [
            good.replacen("\t", " ", 1),                          // too few columns
            format!("{good}\textra"),                             // too many
            good.replacen("\t1\t", "\tyes\t", 1),                 // correct not 0/1
            good.replacen("4\t4\t4", "4\t4\tx", 1),               // predict not a number
            good.replace("\tmonte_carlo\t", "\t\t"),              // no method
            row(5, true).to_line().replacen("\t0\t", "\t1\t", 1), // abstain marked correct
        ] {
            assert!(CertRow::parse_line(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_checks_header_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tsv");
        let rows = vec![row(0, false), row(1, true)];
        let mut text = format!("{HEADER}\n");
        for r in &rows {
            text.push_str(&r.to_line());
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_tsv(&path).unwrap(), rows);

        // Cohen et al.'s six-column header is not ours.
        std::fs::write(&path, "idx\tlabel\tpredict\tradius\tcorrect\ttime\n").unwrap();
        let err = read_tsv(&path).unwrap_err();
        assert!(matches!(err, TsvError::Header { .. }), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            read_tsv(&path).unwrap_err(),
            TsvError::Header { .. }
        ));

        // A bad middle line names its line number.
        let broken = text.replacen("\t0.0123\t", "\tslow\t", 1);
        std::fs::write(&path, broken).unwrap();
        let err = read_tsv(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("time"), "{err}");

        // A partial last line is reported as an interrupted run.
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        let err = read_tsv(&path).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("resume"), "{err}");
        // A complete last line without its newline is fine.
        std::fs::write(&path, text.trim_end()).unwrap();
        assert_eq!(read_tsv(&path).unwrap(), rows);

        let err = read_tsv(&dir.path().join("missing.tsv")).unwrap_err();
        assert!(err.to_string().contains("missing.tsv"), "{err}");
    }

    #[test]
    fn resume_creates_then_truncates_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.tsv");

        // A fresh file gets the header.
        let (mut file, done) = open_for_resume(&path).unwrap();
        assert!(done.is_empty());
        for i in 0..3 {
            writeln!(file, "{}", row(i, i == 1).to_line()).unwrap();
        }
        drop(file);
        let full = std::fs::read_to_string(&path).unwrap();
        assert!(full.starts_with(&format!("{HEADER}\n")));

        // Reopening an intact file changes nothing.
        let (file, done) = open_for_resume(&path).unwrap();
        drop(file);
        assert_eq!(done, vec![row(0, false), row(1, true), row(2, false)]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full);

        // Interrupted in the middle of row 3, and even right after its last
        // column but before the newline: both partial lines go.
        for cut in [full.len() - 15, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut file, done) = open_for_resume(&path).unwrap();
            assert_eq!(done, vec![row(0, false), row(1, true)]);
            writeln!(file, "{}", row(2, false).to_line()).unwrap();
            drop(file);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
        }

        // Interrupted while writing the header: rewritten.
        std::fs::write(&path, &HEADER[..10]).unwrap();
        let (_, done) = open_for_resume(&path).unwrap();
        assert!(done.is_empty());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}\n")
        );

        // Someone else's file: refused, untouched.
        let other = "a\tb\n1\t2\n";
        std::fs::write(&path, other).unwrap();
        assert!(matches!(
            open_for_resume(&path).unwrap_err(),
            TsvError::Header { .. }
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), other);

        // Damage in the middle is an error, not a reason to truncate.
        let damaged = full.replacen("\tmonte_carlo\t", "\t\t", 1);
        std::fs::write(&path, &damaged).unwrap();
        let err = open_for_resume(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
    }

    #[test]
    fn legacy_files_are_read_but_not_resumed() {
        // Files of the eleven-column format (before delta, class_a, n0_drawn)
        // still feed `report`; appending new rows to them would mix formats.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.tsv");
        let old_line = |r: &CertRow| {
            r.to_line()
                .split('\t')
                .take(LEGACY_COLUMNS)
                .collect::<Vec<_>>()
                .join("\t")
        };
        let rows = [row(0, false), row(1, true)];
        let text = format!(
            "{LEGACY_HEADER}\n{}\n{}\n",
            old_line(&rows[0]),
            old_line(&rows[1])
        );
        std::fs::write(&path, &text).unwrap();
        let read = read_tsv(&path).unwrap();
        assert_eq!(read.len(), 2);
        for (got, want) in read.iter().zip(&rows) {
            let legacy = CertRow {
                delta: None,
                class_a: None,
                n0_drawn: None,
                ..want.clone()
            };
            assert_eq!(got, &legacy);
        }
        // A current-format row in a legacy file is damage, not a legacy row.
        std::fs::write(&path, format!("{text}{}\n", rows[0].to_line())).unwrap();
        assert!(read_tsv(&path).unwrap_err().to_string().contains("line 4"));
        std::fs::write(&path, &text).unwrap();
        assert!(matches!(
            open_for_resume(&path).unwrap_err(),
            TsvError::Header { .. }
        ));
    }
}
