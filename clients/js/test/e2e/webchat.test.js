// The embeddable web-chat widget in headless Chromium, embedded by a page
// of ANOTHER origin (a static server on its own loopback port) with one
// script tag, against a real broker. Each test names the problem it guards.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { SwitchboardClient } from "@switchboard/client";
import { DEFAULT_CONFIG, GREETING, startBroker } from "../helpers/broker.js";
import { axeViolations, docShot, launchBrowser, watchErrors } from "../helpers/browser.js";
import { freePort, startSite } from "../helpers/site.js";
import { nextEvent } from "../helpers/wait.js";

const VIEWPORT = { width: 1100, height: 720 };
const TIMEOUT = 15_000;
// Quick reconnects keep the broker-restart tests short.
const FAST = { reconnect: { initialDelay: 100, maxDelay: 500 }, retry: { initialDelay: 200, maxDelay: 1000 } };

/** Waits until an element (the widget's shadow DOM included) contains `text`. */
function waitText(page, selector, text) {
  return page.locator(selector, { hasText: text }).first().waitFor({ state: "attached" });
}

async function connected(page) {
  await page.waitForFunction(() => window.chat?.client.connectionState === "connected" && window.chat.client.sessionId);
}

async function startChat(page, name, question) {
  await page.click("#sb-launcher");
  await page.fill("#sb-name", name);
  if (question) await page.fill("#sb-question", question);
  await page.click("#sb-start");
  await page.locator("#sb-chat").waitFor();
}

function agent(broker, name) {
  return new SwitchboardClient({ url: broker.wsUrl, token: broker.token(name, "agent"), storage: false });
}

describe("web-chat widget embedded from another origin", () => {
  let broker;
  let site;
  let browser;
  let workdir;
  const errors = [];

  before(async () => {
    workdir = await mkdtemp(join(tmpdir(), "switchboard-webchat-"));
    broker = await startBroker({ config: DEFAULT_CONFIG, workdir });
    site = await startSite(broker.httpUrl);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await site?.close();
    await broker?.stop();
    await rm(workdir, { recursive: true, force: true });
  });

  async function open(context, config = {}, label = "site") {
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    const seen = watchErrors(page, label);
    page.errorsRef = seen;
    errors.push(seen);
    await page.goto(site.page(config));
    return page;
  }

  /** Console errors other than failed loads/connections the test caused on purpose. */
  function assertNoPageErrors(allow = /WebSocket connection|ERR_CONNECTION_REFUSED/) {
    const found = errors.flat().filter((e) => !allow.test(e));
    assert.deepEqual(found, [], "no JavaScript errors on the pages");
  }

  test("one script tag on another origin: CORS, shadow DOM isolation, a whole chat, the actions API", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const grace = agent(broker, "Grace");
    try {
      const page = await open(context, { brand: { name: "Other Shop" }, theme: { accent: "#0b6e4f" }, position: "bottom-left" });
      await connected(page);
      assert.notEqual(new URL(page.url()).origin, broker.httpUrl, "the page is on another origin");
      // The SDK itself can be fetched cross-origin (problem 2: it had no
      // CORS headers, and the browser refused to hand it to the page).
      const fetched = await page.evaluate(async (url) => {
        try {
          const response = await fetch(`${url}/sdk/index.js`);
          return response.ok && (await response.text()).includes("SwitchboardClient");
        } catch (error) {
          return String(error);
        }
      }, broker.httpUrl);
      assert.equal(fetched, true);
      const direct = await fetch(`${broker.httpUrl}/webchat/v1/webchat.js`, { headers: { Origin: site.origin } });
      assert.equal(direct.headers.get("access-control-allow-origin"), "*");

      // The page's CSS does not reach in; the site's theme and position do.
      const look = await page.locator("#sb-launcher").evaluate((el) => {
        const style = getComputedStyle(el);
        return { background: style.backgroundColor, font: style.fontFamily, left: el.getBoundingClientRect().left };
      });
      assert.equal(look.background, "rgb(11, 110, 79)");
      assert.doesNotMatch(look.font, /Georgia/);
      assert.ok(look.left < 100, "bottom-left");

      // The page's code drives it through the web-chat actions API.
      await page.evaluate(() => {
        const { Actions } = window.chat;
        window.log = [];
        Actions.on("afterStartEngagement", (payload, result) =>
          Actions.invokeAction("SendMessage", { channelSid: result.channelSid, body: "I came from the pricing page" }),
        );
        Actions.replaceAction("SendMessage", (payload, original) => original({ ...payload, body: payload.body.replace(/darn/g, "d**n") }));
        Actions.registerAction("OpenPricing", async ({ plan }) => ({ opened: plan }), { description: "Opens the pricing page" });
      });
      const triggered = await page.evaluate(() => window.chat.actions.triggerAction("OpenPricing", { plan: "pro" }));
      assert.deepEqual(triggered, { opened: "pro" });
      const listed = await page.evaluate(async () => (await window.chat.actions.getActions()).map((a) => `${a.kind}:${a.name}`));
      assert.ok(listed.includes("client:OpenPricing"), listed.join());
      assert.ok(listed.includes("custom:contact-sales"), listed.join());

      await grace.connect();
      await grace.actions.invoke("Subscribe", { channel: "queue:default" });
      const started = nextEvent(grace, "engagementStarted");
      await startChat(page, "Ada", "My darn widget squeaks.");
      const { channelSid } = await started;
      await waitText(page, "#sb-messages", GREETING);
      await waitText(page, "#sb-messages", "I came from the pricing page");
      await waitText(page, "#sb-messages .msg--self", "My d**n widget squeaks.");
      await grace.actions.invoke("JoinChannel", { channelSid });
      const { messages } = await grace.actions.invoke("GetMessages", { channelSid });
      assert.ok(messages.some((m) => m.body === "I came from the pricing page"));
      await grace.actions.invoke("SendMessage", { channelSid, body: "Hello Ada, Grace here." });
      await waitText(page, "#sb-messages .msg--agent", "Hello Ada, Grace here.");
      await waitText(page, "#sb-status", "Chatting with Grace");
      await docShot(page, "widget-other-origin");
      assertNoPageErrors();
    } finally {
      grace.close();
      await context.close();
    }
  });

  test("problem 1: a fresh tab and a reloaded tab show the agent in the chat and the joined line", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const grace = agent(broker, "Grace");
    try {
      const tab1 = await open(context, {}, "tab1");
      await connected(tab1);
      await startChat(tab1, "Bea");
      const channelSid = await tab1.evaluate(() => window.chat.client.engagement.channelSid);
      await grace.connect();
      await grace.actions.invoke("JoinChannel", { channelSid });
      await grace.actions.invoke("SendMessage", { channelSid, body: "Hi Bea" });
      await waitText(tab1, "#sb-status", "Chatting with Grace");

      const tab2 = await open(context, {}, "tab2");
      await connected(tab2);
      await tab2.locator("#sb-chat").waitFor();
      await waitText(tab2, "#sb-status", "Chatting with Grace");
      await waitText(tab2, "#sb-messages", "Grace joined the chat");
      // The joined line comes before Grace's first message.
      const lines = await tab2.locator("#sb-messages li").allInnerTexts();
      const joinedAt = lines.findIndex((l) => l.includes("Grace joined the chat"));
      const hiAt = lines.findIndex((l) => l.includes("Hi Bea"));
      assert.ok(joinedAt >= 0 && joinedAt < hiAt, lines.join(" | "));

      await tab1.reload();
      await connected(tab1);
      await waitText(tab1, "#sb-status", "Chatting with Grace");
      await waitText(tab1, "#sb-messages", "Grace joined the chat");
      assert.equal(await tab1.locator("#sb-status", { hasText: "Waiting" }).count(), 0);
      assertNoPageErrors();
    } finally {
      grace.close();
      await context.close();
    }
  });

  test("problems 3 and 8: sending while the broker is down shows a pending bubble, then its delivery; a timeout says so in full, with a retry", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const grace = agent(broker, "Grace");
    try {
      const page = await open(context, { ...FAST, requestTimeout: 2500 }, "offline");
      await connected(page);
      await startChat(page, "Cy");
      const channelSid = await page.evaluate(() => window.chat.client.engagement.channelSid);
      await grace.connect();
      await grace.actions.invoke("JoinChannel", { channelSid });
      await waitText(page, "#sb-status", "Chatting with Grace");
      grace.close();

      // Broker down: the message shows at once as being sent.
      const port = broker.port;
      await broker.stop({ keepWorkdir: true });
      await waitText(page, "#sb-status", "Reconnecting");
      await page.fill("#sb-input", "Are you still there?");
      await page.press("#sb-input", "Enter");
      await page.locator('#sb-messages .msg[data-state="sending"]', { hasText: "Are you still there?" }).waitFor();
      await waitText(page, "#sb-messages", "Sending…");
      await docShot(page, "widget-sending-offline");

      // Broker back: the same bubble is delivered, exactly once.
      broker = await startBroker({ config: DEFAULT_CONFIG, workdir, port, secret: broker.secret });
      await page.locator('#sb-messages .msg[data-state="sent"]', { hasText: "Are you still there?" }).waitFor();
      await waitText(page, "#sb-status", "Chatting with Grace");
      assert.equal(await page.locator("#sb-messages .msg", { hasText: "Are you still there?" }).count(), 1);

      // Down again, long enough for the send to time out.
      await connected(page);
      await broker.stop({ keepWorkdir: true });
      await waitText(page, "#sb-status", "Reconnecting");
      await page.fill("#sb-input", "Hello?");
      await page.press("#sb-input", "Enter");
      const failed = page.locator('#sb-messages .msg[data-state="failed"]', { hasText: "Hello?" });
      await failed.waitFor();
      const note = await failed.locator(".msg-state").innerText();
      assert.match(note, /Not sent\. No connection right now\./);
      assert.doesNotMatch(note, /timeout|connection_lost|not_connected|\(/, "no raw error code");
      // The header still says what the connection does, not the error.
      await waitText(page, "#sb-status", "Reconnecting");
      const clipped = await failed.locator(".msg-state").evaluate((el) => el.scrollWidth > el.clientWidth + 1);
      assert.equal(clipped, false, "the failure is readable in full");
      await docShot(page, "widget-not-sent");

      broker = await startBroker({ config: DEFAULT_CONFIG, workdir, port, secret: broker.secret });
      await connected(page);
      await failed.getByRole("button", { name: "Retry" }).click();
      await page.locator('#sb-messages .msg[data-state="sent"]', { hasText: "Hello?" }).waitFor();
      assertNoPageErrors();
    } finally {
      grace.close();
      await context.close();
      // The other tests need the broker, even when this one failed midway.
      if (broker.process.exitCode !== null || broker.process.signalCode !== null) {
        broker = await startBroker({ config: DEFAULT_CONFIG, workdir, port: broker.port, secret: broker.secret });
      }
    }
  });

  test("problem 4: a first connection that fails is retried on its own, and Try again keeps the panel open", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const port = await freePort();
    let second;
    try {
      const url = `ws://127.0.0.1:${port}/ws`;
      const auto = await open(context, { url, retry: { initialDelay: 200, maxDelay: 800 } }, "auto-retry");
      const manual = await open(context, { url, retry: { initialDelay: 60_000 } }, "manual-retry");
      for (const page of [auto, manual]) {
        await page.click("#sb-launcher");
        await page.locator("#sb-offline", { hasText: "can't reach" }).waitFor();
      }
      await manual.click("#sb-retry");
      assert.equal(await manual.locator("#sb-panel").isVisible(), true);

      second = await startBroker({ config: DEFAULT_CONFIG, port });
      // Retried without a click, the open panel now shows the form.
      await auto.locator("#sb-form").waitFor();
      assert.equal(await auto.locator("#sb-panel").isVisible(), true);
      // Try again connects, and the panel the user opened stays open.
      await manual.click("#sb-retry");
      await manual.locator("#sb-form").waitFor();
      await manual.waitForFunction(() => window.chat.client.widget.expanded === true);
      assert.equal(await manual.locator("#sb-panel").isVisible(), true);
      assertNoPageErrors();
    } finally {
      await context.close();
      await second?.stop();
    }
  });

  test("problem 5: Restart asks first; Cancel keeps the chat, confirming restarts it", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    try {
      const page = await open(context, {}, "restart");
      await connected(page);
      await startChat(page, "Dee");
      await page.click("#sb-restart");
      const dialog = page.getByRole("alertdialog", { name: "Restart the chat?" });
      await dialog.waitFor();
      assert.equal(await page.locator("#sb-chat").isVisible(), true, "one click does not restart");
      await docShot(page, "widget-restart-confirm");
      await dialog.getByRole("button", { name: "Cancel" }).click();
      await dialog.waitFor({ state: "detached" });
      assert.equal(await page.evaluate(() => window.chat.client.engagement !== null), true);
      await page.click("#sb-restart");
      await dialog.getByRole("button", { name: "Restart chat" }).click();
      await page.locator("#sb-form").waitFor();
      assertNoPageErrors();
    } finally {
      await context.close();
    }
  });

  test("problem 7: after a reload the widget shows the newest message and keeps its unread count", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const grace = agent(broker, "Grace");
    try {
      const page = await open(context, {}, "reload");
      await connected(page);
      await startChat(page, "Eve");
      const channelSid = await page.evaluate(() => window.chat.client.engagement.channelSid);
      await grace.connect();
      await grace.actions.invoke("JoinChannel", { channelSid });
      for (let i = 1; i <= 25; i++) await grace.actions.invoke("SendMessage", { channelSid, body: `Line ${i} of a long answer` });
      await waitText(page, "#sb-messages", "Line 25 of a long answer");

      await page.reload();
      await connected(page);
      await waitText(page, "#sb-messages", "Line 25 of a long answer");
      const atBottom = () =>
        page.locator("#sb-messages").evaluate((el) => el.scrollHeight > el.clientHeight && el.scrollHeight - el.scrollTop - el.clientHeight < 2);
      await page.waitForFunction(
        () => {
          const el = document.querySelector(".switchboard-webchat").shadowRoot.querySelector("#sb-messages");
          return el.scrollHeight - el.scrollTop - el.clientHeight < 2;
        },
      );
      assert.equal(await atBottom(), true, "scrolled to the newest message");

      // Minimized, two messages arrive: the count survives a reload.
      await page.click("#sb-minimize");
      await grace.actions.invoke("SendMessage", { channelSid, body: "One more thing" });
      await grace.actions.invoke("SendMessage", { channelSid, body: "And another" });
      await page.locator("#sb-unread", { hasText: /^2$/ }).waitFor({ state: "attached" });
      await page.reload();
      await connected(page);
      await page.locator("#sb-unread", { hasText: /^2$/ }).waitFor({ state: "attached" });
      assert.equal(await page.getByRole("button", { name: "Chat with us (2 unread)" }).count(), 1);
      await docShot(page, "widget-unread");
      await page.click("#sb-launcher");
      await page.locator("#sb-unread").waitFor({ state: "hidden" });
      await page.reload();
      await connected(page);
      await page.locator("#sb-panel").waitFor();
      await page.click("#sb-minimize");
      assert.equal(await page.locator("#sb-unread").isHidden(), true, "seen messages stay seen");
      assertNoPageErrors();
    } finally {
      grace.close();
      await context.close();
    }
  });

  test("problem 8: day separators and full dates, delivery state, one landmark, full screen on a phone", async () => {
    const context = await browser.newContext({ viewport: { width: 375, height: 667 }, isMobile: true, hasTouch: true });
    try {
      const page = await open(context, {}, "phone");
      await connected(page);
      assert.equal(await page.getByRole("region").count(), 0, "no landmark while minimized");
      await startChat(page, "Fay", "Hello from my phone");
      await page.locator('#sb-messages .msg--self[data-state="sent"]', { hasText: "Hello from my phone" }).waitFor();
      await waitText(page, "#sb-messages .msg--self .msg-state", "Sent");
      assert.equal(await page.getByRole("region", { name: "Chat with us" }).count(), 1, "one landmark, named once");

      // Full screen on a 375 px phone.
      const box = await page.locator("#sb-panel").boundingBox();
      assert.deepEqual(box, { x: 0, y: 0, width: 375, height: 667 });
      await docShot(page, "widget-phone");

      // A day line above today's messages; each time carries its full date.
      const firstDay = page.locator("#sb-messages li.day").first();
      assert.equal((await firstDay.innerText()).trim(), "Today");
      const time = page.locator("#sb-messages .msg--self time").first();
      assert.match(await time.getAttribute("datetime"), /^\d{4}-\d{2}-\d{2}T/);
      assert.match(await time.getAttribute("title"), /\d{4}/);
      // Seen from tomorrow, the same messages are yesterday's.
      const tomorrow = new Date(Date.now() + 24 * 3600 * 1000);
      await page.clock.setFixedTime(tomorrow);
      await page.reload();
      await connected(page);
      await waitText(page, "#sb-messages li.day", "Yesterday");
      assertNoPageErrors();
    } finally {
      await context.close();
    }
  });

  test("accessibility: axe finds nothing serious closed, open and in a chat; a keyboard-only chat", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const grace = agent(broker, "Grace");
    try {
      const page = await open(context, {}, "a11y");
      await connected(page);
      assert.deepEqual(await axeViolations(page), [], "closed");

      // Keyboard only: Tab to the launcher, open, fill the form, chat, restart, minimize.
      const focused = () => page.evaluate(() => {
        let el = document.activeElement;
        while (el?.shadowRoot?.activeElement) el = el.shadowRoot.activeElement;
        return el?.id || el?.tagName;
      });
      for (let i = 0; i < 10 && (await focused()) !== "sb-launcher"; i++) await page.keyboard.press("Tab");
      assert.equal(await focused(), "sb-launcher");
      await page.keyboard.press("Enter");
      await page.locator("#sb-form").waitFor();
      await page.waitForFunction(() => document.querySelector(".switchboard-webchat")?.shadowRoot.activeElement?.id === "sb-name");
      assert.deepEqual(await axeViolations(page), [], "open, with the form");
      await page.keyboard.press("Enter"); // an empty required name
      await waitText(page, "#sb-form-error", "Please fill in Name.");
      assert.equal(await focused(), "sb-name");
      await page.keyboard.type("Gus");
      await page.keyboard.press("Tab");
      await page.keyboard.type("gus@example.com");
      await page.keyboard.press("Tab");
      await page.keyboard.type("Can I pay by invoice?");
      await page.keyboard.press("Tab");
      assert.equal(await focused(), "sb-start");
      await page.keyboard.press("Enter");
      await page.locator("#sb-chat").waitFor();
      await page.locator('.msg--self[data-state="sent"]', { hasText: "Can I pay by invoice?" }).waitFor();
      assert.equal(await focused(), "sb-input");
      const channelSid = await page.evaluate(() => window.chat.client.engagement.channelSid);
      await grace.connect();
      await grace.actions.invoke("JoinChannel", { channelSid });
      await grace.actions.invoke("SendMessage", { channelSid, body: "Yes, you can." });
      await waitText(page, "#sb-messages", "Yes, you can.");
      await page.keyboard.type("Thanks!");
      await page.keyboard.press("Enter");
      await page.locator('.msg--self[data-state="sent"]', { hasText: "Thanks!" }).waitFor();
      assert.deepEqual(await axeViolations(page), [], "in a chat");
      await docShot(page, "widget-chat");

      // Restart by keyboard: the confirmation takes focus; Escape cancels it.
      await page.locator("#sb-restart").focus();
      await page.keyboard.press("Enter");
      await page.getByRole("alertdialog").waitFor();
      assert.equal(await focused(), "sb-confirm-cancel");
      assert.deepEqual(await axeViolations(page), [], "with the confirmation");
      await page.keyboard.press("Escape");
      await page.getByRole("alertdialog").waitFor({ state: "detached" });
      assert.equal(await focused(), "sb-restart");
      // Escape minimizes and gives focus back to the launcher.
      await page.keyboard.press("Escape");
      await page.locator("#sb-launcher").waitFor();
      assert.equal(await focused(), "sb-launcher");
      assertNoPageErrors();
    } finally {
      grace.close();
      await context.close();
    }
  });
});
