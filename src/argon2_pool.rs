//! The verification budget: every argon2 run (hashing a new secret,
//! verifying a presented one) happens on a fixed pool of threads fed by a
//! bounded queue.
//!
//! The slot belongs to the run, not to the call that asked for it: a caller
//! that gives up (a `grpc-timeout` shorter than one hash) stops waiting for
//! the answer, but its run keeps its thread until the hash is done, so
//! cancelled calls cannot push more runs in flight than there are threads.
//! A fixed set of threads also bounds the allocator arenas that argon2's
//! memory ends up in. When the queue is full a call is refused at once with
//! [`Overloaded`], a retryable answer, never a verdict about a key.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

/// The queue was full: the caller should retry (RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

/// How many argon2 runs may be in flight and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Budget {
    /// Threads, hence runs in flight at once.
    pub max_in_flight: NonZeroUsize,
    /// Runs waiting for a thread before further ones are refused.
    pub max_queued: usize,
}

/// A run, which returns how to hand its result over: that happens once its
/// thread is free again, so a caller that submits again at once finds room.
type Job = Box<dyn FnOnce() -> Delivery + Send>;
type Delivery = Box<dyn FnOnce() + Send>;

/// A fixed pool of argon2 threads. Dropping it lets the threads finish what
/// is queued and exit.
pub struct Argon2Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    work_queued: Condvar,
}

struct State {
    queue: VecDeque<Job>,
    /// Threads not running a job (waiting for one, or about to).
    idle: usize,
    max_queued: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under the lock, so a poisoned lock means only that
        // another thread panicked between two bookkeeping lines; the state is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Argon2Pool {
    pub fn new(budget: Argon2Budget) -> std::io::Result<Self> {
        let threads = budget.max_in_flight.get();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: threads,
                max_queued: budget.max_queued,
                closed: false,
            }),
            work_queued: Condvar::new(),
        });
        for n in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&shared))?;
        }
        Ok(Argon2Pool { shared })
    }

    /// Queues `run` and returns where its result will arrive. The run goes
    /// ahead (and holds its thread) whether or not anyone still waits.
    /// `operation` labels its `apikeyd_argon2_duration_seconds` sample,
    /// which counts from now (queueing included) until the run ends.
    pub fn submit<T: Send + 'static>(
        &self,
        operation: &'static str,
        run: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, Overloaded> {
        let (done, result) = oneshot::channel();
        let submitted = Instant::now();
        let job: Job = Box::new(move || {
            let output = run();
            ::metrics::histogram!("apikeyd_argon2_duration_seconds", "operation" => operation)
                .record(submitted.elapsed());
            Box::new(move || {
                let _ = done.send(output);
            })
        });
        let mut state = self.shared.lock();
        // Queued jobs up to the number of idle threads are about to start.
        if state.queue.len() >= state.idle + state.max_queued {
            return Err(Overloaded);
        }
        state.queue.push_back(job);
        ::metrics::gauge!("apikeyd_argon2_queue_depth").increment(1.0);
        drop(state);
        self.shared.work_queued.notify_one();
        Ok(result)
    }
}

impl Drop for Argon2Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work_queued.notify_all();
    }
}

/// One pool thread: takes jobs until the pool is dropped and the queue empty.
fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.idle -= 1;
            drop(state);
            ::metrics::gauge!("apikeyd_argon2_in_flight").increment(1.0);
            // A panicking job loses its result (its caller sees the pool
            // fail), not the thread.
            let delivery = std::panic::catch_unwind(AssertUnwindSafe(job));
            ::metrics::gauge!("apikeyd_argon2_in_flight").decrement(1.0);
            ::metrics::gauge!("apikeyd_argon2_queue_depth").decrement(1.0);
            shared.lock().idle += 1;
            if let Ok(deliver) = delivery {
                deliver();
            }
            state = shared.lock();
            continue;
        }
        if state.closed {
            return;
        }
        state = shared
            .work_queued
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Runs in flight by default: the CPUs this process may use, which in a
/// container is its CPU quota (rounded up), not the host's cores.
pub fn default_max_in_flight() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    cgroup_cpu_limit(Path::new("/sys/fs/cgroup")).map_or(cores, |quota| quota.min(cores))
}

/// The CPU limit of the cgroup mounted at `root`, in whole CPUs: cgroup v2's
/// `cpu.max`, else cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
/// `None` when there is no limit (or no cgroup file to read).
pub fn cgroup_cpu_limit(root: &Path) -> Option<NonZeroUsize> {
    let read = |path: &str| std::fs::read_to_string(root.join(path)).ok();
    if let Some(max) = read("cpu.max") {
        let mut fields = max.split_whitespace();
        let (quota, period) = (fields.next()?, fields.next().unwrap_or("100000"));
        return whole_cpus(quota, period);
    }
    ["cpu", "cpu,cpuacct"].into_iter().find_map(|dir| {
        let quota = read(&format!("{dir}/cpu.cfs_quota_us"))?;
        let period = read(&format!("{dir}/cpu.cfs_period_us"))?;
        whole_cpus(quota.trim(), period.trim())
    })
}

/// `quota / period` rounded up; `None` for "max" (v2) or a negative quota (v1).
fn whole_cpus(quota: &str, period: &str) -> Option<NonZeroUsize> {
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok().filter(|p| *p > 0)?;
    NonZeroUsize::new(usize::try_from(quota.div_ceil(period)).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn budget(max_in_flight: usize, max_queued: usize) -> Argon2Budget {
        Argon2Budget {
            max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
            max_queued,
        }
    }

    /// A job that says when it starts and then holds its thread until
    /// released, for tests that need the pool busy.
    struct Blocker {
        started: std::sync::mpsc::Receiver<()>,
        release: std::sync::mpsc::Sender<()>,
    }

    fn blocker() -> (Blocker, impl FnOnce() + Send + 'static) {
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let job = move || {
            let _ = started_tx.send(());
            let _ = released.recv();
        };
        (Blocker { started, release }, job)
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_freed_slot_admits_again() {
        let pool = Argon2Pool::new(budget(1, 1)).unwrap();
        let (first, first_job) = blocker();
        let (second, second_job) = blocker();
        let running = pool.submit("test", first_job).unwrap();
        first.started.recv_timeout(PATIENCE).unwrap();
        let queued = pool.submit("test", second_job).unwrap();

        assert_eq!(pool.submit("test", || ()).unwrap_err(), Overloaded);

        first.release.send(()).unwrap();
        running.await.unwrap();
        second.started.recv_timeout(PATIENCE).unwrap();
        let third = pool.submit("test", || 3).unwrap();
        second.release.send(()).unwrap();
        queued.await.unwrap();
        assert_eq!(third.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_abandoned_run_keeps_its_thread_until_it_ends() {
        let pool = Argon2Pool::new(budget(1, 0)).unwrap();
        let (blocked, job) = blocker();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let abandoned = pool
            .submit("test", move || {
                job();
                finished_tx.send(()).unwrap();
            })
            .unwrap();
        drop(abandoned);
        blocked.started.recv_timeout(PATIENCE).unwrap();

        assert_eq!(
            pool.submit("test", || ()).unwrap_err(),
            Overloaded,
            "the caller left, the run did not"
        );
        blocked.release.send(()).unwrap();
        finished.recv_timeout(PATIENCE).unwrap();
    }

    #[tokio::test]
    async fn no_more_than_the_budget_runs_at_once() {
        let pool = Argon2Pool::new(budget(3, 100)).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let results: Vec<_> = (0..60)
            .map(|_| {
                let (running, peak) = (running.clone(), peak.clone());
                pool.submit("test", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .unwrap()
            })
            .collect();
        for result in results {
            result.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn a_panicking_run_fails_its_caller_and_keeps_the_thread() {
        let pool = Argon2Pool::new(budget(1, 1)).unwrap();
        let failed = pool.submit("test", || -> u8 { panic!("boom") }).unwrap();
        assert!(failed.await.is_err());
        assert_eq!(pool.submit("test", || 7).unwrap().await.unwrap(), 7);
    }

    #[test]
    fn the_cpu_limit_comes_from_cgroup_v2_or_v1() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_cpu_limit(dir.path()), None, "no cgroup files");

        std::fs::create_dir(dir.path().join("cpu")).unwrap();
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(dir.path().join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cgroup_cpu_limit(dir.path()), None, "v1 without a quota");
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "150000\n").unwrap();
        assert_eq!(
            cgroup_cpu_limit(dir.path()),
            NonZeroUsize::new(2),
            "v1: 1.5 CPUs"
        );

        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_cpu_limit(dir.path()), None, "v2 without a limit");
        std::fs::write(dir.path().join("cpu.max"), "400000 100000\n").unwrap();
        assert_eq!(
            cgroup_cpu_limit(dir.path()),
            NonZeroUsize::new(4),
            "v2: 4 CPUs"
        );
        std::fs::write(dir.path().join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(
            cgroup_cpu_limit(dir.path()),
            NonZeroUsize::new(1),
            "v2: half a CPU"
        );
    }
}
