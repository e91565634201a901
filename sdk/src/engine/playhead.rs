//! A live view of one running download for a reader that plays it while it downloads (the
//! daemon's stream endpoint): which pieces are verified and written, where each file lies on
//! disk, and where the reader wants bytes next. The engine publishes into it and reads the
//! cursor; the reader waits on it. No I/O here.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use tokio::sync::watch;

use crate::layout::Layout;

/// One file of the content: where its bytes are and where they sit on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayFile {
    /// The finished file's path (its bytes are at `part` until the download completes).
    pub final_path: PathBuf,
    pub part: PathBuf,
    /// Offset of its first byte in the content.
    pub offset: u64,
    pub length: u64,
    /// Chosen (`--files`): an unchosen file is never written.
    pub wanted: bool,
}

#[derive(Debug, Default)]
struct View {
    layout: Option<Layout>,
    files: Vec<PlayFile>,
    done: Vec<bool>,
}

/// See the module documentation. Shared by the engine and one or more readers.
#[derive(Debug)]
pub struct Playhead {
    view: Mutex<View>,
    /// The content offset the reader wants next; `u64::MAX`: none.
    cursor: AtomicU64,
    /// Bumped on every change of the view (a piece done, a new layout, the end).
    changed: watch::Sender<u64>,
}

impl Default for Playhead {
    fn default() -> Self {
        Self { view: Mutex::default(), cursor: AtomicU64::new(u64::MAX), changed: watch::Sender::new(0) }
    }
}

impl Playhead {
    pub fn new() -> Self {
        Self::default()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The engine: a layout (at start, or a new one from an authority) with what is done.
    pub fn publish(&self, layout: Layout, files: Vec<PlayFile>, done: &[bool]) {
        {
            let mut v = self.view();
            v.layout = Some(layout);
            v.files = files;
            v.done = done.to_vec();
        }
        self.bump();
    }

    /// The engine: piece `i` is verified and written.
    pub fn piece_done(&self, i: u32) {
        if let Some(d) = self.view().done.get_mut(i as usize) {
            *d = true;
        }
        self.bump();
    }

    /// The engine: the run ended (complete or not); readers look again.
    pub fn ended(&self) {
        self.bump();
    }

    /// The reader: it wants the content's bytes from `offset` next.
    pub fn set_cursor(&self, offset: u64) {
        self.cursor.store(offset, Ordering::Relaxed);
    }

    /// The reader went away.
    pub fn clear_cursor(&self) {
        self.cursor.store(u64::MAX, Ordering::Relaxed);
    }

    /// The piece under the reader's cursor, if it has one (engine: what to fetch first).
    pub fn cursor_piece(&self, layout: &Layout) -> Option<u32> {
        let c = self.cursor.load(Ordering::Relaxed);
        (c != u64::MAX && c < layout.length && layout.piece_length > 0).then(|| (c / layout.piece_length) as u32)
    }

    /// The files, once the engine published a layout.
    pub fn files(&self) -> Option<Vec<PlayFile>> {
        let v = self.view();
        v.layout.map(|_| v.files.clone())
    }

    /// How many bytes from content offset `offset` (at most `max`) are verified and on disk:
    /// 0 when the piece under `offset` is not done yet.
    pub fn ready(&self, offset: u64, max: u64) -> u64 {
        let v = self.view();
        let Some(layout) = v.layout else { return 0 };
        let mut at = offset;
        let end = offset.saturating_add(max).min(layout.length);
        while at < end {
            let piece = (at / layout.piece_length) as usize;
            if !v.done.get(piece).copied().unwrap_or(false) {
                break;
            }
            at = ((piece as u64 + 1) * layout.piece_length).min(end);
        }
        at - offset
    }

    /// A receiver that sees every change (wait with `changed().await`, then look again).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_bytes_follow_done_pieces_and_the_cursor_names_a_piece() {
        let p = Playhead::new();
        assert_eq!(p.ready(0, 100), 0);
        let layout = Layout::new(1000, 256).unwrap();
        assert_eq!(p.cursor_piece(&layout), None);
        p.publish(layout, vec![], &[true, false, true, true]);
        assert_eq!(p.ready(0, 1000), 256);
        assert_eq!(p.ready(100, 50), 50);
        assert_eq!(p.ready(300, 100), 0);
        assert_eq!(p.ready(600, 1000), 400, "to the end of the content, not past it");
        let mut w = p.watch();
        p.piece_done(1);
        assert!(w.has_changed().unwrap());
        w.mark_unchanged();
        assert_eq!(p.ready(0, 2000), 1000);
        p.set_cursor(700);
        assert_eq!(p.cursor_piece(&layout), Some(2));
        p.set_cursor(5000);
        assert_eq!(p.cursor_piece(&layout), None);
        p.clear_cursor();
        assert_eq!(p.cursor_piece(&layout), None);
    }
}
