//! `spendgate usage`: reports as plain-text tables.

use std::fmt::Write as _;

use chrono::SecondsFormat;

use super::{LimitStatus, Listing, Report};
use crate::domain::money::format_usd;
use crate::domain::{Metric, Mode};
use crate::quota::ledger::Totals;

/// Left-aligned first column, right-aligned numbers, two spaces between columns.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "  {cell:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied(), &mut out);
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

fn amount(metric: Metric, raw: i64) -> String {
    match metric {
        Metric::CostUsd => format_usd(raw),
        _ => raw.to_string(),
    }
}

fn limit_row(s: &LimitStatus) -> Vec<String> {
    let l = &s.limit;
    let mut name = format!("{} {}", l.window.as_str(), l.metric.as_str());
    if let Some(m) = &l.matcher {
        let _ = write!(name, " ({})", m.describe());
    }
    let state = match (l.enabled, l.mode) {
        (false, _) => "disabled",
        (true, Mode::Shadow) => "shadow",
        (true, Mode::Enforce) if s.current >= l.max => "EXCEEDED",
        (true, Mode::Enforce) if s.ratio() >= l.alert_at => "ALERT",
        _ => "ok",
    };
    vec![
        name,
        amount(l.metric, s.current),
        amount(l.metric, l.max),
        format!("{:.1}%", s.ratio() * 100.0),
        format!("{:.0}%", l.alert_at * 100.0),
        amount(l.metric, s.remaining()),
        state.to_string(),
        s.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        source(s),
    ]
}

/// Where the limit comes from, with the window's top-ups and reset.
fn source(s: &LimitStatus) -> String {
    let mut out = s.source.to_string();
    if s.adjustment.granted != 0 {
        let _ = write!(out, " +{} top-up", amount(s.limit.metric, s.adjustment.granted));
    }
    if s.adjustment.offset != 0 {
        out.push_str(", reset");
    }
    out
}

const LIMIT_HEADER: [&str; 9] = ["LIMIT", "CURRENT", "MAX", "USED", "ALERT AT", "REMAINING", "STATE", "RESETS AT", "SOURCE"];

fn totals_row(name: &str, t: &Totals) -> Vec<String> {
    vec![
        name.to_string(),
        t.requests.to_string(),
        format_usd(t.cost_nanos),
        t.input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.cached_tokens.to_string(),
        t.characters.to_string(),
    ]
}

const TOTALS_HEADER: [&str; 7] = ["", "REQUESTS", "COST", "INPUT TOK", "OUTPUT TOK", "CACHED TOK", "CHARS"];

/// `spendgate usage --by`: one breakdown, the largest cost first.
pub fn breakdown(title: &str, by: super::By, map: &std::collections::BTreeMap<String, Totals>) -> String {
    let mut rows: Vec<(&String, &Totals)> = map.iter().collect();
    rows.sort_by(|a, b| b.1.cost_nanos.cmp(&a.1.cost_nanos).then_with(|| a.0.cmp(b.0)));
    let mut out = format!("{title}\n\n");
    if rows.is_empty() {
        out.push_str(&format!("no usage by {} in the range\n", by.as_str()));
        return out;
    }
    let mut header = TOTALS_HEADER;
    let name = format!("BY {}", by.as_str().to_ascii_uppercase());
    header[0] = &name;
    let rows: Vec<_> = rows.into_iter().map(|(k, t)| totals_row(k, t)).collect();
    out.push_str(&render(&header, &rows));
    out
}

/// One tenant in detail.
pub fn report(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}  (range {}, {} in {})\n",
        r.scope.as_str(),
        r.id,
        r.range.label,
        r.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        r.timezone
    );
    if r.limits.is_empty() {
        out.push_str("no limits (metered, never refused)\n");
    } else {
        let rows: Vec<_> = r.limits.iter().map(limit_row).collect();
        out.push_str(&render(&LIMIT_HEADER, &rows));
    }
    out.push('\n');
    let rows = vec![
        totals_row("today", &r.today),
        totals_row("this month", &r.month),
        totals_row(&format!("range {}", r.range.label), &r.totals),
    ];
    out.push_str(&render(&TOTALS_HEADER, &rows));
    for (title, map) in [("BY PROVIDER", &r.by_provider), ("BY MODEL", &r.by_model), ("BY TAG", &r.by_tag)] {
        if map.is_empty() {
            continue;
        }
        out.push('\n');
        let rows: Vec<_> = map.iter().map(|(k, t)| totals_row(k, t)).collect();
        let mut header = TOTALS_HEADER;
        header[0] = title;
        out.push_str(&render(&header, &rows));
    }
    if !r.recent.is_empty() {
        out.push('\n');
        let rows: Vec<_> = r
            .recent
            .iter()
            .map(|rec| {
                vec![
                    rec.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    rec.provider.to_string(),
                    rec.model.clone(),
                    rec.status.to_string(),
                    format_usd(rec.totals.cost_nanos),
                    rec.path.clone(),
                ]
            })
            .collect();
        out.push_str(&render(&["RECENT", "PROVIDER", "MODEL", "STATUS", "COST", "PATH"], &rows));
    }
    out
}

/// Every tenant of a scope, one line each.
pub fn listing(l: &Listing) -> String {
    let mut out = String::new();
    let title = match l.scope {
        crate::domain::Scope::Profile => "PROFILE",
        crate::domain::Scope::Org => "ORG",
    };
    if l.tenants.is_empty() {
        let _ = writeln!(out, "{title}: none known");
        return out;
    }
    let rows: Vec<_> = l
        .tenants
        .iter()
        .map(|s| {
            let tightest = s
                .limits
                .iter()
                .filter(|x| x.limit.enabled)
                .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
                .map(|x| format!("{} {} {:.1}%", x.limit.window.as_str(), x.limit.metric.as_str(), x.ratio() * 100.0))
                .unwrap_or_else(|| "-".into());
            vec![
                s.id.clone(),
                s.today.requests.to_string(),
                format_usd(s.today.cost_nanos),
                s.month.requests.to_string(),
                format_usd(s.month.cost_nanos),
                tightest,
            ]
        })
        .collect();
    out.push_str(&render(&[title, "TODAY REQ", "TODAY COST", "MONTH REQ", "MONTH COST", "TIGHTEST LIMIT"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars() {
        assert_eq!(format_usd(0), "$0.00");
        assert_eq!(format_usd(12_345_000_000), "$12.35");
        assert_eq!(format_usd(15_119_400), "$0.0151");
        assert_eq!(format_usd(4_019_400), "$0.004019");
    }

    #[test]
    fn aligns_columns() {
        let t = render(&["A", "NUM"], &[vec!["long-name".into(), "1".into()], vec!["x".into(), "12345".into()]]);
        assert_eq!(t, "A            NUM\nlong-name      1\nx          12345\n");
    }
}
