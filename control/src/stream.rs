//! What one voice gateway session hears, as typed notices, numbered and
//! kept for a Resume.
//!
//! The registry speaks in [`Notice`]s (a member joined, left, spoke; the
//! session's own SSRC and keys) and knows nothing of the wire; the gateway
//! connection turns each into its message when it sends it. At v8 the
//! notices are numbered (`seq`) in the session's [`Stream`], which the
//! registry keeps across sockets, so a Resume on a new socket gets every
//! notice after its `seq_ack` again, including those sent while no socket
//! was attached. Below v8 nothing is numbered and nothing is kept.

use std::fmt;

use protocol::gateway::{MemberSsrcs, VideoStream};
use protocol::Snowflake;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shared::Mode;
use zeroize::Zeroize;

use crate::dave::DaveNotice;
use crate::replay::Replay;

/// Something a member's gateway session must hear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// The session identified: its SSRC (Ready).
    Ready {
        /// The session's SSRC.
        ssrc: u32,
        /// Its video streams with their SSRCs.
        #[serde(default)]
        streams: Vec<VideoStream>,
    },
    /// The session selected a protocol: its mode and key (Session
    /// Description).
    Keyed {
        /// The chosen mode.
        mode: Mode,
        /// The session key.
        key: SessionKey,
        /// The call's DAVE protocol version (0: none).
        dave: u16,
        /// The video codec it preferred (None: it offered none and has no
        /// video).
        #[serde(default)]
        video_codec: Option<String>,
    },
    /// These members are in the call: they joined, or were there when the
    /// session joined (Clients Connect).
    Joined(Vec<Snowflake>),
    /// This member left the call (Client Disconnect).
    Left(Snowflake),
    /// A member's SSRCs and video streams (op 12), sent with its join and
    /// when its video changes.
    Ssrcs(MemberSsrcs),
    /// Something of the call's end-to-end encryption (DAVE ops 21-30).
    Dave(DaveNotice),
    /// A member's speaking flags and SSRC (Speaking).
    Speaking {
        /// The member.
        user_id: Snowflake,
        /// Its SSRC.
        ssrc: u32,
        /// Its flags.
        speaking: u32,
    },
}

/// Which earlier notice a newer one makes obsolete in a [`Stream`]: a
/// receiver that resumes needs only the latest Speaking of each member and
/// the latest of each member's joins and leaves. Keeping one notice per key
/// bounds what one member can put into another's resume buffer, however
/// often it speaks or rejoins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Supersedes {
    /// Speaking of this user.
    Speaking(Snowflake),
    /// A join or leave of this user.
    Presence(Snowflake),
    /// The SSRCs of this user.
    Ssrcs(Snowflake),
}

impl Notice {
    /// The key under which this notice replaces an older one, if any.
    /// A join listing several members (the welcome) replaces nothing.
    pub fn supersedes(&self) -> Option<Supersedes> {
        match self {
            Notice::Joined(users) if users.len() == 1 => Some(Supersedes::Presence(users[0])),
            Notice::Left(user) => Some(Supersedes::Presence(*user)),
            Notice::Speaking { user_id, .. } => Some(Supersedes::Speaking(*user_id)),
            Notice::Ssrcs(m) => Some(Supersedes::Ssrcs(m.user_id)),
            _ => None,
        }
    }
}

/// A session key in a notice: wiped when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub [u8; 32]);

impl Drop for SessionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Saved (for a restart, in control's private state file) as its 32 bytes.
impl Serialize for SessionKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SessionKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SessionKey, D::Error> {
        <[u8; 32]>::deserialize(deserializer).map(SessionKey)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A notice on its way to a connection, with its `seq` when the session's
/// messages are numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Its number in the session's stream (None below v8).
    pub seq: Option<u64>,
    /// The notice.
    pub notice: Notice,
}

/// The notices of one gateway session: numbered and the last `capacity`
/// kept when the session is numbered (v8); passed through otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    numbered: bool,
    replay: Replay<Notice, Supersedes>,
}

impl Stream {
    /// An empty stream; `numbered` as the session's gateway version is.
    pub fn new(numbered: bool, capacity: usize) -> Stream {
        Stream {
            numbered,
            replay: Replay::new(if numbered { capacity } else { 1 }),
        }
    }

    /// A notice, numbered and kept (in place of the one it supersedes)
    /// when the stream is numbered.
    pub fn notice(&mut self, notice: Notice) -> Sequenced {
        if !self.numbered {
            return Sequenced { seq: None, notice };
        }
        let key = notice.supersedes();
        let n = self.replay.push(notice, key);
        Sequenced {
            seq: Some(n.seq),
            notice: n.item,
        }
    }

    /// Whether a connection whose messages are `numbered` (or not) can
    /// carry this stream.
    pub fn serves(&self, numbered: bool) -> bool {
        self.numbered == numbered
    }

    /// The number of the last notice (0: none, or not numbered).
    pub fn seq(&self) -> u64 {
        if self.numbered {
            self.replay.seq()
        } else {
            0
        }
    }

    /// See [`Replay::catch_up`]: a client that acknowledges more than a
    /// restored stream numbered resumes with nothing to re-deliver.
    pub fn catch_up(&mut self, seq_ack: u64) {
        if self.numbered {
            self.replay.catch_up(seq_ack);
        }
    }

    /// The stream as a control restart saves it: without its DAVE
    /// notices (MLS proposals, commits, welcomes: the bulk of it, and
    /// worthless to a successor, whose calls found new groups).
    pub fn for_save(&self) -> Stream {
        let mut saved = self.clone();
        saved.replay.retain(|n| !matches!(n, Notice::Dave(_)));
        saved
    }

    /// The notices after `seq_ack`, or None when some are no longer kept
    /// (or `seq_ack` is ahead of what was sent). Unnumbered: nothing to
    /// re-deliver.
    pub fn after(&self, seq_ack: u64) -> Option<Vec<Sequenced>> {
        if !self.numbered {
            return Some(Vec::new());
        }
        let missed = self.replay.after(seq_ack)?;
        Some(
            missed
                .into_iter()
                .map(|n| Sequenced {
                    seq: Some(n.seq),
                    notice: n.item,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speaking(user: u64, flags: u32) -> Notice {
        Notice::Speaking {
            user_id: Snowflake(user),
            ssrc: 1,
            speaking: flags,
        }
    }

    #[test]
    fn only_numbered_streams_keep_notices() {
        let mut s = Stream::new(true, 2);
        for i in 0..3u64 {
            assert_eq!(s.notice(speaking(i, 1)).seq, Some(i + 1));
        }
        assert_eq!(s.after(1).unwrap().len(), 2);
        assert_eq!(s.after(0), None, "seq 1 is gone");
        let mut v4 = Stream::new(false, 2);
        assert_eq!(v4.notice(speaking(7, 1)).seq, None);
        assert_eq!(v4.after(0), Some(vec![]));
        assert!(v4.serves(false) && !v4.serves(true));
    }

    #[test]
    fn a_member_keeps_one_speaking_and_one_presence_in_anothers_stream() {
        let mut s = Stream::new(true, 3);
        s.notice(Notice::Joined(vec![Snowflake(1), Snowflake(2)])); // 1
        for i in 0..10 {
            s.notice(speaking(7, i)); // 2..=11
        }
        s.notice(Notice::Joined(vec![Snowflake(7)])); // 12
        s.notice(Notice::Left(Snowflake(7))); // 13 replaces 12
        let all = s.after(0).unwrap();
        let seqs: Vec<_> = all.iter().map(|m| m.seq.unwrap()).collect();
        assert_eq!(seqs, [1, 11, 13], "nothing dropped for room");
        assert_eq!(all[1].notice, speaking(7, 9));
    }

    #[test]
    fn a_saved_stream_leaves_its_dave_notices_out() {
        let mut s = Stream::new(true, 8);
        s.notice(Notice::Joined(vec![Snowflake(1), Snowflake(2)])); // 1
        s.notice(Notice::Dave(DaveNotice::Proposals(vec![0; 500]))); // 2
        s.notice(speaking(7, 1)); // 3
        let saved = s.for_save();
        let seqs: Vec<u64> = saved
            .after(0)
            .unwrap()
            .iter()
            .filter_map(|n| n.seq)
            .collect();
        assert_eq!(seqs, [1, 3], "numbers kept, DAVE left out");
        assert_eq!(saved.seq(), 3);
        assert_eq!(s.after(0).unwrap().len(), 3, "the live stream keeps all");
    }
}
