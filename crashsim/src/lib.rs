//! Simulated block devices with the media model of docs/DESIGN.md ("Media assumptions"), for running the very same engine
//! under power cuts, torn writes and device faults.
//!
//! - A [`World`] holds the devices of one run (backing, cache, plog) and one global operation
//!   log: every device read, write and flush, plus the client events and labels the harness
//!   records.
//! - [`SimDevice`] is a handle on one device of a shared world and implements
//!   `engine::BlockDevice`. Writes complete into a volatile cache; a flush makes them durable; a
//!   FUA write is durable at completion; reads see the newest completed write.
//! - A [`CrashPoint`] names a moment in the log; [`World::crash_state`] rebuilds from the log the
//!   durable images and pending writes at that moment, and [`CrashState::image`] applies a
//!   [`Choice`] (which pending writes persisted, how torn) to produce the post-crash images.
//! - Enumeration helpers ([`CrashState::all_subsets`], [`CrashState::subsets_up_to`],
//!   [`CrashState::tears_of`], [`CrashState::random_choices`]) and [`Dedup`] serve the explorer.
//! - Every device image is an [`Image`]: copy-on-write 4 KiB chunks, so a crash state, its
//!   choices' images, the [`ImageDevice`]s recovery runs on and restarted worlds share what they
//!   do not change instead of copying whole devices.
//! - [`Faults`] are per-device switches: garbage in torn units, a misdirected write, lying
//!   FLUSH/FUA, EIO at chosen operations, latent sector errors, bit rot.

mod choice;
mod crash;
mod device;
pub mod driver;
mod enumerate;
mod error;
pub mod explore;
mod faults;
mod image;
mod log;
mod media;
pub mod peer;
mod points;
pub mod rng;
mod world;

pub use choice::{BitFlip, Choice, Persist, Units};
pub use crash::{CrashImages, CrashPoint, CrashState, DeviceCrash, Replayer};
pub use device::{ImageDevice, SimDevice};
pub use driver::{Order, Scheduler, SimEngine};
pub use enumerate::{tear_masks, Dedup, Others, Subsets, MAX_EXHAUSTIVE_PENDING};
pub use error::{ChoiceError, SimError};
pub use faults::{BitRot, Faults, Misdirect, TornFill};
pub use image::{Image, CHUNK_BYTES};
pub use log::{format_entries, ClientOp, Event, FlushEffect, LogEntry, Submitted, WriteEffect};
pub use media::PendingWrite;
pub use points::PointSelection;
pub use world::{AtomicUnit, DeviceConfig, OpCounts, SharedWorld, World};
