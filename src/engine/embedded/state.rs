//! The embedded engine's state objects: identities and channels, each
//! behind its own small lock.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;

use crate::auth::Role;

pub(super) struct Identity {
    pub id: Arc<str>,
    pub role: Role,
    pub anonymous: bool,
    /// Why one lock per identity: every per-identity change (engagement,
    /// widget, drafts, memberships) must be seen in the same order by all
    /// of the identity's tabs. Lock order: identities (several in sorted
    /// order), then a channel.
    state: Mutex<IdentityState>,
}

pub(super) struct IdentityState {
    /// Set when the reaper forgot this identity (or a reload replaced it):
    /// whoever finds it set looks the identity up again.
    pub removed: bool,
    pub engagement: Option<Engagement>,
    pub expanded: bool,
    /// Channels the identity is a member of, and its drafts in them.
    pub memberships: Memberships,
    /// Its sessions on this node.
    pub sessions: usize,
    /// When the last session went away (for the reaper).
    pub idle_since: Option<Instant>,
}

/// The channels an identity is a member of, and its draft (`SetInputText`)
/// per channel. Allocated with the first membership and freed with the
/// last: most identities of a busy broker are customers whose widget is
/// open and who have not started to chat, and two empty hash tables (with
/// their hashers) would double what each of them costs.
#[derive(Default, Clone)]
pub(super) struct Memberships(Option<Box<MembershipSets>>);

#[derive(Default, Clone)]
struct MembershipSets {
    channels: HashSet<Arc<str>>,
    drafts: HashMap<Arc<str>, String>,
}

impl Memberships {
    pub(super) fn contains(&self, sid: &str) -> bool {
        self.get(sid).is_some()
    }

    /// The membership's own sid (shared, not copied).
    pub(super) fn get(&self, sid: &str) -> Option<&Arc<str>> {
        self.0.as_ref()?.channels.get(sid)
    }

    pub(super) fn insert(&mut self, sid: Arc<str>) {
        self.0.get_or_insert_with(Box::default).channels.insert(sid);
    }

    /// Ends a membership, and its draft.
    pub(super) fn take(&mut self, sid: &str) -> Option<Arc<str>> {
        let sets = self.0.as_mut()?;
        let sid = sets.channels.take(sid)?;
        sets.drafts.remove(&sid);
        if sets.channels.is_empty() {
            self.0 = None;
        }
        Some(sid)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().flat_map(|sets| sets.channels.iter())
    }

    pub(super) fn drafts(&self) -> impl Iterator<Item = (&Arc<str>, &String)> {
        self.0.iter().flat_map(|sets| sets.drafts.iter())
    }

    /// Sets the draft of a channel the identity is a member of (of any
    /// other, nothing).
    pub(super) fn set_draft(&mut self, sid: Arc<str>, body: String) {
        if let Some(sets) = self.0.as_mut() {
            if sets.channels.contains(&sid) {
                sets.drafts.insert(sid, body);
            }
        }
    }

    pub(super) fn clear_draft(&mut self, sid: &str) {
        if let Some(sets) = self.0.as_mut() {
            sets.drafts.remove(sid);
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Engagement {
    pub channel_sid: Arc<str>,
    pub started_at: Arc<str>,
}

impl Identity {
    pub(super) fn new(id: Arc<str>, role: Role, anonymous: bool) -> Self {
        Identity {
            id,
            role,
            anonymous,
            state: Mutex::new(IdentityState {
                removed: false,
                engagement: None,
                expanded: false,
                memberships: Memberships::default(),
                sessions: 0,
                idle_since: Some(Instant::now()),
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, IdentityState> {
        self.state.lock()
    }

    pub(super) fn try_lock(&self) -> Option<MutexGuard<'_, IdentityState>> {
        self.state.try_lock()
    }
}

pub(super) struct Channel {
    pub sid: Arc<str>,
    /// The queue (`queue:<name>`) an engagement was announced on.
    pub queue: Arc<str>,
    pub form_data: Value,
    pub started_at: Arc<str>,
    /// Why one lock per channel: membership checks, index assignment and
    /// the submission of the channel's writes and events happen under it,
    /// so the channel's events have one order and membership changes
    /// (restart, leave) are atomic with respect to messages. Nothing awaits
    /// while holding it.
    state: Mutex<ChannelState>,
}

pub(super) struct ChannelState {
    /// Set once the channel has ended: it takes no more members,
    /// observers or messages.
    pub closed: bool,
    /// When it ended (kept in memory for transcripts only without a store).
    pub ended_at: Option<Instant>,
    /// The same moment as RFC 3339 (what the server API shows).
    pub ended_at_text: Option<Arc<str>>,
    /// Who is a member now. Checked by every action, changed at once.
    pub members: HashMap<Arc<str>, Role>,
    /// Sessions observing it (`Subscribe`): a channel with neither member
    /// nor observer has ended.
    pub observers: usize,
    /// The next index to assign.
    pub next_index: u64,
    pub typing: HashMap<Arc<str>, Typing>,
    pub typing_generation: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Typing {
    pub until: Instant,
    pub generation: u64,
}

impl Channel {
    pub(super) fn new(
        sid: Arc<str>,
        queue: Arc<str>,
        form_data: Value,
        started_at: Arc<str>,
    ) -> Self {
        Channel {
            sid,
            queue,
            form_data,
            started_at,
            state: Mutex::new(ChannelState {
                closed: false,
                ended_at: None,
                ended_at_text: None,
                members: HashMap::new(),
                observers: 0,
                next_index: 0,
                typing: HashMap::new(),
                typing_generation: 0,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock()
    }
}

impl ChannelState {
    /// No member and no observer left: the channel has ended.
    pub(super) fn is_abandoned(&self) -> bool {
        self.members.is_empty() && self.observers == 0
    }

    pub(super) fn last_index(&self) -> i64 {
        self.next_index as i64 - 1
    }
}
