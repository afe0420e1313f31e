//! Comparing secrets (run tokens, API token digests) without telling by its timing where
//! they differ. Knows nothing of who holds them.

/// Whether `a` and `b` are equal, looking at every byte whatever the first difference.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(super::same(b"token", b"token"));
        assert!(!super::same(b"token", b"tokex"));
        assert!(!super::same(b"token", b"token2"));
        assert!(super::same(b"", b""));
    }
}
