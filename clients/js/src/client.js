import { Actions } from "./actions.js";
import { backoffDelay, DEFAULT_RECONNECT } from "./backoff.js";
import { loadCodec } from "./codec.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError } from "./errors.js";
import { defaultStorage, MemoryStorage } from "./storage.js";

/** Close codes of the contract. */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  SHUTTING_DOWN: 4000,
  UNAUTHORIZED: 4001,
  SLOW_CONSUMER: 4008,
  TOO_LARGE: 4009,
  RATE_LIMITED: 4029,
});

/** The pushes of the contract (the SDK emits each under its own name). */
export const PUSH_EVENTS = Object.freeze([
  "messageAdded",
  "engagementStarted",
  "engagementEnded",
  "engagementRestarted",
  "memberJoined",
  "memberLeft",
  "typingStarted",
  "typingEnded",
  "widgetStateChanged",
  "inputTextSet",
  "engagementUpdated",
]);

const WS_OPEN = 1;

function isQueue(channel) {
  return typeof channel === "string" && channel.startsWith("queue:");
}

function nowIso() {
  return new Date().toISOString();
}

/**
 * A connection to a Switchboard broker: one session, kept alive across
 * network drops and broker restarts, with the identity's state (engagement,
 * widget, drafts, channels, queue) kept up to date from pushes.
 */
export class SwitchboardClient {
  /** The client-side actions framework: `invoke`, `trigger`, `list`, listeners. */
  actions;

  #opts;
  #reconnectPolicy;
  #emitter;
  #storage;
  #codec = null;

  #conn = null; // {ws, ready}
  #status = "idle"; // idle | connecting | connected | reconnecting | closed
  #connectPromise = null;
  #closedByUser = false;
  #attempt = 0;
  #reconnectTimer = null;
  #nextId = 1;
  #pending = new Map(); // id -> {action, resolve, reject, timer, conn}
  #queued = []; // commands waiting for a session: {action, payload, resolve, reject, timer}
  #onlineHandler = null;

  #resumeToken = null;
  #serverActions = [];
  #supportsRecovery = false;
  #session = { sessionId: null, identity: null, role: null };
  #engagement = null;
  #widget = { expanded: false };
  #inputText = {};
  #channels = new Map(); // sid -> {channelSid, lastIndex, member, subscribed, ended, members: Map, typing: Set}
  #subscriptions = new Map(); // channel -> {}
  #queue = new Map(); // sid -> {channelSid, identity, formData, startedAt}

  /**
   * @param {import("../types/index.d.ts").SwitchboardClientOptions} options
   */
  constructor(options = {}) {
    if (!options || typeof options.url !== "string" || !options.url) {
      throw new TypeError("SwitchboardClient needs a `url`, e.g. ws://127.0.0.1:8080/ws");
    }
    const encoding = options.encoding ?? "json";
    if (encoding !== "json" && encoding !== "msgpack") {
      throw new TypeError(`encoding must be "json" or "msgpack", got ${JSON.stringify(encoding)}`);
    }
    this.#opts = {
      url: options.url,
      token: options.token ?? null,
      resumeToken: options.resumeToken ?? null,
      encoding,
      codec: options.codec ?? null,
      WebSocket: options.WebSocket ?? null,
      storageKey: options.storageKey ?? `switchboard:resumeToken:${options.url}`,
      requestTimeout: options.requestTimeout ?? 15_000,
      connectTimeout: options.connectTimeout ?? 10_000,
      trace: typeof options.trace === "function" ? options.trace : null,
    };
    this.#reconnectPolicy =
      options.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.#storage =
      options.storage === false ? new MemoryStorage() : options.storage ?? defaultStorage();
    this.#emitter = new Emitter((error, name) => this.#listenerFailed(error, name));
    this.actions = new Actions((action, payload) => this.#command(action, payload), {
      onListenerError: (error, name) => this.#listenerFailed(error, name),
      onList: (list) => this.#learnActions(list.map((a) => a?.name).filter(Boolean)),
    });
  }

  // ---------------------------------------------------------------- events

  /** Listens to a push (`messageAdded`, …) or a client event (`connected`, …). Returns an unsubscribe function. */
  on(event, fn) {
    return this.#emitter.on(event, fn);
  }

  once(event, fn) {
    return this.#emitter.once(event, fn);
  }

  off(event, fn) {
    this.#emitter.off(event, fn);
  }

  // ---------------------------------------------------------------- state

  /** `idle`, `connecting`, `connected`, `reconnecting` or `closed`. */
  get connectionState() {
    return this.#status;
  }

  get connected() {
    return this.#status === "connected";
  }

  get sessionId() {
    return this.#session.sessionId;
  }

  get identity() {
    return this.#session.identity;
  }

  get role() {
    return this.#session.role;
  }

  /** The identity's engagement `{channelSid, startedAt}` or `null`. */
  get engagement() {
    return this.#engagement ? { ...this.#engagement } : null;
  }

  /** The widget state `{expanded}`, shared by all the identity's sessions. */
  get widget() {
    return { ...this.#widget };
  }

  /** Drafts by channel sid, shared by all the identity's sessions. */
  get inputText() {
    return { ...this.#inputText };
  }

  /** The anonymous customer's resume token, if any. */
  get resumeToken() {
    return this.#resumeToken;
  }

  /** Action names this session may call, as the broker said at Connect (or GetActions). */
  get serverActions() {
    return [...this.#serverActions];
  }

  /** True once the broker advertised `GetMessages` (history and gapless recovery). */
  get supportsRecovery() {
    return this.#supportsRecovery;
  }

  /** True when the broker said this session may call `action`. */
  can(action) {
    return this.#serverActions.includes(action);
  }

  /** Open engagements of the subscribed queues (agent consoles). */
  get queue() {
    return [...this.#queue.values()].map((e) => ({ ...e }));
  }

  /** Channels or queues this session subscribed to (re-subscribed after reconnects). */
  get subscriptions() {
    return [...this.#subscriptions.keys()];
  }

  /** What the client knows of a channel, or `null`. */
  channel(channelSid) {
    const ch = this.#channels.get(channelSid);
    return ch ? this.#channelView(ch) : null;
  }

  /** All channels the client knows of. */
  get channels() {
    return [...this.#channels.values()].map((ch) => this.#channelView(ch));
  }

  /** A plain snapshot of everything above. */
  getState() {
    return {
      connectionState: this.#status,
      sessionId: this.sessionId,
      identity: this.identity,
      role: this.role,
      resumeToken: this.#resumeToken,
      engagement: this.engagement,
      widget: this.widget,
      inputText: this.inputText,
      serverActions: this.serverActions,
      supportsRecovery: this.#supportsRecovery,
      subscriptions: this.subscriptions,
      queue: this.queue,
      channels: this.channels,
    };
  }

  // ---------------------------------------------------------------- lifecycle

  /**
   * Opens the connection and starts the session. Resolves with the Connect
   * result; rejects (and does not retry) when the first attempt fails.
   * Later drops are reconnected automatically.
   */
  connect() {
    if (this.#connectPromise) return this.#connectPromise;
    this.#closedByUser = false;
    this.#attempt = 0;
    this.#setStatus("connecting");
    this.#watchOnline();
    const promise = this.#establish(false).then(
      (result) => {
        this.#setStatus("connected");
        this.#emitter.emit("connected", result);
        this.#flushQueued();
        return result;
      },
      (error) => {
        if (this.#connectPromise === promise) this.#connectPromise = null;
        if (!this.#closedByUser) {
          this.#setStatus("closed");
          this.#unwatchOnline();
          this.#rejectQueued(error);
        }
        throw error;
      },
    );
    this.#connectPromise = promise;
    return promise;
  }

  /** Closes the session for good (no reconnect). `connect()` may be called again later. */
  close(code = CloseCodes.NORMAL, reason = "client closed") {
    const wasOpen = this.#status !== "idle" && this.#status !== "closed";
    this.#closedByUser = true;
    this.#connectPromise = null;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#unwatchOnline();
    const conn = this.#conn;
    this.#conn = null;
    const error = new SwitchboardError("closed", "the client was closed");
    this.#rejectPending(error);
    this.#rejectQueued(error);
    this.#clearTyping();
    if (conn) {
      try {
        conn.ws.close(code, reason);
      } catch {
        try { conn.ws.close(); } catch { /* already closed */ }
      }
    }
    this.#setStatus("closed");
    if (wasOpen) this.#emitter.emit("disconnected", { code, reason, willReconnect: false, byClient: true });
  }

  /** Forgets the stored resume token (the next anonymous Connect makes a new identity). */
  async forgetIdentity() {
    this.#resumeToken = null;
    try {
      await this.#storage.removeItem(this.#opts.storageKey);
    } catch { /* storage unavailable */ }
  }

  // ---------------------------------------------------------------- connection internals

  async #establish(isReconnect) {
    try {
      return await this.#openSession(isReconnect);
    } catch (error) {
      this.#discardConn();
      // A stale resume token (the broker forgot that anonymous identity):
      // start afresh as a new anonymous customer rather than failing for good.
      if (error?.code === "unauthorized" && this.#lastConnectUsedResume && !this.#closedByUser) {
        await this.forgetIdentity();
        this.#opts.resumeToken = null;
        this.#emitter.emit("identityReset", { reason: error.message });
        try {
          return await this.#openSession(isReconnect);
        } catch (again) {
          this.#discardConn();
          throw again;
        }
      }
      throw error;
    }
  }

  /** Drops a connection whose session did not start. */
  #discardConn() {
    const conn = this.#conn;
    if (!conn || conn.ready) return;
    this.#conn = null;
    this.#rejectPending(new SwitchboardError("connection_lost", "the session did not start"), conn);
    try { conn.ws.close(); } catch { /* already closed */ }
  }

  #lastConnectUsedResume = false;

  async #openSession(isReconnect) {
    if (!this.#codec) this.#codec = await loadCodec(this.#opts.encoding, this.#opts.codec);
    this.#checkNotClosed();
    const WS = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new SwitchboardError(
        "unsupported",
        "no WebSocket implementation: on Node 20 run with --experimental-websocket (Node >= 22 has one built in) or pass the `WebSocket` option",
      );
    }

    const ws = new WS(this.#opts.url, [this.#codec.protocol]);
    ws.binaryType = "arraybuffer";
    const conn = { ws, opened: false, ready: false, closeWaiters: [] };
    this.#conn = conn;
    ws.onmessage = (ev) => this.#onMessage(conn, ev.data);
    ws.onclose = (ev) => this.#onClose(conn, ev.code, ev.reason);
    ws.onopen = () => { conn.opened = true; };
    // Browsers follow an error with a close event; some Node versions do not
    // when the connection cannot be made, so treat that error as the close.
    ws.onerror = () => {
      if (!conn.opened || ws.readyState === 3) this.#onClose(conn, 1006, "connection failed");
    };

    await this.#waitOpen(conn);
    this.#checkNotClosed(conn);

    const payload = await this.#connectPayload(isReconnect);
    this.#checkNotClosed(conn);
    const result = await this.#send(conn, "Connect", payload);
    this.#checkNotClosed(conn);
    this.#applyConnect(result, isReconnect);

    // Subscriptions belong to a session: take them up again.
    for (const channel of [...this.#subscriptions.keys()]) {
      const sub = { channel };
      const ch = this.#channels.get(channel);
      if (this.#supportsRecovery && !isQueue(channel) && ch && ch.lastIndex != null) sub.after = ch.lastIndex;
      try {
        const r = await this.#send(conn, "Subscribe", sub);
        this.#applyResult("Subscribe", sub, r);
      } catch (error) {
        if (error?.code === "connection_lost" || error?.code === "closed") throw error;
        this.#subscriptions.delete(channel);
        this.#emitter.emit("error", error);
      }
    }
    this.#checkNotClosed(conn);
    conn.ready = true;
    return result;
  }

  #checkNotClosed(conn) {
    if (this.#closedByUser) throw new SwitchboardError("closed", "the client was closed");
    if (conn && this.#conn !== conn) {
      throw new SwitchboardError("connection_lost", "the connection closed while starting the session", conn.closeInfo ?? {});
    }
  }

  #waitOpen(conn) {
    const { ws } = conn;
    return new Promise((resolve, reject) => {
      if (ws.readyState === WS_OPEN) return resolve();
      const timer = setTimeout(() => {
        cleanup();
        try { ws.close(); } catch { /* ignore */ }
        if (this.#conn === conn) this.#conn = null;
        reject(new SwitchboardError("timeout", `could not open ${this.#opts.url} in ${this.#opts.connectTimeout} ms`));
      }, this.#opts.connectTimeout);
      const onOpen = () => {
        conn.opened = true;
        cleanup();
        resolve();
      };
      const onCloseBeforeOpen = (info) => {
        cleanup();
        reject(new SwitchboardError("connection_failed", `could not connect to ${this.#opts.url}`, info));
      };
      const cleanup = () => {
        clearTimeout(timer);
        ws.onopen = null;
        conn.closeWaiters = conn.closeWaiters.filter((w) => w !== onCloseBeforeOpen);
      };
      ws.onopen = onOpen;
      conn.closeWaiters.push(onCloseBeforeOpen);
    });
  }

  async #connectPayload(isReconnect) {
    const payload = {};
    let token = this.#opts.token;
    if (typeof token === "function") token = await token();
    this.#lastConnectUsedResume = false;
    if (token) {
      payload.token = token;
    } else {
      let resume = this.#resumeToken ?? this.#opts.resumeToken;
      if (!resume) {
        try {
          resume = await this.#storage.getItem(this.#opts.storageKey);
        } catch {
          resume = null;
        }
      }
      if (resume) {
        payload.resumeToken = resume;
        this.#lastConnectUsedResume = true;
      }
    }
    if (isReconnect && this.#supportsRecovery) {
      const recover = {};
      for (const ch of this.#channels.values()) {
        if (ch.member && ch.lastIndex != null && !ch.ended) recover[ch.channelSid] = ch.lastIndex;
      }
      if (Object.keys(recover).length > 0) payload.recover = recover;
    }
    return payload;
  }

  #applyConnect(result, isReconnect) {
    const previousIdentity = this.#session.identity;
    this.#session = {
      sessionId: result?.sessionId ?? null,
      identity: result?.identity ?? null,
      role: result?.role ?? null,
    };
    if (previousIdentity && previousIdentity !== this.#session.identity) {
      // A different identity: nothing we knew of channels holds any more.
      this.#channels.clear();
      this.#queue.clear();
    }
    if (result?.resumeToken) {
      this.#resumeToken = result.resumeToken;
      Promise.resolve()
        .then(() => this.#storage.setItem(this.#opts.storageKey, result.resumeToken))
        .catch(() => { /* storage unavailable */ });
    }
    this.#learnActions(Array.isArray(result?.actions) ? result.actions : [], true);
    this.#widget = { expanded: Boolean(result?.widget?.expanded) };
    this.#inputText = { ...(result?.inputText ?? {}) };

    const previousEngagement = this.#engagement;
    const { members, lastIndex, ...engagement } = result?.engagement ?? {};
    this.#engagement = result?.engagement ? engagement : null;
    if (previousEngagement && previousEngagement.channelSid !== this.#engagement?.channelSid) {
      this.#dropChannel(previousEngagement.channelSid);
    }
    if (this.#engagement) {
      // Brokers that say who is in the engagement (`members`, `lastIndex`)
      // let a fresh tab show the same chat as the tab that saw it happen.
      const ch = this.#ensureChannel(this.#engagement.channelSid);
      ch.member = true;
      if (Array.isArray(members)) ch.members = new Map(members.map((m) => [m.identity, m.role]));
      if (typeof lastIndex === "number" && lastIndex >= 0 && ch.lastIndex == null) ch.lastIndex = lastIndex;
    }

    if (result?.recovered && typeof result.recovered === "object") {
      for (const [channelSid, ok] of Object.entries(result.recovered)) {
        if (ok === false) this.#emitter.emit("recoveryFailed", { channelSid, lastIndex: this.#channels.get(channelSid)?.lastIndex ?? null });
      }
    }
    if (isReconnect) this.#emitter.emit("stateChanged", this.getState());
  }

  #learnActions(names, replace = false) {
    this.#serverActions = replace ? [...names] : [...new Set([...this.#serverActions, ...names])];
    this.#supportsRecovery = this.#serverActions.includes("GetMessages");
  }

  #onMessage(conn, data) {
    if (this.#conn !== conn) return;
    let frame;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : this.#codec.decode(data);
    } catch (cause) {
      const err = new SwitchboardError("bad_request", "could not decode a frame from the broker");
      err.cause = cause;
      this.#emitter.emit("error", err);
      return;
    }
    this.#opts.trace?.("in", frame);
    if (!frame || typeof frame !== "object") return;
    if (typeof frame.event === "string" && !("id" in frame)) {
      this.#onPush(frame.event, frame.data ?? {});
      return;
    }
    const entry = frame.id == null ? undefined : this.#pending.get(frame.id);
    if (!entry) {
      if (frame.error) this.#emitter.emit("error", SwitchboardError.fromReply(frame.error));
      return;
    }
    this.#pending.delete(frame.id);
    clearTimeout(entry.timer);
    if (frame.error) entry.reject(SwitchboardError.fromReply(frame.error, entry.action));
    else entry.resolve(frame.result ?? {});
  }

  #onClose(conn, code, reason) {
    conn.closeInfo = { closeCode: code, closeReason: reason };
    for (const waiter of conn.closeWaiters) waiter(conn.closeInfo);
    conn.closeWaiters = [];
    if (this.#conn !== conn) return;
    this.#conn = null;
    const lost = new SwitchboardError(
      code === CloseCodes.UNAUTHORIZED ? "unauthorized" : "connection_lost",
      `the connection closed (${code}${reason ? ` ${reason}` : ""})`,
      { closeCode: code, closeReason: reason },
    );
    this.#rejectPending(lost, conn);
    this.#clearTyping();
    if (!conn.ready) return; // still starting: #openSession reports the failure
    if (this.#closedByUser) return;

    if (code === CloseCodes.UNAUTHORIZED || !this.#reconnectPolicy) {
      this.#setStatus("closed");
      this.#unwatchOnline();
      this.#connectPromise = null;
      this.#rejectQueued(lost);
      this.#emitter.emit("disconnected", { code, reason, willReconnect: false });
      return;
    }
    this.#setStatus("reconnecting");
    this.#emitter.emit("disconnected", { code, reason, willReconnect: true });
    this.#scheduleReconnect(code);
  }

  #scheduleReconnect(code) {
    const policy = this.#reconnectPolicy;
    this.#attempt += 1;
    if (this.#attempt > policy.maxAttempts) {
      this.#giveUp(new SwitchboardError("connection_failed", `gave up reconnecting after ${policy.maxAttempts} attempts`));
      return;
    }
    let delay = backoffDelay(this.#attempt, policy);
    if (code === CloseCodes.RATE_LIMITED) delay = Math.max(delay, policy.rateLimitedDelay);
    this.#emitter.emit("reconnecting", { attempt: this.#attempt, delay, code });
    this.#reconnectTimer = setTimeout(() => this.#reconnectNow(), delay);
  }

  async #reconnectNow() {
    this.#reconnectTimer = null;
    if (this.#closedByUser || this.#status !== "reconnecting") return;
    try {
      const result = await this.#establish(true);
      this.#attempt = 0;
      this.#setStatus("connected");
      this.#emitter.emit("reconnected", result);
      this.#emitter.emit("connected", result);
      this.#flushQueued();
    } catch (error) {
      if (this.#closedByUser) return;
      if (error?.code === "unauthorized" || error?.closeCode === CloseCodes.UNAUTHORIZED) {
        this.#giveUp(error, error?.closeCode ?? CloseCodes.UNAUTHORIZED);
        return;
      }
      this.#scheduleReconnect(error?.closeCode);
    }
  }

  #giveUp(error, code) {
    this.#setStatus("closed");
    this.#unwatchOnline();
    this.#connectPromise = null;
    this.#rejectQueued(error);
    this.#emitter.emit("disconnected", { code: code ?? null, reason: error.message, willReconnect: false, error });
  }

  #watchOnline() {
    if (this.#onlineHandler || typeof globalThis.addEventListener !== "function") return;
    this.#onlineHandler = () => {
      if (this.#status === "reconnecting" && this.#reconnectTimer) {
        clearTimeout(this.#reconnectTimer);
        this.#reconnectNow();
      }
    };
    globalThis.addEventListener("online", this.#onlineHandler);
  }

  #unwatchOnline() {
    if (!this.#onlineHandler) return;
    globalThis.removeEventListener?.("online", this.#onlineHandler);
    this.#onlineHandler = null;
  }

  #setStatus(status) {
    if (this.#status === status) return;
    this.#status = status;
    this.#emitter.emit("connectionStateChanged", status);
  }

  #listenerFailed(error, name) {
    if (name === "error" || this.#emitter.listenerCount("error") === 0) {
      queueMicrotask(() => { throw error; });
    } else {
      this.#emitter.emit("error", error);
    }
  }

  // ---------------------------------------------------------------- commands

  /** The broker implementation of every action (what `actions.replace` calls "original"). */
  #command(action, payload) {
    if (this.#conn?.ready && this.#status === "connected") return this.#send(this.#conn, action, payload);
    if (this.#status === "connecting" || this.#status === "reconnecting") {
      return new Promise((resolve, reject) => {
        const item = { action, payload, resolve, reject, timer: null };
        item.timer = setTimeout(() => {
          this.#queued = this.#queued.filter((q) => q !== item);
          reject(Object.assign(new SwitchboardError("timeout", `${action}: no session within ${this.#opts.requestTimeout} ms`), { action }));
        }, this.#opts.requestTimeout);
        this.#queued.push(item);
      });
    }
    return Promise.reject(
      Object.assign(new SwitchboardError("not_connected", `${action}: the client is not connected (call connect() first)`), { action }),
    );
  }

  #send(conn, action, payload) {
    return new Promise((resolve, reject) => {
      if (conn.ws.readyState !== WS_OPEN || this.#conn !== conn) {
        reject(Object.assign(new SwitchboardError("connection_lost", `${action}: the connection is not open`), { action }));
        return;
      }
      const id = this.#nextId++;
      const frame = { id, action };
      if (payload !== undefined && payload !== null && (action === "Connect" || Object.keys(payload).length > 0)) {
        frame.payload = payload;
      }
      let encoded;
      try {
        encoded = this.#codec.encode(frame);
      } catch (cause) {
        const err = new SwitchboardError("bad_request", `${action}: the payload could not be encoded`);
        err.cause = cause;
        err.action = action;
        reject(err);
        return;
      }
      const timer = setTimeout(() => {
        if (this.#pending.delete(id)) {
          reject(Object.assign(new SwitchboardError("timeout", `${action}: no reply within ${this.#opts.requestTimeout} ms`), { action }));
        }
      }, this.#opts.requestTimeout);
      this.#pending.set(id, {
        action,
        conn,
        timer,
        reject,
        resolve: (result) => {
          try {
            this.#applyResult(action, payload ?? {}, result);
          } catch (error) {
            this.#listenerFailed(error, action);
          }
          resolve(result);
        },
      });
      this.#opts.trace?.("out", frame);
      try {
        conn.ws.send(encoded);
      } catch (cause) {
        this.#pending.delete(id);
        clearTimeout(timer);
        const err = new SwitchboardError("connection_lost", `${action}: could not send`);
        err.cause = cause;
        err.action = action;
        reject(err);
      }
    });
  }

  #flushQueued() {
    const items = this.#queued;
    this.#queued = [];
    for (const item of items) {
      clearTimeout(item.timer);
      this.#command(item.action, item.payload).then(item.resolve, item.reject);
    }
  }

  #rejectQueued(error) {
    const items = this.#queued;
    this.#queued = [];
    for (const item of items) {
      clearTimeout(item.timer);
      item.reject(Object.assign(new SwitchboardError(error.code, error.message, error.details), { action: item.action }));
    }
  }

  #rejectPending(error, conn) {
    for (const [id, entry] of [...this.#pending]) {
      if (conn && entry.conn !== conn) continue;
      this.#pending.delete(id);
      clearTimeout(entry.timer);
      entry.reject(Object.assign(new SwitchboardError(error.code, error.message, error.details), { action: entry.action }));
    }
  }

  // ---------------------------------------------------------------- state upkeep

  #ensureChannel(channelSid) {
    let ch = this.#channels.get(channelSid);
    if (!ch) {
      ch = { channelSid, lastIndex: null, member: false, subscribed: false, ended: false, members: new Map(), typing: new Set() };
      this.#channels.set(channelSid, ch);
    }
    return ch;
  }

  #dropChannel(channelSid) {
    const ch = this.#channels.get(channelSid);
    if (!ch) return;
    if (ch.subscribed) {
      ch.member = false;
      return;
    }
    this.#channels.delete(channelSid);
  }

  #channelView(ch) {
    return {
      channelSid: ch.channelSid,
      lastIndex: ch.lastIndex,
      member: ch.member,
      subscribed: ch.subscribed,
      ended: ch.ended,
      members: [...ch.members].map(([identity, role]) => ({ identity, role })),
      typing: [...ch.typing],
    };
  }

  #clearTyping() {
    for (const ch of this.#channels.values()) {
      for (const identity of [...ch.typing]) {
        ch.typing.delete(identity);
        this.#emitter.emit("typingEnded", { channelSid: ch.channelSid, identity, local: true });
      }
    }
  }

  #endEngagement(channelSid) {
    if (this.#engagement?.channelSid === channelSid) this.#engagement = null;
    delete this.#inputText[channelSid];
    this.#dropChannel(channelSid);
  }

  #applyResult(action, payload, result) {
    switch (action) {
      case "StartEngagement": {
        if (result?.channelSid) {
          if (!this.#engagement || this.#engagement.channelSid !== result.channelSid) {
            this.#engagement = { channelSid: result.channelSid, startedAt: result.startedAt ?? nowIso() };
          }
          this.#ensureChannel(result.channelSid).member = true;
        }
        break;
      }
      case "RestartEngagement": {
        const sid = result?.channelSid ?? this.#engagement?.channelSid;
        if (sid) this.#endEngagement(sid);
        else this.#engagement = null;
        break;
      }
      case "ToggleChatVisibility":
      case "MinimizeChat":
        if (result && "expanded" in result) this.#widget = { expanded: Boolean(result.expanded) };
        break;
      case "SetInputText":
        if (payload.channelSid) this.#inputText[payload.channelSid] = payload.body ?? "";
        break;
      case "JoinChannel": {
        const ch = this.#ensureChannel(result?.channelSid ?? payload.channelSid);
        ch.member = true;
        ch.ended = false;
        if (Array.isArray(result?.members)) {
          ch.members = new Map(result.members.map((m) => [m.identity, m.role]));
        }
        if (typeof result?.lastIndex === "number") {
          ch.lastIndex = ch.lastIndex == null ? result.lastIndex : Math.max(ch.lastIndex, result.lastIndex);
        }
        break;
      }
      case "LeaveChannel": {
        const sid = payload.channelSid;
        if (this.#engagement?.channelSid === sid) this.#endEngagement(sid);
        else this.#dropChannel(sid);
        break;
      }
      case "Subscribe": {
        const channel = result?.channel ?? payload.channel;
        this.#subscriptions.set(channel, {});
        if (isQueue(channel)) {
          // The result lists the queue's open engagements now: it replaces
          // what we knew of that queue (engagements may have ended meanwhile).
          for (const [sid, e] of this.#queue) {
            if (e.queue === channel || e.queue == null) this.#queue.delete(sid);
          }
          for (const e of Array.isArray(result?.engagements) ? result.engagements : []) {
            if (e?.channelSid) this.#queue.set(e.channelSid, { ...e, formData: e.formData ?? {}, queue: channel });
          }
        } else {
          this.#ensureChannel(channel).subscribed = true;
          if (result?.recovered === false) {
            this.#emitter.emit("recoveryFailed", { channelSid: channel, lastIndex: this.#channels.get(channel)?.lastIndex ?? null });
          }
        }
        break;
      }
      case "Unsubscribe": {
        const channel = payload.channel;
        this.#subscriptions.delete(channel);
        if (isQueue(channel)) {
          if (![...this.#subscriptions.keys()].some(isQueue)) this.#queue.clear();
        } else {
          const ch = this.#channels.get(channel);
          if (ch) {
            ch.subscribed = false;
            if (!ch.member) this.#channels.delete(channel);
          }
        }
        break;
      }
      case "GetActions":
        break;
      default:
        return;
    }
    this.#emitter.emit("stateChanged", this.getState());
  }

  #onPush(event, data) {
    let changed = true;
    switch (event) {
      case "messageAdded": {
        const ch = this.#ensureChannel(data.channelSid);
        if (typeof data.index === "number") {
          if (ch.lastIndex != null && data.index <= ch.lastIndex) return; // already seen: exactly once
          if (ch.lastIndex != null && data.index > ch.lastIndex + 1) {
            this.#emitter.emit("gap", { channelSid: data.channelSid, from: ch.lastIndex + 1, to: data.index - 1 });
          }
          ch.lastIndex = data.index;
        }
        if (data.author) ch.typing.delete(data.author);
        changed = false;
        break;
      }
      case "typingStarted":
        this.#ensureChannel(data.channelSid).typing.add(data.identity);
        break;
      case "typingEnded":
        this.#channels.get(data.channelSid)?.typing.delete(data.identity);
        break;
      case "memberJoined": {
        const ch = this.#ensureChannel(data.channelSid);
        ch.members.set(data.identity, data.role);
        if (data.identity === this.identity) ch.member = true;
        break;
      }
      case "memberLeft": {
        const ch = this.#channels.get(data.channelSid);
        if (ch) {
          ch.members.delete(data.identity);
          ch.typing.delete(data.identity);
        }
        if (data.identity === this.identity) {
          if (this.#engagement?.channelSid === data.channelSid) this.#endEngagement(data.channelSid);
          else if (ch) this.#dropChannel(data.channelSid);
        }
        break;
      }
      case "engagementStarted": {
        if (data.identity === this.identity && this.role === "customer") {
          this.#engagement = { channelSid: data.channelSid, startedAt: data.startedAt ?? this.#engagement?.startedAt ?? nowIso() };
          this.#ensureChannel(data.channelSid).member = true;
        } else {
          const queues = [...this.#subscriptions.keys()].filter(isQueue);
          this.#queue.set(data.channelSid, {
            queue: data.queue ?? (queues.length === 1 ? queues[0] : null),
            channelSid: data.channelSid,
            identity: data.identity,
            formData: data.formData ?? {},
            startedAt: data.startedAt ?? nowIso(),
            members: Array.isArray(data.members) ? data.members : [{ identity: data.identity, role: "customer" }],
          });
        }
        break;
      }
      case "engagementUpdated": {
        const entry = this.#queue.get(data.channelSid);
        if (entry && Array.isArray(data.members)) entry.members = data.members.map((m) => ({ ...m }));
        const ch = this.#channels.get(data.channelSid);
        if (ch && Array.isArray(data.members)) ch.members = new Map(data.members.map((m) => [m.identity, m.role]));
        break;
      }
      case "engagementEnded": {
        this.#queue.delete(data.channelSid);
        const ch = this.#channels.get(data.channelSid);
        if (ch) {
          ch.ended = true;
          ch.typing.clear();
        }
        if (this.#engagement?.channelSid === data.channelSid) this.#endEngagement(data.channelSid);
        break;
      }
      case "engagementRestarted":
        this.#endEngagement(data.channelSid);
        break;
      case "widgetStateChanged":
        this.#widget = { expanded: Boolean(data.expanded) };
        break;
      case "inputTextSet":
        if (data.channelSid) this.#inputText[data.channelSid] = data.body ?? "";
        break;
      default:
        changed = false;
    }
    this.#emitter.emit(event, data);
    this.#emitter.emit("push", { event, data });
    if (changed) this.#emitter.emit("stateChanged", this.getState());
  }
}
