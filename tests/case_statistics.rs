//! The case statistics report as a reader with a solver sees it: for
//! small helplines' random seasons, every hidden cell of every published
//! table, given its row, column and grand totals and what else is shown,
//! can still take more than one value.

use std::sync::Arc;

use fluister::config::StatsConfig;
use fluister::core::coding::{Coding, MAX_FORM_FIELDS, Month};
use fluister::stats::{Format, Report, Store, render};
use microlp::{ComparisonOp, OptimizationDirection, Problem};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;

/// A season of `months` months with `per_month` chats each, values drawn
/// with a skew so that some cells are large and many are small.
fn season(
    seed: u64,
    months: i32,
    per_month: usize,
) -> (tempfile::TempDir, fluister::config::Stats, Month) {
    let dir = tempfile::tempdir().unwrap();
    let config: StatsConfig = toml::from_str(&format!(
        "store = {:?}\ncross = [[\"Age band\", \"Type\"], [\"Contact made by\", \"Situation\"]]",
        dir.path().join("stats.sqlite3").display().to_string()
    ))
    .unwrap();
    let stats = config.stats().unwrap();
    let form = Arc::clone(&stats.form);
    let mut store = Store::open(stats.store.as_ref().unwrap()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let first = Month::parse("2021-01").unwrap();
    for m in 0..months {
        let codings: Vec<Coding> = (0..per_month)
            .map(|_| {
                let mut values = [0u8; MAX_FORM_FIELDS];
                for (i, field) in form.fields().iter().enumerate() {
                    let n = field.values.len() as u64 + 1;
                    // Squaring a uniform draw favours the first values; 0
                    // (not coded) comes now and then.
                    let r = rng.next_u64() % 1000;
                    values[i] = ((r * r / 1000) * n / 1000) as u8;
                    values[i] = (values[i] + 1) % (n as u8);
                }
                Coding {
                    month: first.plus(m).unwrap(),
                    values,
                }
            })
            .collect();
        store.add(&form, &stats.cross, &codings).unwrap();
    }
    (dir, stats, first)
}

/// A published cell: Some(count), or the bounds a reader knows.
enum Known {
    Count(f64),
    Between(f64, f64),
}

fn known(cell: &Value, k: f64) -> Known {
    match cell["shown"].as_str().unwrap() {
        "count" => Known::Count(cell["n"].as_f64().unwrap()),
        "small" => Known::Between(1.0, k - 1.0),
        "hidden" => Known::Between(0.0, f64::INFINITY),
        other => panic!("unknown cell {other}"),
    }
}

/// For one table: the range of each hidden cell given the table's lines.
/// Returns the cells whose range is narrower than 1 (worked out).
fn recoverable(table: &Value, k: f64) -> Vec<(usize, usize, f64, f64)> {
    let cells: Vec<Vec<Known>> = table["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|c| known(c, k))
                .collect()
        })
        .collect();
    let rows = cells.len();
    let columns = cells[0].len();
    let hidden: Vec<(usize, usize)> = (0..rows)
        .flat_map(|i| (0..columns).map(move |j| (i, j)))
        .filter(|&(i, j)| matches!(cells[i][j], Known::Between(..)))
        .collect();
    // Lines: each row's cells add up to its last; each column's to its last.
    let mut lines: Vec<Vec<((usize, usize), f64)>> = Vec::new();
    if columns > 1 {
        for i in 0..rows {
            let mut line: Vec<_> = (0..columns - 1).map(|j| ((i, j), 1.0)).collect();
            line.push(((i, columns - 1), -1.0));
            lines.push(line);
        }
    }
    for j in 0..columns {
        let mut line: Vec<_> = (0..rows - 1).map(|i| ((i, j), 1.0)).collect();
        line.push(((rows - 1, j), -1.0));
        lines.push(line);
    }
    let mut worked_out = Vec::new();
    for &target in &hidden {
        let mut range = [0.0; 2];
        for (n, direction) in [
            OptimizationDirection::Minimize,
            OptimizationDirection::Maximize,
        ]
        .into_iter()
        .enumerate()
        {
            let mut problem = Problem::new(direction);
            let vars: std::collections::HashMap<(usize, usize), microlp::Variable> = hidden
                .iter()
                .map(|&(i, j)| {
                    let Known::Between(lo, hi) = cells[i][j] else {
                        unreachable!()
                    };
                    let objective = if (i, j) == target { 1.0 } else { 0.0 };
                    ((i, j), problem.add_var(objective, (lo, hi)))
                })
                .collect();
            for line in &lines {
                let mut terms = Vec::new();
                let mut constant = 0.0;
                for &(cell, c) in line {
                    match &cells[cell.0][cell.1] {
                        Known::Count(v) => constant -= c * v,
                        Known::Between(..) => terms.push((vars[&cell], c)),
                    }
                }
                if !terms.is_empty() {
                    problem.add_constraint(&terms[..], ComparisonOp::Eq, constant);
                }
            }
            range[n] = match problem.solve() {
                Ok(outcome) => outcome.into_solution().unwrap().objective(),
                Err(microlp::Error::Unbounded) => f64::INFINITY,
                Err(e) => panic!(
                    "{}: the published table is not consistent: {e}",
                    table["title"]
                ),
            };
        }
        if range[1] - range[0] < 1.0 - 1e-6 {
            worked_out.push((target.0, target.1, range[0], range[1]));
        }
    }
    worked_out
}

#[test]
fn no_hidden_cell_of_a_small_helplines_report_can_be_worked_out_from_the_totals() {
    let mut hidden_cells = 0;
    for seed in 0..6 {
        let (_dir, stats, first) = season(seed, 3, 25 + 5 * seed as usize);
        let last = first.plus(2).unwrap();
        let counts = Store::open_read_only(stats.store.as_ref().unwrap())
            .unwrap()
            .counts(first, last)
            .unwrap();
        let report = Report::build(&stats, &counts, first, last);
        let json: Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        let tables = std::iter::once(&json["contacts"])
            .chain(json["fields"].as_array().unwrap())
            .chain(json["cross"].as_array().unwrap());
        for table in tables {
            // Every count below k is hidden as "<k" (counts of 0 are shown).
            let k = json["k"].as_f64().unwrap();
            for cell in table["cells"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap())
            {
                if cell["shown"] == "count" {
                    let n = cell["n"].as_f64().unwrap();
                    assert!(n == 0.0 || n >= k, "{}: {n} shown", table["title"]);
                } else {
                    hidden_cells += 1;
                }
            }
            let worked_out = recoverable(table, k);
            assert!(
                worked_out.is_empty(),
                "seed {seed}, {}: cells (row, column, min, max) {worked_out:?} can be worked out",
                table["title"]
            );
        }
    }
    assert!(
        hidden_cells > 100,
        "the seasons had small cells to hide: {hidden_cells}"
    );
}

#[test]
fn small_cells_are_shown_as_below_k_in_every_format() {
    let (_dir, stats, first) = season(99, 2, 20);
    let last = first.plus(1).unwrap();
    let counts = Store::open_read_only(stats.store.as_ref().unwrap())
        .unwrap()
        .counts(first, last)
        .unwrap();
    let report = Report::build(&stats, &counts, first, last);
    for format in [Format::Table, Format::Csv, Format::Html] {
        let text = render(&report, format);
        let small = if format == Format::Html {
            "&lt;10"
        } else {
            "<10"
        };
        assert!(text.contains(small), "{format:?}");
    }
    let svg = render(&report, Format::Svg);
    assert!(svg.starts_with("<svg") && svg.contains("Hidden or below 10"));
}
