//! The numbered messages of one voice gateway session, kept for a Resume.
//!
//! At v8 every server message but Hello, Heartbeat ACK and Resumed carries
//! `seq`; the registry keeps one [`Stream`] per session across sockets, so
//! a Resume on a new socket gets every message after its `seq_ack` again,
//! including those sent while no socket was attached. Messages stay typed
//! here: the gateway connection encodes them when it sends them.

use std::collections::VecDeque;

use protocol::gateway::{ServerMessage, NUMBERED};
use protocol::Snowflake;

/// Which earlier message a newer one makes obsolete in a [`Stream`]: a
/// receiver that resumes needs only the latest Speaking of each member and
/// the latest of each member's connects and disconnects. Keeping one
/// message per key bounds what one member can put into another's resume
/// buffer, however often it speaks or rejoins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Supersedes {
    /// Speaking (op 5) of this user.
    Speaking(Snowflake),
    /// Clients Connect (op 11) or Client Disconnect (op 13) of this user.
    Presence(Snowflake),
}

/// A server message with its `seq` (None below v8, where nothing is
/// numbered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Its number in the session's stream.
    pub seq: Option<u64>,
    /// The message.
    pub message: ServerMessage,
}

impl Sequenced {
    /// The text frame.
    pub fn encode(&self) -> String {
        self.message.encode(self.seq)
    }
}

/// One numbered message kept for a Resume.
#[derive(Debug)]
struct Kept {
    seq: u64,
    message: ServerMessage,
    key: Option<Supersedes>,
}

/// The numbered messages of one gateway session: the last `capacity` of
/// them are kept for a Resume to re-deliver. A message with a
/// [`Supersedes`] key replaces the kept one with the same key.
#[derive(Debug)]
pub struct Stream {
    version: u8,
    /// `seq` of the last numbered message.
    seq: u64,
    sent: VecDeque<Kept>,
    capacity: usize,
    /// The highest `seq` dropped for lack of room (0: none). Superseded
    /// messages do not count: what they said is in a later message.
    lost_through: u64,
}

impl Stream {
    /// An empty stream for a session at `version`.
    pub fn new(version: u8, capacity: usize) -> Stream {
        Stream {
            version,
            seq: 0,
            sent: VecDeque::new(),
            capacity: capacity.max(1),
            lost_through: 0,
        }
    }

    /// A message, numbered (and kept) at v8.
    pub fn message(&mut self, message: ServerMessage) -> Sequenced {
        self.message_keyed(message, None)
    }

    /// [`Stream::message`], replacing the kept message with the same
    /// `key`, if any.
    pub fn message_keyed(&mut self, message: ServerMessage, key: Option<Supersedes>) -> Sequenced {
        if self.version < NUMBERED {
            return Sequenced { seq: None, message };
        }
        self.seq += 1;
        if let Some(key) = key {
            if let Some(i) = self.sent.iter().position(|k| k.key == Some(key)) {
                self.sent.remove(i);
            }
        }
        if self.sent.len() == self.capacity {
            if let Some(lost) = self.sent.pop_front() {
                self.lost_through = lost.seq;
            }
        }
        self.sent.push_back(Kept {
            seq: self.seq,
            message: message.clone(),
            key,
        });
        Sequenced {
            seq: Some(self.seq),
            message,
        }
    }

    /// Whether a connection at gateway `version` can carry this stream:
    /// both numbered (v8) or both not.
    pub fn serves(&self, version: u8) -> bool {
        (self.version >= NUMBERED) == (version >= NUMBERED)
    }

    /// The messages after `seq_ack`, or None when some are no longer kept
    /// (or `seq_ack` is ahead of what was sent). Below v8 nothing is
    /// numbered: nothing to re-deliver.
    pub fn after(&self, seq_ack: u64) -> Option<Vec<Sequenced>> {
        if self.version < NUMBERED {
            return Some(Vec::new());
        }
        if seq_ack > self.seq || seq_ack < self.lost_through {
            return None;
        }
        Some(
            self.sent
                .iter()
                .filter(|k| k.seq > seq_ack)
                .map(|k| Sequenced {
                    seq: Some(k.seq),
                    message: k.message.clone(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use protocol::gateway::{ClientDisconnect, MemberSpeaking};

    use super::*;

    fn speaking(user: u64, flags: u32) -> ServerMessage {
        ServerMessage::Speaking(MemberSpeaking {
            user_id: Snowflake(user),
            ssrc: 1,
            speaking: flags,
        })
    }

    #[test]
    fn stream_keeps_the_last_messages() {
        let mut s = Stream::new(8, 2);
        for i in 0..3 {
            s.message(speaking(7, i));
        }
        assert_eq!(s.after(3), Some(vec![]));
        assert_eq!(s.after(1).unwrap().len(), 2);
        assert_eq!(s.after(0), None, "seq 1 is gone");
        assert_eq!(s.after(4), None, "never sent");
        let mut v4 = Stream::new(4, 2);
        let m = v4.message(speaking(7, 1));
        assert_eq!(m.seq, None);
        assert!(!m.encode().contains("seq"));
        assert_eq!(v4.after(0), Some(vec![]));
    }

    #[test]
    fn stream_keeps_only_the_latest_message_per_key() {
        let mut s = Stream::new(8, 3);
        let key = |u| Some(Supersedes::Speaking(Snowflake(u)));
        s.message(speaking(1, 0)); // seq 1, unkeyed
        for i in 0..10 {
            s.message_keyed(speaking(7, i), key(7)); // seq 2..=11
        }
        let left = ServerMessage::ClientDisconnect(ClientDisconnect {
            user_id: Snowflake(7),
        });
        s.message_keyed(left, Some(Supersedes::Presence(Snowflake(7)))); // 12
                                                                         // Kept: 1, 11, 12. Nothing was dropped for room: any seq_ack works.
        let all = s.after(0).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].message, speaking(7, 9));
        assert_eq!(all[1].seq, Some(11));
        assert_eq!(s.after(5).unwrap().len(), 2, "seq 11 and 12");
        // Another user's Speaking is not superseded by 7's.
        s.message_keyed(speaking(8, 1), key(8)); // 13: room → 1 lost
        assert_eq!(s.after(0), None, "seq 1 is gone");
        assert_eq!(s.after(1).unwrap().len(), 3);
    }
}
