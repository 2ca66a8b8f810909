//! Fuzzes the parser of SEND and REST bodies (a JSON object or plain text): it must never
//! panic, and whatever it accepts is non-empty text plus fields that carry no envelope name,
//! both surviving a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = chat_wire::body::parse_message_body(data) {
        assert!(!message.content.trim().is_empty());
        let json = serde_json::to_string(&message.content).expect("a String serializes");
        let back: String = serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, message.content);
        for name in chat_wire::body::ENVELOPE_FIELDS {
            assert!(!message.extra.contains_key(*name), "{name} kept");
        }
        let json = serde_json::to_string(&message.extra).expect("a Map serializes");
        let back: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, message.extra);
    }
});
