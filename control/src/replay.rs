//! The bounded replay buffer both protocols resume from: LVSP's numbered
//! INFOs (one buffer per server, `s`) and each voice gateway session's
//! numbered messages (one per session, v8 `seq`).
//!
//! Items are numbered 1, 2, ... as they are pushed; the last `capacity`
//! are kept, and [`Replay::after`] gives back everything after what the
//! peer acknowledged, or None when some of it is gone, so the caller
//! refuses the resume rather than re-deliver with a hole. An item may name
//! a key: it then replaces the kept item with the same key, so a peer that
//! repeats itself (a member speaking in a loop) never pushes other items
//! out of someone else's buffer.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A numbered item, kept or given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered<T> {
    /// Its number (1 for the first item pushed).
    pub seq: u64,
    /// The item.
    pub item: T,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept<T, K> {
    seq: u64,
    item: T,
    key: Option<K>,
}

/// The last `capacity` items pushed, numbered; `K` keys items that
/// supersede one another (`()` where none do). Serializable: control saves
/// it for a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replay<T, K = ()> {
    /// The number of the last item pushed (0: none yet).
    seq: u64,
    kept: VecDeque<Kept<T, K>>,
    capacity: usize,
    /// The highest number dropped for lack of room (0: none). Superseded
    /// items do not count: what they said is in a later item.
    lost_through: u64,
}

impl<T: Clone, K: PartialEq> Replay<T, K> {
    /// An empty buffer keeping the last `capacity` items (at least one).
    pub fn new(capacity: usize) -> Replay<T, K> {
        Replay {
            seq: 0,
            kept: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            lost_through: 0,
        }
    }

    /// The number of the last item pushed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Numbers and keeps `item`, dropping the oldest kept item when full;
    /// with a `key`, the kept item with the same key goes first.
    pub fn push(&mut self, item: T, key: Option<K>) -> Numbered<T> {
        self.seq += 1;
        if key.is_some() {
            if let Some(i) = self.kept.iter().position(|k| k.key == key) {
                self.kept.remove(i);
            }
        }
        if self.kept.len() == self.capacity {
            if let Some(lost) = self.kept.pop_front() {
                self.lost_through = lost.seq;
            }
        }
        self.kept.push_back(Kept {
            seq: self.seq,
            item: item.clone(),
            key,
        });
        Numbered {
            seq: self.seq,
            item,
        }
    }

    /// Moves the numbering on to `seq` when the peer acknowledges more than
    /// this buffer ever numbered (it was restored from a save older than
    /// what the peer got): the peer has everything kept, so nothing is
    /// left to re-deliver and the next item is `seq + 1`.
    pub fn catch_up(&mut self, seq: u64) {
        if seq > self.seq {
            self.seq = seq;
            self.lost_through = seq;
            self.kept.clear();
        }
    }

    /// Drops the kept items `keep` refuses. Their numbers stay used: a
    /// peer that resumes after them gets the rest, with a gap where they
    /// were.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.kept.retain(|k| keep(&k.item));
    }

    /// Every kept item after `seq`, oldest first, or None when one of them
    /// is gone or `seq` is ahead of what was pushed.
    pub fn after(&self, seq: u64) -> Option<Vec<Numbered<T>>> {
        if seq > self.seq || seq < self.lost_through {
            return None;
        }
        Some(
            self.kept
                .iter()
                .filter(|k| k.seq > seq)
                .map(|k| Numbered {
                    seq: k.seq,
                    item: k.item.clone(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_items() {
        let mut r: Replay<u32> = Replay::new(2);
        for i in 0..3 {
            assert_eq!(r.push(i, None).seq, u64::from(i) + 1);
        }
        assert_eq!(r.seq(), 3);
        assert_eq!(r.after(3), Some(vec![]));
        let items: Vec<u32> = r.after(1).unwrap().into_iter().map(|n| n.item).collect();
        assert_eq!(items, [1, 2]);
        assert_eq!(r.after(0), None, "item 1 is gone");
        assert_eq!(r.after(4), None, "never pushed");
        let empty: Replay<u32> = Replay::new(0);
        assert_eq!(empty.after(0), Some(vec![]));
    }

    #[test]
    fn keeps_only_the_latest_item_per_key() {
        let mut r: Replay<u32, char> = Replay::new(3);
        r.push(100, None); // 1, unkeyed
        for i in 0..10 {
            r.push(i, Some('a')); // 2..=11
        }
        r.push(200, Some('b')); // 12
                                // Kept: 1, 11, 12. Nothing was dropped for room: any seq works.
        let all = r.after(0).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], Numbered { seq: 11, item: 9 });
        assert_eq!(r.after(5).unwrap().len(), 2, "11 and 12");
        // 'c' supersedes nothing: room runs out and item 1 is lost.
        r.push(300, Some('c')); // 13
        assert_eq!(r.after(0), None, "item 1 is gone");
        assert_eq!(r.after(1).unwrap().len(), 3);
    }

    #[test]
    fn a_saved_buffer_comes_back_and_catches_up_with_its_peer() {
        let mut r: Replay<u32, char> = Replay::new(4);
        r.push(1, Some('a'));
        r.push(2, None);
        let json = serde_json::to_string(&r).unwrap();
        let mut back: Replay<u32, char> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.after(0), r.after(0));
        assert_eq!(back.push(3, Some('a')).seq, 3, "numbering goes on");
        // The peer saw 5 before the save was replaced: nothing to re-send.
        assert_eq!(back.after(5), None);
        back.catch_up(5);
        assert_eq!(back.after(5), Some(vec![]));
        assert_eq!(back.after(3), None, "what it had is behind the peer");
        assert_eq!(back.push(9, None).seq, 6);
        back.catch_up(2);
        assert_eq!(back.seq(), 6, "never backwards");
    }
}
