//! CPU time of processes, from `/proc/<pid>/stat`: where a pass spent its CPU (the client side,
//! the database server), so a ratio can be read against what limited it.

use std::time::Duration;

/// CPU time (user + system, all threads) used so far by process `pid`, or `None` if it cannot
/// be read (gone, or not Linux).
pub fn of_process(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// CPU used during a pass by the client side and by the server (when known).
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    /// The process that read and sent the rows (the platform, or this benchmark).
    pub client: Option<Duration>,
    /// The database server (Cassandra), when its pid is known.
    pub server: Option<Duration>,
}

/// Measures the CPU that `client` and `server` use while `pass` runs.
pub fn during<T>(client: Option<u32>, server: Option<u32>, pass: impl FnOnce() -> T) -> (T, CpuUse) {
    let before = (client.and_then(of_process), server.and_then(of_process));
    let result = pass();
    let after = (client.and_then(of_process), server.and_then(of_process));
    let used = CpuUse {
        client: before.0.zip(after.0).map(|(b, a)| a.saturating_sub(b)),
        server: before.1.zip(after.1).map(|(b, a)| a.saturating_sub(b)),
    };
    (result, used)
}

impl CpuUse {
    /// ` client 2.1 µs/row, server 9.3 µs/row`, for the parts that are known.
    pub fn per_row(&self, rows: u64) -> String {
        let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows.max(1) as f64;
        let mut text = String::new();
        if let Some(client) = self.client {
            text.push_str(&format!("  client {:.1} µs/row", per_row(client)));
        }
        if let Some(server) = self.server {
            text.push_str(&format!("  server {:.1} µs/row", per_row(server)));
        }
        text
    }
}
