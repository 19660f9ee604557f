//! The report as text, CSV, JSON, SVG charts and one HTML page.
//!
//! Every format shows the same cells: a count, "<k" for a small count, or
//! "x" (hidden) for one hidden so that a small count cannot be worked out.
//! The charts draw only what the tables show: a month's hidden part is a
//! hatched segment, and a bar of a small count is not drawn at all.

use std::fmt::Write;

use super::report::{Cell, Report, Table};

/// The report's formats (`--format`, `?format=` on the admin listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Svg,
    Html,
}

impl Format {
    /// A format by its name, as `--format` takes it.
    pub fn parse(s: &str) -> Option<Format> {
        <Format as clap::ValueEnum>::from_str(s, false).ok()
    }

    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Svg => "image/svg+xml",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}

/// The report in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Csv => csv(report),
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        Format::Svg => charts_svg(report),
        Format::Html => html(report),
    }
}

fn cell_text(cell: Cell, k: u64) -> String {
    match cell {
        Cell::Count { n } => n.to_string(),
        Cell::Small => format!("<{k}"),
        Cell::Hidden => "x".into(),
    }
}

fn legend(report: &Report) -> String {
    let mut s = format!(
        "Counts below {k} are shown as \"<{k}\"; \"x\" is a count hidden so that none of those can be worked out.",
        k = report.k
    );
    if let Some(e) = report.noise_epsilon {
        let _ = write!(
            s,
            " Each shown count has Laplace noise (epsilon {e} per count), so totals need not add up."
        );
    }
    s
}

/// A field table's share of each value, as text ("–" where hidden).
fn share_cells(t: &Table) -> Vec<String> {
    (0..t.columns.len())
        .map(|j| t.share(j).map_or("–".into(), |p| format!("{p:.0}%")))
        .collect()
}

/// Header row and body rows of a table, as text cells, with totals.
fn text_rows(t: &Table, k: u64) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head = vec![t.row_name.clone()];
    head.extend(t.columns.iter().cloned());
    head.push("Total".into());
    let mut rows = Vec::new();
    for (i, row) in t.cells.iter().enumerate() {
        let name = t.rows.get(i).cloned().unwrap_or_else(|| "Total".into());
        let mut line = vec![name];
        line.extend(row.iter().map(|c| cell_text(*c, k)));
        rows.push(line);
    }
    (head, rows)
}

fn table(report: &Report) -> String {
    let mut out = format!(
        "Fluister case statistics, {} to {}\n{}\n",
        report.from,
        report.to,
        legend(report)
    );
    for t in report.tables() {
        let _ = write!(out, "\n{}\n", t.title);
        let (head, mut rows) = text_rows(t, report.k);
        if t.id.starts_with("field-") {
            let mut share_row = vec!["Share".to_owned()];
            share_row.extend(share_cells(t));
            share_row.push(String::new());
            rows.push(share_row);
        }
        let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    let pad = w.saturating_sub(c.chars().count());
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let _ = writeln!(out, "{}", line(&head));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(report: &Report) -> String {
    let mut out = String::from("table,row,column,count\n");
    for t in report.tables() {
        let (head, rows) = text_rows(t, report.k);
        for row in rows {
            for (j, value) in row.iter().enumerate().skip(1) {
                let _ = writeln!(
                    out,
                    "{},{},{},{}",
                    csv_field(&t.title),
                    csv_field(&row[0]),
                    csv_field(&head[j]),
                    csv_field(value)
                );
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colours with enough contrast on white, then grey for "not coded".
const PALETTE: &[&str] = &[
    "#1b6ca8", "#c0392b", "#2e8540", "#8e44ad", "#b9770e", "#117a8b", "#6c3483", "#7b7d7d",
    "#a04000", "#1a5276", "#4d5656", "#943126", "#196f3d", "#5b2c6f",
];

fn colour(j: usize, last: bool) -> &'static str {
    if last {
        "#b3b6b7"
    } else {
        PALETTE[j % PALETTE.len()]
    }
}

/// The field a chart is drawn from: by name, else the one at `fallback`.
fn chart_field<'a>(report: &'a Report, name: &str, fallback: usize) -> Option<&'a Table> {
    report
        .field(name)
        .or_else(|| report.fields.get(fallback))
        .or_else(|| report.fields.first())
}

/// One chart: its SVG and its size.
#[derive(Default)]
struct Chart {
    svg: String,
    width: f64,
    height: f64,
}

/// Contacts per month by type: one stacked bar per month.
fn contacts_by_type(report: &Report) -> Chart {
    let Some(t) = chart_field(report, "Type", 2) else {
        return Chart::default();
    };
    let months = t.rows.len().max(1);
    let (left, top, plot_h, bar_w, gap): (f64, f64, f64, f64, f64) =
        (60.0, 50.0, 260.0, 36.0, 18.0);
    let legend_w = 300.0;
    let width = left + months as f64 * (bar_w + gap) + 20.0 + legend_w;
    let legend_h = 24.0 + 20.0 * (t.columns.len() + 1) as f64;
    let height = (top + plot_h + 60.0).max(top + legend_h);
    let max = (0..t.rows.len())
        .filter_map(|i| t.cells[i][t.columns.len()].count())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let scale = plot_h / max;
    let title = format!(
        "Chats per month by {}, {} to {}",
        t.title.to_lowercase(),
        report.from,
        report.to
    );
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-labelledby="chart-type-title" font-family="sans-serif" font-size="12">
<title id="chart-type-title">{}</title>
<defs><pattern id="hidden-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#555555" stroke-width="2"/></pattern></defs>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{left}" y="24" font-size="15" font-weight="bold">{}</text>
"##,
        escape(&title),
        escape(&title)
    );
    let base = top + plot_h;
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{base}" x2="{:.0}" y2="{base}" stroke="#333333"/>"##,
        left + months as f64 * (bar_w + gap)
    );
    for tick in 0..=4 {
        let v = max * tick as f64 / 4.0;
        let y = base - v * scale;
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end">{v:.0}</text><line x1="{left}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#dddddd"/>"##,
            left - 6.0,
            y + 4.0,
            left + months as f64 * (bar_w + gap)
        );
    }
    for (i, month) in t.rows.iter().enumerate() {
        let x = left + gap / 2.0 + i as f64 * (bar_w + gap);
        let total = t.cells[i][t.columns.len()];
        let mut y = base;
        let mut drawn = 0;
        for (j, column) in t.columns.iter().enumerate() {
            if let Some(n) = t.cells[i][j].count().filter(|n| *n > 0) {
                let h = n as f64 * scale;
                y -= h;
                drawn += n;
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.1}" y="{y:.1}" width="{bar_w}" height="{h:.1}" fill="{}"><title>{}: {} {n}</title></rect>"##,
                    colour(j, j + 1 == t.columns.len()),
                    escape(month),
                    escape(column)
                );
            }
        }
        if let Some(n) = total.count()
            && n > drawn
        {
            let h = (n - drawn) as f64 * scale;
            y -= h;
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{bar_w}" height="{h:.1}" fill="url(#hidden-hatch)" stroke="#555555"><title>{}: hidden or small counts</title></rect>"##,
                escape(month)
            );
        }
        let label = cell_text(total, report.k);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x + bar_w / 2.0,
            y - 5.0,
            escape(&label),
            x + bar_w / 2.0,
            base + 16.0,
            escape(month)
        );
    }
    let lx = left + months as f64 * (bar_w + gap) + 20.0;
    for (j, column) in t.columns.iter().enumerate() {
        let y = top + 20.0 * j as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.0}" y="{y:.0}" width="14" height="14" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"##,
            colour(j, j + 1 == t.columns.len()),
            lx + 20.0,
            y + 11.0,
            escape(column)
        );
    }
    let y = top + 20.0 * t.columns.len() as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.0}" y="{y:.0}" width="14" height="14" fill="url(#hidden-hatch)" stroke="#555555"/><text x="{:.0}" y="{:.0}">Hidden or below {}</text>"##,
        lx + 20.0,
        y + 11.0,
        report.k
    );
    s.push_str("</svg>\n");
    Chart {
        svg: s,
        width,
        height,
    }
}

/// The age bands over the whole range: one horizontal bar each.
fn age_bands(report: &Report) -> Chart {
    let Some(t) = chart_field(report, "Age band", 1) else {
        return Chart::default();
    };
    let (left, top, bar_h, gap, plot_w): (f64, f64, f64, f64, f64) =
        (150.0, 50.0, 22.0, 10.0, 420.0);
    let height = top + t.columns.len() as f64 * (bar_h + gap) + 30.0;
    let width = left + plot_w + 120.0;
    let max = (0..t.columns.len())
        .filter_map(|j| t.column_total(j).count())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let title = format!("{}, {} to {}", t.title, report.from, report.to);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-labelledby="chart-age-title" font-family="sans-serif" font-size="12">
<title id="chart-age-title">{}</title>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="24" font-size="15" font-weight="bold">{}</text>
"##,
        escape(&title),
        escape(&title)
    );
    for (j, column) in t.columns.iter().enumerate() {
        let y = top + j as f64 * (bar_h + gap);
        let cell = t.column_total(j);
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 8.0,
            y + bar_h * 0.7,
            escape(column)
        );
        let mut label = cell_text(cell, report.k);
        if let Some(n) = cell.count() {
            let w = n as f64 / max * plot_w;
            let _ = writeln!(
                s,
                r##"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{}"><title>{}: {n}</title></rect>"##,
                colour(j, j + 1 == t.columns.len()),
                escape(column)
            );
            if let Some(p) = t.share(j) {
                label = format!("{n} ({p:.0}%)");
            }
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}">{}</text>"##,
                left + w + 6.0,
                y + bar_h * 0.7,
                escape(&label)
            );
        } else {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#444444">{}</text>"##,
                left + 6.0,
                y + bar_h * 0.7,
                escape(&label)
            );
        }
    }
    s.push_str("</svg>\n");
    Chart {
        svg: s,
        width,
        height,
    }
}

/// Both charts, one above the other, as one SVG document.
fn charts_svg(report: &Report) -> String {
    let (first, second) = (contacts_by_type(report), age_bands(report));
    let (w, h) = (
        first.width.max(second.width),
        first.height + second.height + 20.0,
    );
    // Nested <svg> elements keep each chart's own coordinates.
    let place = |svg: &str, y: f64| svg.replacen("<svg ", &format!("<svg y=\"{y:.0}\" "), 1);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{}{}</svg>\n",
        place(&first.svg, 0.0),
        place(&second.svg, first.height + 20.0)
    )
}

fn html_table(t: &Table, k: u64) -> String {
    let (head, rows) = text_rows(t, k);
    let mut s = format!(
        "<table id=\"{}\">\n<caption>{}</caption>\n<thead><tr>",
        escape(&t.id),
        escape(&t.title)
    );
    for h in &head {
        let _ = write!(s, "<th scope=\"col\">{}</th>", escape(h));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for row in &rows {
        let _ = write!(s, "<tr><th scope=\"row\">{}</th>", escape(&row[0]));
        for c in &row[1..] {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>\n");
    }
    if !t.columns.is_empty() && t.id.starts_with("field-") {
        s.push_str("<tr class=\"share\"><th scope=\"row\">Share</th>");
        for p in share_cells(t) {
            let _ = write!(s, "<td>{p}</td>");
        }
        s.push_str("<td></td></tr>\n");
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

fn html(report: &Report) -> String {
    let mut s = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Case statistics {from} to {to}</title>
<style>
body {{ font-family: sans-serif; margin: 2rem; color: #1a1a1a; max-width: 72rem; }}
table {{ border-collapse: collapse; margin: 1rem 0 2rem; }}
caption {{ text-align: left; font-weight: bold; padding: .3rem 0; }}
th, td {{ border: 1px solid #999; padding: .25rem .5rem; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; }}
thead th {{ background: #eef1f4; }}
tr.share td {{ font-style: italic; }}
figure {{ margin: 1rem 0 2rem; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<main>
<h1>Case statistics, {from} to {to}</h1>
<p>{legend}</p>
<h2>Charts</h2>
<figure>{chart1}</figure>
<figure>{chart2}</figure>
<h2>Tables</h2>
"#,
        from = escape(&report.from),
        to = escape(&report.to),
        legend = escape(&legend(report)),
        chart1 = contacts_by_type(report).svg,
        chart2 = age_bands(report).svg,
    );
    for t in report.tables() {
        s.push_str(&html_table(t, report.k));
    }
    s.push_str("</main>\n</body>\n</html>\n");
    s
}
