//! `--from-jsonl FILE`: one JSON object per line, in the shape of
//! [`ImportRecord`] (for any store that kept SHA-256 digests). A line that
//! is not such an object is refused with serde's reason; blank lines are
//! skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;

use anyhow::Context;

use crate::authority::ImportRow;
use crate::domain::import::ImportRecord;

pub struct JsonlSource {
    lines: Lines<BufReader<File>>,
    /// Lines read so far, for each row's `line N`.
    line: u64,
    total: u64,
}

impl JsonlSource {
    /// Opens the file, counting its rows first so that progress has a total.
    pub fn open(path: &Path) -> anyhow::Result<JsonlSource> {
        let open = || File::open(path).with_context(|| format!("cannot open {}", path.display()));
        let mut total = 0;
        for line in BufReader::new(open()?).lines() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if !line.trim().is_empty() {
                total += 1;
            }
        }
        Ok(JsonlSource {
            lines: BufReader::new(open()?).lines(),
            line: 0,
            total,
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Up to `size` rows; none at the end of the file.
    pub fn next_batch(&mut self, size: usize) -> anyhow::Result<Vec<ImportRow>> {
        let mut rows = Vec::with_capacity(size);
        while rows.len() < size {
            let Some(line) = self.lines.next() else {
                break;
            };
            let line = line.context("cannot read the JSON Lines file")?;
            self.line += 1;
            if line.trim().is_empty() {
                continue;
            }
            rows.push(ImportRow {
                source_ref: format!("line {}", self.line),
                record: serde_json::from_str::<ImportRecord>(&line)
                    .map_err(|e| format!("not an import row: {e}")),
                usage: Default::default(),
            });
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn rows_are_numbered_by_line_and_bad_lines_are_refused_with_the_reason() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, r#"{{"sha256": "ab", "owner_id": "u", "name": "a"}}"#).unwrap();
        writeln!(file).unwrap();
        writeln!(file, "not json").unwrap();
        writeln!(file, r#"{{"sha256": "cd", "owner_id": "u", "name": "b"}}"#).unwrap();
        let mut source = JsonlSource::open(file.path()).unwrap();
        assert_eq!(source.total(), 3);

        let first = source.next_batch(2).unwrap();
        let second = source.next_batch(2).unwrap();

        assert_eq!(first.len(), 2);
        assert_eq!(first[0].source_ref, "line 1");
        assert_eq!(first[0].record.as_ref().unwrap().name, "a");
        assert_eq!(first[1].source_ref, "line 3");
        assert!(
            first[1]
                .record
                .as_ref()
                .unwrap_err()
                .starts_with("not an import row")
        );
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].source_ref, "line 4");
        assert!(source.next_batch(2).unwrap().is_empty());
    }
}
