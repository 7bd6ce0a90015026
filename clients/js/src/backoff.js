/** Default reconnect policy: exponential backoff with jitter. */
export const DEFAULT_RECONNECT = Object.freeze({
  /** Delay before the first reconnect attempt, in ms. */
  initialDelay: 500,
  /** Upper bound of any delay, in ms. */
  maxDelay: 30_000,
  /** Growth factor per attempt. */
  factor: 2,
  /** Fraction (0..1) of the delay that is randomised away. */
  jitter: 0.5,
  /** Give up after this many failed attempts in a row. */
  maxAttempts: Infinity,
  /** Lower bound of the delay after close code 4029 (rate limited), in ms. */
  rateLimitedDelay: 5_000,
});

/**
 * The delay before reconnect attempt number `attempt` (1-based): the
 * exponential delay `initialDelay * factor^(attempt-1)` capped at `maxDelay`,
 * of which up to `jitter` is randomly removed, so many clients dropped at
 * once do not come back in lockstep.
 */
export function backoffDelay(attempt, policy = DEFAULT_RECONNECT, random = Math.random) {
  const { initialDelay, maxDelay, factor, jitter } = { ...DEFAULT_RECONNECT, ...policy };
  const exponent = Math.max(0, attempt - 1);
  const base = Math.min(maxDelay, initialDelay * Math.pow(factor, exponent));
  const spread = Math.min(1, Math.max(0, jitter));
  return Math.max(0, Math.round(base * (1 - spread * random())));
}
