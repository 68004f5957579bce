//! Reports as a table for people and as one JSON object per run for scripts.

use std::fmt::Write;

use serde::Serialize;

use super::stats::LatencySummary;
use super::{
    DmReport, FanoutReport, IrcReport, JoinReport, LoginsReport, ProcUsage, RequestsReport,
};

/// A report that can be printed either way.
pub trait Render: Serialize {
    /// Rows of label and value.
    fn rows(&self) -> Vec<(String, String)>;

    /// Aligned two-column table.
    fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }

    /// One line of JSON.
    fn json(&self) -> String {
        serde_json::to_string(self).expect("reports serialize")
    }
}

/// The report as a table, or as one line of JSON when `json`.
pub fn render<R: Render>(report: &R, json: bool) -> String {
    if json {
        report.json() + "\n"
    } else {
        report.table()
    }
}

fn row(k: &str, v: impl std::fmt::Display) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn deliveries_row(delivered: u64, expected: u64, secs: f64) -> (String, String) {
    row(
        "deliveries",
        format!("{delivered} of {expected} in {secs:.3} s"),
    )
}

fn losses_row(lost: u64, duplicated: u64, out_of_order: u64) -> (String, String) {
    row(
        "lost / duplicated / out of order",
        format!("{lost} / {duplicated} / {out_of_order}"),
    )
}

fn latency(l: &LatencySummary) -> String {
    format!(
        "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (mean {:.0} µs, {} samples)",
        l.p50_us, l.p99_us, l.max_us, l.mean_us, l.samples
    )
}

fn rate(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M/s", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k/s", n / 1e3)
    } else {
        format!("{n:.0} /s")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn usage_rows(rows: &mut Vec<(String, String)>, server: Option<&ProcUsage>, bench: Option<f64>) {
    match server {
        Some(u) => {
            rows.push(row("server CPU", format!("{:.2} s", u.cpu_seconds)));
            rows.push(row(
                "server memory",
                format!("{} now, {} peak", mib(u.rss_bytes), mib(u.peak_rss_bytes)),
            ));
        }
        None => rows.push(row(
            "server CPU/memory",
            "not measured (server not our child)",
        )),
    }
    if let Some(b) = bench {
        rows.push(row("bench CPU", format!("{b:.2} s")));
    }
}

impl Render for FanoutReport {
    fn rows(&self) -> Vec<(String, String)> {
        let o = &self.opts;
        let mut rate_text = o.rate.map_or("full speed".to_string(), |r| {
            format!("{r} msg/s per sender")
        });
        if o.window == 0 || o.open_loop {
            rate_text += ", open loop";
        } else {
            rate_text += &format!(", window {}", o.window);
        }
        let mut rows = vec![
            row(
                "scenario",
                format!(
                    "{}: {} session(s) × {} members, {} senders × {} messages, {rate_text}",
                    self.scenario, o.sessions, o.members, o.senders, o.messages
                ),
            ),
            row("server", &self.server),
            row("setup", format!("{:.2} s", self.setup_secs)),
            deliveries_row(self.delivered, self.expected, self.secs),
            row("deliveries/s", rate(self.deliveries_per_sec)),
            row("messages/s", rate(self.messages_per_sec)),
            row("latency", latency(&self.latency)),
            losses_row(self.lost, self.duplicated, self.out_of_order),
            row(
                "dropped / errors / failed sends / timeouts",
                format!(
                    "{} / {} / {} / {}",
                    self.disconnected,
                    self.server_errors,
                    self.send_failures,
                    self.timed_out_receivers
                ),
            ),
        ];
        let bad: Vec<_> = self
            .per_sender
            .iter()
            .filter(|s| s.lost + s.duplicated + s.out_of_order > 0)
            .collect();
        if bad.is_empty() {
            rows.push(row(
                "per sender",
                format!("all {} clean", self.per_sender.len()),
            ));
        } else {
            for s in bad.iter().take(20) {
                rows.push(row(
                    &format!("sender {}/{}", s.session, s.sender),
                    format!(
                        "sent {}, lost {}, duplicated {}, out of order {}",
                        s.sent, s.lost, s.duplicated, s.out_of_order
                    ),
                ));
            }
            if bad.len() > 20 {
                rows.push(row(
                    "…",
                    format!("{} more senders with problems", bad.len() - 20),
                ));
            }
        }
        usage_rows(&mut rows, self.server_usage.as_ref(), self.bench_cpu_secs);
        for share in &self.spread {
            let load = match (share.sessions, share.members) {
                (Some(s), Some(m)) => format!("{s} sessions, {m} members, "),
                _ => String::new(),
            };
            rows.push(row(
                &share.process,
                format!("{load}{:.2} s CPU", share.cpu_seconds),
            ));
        }
        rows.push(row("result", if self.is_clean() { "OK" } else { "FAILED" }));
        rows
    }
}

impl Render for JoinReport {
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            row(
                "scenario",
                format!(
                    "join: {} members, {} at once",
                    self.opts.members,
                    self.opts.concurrency.unwrap_or(self.opts.members)
                ),
            ),
            row("server", &self.server),
            row(
                "welcomed",
                format!("{} in {:.3} s", self.welcomed, self.all_welcomed_secs),
            ),
            row(
                "seated (full roster)",
                if self.all_seated_secs.is_nan() {
                    format!("{} (not all)", self.seated)
                } else {
                    format!("{} in {:.3} s", self.seated, self.all_seated_secs)
                },
            ),
            row("failures", self.failures),
            row("dropped after welcome", self.dropped),
        ];
        for k in &self.failure_kinds {
            rows.push(row("  failure", k));
        }
        rows.push(row("connect to welcome", latency(&self.welcome_latency)));
        rows.push(row(
            "server memory per member",
            self.server_bytes_per_member
                .map_or("not measured".into(), |b| format!("{:.0} bytes", b)),
        ));
        usage_rows(&mut rows, self.server_usage.as_ref(), self.bench_cpu_secs);
        rows
    }
}

impl Render for LoginsReport {
    fn rows(&self) -> Vec<(String, String)> {
        let cost = if self.opts.fast_passwords {
            "cheapest"
        } else {
            "real"
        };
        let mut rows = vec![
            row(
                "scenario",
                format!(
                    "logins: {} clients at once, {cost} password cost",
                    self.opts.clients
                ),
            ),
            row("server", &self.server),
            row(
                "logged in / failed",
                format!("{} / {}", self.logged_in, self.failed),
            ),
            row("all answered in", format!("{:.2} s", self.secs)),
            row("per login", latency(&self.latency)),
        ];
        if let Some(e) = &self.first_error {
            rows.push(row("first failure", e));
        }
        if let (Some(cpu), Some(floor)) = (self.server_cpu_secs, self.hashing_floor_secs) {
            rows.push(row(
                "hashing alone",
                format!(
                    "{floor:.2} s ({cpu:.2} s server CPU over the cores): {:.2}× the floor",
                    self.secs / floor.max(f64::EPSILON)
                ),
            ));
        }
        usage_rows(&mut rows, self.server_usage.as_ref(), None);
        rows
    }
}

impl Render for IrcReport {
    fn rows(&self) -> Vec<(String, String)> {
        let o = &self.opts;
        let mut rows = vec![
            row(
                "scenario",
                format!(
                    "irc at {}: 1 channel × {} members, {} senders × {} lines, open loop",
                    o.server, o.members, o.senders, o.messages
                ),
            ),
            row("setup", format!("{:.3} s", self.setup_secs)),
            deliveries_row(self.delivered, self.expected, self.secs),
            row("deliveries/s", rate(self.deliveries_per_sec)),
            row("latency", latency(&self.latency)),
            losses_row(self.lost, self.duplicated, self.out_of_order),
            row("disconnected", self.disconnected),
        ];
        usage_rows(&mut rows, self.server_usage.as_ref(), None);
        rows
    }
}

impl Render for DmReport {
    fn rows(&self) -> Vec<(String, String)> {
        vec![
            row(
                "scenario",
                format!(
                    "dm: {} pairs, {} messages each way, one at a time",
                    self.opts.pairs, self.opts.messages
                ),
            ),
            row(
                "sent / acked / not delivered",
                format!("{} / {} / {}", self.sent, self.acked, self.not_delivered),
            ),
            row(
                "received / duplicated / out of order",
                format!(
                    "{} / {} / {}",
                    self.received, self.duplicated, self.out_of_order
                ),
            ),
            row("time", format!("{:.3} s", self.secs)),
            row("acked/s", rate(self.acked_per_sec)),
            row("send to ack", latency(&self.ack_latency)),
            row("send to shown", latency(&self.one_way_latency)),
            row(
                "bench CPU",
                self.bench_cpu_secs
                    .map_or("not measured".into(), |c| format!("{c:.2} s")),
            ),
        ]
    }
}

impl Render for RequestsReport {
    fn rows(&self) -> Vec<(String, String)> {
        let o = &self.opts;
        let mut rows = vec![
            row(
                "scenario",
                format!(
                    "coordinator: {} requests of each kind, {} sockets × {} in flight, {} sessions",
                    o.requests, o.sockets, o.window, o.sessions
                ),
            ),
            row("server", &self.server),
        ];
        for op in &self.ops {
            rows.push(row(
                &op.op,
                format!(
                    "{} in {:.3} s: {}; {} errors, {} lost",
                    op.answered,
                    op.secs,
                    rate(op.per_sec),
                    op.errors,
                    op.lost
                ),
            ));
            rows.push(row(&format!("{} latency", op.op), latency(&op.latency)));
            if let Some(cpu) = op.server_cpu_secs {
                rows.push(row(&format!("{} server CPU", op.op), format!("{cpu:.2} s")));
            }
        }
        if let Some(u) = &self.server_usage {
            rows.push(row(
                "server memory",
                format!("{} peak", mib(u.peak_rss_bytes)),
            ));
        }
        rows
    }
}
