// The widget's stylesheet. It lives in the widget's shadow root, so the host
// page's CSS cannot reach in and this cannot leak out; `:host { all: initial }`
// also stops inherited properties (font, colour, line height) of the page.
// Every colour and size a site may change is a custom property set from the
// `theme` option on the host element.

export const THEME_VARIABLES = Object.freeze({
  accent: "--sbw-accent",
  accentText: "--sbw-accent-text",
  background: "--sbw-background",
  surface: "--sbw-surface",
  text: "--sbw-text",
  mutedText: "--sbw-muted",
  border: "--sbw-border",
  danger: "--sbw-danger",
  font: "--sbw-font",
  fontSize: "--sbw-font-size",
  radius: "--sbw-radius",
  offset: "--sbw-offset",
  zIndex: "--sbw-z",
  width: "--sbw-width",
  height: "--sbw-height",
});

export const STYLES = `
:host {
  all: initial;
  --sbw-accent: #2250c8;
  --sbw-accent-text: #ffffff;
  --sbw-background: #ffffff;
  --sbw-surface: #f4f6fa;
  --sbw-text: #1c2330;
  --sbw-muted: #4f5b6d;
  --sbw-border: #d8dee8;
  --sbw-danger: #b3261e;
  --sbw-font: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  --sbw-font-size: 15px;
  --sbw-radius: 14px;
  --sbw-offset: 1.5rem;
  --sbw-z: 2147483000;
  --sbw-width: 23rem;
  --sbw-height: 36rem;
}
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.sbw {
  position: fixed;
  bottom: var(--sbw-offset);
  right: var(--sbw-offset);
  z-index: var(--sbw-z);
  display: flex;
  flex-direction: column;
  align-items: flex-end;
  gap: 0.75rem;
  font-family: var(--sbw-font);
  font-size: var(--sbw-font-size);
  line-height: 1.45;
  color: var(--sbw-text);
  text-align: left;
}
.sbw[data-position="bottom-left"] { right: auto; left: var(--sbw-offset); align-items: flex-start; }
.sbw :focus-visible { outline: 3px solid #7ea2ff; outline-offset: 2px; }
.sr-only {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
button, input, textarea { font: inherit; color: inherit; }
.btn {
  font-weight: 600; padding: 0.5rem 0.95rem; border-radius: 8px; cursor: pointer;
  border: 1px solid var(--sbw-border); background: var(--sbw-background); color: var(--sbw-text);
}
.btn:hover { filter: brightness(0.96); }
.btn-primary { background: var(--sbw-accent); border-color: var(--sbw-accent); color: var(--sbw-accent-text); }
.btn-danger { background: var(--sbw-danger); border-color: var(--sbw-danger); color: #fff; }
.btn:disabled { opacity: 0.6; cursor: not-allowed; }
.link-btn { border: none; background: none; padding: 0; color: inherit; font-weight: 600; text-decoration: underline; cursor: pointer; font-size: inherit; }

.launcher {
  display: inline-flex; align-items: center; gap: 0.5rem; padding: 0.8rem 1.2rem;
  border: none; border-radius: 999px; font-weight: 600; cursor: pointer;
  background: var(--sbw-accent); color: var(--sbw-accent-text);
  box-shadow: 0 10px 30px rgba(20, 32, 60, 0.18);
}
.launcher:hover { filter: brightness(0.93); }
.badge {
  min-width: 1.4rem; padding: 0 0.4rem; border-radius: 999px; text-align: center;
  background: var(--sbw-background); color: var(--sbw-accent); font-size: 0.8rem; font-weight: 700;
}

.panel {
  width: min(var(--sbw-width), calc(100vw - 2rem));
  height: min(var(--sbw-height), calc(100vh - 3rem));
  display: flex; flex-direction: column; overflow: hidden; position: relative;
  background: var(--sbw-background); border: 1px solid var(--sbw-border);
  border-radius: var(--sbw-radius); box-shadow: 0 10px 30px rgba(20, 32, 60, 0.18);
}
.header {
  display: flex; align-items: center; gap: 0.4rem; padding: 0.75rem 0.75rem 0.75rem 1rem;
  background: var(--sbw-accent); color: var(--sbw-accent-text);
}
.header-text { flex: 1; min-width: 0; }
.title { margin: 0; font-size: 1.05em; font-weight: 700; }
.status { margin: 0; font-size: 0.85em; overflow-wrap: anywhere; }
.header-btn {
  font-size: 0.85em; font-weight: 600; padding: 0.3rem 0.6rem; border-radius: 6px; cursor: pointer;
  border: 1px solid currentColor; background: transparent; color: inherit;
}
.header-btn:hover { background: rgba(255, 255, 255, 0.15); }
.minimize { font-size: 1.1em; line-height: 1; padding: 0.25rem 0.55rem; }

.body { flex: 1; min-height: 0; display: flex; flex-direction: column; }
.form { padding: 1rem; overflow-y: auto; flex: 1; }
.intro { margin: 0 0 1rem; color: var(--sbw-muted); }
.field { display: flex; flex-direction: column; gap: 0.3rem; margin-bottom: 0.8rem; }
.field label { font-weight: 600; font-size: 0.92em; }
.optional { font-weight: 400; color: var(--sbw-muted); }
.field input, .field textarea, .compose textarea {
  padding: 0.5rem 0.65rem; border: 1px solid #8c96a6; border-radius: 8px;
  background: var(--sbw-background); width: 100%;
}
.field textarea { resize: vertical; }
.field [aria-invalid="true"] { border-color: var(--sbw-danger); }
.form .btn { width: 100%; }
.error { color: var(--sbw-danger); font-size: 0.92em; margin: 0 0 0.6rem; }
.error:empty { display: none; }

.chat { flex: 1; min-height: 0; display: flex; flex-direction: column; background: var(--sbw-surface); }
.messages { flex: 1; overflow-y: auto; }
.message-list {
  list-style: none; margin: 0; padding: 0.9rem;
  display: flex; flex-direction: column; gap: 0.55rem;
}
.msg { max-width: 85%; display: flex; flex-direction: column; align-self: flex-start; }
.msg-meta { display: flex; gap: 0.5rem; align-items: baseline; font-size: 0.8em; color: var(--sbw-muted); margin: 0 0.3rem 0.15rem; }
.msg-author { font-weight: 600; }
.msg-body {
  padding: 0.5rem 0.75rem; border-radius: 14px; white-space: pre-wrap; overflow-wrap: anywhere;
  background: var(--sbw-background); border: 1px solid var(--sbw-border); border-bottom-left-radius: 4px;
}
.msg--self { align-self: flex-end; align-items: flex-end; }
.msg--self .msg-body { background: var(--sbw-accent); border-color: var(--sbw-accent); color: var(--sbw-accent-text); border-bottom-left-radius: 14px; border-bottom-right-radius: 4px; }
.msg--service .msg-body { background: #eef7f1; border-color: #cfe6d7; }
.msg[data-state="sending"] .msg-body { opacity: 0.75; }
.msg[data-state="failed"] .msg-body { background: var(--sbw-background); color: var(--sbw-text); border: 1px dashed var(--sbw-danger); }
.msg-state { font-size: 0.8em; color: var(--sbw-muted); margin: 0.15rem 0.3rem 0; }
.msg[data-state="failed"] .msg-state { color: var(--sbw-danger); }
.notice, .day { align-self: center; max-width: 100%; font-size: 0.82em; color: var(--sbw-muted); text-align: center; }
.day { font-weight: 600; text-transform: none; padding: 0.2rem 0.7rem; border-radius: 999px; background: var(--sbw-background); border: 1px solid var(--sbw-border); }

.typing { margin: 0; padding: 0.25rem 0.9rem; min-height: 1.8rem; font-size: 0.85em; font-style: italic; color: var(--sbw-muted); }
.alert {
  margin: 0 0.6rem 0.4rem; padding: 0.45rem 0.7rem; border-radius: 8px; font-size: 0.88em;
  background: #fdeceb; color: #8a1c15; border: 1px solid #f3c1bd;
}
.alert:empty { display: none; }
.compose { display: flex; gap: 0.5rem; align-items: flex-end; padding: 0.6rem; border-top: 1px solid var(--sbw-border); background: var(--sbw-background); }
.compose textarea { flex: 1; resize: none; min-height: 2.6rem; }

.offline { flex: 1; display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 0.5rem; padding: 1rem; text-align: center; color: var(--sbw-muted); }
.offline p { margin: 0; }

.confirm {
  position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  padding: 1rem; background: rgba(20, 32, 60, 0.45);
}
.confirm-box { background: var(--sbw-background); border-radius: 12px; padding: 1rem 1.1rem; max-width: 20rem; box-shadow: 0 10px 30px rgba(20, 32, 60, 0.25); }
.confirm-title { margin: 0 0 0.4rem; font-size: 1.02em; font-weight: 700; }
.confirm-text { margin: 0 0 1rem; color: var(--sbw-muted); }
.confirm-actions { display: flex; gap: 0.5rem; justify-content: flex-end; }

/* Phones: the open panel takes the whole screen. */
@media (max-width: 480px) {
  .sbw { bottom: 0.75rem; right: 0.75rem; }
  .sbw[data-position="bottom-left"] { left: 0.75rem; }
  .sbw[data-expanded="true"] { inset: 0; }
  .sbw[data-expanded="true"] .panel {
    width: 100vw; height: 100vh; height: 100dvh; border-radius: 0; border: none; box-shadow: none;
  }
}
@media (prefers-reduced-motion: no-preference) {
  .launcher, .btn { transition: filter 120ms ease; }
}
`;
