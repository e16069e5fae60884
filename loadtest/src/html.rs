//! The self-contained HTML report: tables and inline SVG charts, no scripts, no network.
//! The JSON report is embedded too, so the page alone is the full record of a run.

use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const MARGIN: (f64, f64, f64, f64) = (60.0, 20.0, 30.0, 45.0); // left, right, top, bottom

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let title = format!("loadtest: {} ({})", report.scenario, if report.passed { "passed" } else { "FAILED" });
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head><body>",
        esc(&title),
        CSS
    );
    let _ = write!(h, "<h1>{}</h1>", esc(&title));
    let p = &report.plan;
    let _ = write!(
        h,
        "<p>{} workers · edges {} · {} · {} B messages · run {}</p>",
        report.workers,
        esc(&p.edges.join(", ")),
        esc(&p.encoding),
        p.message_bytes,
        esc(&p.run_id)
    );

    h.push_str("<h2>Checks</h2><table><tr><th>check</th><th>limit</th><th>actual</th><th></th></tr>");
    for c in &report.checks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&c.name),
            num(c.limit),
            num(c.actual),
            if c.passed { "ok" } else { "bad" },
            if c.passed { "pass" } else { "FAIL" }
        );
    }
    h.push_str("</table>");

    let t = &report.throughput;
    let c = &report.connections;
    h.push_str("<h2>Load</h2><table>");
    for (k, v) in [
        ("connections opened / target", format!("{} / {} ({} failed, peak {})", c.opened, c.target, c.failed, c.peak)),
        ("ramp", format!("{:.1} s", c.ramp_seconds)),
        ("duration", format!("{:.1} s", t.duration_seconds)),
        (
            "sends/s achieved / target",
            format!(
                "{:.0} / {:.0} (shortfall {:.1}%)",
                t.achieved_sends_per_second, t.target_sends_per_second, t.shortfall_percent
            ),
        ),
        ("sent / acked / unsent", format!("{} / {} / {}", t.sent, t.acked, t.unsent)),
        (
            "deliveries (to other members)",
            format!("{} ({:.0}/s, peak {}/s)", t.delivered, t.deliveries_per_second, t.peak_deliveries_per_second),
        ),
        ("reconnects", c.reconnects.to_string()),
    ] {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    if let Some(s) = &report.server {
        let _ = write!(
            h,
            "<tr><th>server memory</th><td>{} → {} bytes RSS, {:.0} bytes per connection</td></tr>",
            s.rss_before_bytes, s.rss_loaded_bytes, s.bytes_per_connection
        );
        if let (Some(cpu), Some(cores)) = (s.cpu_seconds, s.cpu_cores) {
            let per =
                s.deliveries_per_cpu_second.map(|d| format!(", {d:.0} deliveries per CPU second")).unwrap_or_default();
            let _ = write!(h, "<tr><th>server CPU</th><td>{cpu:.1} s ({cores:.2} cores){per}</td></tr>");
        }
    }
    if let (Some(cpu), Some(cores)) = (report.generator.cpu_seconds, report.generator.cpu_cores) {
        let _ = write!(
            h,
            "<tr><th>generator CPU</th><td>{cpu:.1} s ({cores:.2} of {} cores)</td></tr>",
            report.generator.machine_cores
        );
    }
    if let Some(s) = &report.storm {
        let _ = write!(
            h,
            "<tr><th>reconnect storm</th><td>{}% asked, {} dropped, {} resumed, all resumed after {}</td></tr>",
            s.percent,
            s.dropped,
            s.resumed,
            s.all_resumed_seconds.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "never".into())
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Latency (ms, from the intended send time)</h2><table><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, s) in [
        ("send → deliver", &report.latency_ms.deliver),
        ("send → ack", &report.latency_ms.ack),
        ("drop → resumed", &report.latency_ms.reconnect),
    ] {
        let _ = write!(
            h,
            "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.count,
            num(s.p50),
            num(s.p90),
            num(s.p99),
            num(s.p999),
            num(s.max)
        );
    }
    h.push_str("</table>");

    let v = &report.correctness;
    h.push_str("<h2>Correctness</h2><table>");
    for (k, n) in [
        ("streams (connection × chat)", v.streams),
        ("acked messages", v.acked),
        ("deliveries owed", v.expected_deliveries),
        ("missing", v.missing),
        ("duplicates", v.duplicates),
        ("out of order", v.out_of_order),
        ("gaps", v.gaps),
        ("delivered, ack not seen", v.delivered_unacked),
    ] {
        let _ = write!(h, "<tr><th>{k}</th><td>{n}</td></tr>");
    }
    h.push_str("</table>");
    if !report.errors.is_empty() {
        h.push_str("<h2>Errors</h2><table>");
        for (code, n) in &report.errors {
            let _ = write!(h, "<tr><th>{}</th><td>{n}</td></tr>", esc(code));
        }
        h.push_str("</table>");
    }

    let tl = &report.timeline;
    let pts = |f: &dyn Fn(&crate::report::Second) -> f64| -> Vec<(f64, f64)> {
        tl.iter().map(|s| (s.t as f64, f(s))).filter(|(_, y)| *y > 0.0).collect()
    };
    h.push_str("<h2>Latency over time</h2>");
    h.push_str(&chart(
        "seconds from the start of the load phase",
        "ms",
        &[
            Series { name: "deliver p50", color: "#1f77b4", points: pts(&|s| s.deliver_p50_ms) },
            Series { name: "deliver p99", color: "#d62728", points: pts(&|s| s.deliver_p99_ms) },
            Series { name: "deliver max", color: "#999999", points: pts(&|s| s.deliver_max_ms) },
            Series { name: "ack p99", color: "#2ca02c", points: pts(&|s| s.ack_p99_ms) },
        ],
        None,
    ));
    h.push_str("<h2>Rates over time</h2>");
    h.push_str(&chart(
        "seconds from the start of the load phase",
        "per second",
        &[
            Series { name: "sent", color: "#1f77b4", points: pts(&|s| s.sent as f64) },
            Series { name: "delivered", color: "#d62728", points: pts(&|s| s.delivered as f64) },
            Series { name: "connections", color: "#999999", points: pts(&|s| s.connections as f64) },
        ],
        None,
    ));
    // Percentiles on a "nines" axis: x = -log10(1 - p), so 90, 99, 99.9 are evenly spaced.
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.99999)).log10();
    let dist = |i: usize| -> Vec<(f64, f64)> {
        report.percentiles.iter().map(|r| (nines(r[0]), r[i])).filter(|(_, y)| *y > 0.0).collect()
    };
    h.push_str("<h2>Latency by percentile</h2>");
    h.push_str(&chart(
        "percentile",
        "ms",
        &[
            Series { name: "send → deliver", color: "#d62728", points: dist(1) },
            Series { name: "send → ack", color: "#2ca02c", points: dist(2) },
        ],
        Some(&[(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")]),
    ));

    let json = serde_json::to_string(report).unwrap_or_default().replace("</", "<\\/");
    let _ = write!(h, "<script type=\"application/json\" id=\"report\">{json}</script></body></html>");
    h
}

/// A line chart with a log10 y axis (latencies and rates span orders of magnitude).
fn chart(x_label: &str, y_label: &str, series: &[Series<'_>], x_ticks: Option<&[(f64, &str)]>) -> String {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if all.is_empty() {
        return "<p>(no data)</p>".into();
    }
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    if let Some(t) = x_ticks {
        x0 = x0.min(t[0].0);
        x1 = x1.max(t[t.len() - 1].0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ly = |v: f64| v.max(1e-3).log10();
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(ly(p.1)), b.max(ly(p.1))));
    let (y0, y1) = (y0.floor(), (y1.ceil()).max(y0.floor() + 1.0));
    let (l, r, t, b) = MARGIN;
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (WIDTH - l - r);
    let py = |y: f64| HEIGHT - b - (ly(y) - y0) / (y1 - y0) * (HEIGHT - t - b);
    let mut s = String::new();
    let _ =
        write!(s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-size=\"11\">");
    let _ = write!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        WIDTH - l - r,
        HEIGHT - t - b
    );
    let mut e = y0 as i32;
    while f64::from(e) <= y1 {
        let v = 10f64.powi(e);
        let y = py(v);
        let _ = write!(s, "<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>", WIDTH - r);
        let label = if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") };
        let _ = write!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>", l - 4.0, y + 4.0);
        e += 1;
    }
    let ticks: Vec<(f64, String)> = match x_ticks {
        Some(t) => t.iter().map(|(x, label)| (*x, (*label).to_owned())).collect(),
        None => (0..=6)
            .map(|i| x0 + (x1 - x0) * f64::from(i) / 6.0)
            .map(|x| (x, format!("{:.0}", x.round() + 0.0)))
            .collect(),
    };
    for (x, label) in ticks {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(x),
            HEIGHT - b + 14.0,
            esc(&label)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (l + WIDTH - r) / 2.0,
        HEIGHT - 8.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{} (log)</text>",
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        if se.points.is_empty() {
            continue;
        }
        let path: Vec<String> = se.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            se.color,
            path.join(" ")
        );
        let lx = l + 10.0 + 150.0 * i as f64;
        let _ = write!(s, "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>", t - 18.0, se.color);
        let _ = write!(s, "<text x=\"{}\" y=\"{}\">{}</text>", lx + 14.0, t - 9.0, esc(se.name));
    }
    s.push_str("</svg>");
    s
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:900px}table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}td.ok{color:#070}td.bad{color:#b00;font-weight:bold}svg{border:1px solid #eee;margin:.5em 0}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_survives_empty_data() {
        assert_eq!(esc("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
        assert_eq!(chart("x", "y", &[Series { name: "n", color: "#000", points: vec![] }], None), "<p>(no data)</p>");
        let svg =
            chart("x", "ms", &[Series { name: "p99", color: "#000", points: vec![(0.0, 1.0), (1.0, 100.0)] }], None);
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.ends_with("</svg>"));
    }
}
