// DOM and formatting helpers of the web-chat widget (no dependencies).

/** Creates an element with attributes, properties and children (text is never parsed as HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** "14:05" for an RFC 3339 time. */
export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "Tuesday 3 March 2026, 14:05": the full date, for a time's tooltip. */
export function formatFullDate(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString([], { weekday: "long", day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** The local calendar day of a time, as "YYYY-MM-DD" (for grouping). */
export function dayKey(iso) {
  const date = iso ? new Date(iso) : new Date();
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** "Today", "Yesterday", "Monday 2 March", or with the year when not this year. */
export function dayLabel(key, strings, now = new Date()) {
  const [y, m, d] = key.split("-").map(Number);
  const date = new Date(y, m - 1, d);
  const today = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const days = Math.round((today - date) / 86_400_000);
  if (days === 0) return strings.today;
  if (days === 1) return strings.yesterday;
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (y !== now.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString([], options);
}

/** Fills `{name}` placeholders of a configurable text. */
export function fill(template, values = {}) {
  return String(template ?? "").replace(/\{(\w+)\}/g, (_, key) => (key in values ? String(values[key]) : `{${key}}`));
}

/** "Grace", "Grace and Ada", "Grace, Ada and Alan". */
export function listNames(names, and = "and") {
  if (names.length <= 1) return names.join("");
  return `${names.slice(0, -1).join(", ")} ${and} ${names.at(-1)}`;
}

/** Calls `fn` at most once every `ms` (leading edge). */
export function throttle(fn, ms) {
  let last = 0;
  return (...args) => {
    const now = Date.now();
    if (now - last < ms) return;
    last = now;
    fn(...args);
  };
}

/** Calls `fn` once `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}

/** Submits a textarea's form on Enter (Shift+Enter makes a new line). */
export function submitOnEnter(textarea) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      textarea.form?.requestSubmit();
    }
  });
}

/**
 * Synchronous key-value storage that never throws: `localStorage` when the
 * page may use it, else memory (private mode, sandboxed frames).
 */
export function safeStorage(preferred) {
  const memory = new Map();
  let store = preferred;
  if (store === undefined) {
    try {
      store = globalThis.localStorage;
      store?.getItem("__switchboard_probe__");
    } catch {
      store = null;
    }
  }
  return {
    get(key) {
      try {
        const value = store ? store.getItem(key) : memory.get(key);
        return typeof value === "string" ? value : null;
      } catch {
        return memory.get(key) ?? null;
      }
    },
    set(key, value) {
      memory.set(key, String(value));
      try {
        store?.setItem(key, String(value));
      } catch {
        /* full or disabled: memory keeps it for this page */
      }
    },
  };
}
