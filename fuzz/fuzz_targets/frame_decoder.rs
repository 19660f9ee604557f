//! Relay frames from the network: any bytes, cut anywhere, must decode
//! without panicking, and every frame decoded must encode back to exactly
//! the bytes it came from.
#![no_main]

use fluister::core::frame::{Frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where to cut the stream, as QUIC might.
    let (cut, bytes) = match data.split_first() {
        Some((c, rest)) => (*c as usize, rest),
        None => return,
    };
    let mut decoder = FrameDecoder::default();
    let mut frames = Vec::new();
    let split = cut.min(bytes.len());
    let mut consumed = 0;
    for piece in [&bytes[..split], &bytes[split..]] {
        match decoder.push(piece, &mut frames) {
            Ok(n) => consumed += n,
            Err(_) => return,
        }
    }
    let mut reencoded = Vec::new();
    for f in &frames {
        f.encode_into(&mut reencoded);
    }
    assert_eq!(&bytes[..reencoded.len()], &reencoded[..]);
    assert!(consumed == bytes.len());
    let _ = Frame::decode(bytes);
});
