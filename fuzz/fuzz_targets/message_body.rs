//! Fuzzes the parser of SEND and REST bodies (JSON `{"content","type"}` or plain text): it must
//! never panic, and whatever it accepts is non-empty text that survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = chat_wire::body::parse_message_body(data) {
        assert!(!content.trim().is_empty());
        let json = serde_json::to_string(&content).expect("a String serializes");
        let back: String = serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, content);
    }
});
