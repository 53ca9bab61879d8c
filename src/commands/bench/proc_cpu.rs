//! CPU time of the broker and Redis during a bench run, read from `/proc` (Linux, and only
//! when they run on this machine): the process listening on the URL's port is found through
//! `/proc/net/tcp*` (the socket's inode) and the file descriptors of `/proc/*/fd`, and its
//! user + system time is read from `/proc/<pid>/stat`.

use std::{fs, time::Duration};

/// A process whose CPU time can be sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Watched {
    pid: u32,
}

impl Watched {
    /// The process listening on TCP `port` of this machine, if `/proc` says which.
    pub(super) fn listening_on(port: u16) -> Option<Self> {
        let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| fs::read_to_string(table).ok())
            .flat_map(|text| listening_inodes(&text, port))
            .collect();
        if inodes.is_empty() {
            return None;
        }
        let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path())
                    && wanted.iter().any(|w| target.as_os_str() == w.as_str())
                {
                    return Some(Self { pid });
                }
            }
        }
        None
    }

    /// User + system CPU time so far.
    pub(super) fn cpu(self) -> Option<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        cpu_of_stat(&stat, clock_ticks_per_second())
    }
}

/// The socket inodes of `table` (the text of `/proc/net/tcp` or `tcp6`) in state LISTEN on
/// local `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15, counted after the
/// parenthesised command name, which may itself hold spaces).
fn cpu_of_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_second.max(1),
    ))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_user_plus_system_time_even_with_spaces_in_the_name() {
        let stat =
            "4242 (beam.smp (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 30 0 1 0";
        assert_eq!(cpu_of_stat(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(cpu_of_stat("garbage", 100), None);
    }

    #[test]
    fn only_listening_sockets_on_the_port_are_taken() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1628 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000   107        0 41414 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 27182 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inodes(table, 5672), vec![31337]);
        assert_eq!(listening_inodes(table, 6379), vec![27182]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn this_process_can_be_found_and_sampled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = Watched::listening_on(port).expect("found through /proc");
        assert_eq!(me.pid, std::process::id());
        assert!(me.cpu().is_some());
    }
}
