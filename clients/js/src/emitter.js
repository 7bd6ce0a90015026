/** A tiny event emitter whose listeners cannot break the emitter. */
export class Emitter {
  #handlers = new Map();
  #onListenerError;

  /** @param {(error: unknown, eventName: string) => void} [onListenerError] */
  constructor(onListenerError) {
    this.#onListenerError = onListenerError;
  }

  on(name, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    let set = this.#handlers.get(name);
    if (!set) this.#handlers.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  once(name, fn) {
    const off = this.on(name, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  off(name, fn) {
    const set = this.#handlers.get(name);
    if (!set) return;
    set.delete(fn);
    if (set.size === 0) this.#handlers.delete(name);
  }

  removeAll(name) {
    if (name === undefined) this.#handlers.clear();
    else this.#handlers.delete(name);
  }

  listenerCount(name) {
    return this.#handlers.get(name)?.size ?? 0;
  }

  emit(name, ...args) {
    const set = this.#handlers.get(name);
    if (!set) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (error) {
        if (this.#onListenerError) this.#onListenerError(error, name);
        else queueMicrotask(() => { throw error; });
      }
    }
    return true;
  }
}
