// The customer chat widget of the Switchboard demo, built on the SDK served
// by the broker at /sdk/ (JSON encoding: no bundler, no npm packages).
import { SwitchboardClient } from "/sdk/index.js";
import {
  $,
  appendAndScroll,
  brokerUrl,
  debounce,
  formatTime,
  messageItem,
  noticeItem,
  submitOnEnter,
  throttle,
  typingText,
} from "/static/ui.js";

const client = new SwitchboardClient({ url: brokerUrl(), encoding: "json" });
// Handy from the browser console, and for the end-to-end tests.
window.switchboard = client;

const root = $("sb-widget");
const launcher = $("sb-launcher");
const panel = $("sb-panel");
const statusLine = $("sb-status");
const restartButton = $("sb-restart");
const minimizeButton = $("sb-minimize");
const form = $("sb-form");
const formError = $("sb-form-error");
const startButton = $("sb-start");
const chat = $("sb-chat");
const messages = $("sb-messages");
const typingLine = $("sb-typing");
const compose = $("sb-compose");
const input = $("sb-input");
const offline = $("sb-offline");
const offlineText = $("sb-offline-text");
const unreadBadge = $("sb-unread");

let shownChannel = null; // the channel whose transcript is on screen
let localExpanded = false; // used only while there is no session
let unread = 0;
let formNotice = "";
const renderedIndices = new Set();
const startedHere = new Set(); // engagements that started while this tab was open
let starting = false; // a StartEngagement from this tab is under way

// ------------------------------------------------------------------ rendering

function displayName(identity, role) {
  if (identity === client.identity) return "You";
  if (role === "service") return "Acme assistant";
  return identity;
}

function agentNames(channelSid) {
  const channel = client.channel(channelSid);
  return channel ? channel.members.filter((m) => m.role === "agent").map((m) => m.identity) : [];
}

function render() {
  const hasSession = Boolean(client.sessionId);
  const expanded = hasSession ? client.widget.expanded : localExpanded;
  root.dataset.expanded = String(expanded);
  launcher.hidden = expanded;
  launcher.setAttribute("aria-expanded", String(expanded));
  panel.hidden = !expanded;
  if (expanded) unread = 0;
  unreadBadge.hidden = unread === 0;
  unreadBadge.textContent = unread === 0 ? "" : String(unread);
  unreadBadge.setAttribute("aria-label", `${unread} unread`);

  const engagement = client.engagement;
  const state = client.connectionState;
  let view;
  if (!hasSession) view = state === "connecting" ? "loading" : "offline";
  else view = engagement ? "chat" : "form";
  root.dataset.view = view;
  form.hidden = view !== "form";
  chat.hidden = view !== "chat";
  offline.hidden = view !== "offline";
  restartButton.hidden = view !== "chat";

  if (engagement?.channelSid !== shownChannel) showChannel(engagement?.channelSid ?? null);

  if (state === "connecting") statusLine.textContent = "Connecting…";
  else if (state === "reconnecting") statusLine.textContent = "Connection lost. Reconnecting…";
  else if (state === "closed") statusLine.textContent = "Offline";
  else if (engagement) {
    const agents = agentNames(engagement.channelSid);
    statusLine.textContent = agents.length ? `Chatting with ${agents.join(", ")}` : "Waiting for an agent…";
  } else statusLine.textContent = "We typically reply in a few minutes";

  if (view === "form") {
    const intro = form.querySelector(".sb-intro");
    intro.textContent = formNotice || "Hi there! Tell us a little about yourself and we'll connect you with an agent.";
  }
  renderTyping();
}

function renderTyping() {
  const sid = client.engagement?.channelSid;
  const channel = sid ? client.channel(sid) : null;
  const names = (channel?.typing ?? []).filter((id) => id !== client.identity).map((id) => displayName(id, "agent"));
  typingLine.textContent = typingText(names);
}

function showChannel(channelSid) {
  shownChannel = channelSid;
  messages.replaceChildren();
  renderedIndices.clear();
  input.value = channelSid ? client.inputText[channelSid] ?? "" : "";
  if (channelSid) {
    formNotice = "";
    if (!starting && !startedHere.has(channelSid) && !client.can("GetMessages")) {
      // A refreshed tab, or one opened mid-chat: the broker offers no history yet.
      messages.append(noticeItem("Earlier messages of this chat are shown in the tab where they arrived."));
    }
    for (const message of early.get(channelSid) ?? []) addMessage(message);
    loadHistory(channelSid);
  }
  early.clear();
}

function addMessage(message) {
  if (renderedIndices.has(message.index)) return;
  renderedIndices.add(message.index);
  const mine = message.author === client.identity;
  const item = messageItem({
    who: mine ? "self" : message.authorRole,
    label: displayName(message.author, message.authorRole),
    body: message.body,
    time: formatTime(message.dateCreated),
    index: message.index,
  });
  // Keep index order even when history arrives after live messages.
  const later = [...messages.children].find((li) => li.dataset.index && Number(li.dataset.index) > message.index);
  if (later) messages.insertBefore(item, later);
  else appendAndScroll(messages, item);
}

async function loadHistory(channelSid) {
  if (!client.can("GetMessages")) return;
  try {
    const { messages: page } = await client.actions.invoke("GetMessages", { channelSid, limit: 50 });
    if (shownChannel === channelSid) for (const m of page) addMessage(m);
  } catch {
    // History is a nicety: live messages keep coming.
  }
}

// ------------------------------------------------------------------ SDK events

client.on("stateChanged", render);
client.on("connectionStateChanged", render);
const early = new Map(); // messages of a channel not yet known as the engagement
client.on("messageAdded", (message) => {
  if (message.channelSid !== client.engagement?.channelSid) {
    // A greeting can beat the engagementStarted push: keep it for showChannel.
    if (!client.engagement) early.set(message.channelSid, [...(early.get(message.channelSid) ?? []), message]);
    return;
  }
  if (shownChannel !== message.channelSid) showChannel(message.channelSid);
  addMessage(message);
  if (!client.widget.expanded && message.author !== client.identity) {
    unread += 1;
    render();
  }
});
client.on("typingStarted", renderTyping);
client.on("typingEnded", renderTyping);
client.on("memberJoined", (e) => {
  if (e.channelSid === shownChannel && e.role === "agent") appendAndScroll(messages, noticeItem(`${e.identity} joined the chat`));
});
client.on("memberLeft", (e) => {
  if (e.channelSid === shownChannel && e.identity !== client.identity) {
    appendAndScroll(messages, noticeItem(`${displayName(e.identity, "agent")} left the chat`));
  }
});
client.on("engagementStarted", (e) => {
  if (e.identity === client.identity) startedHere.add(e.channelSid);
});
client.on("gap", (e) => {
  if (e.channelSid === shownChannel) appendAndScroll(messages, noticeItem("Some messages sent while you were offline are not shown."));
});
client.on("engagementEnded", (e) => {
  if (e.reason !== "restart") formNotice = "Your previous chat has ended. Need anything else? Start a new one below.";
  render();
});
client.on("inputTextSet", ({ channelSid, body }) => {
  if (channelSid === shownChannel && document.activeElement !== input) input.value = body;
});

// ------------------------------------------------------------------ user actions

async function run(action, payload) {
  try {
    return await client.actions.invoke(action, payload);
  } catch (error) {
    statusLine.textContent = `Something went wrong (${error.code}). Please try again.`;
    throw error;
  }
}

launcher.addEventListener("click", async () => {
  if (!client.sessionId) {
    localExpanded = true;
    render();
    return;
  }
  await run("ToggleChatVisibility").catch(() => {});
  focusPanel();
});

minimizeButton.addEventListener("click", async () => {
  if (!client.sessionId) {
    localExpanded = false;
    render();
    launcher.focus();
    return;
  }
  await run("MinimizeChat").catch(() => {});
  launcher.focus();
});

// Escape minimizes the open widget, like closing any other panel.
panel.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !event.isComposing) {
    event.preventDefault();
    minimizeButton.click();
  }
});

restartButton.addEventListener("click", async () => {
  await run("RestartEngagement").catch(() => {});
  render();
  $("sb-name").focus();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.textContent = "";
  const data = new FormData(form);
  const name = String(data.get("name") ?? "").trim();
  const email = String(data.get("email") ?? "").trim();
  const question = String(data.get("question") ?? "").trim();
  if (!name) {
    formError.textContent = "Please tell us your name.";
    $("sb-name").focus();
    return;
  }
  const formData = { name };
  if (email) formData.email = email;
  if (question) formData.question = question;
  startButton.disabled = true;
  starting = true;
  try {
    const { channelSid } = await client.actions.invoke("StartEngagement", { formData });
    startedHere.add(channelSid);
    starting = false;
    render();
    if (question) await client.actions.invoke("SendMessage", { channelSid, body: question });
    $("sb-question").value = "";
    input.focus();
  } catch (error) {
    if (error.code === "outside_business_hours") {
      const opens = error.opensAt ? new Date(error.opensAt).toLocaleString([], { weekday: "long", hour: "2-digit", minute: "2-digit" }) : "soon";
      formError.textContent = `We're closed right now. We open again ${opens}.`;
    } else if (error.code !== "already_engaged") {
      formError.textContent = `We could not start the chat (${error.code}). Please try again.`;
    }
  } finally {
    starting = false;
    startButton.disabled = false;
    render();
  }
});

const sendTyping = throttle((channelSid) => {
  client.actions.invoke("SendTyping", { channelSid }).catch(() => {});
}, 2000);
const saveDraft = debounce((channelSid, body) => {
  if (client.engagement?.channelSid === channelSid) client.actions.invoke("SetInputText", { channelSid, body }).catch(() => {});
}, 400);

input.addEventListener("input", () => {
  const channelSid = client.engagement?.channelSid;
  if (!channelSid) return;
  if (input.value.trim()) sendTyping(channelSid);
  saveDraft(channelSid, input.value);
});
submitOnEnter(input);

compose.addEventListener("submit", async (event) => {
  event.preventDefault();
  const channelSid = client.engagement?.channelSid;
  const body = input.value.trim();
  if (!channelSid || !body) return;
  input.value = "";
  saveDraft.cancel();
  try {
    await client.actions.invoke("SendMessage", { channelSid, body });
    client.actions.invoke("SetInputText", { channelSid, body: "" }).catch(() => {});
  } catch (error) {
    input.value = body;
    statusLine.textContent =
      error.code === "too_large" ? "That message is too long." : `Your message was not sent (${error.code}).`;
  }
});

$("sb-retry").addEventListener("click", () => start());

function focusPanel() {
  if (!client.widget.expanded) return;
  const target = client.engagement ? input : $("sb-name");
  target.focus();
}

// ------------------------------------------------------------------ start

async function start() {
  offlineText.textContent = "Connecting…";
  render();
  try {
    await client.connect();
  } catch (error) {
    offlineText.textContent = `We could not reach the chat service (${error.code}).`;
  }
  render();
}

render();
start();
