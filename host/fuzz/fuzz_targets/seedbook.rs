//! The seed book (`seeds.json`, which `chiral seed --all` restarts from): a damaged file is an
//! error, never a panic; what parses renders back to text that parses the same; upserting keeps
//! one entry per path and plugin set.
#![no_main]
use chiral_host::seedbook::{parse, render, upsert};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(records) = parse(text) else { return };
    let again = parse(&render(&records)).expect("rendered seed book parses");
    assert_eq!(again, records);
    let mut book = Vec::new();
    for r in &records {
        let _ = r.matches(&r.path);
        upsert(&mut book, r.clone());
    }
    for (i, a) in book.iter().enumerate() {
        assert!(book[i + 1..].iter().all(|b| !a.same_entry(b)));
    }
    assert!(book.len() <= records.len());
});
