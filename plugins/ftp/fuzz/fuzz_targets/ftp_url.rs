//! `ftp://` / `ftps://` identifiers as users and other plugins give them: errors, never panics;
//! a parsed target names a safe file, and re-targeting it keeps its server.
#![no_main]
use chiral_plugin_ftp::target::{command_path, encode_path, redact_identifier, scrub, Defaults, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let shown = redact_identifier(s);
    assert!(!shown.contains('\n'));
    let _ = command_path(s);
    let _ = encode_path(s);
    let _ = scrub(s, "secret");
    let defaults = Defaults { user: Some("u".into()), password: Some("p".into()) };
    for d in [Defaults::default(), defaults] {
        let Ok(t) = Target::parse(s, &d) else { continue };
        let name = t.name();
        assert!(!name.is_empty() && !name.contains('/') && name != "..", "{name:?}");
        let _ = t.authority();
        let _ = t.scrub(s);
        let other = t.with_path("/x/y");
        assert_eq!((other.host.as_str(), other.port), (t.host.as_str(), t.port));
        assert_eq!(other.name(), "y");
    }
});
