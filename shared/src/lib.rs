//! The shared-memory link between `control` and `dataplane`.
//!
//! Control creates one [`Region`] (a file under `/dev/shm`) and starts the
//! dataplane with its path; the dataplane [attaches](Region::attach) and both
//! sides check the header before touching anything else. The region
//! holds, per data-plane core, two single-producer single-consumer rings of
//! fixed 128-byte slots:
//!
//! - a **command ring** (control → core) carrying [`Command`]s: announce an
//!   SSRC, upsert or remove a session, remove a channel, vouch for an
//!   address a core proved before (when control refills a restarted
//!   dataplane);
//! - an **event ring** (core → control) carrying [`Event`]s: an address
//!   learned from IP discovery or an authenticated packet, and periodic
//!   cumulative statistics.
//!
//! # Driving it
//!
//! ```no_run
//! use shared::{Region, RegionConfig, Command};
//! # fn main() -> Result<(), shared::RegionError> {
//! let region = Region::create("/dev/shm/voice-example", RegionConfig::new(2))?;
//! let (mut commands, _events) = region.control_side(0)?;
//! commands.push(&Command::RemoveChannel { channel: 7 }).expect("ring has room");
//! # Ok(()) }
//! ```
//!
//! A full ring is reported to the producer ([`RingFull`]) and nothing is
//! written: the producer keeps the message and retries (back-pressure), so
//! no message is ever lost silently.

mod message;
mod region;
mod ring;

pub use message::{
    Command, CoreStats, DecodeError, DropReason, Event, Mode, SessionSpec, SLOT_SIZE,
};
pub use region::{Region, RegionConfig, RegionError, LAYOUT_VERSION, MAGIC};
pub use ring::{Consumer, Producer, RingFull, Wire};
