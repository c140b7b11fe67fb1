//! What a load run records: per-task latency histograms and counts, CPU time, and the report.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The measured window of a run: calls that start before `warm` are warm-up, calls that start
/// after `end` are not made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) warm: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn new(warmup: Duration, duration: Duration) -> Self {
        let warm = Instant::now() + warmup;
        Self {
            warm,
            end: warm + duration,
        }
    }
}

/// One caller's record.
pub(crate) struct Tally {
    pub(crate) hist: Histogram<u64>,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    progress: Arc<AtomicU64>,
    unreported: u64,
}

impl Tally {
    pub(crate) fn new(progress: Arc<AtomicU64>) -> Self {
        // 1 ns .. 100 s, 3 significant digits.
        let hist =
            Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds");
        Self {
            hist,
            calls: 0,
            errors: 0,
            progress,
            unreported: 0,
        }
    }

    /// Records a call that started at `start` and ended now.
    pub(crate) fn record(&mut self, window: &Window, start: Instant, ok: bool) {
        if start < window.warm {
            return;
        }
        if ok {
            let nanos = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            self.hist.saturating_record(nanos.max(1));
            self.calls += 1;
        } else {
            self.errors += 1;
        }
        self.unreported += 1;
        if self.unreported == 256 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.progress.fetch_add(self.unreported, Ordering::Relaxed);
        self.unreported = 0;
    }

    /// Merges tallies into one.
    pub(crate) fn merge(mut tallies: Vec<Tally>) -> Option<Tally> {
        let mut total = tallies.pop()?;
        total.flush();
        for mut t in tallies {
            t.flush();
            let _ = total.hist.add(&t.hist);
            total.calls += t.calls;
            total.errors += t.errors;
        }
        Some(total)
    }
}

/// CPU time (user + system) this process has used.
pub(crate) fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we hand it.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) process `pid` has used, from `/proc` (10 ms resolution).
/// The resident memory of process `pid` (`/proc/PID/status`, Linux), in bytes.
pub(crate) fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// One row of results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) system: String,
    pub(crate) runtime: String,
    pub(crate) payload: usize,
    pub(crate) in_flight: usize,
    pub(crate) connections: usize,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) calls_per_s: f64,
    /// Payload megabytes per second, each way.
    pub(crate) mb_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    pub(crate) client_cpu_us_per_call: f64,
    pub(crate) server_cpu_us_per_call: Option<f64>,
    /// Calls/s relative to `pipe` in the same run (compare only).
    pub(crate) ratio_to_pipe: Option<f64>,
    /// Runtime worker threads per side (0: current-thread).
    pub(crate) threads: usize,
    /// Frames per write syscall on the client (Flumen's connection counters).
    pub(crate) client_frames_per_write: Option<f64>,
    /// Frames per write syscall on the server (Flumen's connection counters).
    pub(crate) server_frames_per_write: Option<f64>,
    /// The server's resident memory at the end of the run, in MiB.
    pub(crate) server_rss_mib: Option<f64>,
    /// (percentile, microseconds) pairs for plotting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) spectrum: Vec<(f64, f64)>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        system: &str,
        runtime: &str,
        payload: usize,
        in_flight: usize,
        connections: usize,
        tally: &Tally,
        seconds: f64,
        client_cpu: Duration,
        server_cpu: Option<Duration>,
    ) -> Self {
        let us = |q: f64| tally.hist.value_at_quantile(q) as f64 / 1000.0;
        let calls = tally.calls.max(1) as f64;
        let spectrum = [
            0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
        ]
        .iter()
        .map(|&q| (q * 100.0, us(q)))
        .collect();
        Self {
            system: system.to_owned(),
            runtime: runtime.to_owned(),
            payload,
            in_flight,
            connections,
            calls: tally.calls,
            errors: tally.errors,
            seconds,
            calls_per_s: tally.calls as f64 / seconds,
            mb_per_s: tally.calls as f64 * payload as f64 / seconds / 1e6,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: tally.hist.max() as f64 / 1000.0,
            client_cpu_us_per_call: client_cpu.as_secs_f64() * 1e6 / calls,
            server_cpu_us_per_call: server_cpu.map(|c| c.as_secs_f64() * 1e6 / calls),
            ratio_to_pipe: None,
            threads: 0,
            client_frames_per_write: None,
            server_frames_per_write: None,
            server_rss_mib: None,
            spectrum,
        }
    }
}

/// Prints reports as an aligned table.
pub(crate) fn print_table(reports: &[Report]) {
    println!(
        "{:<11} {:>7} {:>7} {:>5} {:>6} {:>11} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>7}",
        "system",
        "rt",
        "payload",
        "conns",
        "inflt",
        "calls/s",
        "MB/s",
        "p50us",
        "p90us",
        "p99us",
        "p99.9us",
        "cli-cpu",
        "srv-cpu",
        "cpu/call",
        "x pipe",
        "fpw-c",
        "fpw-s",
        "srv-MiB"
    );
    for r in reports {
        let server = r.server_cpu_us_per_call;
        let total = server.map(|s| s + r.client_cpu_us_per_call);
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let opt1 = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let rt = match r.threads {
            0 => r.runtime.clone(),
            n => format!("{}/{n}", r.runtime),
        };
        println!(
            "{:<11} {:>7} {:>7} {:>5} {:>6} {:>11.0} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.2} {:>8} {:>8} {:>6} {:>6} {:>6} {:>7}{}",
            r.system,
            rt,
            r.payload,
            r.connections,
            r.in_flight * r.connections,
            r.calls_per_s,
            r.mb_per_s,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.client_cpu_us_per_call,
            opt(server),
            opt(total),
            opt(r.ratio_to_pipe),
            opt1(r.client_frames_per_write),
            opt1(r.server_frames_per_write),
            opt1(r.server_rss_mib),
            if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() },
        );
    }
}
