//! The broker's CPU time and resident memory, from /proc.

use std::io;

/// Clock ticks per second for /proc/PID/stat times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// (utime, stime) in clock ticks out of the text of /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from the last ')'. After it: 3 state, ..., 14 utime, 15 stime.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// VmRSS in KiB out of the text of /proc/PID/status.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Busy CPU ticks of the whole machine (all cores) out of the text of
/// /proc/stat: (user + nice + system + steal, irq + softirq). Interrupt time
/// is apart because the kernel does not charge it to any process.
pub fn parse_machine_busy_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Some((get(0) + get(1) + get(2) + get(7), get(5) + get(6)))
}

/// (process time, interrupt time) of the whole machine, in seconds.
pub fn machine_busy_seconds() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let hz = clk_tck() as f64;
    parse_machine_busy_ticks(&s).map(|(p, i)| (p as f64 / hz, i as f64 / hz))
}

fn stat_path(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    }
}

/// CPU seconds used so far by a process, user and kernel apart.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// `self - earlier`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// CPU seconds used so far by `pid` (`None`: this process).
pub fn cpu_times(pid: Option<u32>) -> io::Result<CpuTimes> {
    let s = std::fs::read_to_string(stat_path(pid))?;
    let (u, k) = parse_stat_ticks(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable stat"))?;
    let hz = clk_tck() as f64;
    Ok(CpuTimes {
        user: u as f64 / hz,
        system: k as f64 / hz,
    })
}

/// CPU seconds (user + system) used so far by `pid` (`None`: this process).
pub fn cpu_seconds(pid: Option<u32>) -> io::Result<f64> {
    cpu_times(pid).map(CpuTimes::total)
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&s).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

/// One server process at one point in time; `None` where /proc could not
/// be read (the process has gone).
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub pid: u32,
    pub cpu: Option<CpuTimes>,
    pub rss_kib: Option<u64>,
}

/// A point-in-time sample of the server processes (the `--server-pid`s) and
/// of the harness itself.
#[derive(Debug, Clone)]
pub struct Sample {
    pub servers: Vec<ProcSample>,
    pub self_cpu: f64,
    pub machine_busy: Option<(f64, f64)>,
    pub at: std::time::Instant,
}

impl Sample {
    /// CPU of all server processes together; `None` unless every one was read.
    pub fn server_cpu(&self) -> Option<CpuTimes> {
        sum_all(self.servers.iter().map(|s| s.cpu), |a, b| CpuTimes {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }

    /// RSS of all server processes together; `None` unless every one was read.
    pub fn server_rss_kib(&self) -> Option<u64> {
        sum_all(self.servers.iter().map(|s| s.rss_kib), |a, b| a + b)
    }
}

/// The sum of all items, or `None` when there are none or any is `None`.
fn sum_all<T: Copy>(items: impl Iterator<Item = Option<T>>, add: impl Fn(T, T) -> T) -> Option<T> {
    let mut acc: Option<T> = None;
    for it in items {
        let v = it?;
        acc = Some(match acc {
            None => v,
            Some(a) => add(a, v),
        });
    }
    acc
}

pub fn sample(pids: &[u32]) -> Sample {
    Sample {
        servers: pids
            .iter()
            .map(|&pid| ProcSample {
                pid,
                cpu: cpu_times(Some(pid)).ok(),
                rss_kib: rss_kib(pid).ok(),
            })
            .collect(),
        self_cpu: cpu_seconds(None).unwrap_or(0.0),
        machine_busy: machine_busy_seconds(),
        at: std::time::Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "1234 (sw (itch) board) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(s), Some((250, 75)));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_rss() {
        let s = "Name:\tswitchboard\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t2\n";
        assert_eq!(parse_status_rss_kib(s), Some(4321));
    }

    #[test]
    fn parses_machine_busy() {
        let s = "cpu  100 20 30 5000 7 1 2 3 0 0\ncpu0 50 10 15 2500 3 0 1 1 0 0\n";
        assert_eq!(
            parse_machine_busy_ticks(s),
            Some((100 + 20 + 30 + 3, 1 + 2))
        );
    }

    #[test]
    fn sums_servers_only_when_all_were_read() {
        let p = |pid, cpu: Option<(f64, f64)>, rss| ProcSample {
            pid,
            cpu: cpu.map(|(user, system)| CpuTimes { user, system }),
            rss_kib: rss,
        };
        let mut s = Sample {
            servers: vec![
                p(1, Some((1.0, 2.0)), Some(100)),
                p(2, Some((0.5, 0.25)), Some(50)),
            ],
            self_cpu: 0.0,
            machine_busy: None,
            at: std::time::Instant::now(),
        };
        assert_eq!(
            s.server_cpu(),
            Some(CpuTimes {
                user: 1.5,
                system: 2.25
            })
        );
        assert_eq!(s.server_rss_kib(), Some(150));
        s.servers[1].rss_kib = None;
        assert_eq!(s.server_rss_kib(), None);
        s.servers.clear();
        assert_eq!(s.server_cpu(), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        let t = cpu_times(Some(std::process::id())).unwrap();
        assert!(t.user >= 0.0 && t.system >= 0.0);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(clk_tck() > 0);
    }
}
