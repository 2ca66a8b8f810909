//! STOMP 1.2 header encoding: escaping for most frames, verbatim text for CONNECT/CONNECTED.
//!
//! Keeps true: whatever the encoder writes, the decoder reads back as the same string (escaped
//! frames), and no header name or value can ever break out of its line. In escaped frames `\r`,
//! `\n`, `:` and `\` are written as `\r`, `\n`, `\c` and `\\`, and any other escape read back is
//! an error. CONNECT and CONNECTED frames carry no escapes, so a CR or LF (or a colon in a name)
//! cannot be represented there; the encoder writes such a byte as a space.

use bytes::{BufMut, BytesMut};

use super::codec::FrameError;

/// Writes `text` to `out` with the STOMP 1.2 escapes.
pub fn escape_into(text: &str, out: &mut BytesMut) {
    for_each_escaped(text, |piece| out.put_slice(piece.as_bytes()));
}

/// [`escape_into`] for text being built as a `String`.
pub fn escape_into_string(text: &str, out: &mut String) {
    for_each_escaped(text, |piece| out.push_str(piece));
}

/// Hands `text` to `push` in pieces with the escapes applied: runs that need none as they are
/// (all of `text` at once when nothing needs escaping), each escaped byte as its escape.
fn for_each_escaped(text: &str, mut push: impl FnMut(&str)) {
    let mut rest = text;
    // The escaped bytes are ASCII, so every split falls on a character boundary.
    while let Some(i) = rest.bytes().position(needs_escape) {
        push(&rest[..i]);
        push(match rest.as_bytes()[i] {
            b'\r' => "\\r",
            b'\n' => "\\n",
            b':' => "\\c",
            _ => "\\\\",
        });
        rest = &rest[i + 1..];
    }
    push(rest);
}

/// Writes `text` to `out` unescaped (CONNECT/CONNECTED). CR and LF, and a colon in a name, are
/// written as spaces, since they cannot be represented.
pub fn write_verbatim(text: &str, is_name: bool, out: &mut BytesMut) {
    let unwritable = |b: u8| b == b'\r' || b == b'\n' || (is_name && b == b':');
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| unwritable(b)) {
        out.put_slice(bytes);
        return;
    }
    for &b in bytes {
        out.put_u8(if unwritable(b) { b' ' } else { b });
    }
}

/// Reads an escaped header name or value as it appeared on the wire (without its EOL).
pub fn unescape(raw: &[u8]) -> Result<String, FrameError> {
    if !raw.iter().any(|&b| b == b'\\' || b == b'\r') {
        return utf8(raw.to_vec());
    }
    let mut text = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => text.push(match bytes.next() {
                Some(b'r') => b'\r',
                Some(b'n') => b'\n',
                Some(b'c') => b':',
                Some(b'\\') => b'\\',
                _ => return Err(FrameError::InvalidEscape),
            }),
            b'\r' => return Err(FrameError::UnexpectedCarriageReturn),
            other => text.push(other),
        }
    }
    utf8(text)
}

/// Reads an unescaped (CONNECT/CONNECTED) header name or value; a backslash is just a backslash.
pub fn verbatim(raw: &[u8]) -> Result<String, FrameError> {
    if raw.contains(&b'\r') {
        return Err(FrameError::UnexpectedCarriageReturn);
    }
    utf8(raw.to_vec())
}

fn needs_escape(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b':' | b'\\')
}

fn utf8(bytes: Vec<u8>) -> Result<String, FrameError> {
    String::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        escape_into(text, &mut out);
        out.to_vec()
    }

    #[test]
    fn each_special_byte_has_its_own_escape() {
        assert_eq!(escaped("\r"), b"\\r");
        assert_eq!(escaped("\n"), b"\\n");
        assert_eq!(escaped(":"), b"\\c");
        assert_eq!(escaped("\\"), b"\\\\");
        assert_eq!(escaped("plain text"), b"plain text");
    }

    #[test]
    fn each_escape_reads_back_as_its_byte() {
        assert_eq!(unescape(b"\\r").unwrap(), "\r");
        assert_eq!(unescape(b"\\n").unwrap(), "\n");
        assert_eq!(unescape(b"\\c").unwrap(), ":");
        assert_eq!(unescape(b"\\\\").unwrap(), "\\");
        assert_eq!(unescape(b"a\\cb\\\\c\\nd").unwrap(), "a:b\\c\nd");
    }

    #[test]
    fn escaping_round_trips_mixed_text() {
        for text in [
            "",
            "a:b",
            "x\\y\r\nz",
            "\\c is not a colon",
            "héllo 漢字 🦀 :\\",
        ] {
            assert_eq!(unescape(&escaped(text)).unwrap(), text);
        }
    }

    #[test]
    fn an_unknown_escape_is_an_error() {
        assert_eq!(unescape(b"a\\tb"), Err(FrameError::InvalidEscape));
        assert_eq!(unescape(b"\\C"), Err(FrameError::InvalidEscape));
    }

    #[test]
    fn a_trailing_backslash_is_an_error() {
        assert_eq!(unescape(b"abc\\"), Err(FrameError::InvalidEscape));
    }

    #[test]
    fn a_raw_carriage_return_is_an_error() {
        assert_eq!(unescape(b"a\rb"), Err(FrameError::UnexpectedCarriageReturn));
        assert_eq!(verbatim(b"a\rb"), Err(FrameError::UnexpectedCarriageReturn));
    }

    #[test]
    fn invalid_utf8_is_an_error_escaped_or_not() {
        assert_eq!(unescape(b"\xff"), Err(FrameError::InvalidUtf8));
        assert_eq!(unescape(b"\\c\xc3"), Err(FrameError::InvalidUtf8));
        assert_eq!(verbatim(b"\xc3\x28"), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn verbatim_text_keeps_backslashes_and_colons() {
        assert_eq!(verbatim(b"pa\\ss:word\\c").unwrap(), "pa\\ss:word\\c");
    }

    #[test]
    fn verbatim_writing_cannot_break_a_line() {
        let mut out = BytesMut::new();
        write_verbatim("a\r\nb:c", false, &mut out);
        assert_eq!(&out[..], b"a  b:c");
        out.clear();
        write_verbatim("na:me", true, &mut out);
        assert_eq!(&out[..], b"na me");
    }
}
