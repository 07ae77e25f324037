//! CPU time and memory of the service processes, from `/proc/<pid>/stat` (utime + stime) and
//! `/proc/<pid>/status` (VmRSS, VmHWM). Linux only.

use std::path::Path;

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel fixes at 100 for user space on
/// every architecture we run on.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}: {reason}")]
    Read { pid: u32, reason: String },
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format { pid: u32, file: &'static str },
    #[error("bad --pids entry {0:?}: expected name=pid")]
    BadSpec(String),
}

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub rss_kb: u64,
    /// Peak resident set size.
    pub hwm_kb: u64,
}

/// A process to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

fn read(pid: u32, file: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file)).map_err(|e| {
        ProcError::Read {
            pid,
            reason: e.to_string(),
        }
    })
}

/// utime + stime from the text of `/proc/<pid>/stat`, in ticks. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The value in kB of `key:` in the text of `/proc/<pid>/status`.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let stat = read(pid, "stat")?;
    let ticks = parse_stat_ticks(&stat).ok_or(ProcError::Format { pid, file: "stat" })?;
    let status = read(pid, "status")?;
    let rss_kb = parse_status_kb(&status, "VmRSS").ok_or(ProcError::Format {
        pid,
        file: "status",
    })?;
    let hwm_kb = parse_status_kb(&status, "VmHWM").unwrap_or(rss_kb);
    Ok(Sample {
        cpu_secs: ticks as f64 / TICKS_PER_SEC,
        rss_kb,
        hwm_kb,
    })
}

/// Parses `name=pid,name=pid`.
pub fn parse_pids(spec: &str) -> Result<Vec<Watched>, ProcError> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let (name, pid) = entry
                .split_once('=')
                .ok_or_else(|| ProcError::BadSpec(entry.to_owned()))?;
            let pid = pid
                .trim()
                .parse()
                .map_err(|_| ProcError::BadSpec(entry.to_owned()))?;
            Ok(Watched {
                name: name.trim().to_owned(),
                pid,
            })
        })
        .collect()
}

/// Finds processes whose `comm` is one of `names` (the kernel truncates it to 15 bytes, so
/// `webhook-publisher` is matched by its first 15). With several matches, the oldest (lowest
/// pid) wins; pass `--pids` when that guess is not good enough.
pub fn find_by_name(names: &[&str]) -> Vec<Watched> {
    let mut found: Vec<Watched> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(comm) = read(pid, "comm") else {
            continue;
        };
        let comm = comm.trim();
        for name in names {
            let short: String = name.chars().take(15).collect();
            if comm == short && !found.iter().any(|w| w.name == *name) {
                found.push(Watched {
                    name: (*name).to_owned(),
                    pid,
                });
            }
        }
    }
    found
}

/// The service binaries looked for when no `--pids` is given.
pub const SERVICE_NAMES: [&str; 5] = [
    "gateway",
    "orders",
    "products",
    "webhook-publisher",
    "notifier",
];
