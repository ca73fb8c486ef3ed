//! What the phases read of the processes under test: their CPU time
//! (`/proc/<pid>/stat`) and resident memory (`/proc/<pid>/status`).

use anyhow::Context as _;

use crate::Args;

/// CPU seconds the servers and Redis use from `start` to `used`.
pub struct Cpu {
    servers: Vec<u32>,
    redis: Vec<u32>,
    tick: f64,
    servers_before: f64,
    redis_before: f64,
}

impl Cpu {
    pub fn start(args: &Args, tick: f64) -> anyhow::Result<Self> {
        Ok(Cpu {
            servers: args.pids.clone(),
            redis: args.redis_pids.clone(),
            tick,
            servers_before: cpu_seconds(&args.pids, tick)?,
            redis_before: cpu_seconds(&args.redis_pids, tick)?,
        })
    }

    /// (servers, Redis) CPU seconds since `start`.
    pub fn used(&self) -> anyhow::Result<(f64, f64)> {
        Ok((
            cpu_seconds(&self.servers, self.tick)? - self.servers_before,
            cpu_seconds(&self.redis, self.tick)? - self.redis_before,
        ))
    }
}

pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of the processes, in seconds.
pub fn cpu_seconds(pids: &[u32], ticks_per_sec: f64) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may contain spaces:
        // index 0 is field 3 (state), so utime (14) and stime (15) are 11 and 12.
        let rest = stat.rsplit_once(')').context("odd /proc/pid/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields[11].parse()?;
        let stime: f64 = fields[12].parse()?;
        total += (utime + stime) / ticks_per_sec;
    }
    Ok(total)
}

pub fn rss_bytes(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        total += kib * 1024;
    }
    Ok(total)
}
