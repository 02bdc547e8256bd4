//! The reply envelope: `{"ok":true, ...body}` or `{"ok":false,"error":{"code","message"}}`.

use crate::error::{ApiError, ProtocolError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct OkEnvelope<'a, T> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize, Deserialize)]
struct ErrEnvelope {
    ok: bool,
    error: ApiError,
}

#[derive(Deserialize)]
struct Head {
    ok: bool,
}

/// Encodes a success reply. `body` must serialize as a JSON object.
pub fn ok<T: Serialize>(body: &T) -> Vec<u8> {
    serde_json::to_vec(&OkEnvelope { ok: true, body }).expect("reply bodies always serialize")
}

/// Encodes an error reply.
pub fn err(error: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&ErrEnvelope {
        ok: false,
        error: error.clone(),
    })
    .expect("error replies always serialize")
}

/// Encodes a result as a reply.
pub fn encode<T: Serialize>(result: &Result<T, ApiError>) -> Vec<u8> {
    match result {
        Ok(body) => ok(body),
        Err(e) => err(e),
    }
}

/// Decodes a reply: the outer `Result` is about the bytes, the inner one is what the peer said.
///
/// # Errors
/// [`ProtocolError::Malformed`] when the bytes are not a reply envelope holding a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Result<T, ApiError>, ProtocolError> {
    let head: Head = serde_json::from_slice(bytes).map_err(ProtocolError::Malformed)?;
    if head.ok {
        serde_json::from_slice(bytes)
            .map(Ok)
            .map_err(ProtocolError::Malformed)
    } else {
        let e: ErrEnvelope = serde_json::from_slice(bytes).map_err(ProtocolError::Malformed)?;
        Ok(Err(e.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::messages::ReleaseReply;

    #[test]
    fn envelopes_round_trip() {
        let bytes = ok(&ReleaseReply { released: 2 });
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf8"),
            r#"{"ok":true,"released":2}"#
        );
        assert_eq!(
            decode::<ReleaseReply>(&bytes).expect("decode"),
            Ok(ReleaseReply { released: 2 })
        );
        let e = ApiError::new(ErrorCode::NotFound, "no task");
        let bytes = err(&e);
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf8"),
            r#"{"ok":false,"error":{"code":"not_found","message":"no task"}}"#
        );
        assert_eq!(decode::<ReleaseReply>(&bytes).expect("decode"), Err(e));
        assert!(decode::<ReleaseReply>(b"nope").is_err());
    }
}
