//! Byte encodings of the ABI records, written once and used by both sides: the guest
//! SDK decodes requests and encodes decisions, the host does the reverse.

use crate::abi::{DECISION_SIZE, MAX_DELAY_MS, MAX_LIMIT, MAX_WINDOW_MS, MAX_WINDOWS, WINDOW_SIZE};
use crate::{Request, Window};

/// Encode a request record: user id, plan (empty for none), payload JSON.
pub fn encode_request(user_id: &str, plan: Option<&str>, payload: &str) -> Vec<u8> {
    let fields = [user_id.as_bytes(), plan.unwrap_or("").as_bytes(), payload.as_bytes()];
    let mut out = Vec::with_capacity(12 + fields.iter().map(|f| f.len()).sum::<usize>());
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Decode a request record; `None` if it is malformed.
pub fn decode_request(bytes: &[u8]) -> Option<Request<'_>> {
    let mut rest = bytes;
    let mut next = || -> Option<&str> {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let field = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        core::str::from_utf8(field).ok()
    };
    let user_id = next()?;
    let plan = next()?;
    let payload = next()?;
    Some(Request { user_id, plan: (!plan.is_empty()).then_some(plan), payload })
}

/// Encode windows for `reserve`.
pub fn encode_windows(windows: &[Window]) -> Vec<u8> {
    let mut out = Vec::with_capacity(windows.len() * WINDOW_SIZE);
    for w in windows {
        out.extend_from_slice(&w.limit.to_le_bytes());
        out.extend_from_slice(&w.window_ms.to_le_bytes());
    }
    out
}

/// Decode and validate windows and a maximum delay as the host must before using them.
pub fn decode_windows(bytes: &[u8], max_delay_ms: i64) -> Result<Vec<Window>, i32> {
    if !bytes.len().is_multiple_of(WINDOW_SIZE) || bytes.len() / WINDOW_SIZE > MAX_WINDOWS {
        return Err(crate::abi::ERR_BAD_POINTER);
    }
    if !(0..=MAX_DELAY_MS as i64).contains(&max_delay_ms) {
        return Err(crate::abi::ERR_BAD_WINDOW);
    }
    let windows: Vec<Window> = bytes
        .chunks_exact(WINDOW_SIZE)
        .map(|c| Window {
            limit: u64::from_le_bytes(c[..8].try_into().expect("chunk is 16 bytes")),
            window_ms: u64::from_le_bytes(c[8..].try_into().expect("chunk is 16 bytes")),
        })
        .collect();
    let valid = |w: &Window| (1..=MAX_LIMIT).contains(&w.limit) && (1..=MAX_WINDOW_MS).contains(&w.window_ms);
    if windows.iter().all(valid) { Ok(windows) } else { Err(crate::abi::ERR_BAD_WINDOW) }
}

/// Validate a token bucket and a maximum delay as the host must before using them.
pub fn validate_bucket(interval_ms: i64, burst: i64, max_delay_ms: i64) -> Result<(), i32> {
    let ok = (1..=MAX_WINDOW_MS as i64).contains(&interval_ms)
        && (1..=MAX_LIMIT as i64).contains(&burst)
        && (0..=MAX_DELAY_MS as i64).contains(&max_delay_ms);
    if ok { Ok(()) } else { Err(crate::abi::ERR_BAD_WINDOW) }
}

/// The decision record's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionRecord {
    /// One of the `DECISION_*` constants.
    pub kind: u32,
    /// Run-at (queue) or retry-after (reject), in ms.
    pub value: i64,
    /// Guest address of the reason text.
    pub reason_ptr: u32,
    /// Length of the reason text.
    pub reason_len: u32,
}

impl DecisionRecord {
    /// The record's bytes.
    pub fn encode(&self) -> [u8; DECISION_SIZE] {
        let mut out = [0u8; DECISION_SIZE];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.reason_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.value.to_le_bytes());
        out[16..20].copy_from_slice(&self.reason_ptr.to_le_bytes());
        out
    }

    /// Parse a record's bytes.
    pub fn decode(b: &[u8; DECISION_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&b[8..16]);
        Self { kind: u32_at(0), reason_len: u32_at(4), value: i64::from_le_bytes(value), reason_ptr: u32_at(16) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let bytes = encode_request("alice", Some("pro"), r#"{"a":1}"#);
        let req = decode_request(&bytes).expect("valid record");
        assert_eq!(req, Request { user_id: "alice", plan: Some("pro"), payload: r#"{"a":1}"# });
        assert_eq!(decode_request(&encode_request("bob", None, "null")).map(|r| r.plan), Some(None));
        assert!(decode_request(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn windows_are_validated() {
        let ok = encode_windows(&[Window::per_second(1), Window::per_minute(20)]);
        assert_eq!(decode_windows(&ok, 0).map(|w| w.len()), Ok(2));
        assert!(decode_windows(&ok, -1).is_err());
        assert!(decode_windows(&encode_windows(&[Window::new(0, 1000)]), 0).is_err());
        assert!(decode_windows(&encode_windows(&[Window::new(1, MAX_WINDOW_MS + 1)]), 0).is_err());
        assert!(decode_windows(&ok[..15], 0).is_err());
        assert!(decode_windows(&encode_windows(&[Window::per_second(1); 9]), 0).is_err());
    }

    #[test]
    fn decision_record_round_trips() {
        let rec = DecisionRecord { kind: 2, value: -5, reason_ptr: 77, reason_len: 9 };
        assert_eq!(DecisionRecord::decode(&rec.encode()), rec);
    }
}
