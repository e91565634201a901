//! Which source fetches which piece, and when: a deterministic state machine. No I/O, no clock
//! of its own (the driver passes `now` in), no channels; the driver turns its decisions into
//! requests and feeds the outcomes back.
//!
//! Invariants (checked by the tests below):
//! - a piece is requested from at most [`MAX_DUPLICATES`] sources at once, and from a second
//!   one only when no piece is left that nobody is fetching (end-game);
//! - a source is never asked for a piece it does not have, nor for one it already sent bad;
//! - a dropped source gets no request, and its running requests are handed back at once;
//! - `active` of a source equals the number of its running requests.
//!
//! How a free slot is filled: sources are visited best first (reputation, then measured time
//! per piece); each takes the rarest piece nobody is fetching. In the tail — when the faster
//! sources are expected to finish every free piece before this source could finish one — a
//! slower source takes nothing, so the last pieces are not held by the slowest source. When
//! no free piece is left, an idle slot duplicates the running piece expected to finish last,
//! and only if it would finish it sooner than its current holder.
//!
//! How many requests a source has at once: a mirror's slots are its connections (the user's
//! `--connections`), fixed. A pipelined source (a swarm, a multiplexed network: its requests
//! share connections) starts at the driver's floor and grows its window to keep its pipe full:
//! [`WINDOW_GAIN`] x measured bandwidth (bytes verified over the last [`RATE_WINDOW`]) x the
//! shortest time a request has taken on it (its delay without queueing), bounded by
//! [`MAX_SLOTS`] and [`MAX_IN_FLIGHT`] bytes. It never shrinks below the floor, so a window
//! that is too large only adds queueing at the peers, which the tail logic accounts for.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{
    layout::Layout,
    picker::{PiecePicker, MAX_DUPLICATES},
};

/// Limits a source is judged by.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Consecutive failed requests after which a source is dropped.
    pub max_failures: u32,
    /// Pieces failing verification after which a source is dropped.
    pub max_bad_pieces: u32,
}

/// What the scheduler knows of one source.
#[derive(Clone, Debug)]
pub struct SourceSlot {
    /// Per-piece counts, `None` when the source serves every piece.
    availability: Option<Vec<u32>>,
    pub live: bool,
    pub slots: usize,
    pub active: usize,
    /// Higher is preferred: a proven Chiral peer ranks above an ordinary source; every bad
    /// piece lowers it.
    pub reputation: i32,
    /// Smoothed seconds one request of a whole piece takes on this source (queueing included).
    piece_secs: Option<f64>,
    pub consecutive_failures: u32,
    pub failures: u32,
    pub bad_pieces: u32,
    /// Pieces this source sent that failed verification: never asked of it again.
    bad: Vec<u32>,
    /// Pipelined: the window follows bandwidth x delay, never below `floor` slots.
    pipelined: bool,
    floor: usize,
    /// Shortest seconds a request took, scaled to a whole piece (the delay without queueing).
    min_secs: Option<f64>,
    /// Bytes verified from it, by when, over the last [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u64)>,
}

impl SourceSlot {
    fn has(&self, i: u32) -> bool {
        self.availability.as_ref().is_none_or(|a| a.get(i as usize).copied().unwrap_or(0) > 0) && !self.bad.contains(&i)
    }
    fn has_all(&self) -> bool {
        self.availability.as_ref().is_none_or(|a| a.iter().all(|n| *n > 0))
    }
    /// Measured seconds per piece, if any piece came from it yet.
    pub fn piece_secs(&self) -> Option<f64> {
        self.piece_secs
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Running {
    source: usize,
    piece: u32,
    started: Instant,
}

/// What the driver must do after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask `source` for `piece`.
    Fetch { source: usize, piece: u32 },
    /// Abandon the request of `source` for `piece` (another copy landed, or the source was
    /// dropped); its outcome will be reported as cancelled.
    Cancel { source: usize, piece: u32 },
    /// The source is out, for `reason`.
    Dropped { source: usize, reason: String },
}

/// The scheduling state of one download.
#[derive(Debug)]
pub struct Scheduler {
    layout: Layout,
    picker: PiecePicker,
    sources: Vec<SourceSlot>,
    running: Vec<Running>,
    limits: Limits,
}

/// Weight of the newest sample in the smoothed time per piece.
const EWMA: f64 = 0.3;
/// A duplicate is started only when it is expected to finish this much sooner than the
/// running copy (a margin against noise: duplicates are bytes sent twice).
const DUPLICATE_MARGIN: f64 = 1.5;
/// Most requests one source may have at once.
pub(super) const MAX_SLOTS: usize = 256;
/// Most bytes a pipelined source's window may grow to.
pub(super) const MAX_IN_FLIGHT: u64 = 64 << 20;
/// How far back a pipelined source's bandwidth is measured.
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(2);
/// A pipelined source's window is this many times its bandwidth x delay (headroom for the
/// delay's jitter and the rate's growth once the window stops limiting it).
pub(super) const WINDOW_GAIN: f64 = 2.0;

/// Seconds a request `elapsed` seconds old is expected to need still, on a source that takes
/// `expected` seconds per piece. A request a little late is about to land (times per piece
/// vary); one late by more than its whole expected time may be stuck, and is then counted as
/// needing as long as it is late. Unknown pace: as long again as it has taken so far.
fn remaining(expected: Option<f64>, elapsed: f64) -> f64 {
    match expected {
        Some(e) if e > elapsed => e - elapsed,
        Some(e) => elapsed - e,
        None => elapsed,
    }
}

impl Scheduler {
    pub fn new(layout: Layout, limits: Limits) -> Self {
        Self {
            layout,
            picker: PiecePicker::new(layout.piece_count()),
            sources: Vec::new(),
            running: Vec::new(),
            limits,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Lowest piece first instead of rarest first (`--sequential`).
    pub fn set_sequential(&mut self, on: bool) {
        self.picker.set_sequential(on);
    }
    /// A reader's piece: from it on first ([`PiecePicker::set_cursor`]).
    pub fn set_cursor(&mut self, cursor: Option<u32>) {
        self.picker.set_cursor(cursor);
    }
    pub fn picker(&self) -> &PiecePicker {
        &self.picker
    }
    pub fn source(&self, i: usize) -> &SourceSlot {
        &self.sources[i]
    }
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }
    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }
    pub fn idle(&self) -> bool {
        self.running.is_empty()
    }
    pub fn is_done(&self, piece: u32) -> bool {
        self.picker.is_done(piece)
    }

    /// A piece already verified on disk (resume).
    pub fn mark_done(&mut self, piece: u32) {
        self.picker.mark_done(piece);
    }

    /// Adds a source; `availability` as in [`set_availability`](Self::set_availability).
    /// Returns its index.
    pub fn add_source(&mut self, availability: Vec<u32>, slots: usize, reputation: i32) -> usize {
        let availability = self.normalise(availability);
        self.picker.add_availability(availability.as_deref());
        self.sources.push(SourceSlot {
            availability,
            live: true,
            slots: slots.max(1),
            active: 0,
            reputation,
            piece_secs: None,
            consecutive_failures: 0,
            failures: 0,
            bad_pieces: 0,
            bad: Vec::new(),
            pipelined: false,
            floor: slots.max(1),
            min_secs: None,
            recent: VecDeque::new(),
        });
        self.sources.len() - 1
    }

    /// The source's requests share connections: its window grows with its bandwidth x delay
    /// (from its current slots up).
    pub fn set_pipelined(&mut self, source: usize) {
        self.sources[source].pipelined = true;
    }

    /// A pipelined source's window after a piece of `bytes` landed at `now`.
    fn resize_window(&mut self, source: usize, secs: f64, bytes: u64, now: Instant) {
        let (_, full) = self.layout.piece(0);
        let full = full.max(1);
        let s = &mut self.sources[source];
        if !s.pipelined {
            return;
        }
        let whole = secs * full as f64 / bytes.max(1) as f64;
        s.min_secs = Some(s.min_secs.map_or(whole, |m| m.min(whole)));
        s.recent.push_back((now, bytes));
        while s.recent.len() > 2
            && s.recent.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            s.recent.pop_front();
        }
        let Some(&(first, _)) = s.recent.front() else { return };
        let span = now.saturating_duration_since(first).as_secs_f64();
        // Pieces land in bursts (several requests complete together): a rate is read over
        // half the window at least, never from a burst.
        if s.recent.len() < 4 || span < RATE_WINDOW.as_secs_f64() / 2.0 {
            return;
        }
        // Bytes that landed after the first sample, over the time since it.
        let landed: u64 = s.recent.iter().skip(1).map(|(_, b)| b).sum();
        let rate = landed as f64 / span;
        let want = WINDOW_GAIN * rate * s.min_secs.unwrap_or(0.0) / full as f64;
        let cap = ((MAX_IN_FLIGHT / full) as usize).clamp(1, MAX_SLOTS).max(s.floor);
        s.slots = (want.ceil() as usize).clamp(s.floor, cap);
    }

    /// Adds a source that is out from the start (it cannot serve this content).
    pub fn add_dropped(&mut self) -> usize {
        let i = self.add_source(Vec::new(), 1, 0);
        self.picker.remove_availability(None);
        self.sources[i].live = false;
        i
    }

    /// An empty or wrong-sized list means "every piece".
    fn normalise(&self, a: Vec<u32>) -> Option<Vec<u32>> {
        (!a.is_empty() && a.len() == self.layout.piece_count() as usize).then_some(a)
    }

    /// The source's pieces changed (a swarm's peers came or went).
    pub fn set_availability(&mut self, source: usize, availability: Vec<u32>) {
        let new = self.normalise(availability);
        let s = &mut self.sources[source];
        if !s.live || s.availability == new {
            return;
        }
        self.picker.remove_availability(s.availability.as_deref());
        self.picker.add_availability(new.as_deref());
        s.availability = new;
    }

    fn expected(&self, source: usize) -> Option<f64> {
        self.sources[source].piece_secs
    }

    /// How many free pieces the sources ranked faster than `s` can finish within `horizon`
    /// seconds from `now`, counting their idle slots and the slots their running requests
    /// will free.
    fn faster_capacity(&self, s: usize, horizon: f64, now: Instant) -> u64 {
        let mut total = 0u64;
        for (t, src) in self.sources.iter().enumerate() {
            let Some(et) = src.piece_secs else { continue };
            if t == s || !src.live || et >= horizon || !src.has_all() || !src.bad.is_empty() {
                continue;
            }
            let mut frees: Vec<f64> = self
                .running
                .iter()
                .filter(|r| r.source == t)
                .map(|r| remaining(Some(et), now.saturating_duration_since(r.started).as_secs_f64()))
                .collect();
            frees.resize(src.slots.max(frees.len()), 0.0);
            for f in frees.into_iter().take(src.slots) {
                if f < horizon {
                    total += ((horizon - f) / et) as u64;
                }
            }
        }
        total
    }

    /// Free pieces (not done, nobody fetching) that `s` could fetch.
    fn free_for(&self, s: usize) -> u64 {
        let src = &self.sources[s];
        (0..self.picker.count())
            .filter(|&i| !self.picker.is_done(i) && self.picker.in_flight(i) == 0 && src.has(i))
            .count() as u64
    }

    /// Fills every free slot of every live source; returns the requests to start.
    pub fn fill(&mut self, now: Instant) -> Vec<Decision> {
        let mut order: Vec<usize> = (0..self.sources.len()).filter(|&i| self.sources[i].live).collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (&self.sources[a], &self.sources[b]);
            sb.reputation.cmp(&sa.reputation).then_with(|| {
                let ea = sa.piece_secs.unwrap_or(0.0);
                let eb = sb.piece_secs.unwrap_or(0.0);
                ea.total_cmp(&eb)
            })
        });
        let mut out = Vec::new();
        for s in order {
            while self.sources[s].active < self.sources[s].slots {
                let Some(piece) = self.pick_for(s, now) else { break };
                self.sources[s].active += 1;
                self.running.push(Running { source: s, piece, started: now });
                out.push(Decision::Fetch { source: s, piece });
            }
        }
        out
    }

    fn pick_for(&mut self, s: usize, now: Instant) -> Option<u32> {
        let free = self.free_for(s);
        if free > 0 {
            // The tail: leave the free pieces to faster sources if they will finish them all
            // before this one could finish one.
            if let Some(es) = self.expected(s) {
                if self.faster_capacity(s, es, now) >= free {
                    return None;
                }
            }
            let src = &self.sources[s];
            return self.picker.pick(|i| src.has(i));
        }
        self.pick_duplicate(s, now)
    }

    /// End-game: the running piece expected to finish last, if `s` would finish it sooner.
    fn pick_duplicate(&mut self, s: usize, now: Instant) -> Option<u32> {
        let mine = self.expected(s);
        let mut best: Option<(u32, f64)> = None;
        for r in &self.running {
            if r.source == s
                || self.picker.is_done(r.piece)
                || self.picker.in_flight(r.piece) >= MAX_DUPLICATES
                || !self.sources[s].has(r.piece)
                || self.running.iter().any(|o| o.source == s && o.piece == r.piece)
            {
                continue;
            }
            let elapsed = now.saturating_duration_since(r.started).as_secs_f64();
            let left = remaining(self.expected(r.source), elapsed);
            let worth = match mine {
                Some(m) => m * DUPLICATE_MARGIN < left,
                // No measure of this source yet: only rescue a request that is clearly stuck.
                None => elapsed > 2.0,
            };
            if worth && best.is_none_or(|(_, l)| left > l) {
                best = Some((r.piece, left));
            }
        }
        let (piece, _) = best?;
        self.picker.add_duplicate(piece);
        Some(piece)
    }

    fn take_running(&mut self, source: usize, piece: u32) -> Option<Running> {
        let at = self.running.iter().position(|r| r.source == source && r.piece == piece)?;
        let r = self.running.swap_remove(at);
        self.sources[source].active -= 1;
        self.picker.release(piece);
        Some(r)
    }

    /// `piece` from `source` was verified and written. Returns the duplicates to cancel, or
    /// `None` when another copy had landed first (these bytes were sent twice).
    pub fn on_written(&mut self, source: usize, piece: u32, bytes: u64, now: Instant) -> Option<Vec<Decision>> {
        let r = self.take_running(source, piece)?;
        let secs = now.saturating_duration_since(r.started).as_secs_f64().max(1e-4);
        let (_, full) = self.layout.piece(0);
        let per_piece = secs * full as f64 / bytes.max(1) as f64;
        let s = &mut self.sources[source];
        s.piece_secs = Some(match s.piece_secs {
            Some(old) => old * (1.0 - EWMA) + per_piece * EWMA,
            None => per_piece,
        });
        s.consecutive_failures = 0;
        self.resize_window(source, secs, bytes, now);
        if self.picker.is_done(piece) {
            return None;
        }
        self.picker.mark_done(piece);
        Some(
            self.running
                .iter()
                .filter(|o| o.piece == piece)
                .map(|o| Decision::Cancel { source: o.source, piece })
                .collect(),
        )
    }

    /// The request was abandoned (cancelled by the driver): no blame.
    pub fn on_cancelled(&mut self, source: usize, piece: u32) {
        self.take_running(source, piece);
    }

    /// The request failed. `fatal` errors (the source says it cannot serve this content) drop
    /// the source at once; others after `max_failures` in a row.
    pub fn on_failed(&mut self, source: usize, piece: u32, fatal: bool, reason: &str) -> Vec<Decision> {
        self.take_running(source, piece);
        let s = &mut self.sources[source];
        s.failures += 1;
        s.consecutive_failures += 1;
        if fatal || s.consecutive_failures >= self.limits.max_failures {
            return self.drop_source(source, reason.to_string());
        }
        Vec::new()
    }

    /// `source` sent `piece` and it failed verification (or, after a trust root arrived, a
    /// piece it had written failed the new hashes).
    pub fn on_bad_piece(&mut self, source: usize, piece: u32) -> Vec<Decision> {
        self.take_running(source, piece);
        self.blame(source, piece)
    }

    /// Blames `source` for a bad `piece` without a request to end.
    pub fn blame(&mut self, source: usize, piece: u32) -> Vec<Decision> {
        let s = &mut self.sources[source];
        s.bad_pieces += 1;
        s.reputation -= 1;
        if !s.bad.contains(&piece) {
            s.bad.push(piece);
        }
        s.slots = (s.slots / 2).max(1);
        s.floor = (s.floor / 2).max(1);
        if s.bad_pieces >= self.limits.max_bad_pieces {
            let why = format!("sent {} pieces that failed verification", s.bad_pieces);
            return self.drop_source(source, why);
        }
        Vec::new()
    }

    /// Takes a source out: its pieces no longer count, its running requests are cancelled.
    pub fn drop_source(&mut self, source: usize, reason: String) -> Vec<Decision> {
        let s = &mut self.sources[source];
        if !s.live {
            return Vec::new();
        }
        s.live = false;
        self.picker.remove_availability(s.availability.as_deref());
        let mut out: Vec<Decision> = self
            .running
            .iter()
            .filter(|r| r.source == source)
            .map(|r| Decision::Cancel { source, piece: r.piece })
            .collect();
        out.push(Decision::Dropped { source, reason });
        out
    }

    /// Every live source's running requests (for aborting on completion or a new layout).
    pub fn running(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.running.iter().map(|r| (r.source, r.piece))
    }

    /// Whether some live source could still serve a missing piece.
    pub fn can_progress(&self) -> bool {
        (0..self.picker.count())
            .filter(|&i| !self.picker.is_done(i))
            .all(|i| self.sources.iter().any(|s| s.live && s.has(i)))
            && self.sources.iter().any(|s| s.live)
    }

    /// The done bits, for the resume state.
    pub fn done_bits(&self) -> &[bool] {
        self.picker.done_bits()
    }

    /// Seconds per piece each source has shown, for reports.
    pub fn pace(&self, source: usize) -> Option<Duration> {
        self.sources[source].piece_secs.map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_failures: 3, max_bad_pieces: 2 };

    fn fetches(d: &[Decision]) -> Vec<(usize, u32)> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Fetch { source, piece } => Some((*source, *piece)),
                _ => None,
            })
            .collect()
    }

    fn sched(pieces: u32) -> Scheduler {
        Scheduler::new(Layout::new(pieces as u64 * 100, 100).unwrap(), LIMITS)
    }

    /// A pipe in virtual time: a request sent at `t` reaches the peer `delay` later and is
    /// served after those before it, one piece per `1 / rate` seconds. Runs `secs` seconds and
    /// returns the pieces written in the last half.
    fn run_pipe(s: &mut Scheduler, src: usize, delay: f64, rate: f64, secs: f64) -> usize {
        let t0 = Instant::now();
        let at = |x: f64| t0 + Duration::from_secs_f64(x);
        let (mut now, mut link_free) = (0.0f64, 0.0f64);
        let mut due: Vec<(f64, u32)> = Vec::new();
        let mut late = 0;
        while now < secs {
            for (_, piece) in fetches(&s.fill(at(now))).into_iter().filter(|f| f.0 == src) {
                let done = (now + delay).max(link_free) + 1.0 / rate;
                link_free = done;
                due.push((done, piece));
            }
            due.sort_by(|a, b| b.0.total_cmp(&a.0));
            let Some((t, piece)) = due.pop() else { break };
            now = t;
            s.on_written(src, piece, s.layout().piece(piece).1, at(now));
            if now > secs / 2.0 {
                late += 1;
            }
        }
        late
    }

    #[test]
    fn a_pipelined_source_s_window_grows_to_its_bandwidth_times_delay() {
        // 10 pieces/s behind 0.5 s of delay: 2 requests at once give 2 / 0.6 s = 3.3 pieces/s.
        let mut s = sched(1000);
        let p = s.add_source(Vec::new(), 2, 0);
        s.set_pipelined(p);
        let late = run_pipe(&mut s, p, 0.5, 10.0, 20.0);
        // Bandwidth x (delay + one piece's time) x gain = 10 x 0.6 x 2 = 12 requests.
        assert!((11..=14).contains(&s.source(p).slots), "window {}", s.source(p).slots);
        assert!(late >= 95, "the pipe is kept full: {late} pieces in the last 10 s");

        // A mirror's slots are its connections: they stay as configured.
        let mut s = sched(1000);
        let m = s.add_source(Vec::new(), 2, 0);
        let late = run_pipe(&mut s, m, 0.5, 10.0, 20.0);
        assert_eq!(s.source(m).slots, 2);
        assert!(late <= 40, "{late}");
    }

    #[test]
    fn a_pipelined_window_is_bounded_in_bytes_and_never_below_its_floor() {
        // A fast pipe far away (200 pieces of 1 MiB per second behind 1 s): bandwidth x delay
        // is 400 MiB; the window stops at MAX_IN_FLIGHT bytes.
        let mut s = Scheduler::new(Layout::new(8000 << 20, 1 << 20).unwrap(), LIMITS);
        let p = s.add_source(Vec::new(), 8, 0);
        s.set_pipelined(p);
        run_pipe(&mut s, p, 1.0, 200.0, 10.0);
        assert_eq!(s.source(p).slots as u64, MAX_IN_FLIGHT >> 20);
        // A pipe with no delay to speak of: the floor holds, also through a burst of pieces
        // landing at once (a rate read from it would be far too high).
        let mut s2 = Scheduler::new(Layout::new(8000 << 20, 1 << 20).unwrap(), LIMITS);
        let q = s2.add_source(Vec::new(), 8, 0);
        s2.set_pipelined(q);
        let t0 = Instant::now();
        let first: Vec<u32> = fetches(&s2.fill(t0)).into_iter().map(|f| f.1).collect();
        for (k, piece) in first.into_iter().enumerate() {
            s2.on_written(q, piece, 1 << 20, t0 + Duration::from_millis(200 + 14 * k as u64));
        }
        assert_eq!(s2.source(q).slots, 8, "no window from a burst");
        let mut s = Scheduler::new(Layout::new(8000 << 20, 1 << 20).unwrap(), LIMITS);
        let p = s.add_source(Vec::new(), 8, 0);
        s.set_pipelined(p);
        run_pipe(&mut s, p, 0.0, 200.0, 5.0);
        assert_eq!(s.source(p).slots, 8);
    }

    #[test]
    fn every_slot_filled_rarest_first_and_no_piece_twice() {
        let mut s = sched(4);
        let t = Instant::now();
        s.add_source(vec![1, 1, 0, 1], 2, 0);
        s.add_source(Vec::new(), 2, 0);
        let f = fetches(&s.fill(t));
        assert_eq!(f.len(), 4);
        // Piece 2 is held by one source only: it goes first, to the one that has it.
        assert!(f.contains(&(1, 2)));
        let mut pieces: Vec<u32> = f.iter().map(|x| x.1).collect();
        pieces.sort();
        assert_eq!(pieces, vec![0, 1, 2, 3]);
        assert!(s.fill(t).is_empty(), "every slot is busy");
    }

    #[test]
    fn a_dropped_source_hands_its_pieces_back_at_once() {
        let mut s = sched(4);
        let t = Instant::now();
        let a = s.add_source(Vec::new(), 2, 0);
        let b = s.add_source(Vec::new(), 1, 0);
        let f = fetches(&s.fill(t));
        let a_pieces: Vec<u32> = f.iter().filter(|x| x.0 == a).map(|x| x.1).collect();
        let d = s.on_failed(a, a_pieces[0], true, "gone");
        assert!(d.contains(&Decision::Cancel { source: a, piece: a_pieces[1] }));
        assert!(d.iter().any(|d| matches!(d, Decision::Dropped { source, .. } if *source == a)));
        s.on_cancelled(a, a_pieces[1]);
        // b finishes its piece and takes the others, one at a time.
        let bp = f.iter().find(|x| x.0 == b).unwrap().1;
        s.on_written(b, bp, 100, t + Duration::from_millis(10));
        let next = fetches(&s.fill(t + Duration::from_millis(10)));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0, b);
        assert_eq!(s.source(a).active, 0);
    }

    #[test]
    fn a_liar_is_never_asked_again_for_its_bad_piece_and_is_dropped_on_the_second() {
        let mut s = sched(3);
        let t = Instant::now();
        let liar = s.add_source(Vec::new(), 1, 0);
        let f = fetches(&s.fill(t));
        assert_eq!(f, vec![(liar, 0)]);
        assert!(s.on_bad_piece(liar, 0).is_empty());
        assert_eq!(fetches(&s.fill(t)), vec![(liar, 1)], "piece 0 is not asked of it again");
        let d = s.on_bad_piece(liar, 1);
        assert!(matches!(d.last(), Some(Decision::Dropped { .. })));
        assert!(s.fill(t).is_empty());
        assert!(!s.can_progress());
    }

    #[test]
    fn the_tail_goes_to_the_fast_source_not_the_slow_one() {
        let mut s = sched(40);
        let t0 = Instant::now();
        let fast = s.add_source(Vec::new(), 1, 0);
        let slow = s.add_source(Vec::new(), 1, 0);
        // Learn the paces: fast 0.1 s per piece, slow 1 s.
        let mut now = t0;
        let mut done = 0;
        s.fill(now);
        // Drive in virtual time until complete; count what the slow source delivered.
        let mut slow_pieces = 0;
        let mut running: Vec<(usize, u32, Instant)> =
            s.running.iter().map(|r| (r.source, r.piece, r.started)).collect();
        while !s.is_complete() {
            // The next request to finish.
            running.sort_by_key(|(src, _, st)| *st + Duration::from_millis(if *src == fast { 100 } else { 1000 }));
            let (src, piece, st) = running.remove(0);
            now = st + Duration::from_millis(if src == fast { 100 } else { 1000 });
            let cancels = s.on_written(src, piece, 100, now).unwrap_or_default();
            for c in cancels {
                if let Decision::Cancel { source, piece } = c {
                    s.on_cancelled(source, piece);
                    running.retain(|r| !(r.0 == source && r.1 == piece));
                }
            }
            done += 1;
            if src == slow {
                slow_pieces += 1;
            }
            for d in s.fill(now) {
                if let Decision::Fetch { source, piece } = d {
                    running.push((source, piece, now));
                }
            }
            assert!(done < 200);
        }
        // 40 pieces: ideal split 10 s/11 ~ fast 36-37, slow 3-4; the whole ends by ~3.7 s,
        // not with the slow source holding a piece at the end.
        let end = now.duration_since(t0).as_secs_f64();
        assert!(end < 4.0, "ended at {end:.2} s");
        assert!((1..=4).contains(&slow_pieces), "slow delivered {slow_pieces}");
    }

    #[test]
    fn end_game_duplicates_only_where_they_help() {
        let mut s = sched(2);
        let t0 = Instant::now();
        let fast = s.add_source(Vec::new(), 1, 0);
        let slow = s.add_source(Vec::new(), 1, 0);
        s.fill(t0);
        // Paces learnt: fast 0.1 s, slow 1 s (the slow one's first piece just landed).
        s.on_written(fast, 0, 100, t0 + Duration::from_millis(100));
        assert!(!s.is_done(1));
        s.on_written(slow, 1, 100, t0 + Duration::from_secs(1));
        assert!(s.is_complete());

        let mut s = sched(3);
        let fast = s.add_source(Vec::new(), 1, 0);
        let slow = s.add_source(Vec::new(), 1, 0);
        s.sources[fast].piece_secs = Some(0.1);
        s.sources[slow].piece_secs = Some(1.0);
        s.sources[slow].slots = 1;
        // The slow source is busy with piece 0; fast has 1, then 2.
        s.running.push(Running { source: slow, piece: 0, started: t0 });
        s.sources[slow].active = 1;
        s.picker.add_duplicate(0);
        let f = fetches(&s.fill(t0));
        assert_eq!(f, vec![(fast, 1)]);
        s.on_written(fast, 1, 100, t0 + Duration::from_millis(100));
        let f = fetches(&s.fill(t0 + Duration::from_millis(100)));
        assert_eq!(f, vec![(fast, 2)]);
        s.on_written(fast, 2, 100, t0 + Duration::from_millis(200));
        // Nothing free: fast duplicates the slow source's piece (0.8 s left vs 0.1 s).
        let f = fetches(&s.fill(t0 + Duration::from_millis(200)));
        assert_eq!(f, vec![(fast, 0)]);
        let c = s.on_written(fast, 0, 100, t0 + Duration::from_millis(300));
        assert_eq!(c, Some(vec![Decision::Cancel { source: slow, piece: 0 }]));
        s.on_cancelled(slow, 0);
        assert!(s.is_complete());

        // A piece about to land is not duplicated.
        let mut s = sched(1);
        let a = s.add_source(Vec::new(), 1, 0);
        let b = s.add_source(Vec::new(), 1, 0);
        s.sources[a].piece_secs = Some(1.0);
        s.sources[b].piece_secs = Some(1.0);
        assert_eq!(fetches(&s.fill(t0)).len(), 1);
        assert!(fetches(&s.fill(t0 + Duration::from_millis(900))).is_empty());
    }

    #[test]
    fn a_stuck_request_is_rescued() {
        let mut s = sched(1);
        let t0 = Instant::now();
        let a = s.add_source(Vec::new(), 1, 0);
        assert_eq!(fetches(&s.fill(t0)), vec![(a, 0)]);
        let b = s.add_source(Vec::new(), 1, 0);
        assert!(s.fill(t0 + Duration::from_secs(1)).is_empty(), "not yet");
        assert_eq!(fetches(&s.fill(t0 + Duration::from_secs(3))), vec![(b, 0)]);
    }

    #[test]
    fn a_piece_just_done_is_not_duplicated_while_its_cancelled_copy_winds_down() {
        let mut s = sched(2);
        let t0 = Instant::now();
        let fast = s.add_source(Vec::new(), 1, 0);
        let slow = s.add_source(Vec::new(), 1, 0);
        assert_eq!(fetches(&s.fill(t0)), vec![(fast, 0), (slow, 1)]);
        s.sources[fast].piece_secs = Some(0.1);
        s.sources[slow].piece_secs = Some(1.0);
        // fast lands 0, then duplicates 1 (slow has 0.8 s left).
        s.on_written(fast, 0, 100, t0 + Duration::from_millis(100));
        assert_eq!(fetches(&s.fill(t0 + Duration::from_millis(200))), vec![(fast, 1)]);
        // slow lands 1 first: fast's copy is cancelled but its outcome has not come back yet.
        let c = s.on_written(slow, 1, 100, t0 + Duration::from_millis(250));
        assert_eq!(c, Some(vec![Decision::Cancel { source: fast, piece: 1 }]));
        assert!(s.is_complete());
        assert!(s.fill(t0 + Duration::from_secs(5)).is_empty(), "a done piece is never asked for again");
        s.on_cancelled(fast, 1);
        assert!(s.idle());
    }

    #[test]
    fn a_request_a_little_late_is_left_alone_a_stuck_one_is_not() {
        let mut s = sched(1);
        let t0 = Instant::now();
        let a = s.add_source(Vec::new(), 1, 0);
        let b = s.add_source(Vec::new(), 1, 0);
        s.sources[a].piece_secs = Some(1.0);
        s.sources[b].piece_secs = Some(0.5);
        assert_eq!(fetches(&s.fill(t0)), vec![(b, 0)]);
        // b's piece is 20% late: about to land, a (1 s per piece) would not be sooner.
        assert!(s.fill(t0 + Duration::from_millis(600)).is_empty());
        // Late by 2 s more than its whole pace: stuck; a rescues it.
        assert_eq!(fetches(&s.fill(t0 + Duration::from_millis(2600))), vec![(a, 0)]);
    }

    #[test]
    fn availability_changes_while_running() {
        let mut s = sched(3);
        let t = Instant::now();
        let a = s.add_source(vec![0, 0, 0], 3, 0);
        assert!(s.fill(t).is_empty());
        s.set_availability(a, vec![0, 1, 0]);
        assert_eq!(fetches(&s.fill(t)), vec![(a, 1)]);
        s.set_availability(a, vec![1, 1, 1]);
        assert_eq!(fetches(&s.fill(t)).len(), 2);
    }

    #[test]
    fn reputation_orders_the_sources() {
        let mut s = sched(1);
        let t = Instant::now();
        let _plain = s.add_source(Vec::new(), 1, 0);
        let chiral = s.add_source(Vec::new(), 1, 1);
        assert_eq!(fetches(&s.fill(t)), vec![(chiral, 0)]);
    }
}
