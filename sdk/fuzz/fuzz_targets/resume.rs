//! Resume state files (JSON beside a `.part`): a malformed file is `None`, never a panic; the
//! done-piece bitfield is only taken when it fits the layout; packing round-trips.
#![no_main]
use chiral_sdk::{
    layout::Layout,
    resume::{pack, ResumeState},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw bytes as done flags: packed and read back, the same flags.
    let bits: Vec<bool> = data.iter().map(|b| b & 1 == 1).collect();
    assert_eq!(pack(&bits).len(), bits.len().div_ceil(8));
    let s = ResumeState::new(bits.len() as u64, 1, String::new(), &bits);
    assert_eq!(s.done_pieces(bits.len() as u32), Some(bits.clone()));

    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(state) = ResumeState::from_json(text) else { return };
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(ResumeState::from_json(&json).as_ref(), Some(&state));
    if let Ok(layout) = Layout::new(state.length, state.piece_length) {
        let count = layout.piece_count();
        if let Some(done) = state.done_pieces(count) {
            assert_eq!(done.len(), count as usize);
            let again = ResumeState::new(state.length, state.piece_length, state.fingerprint.clone(), &done);
            assert_eq!(again.done_pieces(count), Some(done));
        }
    }
    // A count the bitfield does not fit is refused, whatever it is.
    let _ = state.done_pieces(u32::MAX);
});
