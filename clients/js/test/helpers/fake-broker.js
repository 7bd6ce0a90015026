// A scripted stand-in for the broker, for the SDK behaviours the real broker
// cannot be made to show on demand (close codes 4001/4008, recovery before
// the broker supports it, stale resume tokens). Tests against the real
// broker live in test/sdk/broker.test.js.
import { WebSocketServer } from "ws";
import { decode, encode } from "@msgpack/msgpack";

export async function startFakeBroker({ actions = ["GetActions", "SendMessage"], handlers = {} } = {}) {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    path: "/ws",
    handleProtocols: (protocols) => {
      if (protocols.has("switchboard.v1.msgpack")) return "switchboard.v1.msgpack";
      if (protocols.has("switchboard.v1.json")) return "switchboard.v1.json";
      return false;
    },
  });
  await new Promise((resolve) => wss.once("listening", resolve));
  const fake = {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    /** Every command received, as {session, frame}. */
    commands: [],
    sessions: [],
    connects: 0,
    actions,
    handlers,
    /** Pushes an event to every open session. */
    push(event, data) {
      for (const s of fake.sessions) if (s.open) s.send({ event, data });
    },
    /** Closes every open session with `code`. */
    closeAll(code, reason = "") {
      for (const s of fake.sessions) if (s.open) s.ws.close(code, reason);
    },
    commandsOf(action) {
      return fake.commands.filter((c) => c.frame.action === action).map((c) => c.frame);
    },
    async stop() {
      for (const client of wss.clients) client.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };

  wss.on("connection", (ws) => {
    const binary = ws.protocol === "switchboard.v1.msgpack";
    const session = {
      ws,
      open: true,
      binary,
      send(frame) {
        ws.send(binary ? encode(frame) : JSON.stringify(frame), { binary });
      },
    };
    fake.sessions.push(session);
    ws.on("close", () => {
      session.open = false;
    });
    ws.on("message", async (data, isBinary) => {
      const frame = isBinary ? decode(data) : JSON.parse(String(data));
      fake.commands.push({ session, frame });
      const handler = fake.handlers[frame.action];
      if (handler) {
        const reply = await handler(frame.payload ?? {}, session, frame);
        if (reply === undefined) return; // the handler answers (or not) itself
        session.send({ id: frame.id, ...reply });
        return;
      }
      if (frame.action === "Connect") {
        fake.connects += 1;
        session.send({
          id: frame.id,
          result: {
            sessionId: `S${fake.connects}`,
            identity: "cust-1",
            role: "customer",
            resumeToken: "resume-1",
            engagement: { channelSid: "CH0", startedAt: "2025-01-01T00:00:00Z" },
            widget: { expanded: false },
            inputText: {},
            actions: fake.actions,
            ...(frame.payload?.recover ? { recovered: Object.fromEntries(Object.keys(frame.payload.recover).map((k) => [k, true])) } : {}),
          },
        });
        return;
      }
      if (frame.action === "GetActions") {
        session.send({ id: frame.id, result: { actions: fake.actions.map((name) => ({ name, kind: "builtin", description: "" })) } });
        return;
      }
      session.send({ id: frame.id, result: { echo: frame.payload ?? null } });
    });
  });
  return fake;
}
