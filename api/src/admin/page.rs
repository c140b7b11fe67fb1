//! What the admin page shows: one JSON document of the process's servers, connections,
//! methods and added sections, and the HTML made from that same document.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use flumen_stream::{
    live::{self, Snapshot},
    ConnectionStats, ServerConnection, ServerLimits, ServerStats,
};
use serde_json::{json, Map, Value};

use super::{methods, Section};

/// The page's fixed parts.
pub(super) struct Page {
    /// Where the page is served.
    pub(super) admin: SocketAddr,
    pub(super) started: Instant,
    pub(super) sections: Vec<(String, Section)>,
}

impl Page {
    /// The whole page as JSON.
    pub(super) fn json(&self) -> Value {
        let (mut servers, mut clients) = (Vec::new(), Vec::new());
        for entry in live::live() {
            match entry.snapshot {
                Snapshot::Server(stats) => servers.push(server(
                    &entry.name,
                    &stats,
                    entry.limits(),
                    &entry.connections(),
                )),
                Snapshot::Connection(stats) => clients.push(client(&entry.name, &stats)),
                _ => {}
            }
        }
        let methods: Vec<Value> = methods::summaries()
            .into_iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "calls": m.calls,
                    "errors": m.errors,
                    "running": m.running,
                    "p50_us": m.p50.as_micros() as u64,
                    "p99_us": m.p99.as_micros() as u64,
                    "p999_us": m.p999.as_micros() as u64,
                    "max_us": m.max.as_micros() as u64,
                })
            })
            .collect();
        let mut sections = Map::new();
        for (title, table) in &self.sections {
            let table = table();
            let rows: Vec<Value> = table
                .rows
                .iter()
                .map(|row| {
                    let fields = table.columns.iter().cloned().zip(row.iter().cloned());
                    Value::Object(fields.map(|(k, v)| (k, Value::String(v))).collect())
                })
                .collect();
            sections.insert(title.clone(), Value::Array(rows));
        }
        json!({
            "admin": {
                "address": self.admin.to_string(),
                "loopback_only": self.admin.ip().is_loopback(),
                "pid": std::process::id(),
                "uptime_seconds": self.started.elapsed().as_secs_f64(),
                "methods_timed": methods::recording(),
            },
            "servers": servers,
            "client_connections": clients,
            "methods": methods,
            "sections": sections,
        })
    }

    /// The page as HTML, made from [`json`](Self::json).
    pub(super) fn html(&self) -> String {
        let json = self.json();
        let mut html = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>flumen admin</title>\
             <meta http-equiv=\"refresh\" content=\"5\"><style>\
             body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}\
             th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}\
             th{background:#eee}td:first-child{text-align:left}.warn{color:#a00}\
             </style></head><body><h1>flumen</h1>",
        );
        let admin = &json["admin"];
        let _ = write!(
            html,
            "<p>pid {} &middot; up {:.0} s &middot; this page on {} (<a href=\"/json\">JSON</a>)</p>",
            admin["pid"],
            admin["uptime_seconds"].as_f64().unwrap_or_default(),
            escape(admin["address"].as_str().unwrap_or_default()),
        );
        if admin["loopback_only"] != Value::Bool(true) {
            html.push_str(
                "<p class=\"warn\">This page is reachable from other hosts: it shows this \
                 process's peers and traffic to whoever connects.</p>",
            );
        }
        html.push_str("<h2>Servers</h2>");
        let servers = json["servers"].as_array().cloned().unwrap_or_default();
        table(&mut html, &servers, &["connections", "limits"]);
        for server in &servers {
            let name = escape(server["address"].as_str().unwrap_or_default());
            let _ = write!(html, "<h3>{name}: limits</h3>");
            table(&mut html, std::slice::from_ref(&server["limits"]), &[]);
            let _ = write!(html, "<h3>{name}: connections</h3>");
            table(
                &mut html,
                server["connections"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice),
                &[],
            );
        }
        html.push_str("<h2>Methods</h2>");
        table(
            &mut html,
            json["methods"].as_array().map_or(&[][..], Vec::as_slice),
            &[],
        );
        html.push_str("<h2>Client connections</h2>");
        table(
            &mut html,
            json["client_connections"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
            &[],
        );
        if let Some(sections) = json["sections"].as_object() {
            for (title, rows) in sections {
                let _ = write!(html, "<h2>{}</h2>", escape(title));
                table(
                    &mut html,
                    rows.as_array().map_or(&[][..], Vec::as_slice),
                    &[],
                );
            }
        }
        html.push_str("</body></html>");
        html
    }
}

fn server(
    name: &str,
    stats: &ServerStats,
    limits: Option<ServerLimits>,
    connections: &[ServerConnection],
) -> Value {
    let connections: Vec<Value> = connections
        .iter()
        .map(|c| {
            let mut row = json!({
                "peer": &*c.peer,
                "age_seconds": c.age.as_secs(),
                "in_flight": c.in_flight,
                "streams": c.streams,
                "compression": c.compression.map(|c| format!("{:?}", c.algorithm)),
            });
            io(&mut row, &c.io);
            row
        })
        .collect();
    let limits = limits.map(|l| {
        json!({
            "max_connections": l.max_connections,
            "max_in_flight": l.max_in_flight,
            "max_frame_len": l.max_frame_len,
            "max_handshakes": l.max_handshakes,
            "max_queued_bytes": l.max_queued_bytes,
            "max_queued_bytes_total": l.max_queued_bytes_total,
            "stream_window": l.stream_window,
            "idle_timeout_ms": l.idle_timeout.as_millis() as u64,
            "read_timeout_ms": l.read_timeout.as_millis() as u64,
            "write_timeout_ms": l.write_timeout.as_millis() as u64,
            "handshake_timeout_ms": l.handshake_timeout.as_millis() as u64,
        })
    });
    let mut row = json!({
        "address": name,
        "active": stats.active,
        "accepted": stats.accepted,
        "refused": stats.refused,
        "handshake_failures": stats.handshake_failures,
        "protocol_errors": stats.protocol_errors,
        "timeouts": stats.timeouts,
        "panics": stats.panics,
        "shed": stats.shed,
        "in_flight": stats.in_flight,
        "concurrency_limit": stats.concurrency_limit,
        "queued_bytes": stats.queued_bytes,
    });
    io(&mut row, &stats.io);
    row["limits"] = limits.unwrap_or(Value::Null);
    row["connections"] = Value::Array(connections);
    row
}

fn client(name: &str, stats: &ConnectionStats) -> Value {
    let mut row = json!({ "name": name });
    io(&mut row, stats);
    row
}

/// Adds the I/O counters of `stats` to `row`.
fn io(row: &mut Value, stats: &ConnectionStats) {
    row["bytes_read"] = stats.bytes_read.into();
    row["bytes_written"] = stats.bytes_written.into();
    row["frames_read"] = stats.frames_read.into();
    row["frames_written"] = stats.frames_written.into();
    row["frames_per_write"] = ((stats.frames_per_write() * 100.0).round() / 100.0).into();
    row["frames_compressed"] = stats.frames_compressed.into();
    row["buffered_bytes"] = stats.buffered_bytes.into();
}

/// An HTML table of `rows` (objects), one column per key of the first, less `skip`.
fn table(html: &mut String, rows: &[Value], skip: &[&str]) {
    let Some(first) = rows.first().and_then(Value::as_object) else {
        html.push_str("<p>none</p>");
        return;
    };
    let columns: Vec<&String> = first
        .keys()
        .filter(|k| !skip.contains(&k.as_str()))
        .collect();
    html.push_str("<table><tr>");
    for column in &columns {
        let _ = write!(html, "<th>{}</th>", escape(column));
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for column in &columns {
            let cell = match &row[column.as_str()] {
                Value::String(text) => escape(text),
                Value::Null => String::new(),
                other => escape(&other.to_string()),
            };
            let _ = write!(html, "<td>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
}

/// `text` with the characters HTML gives a meaning escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn tables_have_a_column_per_key() {
        let mut html = String::new();
        table(
            &mut html,
            &[
                json!({"name": "a<b", "calls": 3, "skipped": 1}),
                json!({"name": "c", "calls": null}),
            ],
            &["skipped"],
        );
        assert_eq!(
            html,
            "<table><tr><th>name</th><th>calls</th></tr><tr><td>a&lt;b</td><td>3</td></tr>\
             <tr><td>c</td><td></td></tr></table>"
        );
    }
}
