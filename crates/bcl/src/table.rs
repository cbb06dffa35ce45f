//! One table type for every Markdown and CSV table the library writes (results, matrices,
//! aggregates, frontiers, benchmarks): typed columns with a header and an alignment, rows of
//! typed cells (text, mean ± standard deviation, an estimate with its interval) that the table
//! formats, so that every "mean ± std" of every stage is written by one function. Depends on
//! nothing else in the crate, so every module may use it.

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

/// One cell of a table: text, or a figure over seeds that the table formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text written as it is (names, settings, single figures the caller formatted).
    Text(String),
    /// `mean ± std`, both with `digits` decimals; as percentages (`12.50% ± 0.40`) when
    /// `percent`, and followed by ` (n)` when `count` is given.
    MeanStd {
        /// The mean.
        mean: f64,
        /// The standard deviation.
        std: f64,
        /// Decimals of both.
        digits: usize,
        /// Whether both are shares written as percentages.
        percent: bool,
        /// The number of values, written after the figure.
        count: Option<usize>,
    },
    /// `estimate [low, high]` with `digits` decimals, signed (`+0.0100`) when `signed`;
    /// the estimate alone when the interval is undefined (NaN bounds: one value); followed by
    /// ` (note)` when a note is given.
    Interval {
        /// The estimate.
        estimate: f64,
        /// The interval's lower bound.
        low: f64,
        /// The interval's upper bound.
        high: f64,
        /// Decimals of all three.
        digits: usize,
        /// Whether each number carries its sign.
        signed: bool,
        /// What the interval says (a verdict), written after it.
        note: Option<String>,
    },
}

impl Cell {
    /// `mean ± std` with `digits` decimals.
    pub fn mean_std(mean: f64, std: f64, digits: usize) -> Self {
        Self::MeanStd {
            mean,
            std,
            digits,
            percent: false,
            count: None,
        }
    }

    /// Shares as `mean% ± std` with two decimals.
    pub fn percent_mean_std(mean: f64, std: f64) -> Self {
        Self::MeanStd {
            mean,
            std,
            digits: 2,
            percent: true,
            count: None,
        }
    }

    /// `estimate [low, high]` with `digits` decimals, unsigned and without a note.
    pub fn interval(estimate: f64, low: f64, high: f64, digits: usize) -> Self {
        Self::Interval {
            estimate,
            low,
            high,
            digits,
            signed: false,
            note: None,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(s) => f.write_str(s),
            Cell::MeanStd {
                mean,
                std,
                digits: d,
                percent,
                count,
            } => {
                let (k, unit) = if *percent { (100.0, "%") } else { (1.0, "") };
                write!(f, "{:.d$}{unit} ± {:.d$}", k * mean, k * std)?;
                match count {
                    Some(n) => write!(f, " ({n})"),
                    None => Ok(()),
                }
            }
            Cell::Interval {
                estimate,
                low,
                high,
                digits: d,
                signed,
                note,
            } => {
                match (signed, low.is_nan()) {
                    (false, true) => write!(f, "{estimate:.d$}")?,
                    (false, false) => write!(f, "{estimate:.d$} [{low:.d$}, {high:.d$}]")?,
                    (true, true) => write!(f, "{estimate:+.d$}")?,
                    (true, false) => write!(f, "{estimate:+.d$} [{low:+.d$}, {high:+.d$}]")?,
                }
                match note {
                    Some(n) => write!(f, " ({n})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_string())
    }
}

/// A table of typed cells, rendered as Markdown or CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<Cell>>,
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
    pub fn push<C: Into<Cell>>(&mut self, row: Vec<C>) {
        let row: Vec<Cell> = row.into_iter().map(Into::into).collect();
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
            s.push_str(&line(&mut r.iter().map(Cell::to_string)));
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
            w.write_record(r.iter().map(Cell::to_string))
                .expect("CSV into memory");
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
        t.push(vec!["bct", "0.5000", "yes"]);
        t.push(vec!["a|b, c", "0.2500", "no"]);
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
    fn figures_are_formatted_by_their_cell() {
        let cells = [
            (Cell::mean_std(0.5, 0.01234, 4), "0.5000 ± 0.0123"),
            (Cell::percent_mean_std(0.125, 0.004), "12.50% ± 0.40"),
            (
                Cell::MeanStd {
                    mean: 0.25,
                    std: 0.0,
                    digits: 3,
                    percent: false,
                    count: Some(5),
                },
                "0.250 ± 0.000 (5)",
            ),
            (Cell::interval(0.5, 0.25, 0.75, 2), "0.50 [0.25, 0.75]"),
            (Cell::interval(0.5, f64::NAN, f64::NAN, 2), "0.50"),
            (
                Cell::Interval {
                    estimate: 0.01,
                    low: -0.002,
                    high: 0.022,
                    digits: 4,
                    signed: true,
                    note: Some("within the seed spread".into()),
                },
                "+0.0100 [-0.0020, +0.0220] (within the seed spread)",
            ),
        ];
        for (c, want) in cells {
            assert_eq!(c.to_string(), want);
        }
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn a_short_row_is_a_bug() {
        sample().push(vec!["x"]);
    }
}
