import { SwitchboardError } from "./errors.js";

/** The broker's built-in action names: the contract's (version 1, with
 * history) and its extensions. Checked against the broker's own table by
 * its tests. */
export const BUILTIN_ACTIONS = Object.freeze([
  "Connect",
  "GetActions",
  "TriggerAction",
  "StartEngagement",
  "RestartEngagement",
  "ToggleChatVisibility",
  "MinimizeChat",
  "SendMessage",
  "SetInputText",
  "SendTyping",
  "JoinChannel",
  "LeaveChannel",
  "Subscribe",
  "Unsubscribe",
  "EndEngagement",
  "GetEngagements",
  "GetMessages",
]);

const BUILTIN = new Set(BUILTIN_ACTIONS);
const LISTENER_NAME = /^(before|after)(.+)$/;

function capitalize(name) {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

/** `beforeSendMessage` for ("before", "SendMessage"). */
export function listenerName(phase, action) {
  return `${phase}${capitalize(action)}`;
}

/**
 * The client-side actions framework, shaped like the web-chat Actions
 * Framework: every action invoked through it passes through its `before…`
 * listeners (which may change the payload or cancel), then its
 * implementation (the broker, unless replaced or registered client-side),
 * then its `after…` listeners (which see the payload and the result).
 */
export class Actions {
  #sendToServer;
  #onListenerError;
  #listeners = new Map();
  #implementations = new Map();
  #registered = new Map();
  #onList;

  /**
   * @param {(action: string, payload: object) => Promise<any>} sendToServer
   * @param {{onListenerError?: (error: unknown, name: string) => void, onList?: (actions: any[]) => void}} [hooks]
   */
  constructor(sendToServer, hooks = {}) {
    this.#sendToServer = sendToServer;
    this.#onListenerError = hooks.onListenerError ?? ((error) => queueMicrotask(() => { throw error; }));
    this.#onList = hooks.onList;
  }

  /**
   * Adds a listener: `"before<Action>"` is called as `fn(payload, cancel)`
   * before the action runs and may change `payload` in place, return a new
   * payload object, or cancel with `cancel(reason)` (or by returning `false`);
   * `"after<Action>"` is called as `fn(payload, result)` after it succeeded.
   * Listeners may be async. Returns a function that removes the listener.
   */
  addListener(eventName, fn) {
    if (typeof eventName !== "string" || !LISTENER_NAME.test(eventName)) {
      throw new TypeError(`listener names look like "beforeSendMessage" or "afterSendMessage", got ${JSON.stringify(eventName)}`);
    }
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    const [, phase, action] = LISTENER_NAME.exec(eventName);
    const key = listenerName(phase, action);
    let list = this.#listeners.get(key);
    if (!list) this.#listeners.set(key, (list = []));
    list.push(fn);
    return () => this.removeListener(key, fn);
  }

  removeListener(eventName, fn) {
    const list = this.#listeners.get(eventName);
    if (!list) return;
    const at = list.indexOf(fn);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) this.#listeners.delete(eventName);
  }

  removeAllListeners(eventName) {
    if (eventName === undefined) this.#listeners.clear();
    else this.#listeners.delete(eventName);
  }

  /**
   * Replaces the implementation of an action (built-in or registered):
   * `impl(payload, original)` is called instead, where `original(payload)`
   * runs the implementation that was in place before. Listeners still run.
   * Returns a function that restores the previous implementation.
   */
  replace(name, impl) {
    if (typeof name !== "string" || !name) throw new TypeError("action name must be a non-empty string");
    if (typeof impl !== "function") throw new TypeError("implementation must be a function");
    const previous = this.#implementations.get(name);
    const original = previous ?? ((payload) => this.#sendToServer(name, payload));
    const replaced = (payload) => impl(payload, original);
    this.#implementations.set(name, replaced);
    return () => {
      if (this.#implementations.get(name) !== replaced) return;
      if (previous) this.#implementations.set(name, previous);
      else this.#implementations.delete(name);
    };
  }

  /**
   * Registers a client-side custom action: `invoke(name, payload)` then runs
   * `impl(payload)` (with listeners) without involving the broker. The name
   * must not be a built-in action's or an already registered one's.
   */
  register(name, impl, { description = "" } = {}) {
    if (typeof name !== "string" || !name) throw new TypeError("action name must be a non-empty string");
    if (typeof impl !== "function") throw new TypeError("implementation must be a function");
    if (BUILTIN.has(name)) throw new Error(`${name} is a built-in action: use actions.replace() to change it`);
    if (this.#registered.has(name)) throw new Error(`action ${name} is already registered`);
    this.#registered.set(name, { name, kind: "client", description });
    this.#implementations.set(name, (payload) => impl(payload));
    return () => this.unregister(name);
  }

  unregister(name) {
    if (!this.#registered.delete(name)) return false;
    this.#implementations.delete(name);
    return true;
  }

  /** True when `name` has a client-side implementation (registered or replaced). */
  has(name) {
    return this.#implementations.has(name);
  }

  /**
   * Runs an action through the framework and resolves with its result.
   * Rejects with a SwitchboardError whose `code` is the broker's error code,
   * or `rejected` when a before-listener cancelled.
   */
  async invoke(name, payload) {
    if (typeof name !== "string" || !name) throw new TypeError("action name must be a non-empty string");
    let current = payload == null ? {} : { ...payload };

    for (const fn of [...(this.#listeners.get(listenerName("before", name)) ?? [])]) {
      let cancelled = null;
      const cancel = (reason) => {
        cancelled = reason == null ? `${name} was cancelled by a before${capitalize(name)} listener` : String(reason);
      };
      const returned = await fn(current, cancel);
      if (returned === false && cancelled === null) cancel();
      if (cancelled !== null) {
        const err = new SwitchboardError("rejected", cancelled, { source: "client" });
        err.action = name;
        throw err;
      }
      if (returned && typeof returned === "object") current = returned;
    }

    const impl = this.#implementations.get(name) ?? ((p) => this.#sendToServer(name, p));
    const result = await impl(current);

    for (const fn of [...(this.#listeners.get(listenerName("after", name)) ?? [])]) {
      try {
        await fn(current, result);
      } catch (error) {
        this.#onListenerError(error, listenerName("after", name));
      }
    }
    return result;
  }

  /**
   * Runs a configured custom action by its reference name (sends
   * `TriggerAction`); `payload` is merged over the configured preset.
   */
  trigger(referenceName, payload) {
    const body = { name: referenceName };
    if (payload !== undefined) body.payload = payload;
    return this.invoke("TriggerAction", body);
  }

  /**
   * The actions this session may use (sends `GetActions`): the broker's
   * `{name, kind, description, payload?}` list, followed by the client-side
   * registered actions with `kind: "client"`.
   */
  async list() {
    const result = await this.invoke("GetActions");
    const actions = Array.isArray(result?.actions) ? result.actions : [];
    this.#onList?.(actions);
    return [...actions, ...[...this.#registered.values()].map((a) => ({ ...a }))];
  }
}
