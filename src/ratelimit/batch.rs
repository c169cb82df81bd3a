//! Decisions that arrive together leave together: each lane (a Redis Cluster
//! slot; the one lane of a single node) has at most one script call in
//! flight, and the decisions that queue meanwhile go out as the next call,
//! up to a batch size. A lone decision goes at once, so batching adds no wait
//! when there is nothing to wait for; under load the batches grow and the
//! round trips per decision shrink (gubernator's batching, without its
//! fixed delay; unlike envoyproxy/ratelimit's pipelining, one script still
//! decides each decision atomically, so limits stay exact).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

/// Items queued per lane. A lane present in the map has a sender working
/// through it; a lane absent has none.
pub struct Lanes<T> {
    /// foldhash: a lookup per decision.
    waiting: Mutex<HashMap<u16, Vec<T>, foldhash::fast::RandomState>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            waiting: Mutex::new(HashMap::default()),
        }
    }
}

impl<T> Lanes<T> {
    /// Queues `item` on `lane`. True when the lane had no sender: the caller
    /// must start one, which calls [`Lanes::next_batch`] until it says `None`.
    pub fn push(&self, lane: u16, item: T) -> bool {
        match self.lock().entry(lane) {
            Entry::Occupied(mut queued) => {
                queued.get_mut().push(item);
                false
            }
            Entry::Vacant(free) => {
                free.insert(vec![item]);
                true
            }
        }
    }

    /// The oldest `max` items of `lane`, or `None` when it is empty, which
    /// also ends the lane's sender (the next push starts another).
    pub fn next_batch(&self, lane: u16, max: usize) -> Option<Vec<T>> {
        let mut waiting = self.lock();
        let Entry::Occupied(mut queued) = waiting.entry(lane) else {
            return None;
        };
        if queued.get().is_empty() {
            queued.remove();
            return None;
        }
        let take = queued.get().len().min(max);
        Some(queued.get_mut().drain(..take).collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Vec<T>, foldhash::fast::RandomState>> {
        self.waiting.lock().expect("lanes lock poisoned")
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384.
pub fn slot_of_key(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            tag.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &tag[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_cluster_computes() {
        // CLUSTER KEYSLOT answers, and the CRC16 check value of the spec.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot_of_key("foo"), 12182);
        assert_eq!(slot_of_key("bar"), 5061);
        assert_eq!(slot_of_key("a:{foo}:b"), slot_of_key("foo"));
        assert_ne!(
            slot_of_key("{}foo"),
            slot_of_key("foo"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(
            slot_of_key("x{foo}{bar}"),
            slot_of_key("foo"),
            "first tag only"
        );
    }

    #[test]
    fn a_lane_has_one_sender_that_takes_what_queued_meanwhile() {
        let lanes = Lanes::default();
        assert!(lanes.push(7, 1), "the first item starts a sender");
        assert!(!lanes.push(7, 2), "later ones join its queue");
        assert!(!lanes.push(7, 3));
        assert!(lanes.push(8, 10), "another lane, another sender");

        assert_eq!(lanes.next_batch(7, 2), Some(vec![1, 2]));
        assert_eq!(lanes.next_batch(7, 2), Some(vec![3]));
        assert_eq!(lanes.next_batch(7, 2), None, "empty: the sender ends");
        assert!(lanes.push(7, 4), "so the next item starts one again");
        assert_eq!(lanes.next_batch(8, 64), Some(vec![10]));
    }
}
