//! Comparing secrets (run tokens, API token digests) without telling by its timing where
//! they differ; drawing and digesting API tokens. Knows nothing of who holds them.

/// Whether `a` and `b` are equal, looking at every byte whatever the first difference.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What is kept of an API token: its SHA-256, so every comparison is of 32 bytes and a
/// leaked store or config digest is no token.
#[cfg(feature = "daemon")]
pub fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `N` bytes from the kernel's randomness, in hex; never a fallback value.
#[cfg(feature = "daemon")]
pub fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// A new API token: `sp_` and 192 random bits in hex (the prefix lets secret scanners
/// recognize one).
#[cfg(feature = "daemon")]
pub fn draw_api_token() -> Result<String, getrandom::Error> {
    Ok(format!("sp_{}", random_hex::<24>()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(super::same(b"token", b"token"));
        assert!(!super::same(b"token", b"tokex"));
        assert!(!super::same(b"token", b"token2"));
        assert!(super::same(b"", b""));
        assert_eq!(super::hex(&[0, 0xab, 0x0f]), "00ab0f");
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn api_tokens_are_long_prefixed_and_never_repeat() {
        let a = super::draw_api_token().unwrap();
        let b = super::draw_api_token().unwrap();
        assert!(a.starts_with("sp_") && a.len() == 51, "{a}");
        assert_ne!(a, b);
        assert_ne!(super::digest(&a), super::digest(&b));
    }
}
