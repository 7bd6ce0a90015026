//! Per-session rate limits: token buckets on commands overall and on the
//! chatty actions (`SendMessage`, `SendTyping`, `SetInputText`), and the
//! rule that turns persistent abuse into a 4029 close.
//!
//! Why by hand rather than `governor`: a session needs four tiny buckets
//! behind one lock that only its own reader task takes; a bucket is a few
//! lines of arithmetic and `governor`'s keyed, lock-free machinery would buy
//! nothing here.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::auth::Role;
use crate::error::ActionError;

/// `[rate_limits]` in the configuration. Rates are tokens per second; a
/// burst is the bucket's size (and what a fresh session starts with).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Turn every per-session rate limit off (trusted deployments, tests).
    pub enabled: bool,
    /// Every frame a session sends, well-formed or not.
    pub commands_per_sec: f64,
    pub commands_burst: u32,
    /// `SendMessage`, however it is reached (directly, a custom action, a
    /// `TriggerAction`).
    pub messages_per_sec: f64,
    pub messages_burst: u32,
    pub typing_per_sec: f64,
    pub typing_burst: u32,
    pub input_text_per_sec: f64,
    pub input_text_burst: u32,
    /// A session refused this many times within `rejection_window_ms` is
    /// closed with 4029: a client that ignores `rate_limited` is abusive.
    pub close_after_rejections: u32,
    pub rejection_window_ms: u64,
    /// Roles the limits do not apply to (backends and bots relaying many
    /// conversations over one session).
    pub exempt_roles: Vec<Role>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            commands_per_sec: 50.0,
            commands_burst: 200,
            messages_per_sec: 10.0,
            messages_burst: 100,
            typing_per_sec: 10.0,
            typing_burst: 50,
            input_text_per_sec: 20.0,
            input_text_burst: 100,
            close_after_rejections: 100,
            rejection_window_ms: 10_000,
            exempt_roles: vec![Role::Service],
        }
    }
}

impl RateLimits {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("commands_per_sec", self.commands_per_sec),
            ("messages_per_sec", self.messages_per_sec),
            ("typing_per_sec", self.typing_per_sec),
            ("input_text_per_sec", self.input_text_per_sec),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, r)| !(r.is_finite() && *r > 0.0)) {
            return Err(format!("{name} must be a positive number"));
        }
        let counts = [
            ("commands_burst", self.commands_burst as u64),
            ("messages_burst", self.messages_burst as u64),
            ("typing_burst", self.typing_burst as u64),
            ("input_text_burst", self.input_text_burst as u64),
            ("close_after_rejections", self.close_after_rejections as u64),
            ("rejection_window_ms", self.rejection_window_ms),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        Ok(())
    }
}

/// A token bucket: `capacity` tokens, refilled continuously at `rate` per
/// second; each admitted event takes one.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, capacity: u32, now: Instant) -> Self {
        TokenBucket {
            capacity: capacity as f64,
            rate,
            tokens: capacity as f64,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available (for the error message).
    pub(crate) fn retry_after(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate)
    }
}

/// Which bucket an action draws from besides the overall one.
fn action_bucket(action: &str) -> Option<usize> {
    match action {
        "SendMessage" => Some(0),
        "SendTyping" => Some(1),
        "SetInputText" => Some(2),
        _ => None,
    }
}

const ACTION_KEYS: [&str; 3] = ["messages", "typing", "input_text"];

struct State {
    commands: TokenBucket,
    actions: [TokenBucket; 3],
    window_start: Instant,
    rejections: u32,
    exempt: bool,
}

/// One session's limits: nothing (one null pointer) when limits are off,
/// otherwise its buckets and the few settings they need, not a copy of the
/// whole `[rate_limits]` table, since every idle session pays for them.
/// Only the session's own task (and actions it runs) touch it, so the lock
/// is never contended; it only makes it `Sync`.
pub struct SessionLimiter(Option<Box<Limited>>);

struct Limited {
    close_after_rejections: u32,
    rejection_window: Duration,
    /// Roles the limits do not apply to, one bit per `Role`.
    exempt_roles: u8,
    state: Mutex<State>,
}

fn role_bit(role: Role) -> u8 {
    1 << role as u8
}

impl SessionLimiter {
    /// No limits (internal use, and `enabled = false`).
    pub fn unlimited() -> Self {
        SessionLimiter(None)
    }

    pub fn new(config: &RateLimits) -> Self {
        if !config.enabled {
            return Self::unlimited();
        }
        let now = Instant::now();
        let c = config;
        SessionLimiter(Some(Box::new(Limited {
            close_after_rejections: c.close_after_rejections,
            rejection_window: Duration::from_millis(c.rejection_window_ms),
            exempt_roles: c.exempt_roles.iter().fold(0, |m, r| m | role_bit(*r)),
            state: Mutex::new(State {
                commands: TokenBucket::new(c.commands_per_sec, c.commands_burst, now),
                actions: [
                    TokenBucket::new(c.messages_per_sec, c.messages_burst, now),
                    TokenBucket::new(c.typing_per_sec, c.typing_burst, now),
                    TokenBucket::new(c.input_text_per_sec, c.input_text_burst, now),
                ],
                window_start: now,
                rejections: 0,
                exempt: false,
            }),
        })))
    }

    /// Called once the session knows its role: exempt roles stop counting.
    pub fn set_role(&self, role: Role) {
        if let Some(limited) = &self.0 {
            limited.state.lock().exempt = limited.exempt_roles & role_bit(role) != 0;
        }
    }

    /// One incoming frame, before it is decoded or run.
    pub fn check_frame(&self) -> Result<(), ActionError> {
        let Some(limited) = &self.0 else {
            return Ok(());
        };
        let mut state = limited.state.lock();
        if state.exempt {
            return Ok(());
        }
        let now = Instant::now();
        if state.commands.try_take(now) {
            return Ok(());
        }
        let wait = state.commands.retry_after();
        Err(limited.rejected(&mut state, now, "commands", wait))
    }

    /// One run of `action` (directly or through a custom action).
    pub fn check_action(&self, action: &str) -> Result<(), ActionError> {
        let (Some(limited), Some(slot)) = (&self.0, action_bucket(action)) else {
            return Ok(());
        };
        let mut state = limited.state.lock();
        if state.exempt {
            return Ok(());
        }
        let now = Instant::now();
        if state.actions[slot].try_take(now) {
            return Ok(());
        }
        let wait = state.actions[slot].retry_after();
        Err(limited.rejected(&mut state, now, ACTION_KEYS[slot], wait))
    }

    /// Whether the session has been refused so often, so fast, that it
    /// should be closed with 4029.
    pub fn is_abusive(&self) -> bool {
        self.0.as_ref().is_some_and(|limited| {
            limited.state.lock().rejections >= limited.close_after_rejections
        })
    }
}

impl Limited {
    fn rejected(&self, state: &mut State, now: Instant, what: &str, wait: Duration) -> ActionError {
        if now.saturating_duration_since(state.window_start) > self.rejection_window {
            state.window_start = now;
            state.rejections = 0;
        }
        state.rejections = state.rejections.saturating_add(1);
        ActionError::RateLimited(format!(
            "too many {} (rate_limits.{what}_per_sec); retry in {} ms",
            what.replace('_', " "),
            wait.as_millis().max(1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.retry_after() <= Duration::from_millis(100));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn persistent_rejections_make_a_session_abusive_and_exempt_roles_pass() {
        let config = RateLimits {
            commands_per_sec: 0.001,
            commands_burst: 2,
            messages_per_sec: 0.001,
            messages_burst: 1,
            close_after_rejections: 5,
            ..RateLimits::default()
        };
        let s = SessionLimiter::new(&config);
        assert!(s.check_frame().is_ok() && s.check_frame().is_ok());
        assert!(s.check_action("SendMessage").is_ok());
        let e = s.check_action("SendMessage").unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(e.to_string().contains("messages"), "{e}");
        assert!(s.check_action("GetActions").is_ok(), "no bucket of its own");
        // One rejection so far (the message); four more make five.
        for _ in 0..4 {
            assert!(!s.is_abusive());
            assert!(s.check_frame().is_err());
        }
        assert!(s.is_abusive());

        let service = SessionLimiter::new(&config);
        service.set_role(Role::Service);
        assert!((0..100).all(|_| service.check_frame().is_ok()));
        let off = SessionLimiter::new(&RateLimits {
            enabled: false,
            ..config
        });
        assert!((0..100).all(|_| off.check_action("SendMessage").is_ok()));
    }
}
