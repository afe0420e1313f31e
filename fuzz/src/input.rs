//! A tiny reader that turns raw fuzzer (or proptest) bytes into structured choices, so the
//! libFuzzer targets and the stable property tests drive the same checks from the same bytes.
//! Running out of bytes is not an error: every read then returns zeros or empty values.

/// Structured reads from a byte slice, front to back.
pub struct Src<'a> {
    data: &'a [u8],
}

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Src<'a> {
        Src { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (`n` must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            usize::from(self.byte()) % n
        } else {
            usize::from(u16::from_le_bytes([self.byte(), self.byte()])) % n
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Mostly small numbers and the edges, sometimes anything.
    pub fn i64(&mut self) -> i64 {
        match self.byte() % 8 {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -1,
            3 | 4 => i64::from(self.byte()),
            5 => i64::from(self.u32() as i32),
            _ => self.u64() as i64,
        }
    }

    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// Up to `max` raw bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Text of up to `max` characters from an alphabet that JSON, YAML and msgpack all find
    /// interesting: quotes, escapes, control characters, multi-byte and astral characters.
    pub fn text(&mut self, max: usize) -> String {
        const ALPHABET: &[&str] = &[
            "a", "b", "z", "0", "7", "-", "_", ".", "/", " ", "\"", "\\", "'", "\n", "\t", "\0",
            "\u{7f}", "é", "€", "\u{2028}", "\u{feff}", "𝄞", "{", "}", "[", "]", ":", ",", "#",
            "&", "*", "!", "|", ">", "%", "@", "`", "~", "?", "\r",
        ];
        let n = self.below(max + 1);
        let mut out = String::new();
        for _ in 0..n {
            if self.is_empty() {
                break;
            }
            let piece = *self.pick(ALPHABET);
            out.push_str(piece);
        }
        out
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
