// The embeddable web-chat widget: a launcher and a chat panel in a shadow
// root, driven by one SwitchboardClient. Every user action goes through the
// client's actions framework, so a site's listeners, replaced and registered
// actions apply to what the widget does too.
import { SwitchboardClient } from "../client.js";
import { BUILTIN_ACTIONS } from "../actions.js";
import {
  dayKey,
  dayLabel,
  debounce,
  fill,
  formatFullDate,
  formatTime,
  h,
  listNames,
  safeStorage,
  submitOnEnter,
  throttle,
} from "./dom.js";
import { STYLES, THEME_VARIABLES } from "./styles.js";

/** Every text the widget shows; `{name}` placeholders are filled in. */
export const DEFAULT_STRINGS = Object.freeze({
  launcher: "Chat with us",
  title: "Chat with {brand}",
  unread: "{count} unread",
  minimize: "Minimize chat",
  restart: "Restart",
  restartLabel: "Restart the chat",
  idle: "We typically reply in a few minutes",
  connecting: "Connecting…",
  reconnecting: "Connection lost. Reconnecting…",
  offlineStatus: "Offline",
  waiting: "Waiting for an agent…",
  chattingWith: "Chatting with {names}",
  and: "and",
  offlineText: "We can't reach the chat service right now. We'll keep trying.",
  retry: "Try again",
  messagesLabel: "Messages",
  inputLabel: "Message",
  inputPlaceholder: "Type a message…",
  send: "Send",
  you: "You",
  assistant: "{brand} assistant",
  assistantUnbranded: "Assistant",
  joined: "{name} joined the chat",
  left: "{name} left the chat",
  endedNotice: "Your previous chat has ended. Need anything else? Start a new one below.",
  gap: "Some messages sent while you were offline are not shown.",
  typingOne: "{names} is typing…",
  typingMany: "{names} are typing…",
  today: "Today",
  yesterday: "Yesterday",
  sending: "Sending…",
  sent: "Sent",
  notSent: "Not sent.",
  retrySend: "Retry",
  edit: "Edit",
  errorOffline: "No connection right now.",
  errorTooLarge: "This message is too long.",
  errorRateLimited: "You're sending messages too quickly.",
  errorRejected: "This message was not accepted.",
  errorGeneric: "Something went wrong.",
  startError: "We could not start the chat. Please try again.",
  closed: "We're closed right now. We open again {opens}.",
  closedSoon: "We're closed right now. Please come back later.",
  requiredField: "Please fill in {label}.",
  invalidEmail: "Please enter a valid email address.",
  restartTitle: "Restart the chat?",
  restartText: "Your current conversation will end and you'll start over.",
  restartConfirm: "Restart chat",
  cancel: "Cancel",
  restartFailed: "The chat could not be restarted. Please try again.",
});

/** The pre-engagement form when the site gives none. */
export const DEFAULT_FORM = Object.freeze({
  intro: "Hi there! Tell us a little about yourself and we'll connect you with an agent.",
  submitLabel: "Start chat",
  fields: Object.freeze([
    Object.freeze({ name: "name", label: "Name", required: true, autocomplete: "name" }),
    Object.freeze({ name: "email", label: "Email", type: "email", autocomplete: "email" }),
    Object.freeze({ name: "question", label: "How can we help?", type: "textarea", sendAsMessage: true }),
  ]),
});

const DEFAULT_RETRY = Object.freeze({ initialDelay: 1000, maxDelay: 30_000 });
// Actions whose payload names the engagement's channel: the widget fills it
// in when a site's code leaves it out.
const CHANNEL_ACTIONS = ["SendMessage", "SetInputText", "SendTyping", "GetMessages"];
const OFFLINE_CODES = new Set(["timeout", "connection_lost", "connection_failed", "not_connected", "closed", "unavailable"]);
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

let instances = 0;

/**
 * Creates a web-chat widget, mounts it and connects. See `WebChat` for the
 * options; the result is the widget, already starting.
 */
export function createWebChat(options = {}) {
  const chat = new WebChat(options);
  chat.start();
  return chat;
}

/** The web-chat Actions Framework's page-side API over a client's actions. */
function actionsApi(client) {
  const Actions = Object.freeze({
    /** Runs an action through the framework; resolves with its result. */
    invokeAction: (name, payload) => client.actions.invoke(name, payload),
    /** `on("afterStartEngagement", fn)`, `on("beforeSendMessage", fn)`: returns a remover. */
    on: (eventName, fn) => client.actions.addListener(eventName, fn),
    addListener: (eventName, fn) => client.actions.addListener(eventName, fn),
    off: (eventName, fn) => client.actions.removeListener(eventName, fn),
    removeListener: (eventName, fn) => client.actions.removeListener(eventName, fn),
    /** `impl(payload, original)` runs instead of the action; returns a restorer. */
    replaceAction: (name, impl) => client.actions.replace(name, impl),
    /** A page-side action, invoked and listened to like any other; returns an unregisterer. */
    registerAction: (name, impl, options) => client.actions.register(name, impl, options),
  });
  const actions = Object.freeze({
    /**
     * Runs a named API action: one the page registered, else one configured
     * on the broker (`TriggerAction`). Resolves with its result.
     */
    triggerAction: (name, payload) =>
      client.actions.has(name) && !BUILTIN_ACTIONS.includes(name)
        ? client.actions.invoke(name, payload)
        : client.actions.trigger(name, payload),
    /** The actions this widget may run: the broker's, then the page's. */
    getActions: () => client.actions.list(),
    invokeAction: Actions.invokeAction,
  });
  return { Actions, actions };
}

/**
 * The widget. Options (all optional but `url` when not loaded from the
 * broker's `/webchat/v1/webchat.js`):
 * `url`, `token`, `brand {name}`, `theme`, `position`, `strings`,
 * `preEngagementForm` (or `false`), `queue`, `container`, `storage`,
 * `storageKey`, `requestTimeout`, `reconnect`, `retry`, `client`.
 */
export class WebChat {
  /** The SwitchboardClient behind the widget. */
  client;
  /** `invokeAction`, `on`, `replaceAction`, `registerAction`, … */
  Actions;
  /** `triggerAction(name, payload?)`, `getActions()`. */
  actions;
  /** The widget's shadow root (open, so tests and assistive tooling can see in). */
  root;
  /** The element the shadow root is attached to. */
  host;
  /** Resolves with the Connect result of the first session. */
  ready;

  #config;
  #strings;
  #form;
  #store;
  #ui = {};
  #started = false;
  #destroyed = false;
  #cleanups = [];

  #retryTimer = null;
  #connectFailures = 0;
  #expanded = false;
  #expandDirty = false; // the user changed it and the broker has not been told yet
  #syncingExpand = false;
  #formNotice = "";
  #startingEngagement = false;
  #confirm = null;
  #stick = true;
  #pendingSeq = 0;
  #t = null; // the transcript on screen: see #resetTranscript
  #early = new Map(); // messages of a channel not yet known as the engagement
  #elements = new Map(); // transcript key -> {el, sig}
  #resolveReady;

  constructor(options = {}) {
    const config = { ...options };
    this.#config = config;
    this.#strings = { ...DEFAULT_STRINGS, ...(config.strings ?? {}) };
    this.#form = config.preEngagementForm === false ? null : { ...DEFAULT_FORM, ...(config.preEngagementForm ?? {}) };
    this.#store = safeStorage(config.storage === false ? null : config.storage);
    const url = config.url ?? defaultUrl();
    this.client =
      config.client ??
      new SwitchboardClient({
        url,
        encoding: "json",
        token: config.token,
        storage: config.storage,
        storageKey: config.storageKey,
        requestTimeout: config.requestTimeout,
        reconnect: config.reconnect,
      });
    const api = actionsApi(this.client);
    this.Actions = api.Actions;
    this.actions = api.actions;
    this.ready = new Promise((resolve) => (this.#resolveReady = resolve));
    for (const action of CHANNEL_ACTIONS) {
      this.#cleanups.push(
        this.client.actions.addListener(`before${action}`, (payload) => {
          if (!payload.channelSid && this.client.engagement) payload.channelSid = this.client.engagement.channelSid;
        }),
      );
    }
    this.#resetTranscript(null);
  }

  // ---------------------------------------------------------------- public

  /** Mounts the widget and connects (retrying until the broker answers). */
  start() {
    if (this.#started) return this;
    this.#started = true;
    this.#mount();
    this.#wire();
    this.#render();
    this.#connect();
    return this;
  }

  /** Opens the chat panel. */
  open() {
    this.#setExpanded(true);
  }

  /** Minimizes the chat panel to its launcher. */
  minimize() {
    this.#setExpanded(false);
  }

  /** Removes the widget from the page and closes its connection. */
  destroy() {
    this.#destroyed = true;
    clearTimeout(this.#retryTimer);
    for (const fn of this.#cleanups.splice(0)) fn();
    if (!this.#config.client) this.client.close();
    this.host?.remove();
  }

  // ---------------------------------------------------------------- connection

  async #connect() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const state = this.client.connectionState;
    if (this.#destroyed || state === "connecting" || state === "connected" || state === "reconnecting") return;
    this.#render();
    try {
      await this.client.connect();
    } catch {
      if (this.#destroyed) return;
      this.#scheduleRetry();
    }
  }

  /** The SDK does not retry a first connection: the widget does, with backoff. */
  #scheduleRetry() {
    const policy = { ...DEFAULT_RETRY, ...(this.#config.retry ?? {}) };
    this.#connectFailures += 1;
    const delay = Math.min(policy.maxDelay, policy.initialDelay * 2 ** (this.#connectFailures - 1));
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
    this.#render();
  }

  async #onSession(result) {
    this.#connectFailures = 0;
    this.#resolveReady(result);
    if (this.#expandDirty) this.#pushExpanded();
    else this.#expanded = this.client.widget.expanded;
    const sid = this.client.engagement?.channelSid ?? null;
    if (sid !== this.#t.channelSid) this.#resetTranscript(sid);
    this.#render();
    if (sid) await this.#loadHistory(sid);
  }

  // ---------------------------------------------------------------- expanded state

  #setExpanded(expanded) {
    if (this.#expanded === expanded && !this.#expandDirty) return;
    this.#expanded = expanded;
    this.#expandDirty = true;
    if (expanded) this.#stick = true;
    this.#render();
    this.#pushExpanded();
  }

  /** Tells the broker (and so the identity's other tabs) what the user chose. */
  async #pushExpanded() {
    if (this.#syncingExpand || !this.client.connected) return;
    this.#syncingExpand = true;
    try {
      for (let tries = 0; tries < 3 && this.client.widget.expanded !== this.#expanded; tries++) {
        await this.client.actions.invoke(this.#expanded ? "ToggleChatVisibility" : "MinimizeChat");
      }
      this.#expandDirty = this.client.widget.expanded !== this.#expanded;
    } catch {
      // Told on the next connect.
    } finally {
      this.#syncingExpand = false;
    }
  }

  // ---------------------------------------------------------------- transcript model

  #resetTranscript(channelSid) {
    this.#t = {
      channelSid,
      messages: new Map(), // index -> message
      pending: [], // {key, body, state, error, index?, createdAt}
      notices: [], // {key, sort, text, day}
      joined: new Set(), // identities whose "joined" line is shown
      historyLoaded: false,
    };
    this.#elements.clear();
    this.#stick = true;
    if (channelSid) {
      this.#formNotice = "";
      for (const message of this.#early.get(channelSid) ?? []) this.#t.messages.set(message.index, message);
    }
    this.#early.clear();
    if (this.#ui.input) this.#ui.input.value = channelSid ? this.client.inputText[channelSid] ?? "" : "";
  }

  #maxIndex() {
    let max = -1;
    for (const index of this.#t.messages.keys()) if (index > max) max = index;
    const known = this.client.channel(this.#t.channelSid)?.lastIndex;
    return typeof known === "number" ? Math.max(max, known) : max;
  }

  #addNotice(text, sort = this.#maxIndex() + 0.5) {
    this.#t.notices.push({ key: `n${this.#t.notices.length}:${text}`, sort, text, day: dayKey() });
  }

  async #loadHistory(channelSid) {
    if (!this.client.can("GetMessages")) {
      this.#t.historyLoaded = true;
      this.#rebuildJoined();
      this.#render();
      return;
    }
    try {
      const { messages } = await this.client.actions.invoke("GetMessages", { channelSid, limit: 50 });
      if (this.#t.channelSid !== channelSid) return;
      for (const message of messages) this.#t.messages.set(message.index, message);
    } catch {
      // History is a nicety: live messages keep coming.
    }
    if (this.#t.channelSid !== channelSid) return;
    this.#t.historyLoaded = true;
    this.#rebuildJoined();
    this.#stick = true;
    this.#render();
  }

  /**
   * A tab opened (or reloaded) mid-chat did not see the agents join: from
   * the members the broker reports, put a "joined" line before each agent's
   * first message (or after the last message when it has said nothing yet).
   */
  #rebuildJoined() {
    const channel = this.client.channel(this.#t.channelSid);
    for (const member of channel?.members ?? []) {
      if (member.role !== "agent" || this.#t.joined.has(member.identity)) continue;
      const own = [...this.#t.messages.values()].filter((m) => m.author === member.identity).map((m) => m.index);
      const sort = own.length ? Math.min(...own) - 0.5 : this.#maxIndex() + 0.5;
      this.#t.joined.add(member.identity);
      this.#addNotice(fill(this.#strings.joined, { name: member.identity }), sort);
    }
  }

  // ---------------------------------------------------------------- SDK events

  #wire() {
    const c = this.client;
    const on = (event, fn) => this.#cleanups.push(c.on(event, fn));
    on("connected", (result) => this.#onSession(result));
    on("connectionStateChanged", () => this.#render());
    on("disconnected", (e) => {
      // The SDK gave up (or the session was refused): keep trying, slowly.
      if (!e.byClient && !e.willReconnect && !this.#destroyed) this.#scheduleRetry();
    });
    on("stateChanged", () => {
      if (!this.#expandDirty && !this.#syncingExpand && c.sessionId) {
        if (c.widget.expanded && !this.#expanded) this.#stick = true;
        this.#expanded = c.widget.expanded;
      }
      const sid = c.engagement?.channelSid ?? null;
      if (sid !== this.#t.channelSid) {
        this.#resetTranscript(sid);
        if (sid) this.#loadHistory(sid);
      }
      this.#render();
    });
    on("messageAdded", (message) => {
      if (message.channelSid !== this.#t.channelSid) {
        // A greeting can beat the engagementStarted push: keep it for later.
        if (!c.engagement) this.#early.set(message.channelSid, [...(this.#early.get(message.channelSid) ?? []), message]);
        return;
      }
      this.#t.messages.set(message.index, message);
      this.#render();
    });
    on("typingStarted", () => this.#renderTyping());
    on("typingEnded", () => this.#renderTyping());
    on("memberJoined", (e) => {
      if (e.channelSid !== this.#t.channelSid || e.role !== "agent" || this.#t.joined.has(e.identity)) return;
      this.#t.joined.add(e.identity);
      this.#addNotice(fill(this.#strings.joined, { name: e.identity }));
      this.#render();
    });
    on("memberLeft", (e) => {
      if (e.channelSid !== this.#t.channelSid || e.identity === c.identity) return;
      this.#t.joined.delete(e.identity);
      this.#addNotice(fill(this.#strings.left, { name: this.#displayName(e.identity, "agent") }));
      this.#render();
    });
    on("gap", (e) => {
      if (e.channelSid !== this.#t.channelSid) return;
      this.#addNotice(this.#strings.gap);
      this.#render();
    });
    on("engagementEnded", (e) => {
      if (e.reason !== "restart") this.#formNotice = this.#strings.endedNotice;
      this.#render();
    });
    on("inputTextSet", ({ channelSid, body }) => {
      const input = this.#ui.input;
      if (channelSid === this.#t.channelSid && this.root.activeElement !== input) input.value = body;
    });
    const online = () => {
      if (this.#retryTimer) this.#connect();
    };
    globalThis.addEventListener?.("online", online);
    this.#cleanups.push(() => globalThis.removeEventListener?.("online", online));
    const storage = (event) => {
      if (event.key === this.#seenKey()) this.#render();
    };
    globalThis.addEventListener?.("storage", storage);
    this.#cleanups.push(() => globalThis.removeEventListener?.("storage", storage));
  }

  // ---------------------------------------------------------------- DOM

  #mount() {
    const s = this.#strings;
    const brand = this.#config.brand?.name ?? "us";
    const id = (name) => `sb-${name}`;
    this.host = h("div", { class: "switchboard-webchat", "data-switchboard-webchat": String(++instances) });
    this.root = this.host.attachShadow({ mode: "open" });
    for (const [key, value] of Object.entries(this.#config.theme ?? {})) {
      if (THEME_VARIABLES[key] && value != null) this.host.style.setProperty(THEME_VARIABLES[key], String(value));
    }
    const ui = this.#ui;
    ui.launcherLabel = h("span", { text: s.launcher });
    ui.badge = h("span", { class: "badge", id: id("unread"), "aria-hidden": "true", hidden: true });
    ui.launcher = h(
      "button",
      { class: "launcher", id: id("launcher"), type: "button", "aria-expanded": "false", "aria-controls": id("panel"), onclick: () => this.#setExpanded(true) },
      svgIcon(),
      ui.launcherLabel,
      ui.badge,
    );
    ui.title = h("h2", { class: "title", id: id("title"), text: fill(s.title, { brand }) });
    ui.status = h("p", { class: "status", id: id("status"), "aria-live": "polite" });
    ui.restart = h("button", { class: "header-btn", id: id("restart"), type: "button", "aria-label": s.restartLabel, text: s.restart, hidden: true, onclick: () => this.#askRestart() });
    ui.minimize = h(
      "button",
      { class: "header-btn minimize", id: id("minimize"), type: "button", "aria-label": s.minimize, title: s.minimize, onclick: () => this.#minimizeFromPanel() },
      h("span", { "aria-hidden": "true", text: "▾" }),
    );
    ui.header = h("div", { class: "header" }, h("div", { class: "header-text" }, ui.title, ui.status), ui.restart, ui.minimize);

    ui.form = this.#buildForm(id);
    // The log scrolls; the list inside keeps list semantics (a role on the
    // <ol> itself would orphan its items).
    ui.list = h("ol", { class: "message-list" });
    ui.messages = h("div", { class: "messages", id: id("messages"), role: "log", "aria-label": s.messagesLabel, tabindex: "0" }, ui.list);
    ui.messages.addEventListener("scroll", () => {
      const m = ui.messages;
      if (m.clientHeight > 0) this.#stick = m.scrollHeight - m.scrollTop - m.clientHeight < 40;
    });
    ui.typing = h("p", { class: "typing", id: id("typing"), "aria-live": "polite" });
    ui.alert = h("p", { class: "alert", id: id("alert"), role: "alert" });
    ui.input = h("textarea", { id: id("input"), rows: "2", placeholder: s.inputPlaceholder, autocomplete: "off" });
    ui.compose = h(
      "form",
      { class: "compose", id: id("compose") },
      h("label", { for: id("input"), class: "sr-only", text: s.inputLabel }),
      ui.input,
      h("button", { class: "btn btn-primary", id: id("send"), type: "submit", text: s.send }),
    );
    ui.chat = h("div", { class: "chat", id: id("chat"), hidden: true }, ui.messages, ui.typing, ui.alert, ui.compose);
    ui.offlineText = h("p", { id: id("offline-text"), text: s.offlineText });
    ui.retry = h("button", { class: "btn", id: id("retry"), type: "button", text: s.retry, onclick: () => this.#connect() });
    ui.offline = h("div", { class: "offline", id: id("offline"), hidden: true }, ui.offlineText, ui.retry);
    ui.body = h("div", { class: "body" }, ui.form, ui.chat, ui.offline);
    ui.panel = h("section", { class: "panel", id: id("panel"), "aria-labelledby": id("title"), hidden: true }, ui.header, ui.body);
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || event.isComposing) return;
      event.preventDefault();
      if (this.#confirm) this.#closeConfirm(false);
      else this.#minimizeFromPanel();
    });
    ui.widget = h("div", { class: "sbw", id: id("widget"), "data-position": this.#config.position ?? "bottom-right", "data-expanded": "false" }, ui.panel, ui.launcher);
    this.root.append(h("style", { text: STYLES }), ui.widget);

    this.#wireCompose();
    (this.#config.container ?? document.body).append(this.host);
  }

  #buildForm(id) {
    const ui = this.#ui;
    const s = this.#strings;
    ui.formIntro = h("p", { class: "intro", id: id("intro") });
    ui.formError = h("p", { class: "error", id: id("form-error"), role: "alert" });
    ui.start = h("button", { class: "btn btn-primary", id: id("start"), type: "submit", text: this.#form?.submitLabel ?? DEFAULT_FORM.submitLabel });
    const fields = (this.#form?.fields ?? []).map((field) => {
      const fid = id(field.name);
      const control = h(field.type === "textarea" ? "textarea" : "input", {
        id: fid,
        name: field.name,
        type: field.type === "textarea" ? null : field.type ?? "text",
        rows: field.type === "textarea" ? "3" : null,
        autocomplete: field.autocomplete ?? null,
        required: field.required ? true : null,
        "aria-required": field.required ? "true" : null,
      });
      return h(
        "div",
        { class: "field" },
        h("label", { for: fid }, field.label ?? field.name, field.required ? null : h("span", { class: "optional", text: " (optional)" })),
        control,
      );
    });
    const form = h("form", { class: "form", id: id("form"), novalidate: true, hidden: true }, ui.formIntro, ...fields, ui.formError, ui.start);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submitForm(form);
    });
    void s;
    return form;
  }

  #wireCompose() {
    const { input, compose } = this.#ui;
    const sendTyping = throttle((channelSid) => {
      this.client.actions.invoke("SendTyping", { channelSid }).catch(() => {});
    }, 2000);
    const saveDraft = debounce((channelSid, body) => {
      if (this.client.engagement?.channelSid === channelSid && this.client.connected) {
        this.client.actions.invoke("SetInputText", { channelSid, body }).catch(() => {});
      }
    }, 400);
    this.#ui.saveDraft = saveDraft;
    input.addEventListener("input", () => {
      const channelSid = this.client.engagement?.channelSid;
      if (!channelSid) return;
      if (input.value.trim() && this.client.connected) sendTyping(channelSid);
      saveDraft(channelSid, input.value);
    });
    submitOnEnter(input);
    compose.addEventListener("submit", (event) => {
      event.preventDefault();
      const channelSid = this.client.engagement?.channelSid;
      const body = input.value.trim();
      if (!channelSid || !body) return;
      input.value = "";
      saveDraft.cancel();
      this.#send(channelSid, body);
    });
  }

  // ---------------------------------------------------------------- user actions

  async #send(channelSid, body, existing) {
    const pending = existing ?? { key: `p${++this.#pendingSeq}`, body, createdAt: new Date().toISOString() };
    pending.state = "sending";
    pending.error = null;
    if (!existing) this.#t.pending.push(pending);
    this.#stick = true;
    this.#render();
    try {
      const result = await this.client.actions.invoke("SendMessage", { channelSid, body });
      pending.state = "sent";
      if (typeof result?.index === "number") pending.index = result.index;
      if (result?.dateCreated) pending.createdAt = result.dateCreated;
      if (this.client.inputText[channelSid]) this.client.actions.invoke("SetInputText", { channelSid, body: "" }).catch(() => {});
    } catch (error) {
      pending.state = "failed";
      pending.error = error;
    }
    this.#render();
  }

  #errorText(error) {
    const s = this.#strings;
    if (error?.source === "client" && error.message) return error.message; // the site's own words
    if (OFFLINE_CODES.has(error?.code)) return s.errorOffline;
    if (error?.code === "too_large") return s.errorTooLarge;
    if (error?.code === "rate_limited") return s.errorRateLimited;
    if (error?.code === "rejected") return s.errorRejected;
    return s.errorGeneric;
  }

  #minimizeFromPanel() {
    this.#setExpanded(false);
    this.#ui.launcher.focus();
  }

  async #submitForm(form) {
    const ui = this.#ui;
    const s = this.#strings;
    ui.formError.textContent = "";
    const formData = {};
    let firstMessage = "";
    for (const field of this.#form?.fields ?? []) {
      const control = form.elements.namedItem(field.name);
      const value = String(control?.value ?? "").trim();
      control?.removeAttribute("aria-invalid");
      control?.removeAttribute("aria-describedby");
      let problem = null;
      if (field.required && !value) problem = fill(s.requiredField, { label: field.label ?? field.name });
      else if (value && field.type === "email" && !EMAIL.test(value)) problem = s.invalidEmail;
      if (problem) {
        ui.formError.textContent = problem;
        control?.setAttribute("aria-invalid", "true");
        control?.setAttribute("aria-describedby", ui.formError.id);
        control?.focus();
        return;
      }
      if (!value) continue;
      if (field.sendAsMessage) firstMessage = value;
      formData[field.name] = value;
    }
    const payload = { formData };
    if (this.#config.queue) payload.queue = this.#config.queue;
    ui.start.disabled = true;
    this.#startingEngagement = true;
    try {
      const { channelSid } = await this.client.actions.invoke("StartEngagement", payload);
      this.#startingEngagement = false;
      if (channelSid !== this.#t.channelSid && this.client.engagement?.channelSid === channelSid) this.#resetTranscript(channelSid);
      this.#render();
      for (const control of form.querySelectorAll("textarea")) control.value = "";
      ui.input.focus();
      if (firstMessage) await this.#send(channelSid, firstMessage);
    } catch (error) {
      if (error?.code === "outside_business_hours") {
        const opens = error.opensAt
          ? new Date(error.opensAt).toLocaleString([], { weekday: "long", hour: "2-digit", minute: "2-digit" })
          : null;
        ui.formError.textContent = opens ? fill(s.closed, { opens }) : s.closedSoon;
      } else if (error?.code !== "already_engaged") {
        ui.formError.textContent = error?.source === "client" && error.message ? error.message : s.startError;
      }
    } finally {
      this.#startingEngagement = false;
      ui.start.disabled = false;
      this.#render();
    }
  }

  #askRestart() {
    const s = this.#strings;
    this.#openConfirm({
      title: s.restartTitle,
      text: s.restartText,
      confirmLabel: s.restartConfirm,
      returnFocus: this.#ui.restart,
      onConfirm: async () => {
        try {
          await this.client.actions.invoke("RestartEngagement");
          this.#render();
          this.#firstFormControl()?.focus();
        } catch (error) {
          this.#ui.alert.textContent = OFFLINE_CODES.has(error?.code) ? `${s.restartFailed} ${s.errorOffline}` : s.restartFailed;
        }
      },
    });
  }

  /** A small confirmation inside the panel; the rest of the panel is inert meanwhile. */
  #openConfirm({ title, text, confirmLabel, onConfirm, returnFocus }) {
    this.#closeConfirm(false);
    const cancel = h("button", { class: "btn", type: "button", id: "sb-confirm-cancel", text: this.#strings.cancel, onclick: () => this.#closeConfirm(false) });
    const ok = h("button", { class: "btn btn-danger", type: "button", id: "sb-confirm-ok", text: confirmLabel, onclick: () => this.#closeConfirm(true) });
    const box = h(
      "div",
      { class: "confirm-box", role: "alertdialog", "aria-labelledby": "sb-confirm-title", "aria-describedby": "sb-confirm-text", id: "sb-confirm" },
      h("h3", { class: "confirm-title", id: "sb-confirm-title", text: title }),
      h("p", { class: "confirm-text", id: "sb-confirm-text", text }),
      h("div", { class: "confirm-actions" }, cancel, ok),
    );
    // Tab stays inside the two buttons.
    box.addEventListener("keydown", (event) => {
      if (event.key !== "Tab") return;
      const target = this.root.activeElement === ok ? cancel : ok;
      event.preventDefault();
      target.focus();
    });
    const overlay = h("div", { class: "confirm" }, box);
    this.#confirm = { overlay, onConfirm, returnFocus };
    this.#ui.header.inert = true;
    this.#ui.body.inert = true;
    this.#ui.panel.append(overlay);
    cancel.focus();
  }

  #closeConfirm(confirmed) {
    const current = this.#confirm;
    if (!current) return;
    this.#confirm = null;
    current.overlay.remove();
    this.#ui.header.inert = false;
    this.#ui.body.inert = false;
    if (confirmed) current.onConfirm();
    else current.returnFocus?.focus();
  }

  #firstFormControl() {
    return this.#ui.form.querySelector("input, textarea");
  }

  // ---------------------------------------------------------------- rendering

  #displayName(identity, role) {
    if (identity === this.client.identity) return this.#strings.you;
    if (role === "service") {
      const brand = this.#config.brand?.name;
      return brand ? fill(this.#strings.assistant, { brand }) : this.#strings.assistantUnbranded;
    }
    return identity;
  }

  #view() {
    const c = this.client;
    if (!c.sessionId) return this.#connectFailures > 0 || c.connectionState === "closed" ? "offline" : "loading";
    return c.engagement ? "chat" : "form";
  }

  #seenKey() {
    return `switchboard:webchat:seen:${this.client.identity}:${this.#t.channelSid}`;
  }

  /** Messages from others not yet seen with the panel open (kept across reloads). */
  #unread() {
    if (!this.#t.channelSid || !this.client.identity) return 0;
    const seen = Number(this.#store.get(this.#seenKey()) ?? -1);
    let count = 0;
    for (const m of this.#t.messages.values()) if (m.index > seen && m.author !== this.client.identity) count += 1;
    return count;
  }

  #markSeen() {
    if (!this.#t.channelSid || !this.client.identity) return;
    const max = Math.max(-1, ...this.#t.messages.keys());
    const seen = Number(this.#store.get(this.#seenKey()) ?? -1);
    if (max > seen) this.#store.set(this.#seenKey(), String(max));
  }

  #render() {
    if (!this.#ui.widget || this.#destroyed) return;
    const ui = this.#ui;
    const s = this.#strings;
    const c = this.client;
    const view = this.#view();
    const expanded = this.#expanded;
    const wasHidden = ui.panel.hidden;
    ui.widget.dataset.expanded = String(expanded);
    ui.widget.dataset.view = view;
    ui.launcher.hidden = expanded;
    ui.launcher.setAttribute("aria-expanded", String(expanded));
    ui.panel.hidden = !expanded;
    ui.form.hidden = view !== "form";
    ui.chat.hidden = view !== "chat";
    ui.offline.hidden = view !== "offline" && view !== "loading";
    ui.retry.hidden = view === "loading";
    ui.offlineText.textContent = view === "loading" ? s.connecting : s.offlineText;
    ui.restart.hidden = view !== "chat";
    if (!expanded && this.#confirm) this.#closeConfirm(false);

    const state = c.connectionState;
    let status;
    if (state === "reconnecting") status = s.reconnecting;
    else if (!c.sessionId) status = view === "offline" ? s.offlineStatus : s.connecting;
    else if (state === "closed") status = s.offlineStatus;
    else if (c.engagement) {
      const agents = (c.channel(c.engagement.channelSid)?.members ?? []).filter((m) => m.role === "agent").map((m) => m.identity);
      status = agents.length ? fill(s.chattingWith, { names: listNames(agents, s.and) }) : s.waiting;
    } else status = s.idle;
    if (ui.status.textContent !== status) ui.status.textContent = status;

    if (view === "form") ui.formIntro.textContent = this.#formNotice || this.#form?.intro || "";

    if (view === "chat" && expanded && this.#t.historyLoaded) this.#markSeen();
    const unread = view === "chat" && !expanded ? this.#unread() : 0;
    ui.badge.hidden = unread === 0;
    ui.badge.textContent = unread ? String(unread) : "";
    ui.launcher.setAttribute("aria-label", unread ? `${s.launcher} (${fill(s.unread, { count: unread })})` : s.launcher);

    this.#renderTranscript();
    this.#renderTyping();
    if (expanded && wasHidden) {
      this.#stick = true;
      this.#scrollToEnd();
      queueMicrotask(() => (this.#expanded && !this.#confirm ? this.#focusPanel() : null));
    }
  }

  #focusPanel() {
    if (this.root.activeElement && this.#ui.panel.contains(this.root.activeElement)) return;
    const view = this.#view();
    if (view === "chat") this.#ui.input.focus();
    else if (view === "form") (this.#firstFormControl() ?? this.#ui.start).focus();
    else this.#ui.minimize.focus();
  }

  #renderTyping() {
    const sid = this.#t.channelSid;
    const channel = sid ? this.client.channel(sid) : null;
    const names = (channel?.typing ?? []).filter((id) => id !== this.client.identity).map((id) => this.#displayName(id, "agent"));
    const text = names.length === 0 ? "" : fill(names.length === 1 ? this.#strings.typingOne : this.#strings.typingMany, { names: listNames(names, this.#strings.and) });
    if (this.#ui.typing.textContent !== text) this.#ui.typing.textContent = text;
  }

  /** The transcript's items in order: day separators, messages, notices, messages being sent. */
  #transcriptItems() {
    const t = this.#t;
    const delivered = new Set(t.messages.keys());
    const items = [];
    for (const m of t.messages.values()) items.push({ kind: "message", key: `m${m.index}`, sort: m.index, day: dayKey(m.dateCreated), message: m });
    for (const n of t.notices) items.push({ kind: "notice", key: n.key, sort: n.sort, day: null, text: n.text });
    t.pending = t.pending.filter((p) => !(p.index != null && delivered.has(p.index)));
    t.pending.forEach((p, i) => items.push({ kind: "pending", key: p.key, sort: Number.MAX_SAFE_INTEGER - 1000 + i, day: dayKey(p.createdAt), pending: p }));
    items.sort((a, b) => a.sort - b.sort);
    // The last message of ours that reached the broker says so.
    let lastSelf = null;
    for (const item of items) {
      const mine = item.kind === "message" ? item.message.author === this.client.identity : item.kind === "pending" && item.pending.state === "sent";
      if (mine) lastSelf = item;
    }
    const out = [];
    let day = null;
    for (const item of items) {
      const itemDay = item.day ?? day ?? dayKey();
      if (itemDay !== day) {
        out.push({ kind: "day", key: `d${itemDay}`, day: itemDay });
        day = itemDay;
      }
      item.showSent = item === lastSelf;
      out.push(item);
    }
    return out;
  }

  #renderTranscript() {
    const list = this.#ui.list;
    if (!this.#t.channelSid) {
      if (list.firstChild) list.replaceChildren();
      this.#elements.clear();
      return;
    }
    const wanted = [];
    const now = new Date();
    const todayKey = dayKey();
    for (const item of this.#transcriptItems()) {
      const sig = this.#signature(item, todayKey);
      let cached = this.#elements.get(item.key);
      if (!cached || cached.sig !== sig) {
        cached = { el: this.#itemElement(item, now), sig };
        this.#elements.set(item.key, cached);
      }
      wanted.push(cached.el);
    }
    const keep = new Set(wanted);
    for (const [key, { el }] of this.#elements) if (!keep.has(el)) this.#elements.delete(key);
    const current = [...list.children];
    const samePrefix = current.length <= wanted.length && current.every((el, i) => el === wanted[i]);
    if (samePrefix) list.append(...wanted.slice(current.length));
    else list.replaceChildren(...wanted);
    if (this.#stick) this.#scrollToEnd();
  }

  #scrollToEnd() {
    const list = this.#ui.messages;
    list.scrollTop = list.scrollHeight;
  }

  #signature(item, todayKey) {
    switch (item.kind) {
      case "day":
        return `${item.day}|${todayKey}`;
      case "message":
        return `${item.showSent}`;
      case "pending":
        return `${item.pending.state}|${item.showSent}|${item.pending.error?.code ?? ""}`;
      default:
        return "";
    }
  }

  #itemElement(item, now) {
    const s = this.#strings;
    if (item.kind === "day") {
      return h("li", { class: "day", dataset: { day: item.day } }, h("span", { text: dayLabel(item.day, s, now) }));
    }
    if (item.kind === "notice") return h("li", { class: "notice" }, h("span", { text: item.text }));
    if (item.kind === "message") {
      const m = item.message;
      const mine = m.author === this.client.identity;
      return this.#bubble({
        who: mine ? "self" : m.authorRole,
        label: this.#displayName(m.author, m.authorRole),
        body: m.body,
        time: m.dateCreated,
        index: m.index,
        state: mine ? "sent" : null,
        stateLine: mine && item.showSent ? h("p", { class: "msg-state", text: s.sent }) : null,
      });
    }
    const p = item.pending;
    let stateLine;
    if (p.state === "sending") stateLine = h("p", { class: "msg-state", text: s.sending });
    else if (p.state === "sent") stateLine = item.showSent ? h("p", { class: "msg-state", text: s.sent }) : null;
    else {
      const tooLarge = p.error?.code === "too_large";
      stateLine = h(
        "p",
        { class: "msg-state" },
        `${s.notSent} ${this.#errorText(p.error)} `,
        h("button", {
          class: "link-btn",
          type: "button",
          text: tooLarge ? s.edit : s.retrySend,
          onclick: () => {
            const sid = this.#t.channelSid;
            if (tooLarge || !sid) {
              this.#t.pending = this.#t.pending.filter((x) => x !== p);
              this.#ui.input.value = p.body;
              this.#ui.input.focus();
              this.#render();
            } else {
              this.#send(sid, p.body, p);
              this.#ui.input.focus();
            }
          },
        }),
      );
    }
    return this.#bubble({ who: "self", label: s.you, body: p.body, time: p.createdAt, index: p.index, state: p.state, stateLine });
  }

  #bubble({ who, label, body, time, index, state, stateLine }) {
    return h(
      "li",
      { class: `msg msg--${who}`, dataset: { ...(index == null ? {} : { index: String(index) }), ...(state ? { state } : {}) } },
      h(
        "div",
        { class: "msg-meta" },
        h("span", { class: "msg-author", text: label }),
        time ? h("time", { datetime: time, title: formatFullDate(time), text: formatTime(time) }) : null,
      ),
      h("div", { class: "msg-body", text: body }),
      stateLine,
    );
  }
}

/** The broker's WebSocket URL when the page itself is served by the broker. */
function defaultUrl() {
  const scheme = globalThis.location?.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${globalThis.location?.host}/ws`;
}

function svgIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({ width: "20", height: "20", viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true", focusable: "false" })) {
    svg.setAttribute(k, v);
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M21 11.5a8.4 8.4 0 0 1-12.2 7.5L3 21l2-5.6A8.4 8.4 0 1 1 21 11.5z");
  svg.append(path);
  return svg;
}
