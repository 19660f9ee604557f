//! Small numbers: which counts of a report may be shown.
//!
//! Every count of the report is a variable; tables are grids of them with
//! row and column totals, and tables share totals (the month totals are
//! the row totals of every field's table, a field's totals the margins of
//! its cross-tables). Each line of a grid says "these cells add up to that
//! total". [`protect`] decides, for all tables at once:
//!
//! 1. primary: a count from 1 to k−1 is shown as "<k" (0 is shown);
//! 2. secondary: a line with exactly one hidden count would give it away by
//!    subtraction, so the smallest other count of that line (preferring a
//!    cell to a total) is hidden too, until no line has exactly one;
//! 3. the audit: for every hidden count, the smallest and largest value it
//!    can take given everything shown (the lines, counts ≥ 0, "<k" between
//!    1 and k−1) are found by linear programming ([`microlp`]). Where they
//!    are less than 1 apart the count could be worked out, so a cycle of
//!    more cells is hidden through it, and the audit runs again.
//!
//! What comes out: each variable is shown, "<k" or hidden.

use std::collections::BTreeSet;

use microlp::{ComparisonOp, OptimizationDirection, Problem};

/// How a count is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The count itself.
    Count,
    /// Below k: shown as "<k".
    Small,
    /// Hidden so that a small count cannot be worked out.
    Hidden,
}

/// One table: a grid of variable ids, `rows + 1` by `columns + 1`, whose
/// last row holds the column totals and last column the row totals. A
/// grid whose rows have no cells (`columns` 0) has only the total column.
#[derive(Debug, Clone)]
pub struct Grid {
    pub cells: Vec<Vec<usize>>,
}

/// A position in a grid: row, column.
type At = (usize, usize);

impl Grid {
    /// Each line: its cells and its total.
    fn lines(&self) -> Vec<(Vec<At>, At)> {
        let rows = self.cells.len().saturating_sub(1);
        let columns = self.cells.first().map_or(0, |r| r.len().saturating_sub(1));
        let mut lines = Vec::new();
        if columns > 0 {
            for i in 0..=rows {
                lines.push(((0..columns).map(|j| (i, j)).collect(), (i, columns)));
            }
        }
        for j in 0..=columns {
            lines.push(((0..rows).map(|i| (i, j)).collect(), (rows, j)));
        }
        lines
    }
}

/// Decides how each of `values` is shown, given the tables over them.
pub fn protect(values: &[u64], grids: &[Grid], k: u64) -> Vec<Shown> {
    let mut shown: Vec<Shown> = values
        .iter()
        .map(|&v| {
            if v > 0 && v < k {
                Shown::Small
            } else {
                Shown::Count
            }
        })
        .collect();
    // Bounded: every round hides at least one more count, or stops.
    for _ in 0..=values.len() {
        complete_lines(values, grids, &mut shown);
        match pinned(values, grids, k, &shown) {
            None => return shown,
            Some(var) => {
                if !hide_cycle_through(var, values, grids, &mut shown) {
                    // No cycle is left to hide: hide everything in its tables.
                    for grid in grids
                        .iter()
                        .filter(|g| g.cells.iter().flatten().any(|v| *v == var))
                    {
                        for &v in grid.cells.iter().flatten() {
                            if shown[v] == Shown::Count {
                                shown[v] = Shown::Hidden;
                            }
                        }
                    }
                }
            }
        }
    }
    shown
}

fn hidden(s: Shown) -> bool {
    s != Shown::Count
}

/// Step 2: no line with exactly one hidden count.
fn complete_lines(values: &[u64], grids: &[Grid], shown: &mut [Shown]) {
    loop {
        let mut changed = false;
        for grid in grids {
            for (cells, total) in grid.lines() {
                let all: Vec<usize> = cells
                    .iter()
                    .chain(std::iter::once(&total))
                    .map(|&(i, j)| grid.cells[i][j])
                    .collect();
                let distinct: BTreeSet<usize> = all.iter().copied().collect();
                let hidden_count = distinct.iter().filter(|v| hidden(shown[**v])).count();
                if hidden_count != 1 {
                    continue;
                }
                // A cell before the total, a count before a zero (a hidden
                // zero is soon given away by a total of zero), then the
                // smallest.
                let total_var = grid.cells[total.0][total.1];
                let pick = distinct
                    .iter()
                    .filter(|v| !hidden(shown[**v]))
                    .min_by_key(|v| (**v == total_var, values[**v] == 0, values[**v], **v));
                if let Some(&v) = pick {
                    shown[v] = Shown::Hidden;
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
    }
}

/// Step 3: a hidden count whose range, given what is shown, is narrower
/// than 1; `None` when every hidden count keeps a range.
fn pinned(values: &[u64], grids: &[Grid], k: u64, shown: &[Shown]) -> Option<usize> {
    let hidden_vars: Vec<usize> = (0..values.len()).filter(|v| hidden(shown[*v])).collect();
    if hidden_vars.is_empty() {
        return None;
    }
    let mut constraints: Vec<(Vec<(usize, f64)>, f64)> = Vec::new();
    for grid in grids {
        for (cells, total) in grid.lines() {
            if cells.is_empty() {
                continue;
            }
            let mut terms: std::collections::BTreeMap<usize, f64> = Default::default();
            for &(i, j) in &cells {
                *terms.entry(grid.cells[i][j]).or_default() += 1.0;
            }
            *terms.entry(grid.cells[total.0][total.1]).or_default() -= 1.0;
            let mut constant = 0.0;
            let mut vars = Vec::new();
            for (v, c) in terms {
                if c == 0.0 {
                    continue;
                }
                if hidden(shown[v]) {
                    vars.push((v, c));
                } else {
                    constant -= c * values[v] as f64;
                }
            }
            if !vars.is_empty() {
                constraints.push((vars, constant));
            }
        }
    }
    for &target in &hidden_vars {
        let mut range = [0.0f64; 2];
        for (n, direction) in [
            OptimizationDirection::Minimize,
            OptimizationDirection::Maximize,
        ]
        .into_iter()
        .enumerate()
        {
            let mut problem = Problem::new(direction);
            let ids: std::collections::BTreeMap<usize, microlp::Variable> = hidden_vars
                .iter()
                .map(|&v| {
                    let bounds = match shown[v] {
                        Shown::Small => (1.0, (k - 1) as f64),
                        _ => (0.0, f64::INFINITY),
                    };
                    (
                        v,
                        problem.add_var(if v == target { 1.0 } else { 0.0 }, bounds),
                    )
                })
                .collect();
            for (vars, constant) in &constraints {
                let terms: Vec<(microlp::Variable, f64)> =
                    vars.iter().map(|(v, c)| (ids[v], *c)).collect();
                problem.add_constraint(&terms[..], ComparisonOp::Eq, *constant);
            }
            match problem.solve() {
                Ok(outcome) => match outcome.into_solution() {
                    Ok(solution) => range[n] = solution.objective(),
                    Err(_) => return Some(target),
                },
                // Unbounded above is a range; anything else is treated
                // as pinned, so that more is hidden rather than less.
                Err(microlp::Error::Unbounded) => range[n] = f64::INFINITY,
                Err(_) => return Some(target),
            }
        }
        if range[1] - range[0] < 1.0 - 1e-6 {
            return Some(target);
        }
    }
    None
}

/// What hiding a total costs, over its count, when choosing a rectangle.
const MARGIN_COST: u64 = 1_000_000;
/// What hiding a zero costs: little protection, and soon given away.
const ZERO_COST: u64 = 1_000;

/// Hides the cheapest rectangle through `var` in one of its grids: `var`
/// at (i, j), and (i, j'), (i', j), (i', j') for the i', j' whose shown
/// counts add up to the least. Returns false if every such cell is hidden.
fn hide_cycle_through(var: usize, values: &[u64], grids: &[Grid], shown: &mut [Shown]) -> bool {
    let mut best: Option<(u64, Vec<usize>)> = None;
    for grid in grids {
        let rows = grid.cells.len();
        let columns = grid.cells.first().map_or(0, Vec::len);
        for i in 0..rows {
            for j in 0..columns {
                if grid.cells[i][j] != var {
                    continue;
                }
                for i2 in (0..rows).filter(|r| *r != i) {
                    for j2 in (0..columns).filter(|c| *c != j) {
                        let corners = [(i, j2), (i2, j), (i2, j2)];
                        let new: Vec<(usize, bool)> = corners
                            .iter()
                            .map(|&(r, c)| (grid.cells[r][c], r + 1 == rows || c + 1 == columns))
                            .filter(|(v, _)| !hidden(shown[*v]))
                            .collect();
                        if new.is_empty() {
                            continue;
                        }
                        // Cells before totals, counts before zeros, small
                        // before large: hide as little as will do.
                        let cost = new
                            .iter()
                            .map(|&(v, total)| {
                                values[v]
                                    + 1
                                    + if total { MARGIN_COST } else { 0 }
                                    + if values[v] == 0 { ZERO_COST } else { 0 }
                            })
                            .sum();
                        let new: Vec<usize> = new.into_iter().map(|(v, _)| v).collect();
                        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                            best = Some((cost, new));
                        }
                    }
                }
            }
        }
    }
    match best {
        Some((_, new)) => {
            for v in new {
                shown[v] = Shown::Hidden;
            }
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×3 table with totals, as variables 0.. in row order.
    fn table(cells: [[u64; 3]; 2]) -> (Vec<u64>, Vec<Grid>) {
        let mut values = Vec::new();
        let mut ids = vec![vec![0; 4]; 3];
        for i in 0..2 {
            for j in 0..3 {
                ids[i][j] = values.len();
                values.push(cells[i][j]);
            }
            ids[i][3] = values.len();
            values.push(cells[i].iter().sum());
        }
        for j in 0..3 {
            ids[2][j] = values.len();
            values.push(cells[0][j] + cells[1][j]);
        }
        ids[2][3] = values.len();
        values.push(cells.iter().flatten().sum());
        (values, vec![Grid { cells: ids }])
    }

    #[test]
    fn a_small_cell_takes_others_with_it_and_none_can_be_worked_out() {
        let (values, grids) = table([[3, 40, 25], [30, 50, 20]]);
        let shown = protect(&values, &grids, 10);
        assert_eq!(shown[0], Shown::Small);
        assert!(shown.iter().filter(|s| **s == Shown::Hidden).count() >= 3);
        assert_eq!(pinned(&values, &grids, 10, &shown), None);
    }

    #[test]
    fn nothing_is_hidden_when_nothing_is_small() {
        let (values, grids) = table([[30, 40, 25], [30, 0, 20]]);
        assert!(
            protect(&values, &grids, 10)
                .iter()
                .all(|s| *s == Shown::Count)
        );
    }

    #[test]
    fn two_small_cells_at_their_bound_are_not_left_pinned() {
        // 9 and 9 in one row: each is "<10", and a naive pattern would
        // let the bounds give both away.
        let (values, grids) = table([[9, 9, 40], [30, 12, 20]]);
        let shown = protect(&values, &grids, 10);
        assert_eq!(pinned(&values, &grids, 10, &shown), None);
    }
}
