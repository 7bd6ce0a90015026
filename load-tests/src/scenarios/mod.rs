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

/// The message body: `n` bytes of ASCII.
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

pub fn body(n: usize) -> String {
    "x".repeat(n.max(1))
}
