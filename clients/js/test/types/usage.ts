import { SwitchboardClient, SwitchboardError, MemoryStorage, type Message } from "@switchboard/client";
import { createWebChat } from "@switchboard/client/webchat";
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
function embed() {
  const chat = createWebChat({ url: "ws://127.0.0.1:8080/ws", brand: { name: "Acme" }, theme: { accent: "#0b6e4f" }, position: "bottom-left" });
  chat.Actions.on("afterStartEngagement", (_payload, result) => chat.Actions.invokeAction("SendMessage", { channelSid: result.channelSid, body: "From the pricing page" }));
  chat.Actions.replaceAction("SendMessage", (payload, original) => original({ ...payload, body: String(payload.body).trim() }));
  chat.Actions.registerAction("OpenPricing", async ({ plan }: { plan: string }) => ({ opened: plan }));
  void chat.actions.triggerAction("OpenPricing", { plan: "pro" }).then((r) => r.opened);
  void chat.actions.getActions().then((list) => list.map((a) => a.name));
  void chat.ready.then((session) => session.identity);
}
void embed;
