// The agent console of the Switchboard demo: a queue of engagements, joined
// chats with their transcripts, replies and typing indicators.
import { SwitchboardClient } from "/sdk/index.js";
import {
  $,
  brokerUrl,
  dayLabel,
  formatAgo,
  formatTime,
  h,
  messageItem,
  noticeItem,
  submitOnEnter,
  throttle,
  typingText,
} from "/static/ui.js";

const QUEUE = "queue:default";
const NAME_KEY = "switchboard.console.name";
const BASE_TITLE = document.title;

let client = null;
let chats = new Map(); // channelSid -> {channelSid, identity, formData, startedAt, items: [], ended, unread}
let selected = null;

const signInSection = $("sign-in");
const signInForm = $("sign-in-form");
const signInError = $("sign-in-error");
const signInButton = $("sign-in-button");
const workspace = $("workspace");
const connStatus = $("conn-status");
const agentBadge = $("agent-badge");
const signOutButton = $("sign-out");
const queueList = $("queue-list");
const chatList = $("chat-list");
const transcript = $("transcript");
const transcriptLog = $("transcript-log"); // scrolls the transcript
const typingLine = $("typing");
const reply = $("reply");
const replyForm = $("reply-form");
const replyButton = $("reply-button");

// ------------------------------------------------------------------ sign-in

async function fetchDemoToken(name) {
  const response = await fetch(`/demo/token?sub=${encodeURIComponent(name)}&role=agent`);
  if (response.status === 404) throw new Error("Demo sign-in is disabled on this broker: paste an agent token instead.");
  if (!response.ok) throw new Error(`The broker refused the demo sign-in (HTTP ${response.status}).`);
  const { token } = await response.json();
  return token;
}

async function signIn(name, pastedToken) {
  signInError.textContent = "";
  signInButton.disabled = true;
  try {
    let token;
    if (pastedToken) token = pastedToken;
    else {
      await fetchDemoToken(name); // fail early with a readable message
      token = () => fetchDemoToken(name); // short-lived: a fresh one for every (re)connect
    }
    const next = new SwitchboardClient({ url: brokerUrl(), encoding: "json", token, storage: false });
    wire(next);
    client = next;
    window.switchboard = client; // handy from the browser console, and for tests
    const session = await client.connect();
    if (session.role !== "agent") {
      client.close();
      throw new Error(`That token is for a ${session.role}, not an agent.`);
    }
    await client.actions.invoke("Subscribe", { channel: QUEUE });
    if (!pastedToken) sessionStorage.setItem(NAME_KEY, name);
    restoreChats();
    signInSection.hidden = true;
    workspace.hidden = false;
    agentBadge.hidden = false;
    agentBadge.textContent = `Signed in as ${session.identity}`;
    signOutButton.hidden = false;
    renderAll();
  } catch (error) {
    client?.close();
    client = null;
    signInError.textContent = error.code ? `Could not sign in (${error.code}): ${error.message}` : error.message;
  } finally {
    signInButton.disabled = false;
  }
}

signInForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("agent-name").value.trim();
  const pasted = $("agent-token").value.trim();
  if (!name && !pasted) {
    signInError.textContent = "Please enter your name.";
    $("agent-name").focus();
    return;
  }
  signIn(name, pasted || null);
});

signOutButton.addEventListener("click", () => {
  sessionStorage.removeItem(NAME_KEY);
  if (client) sessionStorage.removeItem(chatsKey());
  client?.close();
  client = null;
  chats = new Map();
  selected = null;
  workspace.hidden = true;
  signInSection.hidden = false;
  agentBadge.hidden = true;
  signOutButton.hidden = true;
  renderStatus();
  $("agent-name").focus();
});

// ------------------------------------------------------------------ chats kept across a reload

function chatsKey() {
  return `switchboard.console.chats:${client?.identity ?? ""}`;
}

function saveChats() {
  const list = [...chats.values()].filter((c) => !c.ended).map(({ channelSid, identity, formData, startedAt }) => ({ channelSid, identity, formData, startedAt }));
  sessionStorage.setItem(chatsKey(), JSON.stringify(list));
}

function restoreChats() {
  let saved = [];
  try {
    saved = JSON.parse(sessionStorage.getItem(chatsKey()) ?? "[]");
  } catch {
    saved = [];
  }
  const open = new Set(client.queue.map((e) => e.channelSid));
  for (const entry of saved) {
    // Memberships live in the broker: a chat still open is still ours.
    if (!open.has(entry.channelSid)) continue;
    const chat = addChat(entry);
    if (client.can("GetMessages")) loadHistory(chat).then(() => selected === chat.channelSid && select(chat.channelSid));
    else addItem(chat, { kind: "notice", text: "Messages from before the reload are not shown: this broker does not offer history yet." });
  }
  saveChats();
}

// ------------------------------------------------------------------ model

function customerName(chat) {
  return String(chat?.formData?.name || chat?.identity || "Customer");
}

function labelFor(chat, identity, role) {
  if (identity === client.identity) return "You";
  if (role === "customer") return customerName(chat);
  if (role === "service") return `${identity} (bot)`;
  return identity;
}

function addChat(engagement) {
  if (chats.has(engagement.channelSid)) return chats.get(engagement.channelSid);
  const chat = {
    channelSid: engagement.channelSid,
    identity: engagement.identity,
    formData: engagement.formData ?? {},
    startedAt: engagement.startedAt,
    items: [],
    indices: new Set(),
    ended: false,
    unread: 0,
    last: null, // the newest message, for the list's preview
  };
  chats.set(chat.channelSid, chat);
  return chat;
}

function addItem(chat, item) {
  // "The engagement ended." stays the last line: a member's leaving can be
  // told after the end (its push waits for the store, the end's does not).
  const endAt = chat.items.findIndex((i) => i.ends);
  if (endAt >= 0 && !item.ends) chat.items.splice(endAt, 0, item);
  else chat.items.push(item);
  if (item.kind === "message") noteMessage(chat, item.message);
  const unseen = selected !== chat.channelSid || document.visibilityState === "hidden";
  if (item.kind === "message" && unseen && item.message.author !== client.identity) chat.unread += 1;
  if (selected === chat.channelSid) renderTranscript(chat);
  renderTitle();
}

/** The newest message worth previewing: a bot's greeting says nothing about the chat. */
function noteMessage(chat, message) {
  if (message.authorRole === "service") return;
  if (!chat.last || message.index > chat.last.index) chat.last = message;
}

function renderItem(chat, item) {
  if (item.kind === "notice") return noticeItem(item.text);
  const m = item.message;
  const who = m.author === client.identity ? "self" : m.authorRole;
  return messageItem({ who, label: labelFor(chat, m.author, m.authorRole), body: m.body, time: m.dateCreated, index: m.index });
}

/** The selected chat's transcript, with a line for each new day. */
function renderTranscript(chat) {
  const atBottom = transcriptLog.scrollHeight - transcriptLog.scrollTop - transcriptLog.clientHeight < 40;
  const nodes = [];
  let day = null;
  for (const item of chat.items) {
    const itemDay = item.kind === "message" ? new Date(item.message.dateCreated).toDateString() : day;
    if (itemDay && itemDay !== day) {
      nodes.push(h("li", { class: "day-separator" }, h("span", { text: dayLabel(item.message.dateCreated) })));
      day = itemDay;
    }
    nodes.push(renderItem(chat, item));
  }
  transcript.replaceChildren(...nodes);
  if (atBottom || chat.items.at(-1)?.message?.author === client.identity) transcriptLog.scrollTop = transcriptLog.scrollHeight;
}

/** The tab's title counts the chats with unread messages. */
function renderTitle() {
  const unread = [...chats.values()].filter((c) => c.unread > 0).length;
  document.title = unread ? `(${unread}) ${BASE_TITLE}` : BASE_TITLE;
}

document.addEventListener("visibilitychange", () => {
  const chat = selected && chats.get(selected);
  if (document.visibilityState === "visible" && chat?.unread) {
    chat.unread = 0;
    renderChats();
    renderTitle();
  }
});

/** Asks before something that cannot be undone; resolves true when confirmed. */
function confirmAction({ title, text, ok }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function join(engagement) {
  try {
    const result = await client.actions.invoke("JoinChannel", { channelSid: engagement.channelSid });
    const chat = addChat(engagement);
    chat.ended = false;
    saveChats();
    if (result.lastIndex >= 0 && client.can("GetMessages")) await loadHistory(chat);
    else if (result.lastIndex >= 0) addItem(chat, { kind: "notice", text: "Earlier messages are not shown: this broker does not offer history yet." });
    select(chat.channelSid);
  } catch (error) {
    connStatus.textContent = `Could not join (${error.code}).`;
  }
}

async function loadHistory(chat) {
  try {
    const { messages } = await client.actions.invoke("GetMessages", { channelSid: chat.channelSid, limit: 100 });
    const older = messages.filter((m) => !chat.indices.has(m.index));
    for (const m of older) {
      chat.indices.add(m.index);
      noteMessage(chat, m);
    }
    chat.items = [...older.map((message) => ({ kind: "message", message })), ...chat.items];
  } catch {
    // Live messages keep coming regardless.
  }
}

function select(channelSid) {
  selected = channelSid;
  const chat = chats.get(channelSid);
  if (chat) chat.unread = 0;
  renderAll();
  if (chat) {
    renderTranscript(chat);
    transcriptLog.scrollTop = transcriptLog.scrollHeight;
    reply.focus();
  }
}

// ------------------------------------------------------------------ rendering

function renderStatus() {
  const state = client?.connectionState ?? "idle";
  connStatus.dataset.state = state;
  connStatus.textContent = {
    idle: "",
    connecting: "Connecting…",
    connected: "Online",
    reconnecting: "Reconnecting…",
    closed: client ? "Offline" : "",
  }[state];
}

/** Waiting = no agent or service has joined it yet (nor this console). */
function isWaiting(engagement) {
  if (chats.has(engagement.channelSid)) return false;
  return !(engagement.members ?? []).some((m) => m.role === "agent" || m.role === "service");
}

function renderQueue() {
  const queue = client.queue.filter(isWaiting).sort((a, b) => String(a.startedAt).localeCompare(String(b.startedAt)));
  $("queue-count").textContent = String(queue.length);
  $("queue-empty").hidden = queue.length > 0;
  queueList.replaceChildren(
    ...queue.map((engagement) => {
      const joined = chats.has(engagement.channelSid);
      const name = customerName(engagement);
      const question = engagement.formData?.question;
      return h(
        "li",
        { class: "entry", dataset: { channelSid: engagement.channelSid } },
        h(
          "div",
          { class: "entry-text" },
          h("span", { class: "entry-name", text: name }),
          question ? h("span", { class: "entry-preview", text: String(question) }) : null,
          h("span", { class: "entry-meta", text: `waiting since ${formatTime(engagement.startedAt)} · ${formatAgo(engagement.startedAt)}` }),
        ),
        h("button", {
          class: joined ? "button" : "button primary",
          type: "button",
          "aria-label": `${joined ? "Open" : "Join"} chat with ${name}`,
          text: joined ? "Open" : "Join",
          onclick: () => (joined ? select(engagement.channelSid) : join(engagement)),
        }),
      );
    }),
  );
}

function renderChats() {
  const list = [...chats.values()];
  $("chats-count").textContent = String(list.length);
  $("chats-empty").hidden = list.length > 0;
  chatList.replaceChildren(
    ...list.map((chat) =>
      h(
        "li",
        { class: `entry${chat.channelSid === selected ? " entry--selected" : ""}`, dataset: { channelSid: chat.channelSid } },
        h(
          "button",
          {
            class: "entry-button",
            type: "button",
            "aria-current": chat.channelSid === selected ? "true" : null,
            onclick: () => select(chat.channelSid),
          },
          h(
            "span",
            { class: "entry-text" },
            h("span", { class: "entry-name", text: customerName(chat) }),
            h("span", { class: "entry-preview", text: previewOf(chat) }),
            h("span", { class: "entry-meta", text: `${chat.ended ? "ended" : typingOf(chat).length ? "typing…" : "active"} · started ${formatDateTime(chat.startedAt)}` }),
          ),
          chat.unread ? h("span", { class: "count count--unread", "aria-label": `${chat.unread} unread`, text: String(chat.unread) }) : null,
        ),
      ),
    ),
  );
}

function previewOf(chat) {
  if (chat.last) return `${chat.last.author === client.identity ? "You: " : ""}${chat.last.body}`;
  return String(chat.formData?.question ?? "No messages yet");
}

/** "14:05" today, "Mon 14:05" otherwise. */
function formatDateTime(iso) {
  const date = new Date(iso);
  if (new Date().toDateString() === date.toDateString()) return formatTime(iso);
  return `${date.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short" })} ${formatTime(iso)}`;
}

function typingOf(chat) {
  const channel = client.channel(chat.channelSid);
  return (channel?.typing ?? []).filter((id) => id !== client.identity);
}

function renderConversation() {
  const chat = selected ? chats.get(selected) : null;
  $("empty-state").hidden = Boolean(chat);
  $("chat-view").hidden = !chat;
  if (!chat) return;
  $("chat-title").textContent = customerName(chat);
  $("chat-subtitle").textContent = chat.ended ? "This engagement has ended." : `Started ${formatDateTime(chat.startedAt)}`;
  $("end-button").hidden = chat.ended;
  $("leave-button").textContent = chat.ended ? "Close" : "Leave chat";
  const details = Object.entries(chat.formData ?? {}).filter(([key]) => key !== "name");
  $("chat-details").replaceChildren(...details.flatMap(([key, value]) => [h("dt", { text: key }), h("dd", { text: String(value) })]));
  $("chat-details").hidden = details.length === 0;
  const channel = client.channel(chat.channelSid);
  const typists = typingOf(chat).map((id) => labelFor(chat, id, channel?.members.find((m) => m.identity === id)?.role ?? (id === chat.identity ? "customer" : "agent")));
  typingLine.textContent = typingText(typists);
  reply.disabled = chat.ended;
  replyButton.disabled = chat.ended;
}

function renderAll() {
  renderStatus();
  renderTitle();
  if (!client?.sessionId) return;
  renderQueue();
  renderChats();
  renderConversation();
}

// ------------------------------------------------------------------ SDK events

function wire(c) {
  const live = (fn) => (data) => {
    if (c === client) fn(data);
  };
  c.on("connectionStateChanged", live(renderAll));
  c.on("stateChanged", live(() => {
    renderQueue();
    renderChats();
    renderConversation();
  }));
  c.on("messageAdded", live((message) => {
    const chat = chats.get(message.channelSid);
    if (!chat || chat.indices.has(message.index)) return;
    chat.indices.add(message.index);
    addItem(chat, { kind: "message", message });
    renderChats();
  }));
  c.on("gap", live((e) => {
    const chat = chats.get(e.channelSid);
    if (chat) addItem(chat, { kind: "notice", text: "Some messages sent while the console was offline are not shown." });
  }));
  c.on("typingStarted", live(renderAll));
  c.on("typingEnded", live(renderAll));
  c.on("memberJoined", live((e) => {
    const chat = chats.get(e.channelSid);
    if (chat && e.identity !== client.identity) addItem(chat, { kind: "notice", text: `${labelFor(chat, e.identity, e.role)} joined` });
  }));
  c.on("memberLeft", live((e) => {
    const chat = chats.get(e.channelSid);
    if (!chat || e.identity === client.identity) return;
    if (e.reason === "ended") return; // the end says it
    const who = e.identity === chat.identity ? customerName(chat) : e.identity;
    addItem(chat, { kind: "notice", text: e.reason === "restart" ? `${who} restarted the chat and left` : `${who} left the chat` });
  }));
  c.on("engagementEnded", live((e) => {
    const chat = chats.get(e.channelSid);
    if (chat && !chat.ended) {
      chat.ended = true;
      addItem(chat, { kind: "notice", text: "The engagement ended.", ends: true });
      saveChats();
    }
    renderAll();
  }));
}

// ------------------------------------------------------------------ replying

const sendTyping = throttle((channelSid) => {
  client?.actions.invoke("SendTyping", { channelSid }).catch(() => {});
}, 2000);

reply.addEventListener("input", () => {
  if (selected && reply.value.trim()) sendTyping(selected);
});
submitOnEnter(reply);

replyForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = reply.value.trim();
  if (!selected || !body) return;
  reply.value = "";
  try {
    await client.actions.invoke("SendMessage", { channelSid: selected, body });
  } catch (error) {
    reply.value = body;
    typingLine.textContent = `Not sent (${error.code}).`;
  }
});

$("end-button").addEventListener("click", async () => {
  const channelSid = selected;
  const chat = channelSid && chats.get(channelSid);
  if (!chat || chat.ended) return;
  const ok = await confirmAction({
    title: `End the chat with ${customerName(chat)}?`,
    text: "The customer and everyone in the chat are told it has ended. This cannot be undone.",
    ok: "End chat",
  });
  if (!ok) return;
  try {
    await client.actions.invoke("EndEngagement", { channelSid });
  } catch (error) {
    typingLine.textContent = `Could not end the chat (${error.message}).`;
  }
});

$("leave-button").addEventListener("click", async () => {
  const channelSid = selected;
  if (!channelSid) return;
  const chat = chats.get(channelSid);
  if (!chat?.ended) {
    const ok = await confirmAction({
      title: `Leave the chat with ${customerName(chat)}?`,
      text: "You stop receiving its messages. The customer stays, and it goes back to the queue when no one else is in it.",
      ok: "Leave chat",
    });
    if (!ok) return;
    try {
      await client.actions.invoke("LeaveChannel", { channelSid });
    } catch (error) {
      if (error.code !== "not_a_member" && error.code !== "not_found") {
        typingLine.textContent = `Could not leave (${error.code}).`;
        return;
      }
    }
  }
  chats.delete(channelSid);
  saveChats();
  selected = null;
  renderAll();
});

// Keep "waiting since … ago" fresh.
setInterval(() => {
  if (client?.sessionId) renderQueue();
}, 30_000);

// ------------------------------------------------------------------ start

const remembered = sessionStorage.getItem(NAME_KEY);
if (remembered) {
  $("agent-name").value = remembered;
  signIn(remembered, null);
} else {
  $("agent-name").focus();
}
