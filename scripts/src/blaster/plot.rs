//! SVG charts of what `capacity` measured, for BENCHMARKS.md: pure
//! functions from figures to a self-contained SVG document (no fonts or
//! scripts to fetch), so the plots in the repository are what the tool
//! drew from its own JSON.

use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour (CSS).
    pub color: &'static str,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// One group of bars (a category, one bar per series).
#[derive(Debug, Clone)]
pub struct Group {
    /// The category's label.
    pub label: String,
    /// One value per bar, in the order of the chart's series names.
    pub values: Vec<f64>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// A "nice" upper bound and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

/// A compact number: 12000 → "12k", 1500000 → "1.5M".
fn short(v: f64) -> String {
    let (v, unit) = if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{v:.1}");
    format!("{}{unit}", s.trim_end_matches('0').trim_end_matches('.'))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn frame(svg: &mut String, title: &str, x_label: &str, y_label: &str, y_max: f64, y_step: f64) {
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
"##,
        LEFT + w / 2.0,
        escape(title),
        LEFT + w / 2.0,
        HEIGHT - 15.0,
        escape(x_label),
        TOP + h / 2.0,
        TOP + h / 2.0,
        escape(y_label),
    );
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = TOP + h - y / y_max * h;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            py + 4.0,
            short(y)
        );
        y += y_step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + h,
        TOP + h,
        LEFT + w,
        TOP + h
    );
}

fn legend(svg: &mut String, names: &[(&str, &str)]) {
    for (i, (name, color)) in names.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        let x = WIDTH - RIGHT + 15.0;
        let _ = writeln!(
            svg,
            r##"<rect x="{x}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            y - 2.0,
            x + 20.0,
            y + 4.0,
            escape(name)
        );
    }
}

/// A line chart of `series` against a shared x axis from 0.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_max, x_step) = axis(all().map(|p| p.0).fold(0.0, f64::max));
    let (y_max, y_step) = axis(all().map(|p| p.1).fold(0.0, f64::max));
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    frame(&mut svg, title, x_label, y_label, y_max, y_step);
    let mut x = 0.0;
    while x <= x_max + x_step / 2.0 {
        let px = LEFT + x / x_max * w;
        let _ = writeln!(
            svg,
            r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + h + 18.0,
            short(x)
        );
        x += x_step;
    }
    for s in series {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x / x_max * w, TOP + h - y / y_max * h))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"##,
            s.color,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                r##"<circle cx="{px}" cy="{py}" r="3" fill="{}"/>"##,
                s.color
            );
        }
    }
    let names: Vec<(&str, &str)> = series.iter().map(|s| (s.name.as_str(), s.color)).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}

/// A grouped bar chart: one group per category, one bar per series.
pub fn bars(
    title: &str,
    y_label: &str,
    series: &[(&str, &'static str)],
    groups: &[Group],
) -> String {
    let (y_max, y_step) = axis(
        groups
            .iter()
            .flat_map(|g| g.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    frame(&mut svg, title, "", y_label, y_max, y_step);
    let slot = w / groups.len().max(1) as f64;
    let bar = slot * 0.7 / series.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let x0 = LEFT + slot * gi as f64 + slot * 0.15;
        for (si, v) in g.values.iter().enumerate() {
            let color = series.get(si).map_or("#888", |s| s.1);
            let bh = v / y_max * h;
            let x = x0 + bar * si as f64;
            let _ = writeln!(
                svg,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"##,
                TOP + h - bh,
                bar - 2.0,
                x + bar / 2.0,
                TOP + h - bh - 4.0,
                short(*v)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            LEFT + slot * (gi as f64 + 0.5),
            TOP + h + 18.0,
            escape(&g.label)
        );
    }
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_cover_the_data() {
        assert_eq!(axis(9.0), (10.0, 2.0));
        assert_eq!(axis(1234.0), (1250.0, 250.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
        assert_eq!(short(12_000.0), "12k");
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(250.0), "250");
    }

    #[test]
    fn a_line_chart_draws_every_point_inside_the_frame() {
        let svg = lines(
            "t <1>",
            "clients",
            "pps",
            &[
                Series {
                    name: "server".into(),
                    color: "#1f77b4",
                    points: vec![(1000.0, 40_000.0), (2000.0, 80_000.0)],
                },
                Series {
                    name: "relay".into(),
                    color: "#ff7f0e",
                    points: vec![(1000.0, 40_000.0), (2000.0, 79_000.0), (3000.0, 1.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("t &lt;1&gt;") && svg.contains(">server<"));
        for c in svg.split("<circle cx=\"").skip(1) {
            let (x, rest) = c.split_once('"').unwrap();
            let y = rest.split('"').nth(1).unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
        }
    }

    #[test]
    fn a_bar_chart_has_a_bar_per_value() {
        let svg = bars(
            "egress",
            "pps",
            &[("server", "#1f77b4"), ("relay", "#ff7f0e")],
            &[
                Group {
                    label: "fan-out 1".into(),
                    values: vec![460_000.0, 450_000.0],
                },
                Group {
                    label: "fan-out 4".into(),
                    values: vec![800_000.0, 840_000.0],
                },
            ],
        );
        // Four bars and the two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 1 + 4 + 2);
        assert!(svg.contains("fan-out 4") && svg.contains("840k"));
    }
}
