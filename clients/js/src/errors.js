/**
 * The error every rejected SDK promise carries.
 *
 * `code` is one of the contract's error codes (`bad_request`, `not_connected`,
 * `unauthorized`, `forbidden`, `unknown_action`, `not_found`, `not_a_member`,
 * `already_engaged`, `no_engagement`, `outside_business_hours`, `too_large`,
 * `rate_limited`, `rejected`, `internal`) when the broker answered with an
 * error, or one of the SDK's own codes when no answer could be had:
 * `timeout`, `connection_lost`, `connection_failed`, `closed`, `unsupported`.
 * Extra fields the broker sent along (e.g. `opensAt`, `channelSid`) are copied
 * onto the error and kept in `details`.
 */
export class SwitchboardError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {Record<string, unknown>} [details]
   */
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "SwitchboardError";
    this.code = code;
    this.details = { ...details };
    for (const [key, value] of Object.entries(this.details)) {
      if (!(key in this)) this[key] = value;
    }
  }

  /** Builds the error for a broker error reply `{code, message, ...details}`. */
  static fromReply(error, action) {
    const { code = "internal", message, ...details } = error ?? {};
    const err = new SwitchboardError(String(code), message ? String(message) : `${action ?? "command"} failed: ${code}`, details);
    if (action) err.action = action;
    return err;
  }
}

/** The SDK's own error codes, used when the broker gave no answer. */
export const LocalErrorCodes = Object.freeze({
  TIMEOUT: "timeout",
  CONNECTION_LOST: "connection_lost",
  CONNECTION_FAILED: "connection_failed",
  CLOSED: "closed",
  UNSUPPORTED: "unsupported",
});
