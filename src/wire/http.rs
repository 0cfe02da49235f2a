//! HTTP responses on the shared port: complete `Connection: close`
//! responses, and the JSON error body of PROTOCOL.md section 5.

use super::{Code, Refusal};
use bytes::Bytes;

/// The HTTP status of a refusal's code.
fn refusal_status(code: Code) -> u16 {
    match code {
        Code::BadRequest | Code::InvalidRoom | Code::InvalidUser | Code::TooLong => 400,
        Code::NotMember | Code::Forbidden | Code::LimitReached => 403,
        Code::NotFound => 404,
        Code::RateLimited => 429,
        Code::Unavailable => 503,
        Code::Internal => 500,
    }
}

/// The JSON error response for a refusal.
pub fn refused(r: &Refusal) -> Bytes {
    let code = serde_json::to_value(r.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    error(refusal_status(r.code), &code, &r.message)
}

/// A JSON error body `{"error":code,"message":..}` with its status.
pub fn error(status: u16, code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    response(status, "application/json", body.as_bytes())
}

/// A JSON body with its status.
pub fn json(status: u16, body: &serde_json::Value) -> Bytes {
    response(status, "application/json", body.to_string().as_bytes())
}

/// A complete `Connection: close` response.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Bytes {
    response_with(status, content_type, "", body)
}

/// A complete response with extra header lines (each ending in `\r\n`).
pub fn response_with(status: u16, content_type: &str, extra: &str, body: &[u8]) -> Bytes {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        201 => "Created",
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_length() {
        let r = error(404, "not_found", "x");
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let body = s.split("\r\n\r\n").nth(1).unwrap();
        assert!(s.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn refusal_statuses() {
        let b = refused(&Refusal::new(Code::NotMember, "x"));
        assert!(b.starts_with(b"HTTP/1.1 403 "));
        let b = refused(&Refusal::new(Code::TooLong, "x"));
        assert!(b.starts_with(b"HTTP/1.1 400 "));
    }
}
