//! Grouped bar charts as plain SVG text.

use std::fmt::Write as _;

/// One bar per group.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// One value per group; `None` draws no bar.
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart.
#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 92.0;
const COLORS: [&str; 7] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for the axis and its tick step (1, 2 or 5 × 10^k).
fn axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.25);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// A short label for a value: 3 significant digits, k/M suffixes.
#[must_use]
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        let n = format!("{:.2}", v / 1e6);
        format!("{}M", n.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The chart as an SVG document.
#[must_use]
#[allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "one drawing, coordinates named as in geometry"
)]
pub fn bar_chart(c: &BarChart) -> String {
    let max = c
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (top, step) = axis(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(&c.title)
    );
    // Grid and y axis.
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            compact(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(&c.y_label)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#333333"/>"##,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    // Bars.
    #[allow(clippy::cast_precision_loss, reason = "a handful of groups and series")]
    let (groups, series) = (c.groups.len().max(1) as f64, c.series.len().max(1) as f64);
    let group_w = plot_w / groups;
    let bar_w = (group_w * 0.8) / series;
    for (g, name) in c.groups.iter().enumerate() {
        #[allow(clippy::cast_precision_loss, reason = "small indices")]
        let gx = LEFT + group_w * g as f64;
        for (k, ser) in c.series.iter().enumerate() {
            let Some(val) = ser.values.get(g).copied().flatten() else {
                continue;
            };
            if !val.is_finite() {
                continue;
            }
            #[allow(clippy::cast_precision_loss, reason = "small indices")]
            let x = gx + group_w * 0.1 + bar_w * k as f64;
            let yy = y(val);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                (bar_w - 2.0).max(1.0),
                (TOP + plot_h - yy).max(0.0),
                COLORS[k % COLORS.len()],
                escape(&ser.name),
                compact(val)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bar_w / 2.0 - 1.0,
                yy - 3.0,
                compact(val)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            TOP + plot_h + 18.0,
            escape(name)
        );
    }
    // Legend, in rows below the axis.
    let mut lx = LEFT;
    let mut ly = TOP + plot_h + 44.0;
    for (k, ser) in c.series.iter().enumerate() {
        #[allow(clippy::cast_precision_loss, reason = "short names")]
        let w = 22.0 + 7.0 * ser.name.chars().count() as f64;
        if lx + w > WIDTH - RIGHT {
            lx = LEFT;
            ly += 18.0;
        }
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            COLORS[k % COLORS.len()],
            lx + 16.0,
            escape(&ser.name)
        );
        lx += w + 12.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_is_round() {
        assert_eq!(axis(87.0), (100.0, 20.0));
        assert_eq!(axis(1.0), (1.0, 0.2));
        assert_eq!(axis(0.0), (1.0, 0.25));
    }

    #[test]
    fn compact_labels() {
        assert_eq!(compact(12_345.0), "12k");
        assert_eq!(compact(1_500.0), "1.5k");
        assert_eq!(compact(2_500_000.0), "2.5M");
        assert_eq!(compact(42.26), "42.3");
        assert_eq!(compact(4.567), "4.57");
        assert_eq!(compact(0.0), "0");
    }

    #[test]
    fn chart_is_well_formed() {
        let svg = bar_chart(&BarChart {
            title: "a <b> & c".into(),
            y_label: "ns".into(),
            groups: vec!["1".into(), "1k".into()],
            series: vec![
                Series {
                    name: "x".into(),
                    values: vec![Some(1.0), Some(2.0)],
                },
                Series {
                    name: "y".into(),
                    values: vec![None, Some(f64::NAN)],
                },
            ],
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        // Two bars: y has no finite value.
        assert_eq!(svg.matches("<rect x=").count(), 2 + 2);
        assert_eq!(svg.matches("<svg").count(), 1);
    }
}
