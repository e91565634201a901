//! A cap on the connections one listener holds, for every seed server and peer listener.
//!
//! A crowd of idle connections (a few thousand sockets that never send a byte) must neither
//! exhaust the process's file descriptors nor lock honest clients out. [`ConnLimit`] holds at
//! most `max` connections. A connection starts *idle* (it has not proven anything yet: no
//! handshake, no request) and becomes *active* with [`Conn::active`]. When a new connection
//! arrives at the cap, the oldest idle one is evicted to make room ([`Conn::evicted`] resolves
//! for it and its handler drops the socket); when every held connection is active, the new one
//! is refused. So the newest client always gets its chance to speak, and an idle crowd only
//! ever costs `max` descriptors.
//!
//! ```
//! # async fn demo() {
//! use chiral_sdk::listen::ConnLimit;
//! let limit = ConnLimit::new(512);
//! // for each socket the listener accepts:
//! let Some(conn) = limit.admit() else { return }; // every slot holds a proven client: drop it
//! tokio::spawn(async move {
//!     tokio::select! {
//!         _ = conn.evicted() => {} // a newer connection needed the slot: close the socket
//!         _ = async { /* read the handshake, then */ conn.active(); /* serve */ } => {}
//!     }
//! });
//! # }
//! ```

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::Notify;

/// The connections of one listener (see the module documentation).
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Connections held, idle and active (an evicted one no longer counts).
    held: usize,
    /// The idle ones, oldest first.
    idle: BTreeMap<u64, Arc<Slot>>,
    evicted: u64,
    refused: u64,
}

#[derive(Debug, Default)]
struct Slot {
    signal: Notify,
    /// Set, under the state lock, when a newer connection took the slot.
    evicted: AtomicBool,
}

/// Counters of a [`ConnLimit`], for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    pub held: usize,
    pub idle: usize,
    pub evicted: u64,
    pub refused: u64,
}

impl ConnLimit {
    /// A limit of `max` connections (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), state: Mutex::new(State::default()) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection just accepted, idle; `None` when every slot holds an active
    /// connection (drop the socket).
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let mut st = self.state();
        if st.held >= self.max {
            let Some((_, oldest)) = st.idle.pop_first() else {
                st.refused += 1;
                return None;
            };
            // The slot moves to the newcomer now; the evicted handler only closes its socket.
            oldest.evicted.store(true, Ordering::Relaxed);
            oldest.signal.notify_one();
            st.held -= 1;
            st.evicted += 1;
        }
        st.next += 1;
        let id = st.next;
        st.held += 1;
        let slot = Arc::new(Slot::default());
        st.idle.insert(id, slot.clone());
        Some(Conn { limit: self.clone(), id, slot })
    }

    pub fn stats(&self) -> ConnStats {
        let st = self.state();
        ConnStats { held: st.held, idle: st.idle.len(), evicted: st.evicted, refused: st.refused }
    }
}

/// One admitted connection; its slot is freed when it is dropped.
#[derive(Debug)]
pub struct Conn {
    limit: Arc<ConnLimit>,
    id: u64,
    slot: Arc<Slot>,
}

impl Conn {
    /// The connection proved itself (a handshake, a request): no newcomer evicts it any more.
    /// False if it was evicted already.
    pub fn active(&self) -> bool {
        self.limit.state().idle.remove(&self.id).is_some()
    }

    /// Resolves when a newer connection took this one's slot: close the socket. Never
    /// resolves for an active connection.
    pub async fn evicted(&self) {
        self.slot.signal.notified().await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut st = self.limit.state();
        let was_idle = st.idle.remove(&self.id).is_some();
        if was_idle || !self.slot.evicted.load(Ordering::Relaxed) {
            st.held = st.held.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_crowd_of_idle_connections_makes_room_for_the_newest() {
        let limit = ConnLimit::new(3);
        let crowd: Vec<Conn> = (0..3).map(|_| limit.admit().unwrap()).collect();
        let honest = limit.admit().expect("the oldest idle one makes room");
        assert!(now_or_never(crowd[0].evicted()).is_some(), "the oldest is told to go");
        assert!(now_or_never(crowd[1].evicted()).is_none());
        assert!(honest.active());
        assert_eq!(limit.stats(), ConnStats { held: 3, idle: 2, evicted: 1, refused: 0 });
        drop(crowd);
        assert_eq!(limit.stats(), ConnStats { held: 1, idle: 0, evicted: 1, refused: 0 });
        drop(honest);
        assert_eq!(limit.stats().held, 0);
    }

    #[test]
    fn active_connections_are_never_evicted_and_a_full_house_refuses() {
        let limit = ConnLimit::new(2);
        let a = limit.admit().unwrap();
        let b = limit.admit().unwrap();
        assert!(a.active() && b.active());
        assert!(limit.admit().is_none());
        assert_eq!(limit.stats(), ConnStats { held: 2, idle: 0, evicted: 0, refused: 1 });
        drop(a);
        let c = limit.admit().expect("a freed slot is reused");
        assert!(now_or_never(b.evicted()).is_none());
        drop((b, c));
        assert_eq!(limit.stats().held, 0);
    }

    #[test]
    fn an_evicted_connection_cannot_become_active() {
        let limit = ConnLimit::new(1);
        let old = limit.admit().unwrap();
        let new = limit.admit().unwrap();
        assert!(!old.active());
        drop(old);
        assert_eq!(limit.stats().held, 1, "the evicted one's slot already went to the newcomer");
        drop(new);
        assert_eq!(limit.stats().held, 0);
    }
}
