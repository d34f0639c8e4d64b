//! What this host can tell about a worker's process: whether it is alive (signal 0, through
//! `nix`) and when it started (`/proc`). Used to retire the instances of dead processes at
//! once, and to prove inherited state: a counter whose start time is earlier than its
//! process's own start was recorded by a parent before fork.
//!
//! A pid can be checked only from the same pid namespace: a sidecar container that cannot
//! see the workers' processes would find every pid gone, so the checks can be switched off
//! (`aggregation.pid_check`).

use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{Pid, SysconfVar, sysconf};

use crate::model::{AttrValue, Attributes};

/// The pid of the process `resource` describes when that process runs on this host: its
/// `host.name` is `local_host`, or `local_writer` says it wrote through the unix socket.
pub(super) fn local_pid(
    resource: &Attributes,
    local_host: &str,
    local_writer: bool,
) -> Option<i32> {
    let Some(AttrValue::Int(pid)) = resource.get("process.pid") else {
        return None;
    };
    let on_this_host =
        matches!(resource.get("host.name"), Some(AttrValue::Str(host)) if host == local_host);
    if !on_this_host && !local_writer {
        return None;
    }
    // 0 and negative numbers address process groups, not a process.
    i32::try_from(*pid).ok().filter(|pid| *pid > 0)
}

/// Whether no process `pid` exists. EPERM means it exists but belongs to someone else.
pub(super) fn is_gone(pid: i32) -> bool {
    matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// When process `pid` started, in nanoseconds since the Unix epoch, to within about 20 ms
/// (the kernel counts in clock ticks, and the boot time is read from `/proc/uptime`); `None`
/// when `/proc` does not say.
pub(super) fn started_at(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // after the last ')' start with field 3, so `starttime` (field 22) is the 20th of them.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let ticks_per_second = u64::try_from(sysconf(SysconfVar::CLK_TCK).ok()??).ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime_seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let booted = u64::try_from(now).ok()? as f64 - uptime_seconds * 1e9;
    let since_boot = ticks as f64 * 1e9 / ticks_per_second as f64;
    Some((booted + since_boot) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(pid: i64, host: &str) -> Attributes {
        Attributes::new(vec![
            ("process.pid".into(), AttrValue::Int(pid)),
            ("host.name".into(), AttrValue::Str(host.into())),
        ])
    }

    #[test]
    fn own_process_is_alive_and_started_before_now() {
        let pid = std::process::id() as i32;
        assert!(!is_gone(pid));
        let started = started_at(pid).expect("/proc tells");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        assert!(started <= now + 50_000_000, "{started} vs {now}");
    }

    #[test]
    fn a_child_started_later_than_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let started = started_at(child.id() as i32);
        let own = started_at(std::process::id() as i32);
        child.kill().expect("kill the sleep we started");
        child.wait().expect("reap");
        // Each reading has its own boot time (from /proc/uptime, in 10 ms steps): two
        // processes started within one step may read either way round.
        let margin = 20_000_000;
        assert!(started.expect("child") + margin >= own.expect("own"));
    }

    #[test]
    fn reaped_child_is_gone() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        child.wait().expect("reap");
        assert!(is_gone(pid));
        assert_eq!(started_at(pid), None);
    }

    #[test]
    fn only_pids_of_this_host_are_looked_at() {
        assert_eq!(local_pid(&resource(7, "here"), "here", false), Some(7));
        assert_eq!(local_pid(&resource(7, "elsewhere"), "here", false), None);
        assert_eq!(
            local_pid(&resource(7, "elsewhere"), "here", true),
            Some(7),
            "a unix socket writer is local"
        );
        assert_eq!(local_pid(&resource(0, "here"), "here", false), None);
        assert_eq!(local_pid(&resource(-1, "here"), "here", false), None);
        assert_eq!(local_pid(&resource(1 << 40, "here"), "here", false), None);
    }
}
