//! The control socket: a line protocol over a Unix socket between `wbcache serve` and
//! `wbcache status` / `wbcache message` (docs/DESIGN.md, "Runner", documents it).
//!
//! Request: one line, `status` or `message <words>` (what the engine's `message` takes:
//! `drop_caches`, `clear_stat`, `<tunable> <value>`). Response: zero or more `key value` lines
//! (value = the rest of the line), then `ok` or `err <reason>` on a line of its own. A client
//! may send several requests on one connection, one at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use engine::Status;

use crate::engine_thread::{EngineReq, Job, Outcome};
use crate::events::Events;
use crate::queue::BoundedQueue;
use crate::sync::Arc;

/// Longest request line accepted.
pub const MAX_LINE: usize = 4096;
/// Requests per control connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1024;
/// A control client that sends nothing for this long is dropped (the control thread serves
/// one connection at a time).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of each of the seed's 16 counters, by index bits (write, hit, on buffer, full size).
pub fn stat_name(i: usize) -> String {
    format!(
        "stat_{}_{}_{}_{}",
        if i & 8 != 0 { "write" } else { "read" },
        if i & 4 != 0 { "hit" } else { "miss" },
        if i & 2 != 0 { "buffer" } else { "device" },
        if i & 1 != 0 { "full" } else { "partial" },
    )
}

/// The status as `key value` pairs, in a stable order.
pub fn status_pairs(s: &Status) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut kv = |k: &str, val: String| v.push((k.to_string(), val));
    kv("cursor", s.cursor.to_string());
    kv("nr_cache_blocks", s.nr_cache_blocks.to_string());
    kv("nr_segments", s.nr_segments.to_string());
    kv("current_id", s.current_id.to_string());
    kv("last_flushed_id", s.last_flushed_id.to_string());
    kv("last_writeback_id", s.last_writeback_id.to_string());
    kv("nr_dirty_cache_blocks", s.nr_dirty_cache_blocks.to_string());
    for (i, c) in s.stat.iter().enumerate() {
        kv(&stat_name(i), c.to_string());
    }
    kv("nr_partial_flushed", s.nr_partial_flushed.to_string());
    for (name, value) in s.tunables.list() {
        kv(name, value.to_string());
    }
    kv("segment_size_order", s.segment_size_order.to_string());
    kv("nr_rambuf_pool", s.nr_rambuf_pool.to_string());
    kv("last_sealed_id", s.last_sealed_id.to_string());
    kv("last_durable_id", s.last_durable_id.to_string());
    kv("durable_record_id", s.durable_record_id.to_string());
    kv("writeback_allowed", (s.writeback_allowed as u8).to_string());
    kv("draining", (s.draining as u8).to_string());
    kv("dead", s.dead.clone().unwrap_or_else(|| "-".into()));
    kv("cache_type", s.cache_type.to_string());
    kv("plog_entries", s.plog_entries.to_string());
    kv("plog_flushes", s.plog_flushes.to_string());
    kv("plog_epoch", s.plog_epoch.to_string());
    kv("bypassed_writes", s.bypassed_writes.to_string());
    kv("status_line", s.to_string());
    v
}

/// Runs one request on the engine thread and waits for its outcome.
fn ask_engine(jobs: &Events, req: EngineReq) -> Option<Outcome> {
    let slot = Arc::new(BoundedQueue::new(1));
    let to = slot.clone();
    let job = Job {
        req,
        reply: Box::new(move |o| {
            let _ = to.push(o);
        }),
    };
    jobs.push_job(job).ok()?;
    slot.pop()
}

/// The response lines to one request line.
pub fn answer(jobs: &Events, line: &str) -> String {
    let line = line.trim();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let req = match cmd {
        "status" if rest.is_empty() => EngineReq::Status,
        "message" if !rest.trim().is_empty() => EngineReq::Message(rest.trim().to_string()),
        _ => {
            return format!(
                "err unknown request {line:?}: expected `status` or `message <words>`\n"
            )
        }
    };
    match ask_engine(jobs, req) {
        None => "err the server is shutting down\n".to_string(),
        Some(Outcome::Status(s)) => {
            let mut out = String::new();
            for (k, v) in status_pairs(&s) {
                out.push_str(&format!("{k} {v}\n"));
            }
            out + "ok\n"
        }
        Some(Outcome::Done) => "ok\n".to_string(),
        Some(Outcome::Failed(e)) => format!("err {e}\n"),
        Some(Outcome::Data(_)) => "err unexpected data reply\n".to_string(),
    }
}

/// Serves one control connection.
pub fn serve_connection(stream: UnixStream, jobs: &Events) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE || !line.ends_with('\n') {
            out.write_all(b"err request line too long or unterminated\n")?;
            return Ok(());
        }
        out.write_all(answer(jobs, &line).as_bytes())?;
    }
    Ok(())
}

/// Binds the control socket, replacing a stale one (no server answering on it).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    crate::server::bind_unix(path)
}

/// Client side: sends one request, returns the `key value` pairs of an `ok` response.
pub fn request(path: &Path, line_sent: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a wbcache server at control socket {}: {e} (is `wbcache serve` running? see --control)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("{line_sent}\n").as_bytes())?;
    let reader = BufReader::new(s);
    let mut pairs = Vec::new();
    // A status has a few dozen lines; anything far beyond that is not our server.
    for line in reader.lines().take(10_000) {
        let line = line?;
        if line == "ok" {
            return Ok(pairs);
        }
        if let Some(reason) = line.strip_prefix("err ") {
            anyhow::bail!("server refused `{line_sent}`: {reason}");
        }
        let (k, v) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        pairs.push((k.to_string(), v.to_string()));
    }
    anyhow::bail!("control connection closed before the response ended")
}

/// Renders pairs as a JSON object: numbers stay numbers, everything else is a string.
pub fn to_json(pairs: &[(String, String)]) -> String {
    let esc = |s: &str| {
        let mut o = String::with_capacity(s.len() + 2);
        o.push('"');
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let val = if v.parse::<u64>().is_ok() {
                v.clone()
            } else if k == "dead" && v == "-" {
                "null".to_string()
            } else {
                esc(v)
            };
            format!("  {}: {}", esc(k), val)
        })
        .collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_numbers_and_escapes_strings() {
        let pairs = vec![
            ("a".to_string(), "12".to_string()),
            ("dead".to_string(), "-".to_string()),
            ("s".to_string(), "x \"y\"\n".to_string()),
        ];
        assert_eq!(
            to_json(&pairs),
            "{\n  \"a\": 12,\n  \"dead\": null,\n  \"s\": \"x \\\"y\\\"\\u000a\"\n}"
        );
    }

    #[test]
    fn stat_names_are_distinct() {
        let names: std::collections::BTreeSet<String> = (0..16).map(stat_name).collect();
        assert_eq!(names.len(), 16);
    }
}
