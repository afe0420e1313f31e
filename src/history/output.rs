//! One target's output under a byte cap, as stored chunks: each piece of output is one chunk at
//! its byte offset in the whole stream; the first half of the cap stays (the head), the newest
//! chunks fill the rest (the tail), and chunks in between are dropped and counted. Pure: the
//! store carries out the inserts and deletes this decides, and reads go through [`assemble`].

use std::collections::VecDeque;

/// What a reader gets from an offset on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Slice {
    /// Where `text` starts in the stream (after any dropped bytes it skipped).
    pub offset: u64,
    /// The offset to ask for next.
    pub next: u64,
    pub text: String,
    /// Bytes between `offset` and `next` that were dropped by the cap (a marker line stands
    /// for them).
    pub dropped_bytes: u64,
}

/// The capping state of one target's stored chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapState {
    /// Bytes received in all (the next chunk's offset).
    pub total: u64,
    /// Bytes dropped so far.
    pub dropped: u64,
    /// Bytes kept in head chunks (those starting in the first half of the cap).
    pub head: u64,
    /// Tail chunks still stored, oldest first: (offset, length).
    pub tail: VecDeque<(u64, u64)>,
}

impl CapState {
    /// A chunk of `len` bytes arrives: its offset, and the offsets of older chunks to delete.
    pub fn push(&mut self, len: u64, cap: u64) -> (u64, Vec<u64>) {
        let offset = self.total;
        self.total += len;
        if offset < cap / 2 && self.dropped == 0 && self.tail.is_empty() {
            self.head += len;
            return (offset, Vec::new());
        }
        self.tail.push_back((offset, len));
        let room = cap.saturating_sub(self.head);
        let mut tail_bytes: u64 = self.tail.iter().map(|(_, l)| l).sum();
        let mut drop = Vec::new();
        // The newest chunk always stays, even alone over the cap.
        while tail_bytes > room && self.tail.len() > 1 {
            let (o, l) = self.tail.pop_front().expect("len > 1");
            tail_bytes -= l;
            self.dropped += l;
            drop.push(o);
        }
        (offset, drop)
    }
}

/// The text from `from` on, given the stored chunks (offset, text) in offset order; gaps left
/// by the cap become a marker line. `total` is the stream's length.
pub fn assemble(chunks: &[(u64, String)], from: u64, total: u64) -> Slice {
    let mut text = String::new();
    let mut dropped = 0;
    let mut pos = from;
    let mut start = None;
    for (offset, data) in chunks {
        let end = offset + data.len() as u64;
        if end <= pos {
            continue;
        }
        if *offset > pos {
            let gap = offset - pos;
            dropped += gap;
            text.push_str(&format!(
                "\n[... {gap} bytes dropped by saltpeter's output cap ...]\n"
            ));
            pos = *offset;
        }
        let skip = floor_boundary(data, (pos - offset) as usize);
        start.get_or_insert(offset + skip as u64);
        text.push_str(&data[skip..]);
        pos = end;
    }
    if pos < total {
        // Dropped at the end (cannot happen: the newest chunk is kept), counted all the same.
        dropped += total - pos;
    }
    Slice {
        offset: start.unwrap_or(from.min(total)),
        next: total.max(from.min(total)),
        text,
        dropped_bytes: dropped,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pushes chunks through the cap and keeps what the store would keep.
    fn store(chunks: &[String], cap: u64) -> (CapState, Vec<(u64, String)>) {
        let mut state = CapState::default();
        let mut kept: Vec<(u64, String)> = Vec::new();
        for c in chunks {
            let (offset, drop) = state.push(c.len() as u64, cap);
            kept.push((offset, c.clone()));
            kept.retain(|(o, _)| !drop.contains(o));
        }
        (state, kept)
    }

    #[test]
    fn under_the_cap_everything_is_kept() {
        let (state, kept) = store(&["hello ".into(), "world".into()], 64);
        assert_eq!((state.total, state.dropped), (11, 0));
        let s = assemble(&kept, 6, state.total);
        assert_eq!((s.text.as_str(), s.offset, s.next), ("world", 6, 11));
    }

    #[test]
    fn over_the_cap_head_and_tail_are_kept_and_the_gap_counted() {
        let lines: Vec<String> = (0..100).map(|i| format!("{i:04}\n")).collect();
        let (state, kept) = store(&lines, 40);
        assert_eq!(state.total, 500);
        let all = assemble(&kept, 0, state.total);
        assert!(all.text.starts_with("0000\n0001\n"), "{}", all.text);
        assert!(all.text.ends_with("0098\n0099\n"));
        assert!(all.text.contains("bytes dropped"));
        assert_eq!(all.dropped_bytes, state.dropped);
        let kept_bytes: u64 = kept.iter().map(|(_, d)| d.len() as u64).sum();
        assert!(kept_bytes <= 40);
        assert_eq!(kept_bytes + state.dropped, state.total);
        // A follower past the gap gets only what is new.
        assert_eq!(assemble(&kept, 495, state.total).text, "0099\n");
        // One inside the gap is told how much it missed.
        let mid = assemble(&kept, 200, state.total);
        assert!(mid.dropped_bytes > 0 && mid.text.ends_with("0099\n"));
    }

    proptest! {
        #[test]
        fn offsets_add_up_and_every_read_is_a_suffix_of_what_is_kept(
            chunks in proptest::collection::vec("[a-zé😀\n]{1,20}", 0..60),
            cap in 8u64..256,
            from in 0u64..400,
        ) {
            let (state, kept) = store(&chunks, cap);
            let whole: String = chunks.concat();
            prop_assert_eq!(state.total, whole.len() as u64);
            let kept_bytes: u64 = kept.iter().map(|(_, d)| d.len() as u64).sum();
            prop_assert_eq!(kept_bytes + state.dropped, state.total);
            for (o, d) in &kept {
                prop_assert_eq!(&whole[*o as usize..*o as usize + d.len()], d.as_str());
            }
            let s = assemble(&kept, from, state.total);
            prop_assert_eq!(s.next, state.total.max(from.min(state.total)));
            if state.dropped == 0 {
                let at = (from.min(state.total)) as usize;
                let mut at2 = at;
                while !whole.is_char_boundary(at2) { at2 -= 1; }
                prop_assert_eq!(s.text, whole[at2..].to_string());
            }
        }
    }
}
