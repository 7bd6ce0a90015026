// The SDK against a real broker process: every action, pushes and kept
// state, rejection codes, reconnects after the broker closes the socket.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { MemoryStorage, SwitchboardClient, SwitchboardError } from "@switchboard/client";
import { DEFAULT_CONFIG, GREETING, startBroker } from "../helpers/broker.js";
import { collect, nextEvent, waitFor } from "../helpers/wait.js";

const SID = /^CH[0-9a-f]{32}$/;
const FAST_RECONNECT = { initialDelay: 50, maxDelay: 500, jitter: 0.5 };

/** Opens clients for one test and closes them all afterwards. */
function clientFactory(getBroker) {
  const open = [];
  const make = (options = {}) => {
    const broker = getBroker();
    const client = new SwitchboardClient({ url: broker.wsUrl, storage: new MemoryStorage(), reconnect: FAST_RECONNECT, ...options });
    open.push(client);
    return client;
  };
  make.closeAll = () => {
    while (open.length) open.pop().close();
  };
  return make;
}

async function customer(make, options) {
  const client = make(options);
  await client.connect();
  return client;
}

async function agent(make, broker, name = "grace", options = {}) {
  const client = make({ token: broker.token(name, "agent"), ...options });
  await client.connect();
  return client;
}

describe("SDK against the broker", () => {
  let broker;
  const make = clientFactory(() => broker);

  before(async () => {
    broker = await startBroker({ config: `${DEFAULT_CONFIG}\n[typing]\nwindow_ms = 600\n` });
  });
  afterEach(() => make.closeAll());
  after(async () => {
    await broker?.stop();
  });

  test("Connect as an anonymous customer keeps the resumeToken so a refreshed tab is the same identity", async () => {
    const storage = new MemoryStorage();
    const first = make({ storage, storageKey: "rt" });
    const result = await first.connect();
    assert.equal(result.role, "customer");
    assert.match(result.sessionId, /\S/);
    assert.ok(result.identity);
    assert.ok(result.resumeToken, "an anonymous customer gets a resumeToken");
    assert.equal(result.engagement, null);
    assert.deepEqual(result.widget, { expanded: false });
    assert.deepEqual(result.inputText, {});
    assert.ok(result.actions.includes("StartEngagement"));
    assert.equal(first.identity, result.identity);
    await waitFor(() => storage.getItem("rt") === result.resumeToken, { message: "the resume token in storage" });
    first.close();

    // The "refreshed tab": a new client on the same storage.
    const again = make({ storage, storageKey: "rt" });
    const second = await again.connect();
    assert.equal(second.identity, result.identity);
    assert.notEqual(second.sessionId, result.sessionId);
  });

  test("Connect with a token", async () => {
    const client = make({ token: broker.token("grace", "agent") });
    const result = await client.connect();
    assert.equal(result.identity, "grace");
    assert.equal(result.role, "agent");
    assert.equal(result.resumeToken, undefined);
    assert.ok(result.actions.includes("JoinChannel"));
    assert.ok(!result.actions.includes("StartEngagement"));
    assert.equal(client.connectionState, "connected");
    // A token provider function is called on connect.
    const lazy = make({ token: async () => broker.token("svc-linus", "service") });
    assert.equal((await lazy.connect()).role, "service");
  });

  test("a whole engagement: start, greet, message, typing, drafts, widget, agent join, restart", async () => {
    const ada = await customer(make);
    const adaTab2 = await customer(make, { resumeToken: ada.resumeToken });
    assert.equal(adaTab2.identity, ada.identity);
    const grace = await agent(make, broker);

    const sub = await grace.actions.invoke("Subscribe", { channel: "queue:default" });
    assert.equal(sub.channel, "queue:default");
    assert.ok(Array.isArray(sub.engagements));

    // afterStartEngagement sees payload and result.
    const afters = [];
    ada.actions.addListener("afterStartEngagement", (payload, result) => afters.push({ payload, result }));
    const queued = nextEvent(grace, "engagementStarted", (e) => e.identity === ada.identity);
    const greeting = nextEvent(ada, "messageAdded", (m) => m.body === GREETING);
    const tab2Started = nextEvent(adaTab2, "engagementStarted");
    const { channelSid } = await ada.actions.invoke("StartEngagement", { formData: { name: "Ada" } });
    assert.match(channelSid, SID);
    assert.deepEqual(afters, [{ payload: { formData: { name: "Ada" } }, result: { channelSid } }]);
    assert.equal(ada.engagement.channelSid, channelSid);
    const started = await queued;
    assert.deepEqual(started.formData, { name: "Ada" });
    await tab2Started;
    await waitFor(() => adaTab2.engagement?.channelSid === channelSid, { message: "tab 2 learns the engagement" });
    const greet = await greeting;
    assert.equal(greet.authorRole, "service");
    assert.equal(greet.index, 0);
    await waitFor(() => grace.queue.some((e) => e.channelSid === channelSid && e.formData.name === "Ada"));

    // Already engaged.
    await assert.rejects(ada.actions.invoke("StartEngagement", {}), (err) => {
      assert.ok(err instanceof SwitchboardError);
      assert.equal(err.code, "already_engaged");
      assert.equal(err.channelSid, channelSid);
      return true;
    });

    // The agent joins.
    const joinedPush = nextEvent(ada, "memberJoined", (e) => e.identity === "grace");
    const join = await grace.actions.invoke("JoinChannel", { channelSid });
    assert.equal(join.channelSid, channelSid);
    assert.ok(join.members.some((m) => m.identity === ada.identity && m.role === "customer"));
    assert.ok(join.members.some((m) => m.identity === "grace" && m.role === "agent"));
    assert.ok(join.lastIndex >= 0);
    assert.equal((await joinedPush).role, "agent");
    assert.equal(grace.channel(channelSid).member, true);

    // Typing: the other side sees it start, and end with the author's message.
    const typing = nextEvent(grace, "typingStarted", (e) => e.channelSid === channelSid);
    assert.deepEqual(await ada.actions.invoke("SendTyping", { channelSid }), {});
    assert.equal((await typing).identity, ada.identity);
    assert.deepEqual(grace.channel(channelSid).typing, [ada.identity]);
    const typingEnded = nextEvent(grace, "typingEnded", (e) => e.identity === ada.identity);
    const seenByGrace = nextEvent(grace, "messageAdded", (m) => m.body === "Hello");
    const seenByTab2 = nextEvent(adaTab2, "messageAdded", (m) => m.body === "Hello");
    const sent = await ada.actions.invoke("SendMessage", { channelSid, body: "Hello" });
    assert.equal(sent.channelSid, channelSid);
    assert.equal(typeof sent.index, "number");
    assert.match(sent.dateCreated, /^\d{4}-\d\d-\d\dT/);
    const msg = await seenByGrace;
    assert.equal(msg.index, sent.index);
    assert.equal(msg.author, ada.identity);
    assert.equal(msg.authorRole, "customer");
    await seenByTab2;
    await typingEnded;
    assert.deepEqual(grace.channel(channelSid).typing, []);

    // Typing also ends when the window passes with no new SendTyping.
    const agentTyping = nextEvent(ada, "typingStarted", (e) => e.identity === "grace");
    await grace.actions.invoke("SendTyping", { channelSid });
    await agentTyping;
    await nextEvent(ada, "typingEnded", (e) => e.identity === "grace");

    // The agent replies; message attributes ride along.
    const reply = nextEvent(ada, "messageAdded", (m) => m.author === "grace");
    await grace.actions.invoke("SendMessage", { channelSid, body: "Hi Ada, how can I help?", messageAttributes: { mood: "cheerful" } });
    const r = await reply;
    assert.equal(r.authorRole, "agent");
    assert.deepEqual(r.attributes, { mood: "cheerful" });

    // Drafts: stored, pushed to the identity's other sessions, returned by Connect.
    const draftPush = nextEvent(adaTab2, "inputTextSet");
    assert.deepEqual(await ada.actions.invoke("SetInputText", { channelSid, body: "half a thou" }), {});
    assert.deepEqual(await draftPush, { channelSid, body: "half a thou" });
    assert.equal(ada.inputText[channelSid], "half a thou");
    assert.equal(adaTab2.inputText[channelSid], "half a thou");
    const tab3 = await customer(make, { resumeToken: ada.resumeToken });
    assert.equal(tab3.inputText[channelSid], "half a thou");
    assert.equal(tab3.engagement.channelSid, channelSid);

    // Widget: toggle and minimize, synced to the other tabs.
    const expandedPush = nextEvent(adaTab2, "widgetStateChanged");
    assert.deepEqual(await ada.actions.invoke("ToggleChatVisibility"), { expanded: true });
    assert.deepEqual(await expandedPush, { expanded: true });
    assert.equal(adaTab2.widget.expanded, true);
    const minimizedPush = nextEvent(ada, "widgetStateChanged");
    assert.deepEqual(await adaTab2.actions.invoke("MinimizeChat"), { expanded: false });
    assert.deepEqual(await minimizedPush, { expanded: false });
    assert.equal(ada.widget.expanded, false);

    // Restart: one memberLeft for the agent, engagementRestarted for the identity, engagementEnded for the queue.
    const left = collect(grace, "memberLeft");
    const ended = nextEvent(grace, "engagementEnded", (e) => e.channelSid === channelSid);
    const restartedTab2 = nextEvent(adaTab2, "engagementRestarted");
    const restarted = await ada.actions.invoke("RestartEngagement");
    assert.equal(restarted.channelSid, channelSid);
    assert.equal((await ended).reason, "restart");
    assert.deepEqual(await restartedTab2, { channelSid });
    await waitFor(() => left.length >= 1);
    assert.deepEqual(left[0], { channelSid, identity: ada.identity, reason: "restart" });
    assert.equal(ada.engagement, null);
    await waitFor(() => adaTab2.engagement === null && adaTab2.inputText[channelSid] === undefined);
    assert.ok(!grace.queue.some((e) => e.channelSid === channelSid));
    await assert.rejects(ada.actions.invoke("RestartEngagement"), { code: "no_engagement" });
    // Messages after leaving are refused.
    await assert.rejects(ada.actions.invoke("SendMessage", { channelSid, body: "still there?" }), { code: "not_a_member" });
    assert.equal(left.length, 1, "exactly one memberLeft");
  });

  test("agents: LeaveChannel, Subscribe to a channel as an observer, Unsubscribe", async () => {
    const bob = await customer(make);
    const grace = await agent(make, broker, "grace");
    const linus = await agent(make, broker, "linus");
    const { channelSid } = await bob.actions.invoke("StartEngagement", { formData: { name: "Bob" } });

    // An observer receives the channel's messages without being a member.
    const sub = await linus.actions.invoke("Subscribe", { channel: channelSid });
    assert.equal(sub.channel, channelSid);
    assert.deepEqual(linus.subscriptions, [channelSid]);
    const observed = nextEvent(linus, "messageAdded", (m) => m.body === "anyone?");
    await bob.actions.invoke("SendMessage", { channelSid, body: "anyone?" });
    await observed;
    await assert.rejects(linus.actions.invoke("SendMessage", { channelSid, body: "I only watch" }), { code: "not_a_member" });

    await grace.actions.invoke("JoinChannel", { channelSid });
    const leftPush = nextEvent(bob, "memberLeft", (e) => e.identity === "grace");
    assert.deepEqual(await grace.actions.invoke("LeaveChannel", { channelSid }), {});
    assert.equal((await leftPush).reason, "left");
    assert.equal(grace.channel(channelSid), null);
    await assert.rejects(grace.actions.invoke("SendMessage", { channelSid, body: "bye" }), { code: "not_a_member" });

    assert.deepEqual(await linus.actions.invoke("Unsubscribe", { channel: channelSid }), {});
    assert.deepEqual(linus.subscriptions, []);

    // A customer's LeaveChannel on its own engagement ends it.
    const ended = nextEvent(bob, "engagementEnded", (e) => e.channelSid === channelSid);
    await bob.actions.invoke("LeaveChannel", { channelSid });
    assert.equal((await ended).reason, "left");
    assert.equal(bob.engagement, null);
  });

  test("Subscribe to the queue lists its open engagements; Unsubscribe clears them", async () => {
    const carol = await customer(make);
    const { channelSid } = await carol.actions.invoke("StartEngagement", { formData: { name: "Carol" } });
    const grace = await agent(make, broker);
    const sub = await grace.actions.invoke("Subscribe", { channel: "queue:default" });
    const mine = sub.engagements.find((e) => e.channelSid === channelSid);
    assert.ok(mine, "the open engagement is listed");
    assert.equal(mine.identity, carol.identity);
    assert.deepEqual(mine.formData, { name: "Carol" });
    assert.match(mine.startedAt, /^\d{4}-/);
    assert.ok(grace.queue.some((e) => e.channelSid === channelSid));
    assert.deepEqual(await grace.actions.invoke("Unsubscribe", { channel: "queue:default" }), {});
    assert.deepEqual(grace.queue, []);
    assert.deepEqual(grace.subscriptions, []);
    await carol.actions.invoke("RestartEngagement");
  });

  test("actions.trigger runs a configured custom action; actions.list shows it with its preset", async () => {
    const dana = await customer(make);
    const grace = await agent(make, broker);
    await grace.actions.invoke("Subscribe", { channel: "queue:default" });
    const seen = nextEvent(grace, "engagementStarted", (e) => e.identity === dana.identity);
    const result = await dana.actions.trigger("contact-sales");
    assert.match(result.channelSid, SID);
    assert.deepEqual((await seen).formData, { department: "sales" });
    await waitFor(() => dana.engagement?.channelSid === result.channelSid);
    await dana.actions.invoke("RestartEngagement");

    // The payload is merged over the preset.
    const merged = nextEvent(grace, "engagementStarted", (e) => e.identity === dana.identity);
    await dana.actions.trigger("contact-sales", { formData: { department: "sales", name: "Dana" } });
    assert.deepEqual((await merged).formData, { department: "sales", name: "Dana" });
    await dana.actions.invoke("RestartEngagement");

    await assert.rejects(dana.actions.trigger("no-such-action"), { code: "unknown_action" });

    const list = await dana.actions.list();
    const custom = list.find((a) => a.name === "contact-sales");
    assert.equal(custom.kind, "custom");
    assert.equal(custom.description, "Start a chat with sales");
    assert.deepEqual(custom.payload, { formData: { department: "sales" } });
    assert.ok(list.some((a) => a.name === "SendMessage" && a.kind === "builtin"));
  });

  test("client-side listeners, replace and register work with the broker", async () => {
    const erin = await customer(make);
    const { channelSid } = await erin.actions.invoke("StartEngagement", { formData: { name: "Erin" } });
    erin.actions.addListener("beforeSendMessage", (payload, cancel) => {
      if (/password/i.test(payload.body)) cancel("never send passwords");
      payload.messageAttributes = { ...(payload.messageAttributes ?? {}), client: "sdk-test" };
    });
    const echoed = nextEvent(erin, "messageAdded", (m) => m.body === "hello");
    await erin.actions.invoke("SendMessage", { channelSid, body: "hello" });
    assert.deepEqual((await echoed).attributes, { client: "sdk-test" });
    await assert.rejects(erin.actions.invoke("SendMessage", { channelSid, body: "my password is 1234" }), { code: "rejected", source: "client" });

    erin.actions.replace("SendMessage", (payload, original) => original({ ...payload, body: payload.body.trim() }));
    const trimmed = nextEvent(erin, "messageAdded", (m) => m.body === "spaces");
    await erin.actions.invoke("SendMessage", { channelSid, body: "   spaces   " });
    await trimmed;

    erin.actions.register("SendCannedGreeting", (payload) => erin.actions.invoke("SendMessage", { channelSid: payload.channelSid, body: "Good morning!" }));
    const canned = nextEvent(erin, "messageAdded", (m) => m.body === "Good morning!");
    await erin.actions.invoke("SendCannedGreeting", { channelSid });
    await canned;
    assert.ok((await erin.actions.list()).some((a) => a.name === "SendCannedGreeting" && a.kind === "client"));
    await erin.actions.invoke("RestartEngagement");
  });

  test("promise rejections carry the contract's codes", async () => {
    const notYet = make();
    await assert.rejects(notYet.actions.invoke("GetActions"), { code: "not_connected" });

    const bad = make({ token: "not-a-jwt" });
    const disconnected = collect(bad, "reconnecting");
    await assert.rejects(bad.connect(), { code: "unauthorized" });
    assert.equal(bad.connectionState, "closed");
    assert.equal(disconnected.length, 0, "no reconnect after unauthorized");

    const expired = make({ token: broker.token("grace", "agent", { exp: Math.floor(Date.now() / 1000) - 60 }) });
    await assert.rejects(expired.connect(), { code: "unauthorized" });

    const wrongKey = make({ token: broker.token("grace", "agent").replace(/\.[^.]+$/, ".AAAA") });
    await assert.rejects(wrongKey.connect(), { code: "unauthorized" });

    const frank = await customer(make);
    const grace = await agent(make, broker);
    await assert.rejects(grace.actions.invoke("StartEngagement", {}), { code: "forbidden" });
    await assert.rejects(frank.actions.invoke("JoinChannel", { channelSid: `CH${"0".repeat(32)}` }), { code: "forbidden" });
    await assert.rejects(frank.actions.invoke("NoSuchAction", {}), { code: "unknown_action" });
    await assert.rejects(grace.actions.invoke("JoinChannel", { channelSid: `CH${"0".repeat(32)}` }), { code: "not_found" });
    await assert.rejects(frank.actions.invoke("RestartEngagement"), { code: "no_engagement" });

    const { channelSid } = await frank.actions.invoke("StartEngagement", {});
    await assert.rejects(frank.actions.invoke("SendMessage", { channelSid, body: "" }), { code: "bad_request" });
    await assert.rejects(frank.actions.invoke("SendMessage", { channelSid }), { code: "bad_request" });
    await assert.rejects(frank.actions.invoke("SendMessage", { channelSid, body: "x".repeat(20 * 1024) }), { code: "too_large" });
    await assert.rejects(grace.actions.invoke("SendMessage", { channelSid, body: "not joined" }), { code: "not_a_member" });

    // Another customer cannot post into Frank's channel.
    const gina = await customer(make);
    await assert.rejects(gina.actions.invoke("SendMessage", { channelSid, body: "hi" }), { code: "not_a_member" });
    await frank.actions.invoke("RestartEngagement");
  });

  test("msgpack encoding works end to end", async () => {
    const packedCustomer = make({ encoding: "msgpack" });
    const frames = [];
    const packedAgent = make({ encoding: "msgpack", token: broker.token("hank", "agent"), trace: (dir, f) => frames.push([dir, f]) });
    await packedCustomer.connect();
    await packedAgent.connect();
    const { channelSid } = await packedCustomer.actions.invoke("StartEngagement", { formData: { name: "Packed", n: 42 } });
    await packedAgent.actions.invoke("JoinChannel", { channelSid });
    const got = nextEvent(packedCustomer, "messageAdded", (m) => m.author === "hank");
    await packedAgent.actions.invoke("SendMessage", { channelSid, body: "binary hello ✓", messageAttributes: { nested: { a: [1, 2] } } });
    const m = await got;
    assert.equal(m.body, "binary hello ✓");
    assert.deepEqual(m.attributes, { nested: { a: [1, 2] } });
    await assert.rejects(packedAgent.actions.invoke("StartEngagement", {}), { code: "forbidden" });
    assert.ok(frames.length > 0);
    await packedCustomer.actions.invoke("RestartEngagement");
  });

  test("a frame over the limit: the broker closes with 4009, the SDK rejects and reconnects", async () => {
    const ivy = await customer(make);
    const identity = ivy.identity;
    const disconnected = nextEvent(ivy, "disconnected");
    const reconnected = nextEvent(ivy, "reconnected", () => true, { timeout: 15_000 });
    await assert.rejects(ivy.actions.invoke("SetInputText", { channelSid: `CH${"0".repeat(32)}`, body: "y".repeat(100 * 1024) }), (err) => {
      assert.ok(["connection_lost", "too_large"].includes(err.code), `code ${err.code}`);
      return true;
    });
    const info = await disconnected;
    assert.equal(info.code, 4009);
    assert.equal(info.willReconnect, true);
    await reconnected;
    assert.equal(ivy.identity, identity, "same identity after reconnect (resume token)");
  });

  test("messages missed while reconnecting: recovered gaplessly when the broker offers it, else reported as a gap", async () => {
    const sent = [];
    const kim = make({ reconnect: { initialDelay: 300, maxDelay: 300, jitter: 0 }, trace: (d, f) => d === "out" && sent.push(f) });
    await kim.connect();
    const grace = await agent(make, broker, "grace-recovery");
    const { channelSid } = await kim.actions.invoke("StartEngagement", { formData: { name: "Kim" } });
    await grace.actions.invoke("JoinChannel", { channelSid });
    const received = [];
    const gaps = collect(kim, "gap");
    kim.on("messageAdded", (m) => m.channelSid === channelSid && received.push(m.index));
    const first = await grace.actions.invoke("SendMessage", { channelSid, body: "before the drop" });
    await waitFor(() => received.includes(first.index));

    // Drop Kim's connection (a frame over the limit: close 4009) and post while Kim is away.
    const down = nextEvent(kim, "disconnected");
    const back = nextEvent(kim, "reconnected", () => true, { timeout: 15_000 });
    kim.actions.invoke("SetInputText", { channelSid, body: "z".repeat(100 * 1024) }).catch(() => {});
    await down;
    const missed = [];
    for (const body of ["while away 1", "while away 2", "while away 3"]) {
      missed.push((await grace.actions.invoke("SendMessage", { channelSid, body })).index);
    }
    await back;
    const last = await grace.actions.invoke("SendMessage", { channelSid, body: "after the return" });
    await waitFor(() => received.includes(last.index), { message: "the message sent after the reconnect" });

    assert.deepEqual(received, [...new Set(received)].sort((a, b) => a - b), "in order, each once");
    const reconnect = sent.filter((f) => f.action === "Connect").at(-1);
    if (kim.supportsRecovery) {
      assert.deepEqual(reconnect.payload.recover, { [channelSid]: first.index });
      // The handler was added after StartEngagement resolved, so the
      // greeter's message (index 0) may precede it; from there on, gapless.
      assert.ok(received[0] <= first.index);
      const expected = Array.from({ length: last.index - received[0] + 1 }, (_, i) => received[0] + i);
      assert.deepEqual(received, expected, "gapless");
      assert.equal(gaps.length, 0);
    } else {
      assert.equal(reconnect.payload.recover, undefined, "no recover without GetMessages");
      for (const index of missed) {
        if (!received.includes(index)) {
          assert.ok(gaps.some((g) => g.channelSid === channelSid && g.from <= index && index <= g.to), `index ${index} is reported in a gap`);
        }
      }
    }
    await kim.actions.invoke("RestartEngagement");
  });
});

describe("SDK reconnects when the broker closes the socket", () => {
  test("shutdown (4000), restart on the same port: reconnect, same identity, re-subscribed, no recover sent", async () => {
    const first = await startBroker({ config: DEFAULT_CONFIG });
    const { port, secret } = first;
    let second;
    const clients = [];
    try {
      const sent = [];
      const ada = new SwitchboardClient({ url: first.wsUrl, storage: new MemoryStorage(), reconnect: FAST_RECONNECT, trace: (d, f) => d === "out" && sent.push(f) });
      const grace = new SwitchboardClient({ url: first.wsUrl, token: () => first.token("grace", "agent"), reconnect: FAST_RECONNECT, storage: false });
      clients.push(ada, grace);
      const adaResult = await ada.connect();
      await grace.connect();
      assert.equal(ada.supportsRecovery, ada.serverActions.includes("GetMessages"));
      await grace.actions.invoke("Subscribe", { channel: "queue:default" });

      const adaDown = nextEvent(ada, "disconnected");
      const graceDown = nextEvent(grace, "disconnected");
      const stopped = first.stop({ keepWorkdir: true });
      const [a, g] = await Promise.all([adaDown, graceDown]);
      assert.equal(a.code, 4000);
      assert.equal(a.willReconnect, true);
      assert.equal(g.code, 4000);
      const exit = await stopped;
      assert.equal(exit.code, 0, "the broker exits 0 on SIGTERM");
      assert.ok(["reconnecting"].includes(ada.connectionState));

      // Commands issued while the broker is away wait for the new session.
      const pendingList = ada.actions.invoke("GetActions");

      const adaBack = nextEvent(ada, "reconnected", () => true, { timeout: 20_000 });
      const graceBack = nextEvent(grace, "reconnected", () => true, { timeout: 20_000 });
      second = await startBroker({ config: DEFAULT_CONFIG, port, secret, workdir: first.workdir });
      const [adaAgain] = await Promise.all([adaBack, graceBack]);
      assert.equal(adaAgain.identity, adaResult.identity, "the resume token brings back the same identity");
      assert.ok((await pendingList).actions.length > 0);
      assert.deepEqual(grace.subscriptions, ["queue:default"]);

      // The re-subscribed queue gets new engagements.
      const seen = nextEvent(grace, "engagementStarted", (e) => e.identity === ada.identity);
      await ada.actions.invoke("StartEngagement", { formData: { name: "Ada again" } });
      await seen;

      const connects = sent.filter((f) => f.action === "Connect");
      assert.equal(connects.length, 2);
      if (!adaResult.actions.includes("GetMessages")) {
        for (const c of connects) assert.equal(c.payload.recover, undefined, "no recover without server support");
      }
    } finally {
      for (const c of clients) c.close();
      await second?.stop();
      await first.stop();
    }
  });

  test("the broker going away for a while: backoff attempts until it is back", async () => {
    const first = await startBroker({ config: DEFAULT_CONFIG });
    const { port, secret, workdir } = first;
    let second;
    const client = new SwitchboardClient({ url: first.wsUrl, token: first.token("grace", "agent"), reconnect: { initialDelay: 30, maxDelay: 200 } });
    try {
      await client.connect();
      const attempts = collect(client, "reconnecting");
      await first.stop({ keepWorkdir: true });
      await waitFor(() => attempts.length >= 3, { message: "several reconnect attempts" });
      assert.ok(attempts.every((a) => a.delay <= 200));
      assert.deepEqual(attempts.map((a) => a.attempt).slice(0, 3), [1, 2, 3]);
      const back = nextEvent(client, "reconnected", () => true, { timeout: 20_000 });
      second = await startBroker({ config: DEFAULT_CONFIG, port, secret, workdir });
      await back;
      assert.equal(client.connectionState, "connected");
      assert.deepEqual(await client.actions.invoke("GetActions").then((r) => Array.isArray(r.actions)), true);
    } finally {
      client.close();
      await second?.stop();
      await first.stop();
    }
  });
});

describe("business hours and server-side before listeners", () => {
  test("outside_business_hours carries opensAt; a configured before listener rejects with rejected", async () => {
    const day = (offset) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
    const broker = await startBroker({
      config: `
anonymous_customers = true
[business_hours]
timezone = "UTC"
closed_dates = ["${day(-1)}", "${day(0)}", "${day(1)}"]
[[business_hours.open]]
days = "mon-sun"
from = "00:00"
to = "24:00"
[[actions.before]]
on = "MinimizeChat"
reject = "minimizing is disabled here"
`,
    });
    const client = new SwitchboardClient({ url: broker.wsUrl, storage: false });
    try {
      await client.connect();
      await assert.rejects(client.actions.invoke("StartEngagement", { formData: { name: "Late" } }), (err) => {
        assert.equal(err.code, "outside_business_hours");
        assert.match(String(err.opensAt), /^\d{4}-\d\d-\d\dT/);
        assert.ok(new Date(err.opensAt).getTime() > Date.now());
        return true;
      });
      await assert.rejects(client.actions.invoke("MinimizeChat"), (err) => {
        assert.equal(err.code, "rejected");
        assert.equal(err.source, undefined, "rejected by the broker, not the client");
        return true;
      });
    } finally {
      client.close();
      await broker.stop();
    }
  });
});
