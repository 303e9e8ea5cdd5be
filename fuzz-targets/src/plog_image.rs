//! `plog_image`: a valid type-1 cache device (written by the engine, crashed without shutdown)
//! with arbitrary bytes as its plog device (a valid plog image patched by the input, an
//! [`ImageInput`], at most [`image::MAX_PLOG_SECTORS`]). The same properties as `cache_image`:
//! a typed error or a working engine, reads that succeed or fail with a typed error, a written
//! block that reads back and survives a clean shutdown.

use engine::{MemDevice, SyncEngine};

use crate::cache_image::exercise;
use crate::image::{self, backing_image, open_config, ImageInput};

/// The input: the plog device of a type-1 template patched.
pub type Input = ImageInput;

/// Runs the raw bytes of a corpus file as `fuzz_target!` does.
pub fn run(data: &[u8]) {
    if let Some(input) = crate::decode(data) {
        run_input(input);
    }
}

pub fn run_input(input: Input) {
    let d = input.build(
        |t| t.plog.is_some(),
        |t| t.plog.as_deref().unwrap_or_default(),
        image::MAX_PLOG_SECTORS,
    );
    let opened = SyncEngine::open_with_plog(
        MemDevice::from_bytes(d.template.cache.clone()),
        MemDevice::from_bytes(backing_image()),
        Some(MemDevice::from_bytes(d.image)),
        open_config(),
    );
    if let Ok((engine, _report)) = opened {
        exercise(engine, d.probe, |c, b, p| {
            SyncEngine::open_with_plog(c, b, p, open_config()).map(|(e, _)| e)
        });
    }
}
