//! One table type for every Markdown and CSV table the library writes (results, matrices,
//! aggregates, frontiers, benchmarks): typed columns with a header and an alignment, rows of
//! cells already formatted by the caller. Depends on nothing else in the crate, so every module
//! may use it.

/// How a column's cells are aligned in Markdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text (names, settings).
    Left,
    /// Numbers.
    Right,
    /// Flags (yes/no).
    Center,
}

/// A column: its header and alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The header, as written in both formats.
    pub header: String,
    /// Alignment in Markdown.
    pub align: Align,
}

impl Column {
    /// A left-aligned column.
    pub fn text(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            align: Align::Left,
        }
    }

    /// A right-aligned column.
    pub fn number(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            align: Align::Right,
        }
    }

    /// A centred column.
    pub fn flag(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            align: Align::Center,
        }
    }
}

/// A table of formatted cells, rendered as Markdown or CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: impl IntoIterator<Item = Column>) -> Self {
        Self {
            columns: columns.into_iter().collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. A row with a number of cells other than the columns' is a bug of the
    /// caller (tables are built by code, never read from input), hence the assertion.
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(
            row.len(),
            self.columns.len(),
            "a table row has one cell per column"
        );
        self.rows.push(row);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// GitHub-flavoured Markdown: a header row, the alignment row, one line per row; a `|` in a
    /// cell is escaped.
    pub fn markdown(&self) -> String {
        let line = |cells: &mut dyn Iterator<Item = String>| {
            let mut s = String::from("|");
            for c in cells {
                s.push_str(&format!(" {} |", c.replace('|', "\\|")));
            }
            s.push('\n');
            s
        };
        let mut s = line(&mut self.columns.iter().map(|c| c.header.clone()));
        s.push('|');
        for c in &self.columns {
            s.push_str(match c.align {
                Align::Left => "---|",
                Align::Right => "---:|",
                Align::Center => ":---:|",
            });
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&line(&mut r.iter().cloned()));
        }
        s
    }

    /// CSV (RFC 4180 quoting, by the `csv` crate): the headers, then the rows.
    pub fn csv(&self) -> String {
        let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
        // Writing to a Vec cannot fail; a failure here would be a bug of the csv crate.
        w.write_record(self.columns.iter().map(|c| c.header.as_str()))
            .expect("CSV into memory");
        for r in &self.rows {
            w.write_record(r).expect("CSV into memory");
        }
        let bytes = w.into_inner().expect("CSV into memory");
        String::from_utf8(bytes).expect("CSV of UTF-8 cells is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new([
            Column::text("method"),
            Column::number("mAP"),
            Column::flag("ok"),
        ]);
        t.push(vec!["bct".into(), "0.5000".into(), "yes".into()]);
        t.push(vec!["a|b, c".into(), "0.2500".into(), "no".into()]);
        t
    }

    #[test]
    fn markdown_has_alignment_and_escapes_bars() {
        assert_eq!(
            sample().markdown(),
            "| method | mAP | ok |\n|---|---:|:---:|\n| bct | 0.5000 | yes |\n\
             | a\\|b, c | 0.2500 | no |\n"
        );
    }

    #[test]
    fn csv_quotes_commas() {
        assert_eq!(
            sample().csv(),
            "method,mAP,ok\nbct,0.5000,yes\n\"a|b, c\",0.2500,no\n"
        );
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn a_short_row_is_a_bug() {
        sample().push(vec!["x".into()]);
    }
}
