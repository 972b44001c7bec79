//! A member's video (issue 13): the streams its Identify asked for, with
//! the SSRCs the registry allocated for them, and their state as its op 12
//! last described it. Sans-IO and free of the registry: SSRCs come in from
//! an allocator, and what the others hear is a typed [`MemberSsrcs`].
//!
//! The server relays video without looking into it. Media on a stream's
//! SSRC or its RTX SSRC is the member's own on the data plane
//! ([`shared::VideoSpec`]): opened with its key, counted in its replay
//! windows, and sent to the members that asked for video.
//!
//! # What a member can claim
//!
//! Its op 12 is relayed to the others, so it could try to pass another
//! member's SSRCs off as its own (and have its audio or video attributed
//! to them). Every SSRC in an op 12 must be 0 or the member's own, or the
//! message is refused ([`VideoError::ForeignSsrc`]); what is relayed is
//! rebuilt from the server's state, never copied: stream kinds, rids and
//! resolution types are from fixed sets, numbers are clamped.

use protocol::gateway::{MemberSsrcs, Resolution, StreamRequest, Video, VideoStream};
use protocol::Snowflake;
use serde::{Deserialize, Serialize};
use shared::{VideoSpec, MAX_ALIASES};

/// The most streams (simulcast layers) one member sends: each takes a
/// video and an RTX SSRC on the data plane.
pub const MAX_STREAMS: usize = MAX_ALIASES / 2;

/// The longest `rid` kept from a client (Discord's are `"100"`, `"50"`).
const MAX_RID: usize = 8;

/// Why a member's op 12 was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VideoError {
    /// It names an SSRC that is not the member's.
    #[error("video ssrc not the session's")]
    ForeignSsrc,
}

/// A member's video streams and what it last said of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberVideo {
    /// Its streams, as Ready told it.
    pub streams: Vec<VideoStream>,
    /// The video SSRC its last op 12 named (0: not sending).
    pub video_ssrc: u32,
    /// The RTX SSRC its last op 12 named (0: not sending).
    pub rtx_ssrc: u32,
}

impl MemberVideo {
    /// The streams for Identify's `requests` (one `video` stream when it
    /// asked for video and named none; at most [`MAX_STREAMS`]), each with
    /// two SSRCs from `allocate`.
    pub fn allocate(requests: &[StreamRequest], mut allocate: impl FnMut() -> u32) -> MemberVideo {
        let default = [StreamRequest {
            kind: None,
            rid: None,
            quality: None,
        }];
        let requests = if requests.is_empty() {
            &default[..]
        } else {
            requests
        };
        let streams = requests
            .iter()
            .take(MAX_STREAMS)
            .map(|r| {
                let kind = match r.kind.as_deref() {
                    Some("screen") => "screen",
                    _ => "video",
                };
                let quality = r.quality.unwrap_or(100).min(100);
                let rid = r
                    .rid
                    .clone()
                    .filter(|rid| {
                        !rid.is_empty()
                            && rid.len() <= MAX_RID
                            && rid.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
                    .unwrap_or_else(|| quality.to_string());
                VideoStream {
                    kind: kind.into(),
                    rid,
                    ssrc: allocate(),
                    rtx_ssrc: allocate(),
                    active: false,
                    quality,
                    max_bitrate: None,
                    max_framerate: None,
                    max_resolution: None,
                }
            })
            .collect();
        MemberVideo {
            streams,
            video_ssrc: 0,
            rtx_ssrc: 0,
        }
    }

    /// Every SSRC it holds besides its audio SSRC.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.iter().flat_map(|s| [s.ssrc, s.rtx_ssrc])
    }

    /// What the data plane needs: its SSRCs, and that it receives video.
    pub fn spec(&self) -> VideoSpec {
        let mut spec = VideoSpec {
            aliases: [0; MAX_ALIASES],
            receive: true,
        };
        for (slot, ssrc) in spec.aliases.iter_mut().zip(self.ssrcs()) {
            *slot = ssrc;
        }
        spec
    }

    /// The member's op 12 (`audio_ssrc` is its own): checks that every
    /// SSRC is 0 or its own, then takes the state of each stream it names.
    /// Returns whether anything the others hear changed.
    pub fn update(&mut self, audio_ssrc: u32, op: &Video) -> Result<bool, VideoError> {
        let own = |ssrc: u32| ssrc == 0 || ssrc == audio_ssrc || self.ssrcs().any(|s| s == ssrc);
        let named = [op.audio_ssrc, op.video_ssrc, op.rtx_ssrc]
            .into_iter()
            .chain(op.streams.iter().flat_map(|s| [s.ssrc, s.rtx_ssrc]));
        if !named.into_iter().all(own) || op.video_ssrc == audio_ssrc || op.rtx_ssrc == audio_ssrc {
            return Err(VideoError::ForeignSsrc);
        }
        let before = self.clone();
        self.video_ssrc = op.video_ssrc;
        self.rtx_ssrc = op.rtx_ssrc;
        for told in &op.streams {
            let Some(stream) = self
                .streams
                .iter_mut()
                .find(|s| told.ssrc != 0 && s.ssrc == told.ssrc)
            else {
                continue;
            };
            stream.active = told.active;
            stream.quality = told.quality.min(100);
            stream.max_bitrate = told.max_bitrate;
            stream.max_framerate = told.max_framerate;
            stream.max_resolution = told.max_resolution.as_ref().and_then(|r| {
                let kind = ["fixed", "source"].into_iter().find(|k| *k == r.kind)?;
                Some(Resolution {
                    kind: kind.into(),
                    width: r.width,
                    height: r.height,
                })
            });
        }
        Ok(*self != before)
    }
}

/// Op 12 for the others: `user_id`'s audio SSRC and its video, if any.
pub fn member_ssrcs(
    user_id: Snowflake,
    audio_ssrc: u32,
    video: Option<&MemberVideo>,
) -> MemberSsrcs {
    MemberSsrcs {
        user_id,
        audio_ssrc,
        video_ssrc: video.map_or(0, |v| v.video_ssrc),
        rtx_ssrc: video.map_or(0, |v| v.rtx_ssrc),
        streams: video.map(|v| v.streams.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, rid: &str, quality: u32) -> StreamRequest {
        StreamRequest {
            kind: Some(kind.into()),
            rid: Some(rid.into()),
            quality: Some(quality),
        }
    }

    fn counter() -> impl FnMut() -> u32 {
        let mut next = 100;
        move || {
            next += 1;
            next
        }
    }

    #[test]
    fn streams_are_allocated_as_asked_within_bounds() {
        let v = MemberVideo::allocate(&[], counter());
        assert_eq!(v.streams.len(), 1);
        assert_eq!(
            (v.streams[0].kind.as_str(), v.streams[0].rid.as_str()),
            ("video", "100")
        );
        assert_eq!((v.streams[0].ssrc, v.streams[0].rtx_ssrc), (101, 102));
        let asked: Vec<StreamRequest> = (0..5)
            .map(|i| {
                request(
                    ["screen", "<script>"][i % 2],
                    ["50", "x/../y", ""][i % 3],
                    500,
                )
            })
            .collect();
        let v = MemberVideo::allocate(&asked, counter());
        assert_eq!(v.streams.len(), MAX_STREAMS);
        let shown: Vec<(&str, &str, u32)> = v
            .streams
            .iter()
            .map(|s| (s.kind.as_str(), s.rid.as_str(), s.quality))
            .collect();
        assert_eq!(
            shown,
            [
                ("screen", "50", 100),
                ("video", "100", 100),
                ("screen", "100", 100)
            ]
        );
        let spec = v.spec();
        assert_eq!(spec.aliases, [101, 102, 103, 104, 105, 106]);
        assert!(spec.receive);
    }

    #[test]
    fn an_op_12_names_only_its_own_ssrcs_and_is_rebuilt() {
        let mut v = MemberVideo::allocate(&[request("screen", "100", 100)], counter());
        let start = Video {
            audio_ssrc: 7,
            video_ssrc: 101,
            rtx_ssrc: 102,
            streams: vec![VideoStream {
                kind: "anything".into(),
                rid: "zzz".into(),
                ssrc: 101,
                rtx_ssrc: 102,
                active: true,
                quality: 900,
                max_bitrate: Some(2_500_000),
                max_framerate: Some(30),
                max_resolution: Some(Resolution {
                    kind: "huge".into(),
                    width: 1280,
                    height: 720,
                }),
            }],
        };
        assert_eq!(v.update(7, &start), Ok(true));
        let s = &v.streams[0];
        assert_eq!((s.kind.as_str(), s.rid.as_str()), ("screen", "100"));
        assert!(s.active);
        assert_eq!(
            (s.quality, s.max_framerate, &s.max_resolution),
            (100, Some(30), &None)
        );
        let shown = member_ssrcs(Snowflake(9), 7, Some(&v));
        assert_eq!(
            (shown.audio_ssrc, shown.video_ssrc, shown.rtx_ssrc),
            (7, 101, 102)
        );
        assert_eq!(v.update(7, &start), Ok(false), "nothing new");
        // Another member's SSRC anywhere refuses the whole message.
        for foreign in [
            Video {
                audio_ssrc: 8,
                ..start.clone()
            },
            Video {
                video_ssrc: 555,
                ..start.clone()
            },
            Video {
                video_ssrc: 7,
                ..start.clone()
            },
            Video {
                streams: vec![VideoStream {
                    rtx_ssrc: 556,
                    ..start.streams[0].clone()
                }],
                ..start.clone()
            },
        ] {
            assert_eq!(v.update(7, &foreign), Err(VideoError::ForeignSsrc));
        }
        assert_eq!(v.video_ssrc, 101, "a refused message changes nothing");
        // Stopping.
        let stop = Video {
            audio_ssrc: 7,
            video_ssrc: 0,
            rtx_ssrc: 0,
            streams: Vec::new(),
        };
        assert_eq!(v.update(7, &stop), Ok(true));
        assert_eq!(member_ssrcs(Snowflake(9), 7, Some(&v)).video_ssrc, 0);
        assert_eq!(member_ssrcs(Snowflake(9), 7, None).streams, []);
    }
}
