#!/usr/bin/env node
// Comparison peer for switchboard-load: the least a WebSocket server must do
// to run the harness's `fanout`, `chat` and `idle` scenarios, written on
// uWebSockets.js (`app.publish` / `ws.subscribe`). No storage, no history, no
// authentication: it is a yardstick for the broker's CPU and memory per
// connection, not a chat server.
//
//   node load-tests/peers/uws/server.js [--port 0] [--host 127.0.0.1]
//   prints: uws-peer listening on 127.0.0.1:PORT
//
// Protocol: JSON text frames. Commands are protocol v1's envelope
// `{"id": N, "action": A, "payload": {...}}`; replies `{"id": N, "result":
// {...}}` or `{"id": N, "error": {"code", "message"}}`; pushes `{"event": E,
// "data": {...}}`, with protocol v1's field names, so the harness reads both
// servers' frames with one decoder. Actions:
//
//   hello     {identity?}                     -> {identity}   (anon-<32 hex digits> when none is given)
//   subscribe {channelSid}                    -> {channelSid, lastIndex}
//   publish   {channelSid, body, messageAttributes?}
//                                             -> {channelSid, index, dateCreated}
//             pushes messageAdded {channelSid, index, author, authorRole, body,
//             attributes, dateCreated} to every subscriber of the topic, the
//             author included, as one frame encoded once (`app.publish`)
//   typing    {channelSid}                    -> {}
//             pushes typingStarted {channelSid, identity} to the other
//             subscribers; the author's next publish pushes typingEnded first
//
// A command needs `hello` first; `publish` and `typing` need a subscription
// to the topic (the broker's membership check). Index numbering is per topic,
// from 0, in publish order.
"use strict";

const path = require("path");

// Load the native binding directly: the package's entry point silently falls
// back to a pure-JS server when the binary does not match this Node, which
// would make every figure meaningless.
const pkgDir = path.dirname(require.resolve("@trufflesuite/uws-js-unofficial/package.json"));
const binary = path.join(
  pkgDir,
  "binaries",
  `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`,
);
let uws;
try {
  uws = require(binary);
} catch (e) {
  console.error(`uws-peer: cannot load the native uWebSockets.js binding ${binary}: ${e.message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { host: "127.0.0.1", port: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === "--port" && v !== undefined) {
      opts.port = Number(v);
      i++;
    } else if (a === "--host" && v !== undefined) {
      opts.host = v;
      i++;
    } else {
      console.error(`uws-peer: unknown argument ${a}\nusage: server.js [--port N] [--host 127.0.0.1]`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    console.error(`uws-peer: bad --port ${opts.port}`);
    process.exit(2);
  }
  // Load tests only ever run on loopback.
  if (!/^127\.\d+\.\d+\.\d+$/.test(opts.host)) {
    console.error(`uws-peer: --host ${opts.host} refused: loopback (127.0.0.0/8) only`);
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// Next index per topic.
const nextIndex = new Map();
let anonymous = 0;

function reply(ws, id, result) {
  ws.send(JSON.stringify({ id, result }), false);
}

function fail(ws, id, code, message) {
  ws.send(JSON.stringify({ id, error: { code, message } }), false);
}

function topicOf(ws, id, payload) {
  const t = payload && payload.channelSid;
  if (typeof t !== "string" || t.length === 0 || t.length > 256) {
    fail(ws, id, "bad_request", "payload.channelSid must be a non-empty string");
    return null;
  }
  return t;
}

function endTyping(ws, user) {
  if (user.typing !== null) {
    ws.publish(
      user.typing,
      JSON.stringify({ event: "typingEnded", data: { channelSid: user.typing, identity: user.identity } }),
      false,
    );
    user.typing = null;
  }
}

function onCommand(ws, user, cmd) {
  const id = typeof cmd.id === "number" ? cmd.id : null;
  const payload = cmd.payload;
  if (cmd.action === "hello") {
    const given = payload && payload.identity;
    if (given !== undefined && (typeof given !== "string" || given.length === 0 || given.length > 256)) {
      return fail(ws, id, "bad_request", "payload.identity must be a non-empty string");
    }
    // As long as the broker's anonymous identities ("anon-" + 32 hex digits),
    // so that both servers' pushes carry the same bytes.
    user.identity = given || `anon-${(++anonymous).toString(16).padStart(32, "0")}`;
    // A named client stands for an agent, an anonymous one for a customer.
    user.role = given ? "agent" : "customer";
    return reply(ws, id, { identity: user.identity });
  }
  if (user.identity === null) {
    return fail(ws, id, "unauthorized", "say hello first");
  }
  switch (cmd.action) {
    case "subscribe": {
      const topic = topicOf(ws, id, payload);
      if (topic === null) return;
      ws.subscribe(topic);
      const next = nextIndex.get(topic) ?? 0;
      return reply(ws, id, { channelSid: topic, lastIndex: next - 1 });
    }
    case "publish": {
      const topic = topicOf(ws, id, payload);
      if (topic === null) return;
      if (typeof payload.body !== "string" || payload.body.length === 0) {
        return fail(ws, id, "bad_request", "payload.body must be a non-empty string");
      }
      if (!ws.isSubscribed(topic)) {
        return fail(ws, id, "not_a_member", "publish needs a subscription to the topic");
      }
      if (user.typing === topic) endTyping(ws, user);
      const index = nextIndex.get(topic) ?? 0;
      nextIndex.set(topic, index + 1);
      const dateCreated = new Date().toISOString();
      // Encoded once, written to every subscriber (the author too).
      const frame = JSON.stringify({
        event: "messageAdded",
        data: {
          channelSid: topic,
          index,
          author: user.identity,
          authorRole: user.role,
          body: payload.body,
          attributes: payload.messageAttributes ?? {},
          dateCreated,
        },
      });
      app.publish(topic, frame, false);
      return reply(ws, id, { channelSid: topic, index, dateCreated });
    }
    case "typing": {
      const topic = topicOf(ws, id, payload);
      if (topic === null) return;
      if (!ws.isSubscribed(topic)) {
        return fail(ws, id, "not_a_member", "typing needs a subscription to the topic");
      }
      if (user.typing !== topic) {
        endTyping(ws, user);
        user.typing = topic;
        // ws.publish: everyone subscribed but the typer.
        ws.publish(
          topic,
          JSON.stringify({ event: "typingStarted", data: { channelSid: topic, identity: user.identity } }),
          false,
        );
      }
      return reply(ws, id, {});
    }
    default:
      return fail(ws, id, "unknown_action", `unknown action ${JSON.stringify(cmd.action)}`);
  }
}

const app = uws.App();
app.ws("/*", {
  compression: uws.DISABLED,
  maxPayloadLength: 64 * 1024,
  // The broker's per-session outbound bound ([limits] outbox_bytes, 8 MiB);
  // past it a slow reader is closed rather than skipped, so a drop shows.
  maxBackpressure: 8 * 1024 * 1024,
  closeOnBackpressureLimit: true,
  idleTimeout: 120,
  sendPingsAutomatically: true,
  open: (ws) => {
    const user = ws.getUserData();
    user.identity = null;
    user.role = "customer";
    user.typing = null;
  },
  message: (ws, data, isBinary) => {
    let cmd;
    try {
      // A view of uWS's buffer, decoded right away (it is only valid in this call).
      cmd = JSON.parse(Buffer.from(data).toString("utf8"));
    } catch {
      return fail(ws, null, "bad_request", isBinary ? "binary frames are not supported" : "invalid JSON");
    }
    if (cmd === null || typeof cmd !== "object") {
      return fail(ws, null, "bad_request", "a command is a JSON object");
    }
    onCommand(ws, ws.getUserData(), cmd);
  },
});

app.listen(opts.host, opts.port, (token) => {
  if (!token) {
    console.error(`uws-peer: cannot listen on ${opts.host}:${opts.port}`);
    process.exit(1);
  }
  console.log(`uws-peer listening on ${opts.host}:${uws.us_socket_local_port(token)}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(0));
}
