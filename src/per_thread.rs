//! A value per thread, each on a cache line of its own, for state the hot
//! path updates on every call: when the cores share one cache line, every
//! update pulls it from the other core (about 100 ns under load on this
//! machine kind, measured with `perf`), and a lock shared by the cores is
//! also contended. Readers (a scrape, a flush) visit every thread's value.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Values per [`PerThread`]. Threads beyond this share them: still correct,
/// only contended again (tokio runs one worker per core).
pub const SLOTS: usize = 16;

pub struct PerThread<T> {
    values: [CachePadded<T>; SLOTS],
}

impl<T: Default> Default for PerThread<T> {
    fn default() -> Self {
        PerThread {
            values: std::array::from_fn(|_| CachePadded::new(T::default())),
        }
    }
}

impl<T> PerThread<T> {
    /// The calling thread's value.
    pub fn mine(&self) -> &T {
        &self.values[thread_slot()]
    }

    /// Every thread's value.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.values.iter().map(|value| &**value)
    }
}

/// This thread's slot, handed out in turn as threads first ask.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|slot| *slot)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[test]
    fn a_thread_keeps_its_value_and_readers_see_every_threads() {
        let counts = std::sync::Arc::new(PerThread::<AtomicU64>::default());
        let threads: Vec<_> = (0..SLOTS + 3)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    assert!(std::ptr::eq(counts.mine(), counts.mine()));
                    counts.mine().fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let total: u64 = counts.all().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(total, SLOTS as u64 + 3);
    }
}
