//! The run history ([`backoffice::history`]) as inline SVG bar charts:
//! runs, items and failures per hour over the last day and per day over
//! the last month. No script and no outside resource (the pages' policy
//! forbids both): each bar carries a `<title>` a browser shows on hover,
//! and each chart a caption with its total and peak, so the numbers are
//! there without the picture too. Pure functions of the history; no
//! repository, no reply.

use std::fmt::Write;

use backoffice::clock;
use backoffice::history::{Bucket, History};

/// Width of one bar's slot and the bar in it, in the SVG's units.
const SLOT: usize = 10;
const BAR: usize = 8;
/// Height of the plot area, and of the whole picture.
const PLOT: u64 = 50;
const HEIGHT: u64 = 56;

/// Which figure of a bucket a chart shows.
#[derive(Clone, Copy)]
enum Measure {
    Runs,
    Items,
    Failures,
}

impl Measure {
    fn of(self, b: &Bucket) -> u64 {
        match self {
            Measure::Runs => b.runs,
            Measure::Items => b.items,
            Measure::Failures => b.failures,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Measure::Runs => "Runs",
            Measure::Items => "Items",
            Measure::Failures => "Failures",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Measure::Runs => "c-runs",
            Measure::Items => "c-items",
            Measure::Failures => "c-fail",
        }
    }
}

/// The history section of a status page: two rows of three charts.
pub fn section(h: &History, now: i64) -> String {
    let mut out = String::from("<h2>History</h2>\n");
    if h.is_empty() {
        out.push_str("<p class=\"dim\" id=\"history-none\">No runs recorded yet.</p>\n");
        return out;
    }
    for (span, per, buckets) in [
        ("the last 24 hours", "hour", h.hourly(now)),
        ("the last 31 days", "day", h.daily(now)),
    ] {
        let _ = writeln!(out, "<div class=\"charts\" id=\"history-{per}\">");
        for m in [Measure::Runs, Measure::Items, Measure::Failures] {
            out.push_str(&chart(m, per, span, &buckets));
        }
        out.push_str("</div>\n");
    }
    out
}

/// One bar chart.
fn chart(m: Measure, per: &str, span: &str, buckets: &[Bucket]) -> String {
    let total: u64 = buckets.iter().map(|b| m.of(b)).fold(0, u64::saturating_add);
    let peak = buckets.iter().map(|b| m.of(b)).max().unwrap_or(0);
    let width = buckets.len() * SLOT;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg viewBox=\"0 0 {width} {HEIGHT}\" preserveAspectRatio=\"none\" role=\"img\" \
aria-label=\"{} per {per} over {span}: {total} in all\">",
        m.name()
    );
    let _ = write!(
        svg,
        "<line x1=\"0\" y1=\"{PLOT}\" x2=\"{width}\" y2=\"{PLOT}\" class=\"axis\"/>"
    );
    for (i, b) in buckets.iter().enumerate() {
        let v = m.of(b);
        // At least one unit high when non-zero, so a single run shows.
        let h = if peak == 0 || v == 0 {
            0
        } else {
            (v.saturating_mul(PLOT) / peak).max(1)
        };
        let when = if per == "hour" {
            format!("{} UTC", clock::format_utc(b.start))
        } else {
            clock::format_utc(b.start)
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{BAR}\" height=\"{h}\" class=\"{}\"><title>{when}: {v}</title></rect>",
            i * SLOT + (SLOT - BAR) / 2,
            PLOT - h,
            m.class()
        );
    }
    svg.push_str("</svg>");
    format!(
        "<figure><figcaption>{} per {per}, {span}: <b>{total}</b> (peak {peak})</figcaption>{svg}</figure>\n",
        m.name()
    )
}
