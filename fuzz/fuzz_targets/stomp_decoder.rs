//! Feeds arbitrary bytes to the STOMP decoder in two chunks (split where the first byte says),
//! and checks that every frame it accepts encodes and decodes back to itself.
#![no_main]

use bytes::BytesMut;
use chat_wire::stomp::{Decoded, Decoder, Frame, Limits, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(first) * input.len() / 255;
    let mut decoder = Decoder::new(Limits {
        max_frame_bytes: 512,
        max_headers: 8,
        max_header_line_bytes: 64,
    });
    let mut buf = BytesMut::new();
    for chunk in [&input[..split], &input[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(frame))) => check_round_trip(&frame),
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

/// Re-encoding may add `content-length` and grow escapes, so the second decoder is roomier.
fn check_round_trip(frame: &Frame) {
    let mut wire = BytesMut::new();
    encode(frame, &mut wire);
    let mut decoder = Decoder::new(Limits {
        max_frame_bytes: 1 << 20,
        max_headers: 1000,
        max_header_line_bytes: 1 << 20,
    });
    let expected = if frame.body.is_empty() || frame.header("content-length").is_some() {
        frame.clone()
    } else {
        frame
            .clone()
            .with_header("content-length", frame.body.len().to_string())
    };
    assert_eq!(
        decoder.decode(&mut wire),
        Ok(Some(Decoded::Frame(expected)))
    );
    assert!(wire.is_empty(), "encoded frame left {} bytes", wire.len());
}
