//! The only unsafe code in the crate: `fork(2)`, `pthread_atfork(3)`, `sched_setscheduler(2)` and
//! `setpriority(2)`.
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

/// Puts the calling thread in the background: Linux's `SCHED_IDLE` policy, under which it
/// runs only on CPU time that no ordinary thread wants (a tiny share when every core is
/// busy) and any ordinary thread that wakes up takes its core at once. Nice 10 (what
/// `setpriority` sets) is not enough for that: the scheduler lets a niced thread finish its
/// time slice, a few milliseconds, before a woken receiver runs. Where `SCHED_IDLE` is
/// refused, the thread falls back to nice 10; the error says why. Lowering needs no
/// privilege; it cannot be undone without one, so only threads that do nothing else call
/// it. Linux applies both calls, given thread 0 or a thread's id, to that one thread.
#[allow(unsafe_code)]
pub fn run_in_background() -> std::io::Result<()> {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter block it is given, which lives for the
    // whole call, and nothing else.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &parameters) } == 0 {
        return Ok(());
    }
    let refused = std::io::Error::last_os_error();
    let thread =
        libc::id_t::try_from(nix::unistd::gettid().as_raw()).map_err(std::io::Error::other)?;
    // SAFETY: setpriority only reads its three integer arguments; no memory is shared.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, 10) } == 0 {
        Err(std::io::Error::other(format!(
            "SCHED_IDLE refused ({refused}); running at nice 10 instead"
        )))
    } else {
        let error = std::io::Error::last_os_error();
        Err(std::io::Error::other(format!(
            "SCHED_IDLE refused ({refused}), and nice 10 too ({error})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_puts_itself_only_in_the_background() {
        // Field 41 of a thread's stat, `policy`, counted after the name's closing parenthesis.
        let policy_of = |thread: i32| -> i32 {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{thread}/stat"))
                .expect("the thread's stat");
            let after_name = &stat[stat.rfind(')').expect("a name") + 2..];
            after_name
                .split(' ')
                .nth(38)
                .expect("policy")
                .parse()
                .expect("a number")
        };
        let main = nix::unistd::gettid().as_raw();
        let main_before = policy_of(main);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            run_in_background().expect("SCHED_IDLE");
            let _ = tx.send(nix::unistd::gettid().as_raw());
            let _ = wait.recv();
        });
        let thread = rx.recv().expect("a tid");
        assert_eq!(policy_of(thread), libc::SCHED_IDLE);
        assert_eq!(policy_of(main), main_before, "the calling thread only");
        let _ = done.send(());
        worker.join().expect("joined");
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
