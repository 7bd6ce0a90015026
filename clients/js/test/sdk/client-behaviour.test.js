// SDK behaviour that the real broker cannot be made to show on demand:
// close codes 4001/4008, recovery before the broker supports it, stale resume
// tokens, listener semantics. A scripted WebSocket server stands in for the
// broker here; test/sdk/broker.test.js runs everything against the real one.
import assert from "node:assert/strict";
import { after, before, describe, test, afterEach } from "node:test";

import { backoffDelay, MemoryStorage, SwitchboardClient, SwitchboardError } from "@switchboard/client";
import { startFakeBroker } from "../helpers/fake-broker.js";
import { nextEvent, waitFor } from "../helpers/wait.js";

const FAST = { initialDelay: 10, maxDelay: 50, jitter: 0.5 };

describe("backoff", () => {
  test("grows exponentially, is capped, and is jittered downwards", () => {
    const policy = { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0.5 };
    assert.equal(backoffDelay(1, policy, () => 0), 100);
    assert.equal(backoffDelay(2, policy, () => 0), 200);
    assert.equal(backoffDelay(4, policy, () => 0), 800);
    assert.equal(backoffDelay(10, policy, () => 0), 1000);
    assert.equal(backoffDelay(10, policy, () => 0.999999), 500);
    for (let i = 1; i < 20; i++) {
      const d = backoffDelay(i, policy);
      assert.ok(d >= 50 && d <= 1000, `delay ${d}`);
    }
  });
});

describe("against a scripted server", () => {
  let fake;
  const clients = [];
  const make = (options = {}) => {
    const client = new SwitchboardClient({ url: fake.url, storage: new MemoryStorage(), reconnect: FAST, ...options });
    clients.push(client);
    return client;
  };

  before(async () => {
    fake = await startFakeBroker();
  });
  // Each test's clients are closed when it ends, so that none of them can
  // reconnect into the next test's counts.
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
  });
  after(async () => {
    for (const c of clients) c.close();
    await fake.stop();
  });

  test("invoke before connect rejects with not_connected", async () => {
    const client = make();
    await assert.rejects(client.actions.invoke("SendMessage", { channelSid: "CH0", body: "x" }), { code: "not_connected" });
  });

  test("before listeners change the payload or cancel; after listeners see the result", async () => {
    const client = make();
    await client.connect();
    const seen = [];
    client.actions.addListener("beforeSendMessage", (payload) => {
      payload.body = payload.body.toUpperCase();
    });
    client.actions.addListener("beforeSendMessage", async (payload) => ({ ...payload, messageAttributes: { tagged: true } }));
    client.actions.addListener("afterSendMessage", (payload, result) => seen.push({ payload, result }));
    const result = await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "hi" });
    assert.deepEqual(result, { echo: { channelSid: "CH0", body: "HI", messageAttributes: { tagged: true } } });
    assert.equal(seen.length, 1);
    assert.deepEqual(seen[0].result, result);

    const off = client.actions.addListener("beforeSendMessage", (payload, cancel) => {
      if (payload.body.includes("SECRET")) cancel("no secrets");
    });
    const sentBefore = fake.commandsOf("SendMessage").length;
    await assert.rejects(client.actions.invoke("SendMessage", { channelSid: "CH0", body: "secret" }), (err) => {
      assert.ok(err instanceof SwitchboardError);
      assert.equal(err.code, "rejected");
      assert.equal(err.source, "client");
      assert.equal(err.message, "no secrets");
      return true;
    });
    assert.equal(fake.commandsOf("SendMessage").length, sentBefore, "a cancelled action is not sent");
    assert.equal(seen.length, 1, "after listeners do not run for a cancelled action");
    off();
    await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "secret" });
    assert.equal(seen.length, 2);
  });

  test("replace wraps the original; register adds a client-side action that list() shows", async () => {
    const client = make();
    await client.connect();
    const restore = client.actions.replace("SendMessage", async (payload, original) => {
      const r = await original({ ...payload, body: `[wrapped] ${payload.body}` });
      return { ...r, replaced: true };
    });
    const r = await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "x" });
    assert.equal(r.replaced, true);
    assert.equal(r.echo.body, "[wrapped] x");
    restore();
    const r2 = await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "x" });
    assert.equal(r2.echo.body, "x");

    const calls = [];
    client.actions.addListener("afterOpenHelp", (payload, result) => calls.push([payload, result]));
    client.actions.register("OpenHelp", async ({ topic }) => ({ opened: topic }), { description: "Opens the help panel" });
    assert.deepEqual(await client.actions.invoke("OpenHelp", { topic: "billing" }), { opened: "billing" });
    assert.deepEqual(calls, [[{ topic: "billing" }, { opened: "billing" }]]);
    assert.throws(() => client.actions.register("SendMessage", () => {}), /built-in/);
    assert.throws(() => client.actions.register("OpenHelp", () => {}), /already registered/);

    const list = await client.actions.list();
    assert.ok(list.some((a) => a.name === "SendMessage" && a.kind === "builtin"));
    assert.ok(list.some((a) => a.name === "OpenHelp" && a.kind === "client"));
  });

  test("trigger sends TriggerAction with the reference name and payload", async () => {
    const client = make();
    await client.connect();
    await client.actions.trigger("contact-sales");
    await client.actions.trigger("contact-sales", { formData: { name: "Ada" } });
    const sent = fake.commandsOf("TriggerAction").slice(-2);
    assert.deepEqual(sent[0].payload, { name: "contact-sales" });
    assert.deepEqual(sent[1].payload, { name: "contact-sales", payload: { formData: { name: "Ada" } } });
  });

  test("close 4000 reconnects without `recover` when the broker did not advertise GetMessages", async () => {
    const client = make();
    await client.connect();
    assert.equal(client.supportsRecovery, false);
    fake.push("messageAdded", { channelSid: "CH0", index: 0, author: "a", authorRole: "agent", body: "x", attributes: {}, dateCreated: "" });
    await waitFor(() => client.channel("CH0")?.lastIndex === 0);
    const connectsBefore = fake.commandsOf("Connect").length;
    const reconnected = nextEvent(client, "reconnected");
    fake.closeAll(4000, "shutting down");
    await reconnected;
    const connect = fake.commandsOf("Connect")[connectsBefore];
    assert.equal(connect.payload.recover, undefined);
    assert.equal(connect.payload.resumeToken, "resume-1");
    assert.equal(client.connectionState, "connected");
  });

  test("close 4001 does not reconnect and rejects queued commands", async () => {
    const client = make();
    await client.connect();
    const connectsBefore = fake.commandsOf("Connect").length;
    const disconnected = nextEvent(client, "disconnected");
    let reconnecting = 0;
    client.on("reconnecting", () => reconnecting++);
    fake.closeAll(4001, "unauthorized");
    const info = await disconnected;
    assert.equal(info.code, 4001);
    assert.equal(info.willReconnect, false);
    assert.equal(client.connectionState, "closed");
    await assert.rejects(client.actions.invoke("GetActions"), { code: "not_connected" });
    assert.equal(reconnecting, 0, "no reconnect is scheduled after 4001");
    assert.equal(fake.commandsOf("Connect").length, connectsBefore);
  });

  test("close 4008 reconnects and recovers from the last index seen, deduplicating", async () => {
    fake.actions = ["GetActions", "SendMessage", "GetMessages", "Subscribe"];
    try {
      const client = make();
      const seen = [];
      client.on("messageAdded", (m) => seen.push(m.index));
      await client.connect();
      assert.equal(client.supportsRecovery, true);
      for (const index of [0, 1]) {
        fake.push("messageAdded", { channelSid: "CH0", index, author: "a", authorRole: "agent", body: `m${index}`, attributes: {}, dateCreated: "" });
      }
      await waitFor(() => seen.length === 2);
      const connectsBefore = fake.commandsOf("Connect").length;
      const reconnected = nextEvent(client, "reconnected");
      fake.closeAll(4008, "slow consumer");
      await reconnected;
      const connect = fake.commandsOf("Connect")[connectsBefore];
      assert.deepEqual(connect.payload.recover, { CH0: 1 });
      // The broker replays from index 2; a duplicate of 1 must be dropped.
      for (const index of [1, 2, 3]) {
        fake.push("messageAdded", { channelSid: "CH0", index, author: "a", authorRole: "agent", body: `m${index}`, attributes: {}, dateCreated: "" });
      }
      await waitFor(() => seen.length === 4);
      assert.deepEqual(seen, [0, 1, 2, 3]);
    } finally {
      fake.actions = ["GetActions", "SendMessage"];
    }
  });

  test("commands invoked while reconnecting are sent once the session is back", async () => {
    const client = make({ reconnect: { initialDelay: 100, maxDelay: 100, jitter: 0 } });
    await client.connect();
    const reconnecting = nextEvent(client, "reconnecting");
    fake.closeAll(4000);
    await reconnecting;
    assert.equal(client.connectionState, "reconnecting");
    const result = await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "queued" });
    assert.equal(result.echo.body, "queued");
  });

  test("a refused stored resume token falls back to a new anonymous identity", async () => {
    const storage = new MemoryStorage();
    const client = make({ storage, storageKey: "k" });
    storage.setItem("k", "stale-token");
    try {
      const reset = nextEvent(client, "identityReset");
      fake.handlers.Connect = (payload, session, frame) => {
        if (payload.resumeToken === "stale-token") return { error: { code: "unauthorized", message: "unknown resume token" } };
        session.send({
          id: frame.id,
          result: { sessionId: "S-new", identity: "cust-2", role: "customer", resumeToken: "fresh", engagement: null, widget: { expanded: false }, inputText: {}, actions: [] },
        });
        return undefined;
      };
      const result = await client.connect();
      await reset;
      assert.equal(result.identity, "cust-2");
      await waitFor(() => storage.getItem("k") === "fresh");
    } finally {
      delete fake.handlers.Connect;
    }
  });

  test("errors carry the contract's code and extra fields", async () => {
    const client = make();
    await client.connect();
    fake.handlers.StartEngagement = () => ({ error: { code: "outside_business_hours", message: "closed", opensAt: "2030-01-01T09:00:00Z" } });
    try {
      await assert.rejects(client.actions.invoke("StartEngagement", {}), (err) => {
        assert.equal(err.code, "outside_business_hours");
        assert.equal(err.opensAt, "2030-01-01T09:00:00Z");
        assert.equal(err.action, "StartEngagement");
        return true;
      });
    } finally {
      delete fake.handlers.StartEngagement;
    }
  });

  test("a reply that never comes rejects with timeout", async () => {
    const client = make({ requestTimeout: 200 });
    await client.connect();
    fake.handlers.SendTyping = () => undefined;
    try {
      await assert.rejects(client.actions.invoke("SendTyping", { channelSid: "CH0" }), { code: "timeout" });
    } finally {
      delete fake.handlers.SendTyping;
    }
  });

  test("msgpack encoding negotiates the msgpack subprotocol and binary frames", async () => {
    const client = make({ encoding: "msgpack" });
    const result = await client.connect();
    assert.equal(result.identity, "cust-1");
    const session = fake.sessions.at(-1);
    assert.equal(session.binary, true);
    const r = await client.actions.invoke("SendMessage", { channelSid: "CH0", body: "packed", messageAttributes: undefined });
    assert.deepEqual(r.echo, { channelSid: "CH0", body: "packed" });
  });

  test("state is kept from pushes: widget, drafts, typing, engagement end", async () => {
    const client = make();
    await client.connect();
    assert.deepEqual(client.engagement, { channelSid: "CH0", startedAt: "2025-01-01T00:00:00Z" });
    fake.push("widgetStateChanged", { expanded: true });
    await waitFor(() => client.widget.expanded === true);
    fake.push("inputTextSet", { channelSid: "CH0", body: "draft" });
    await waitFor(() => client.inputText.CH0 === "draft");
    fake.push("typingStarted", { channelSid: "CH0", identity: "agent-1" });
    await waitFor(() => client.channel("CH0")?.typing.includes("agent-1"));
    fake.push("engagementRestarted", { channelSid: "CH0" });
    await waitFor(() => client.engagement === null);
    assert.equal(client.inputText.CH0, undefined);
  });
});
