//! One target's output under a byte cap: the head and the tail are kept, the middle is dropped
//! and counted. Offsets are byte positions in the whole stream as the wrapper sent it.

/// The head and tail of a stream capped at `cap` bytes; `total = head + dropped + tail`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capped {
    pub head: String,
    pub tail: String,
    pub dropped: u64,
}

/// What a reader gets from an offset on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Slice {
    /// Where `text` starts in the stream (after any dropped bytes it skipped).
    pub offset: u64,
    /// The offset to ask for next.
    pub next: u64,
    pub text: String,
    /// Bytes between `offset` and `next` that were dropped by the cap (shown as a marker line).
    pub dropped_bytes: u64,
}

impl Capped {
    pub fn total(&self) -> u64 {
        self.head.len() as u64 + self.dropped + self.tail.len() as u64
    }

    /// Appends `data`, keeping at most `cap` bytes: the first half and the latest rest.
    pub fn push(&mut self, data: &str, cap: usize) {
        if self.dropped == 0 && self.tail.is_empty() {
            if self.head.len() + data.len() <= cap {
                self.head.push_str(data);
                return;
            }
            self.head.push_str(data);
            let cut = floor_boundary(&self.head, cap / 2);
            self.tail = self.head.split_off(cut);
        } else {
            self.tail.push_str(data);
        }
        let room = cap.saturating_sub(self.head.len());
        if self.tail.len() > room {
            let cut = ceil_boundary(&self.tail, self.tail.len() - room);
            self.dropped += cut as u64;
            self.tail.drain(..cut);
        }
    }

    /// Everything from `offset` on; a gap left by the cap is a marker line.
    pub fn read(&self, offset: u64) -> Slice {
        let head_len = self.head.len() as u64;
        let tail_start = head_len + self.dropped;
        let marker = |n: u64| format!("\n[... {n} bytes dropped by saltpeter's output cap ...]\n");
        let next = self.total();
        if offset < head_len {
            let from = floor_boundary(&self.head, offset as usize);
            let mut text = self.head[from..].to_string();
            if self.dropped > 0 {
                text.push_str(&marker(self.dropped));
            }
            text.push_str(&self.tail);
            Slice {
                offset: from as u64,
                next,
                text,
                dropped_bytes: self.dropped,
            }
        } else if offset < tail_start {
            let skipped = tail_start - offset;
            Slice {
                offset,
                next,
                text: format!("{}{}", marker(skipped), self.tail),
                dropped_bytes: skipped,
            }
        } else {
            let at = ((offset - tail_start) as usize).min(self.tail.len());
            let from = floor_boundary(&self.tail, at);
            Slice {
                offset: tail_start + from as u64,
                next,
                text: self.tail[from..].to_string(),
                dropped_bytes: 0,
            }
        }
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn under_the_cap_everything_is_kept() {
        let mut c = Capped::default();
        c.push("hello ", 16);
        c.push("world", 16);
        assert_eq!((c.head.as_str(), c.dropped), ("hello world", 0));
        assert_eq!(c.read(6).text, "world");
        assert_eq!(c.read(6).next, 11);
    }

    #[test]
    fn over_the_cap_head_and_tail_are_kept_and_the_gap_counted() {
        let mut c = Capped::default();
        for i in 0..100 {
            c.push(&format!("{i:04}\n"), 40);
        }
        assert_eq!(c.total(), 500);
        assert!(c.head.len() + c.tail.len() <= 40);
        assert!(c.head.starts_with("0000\n0001\n"));
        assert!(c.tail.ends_with("0098\n0099\n"));
        let all = c.read(0);
        assert_eq!(all.dropped_bytes, c.dropped);
        assert!(all.text.contains("bytes dropped"));
        // A follower past the gap gets only the new tail.
        assert_eq!(c.read(495).text, "0099\n");
    }

    proptest! {
        #[test]
        fn the_cap_holds_offsets_add_up_and_text_stays_valid(
            chunks in proptest::collection::vec("[a-zé😀\n]{0,20}", 0..60),
            cap in 4usize..64,
        ) {
            let mut c = Capped::default();
            let mut whole = String::new();
            for ch in &chunks {
                c.push(ch, cap);
                whole.push_str(ch);
            }
            prop_assert_eq!(c.total(), whole.len() as u64);
            prop_assert!(c.head.len() + c.tail.len() <= cap);
            prop_assert!(whole.starts_with(&c.head));
            prop_assert!(whole.ends_with(&c.tail));
            if c.dropped == 0 {
                prop_assert_eq!(format!("{}{}", c.head, c.tail), whole);
            }
        }
    }
}
