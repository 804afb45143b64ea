//! A run's captured output: one byte ring for both streams, with the points where the
//! stream changes, so that stdout and stderr stay apart and in the order they were read.
//! Offsets are logical (bytes ever pushed); the ring keeps the newest `cap` bytes, and
//! counts, per stream, what it dropped. A reader that must not lose bytes (a follower of
//! the run) keeps the pushes within the ring: the output owner reads a pipe only as far
//! as [`Ring::room`] allows. Only at a run's end may a push go beyond `cap` (the last bytes
//! in the pipes, bounded by their size): the ring then grows instead of dropping.

use proto::Stream;
use std::collections::VecDeque;

/// The output ring.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    /// Offset just past the newest byte.
    total: u64,
    /// Where each run of one stream begins (offset, stream), oldest first; the first one
    /// may begin before the oldest byte held.
    segs: VecDeque<(u64, Stream)>,
    /// Bytes dropped, per stream.
    dropped: [u64; 2],
}

/// A piece of output read from the ring.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Its stream.
    pub stream: Stream,
    /// Its bytes (one or two slices: the ring may wrap).
    pub bytes: (&'a [u8], &'a [u8]),
}

impl Piece<'_> {
    /// Its length.
    pub fn len(&self) -> usize {
        self.bytes.0.len() + self.bytes.1.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.bytes.0);
        v.extend_from_slice(self.bytes.1);
        v
    }
}

impl Ring {
    /// An empty ring keeping `cap` bytes (nothing is allocated before the first push).
    pub fn new(cap: usize) -> Ring {
        Ring { buf: VecDeque::new(), cap: cap.max(1), total: 0, segs: VecDeque::new(), dropped: [0, 0] }
    }

    /// Offset of the oldest byte held.
    pub fn start(&self) -> u64 {
        self.total - self.buf.len() as u64
    }

    /// Offset just past the newest byte.
    pub fn end(&self) -> u64 {
        self.total
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes dropped of `stream` (both: `None`).
    pub fn dropped(&self, stream: Option<Stream>) -> u64 {
        match stream {
            Some(s) => self.dropped[s.index()],
            None => self.dropped[0] + self.dropped[1],
        }
    }

    /// How many bytes may be pushed without dropping any at or after `keep_from`.
    pub fn room(&self, keep_from: u64) -> usize {
        let kept = self.total.saturating_sub(keep_from.max(self.start())) as usize;
        self.cap.saturating_sub(kept)
    }

    /// Appends `data` of `stream`. Bytes from `keep_from` on are never dropped (the ring
    /// grows past `cap` if it must); older ones go as the capacity requires.
    pub fn push(&mut self, stream: Stream, data: &[u8], keep_from: Option<u64>) {
        if data.is_empty() {
            return;
        }
        if self.segs.back().is_none_or(|&(_, s)| s != stream) {
            self.segs.push_back((self.total, stream));
        }
        self.total += data.len() as u64;
        self.buf.extend(data);
        let mut excess = self.buf.len().saturating_sub(self.cap);
        if let Some(k) = keep_from {
            excess = excess.min(k.saturating_sub(self.start()) as usize);
        }
        if excess > 0 {
            self.drop_oldest(excess);
        }
    }

    fn drop_oldest(&mut self, n: usize) {
        let (start, new_start) = (self.start(), self.start() + n as u64);
        // Count what goes, per stream, segment by segment.
        for i in 0..self.segs.len() {
            let (from, s) = self.segs[i];
            let to = self.segs.get(i + 1).map_or(self.total, |&(o, _)| o);
            let (a, b) = (from.max(start), to.min(new_start));
            if a >= new_start {
                break;
            }
            self.dropped[s.index()] += b.saturating_sub(a);
        }
        self.buf.drain(..n);
        while self.segs.len() > 1 && self.segs[1].0 <= new_start {
            self.segs.pop_front();
        }
    }

    /// The output from `offset` on, at most `max` bytes, split where the stream changes,
    /// and the offset after what was returned. Bytes no longer held are skipped (`offset`
    /// moves to the oldest held). Only pieces of `only` are returned when it is set; the
    /// offset still moves past the others.
    pub fn read(&self, offset: u64, max: usize, only: Option<Stream>) -> (Vec<Piece<'_>>, u64) {
        let mut at = offset.max(self.start());
        let mut pieces = Vec::new();
        let mut left = max;
        let (first, second) = self.buf.as_slices();
        let base = self.start();
        let slice = |from: u64, to: u64| -> (&[u8], &[u8]) {
            let (a, b) = ((from - base) as usize, (to - base) as usize);
            let n = first.len();
            match (a < n, b <= n) {
                (true, true) => (&first[a..b], &[][..]),
                (true, false) => (&first[a..], &second[..b - n]),
                _ => (&second[a - n..b - n], &[][..]),
            }
        };
        let mut i = self.segs.partition_point(|&(o, _)| o <= at).saturating_sub(1);
        while at < self.total && left > 0 && i < self.segs.len() {
            let (_, s) = self.segs[i];
            let seg_end = self.segs.get(i + 1).map_or(self.total, |&(o, _)| o);
            if only.is_some_and(|o| o != s) {
                at = seg_end;
            } else {
                let to = seg_end.min(at.saturating_add(left as u64));
                pieces.push(Piece { stream: s, bytes: slice(at, to) });
                left -= (to - at) as usize;
                at = to;
            }
            i += 1;
        }
        (pieces, at)
    }

    /// Forgets everything (a new run starts).
    pub fn clear(&mut self) {
        *self = Ring::new(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Stream::{Stderr, Stdout};

    fn text(r: &Ring, offset: u64, max: usize, only: Option<Stream>) -> (Vec<(Stream, String)>, u64) {
        let (p, next) = r.read(offset, max, only);
        (p.iter().map(|p| (p.stream, String::from_utf8(p.to_vec()).unwrap())).collect(), next)
    }

    #[test]
    fn streams_stay_apart_and_in_order() {
        let mut r = Ring::new(100);
        r.push(Stdout, b"out1 ", None);
        r.push(Stderr, b"err1 ", None);
        r.push(Stderr, b"err2 ", None);
        r.push(Stdout, b"out2", None);
        let (p, next) = text(&r, 0, 1000, None);
        assert_eq!(p, vec![(Stdout, "out1 ".into()), (Stderr, "err1 err2 ".into()), (Stdout, "out2".into())]);
        assert_eq!(next, 19);
        assert_eq!(text(&r, 0, 1000, Some(Stderr)).0, vec![(Stderr, "err1 err2 ".into())]);
        // Bounded reads resume where they stopped, mid-segment.
        let (p, next) = text(&r, 3, 4, None);
        assert_eq!((p, next), (vec![(Stdout, "1 ".into()), (Stderr, "er".into())], 7));
    }

    #[test]
    fn the_oldest_bytes_go_and_are_counted_per_stream() {
        let mut r = Ring::new(8);
        r.push(Stdout, b"aaaa", None);
        r.push(Stderr, b"bbbb", None);
        r.push(Stdout, b"cc", None);
        assert_eq!((r.start(), r.end(), r.len()), (2, 10, 8));
        assert_eq!((r.dropped(Some(Stdout)), r.dropped(Some(Stderr)), r.dropped(None)), (2, 0, 2));
        r.push(Stderr, &[b'x'; 20], None);
        assert_eq!(r.len(), 8);
        assert_eq!(r.dropped(Some(Stdout)), 6);
        assert_eq!(r.dropped(Some(Stderr)), 16);
        assert_eq!(text(&r, 0, 100, None).0, vec![(Stderr, "xxxxxxxx".into())]);
    }

    #[test]
    fn kept_bytes_make_the_ring_grow_instead_of_dropping() {
        let mut r = Ring::new(8);
        r.push(Stdout, b"12345678", Some(0));
        assert_eq!(r.room(0), 0);
        assert_eq!(r.room(4), 4);
        r.push(Stdout, b"9abc", Some(2));
        assert_eq!((r.start(), r.len()), (2, 10));
        assert_eq!(text(&r, 2, 100, None).0, vec![(Stdout, "3456789abc".into())]);
        assert_eq!(r.dropped(None), 2);
    }

    #[test]
    fn a_random_workload_reads_back_what_was_pushed() {
        // Pushes of random sizes and streams into a small ring; whatever is held reads
        // back byte for byte, and held + dropped = pushed, per stream.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut r = Ring::new(97);
        let mut all: Vec<(Stream, u8)> = Vec::new();
        for _ in 0..2000 {
            let s = if next() % 3 == 0 { Stderr } else { Stdout };
            let n = (next() % 40) as usize;
            let data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            all.extend(data.iter().map(|&b| (s, b)));
            r.push(s, &data, None);
            let held: Vec<(Stream, u8)> = r
                .read(0, usize::MAX, None)
                .0
                .iter()
                .flat_map(|p| p.to_vec().into_iter().map(move |b| (p.stream, b)))
                .collect();
            assert_eq!(held[..], all[all.len() - held.len()..]);
            for st in [Stdout, Stderr] {
                let pushed = all.iter().filter(|(s, _)| *s == st).count() as u64;
                let kept = held.iter().filter(|(s, _)| *s == st).count() as u64;
                assert_eq!(kept + r.dropped(Some(st)), pushed);
            }
        }
    }
}
