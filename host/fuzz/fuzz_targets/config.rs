//! The TOML config file: never panics; unknown keys are errors, the error is one line; plugin
//! options come out as key/value strings for every plugin table.
#![no_main]
use chiral_host::config::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ConfigFile::parse(text) {
        Ok(c) => {
            for (name, table) in &c.plugins {
                let opts = c.plugin_options(name);
                assert!(opts.len() >= table.values().filter(|v| !v.is_array() && !v.is_table()).count());
                assert!(opts.iter().all(|(k, _)| table.contains_key(k)));
            }
            assert!(c.plugin_options("no such plugin\u{0}").is_empty());
        }
        Err(message) => assert!(!message.contains('\n')),
    }
});
