//! BEP 10 handshakes, BEP 9 metadata messages and the `chiral` hello; metadata assembly.
#![no_main]
use chiral_plugin_bittorrent::extension::{ChiralHello, ExtHandshake, Metadata, MetadataAssembly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ExtHandshake::decode(data);
    let _ = ChiralHello::decode(data);
    if let Ok(Metadata::Data { piece, total_size, data: bytes }) = Metadata::decode(data) {
        if let Ok(mut asm) = MetadataAssembly::new(total_size) {
            let _ = asm.add(piece, bytes, 1, &[0u8; 20]);
        }
    }
});
