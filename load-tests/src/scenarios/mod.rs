//! The scenarios, one module each.

pub mod chat;
pub mod churn;
pub mod fanout;
pub mod idle;

/// A cheap deterministic generator (xorshift64*) for send phases and the
/// typing share; no need for cryptographic randomness here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The name of channel `n` of a run on the uWS peer, where the harness picks
/// topic names: "CH" and 32 hex digits like the broker's channel sids, so
/// that both servers' pushes carry the same bytes.
pub fn channel_name(run_id: &str, n: u64) -> String {
    format!("CH{run_id:0>8}{n:024x}")
}

/// Waits, at most 5 s, for a scenario's connections to close after it has
/// told them to stop (`notify` is signalled whenever one closes).
pub async fn wait_closed(alive: &std::cell::Cell<usize>, notify: &tokio::sync::Notify) {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive.get() > 0 {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(until) => break,
        }
    }
}

/// The message body: `n` bytes of ASCII.
pub fn body(n: usize) -> String {
    "x".repeat(n.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names_are_as_long_as_broker_sids() {
        let a = super::channel_name("5a3f", 0);
        assert_eq!(a, "CH00005a3f000000000000000000000000");
        assert_eq!(a.len(), "CH01a21529d447b0613c2260ef384967d2".len());
        assert_ne!(super::channel_name("5a3f", 1), a);
        assert_eq!(super::channel_name("ffffffff", u64::MAX).len(), 34);
    }
}
