//! The only unsafe code in the crate: `fork(2)`, `pthread_atfork(3)` and `setpriority(2)`.
//!
//! The first two are unsafe for the same reason: after a fork, the child holds a copy of
//! every lock the parent's other threads held at that moment, and none of those threads.
//! Each function here says what its caller must guarantee.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::unistd::{ForkResult, Pid};

/// What `fork_process` returned in one of the two processes.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Forks the calling process.
///
/// The caller must be single-threaded (see [`thread_count`]), or the child must restrict
/// itself to async-signal-safe work until it execs or exits: a lock held by another thread
/// at fork time stays locked forever in the child.
#[allow(unsafe_code)]
pub fn fork_process() -> nix::Result<Forked> {
    // SAFETY: fork itself is always sound to call; the hazard is what the child does next,
    // which is the caller's contract documented above.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Threads of the calling process, from `/proc/self/task` (None where /proc is missing).
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|tasks| tasks.count())
}

/// Incremented in every child right after a fork, by the hook [`install_fork_hook`]
/// registers.
static FORKS: AtomicU64 = AtomicU64::new(0);
static HOOK_INSTALLED: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Only an atomic store: the one thing an at-fork child handler may safely do here.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Registers (once per process image) a `pthread_atfork` child handler that bumps
/// [`fork_generation`]. Returns whether the hook is in place.
#[allow(unsafe_code)]
pub fn install_fork_hook() -> bool {
    HOOK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` with no captured state that only
        // touches an atomic, which is async-signal-safe; the prepare and parent handlers are
        // absent.
        let status = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        HOOK_INSTALLED.store(status == 0, Ordering::Relaxed);
    });
    HOOK_INSTALLED.load(Ordering::Relaxed)
}

/// How many forks this process is removed from the one that installed the hook: a value
/// recorded before a fork differs from the one read after it, in the child only.
pub fn fork_generation() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Lowers the calling thread's scheduling priority to nice 10, so that when it competes
/// for a core with the threads that receive exports, they win. Linux applies
/// `setpriority(PRIO_PROCESS, tid)` to that one thread. Lowering needs no privilege; it
/// cannot be undone without one, so only threads that do nothing else call it.
#[allow(unsafe_code)]
pub fn lower_thread_priority() -> std::io::Result<()> {
    let thread = nix::unistd::gettid().as_raw();
    let thread = libc::id_t::try_from(thread).map_err(std::io::Error::other)?;
    // SAFETY: setpriority only reads its three integer arguments; no memory is shared.
    let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, 10) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let nice_of = |thread: i32| -> i64 {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{thread}/stat"))
                .expect("the thread's stat");
            // Field 19, counted after the command name's closing parenthesis.
            let after_name = &stat[stat.rfind(')').expect("a name") + 2..];
            after_name
                .split(' ')
                .nth(16)
                .expect("nice")
                .parse()
                .expect("a number")
        };
        let main = nix::unistd::gettid().as_raw();
        let lowered = std::thread::spawn(|| {
            lower_thread_priority().expect("setpriority");
            nix::unistd::gettid().as_raw()
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            lower_thread_priority().expect("setpriority");
            let _ = tx.send(nix::unistd::gettid().as_raw());
            let _ = wait.recv();
        });
        let thread = rx.recv().expect("a tid");
        assert_eq!(nice_of(thread), 10);
        assert_eq!(nice_of(main), 0, "the calling thread only");
        let _ = done.send(());
        worker.join().expect("joined");
        lowered.join().expect("joined");
    }

    #[test]
    fn the_fork_hook_installs_and_a_single_process_keeps_its_generation() {
        assert!(install_fork_hook());
        let before = fork_generation();
        assert!(install_fork_hook(), "installing twice is harmless");
        assert_eq!(fork_generation(), before);
    }

    #[test]
    fn thread_count_sees_another_thread() {
        let started = std::sync::Barrier::new(2);
        let finish = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                started.wait();
                finish.wait();
            });
            started.wait();
            // This thread and the one parked on `finish`, at least.
            let count = thread_count().expect("/proc is mounted");
            finish.wait();
            assert!(count >= 2, "{count}");
        });
    }
}
