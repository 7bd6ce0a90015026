// Waiting for conditions, never for fixed times.

/** Polls `check` until it returns a truthy value; rejects after `timeout` ms. */
export async function waitFor(check, { timeout = 10_000, interval = 20, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const err = new Error(`timed out after ${timeout} ms waiting for ${message}`);
      if (lastError) err.cause = lastError;
      throw err;
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Resolves with the next `event` of `emitter` (anything with `on` returning
 * an unsubscribe function, or `on`/`off`) that satisfies `predicate`.
 */
export function nextEvent(emitter, event, predicate = () => true, { timeout = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    let off;
    const timer = setTimeout(() => {
      off?.();
      reject(new Error(`timed out after ${timeout} ms waiting for event ${event}`));
    }, timeout);
    const handler = (data) => {
      let ok = false;
      try {
        ok = predicate(data);
      } catch (error) {
        clearTimeout(timer);
        off?.();
        reject(error);
        return;
      }
      if (ok) {
        clearTimeout(timer);
        off?.();
        resolve(data);
      }
    };
    const ret = emitter.on(event, handler);
    off = typeof ret === "function" ? ret : () => emitter.off(event, handler);
  });
}

/** Collects every `event` of `emitter` into an array (returned with a `stop()`). */
export function collect(emitter, event) {
  const items = [];
  const off = emitter.on(event, (data) => items.push(data));
  items.stop = off;
  return items;
}
