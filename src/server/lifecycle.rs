//! The server's one lifecycle state. Health, `/readyz`, the handlers and
//! shutdown all read it, so no two of them can disagree.
//!
//! Phases only move forward: Loading -> Serving -> Draining -> Stopped, or
//! Loading -> Draining when a stop comes before the models are ready. Every
//! transition and the in-flight count live under one lock, so "a request was
//! admitted" and "draining began" are ordered: once `drain` returns, no new
//! request is admitted, and `idle` waits for exactly those admitted before.
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Ports are open; models are loading and warming up.
    Loading,
    /// Every model is loaded and warmed up; requests are admitted.
    Serving,
    /// A stop was asked for: no new requests; those in flight finish.
    Draining,
    /// The grace period is over (or nothing was left in flight).
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAdmitted(pub Phase);

struct State {
    phase: Phase,
    in_flight: usize,
}

pub struct Lifecycle {
    state: Mutex<State>,
    /// Mirrors `state.phase`, written under the lock, for those who wait on changes.
    phase_tx: watch::Sender<Phase>,
    idle: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            state: Mutex::new(State {
                phase: Phase::Loading,
                in_flight: 0,
            }),
            phase_tx: watch::channel(Phase::Loading).0,
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, valid after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// A receiver that sees every phase change.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Moves forward to `to` if the phase is before it; returns whether it moved.
    fn advance(&self, allowed_from: &[Phase], to: Phase) -> bool {
        let mut state = self.lock();
        if !allowed_from.contains(&state.phase) {
            return false;
        }
        state.phase = to;
        self.phase_tx.send_replace(to);
        if state.in_flight == 0 {
            self.idle.notify_waiters();
        }
        true
    }

    /// Loading -> Serving. False when a stop came first: the server must not
    /// start serving then.
    pub fn serve(&self) -> bool {
        self.advance(&[Phase::Loading], Phase::Serving)
    }

    /// Loading or Serving -> Draining. False when already draining or stopped.
    pub fn drain(&self) -> bool {
        self.advance(&[Phase::Loading, Phase::Serving], Phase::Draining)
    }

    /// Any phase -> Stopped.
    pub fn stop(&self) {
        self.advance(
            &[Phase::Loading, Phase::Serving, Phase::Draining],
            Phase::Stopped,
        );
    }

    /// Admits a request while serving; it counts as in flight until the
    /// guard drops.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, NotAdmitted> {
        let mut state = self.lock();
        if state.phase != Phase::Serving {
            return Err(NotAdmitted(state.phase));
        }
        state.in_flight += 1;
        Ok(InFlight(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Resolves when nothing admitted is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a release in between is not missed.
            notified.as_mut().enable();
            if self.lock().in_flight == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the phase is `phase` or later.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

/// An admitted request; dropping it ends its time in flight.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let l = Lifecycle::new();
        assert!(l.drain());
        // A stop during loading: loading finishing afterwards must not serve.
        assert!(!l.serve());
        assert_eq!(l.phase(), Phase::Draining);
        l.stop();
        assert!(!l.drain());
        assert_eq!(l.phase(), Phase::Stopped);
    }

    #[tokio::test]
    async fn nothing_is_admitted_once_draining_and_idle_waits_for_the_admitted() {
        let l = Arc::new(Lifecycle::new());
        assert_eq!(l.admit().err(), Some(NotAdmitted(Phase::Loading)));
        assert!(l.serve());
        let guard = l.admit().unwrap();
        assert!(l.drain());
        assert_eq!(l.admit().err(), Some(NotAdmitted(Phase::Draining)));
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle after the last request")
            .unwrap();
    }

    #[test]
    fn racing_drains_and_admissions_never_leave_an_uncounted_request() {
        // Whatever the interleaving, a request either was refused or is
        // counted when draining has begun.
        for _ in 0..200 {
            let l = Arc::new(Lifecycle::new());
            l.serve();
            let admitter = {
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..50 {
                        if let Ok(g) = l.admit() {
                            held.push(g);
                        }
                    }
                    held
                })
            };
            l.drain();
            let counted = l.in_flight();
            let held = admitter.join().unwrap();
            // Every admission happened before the drain, and all were counted.
            assert_eq!(held.len(), counted);
        }
    }
}
