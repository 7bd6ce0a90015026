//! Replies held until the changes they acknowledge are durable.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;

use crate::engine::Pending;
use crate::error::ActionError;
use crate::metrics::CommandTimer;
use crate::store::Commits;

/// A session's calls to a shared engine sent before their turn comes (see
/// `poll_settled`).
const IN_FLIGHT: usize = 8;

/// Replies waiting for their commands' changes to be durable, in command
/// order (a reply that is ready still waits behind the ones before it).
/// Allocated while replies are held and freed when the last one goes: an
/// idle session carries one pointer, not a queue and its buffer.
#[derive(Default)]
pub(super) struct HeldReplies(Option<Box<HeldQueue>>);

/// Held replies in command order: the command's id, its timer, its result.
pub(super) type HeldList = VecDeque<(u64, CommandTimer, Result<Pending<Value>, ActionError>)>;

struct HeldQueue {
    replies: HeldList,
    /// Armed for the newest held store ticket: one wake-up for a whole
    /// group commit, not one per reply.
    wait: Option<Pending<()>>,
}

impl HeldReplies {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.replies.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn push(
        &mut self,
        id: u64,
        timer: CommandTimer,
        result: Result<Pending<Value>, ActionError>,
    ) {
        let queue = self.0.get_or_insert_with(|| {
            Box::new(HeldQueue {
                replies: VecDeque::new(),
                wait: None,
            })
        });
        queue.replies.push_back((id, timer, result));
    }

    /// Takes every held reply, for the outbox to park with the store
    /// ([`crate::outbox::Outbox::park`]), when the front one waits for the
    /// store and none waits for anything else (a shared engine's answer);
    /// with the store's commits.
    pub(super) fn take_for_store(&mut self) -> Option<(Arc<Commits>, HeldList)> {
        let queue = self.0.as_ref()?;
        let Some((_, _, Ok(Pending::Durable { commits, .. }))) = queue.replies.front() else {
            return None;
        };
        if queue
            .replies
            .iter()
            .any(|(_, _, r)| matches!(r, Ok(Pending::Remote(_))))
        {
            return None;
        }
        let commits = commits.clone();
        let queue = self.0.take()?;
        Some((commits, queue.replies))
    }

    /// The front reply, if its result stands now.
    pub(super) fn pop_ready(&mut self) -> Option<(u64, CommandTimer, Result<Value, ActionError>)> {
        let queue = self.0.as_mut()?;
        let (id, timer, front) = queue.replies.front_mut()?;
        let (id, timer) = (*id, *timer);
        let result = match front {
            Err(e) => Err(e.clone()),
            Ok(pending) => pending.try_take()?.map_err(ActionError::from),
        };
        queue.replies.pop_front();
        if queue.replies.is_empty() {
            self.0 = None;
        }
        Some((id, timer, result))
    }

    /// Resolves once the front reply may stand (then `pop_ready` has it).
    pub(super) fn settled(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_settled(cx))
    }

    /// Ready once the front reply may stand (then `pop_ready` has it).
    pub(super) fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(queue) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        let HeldQueue { replies, wait } = &mut **queue;
        // A shared engine's calls go out as soon as they are held, not
        // when they reach the front: only pipelinable built-ins are held,
        // each one call whose first poll sends it, so they leave in
        // command order, and Redis runs one connection's calls in the
        // order sent. The first `IN_FLIGHT` are polled on every wake-up,
        // so that each sees its own timeout and, its answer lost, looks
        // for its outcome in its own time (`settle`); the rest wait:
        // a session flooding an overloaded Redis waits for its answers
        // instead of queueing calls past their timeout.
        for (_, _, reply) in replies.iter_mut().take(IN_FLIGHT) {
            if let Ok(pending) = reply {
                if let Pending::Remote(future) = pending {
                    if let Poll::Ready(outcome) = future.as_mut().poll(cx) {
                        *pending = Pending::Ready(outcome);
                    }
                }
            }
        }
        // The newest store ticket held: waiting for it wakes once for
        // a whole group commit.
        let newest = replies
            .iter()
            .rev()
            .find_map(|(_, _, r)| r.as_ref().ok().and_then(Pending::ticket));
        let Some((_, _, Ok(front))) = replies.front_mut() else {
            return Poll::Ready(());
        };
        if front.is_settled() {
            *wait = None;
            return Poll::Ready(());
        }
        if let Pending::Remote(_) = front {
            // Decided elsewhere, and polled above: its answer wakes us.
            return Poll::Pending;
        }
        if wait.is_none() {
            *wait = newest.and_then(|ticket| front.wait_for(ticket));
        }
        let Some(waiting) = wait.as_mut() else {
            return Poll::Ready(());
        };
        match Pin::new(waiting).poll(cx) {
            Poll::Ready(_) => {
                *wait = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
