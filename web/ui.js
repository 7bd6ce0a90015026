// Small DOM helpers shared by the demo widget and the agent console.

export const $ = (id) => document.getElementById(id);

/** The broker's WebSocket URL, from the page's own address. */
export function brokerUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

/** "14:05" for an RFC 3339 time (or now). */
export function formatTime(iso) {
  const date = iso ? new Date(iso) : new Date();
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "Today", "Yesterday" or "Monday 2 March" for an RFC 3339 time. */
export function dayLabel(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(new Date()) - day(date)) / 86_400_000);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  return date.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long" });
}

/** "just now", "3 min ago", "2 h ago". */
export function formatAgo(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  return `${Math.round(minutes / 60)} h ago`;
}

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

/**
 * One message of a transcript. `who` is "self", "agent", "customer",
 * "service" or "system"; `label` names the author; `time` is RFC 3339.
 */
export function messageItem({ who, label, body, time, index }) {
  const date = time ? new Date(time) : null;
  const full = date && !Number.isNaN(date.getTime()) ? date.toLocaleString([], { dateStyle: "full", timeStyle: "short" }) : null;
  return h(
    "li",
    { class: `message message--${who}`, dataset: index == null ? {} : { index: String(index) } },
    h(
      "div",
      { class: "message-meta" },
      h("span", { class: "message-author", text: label }),
      full ? h("time", { datetime: time, title: full, text: formatTime(time) }) : null,
    ),
    h("div", { class: "message-body", text: body }),
  );
}

/** A line that is not a message (someone joined, the chat ended, …). */
export function noticeItem(text) {
  return h("li", { class: "message message--notice" }, h("span", { text }));
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

/** "Grace is typing…", "Grace and Ada are typing…" or "". */
export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  return `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
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
