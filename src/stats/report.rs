//! The report: from the store's counts to tables whose small numbers are
//! hidden, with optional noise (THREAT-MODEL.md §16).
//!
//! [`Report::build`] lays the counts of a range of months out as tables:
//! chats coded per month; per field, months by value (with "Not coded");
//! and the configured cross-tables over the whole range. Every count is
//! one variable shared by the tables it appears in, so that
//! [`protect`](super::protect::protect) decides each once. Then, if
//! `noise_epsilon` is set, each shown count gets Laplace noise of scale
//! 1/epsilon, rounded and at least 0.

use rand_core::{OsRng, RngCore};
use serde::Serialize;

use super::protect::{Grid, Shown, protect};
use super::store::Counts;
use crate::config::Stats;
use crate::core::coding::Month;

/// The column of codings that left a field empty.
pub const NOT_CODED: &str = "Not coded";

/// One published count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "shown", rename_all = "snake_case")]
pub enum Cell {
    /// The count (with noise, if the report adds noise).
    Count { n: u64 },
    /// Between 1 and k−1.
    Small,
    /// Hidden so that a small count cannot be worked out.
    Hidden,
}

impl Cell {
    pub fn count(self) -> Option<u64> {
        match self {
            Cell::Count { n } => Some(n),
            _ => None,
        }
    }
}

/// A table with its totals: `cells` is `rows + 1` by `columns + 1`, the
/// last row the column totals, the last column the row totals.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub id: String,
    pub title: String,
    /// What the rows are (e.g. "Month").
    pub row_name: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<Cell>>,
}

impl Table {
    /// The total of column `j` (over all rows).
    pub fn column_total(&self, j: usize) -> Cell {
        self.cells[self.rows.len()][j]
    }
    pub fn grand_total(&self) -> Cell {
        self.cells[self.rows.len()][self.columns.len()]
    }
    /// A column's share of the grand total, in percent, when both are shown.
    pub fn share(&self, j: usize) -> Option<f64> {
        let total = self.grand_total().count()?;
        let n = self.column_total(j).count()?;
        (total > 0).then(|| 100.0 * n as f64 / total as f64)
    }
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub k: u64,
    /// Laplace noise's epsilon per count, if any.
    pub noise_epsilon: Option<f64>,
    /// Chats coded per month (rows: months; one column, the total).
    pub contacts: Table,
    /// Per field of the form: months by value.
    pub fields: Vec<Table>,
    /// The cross-tables over the whole range.
    pub cross: Vec<Table>,
}

/// Variables and their values, as tables are laid out.
#[derive(Default)]
struct Vars {
    values: Vec<u64>,
}

impl Vars {
    fn add(&mut self, n: u64) -> usize {
        self.values.push(n);
        self.values.len() - 1
    }
}

impl Report {
    /// Lays out, protects and (optionally) adds noise to `counts` of the
    /// months `from` to `to`.
    pub fn build(stats: &Stats, counts: &Counts, from: Month, to: Month) -> Report {
        let form = &stats.form;
        let months: Vec<Month> = from.through(to).collect();
        let mut vars = Vars::default();
        let mut grids = Vec::new();

        // Month totals and the grand total, shared by every table.
        let per_month: std::collections::BTreeMap<Month, u64> =
            counts.months.iter().copied().collect();
        let month_vars: Vec<usize> = months
            .iter()
            .map(|m| vars.add(per_month.get(m).copied().unwrap_or(0)))
            .collect();
        let grand: u64 = month_vars.iter().map(|v| vars.values[*v]).sum();
        let grand_var = vars.add(grand);
        let mut contacts_ids: Vec<Vec<usize>> = month_vars.iter().map(|v| vec![*v]).collect();
        contacts_ids.push(vec![grand_var]);
        grids.push(Grid {
            cells: contacts_ids.clone(),
        });

        // Per field: months × (values, not coded). Its column totals are
        // the field's totals, the margins of its cross-tables.
        let mut field_ids = Vec::new();
        let mut field_totals: Vec<Vec<usize>> = Vec::new();
        for field in form.fields() {
            let name = field.name.as_str();
            let mut ids: Vec<Vec<usize>> = Vec::new();
            let mut column_sums = vec![0u64; field.values.len() + 1];
            for (m, month) in months.iter().enumerate() {
                let mut row = Vec::new();
                let mut coded = 0;
                for (j, value) in field.values.iter().enumerate() {
                    let n = counts
                        .fields
                        .get(&(*month, name.to_owned(), value.as_str().to_owned()))
                        .copied()
                        .unwrap_or(0);
                    coded += n;
                    column_sums[j] += n;
                    row.push(vars.add(n));
                }
                let not_coded = vars.values[month_vars[m]].saturating_sub(coded);
                column_sums[field.values.len()] += not_coded;
                row.push(vars.add(not_coded));
                row.push(month_vars[m]);
                ids.push(row);
            }
            let totals: Vec<usize> = column_sums.iter().map(|n| vars.add(*n)).collect();
            let mut last = totals.clone();
            last.push(grand_var);
            ids.push(last);
            grids.push(Grid { cells: ids.clone() });
            field_ids.push(ids);
            field_totals.push(totals);
        }

        // Cross-tables over the range: (row values, not coded) × (column
        // values, not coded), margins the two fields' totals.
        let mut cross_ids = Vec::new();
        for &(r, c) in &stats.cross {
            let (rf, cf) = (&form.fields()[r], &form.fields()[c]);
            let (nr, nc) = (rf.values.len(), cf.values.len());
            let mut grid = vec![vec![0u64; nc + 1]; nr + 1];
            for (i, rv) in rf.values.iter().enumerate() {
                for (j, cv) in cf.values.iter().enumerate() {
                    grid[i][j] = months
                        .iter()
                        .map(|m| {
                            counts
                                .cross
                                .get(&(
                                    *m,
                                    rf.name.as_str().to_owned(),
                                    rv.as_str().to_owned(),
                                    cf.name.as_str().to_owned(),
                                    cv.as_str().to_owned(),
                                ))
                                .copied()
                                .unwrap_or(0)
                        })
                        .sum();
                }
            }
            // "Not coded" rows and columns follow from the margins.
            let row_totals: Vec<u64> = field_totals[r].iter().map(|v| vars.values[*v]).collect();
            let column_totals: Vec<u64> = field_totals[c].iter().map(|v| vars.values[*v]).collect();
            for i in 0..nr {
                grid[i][nc] = row_totals[i].saturating_sub(grid[i][..nc].iter().sum());
            }
            for j in 0..=nc {
                let above: u64 = (0..nr).map(|i| grid[i][j]).sum();
                grid[nr][j] = column_totals[j].saturating_sub(above);
            }
            let mut ids: Vec<Vec<usize>> = grid
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let mut ids: Vec<usize> = row.iter().map(|n| vars.add(*n)).collect();
                    ids.push(field_totals[r][i]);
                    ids
                })
                .collect();
            let mut last = field_totals[c].clone();
            last.push(grand_var);
            ids.push(last);
            grids.push(Grid { cells: ids.clone() });
            cross_ids.push(ids);
        }

        let shown = protect(&vars.values, &grids, stats.k);
        let noise = stats.noise_epsilon.map(|e| 1.0 / e);
        let published: Vec<Cell> = vars
            .values
            .iter()
            .zip(&shown)
            .map(|(&n, s)| match s {
                Shown::Count => Cell::Count {
                    n: noise.map_or(n, |scale| with_noise(n, scale)),
                },
                Shown::Small => Cell::Small,
                Shown::Hidden => Cell::Hidden,
            })
            .collect();
        let cells = |ids: &Vec<Vec<usize>>| -> Vec<Vec<Cell>> {
            ids.iter()
                .map(|row| row.iter().map(|v| published[*v]).collect())
                .collect()
        };
        let month_names: Vec<String> = months.iter().map(Month::to_string).collect();
        let contacts = Table {
            id: "contacts".into(),
            title: "Chats coded per month".into(),
            row_name: "Month".into(),
            rows: month_names.clone(),
            columns: Vec::new(),
            cells: cells(&contacts_ids),
        };
        let values_of = |i: usize| -> Vec<String> {
            form.fields()[i]
                .values
                .iter()
                .map(|v| v.as_str().to_owned())
                .chain(std::iter::once(NOT_CODED.to_owned()))
                .collect()
        };
        let fields = form
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| Table {
                id: format!("field-{}", i + 1),
                title: field.name.as_str().to_owned(),
                row_name: "Month".into(),
                rows: month_names.clone(),
                columns: values_of(i),
                cells: cells(&field_ids[i]),
            })
            .collect();
        let cross = stats
            .cross
            .iter()
            .zip(&cross_ids)
            .enumerate()
            .map(|(n, (&(r, c), ids))| Table {
                id: format!("cross-{}", n + 1),
                title: format!(
                    "{} by {}",
                    form.fields()[r].name.as_str(),
                    form.fields()[c].name.as_str()
                ),
                row_name: form.fields()[r].name.as_str().to_owned(),
                rows: values_of(r),
                columns: values_of(c),
                cells: cells(ids),
            })
            .collect();
        Report {
            from: from.to_string(),
            to: to.to_string(),
            k: stats.k,
            noise_epsilon: stats.noise_epsilon,
            contacts,
            fields,
            cross,
        }
    }

    /// Every table, in the order of the report.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        std::iter::once(&self.contacts)
            .chain(&self.fields)
            .chain(&self.cross)
    }

    /// The table of the field named `name`.
    pub fn field(&self, name: &str) -> Option<&Table> {
        self.fields.iter().find(|t| t.title == name)
    }
}

/// Most months one report covers.
pub const MAX_MONTHS: i32 = 120;

/// The range of a report from `--from`/`--to` (or `?from=&to=`): `to`
/// defaults to this month, `from` to 11 months before `to`.
pub fn months(from: Option<&str>, to: Option<&str>) -> Result<(Month, Month), String> {
    let parse = |key: &str, text: &str| {
        Month::parse(text).ok_or_else(|| format!("{key} {text:?}: use YYYY-MM, e.g. 2020-03"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let to = match to {
        Some(t) => parse("to", t)?,
        None => Month::of_unix(now).ok_or("the clock is before 2000")?,
    };
    let from = match from {
        Some(f) => parse("from", f)?,
        None => to.plus(-11).unwrap_or(to),
    };
    if from > to {
        return Err(format!("from {from} is after to {to}"));
    }
    if from.until(to) >= MAX_MONTHS {
        return Err(format!("a report covers at most {MAX_MONTHS} months"));
    }
    Ok((from, to))
}

/// `n` plus Laplace noise of `scale`, rounded, at least 0.
fn with_noise(n: u64, scale: f64) -> u64 {
    // u uniform in (-1/2, 1/2); the inverse of Laplace's distribution.
    let u = (OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
    let noise = -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln();
    (n as f64 + noise).round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatsConfig;

    fn stats() -> Stats {
        let config: StatsConfig = toml::from_str("store = \"x\"").unwrap();
        config.stats().unwrap()
    }

    #[test]
    fn noise_moves_counts_but_keeps_them_whole_and_not_negative() {
        let noisy: Vec<u64> = (0..200).map(|_| with_noise(50, 1.0)).collect();
        assert!(noisy.iter().any(|n| *n != 50));
        let mean = noisy.iter().sum::<u64>() as f64 / 200.0;
        assert!((mean - 50.0).abs() < 1.0, "{mean}");
        assert!((0..100).all(|_| with_noise(0, 5.0) < 1000));
    }

    #[test]
    fn an_empty_range_has_zeros_everywhere_and_hides_nothing() {
        let from = Month::parse("2020-01").unwrap();
        let report = Report::build(&stats(), &Counts::default(), from, from.plus(1).unwrap());
        assert_eq!(report.contacts.rows, ["2020-01", "2020-02"]);
        assert!(
            report
                .tables()
                .flat_map(|t| t.cells.iter().flatten())
                .all(|c| *c == Cell::Count { n: 0 })
        );
        assert_eq!(report.cross[0].title, "Age band by Type");
    }

    #[test]
    fn one_small_count_in_a_month_hides_a_few_cells_not_the_totals() {
        use crate::core::coding::{Coding, MAX_FORM_FIELDS};
        let stats = stats();
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::stats::Store::open(&dir.path().join("s")).unwrap();
        let month = Month::parse("2026-12").unwrap();
        let mut codings: Vec<Coding> = (0..60)
            .map(|i| {
                let mut values = [0u8; MAX_FORM_FIELDS];
                values[..3].copy_from_slice(&[1, [2, 3, 4][i % 3], if i % 3 == 0 { 2 } else { 1 }]);
                values[5] = 1;
                Coding { month, values }
            })
            .collect();
        let mut values = [0u8; MAX_FORM_FIELDS];
        values[1..3].copy_from_slice(&[2, 4]);
        codings.push(Coding { month, values });
        store.add(&stats.form, &stats.cross, &codings).unwrap();
        let report = Report::build(&stats, &store.counts(month, month).unwrap(), month, month);
        assert_eq!(report.contacts.grand_total(), Cell::Count { n: 61 });
        let hidden = report
            .tables()
            .flat_map(|t| t.cells.iter().flatten())
            .filter(|c| **c == Cell::Hidden)
            .count();
        assert!(hidden <= 12, "{hidden} cells hidden for one small count");
        assert_eq!(
            report.field("Age band").unwrap().column_total(1),
            Cell::Count { n: 21 }
        );
    }
}
