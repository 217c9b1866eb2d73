//! Any bytes from a peer give messages or an error, never a panic (nor an
//! allocation the input's size does not justify).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = snapsync::protocol::decode_stream(data);
});
