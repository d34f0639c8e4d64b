//! Forked workers: `fork` from a single-threaded master, one pipe each way, and a
//! one-byte protocol between master and worker ([`READY`], [`GO`], [`EXITING`]), which
//! `tests/fork.rs` speaks too. Waiting is `poll` or `waitpid` with a deadline.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::CheckError;
use crate::sys::{self, Forked};

/// A worker tells its master it has done its first part and waits.
pub const READY: u8 = b'r';
/// The master tells a waiting worker to go on.
pub const GO: u8 = b'g';
/// A worker tells its master it is about to exit.
pub const EXITING: u8 = b'x';

/// The master's handle on a forked worker: its pid and two pipes.
#[derive(Debug)]
pub struct Worker {
    pub pid: Pid,
    to_worker: OwnedFd,
    from_worker: OwnedFd,
}

/// The worker's side of the pipes.
#[derive(Debug)]
pub struct WorkerLink {
    from_master: OwnedFd,
    to_master: OwnedFd,
}

/// Forks a worker that runs `body` and exits: 0 when it returns Ok, 1 (after printing the
/// error to stderr) when it fails, 101 when it panics. Refuses to fork from a
/// multi-threaded process.
pub fn fork_worker<F>(body: F) -> Result<Worker, CheckError>
where
    F: FnOnce(&WorkerLink) -> Result<(), String>,
{
    match sys::thread_count() {
        Some(1) | None => {}
        Some(threads) => {
            return Err(CheckError::Fork(format!(
                "the master has {threads} threads; forking is only safe from one"
            )));
        }
    }
    let (from_master, to_worker) = nix::unistd::pipe().map_err(fork_error)?;
    let (from_worker, to_master) = nix::unistd::pipe().map_err(fork_error)?;
    match sys::fork_process().map_err(fork_error)? {
        Forked::Parent(pid) => {
            drop((from_master, to_master));
            Ok(Worker {
                pid,
                to_worker,
                from_worker,
            })
        }
        Forked::Child => {
            drop((to_worker, from_worker));
            let link = WorkerLink {
                from_master,
                to_master,
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&link)));
            let code = match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(error)) => {
                    eprintln!("fanin check: worker {}: {error}", std::process::id());
                    1
                }
                Err(_) => 101,
            };
            std::process::exit(code)
        }
    }
}

fn fork_error(error: nix::Error) -> CheckError {
    CheckError::Fork(error.to_string())
}

/// Writes one byte.
fn send_byte(fd: &OwnedFd, byte: u8) -> Result<(), String> {
    match nix::unistd::write(fd, &[byte]) {
        Ok(1) => Ok(()),
        Ok(_) => Err("short write to the pipe".to_string()),
        Err(error) => Err(format!("write to the pipe: {error}")),
    }
}

/// Reads one byte, waiting at most `timeout`.
fn receive_byte(fd: &OwnedFd, timeout: Duration) -> Result<u8, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("nothing on the pipe after {timeout:?}"));
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(error) => return Err(format!("poll: {error}")),
        }
        let mut byte = [0u8; 1];
        return match nix::unistd::read(fd, &mut byte) {
            Ok(1) => Ok(byte[0]),
            Ok(_) => Err("the other side closed the pipe".to_string()),
            Err(error) => Err(format!("read from the pipe: {error}")),
        };
    }
}

impl WorkerLink {
    /// Tells the master something.
    pub fn send(&self, byte: u8) -> Result<(), String> {
        send_byte(&self.to_master, byte)
    }

    /// Waits for the master's next byte.
    pub fn receive(&self, timeout: Duration) -> Result<u8, String> {
        receive_byte(&self.from_master, timeout)
    }
}

impl Worker {
    /// Sends the worker a byte.
    pub fn send(&self, byte: u8) -> Result<(), String> {
        send_byte(&self.to_worker, byte).map_err(|error| format!("worker {}: {error}", self.pid))
    }

    /// Waits for `expected` from the worker.
    pub fn expect(&self, expected: u8, timeout: Duration) -> Result<(), String> {
        match receive_byte(&self.from_worker, timeout) {
            Ok(byte) if byte == expected => Ok(()),
            Ok(byte) => Err(format!(
                "worker {}: expected {:?}, got {:?}",
                self.pid, expected as char, byte as char
            )),
            Err(error) => Err(format!("worker {}: {error}", self.pid)),
        }
    }

    /// Sends the worker a signal.
    pub fn kill(&self, signal: Signal) -> Result<(), String> {
        nix::sys::signal::kill(self.pid, signal)
            .map_err(|error| format!("kill {}: {error}", self.pid))
    }

    /// Waits (polling, up to `timeout`) for the worker to end, and returns how it ended.
    pub fn wait(&self, timeout: Duration) -> Result<WaitStatus, String> {
        wait_for(self.pid, timeout)
    }
}

/// Calls `probe` every few milliseconds until it returns `Some`, fails, or `timeout` passes
/// (then `Ok(None)`): the one way the client side and the tests wait for something. It
/// probes once more at the deadline, so a slow machine never loses to the clock.
///
/// # Errors
/// The first error `probe` returns.
pub fn poll_until<T, E>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = Instant::now() + timeout;
    loop {
        let past = Instant::now() >= deadline;
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        if past {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (polling, up to `timeout`) for child `pid` to end, and returns how it ended; a
/// child still running at the deadline is left running.
pub fn wait_for(pid: Pid, timeout: Duration) -> Result<WaitStatus, String> {
    let ended = poll_until(timeout, || match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => Ok(None),
        Ok(status) => Ok(Some(status)),
        Err(error) => Err(format!("waitpid {pid}: {error}")),
    })?;
    ended.ok_or_else(|| format!("process {pid} still running after {timeout:?}"))
}

/// Waits for every worker; one message per worker that did not exit with status 0.
pub(super) fn wait_all(workers: &[Worker], timeout: Duration) -> Vec<String> {
    workers
        .iter()
        .filter_map(|worker| match worker.wait(timeout) {
            Ok(WaitStatus::Exited(_, 0)) => None,
            Ok(status) => Some(format!("worker {} ended with {status:?}", worker.pid)),
            Err(error) => {
                let _ = worker.kill(Signal::SIGKILL);
                let _ = worker.wait(timeout);
                Some(error)
            }
        })
        .collect()
}
