/**
 * Where the SDK keeps an anonymous customer's `resumeToken`, so that a
 * refreshed tab reconnects as the same identity. Any object with
 * `getItem`/`setItem`/`removeItem` (synchronous or returning promises) works:
 * `localStorage`, `sessionStorage`, or your own.
 */
export class MemoryStorage {
  #items = new Map();

  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }

  setItem(key, value) {
    this.#items.set(key, String(value));
  }

  removeItem(key) {
    this.#items.delete(key);
  }

  clear() {
    this.#items.clear();
  }
}

/** `localStorage` when the environment has a working one, else a MemoryStorage. */
export function defaultStorage() {
  try {
    const storage = globalThis.localStorage;
    if (storage) {
      const probe = "__switchboard_probe__";
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    // Storage disabled (private mode, sandboxed iframe...): fall through.
  }
  return new MemoryStorage();
}
