//! The Discord voice gateway (seeds/004 "Voice Connections", DESIGN.md
//! "Voice gateway"): opcodes, close codes, every message both ways, the v8
//! envelope with `seq`, and the binary frames DAVE uses ([`frame`]).
//!
//! Text frames are JSON `{op, d}`; at v8 ([`NUMBERED`]) server messages
//! carry a top-level `seq` and heartbeats take the `{t, seq_ack}` shape.
//! Snowflakes decode from strings or integers; unknown fields are ignored;
//! a field of the wrong type is a [`DecodeError`] whose
//! [`close_code`](DecodeError::close_code) is the documented one.
//!
//! A server decodes in two steps so it can refuse by state before it reads
//! `d`: [`Envelope::parse`], [`Opcode::from_code`] of its `op`, then
//! [`ClientMessage::from_envelope`]; it encodes with
//! [`ServerMessage::encode`]. A client does the reverse with
//! [`ServerMessage::decode`] and [`ClientMessage::encode`].

pub mod frame;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::code::numbered;
use crate::json::{self, Malformed};
use crate::Envelope;
use crate::{Mode, Snowflake};

/// The first gateway version whose server messages carry `seq`, whose
/// heartbeats are `{t, seq_ack}` and whose sessions resume with re-delivery.
pub const NUMBERED: u8 = 8;

numbered! {
    /// Voice gateway opcodes: every number from 0 to 31 is one.
    pub enum Opcode: u8 {
        /// Client → server: [`Identify`].
        Identify = 0,
        /// Client → server: [`SelectProtocol`].
        SelectProtocol = 1,
        /// Server → client: [`Ready`].
        Ready = 2,
        /// Client → server: [`Heartbeat`].
        Heartbeat = 3,
        /// Server → client: [`SessionDescription`].
        SessionDescription = 4,
        /// Both ways: [`Speaking`] from a client, [`MemberSpeaking`] to the
        /// others.
        Speaking = 5,
        /// Server → client: [`HeartbeatAck`].
        HeartbeatAck = 6,
        /// Client → server: [`Resume`].
        Resume = 7,
        /// Server → client: [`Hello`].
        Hello = 8,
        /// Server → client: `d` null.
        Resumed = 9,
        /// Undocumented; clients that send it are not refused.
        Undocumented10 = 10,
        /// Server → client: [`ClientsConnect`].
        ClientsConnect = 11,
        /// Both ways: video streams ([`Video`] from a client,
        /// [`MemberSsrcs`] to the others).
        Video = 12,
        /// Server → client: [`ClientDisconnect`].
        ClientDisconnect = 13,
        /// Undocumented client op.
        SessionUpdate = 14,
        /// Client → server: which streams it wants.
        MediaSinkWants = 15,
        /// Both ways: backend version query.
        VoiceBackendVersion = 16,
        /// Undocumented client op.
        ChannelOptionsUpdate = 17,
        /// Client → server: client flags.
        ClientFlags = 18,
        /// Undocumented client op.
        SpeedTest = 19,
        /// Client → server: client platform.
        ClientPlatform = 20,
        /// DAVE, server → client JSON: `{protocol_version, transition_id}`.
        DavePrepareTransition = 21,
        /// DAVE, server → client JSON: `{transition_id}`.
        DaveExecuteTransition = 22,
        /// DAVE, client → server JSON: `{transition_id}`.
        DaveTransitionReady = 23,
        /// DAVE, server → client JSON: `{protocol_version, epoch}`.
        DavePrepareEpoch = 24,
        /// DAVE, server → client binary: the MLS external sender.
        DaveMlsExternalSender = 25,
        /// DAVE, client → server binary: an MLS key package.
        DaveMlsKeyPackage = 26,
        /// DAVE, server → client binary: MLS proposals.
        DaveMlsProposals = 27,
        /// DAVE, client → server binary: an MLS commit and welcome.
        DaveMlsCommitWelcome = 28,
        /// DAVE, server → client binary: announce a commit transition.
        DaveMlsAnnounceCommitTransition = 29,
        /// DAVE, server → client binary: an MLS welcome.
        DaveMlsWelcome = 30,
        /// DAVE, client → server JSON: `{transition_id}`.
        DaveMlsInvalidCommitWelcome = 31,
    }
}

impl Opcode {
    /// Whether it travels in binary frames ([`frame`]): the DAVE MLS ops
    /// 25 to 30.
    pub fn is_binary(self) -> bool {
        (25..=30).contains(&(self as u8))
    }

    /// Whether only the server sends it: a client sending it is refused
    /// as an unknown opcode.
    pub fn sent_by_server(self) -> bool {
        use Opcode::*;
        matches!(
            self,
            Ready
                | SessionDescription
                | HeartbeatAck
                | Hello
                | Resumed
                | ClientsConnect
                | ClientDisconnect
        )
    }
}

numbered! {
    /// Voice gateway close codes (DESIGN.md "Voice gateway", README "Close
    /// codes" says which refusal gets which).
    pub enum CloseCode: u16 {
        /// An opcode the server does not know, or one only it sends.
        UnknownOpcode = 4001,
        /// A payload that failed to decode.
        DecodeError = 4002,
        /// A payload before Identify (or no Identify in time).
        NotAuthenticated = 4003,
        /// Wrong token, session or ids in Identify or Resume.
        AuthenticationFailed = 4004,
        /// A second Identify or Resume.
        AlreadyAuthenticated = 4005,
        /// The session is gone or cannot be resumed, or another socket took it.
        SessionInvalid = 4006,
        /// No heartbeat in time.
        SessionTimeout = 4009,
        /// `server_id` names no guild or channel of this server.
        ServerNotFound = 4011,
        /// Select Protocol with a protocol other than `udp`.
        UnknownProtocol = 4012,
        /// Channel destroyed or voice state removed: do not reconnect.
        Disconnected = 4014,
        /// The voice server crashed: resume.
        ServerCrashed = 4015,
        /// Select Protocol with a mode the server does not offer.
        UnknownEncryptionMode = 4016,
        /// DAVE is required and the client does not support it.
        E2eeRequired = 4017,
        /// Bad request (this server: an unsupported gateway version, or no room
        /// to key another session).
        BadRequest = 4020,
        /// Too many messages.
        RateLimited = 4021,
        /// The call was terminated.
        CallTerminated = 4022,
    }
}

/// Why a client frame was refused, with the close code it earns. The
/// reasons are fixed texts: they never repeat what the peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum DecodeError {
    /// Not JSON, no integer `op`, or `d` of the wrong shape (4002).
    Malformed(#[from] Malformed),
    /// An opcode the gateway does not have, or one only the server sends
    /// (4001).
    UnknownOpcode,
    /// Select Protocol with a protocol other than `udp` (4012).
    UnknownProtocol,
}

impl DecodeError {
    /// The close code this refusal earns.
    pub fn close_code(self) -> CloseCode {
        match self {
            DecodeError::Malformed(_) => CloseCode::DecodeError,
            DecodeError::UnknownOpcode => CloseCode::UnknownOpcode,
            DecodeError::UnknownProtocol => CloseCode::UnknownProtocol,
        }
    }

    /// The fixed text of the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Malformed(m) => m.reason(),
            DecodeError::UnknownOpcode => "unknown opcode",
            DecodeError::UnknownProtocol => "unknown protocol",
        }
    }
}

/// A duration in milliseconds: encoded as an integer, decoded from any
/// non-negative number (Discord sends `41250.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// As a duration.
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl From<Duration> for Millis {
    fn from(d: Duration) -> Millis {
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let ms = f64::deserialize(d)?;
        if ms.is_finite() && ms >= 0.0 {
            // Saturates at u64::MAX; whole milliseconds are enough.
            Ok(Millis(ms.round() as u64))
        } else {
            Err(serde::de::Error::custom(
                "interval must be a non-negative number",
            ))
        }
    }
}

/// A heartbeat nonce: any JSON integer in the range of `i64` or `u64`
/// (clients send milliseconds since the epoch, counters, even negatives).
/// The ACK echoes it and nothing else, so an ACK is never larger than what
/// earned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Nonce(pub i128);

impl<'de> Deserialize<'de> for Nonce {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Nonce, D::Error> {
        struct Integer;
        impl serde::de::Visitor<'_> for Integer {
            type Value = Nonce;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer nonce")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Nonce, E> {
                Ok(Nonce(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Nonce, E> {
                Ok(Nonce(v.into()))
            }
        }
        // `deserialize_any`, not `i128`: it also works inside untagged
        // enums, where serde buffers the value.
        d.deserialize_any(Integer)
    }
}

/// Identify op 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identify {
    /// The guild (the channel for DMs).
    pub server_id: Snowflake,
    /// The user.
    pub user_id: Snowflake,
    /// LVSP VOICE_STATE_DONE's session id.
    pub session_id: String,
    /// LVSP CHANNEL_ASSIGN's token.
    pub token: String,
    /// The highest DAVE version the client speaks (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dave_protocol_version: Option<u16>,
    /// The client sends or receives video (a video stream is allocated
    /// when it names none in `streams`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub video: bool,
    /// The video streams the client will send, each answered in Ready
    /// with its SSRCs (null or not a list: none).
    #[serde(
        default,
        deserialize_with = "advisory_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub streams: Vec<StreamRequest>,
}

impl Identify {
    /// Whether the client asked for video: `video` or any `streams`.
    pub fn wants_video(&self) -> bool {
        self.video || !self.streams.is_empty()
    }
}

/// A stream in Identify's `streams`: what the client will send. Values the
/// server cannot use are None rather than errors (clients vary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    /// `video` or `screen`.
    #[serde(rename = "type", default, deserialize_with = "advisory")]
    pub kind: Option<String>,
    /// The simulcast layer's id (`"100"`, `"50"`).
    #[serde(default, deserialize_with = "advisory")]
    pub rid: Option<String>,
    /// Its quality in percent.
    #[serde(default, deserialize_with = "advisory")]
    pub quality: Option<u32>,
}

/// Select Protocol op 1. Decoding checks `protocol` before `data`: any
/// protocol but `udp` is [`DecodeError::UnknownProtocol`] whatever `data`
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectProtocol {
    /// `udp` (the only one served).
    pub protocol: String,
    /// Where the client receives and how it encrypts.
    pub data: SelectProtocolData,
    /// The codecs the client offers (video clients send them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codecs: Option<Vec<Codec>>,
}

impl SelectProtocol {
    /// The video codec the client prefers among those it offered: the
    /// lowest priority, the first listed among equals.
    pub fn video_codec(&self) -> Option<&str> {
        self.codecs
            .iter()
            .flatten()
            .filter(|c| c.kind == "video")
            .enumerate()
            .min_by_key(|(i, c)| (c.priority.unwrap_or(u32::MAX), *i))
            .map(|(_, c)| c.name.as_str())
    }
}

/// The protocol [`SelectProtocol`] names.
pub const UDP: &str = "udp";

/// Select Protocol's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectProtocolData {
    /// The address IP discovery told the client. Advisory (the data plane
    /// uses it only when it matches what discovery observed): one missing
    /// or unreadable is None, never an error.
    #[serde(default, deserialize_with = "advisory")]
    pub address: Option<IpAddr>,
    /// The port IP discovery told the client; advisory like `address`.
    #[serde(default, deserialize_with = "advisory")]
    pub port: Option<u16>,
    /// The chosen mode's name as sent: a name the server does not offer
    /// is its refusal (4016), not a decode error.
    pub mode: String,
}

impl SelectProtocolData {
    /// The chosen mode, if it is one of the five.
    pub fn mode(&self) -> Option<Mode> {
        Mode::from_name(&self.mode)
    }
}

/// A value used only when it reads as `T`: anything else is None.
fn advisory<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Advisory<T> {
        Usable(T),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Advisory::deserialize(d)? {
        Advisory::Usable(t) => Some(t),
        Advisory::Other(_) => None,
    })
}

/// A list used only when it reads as a list of `T`: anything else is empty.
fn advisory_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    advisory(d).map(Option::unwrap_or_default)
}

/// A codec in Select Protocol's `codecs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Codec {
    /// `opus`, `H264`, ...
    pub name: String,
    /// `audio` or `video`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Preference: the lowest is preferred (Discord's clients list
    /// theirs in ascending order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The RTP payload type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<u8>,
    /// The RTX payload type (video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtx_payload_type: Option<u8>,
}

/// Heartbeat op 3: below v8 `d` is the nonce, at v8 `{t, seq_ack}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Heartbeat {
    /// Below v8: the bare nonce.
    Bare(Nonce),
    /// v8: the nonce and the last `seq` the client saw.
    Numbered {
        /// The nonce.
        t: Nonce,
        /// The last `seq` seen (-1 or absent: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq_ack: Option<i64>,
    },
}

impl Heartbeat {
    /// A heartbeat in the shape of gateway `version`.
    pub fn new(version: u8, nonce: Nonce, seq_ack: i64) -> Heartbeat {
        if version >= NUMBERED {
            Heartbeat::Numbered {
                t: nonce,
                seq_ack: Some(seq_ack),
            }
        } else {
            Heartbeat::Bare(nonce)
        }
    }

    /// Its nonce.
    pub fn nonce(self) -> Nonce {
        match self {
            Heartbeat::Bare(t) | Heartbeat::Numbered { t, .. } => t,
        }
    }

    /// The ACK: the nonce alone, in the same shape.
    pub fn ack(self) -> HeartbeatAck {
        match self {
            Heartbeat::Bare(t) => HeartbeatAck::Bare(t),
            Heartbeat::Numbered { t, .. } => HeartbeatAck::Numbered { t },
        }
    }

    fn decode(d: Option<&RawValue>, version: u8) -> Result<Heartbeat, DecodeError> {
        let heartbeat = if version >= NUMBERED {
            // `{t}` with an integer t, whatever else it holds.
            #[derive(Deserialize)]
            struct Numbered {
                t: Nonce,
                #[serde(default)]
                seq_ack: Option<i64>,
            }
            let Numbered { t, seq_ack } = json::object(d)?;
            Heartbeat::Numbered { t, seq_ack }
        } else {
            Heartbeat::Bare(json::data(d)?)
        };
        Ok(heartbeat)
    }
}

/// Heartbeat ACK op 6: the heartbeat's nonce, in its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeartbeatAck {
    /// Below v8: the bare nonce.
    Bare(Nonce),
    /// v8: `{t}`.
    Numbered {
        /// The nonce.
        t: Nonce,
    },
}

impl HeartbeatAck {
    /// The nonce it acknowledges.
    pub fn nonce(self) -> Nonce {
        match self {
            HeartbeatAck::Bare(t) | HeartbeatAck::Numbered { t } => t,
        }
    }
}

/// Speaking op 5 from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaking {
    /// Speaking flags (1 microphone, 2 soundshare, 4 priority); old
    /// clients send a boolean.
    #[serde(deserialize_with = "flags")]
    pub speaking: u32,
    /// Delay in milliseconds (0 for bots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<u32>,
    /// The client's SSRC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssrc: Option<u32>,
}

/// Speaking flag: microphone.
pub const SPEAKING_MICROPHONE: u32 = 1;

fn flags<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flags {
        Bool(bool),
        Bits(u32),
    }
    Ok(match Flags::deserialize(d)? {
        Flags::Bool(b) => u32::from(b),
        Flags::Bits(n) => n,
    })
}

/// Resume op 7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The guild (the channel for DMs).
    pub server_id: Snowflake,
    /// The session to resume.
    pub session_id: String,
    /// LVSP CHANNEL_ASSIGN's token.
    pub token: String,
    /// v8: the last `seq` the client saw (-1, null or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_ack: Option<i64>,
}

impl Resume {
    /// What to re-deliver after, on a connection at `version`: below v8
    /// nothing is numbered (None); at v8 the client's `seq_ack`, 0 when it
    /// saw nothing.
    pub fn seq_ack_at(&self, version: u8) -> Option<u64> {
        (version >= NUMBERED).then(|| self.seq_ack.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}

/// Hello op 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The gateway version of the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u8>,
    /// How often to heartbeat.
    pub heartbeat_interval: Millis,
}

/// Ready op 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The client's SSRC.
    pub ssrc: u32,
    /// Where to send UDP (an IPv4 literal from this server).
    pub ip: IpAddr,
    /// The UDP port.
    pub port: u16,
    /// The modes offered, preferred first, by name (a client skips names it
    /// does not know).
    pub modes: Vec<String>,
    /// The heartbeat interval again (old clients read it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<Millis>,
    /// The client's video streams with their SSRCs (empty without video;
    /// always present: video clients read `streams[0]`).
    #[serde(default)]
    pub streams: Vec<VideoStream>,
}

/// A video stream with its SSRCs: in Ready, in a client's op 12 and in
/// the op 12 the others get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoStream {
    /// `video` or `screen`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The simulcast layer's id.
    #[serde(default)]
    pub rid: String,
    /// The stream's RTP SSRC.
    #[serde(default)]
    pub ssrc: u32,
    /// Its retransmission (RTX) SSRC.
    #[serde(default)]
    pub rtx_ssrc: u32,
    /// Whether it is being sent.
    #[serde(default)]
    pub active: bool,
    /// Its quality in percent.
    #[serde(default)]
    pub quality: u32,
    /// Bits per second at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitrate: Option<u32>,
    /// Frames per second at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_framerate: Option<u32>,
    /// The largest resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_resolution: Option<Resolution>,
}

/// A video stream's largest resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// `fixed` or `source`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// Op 12 from a client: its SSRCs and the state of its video streams
/// (`video_ssrc` 0: video stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Video {
    /// Its audio SSRC.
    #[serde(default)]
    pub audio_ssrc: u32,
    /// Its video SSRC (0: none).
    #[serde(default)]
    pub video_ssrc: u32,
    /// Its retransmission SSRC (0: none).
    #[serde(default)]
    pub rtx_ssrc: u32,
    /// Its streams.
    #[serde(default)]
    pub streams: Vec<VideoStream>,
}

impl Ready {
    /// Where to send UDP.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The offered modes that are among the five, in the server's order.
    pub fn known_modes(&self) -> Vec<Mode> {
        self.modes
            .iter()
            .filter_map(|m| Mode::from_name(m))
            .collect()
    }
}

/// Session Description op 4.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// The mode chosen in Select Protocol.
    pub mode: Mode,
    /// The session key, as 32 integers.
    pub secret_key: [u8; 32],
    /// The DAVE version of the call, 0 without DAVE. Always present:
    /// clients break without it.
    pub dave_protocol_version: u16,
    /// The audio codec (`opus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
    /// The video codec: the one the client preferred among those it
    /// offered in Select Protocol's `codecs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_codec: Option<String>,
}

impl fmt::Debug for SessionDescription {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionDescription")
            .field("mode", &self.mode)
            .field("dave_protocol_version", &self.dave_protocol_version)
            .field("audio_codec", &self.audio_codec)
            .field("video_codec", &self.video_codec)
            .finish_non_exhaustive()
    }
}

/// Speaking op 5 to the other members: which SSRC is whose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpeaking {
    /// The member.
    pub user_id: Snowflake,
    /// Its SSRC.
    pub ssrc: u32,
    /// Its speaking flags.
    pub speaking: u32,
}

/// Op 12 from the server: a member's SSRCs (what koe-based clients such
/// as Lavalink learn who is in the call from). `video_ssrc` and
/// `rtx_ssrc` are 0 and `streams` empty for a member without video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSsrcs {
    /// The member.
    pub user_id: Snowflake,
    /// Its audio SSRC.
    pub audio_ssrc: u32,
    /// Its video SSRC (0: none).
    #[serde(default)]
    pub video_ssrc: u32,
    /// Its video retransmission SSRC (0: none).
    #[serde(default)]
    pub rtx_ssrc: u32,
    /// Its video streams.
    #[serde(default)]
    pub streams: Vec<VideoStream>,
}

/// Clients Connect op 11.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientsConnect {
    /// The members who are (or just got) in the call.
    pub user_ids: Vec<Snowflake>,
}

/// Client Disconnect op 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDisconnect {
    /// The member who left.
    pub user_id: Snowflake,
}

/// DAVE Prepare Transition op 21: the call moves to `protocol_version`
/// when op 22 names `transition_id` (0: at once, no op 23 expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DavePrepareTransition {
    /// The DAVE protocol version after the transition (0: none).
    pub protocol_version: u16,
    /// The transition.
    pub transition_id: u16,
}

/// DAVE ops 22 (Execute Transition), 23 (Transition Ready, client) and 31
/// (Invalid Commit/Welcome, client, JSON as every client sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaveTransition {
    /// The transition.
    pub transition_id: u16,
}

/// DAVE Prepare Epoch op 24: a new MLS group starts at `epoch` (1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DavePrepareEpoch {
    /// The DAVE protocol version.
    pub protocol_version: u16,
    /// The epoch (a JSON number: clients compare it with 1).
    pub epoch: u64,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Identify op 0.
    Identify(Identify),
    /// Select Protocol op 1.
    SelectProtocol(SelectProtocol),
    /// Heartbeat op 3.
    Heartbeat(Heartbeat),
    /// Speaking op 5.
    Speaking(Speaking),
    /// Resume op 7.
    Resume(Resume),
    /// DAVE Transition Ready op 23.
    DaveTransitionReady(DaveTransition),
    /// DAVE Invalid Commit/Welcome op 31.
    DaveInvalidCommitWelcome(DaveTransition),
    /// Video op 12.
    Video(Video),
    /// An op the server accepts without acting on it (client flags and
    /// platform, media sink wants); `d` is not decoded.
    Ignored(Opcode),
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Hello op 8.
    Hello(Hello),
    /// Ready op 2.
    Ready(Ready),
    /// Session Description op 4.
    SessionDescription(SessionDescription),
    /// Speaking op 5.
    Speaking(MemberSpeaking),
    /// Heartbeat ACK op 6.
    HeartbeatAck(HeartbeatAck),
    /// Resumed op 9.
    Resumed,
    /// Clients Connect op 11.
    ClientsConnect(ClientsConnect),
    /// Op 12: a member's SSRCs.
    MemberSsrcs(MemberSsrcs),
    /// Client Disconnect op 13.
    ClientDisconnect(ClientDisconnect),
    /// DAVE Prepare Transition op 21.
    DavePrepareTransition(DavePrepareTransition),
    /// DAVE Execute Transition op 22.
    DaveExecuteTransition(DaveTransition),
    /// DAVE Prepare Epoch op 24.
    DavePrepareEpoch(DavePrepareEpoch),
}

/// The text frame `{"op", "d"}`, plus `"seq"` on numbered server messages.
fn encode<D: Serialize>(op: Opcode, d: D, seq: Option<u64>) -> String {
    json::encode(op, d, seq.map(|seq| ("seq", seq)))
}

impl ClientMessage {
    /// Decodes a client text frame at gateway `version`.
    pub fn decode(text: &str, version: u8) -> Result<ClientMessage, DecodeError> {
        ClientMessage::from_envelope(&Envelope::parse(text)?, version)
    }

    /// Decodes the `d` of a parsed frame at gateway `version` (which
    /// decides the heartbeat's shape).
    pub fn from_envelope(env: &Envelope<'_>, version: u8) -> Result<ClientMessage, DecodeError> {
        let op = Opcode::from_code(env.op()).ok_or(DecodeError::UnknownOpcode)?;
        Ok(match op {
            Opcode::Identify => ClientMessage::Identify(json::object(env.d())?),
            Opcode::SelectProtocol => {
                #[derive(Deserialize)]
                struct Protocol<'a> {
                    #[serde(borrow)]
                    protocol: Cow<'a, str>,
                }
                let Protocol { protocol } = json::object(env.d())?;
                if protocol != UDP {
                    return Err(DecodeError::UnknownProtocol);
                }
                ClientMessage::SelectProtocol(json::object(env.d())?)
            }
            Opcode::Heartbeat => ClientMessage::Heartbeat(Heartbeat::decode(env.d(), version)?),
            Opcode::Speaking => ClientMessage::Speaking(json::object(env.d())?),
            Opcode::Resume => ClientMessage::Resume(json::object(env.d())?),
            Opcode::DaveTransitionReady => {
                ClientMessage::DaveTransitionReady(json::object(env.d())?)
            }
            Opcode::DaveMlsInvalidCommitWelcome => {
                ClientMessage::DaveInvalidCommitWelcome(json::object(env.d())?)
            }
            Opcode::Video => ClientMessage::Video(json::object(env.d())?),
            op if op.sent_by_server() => return Err(DecodeError::UnknownOpcode),
            op => ClientMessage::Ignored(op),
        })
    }

    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            ClientMessage::Identify(_) => Opcode::Identify,
            ClientMessage::SelectProtocol(_) => Opcode::SelectProtocol,
            ClientMessage::Heartbeat(_) => Opcode::Heartbeat,
            ClientMessage::Speaking(_) => Opcode::Speaking,
            ClientMessage::Resume(_) => Opcode::Resume,
            ClientMessage::DaveTransitionReady(_) => Opcode::DaveTransitionReady,
            ClientMessage::DaveInvalidCommitWelcome(_) => Opcode::DaveMlsInvalidCommitWelcome,
            ClientMessage::Video(_) => Opcode::Video,
            ClientMessage::Ignored(op) => *op,
        }
    }

    /// The text frame for this message (an ignored op with `d` null).
    pub fn encode(&self) -> String {
        let op = self.opcode();
        match self {
            ClientMessage::Identify(m) => encode(op, m, None),
            ClientMessage::SelectProtocol(m) => encode(op, m, None),
            ClientMessage::Heartbeat(m) => encode(op, m, None),
            ClientMessage::Speaking(m) => encode(op, m, None),
            ClientMessage::Resume(m) => encode(op, m, None),
            ClientMessage::DaveTransitionReady(m) | ClientMessage::DaveInvalidCommitWelcome(m) => {
                encode(op, m, None)
            }
            ClientMessage::Video(m) => encode(op, m, None),
            ClientMessage::Ignored(_) => encode(op, (), None),
        }
    }
}

impl ServerMessage {
    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            ServerMessage::Hello(_) => Opcode::Hello,
            ServerMessage::Ready(_) => Opcode::Ready,
            ServerMessage::SessionDescription(_) => Opcode::SessionDescription,
            ServerMessage::Speaking(_) => Opcode::Speaking,
            ServerMessage::HeartbeatAck(_) => Opcode::HeartbeatAck,
            ServerMessage::Resumed => Opcode::Resumed,
            ServerMessage::ClientsConnect(_) => Opcode::ClientsConnect,
            ServerMessage::ClientDisconnect(_) => Opcode::ClientDisconnect,
            ServerMessage::MemberSsrcs(_) => Opcode::Video,
            ServerMessage::DavePrepareTransition(_) => Opcode::DavePrepareTransition,
            ServerMessage::DaveExecuteTransition(_) => Opcode::DaveExecuteTransition,
            ServerMessage::DavePrepareEpoch(_) => Opcode::DavePrepareEpoch,
        }
    }

    /// The text frame for this message, with `seq` when it is numbered
    /// (v8: every server message but Hello, Heartbeat ACK and Resumed).
    pub fn encode(&self, seq: Option<u64>) -> String {
        let op = self.opcode();
        match self {
            ServerMessage::Hello(m) => encode(op, m, seq),
            ServerMessage::Ready(m) => encode(op, m, seq),
            ServerMessage::SessionDescription(m) => encode(op, m, seq),
            ServerMessage::Speaking(m) => encode(op, m, seq),
            ServerMessage::HeartbeatAck(m) => encode(op, m, seq),
            ServerMessage::Resumed => encode(op, (), seq),
            ServerMessage::ClientsConnect(m) => encode(op, m, seq),
            ServerMessage::ClientDisconnect(m) => encode(op, m, seq),
            ServerMessage::MemberSsrcs(m) => encode(op, m, seq),
            ServerMessage::DavePrepareTransition(m) => encode(op, m, seq),
            ServerMessage::DaveExecuteTransition(m) => encode(op, m, seq),
            ServerMessage::DavePrepareEpoch(m) => encode(op, m, seq),
        }
    }

    /// Decodes a server text frame (client side) into the message and its
    /// top-level `seq`. An op the server does not send in text (DAVE's
    /// JSON ops aside) is [`DecodeError::UnknownOpcode`].
    pub fn decode(text: &str) -> Result<(ServerMessage, Option<u64>), DecodeError> {
        #[derive(Deserialize)]
        struct ServerEnvelope<'a> {
            op: u64,
            #[serde(borrow, default)]
            d: Option<&'a RawValue>,
            #[serde(default)]
            seq: Option<u64>,
        }
        let env: ServerEnvelope<'_> = json::envelope(text)?;
        let d = env.d;
        let message = match Opcode::from_code(env.op).ok_or(DecodeError::UnknownOpcode)? {
            Opcode::Hello => ServerMessage::Hello(json::object(d)?),
            Opcode::Ready => ServerMessage::Ready(json::object(d)?),
            Opcode::SessionDescription => ServerMessage::SessionDescription(json::object(d)?),
            Opcode::Speaking => ServerMessage::Speaking(json::object(d)?),
            Opcode::HeartbeatAck => ServerMessage::HeartbeatAck(json::data(d)?),
            Opcode::Resumed => ServerMessage::Resumed,
            Opcode::ClientsConnect => ServerMessage::ClientsConnect(json::object(d)?),
            Opcode::ClientDisconnect => ServerMessage::ClientDisconnect(json::object(d)?),
            Opcode::Video => ServerMessage::MemberSsrcs(json::object(d)?),
            Opcode::DavePrepareTransition => ServerMessage::DavePrepareTransition(json::object(d)?),
            Opcode::DaveExecuteTransition => ServerMessage::DaveExecuteTransition(json::object(d)?),
            Opcode::DavePrepareEpoch => ServerMessage::DavePrepareEpoch(json::object(d)?),
            _ => return Err(DecodeError::UnknownOpcode),
        };
        Ok((message, env.seq))
    }
}

#[cfg(test)]
mod tests;
