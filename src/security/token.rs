//! Bearer tokens: what a listener demands in `authorization: Bearer <token>`.
//!
//! The token is kept only as its SHA-256 digest, and a presented token is compared by its
//! digest in constant time ([`subtle`]), so neither the comparison's duration nor a memory
//! dump tells an attacker how much of a guess was right, or how long the token is.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured token.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Token(..)")
    }
}

/// Why a request was refused: said to the client, and safe to log (it never holds a token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not the one this listener accepts")]
    Wrong,
}

impl Token {
    /// The token in `text`, surrounding whitespace (a file's final newline) ignored; `None`
    /// when nothing is left.
    pub fn new(text: &str) -> Option<Token> {
        let token = text.trim();
        (!token.is_empty()).then(|| Token {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether the request's `authorization` header carries this token.
    ///
    /// # Errors
    /// [`Refusal::Missing`] without a bearer token, [`Refusal::Wrong`] with another one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
            .ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().expect("header value"));
        headers
    }

    #[test]
    fn only_the_configured_token_is_admitted() {
        let token = Token::new("s3cret\n").expect("token");
        assert_eq!(token.check(&headers("Bearer s3cret")), Ok(()));
        assert_eq!(token.check(&headers("bearer  s3cret ")), Ok(()));
        assert_eq!(token.check(&headers("Bearer s3cre")), Err(Refusal::Wrong));
        assert_eq!(token.check(&headers("Bearer s3cret2")), Err(Refusal::Wrong));
        assert_eq!(token.check(&headers("Basic s3cret")), Err(Refusal::Missing));
        assert_eq!(token.check(&headers("Bearers3cret")), Err(Refusal::Missing));
        assert_eq!(token.check(&headers("Bearer ")), Err(Refusal::Missing));
        assert_eq!(token.check(&HeaderMap::new()), Err(Refusal::Missing));
        assert!(Token::new(" \n").is_none());
        assert_eq!(format!("{token:?}"), "Token(..)");
    }
}
