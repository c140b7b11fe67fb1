//! A latency-percentile plot as a self-contained SVG file.

use std::fmt::Write as _;

use crate::measure::Report;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Percentiles on a "nines" axis: 0, 90, 99, 99.9, 99.99 equally spaced.
fn nines(percentile: f64) -> f64 {
    let tail = (100.0 - percentile).max(0.001) / 100.0;
    (-tail.log10()).min(5.0)
}

/// Renders one line per report: latency (log scale) against percentile.
pub(crate) fn svg(title: &str, reports: &[Report]) -> String {
    let max_us = reports
        .iter()
        .flat_map(|r| r.spectrum.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let min_us = reports
        .iter()
        .flat_map(|r| r.spectrum.iter().map(|p| p.1))
        .fold(max_us, f64::min)
        .max(0.1);
    let (lo, hi) = (
        min_us.log10().floor(),
        max_us.log10().ceil().max(min_us.log10().floor() + 1.0),
    );
    let x = |p: f64| LEFT + nines(p) / 5.0 * (W - LEFT - RIGHT);
    let y = |us: f64| TOP + (hi - us.max(0.1).log10()) / (hi - lo) * (H - TOP - BOTTOM);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="15">{}</text>"#,
        LEFT,
        escape(title)
    );
    for (label, p) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
    ] {
        let px = x(p);
        let _ = writeln!(
            out,
            r##"<line x1="{px}" y1="{TOP}" x2="{px}" y2="{}" stroke="#ddd"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            out,
            r#"<text x="{px}" y="{}" text-anchor="middle">{label}</text>"#,
            H - BOTTOM + 18.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let us = 10f64.powf(decade);
        let py = y(us);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py}" x2="{}" y2="{py}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} us</text>"#,
            LEFT - 6.0,
            py + 4.0,
            format_us(us)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0
    );
    for (i, report) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = report
            .spectrum
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|&(p, us)| format!("{:.1},{:.1}", x(p), y(us)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 20.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/>"#,
            W - RIGHT + 16.0,
            ly
        );
        let label = format!(
            "{} {} ({:.0}/s)",
            report.system, report.runtime, report.calls_per_s
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 36.0,
            ly + 6.0,
            escape(&label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_us(us: f64) -> String {
    if us >= 1.0 {
        format!("{us:.0}")
    } else {
        format!("{us}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
