//! The shared-memory link between `control` and `dataplane`.
//!
//! Control creates one [`Region`] (an anonymous memfd by default, or a 0600
//! file under `/dev/shm`) and starts the dataplane with its path; the
//! dataplane [attaches](Region::attach) and both sides check the header
//! before touching anything else. The region holds, per data-plane core, two
//! single-producer single-consumer rings of fixed 128-byte slots:
//!
//! - a **command ring** (control → core) carrying [`Command`]s: announce an
//!   SSRC, upsert or remove a session, remove a channel, vouch for an
//!   address a core proved before (when control refills a restarted
//!   dataplane), bind or unbind an address proven on another core;
//! - an **event ring** (core → control) carrying [`Event`]s: an address
//!   observed by IP discovery (never trusted), proven by an authenticated
//!   packet, or expired, and periodic cumulative statistics and drops;
//!
//! and one table of [`Counters`]: per session slot, the high-water mark of
//! the nonce counters a core reserved, so a restarted dataplane never seals
//! twice with one nonce under one key.
//!
//! # Driving it
//!
//! ```no_run
//! use shared::{Region, RegionConfig, Command};
//! # fn main() -> Result<(), shared::RegionError> {
//! let region = Region::create_anonymous(RegionConfig::new(2))?;
//! // The dataplane attaches with `Region::attach(region.path())`.
//! let (mut commands, _events) = region.control_side(0)?;
//! commands.push(&Command::RemoveChannel { channel: 7 }).expect("ring has room");
//! # Ok(()) }
//! ```
//!
//! A full ring is reported to the producer ([`PushError::Full`]) and
//! nothing is written: the producer keeps the message and retries
//! (back-pressure), so no message is ever lost silently. The other process's
//! ring index is checked on every load; a corrupt one is an error
//! ([`Corrupt`]), never a hang. Consumed slots are wiped.

mod message;
mod region;
mod ring;

pub use message::{
    Command, CoreStats, DecodeError, DropReason, Drops, Event, Mode, SessionSpec, VideoSpec,
    MAX_ALIASES, SLOT_SIZE,
};
pub use region::{Counters, Region, RegionConfig, RegionError, LAYOUT_VERSION, MAGIC};
pub use ring::{Consumer, Corrupt, PopError, Producer, PushError, Wire};
