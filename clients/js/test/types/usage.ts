import { SwitchboardClient, SwitchboardError, MemoryStorage, type Message } from "@switchboard/client";
declare const token: string;
// Compiled with tsc --strict by test/sdk/types.test.js: the hand-written
// declarations must accept the README's usage.
declare function render(m: Message): void;
async function main() {
  const client = new SwitchboardClient({ url: "ws://127.0.0.1:8080/ws", token, encoding: "msgpack", storage: new MemoryStorage() });
  const r = await client.connect();
  const id: string = r.identity;
  client.actions.addListener("afterStartEngagement", (payload, result) => { const s: string = result.channelSid; void payload.formData; });
  client.actions.addListener("beforeSendMessage", (payload, cancel) => { if (payload.body === "x") cancel("no"); });
  client.on("messageAdded", (msg) => render(msg));
  client.on("typingStarted", (e) => e.identity.toUpperCase());
  const { channelSid } = await client.actions.invoke("StartEngagement", { formData: { name: "Ada" } });
  const sent = await client.actions.invoke("SendMessage", { channelSid, body: "Hello" });
  const n: number = sent.index;
  await client.actions.trigger("contact-sales");
  const actions = await client.actions.list();
  actions.forEach((a) => a.kind);
  client.actions.replace("SendMessage", (p, original) => original({ ...p, body: p.body.trim() }));
  client.actions.register("Custom", async (p: { x: number }) => p.x + 1);
  try { await client.actions.invoke("Custom", { x: 1 }); } catch (e) { if (e instanceof SwitchboardError) e.code.toUpperCase(); }
  client.close();
  void id; void n;
}
void main;
