//! Who may use `bcl serve`: a bearer token that every request (the page included) must carry,
//! compared in constant time, and the rule that a server reachable beyond loopback has one
//! unless its operator says otherwise.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

use crate::gallery::GalleryError;

/// Shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The environment variable `bcl serve` reads its token from when no flag gives one.
pub const TOKEN_ENV: &str = "BCL_SERVE_TOKEN";

/// A bearer token (never printed: its `Debug` shows its length only).
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} characters)", self.0.len())
    }
}

impl Token {
    /// A token from `s` (surrounding whitespace, such as a file's final newline, dropped): at
    /// least [`MIN_TOKEN_CHARS`] visible ASCII characters, as an `Authorization` header
    /// carries them.
    pub fn new(s: &str) -> Result<Self, GalleryError> {
        let t = s.trim();
        if t.len() < MIN_TOKEN_CHARS {
            return Err(GalleryError::Invalid(format!(
                "the serve token has {} characters: use at least {MIN_TOKEN_CHARS} (for \
                 example `openssl rand -hex 32`)",
                t.len()
            )));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GalleryError::Invalid(
                "the serve token must be visible ASCII characters without spaces (it travels \
                 in an HTTP header)"
                    .into(),
            ));
        }
        Ok(Self(t.to_string()))
    }

    /// Whether an `Authorization` header value is `Bearer <this token>` (the scheme's case
    /// ignored, as HTTP says; the token compared in constant time).
    pub fn admits(&self, header: Option<&str>) -> bool {
        let Some((scheme, given)) = header.and_then(|h| h.trim().split_once(' ')) else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && self.admits_value(given)
    }

    /// Whether `given` (surrounding whitespace dropped) is this token, compared in constant
    /// time.
    pub fn admits_value(&self, given: &str) -> bool {
        bool::from(given.trim().as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// Refuses to serve at `addr` beyond loopback without a token, unless `allow_unauthenticated`
/// (the operator's explicit word that the network in front of it guards the gallery).
pub fn check_exposure(
    addr: SocketAddr,
    token: Option<&Token>,
    allow_unauthenticated: bool,
) -> Result<(), GalleryError> {
    if addr.ip().is_loopback() || token.is_some() || allow_unauthenticated {
        return Ok(());
    }
    Err(GalleryError::Invalid(format!(
        "refusing to serve on {addr} without a token: anyone who reaches that address could \
         read and search the gallery. Give one ({TOKEN_ENV}=... or --token-file FILE; clients \
         send `Authorization: Bearer <token>`), listen on 127.0.0.1, or pass \
         --allow-unauthenticated if something in front of the server guards it"
    )))
}
