//! Which piece to ask a source for next: rarest first across all sources, never a piece twice
//! except in end-game. Pure state, no I/O.

/// Piece selection state for one download.
#[derive(Debug, Clone)]
pub struct PiecePicker {
    done: Vec<bool>,
    /// How many requests for each piece are running.
    in_flight: Vec<u8>,
    /// How many sources/peers have each piece (byte-range sources count for all).
    availability: Vec<u32>,
    remaining: u32,
    /// Lowest index first instead of rarest first (`--sequential`: play while downloading).
    sequential: bool,
    /// A reader's position (a stream): pieces from here on first, in order, before anything
    /// else; then the pieces before it.
    cursor: Option<u32>,
}

/// The most requests for one piece at once (end-game duplicates included).
pub const MAX_DUPLICATES: u8 = 2;

impl PiecePicker {
    pub fn new(count: u32) -> Self {
        let n = count as usize;
        Self {
            done: vec![false; n],
            in_flight: vec![0; n],
            availability: vec![0; n],
            remaining: count,
            sequential: false,
            cursor: None,
        }
    }

    /// Picks the lowest index a source has instead of the rarest piece.
    pub fn set_sequential(&mut self, on: bool) {
        self.sequential = on;
    }

    /// Pieces from `cursor` on first, in index order, wrapping to the start (a reader plays
    /// the content from there); `None`: the usual order.
    pub fn set_cursor(&mut self, cursor: Option<u32>) {
        self.cursor = cursor.filter(|&c| c < self.count());
    }

    pub fn count(&self) -> u32 {
        self.done.len() as u32
    }

    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    pub fn is_done(&self, i: u32) -> bool {
        self.done.get(i as usize).copied().unwrap_or(false)
    }

    pub fn done_bits(&self) -> &[bool] {
        &self.done
    }

    pub fn mark_done(&mut self, i: u32) {
        if let Some(d) = self.done.get_mut(i as usize) {
            if !*d {
                *d = true;
                self.remaining -= 1;
            }
        }
    }

    /// Adds one source's availability: `None` = has every piece, else a per-piece count.
    pub fn add_availability(&mut self, counts: Option<&[u32]>) {
        match counts {
            None => self.availability.iter_mut().for_each(|a| *a = a.saturating_add(1)),
            Some(c) => self.availability.iter_mut().zip(c).for_each(|(a, n)| *a = a.saturating_add(*n)),
        }
    }

    /// Removes what `add_availability` added (a source was dropped).
    pub fn remove_availability(&mut self, counts: Option<&[u32]>) {
        match counts {
            None => self.availability.iter_mut().for_each(|a| *a = a.saturating_sub(1)),
            Some(c) => self.availability.iter_mut().zip(c).for_each(|(a, n)| *a = a.saturating_sub(*n)),
        }
    }

    /// The next piece for a source that `has` pieces: the rarest piece nobody is fetching,
    /// lowest index on ties (sequential on byte-range sources, kind to disks). Marks it started.
    /// With a cursor, the first piece from the cursor on (wrapping) that the source has.
    pub fn pick(&mut self, has: impl Fn(u32) -> bool) -> Option<u32> {
        if let Some(c) = self.cursor {
            let free = |i: &u32| {
                let iu = *i as usize;
                !self.done[iu] && self.in_flight[iu] == 0 && has(*i)
            };
            let i = (c..self.count()).chain(0..c).find(free)?;
            self.in_flight[i as usize] += 1;
            return Some(i);
        }
        let mut best: Option<(u32, u32)> = None;
        for i in 0..self.count() {
            let iu = i as usize;
            if self.done[iu] || self.in_flight[iu] > 0 || !has(i) {
                continue;
            }
            let a = self.availability[iu];
            if best.is_none_or(|(_, ba)| a < ba) {
                best = Some((i, a));
                if a <= 1 || self.sequential {
                    break; // cannot get rarer than one holder
                }
            }
        }
        let (i, _) = best?;
        self.in_flight[i as usize] += 1;
        Some(i)
    }

    /// End-game: a piece already being fetched elsewhere, not done, that `has` and that
    /// `excluded` does not rule out (pieces this source is already fetching). Marks it started.
    pub fn pick_duplicate(&mut self, has: impl Fn(u32) -> bool, excluded: impl Fn(u32) -> bool) -> Option<u32> {
        let i = (0..self.count()).find(|&i| {
            let iu = i as usize;
            !self.done[iu] && self.in_flight[iu] > 0 && self.in_flight[iu] < MAX_DUPLICATES && has(i) && !excluded(i)
        })?;
        self.in_flight[i as usize] += 1;
        Some(i)
    }

    /// One more request for `i` (an end-game duplicate chosen by the caller).
    pub fn add_duplicate(&mut self, i: u32) {
        if let Some(n) = self.in_flight.get_mut(i as usize) {
            *n = n.saturating_add(1);
        }
    }

    /// A request for `i` ended without the piece (failed, cancelled, bad data).
    pub fn release(&mut self, i: u32) {
        if let Some(n) = self.in_flight.get_mut(i as usize) {
            *n = n.saturating_sub(1);
        }
    }

    /// A request for `i` ended with the piece verified and written.
    pub fn finish(&mut self, i: u32) {
        self.release(i);
        self.mark_done(i);
    }

    pub fn in_flight(&self, i: u32) -> u8 {
        self.in_flight.get(i as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_takes_the_lowest_index_whatever_its_rarity() {
        let mut p = PiecePicker::new(4);
        p.add_availability(Some(&[3, 3, 1, 1]));
        p.set_sequential(true);
        assert_eq!(p.pick(|_| true), Some(0));
        assert_eq!(p.pick(|i| i != 1), Some(2));
        p.set_sequential(false);
        assert_eq!(p.pick(|_| true), Some(3));
    }

    #[test]
    fn a_cursor_takes_the_pieces_from_it_on_first_then_wraps() {
        let mut p = PiecePicker::new(6);
        p.add_availability(Some(&[1, 1, 5, 5, 5, 5]));
        p.mark_done(4);
        p.set_cursor(Some(3));
        let got: Vec<u32> = std::iter::from_fn(|| p.pick(|_| true)).collect();
        assert_eq!(got, vec![3, 5, 0, 1, 2]);
        let mut p = PiecePicker::new(3);
        p.set_cursor(Some(9));
        p.add_availability(Some(&[3, 1, 2]));
        assert_eq!(p.pick(|_| true), Some(1), "a cursor past the end is no cursor");
    }

    #[test]
    fn sequential_when_all_equal() {
        let mut p = PiecePicker::new(4);
        p.add_availability(None);
        assert_eq!(p.pick(|_| true), Some(0));
        assert_eq!(p.pick(|_| true), Some(1));
        p.finish(0);
        p.release(1);
        assert_eq!(p.pick(|_| true), Some(1));
        assert_eq!(p.remaining(), 3);
    }

    #[test]
    fn rarest_first() {
        let mut p = PiecePicker::new(4);
        p.add_availability(Some(&[3, 1, 2, 5]));
        assert_eq!(p.pick(|_| true), Some(1));
        assert_eq!(p.pick(|_| true), Some(2));
        assert_eq!(p.pick(|i| i != 0), Some(3));
        assert_eq!(p.pick(|_| true), Some(0));
        assert_eq!(p.pick(|_| true), None);
    }

    #[test]
    fn only_what_the_source_has() {
        let mut p = PiecePicker::new(3);
        p.add_availability(None);
        assert_eq!(p.pick(|i| i == 2), Some(2));
        assert_eq!(p.pick(|i| i == 2), None);
    }

    #[test]
    fn end_game_duplicates_are_bounded() {
        let mut p = PiecePicker::new(2);
        p.add_availability(None);
        let a = p.pick(|_| true).unwrap();
        let b = p.pick(|_| true).unwrap();
        assert_eq!(p.pick(|_| true), None);
        assert_eq!(p.pick_duplicate(|_| true, |i| i == b), Some(a));
        assert_eq!(p.pick_duplicate(|_| true, |i| i == b), None, "at most MAX_DUPLICATES");
        p.finish(a);
        p.release(a);
        assert!(p.is_done(a));
        assert_eq!(p.pick(|_| true), None, "done pieces are never picked");
        p.finish(b);
        assert!(p.is_complete());
    }

    #[test]
    fn dropped_source_lowers_availability() {
        let mut p = PiecePicker::new(2);
        p.add_availability(Some(&[1, 2]));
        p.add_availability(None);
        p.remove_availability(Some(&[1, 2]));
        p.add_availability(Some(&[0, 5]));
        assert_eq!(p.pick(|_| true), Some(0));
    }
}
