//! Arbitrary bytes through job parsing and validation, as a delivery body.
//!
//! The checks live in `refund_worker::job::invariants::check`, which a stable test also runs
//! over the malformed corpus and thousands of mutations (`tests/it/malformed.rs`); this target
//! only lets libFuzzer search for an input that breaks them. A panic is a finding: the parser
//! panicked, or an invariant broke (the message says which).
//!
//! Run (nightly): `cargo +nightly fuzz run job_parse fuzz/corpus/job_parse tests/corpus/malformed`

#![no_main]

use libfuzzer_sys::fuzz_target;
use refund_worker::job::{check_media, invariants};

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = invariants::check(data) {
        panic!("invariant broken: {broken}");
    }
    // The declared media go through their own check; any text must be handled, never panic.
    if let Some((content_type, content_encoding)) = std::str::from_utf8(data)
        .ok()
        .and_then(|text| text.split_once('\n'))
    {
        let _ = check_media(Some(content_type), Some(content_encoding));
    }
});
