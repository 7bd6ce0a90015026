// End to end in headless Chromium: the demo pages served by a real broker.
// Screenshots go to clients/js/test-artifacts/ (git-ignored).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { SwitchboardClient } from "@switchboard/client";
import { DEMO_CONFIG, GREETING, startBroker } from "../helpers/broker.js";
import { launchBrowser, screenshot, watchErrors } from "../helpers/browser.js";
import { nextEvent } from "../helpers/wait.js";

const VIEWPORT = { width: 1100, height: 720 };
const TIMEOUT = 15_000;

async function openPage(context, url, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.errorsRef = watchErrors(page, label);
  await page.goto(url);
  return page;
}

/** Waits until the page's SDK client (the console's, or the widget's) has a session. */
async function connected(page) {
  await page.waitForFunction(() => {
    const client = window.switchboard ?? window.webchat?.client;
    return client?.connectionState === "connected" && client.sessionId;
  });
}

function textOf(page, selector) {
  return page.locator(selector).textContent();
}

/** Waits until `selector`'s text (in the page or the widget's shadow DOM) contains `text`. */
async function waitText(page, selector, text) {
  await page.locator(selector, { hasText: text }).first().waitFor({ state: "attached" });
}

/** Waits until `selector`'s text is empty. */
async function waitEmpty(page, selector) {
  await page.waitForFunction((s) => {
    const el = document.querySelector(s) ?? document.querySelector(".switchboard-webchat")?.shadowRoot.querySelector(s);
    return (el?.textContent ?? "").trim() === "";
  }, selector);
}

describe("demo pages in headless Chromium", () => {
  let broker;
  let browser;
  const pages = [];

  before(async () => {
    broker = await startBroker({ config: DEMO_CONFIG });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await broker?.stop();
  });

  async function page(context, path, label) {
    const p = await openPage(context, `${broker.httpUrl}${path}`, label);
    pages.push(p);
    return p;
  }

  function assertNoPageErrors() {
    const errors = pages.flatMap((p) => p.errorsRef);
    assert.deepEqual(errors, [], "no JavaScript errors on the pages");
  }

  test("a customer and an agent complete a chat with typing indicators", async () => {
    const customerContext = await browser.newContext({ viewport: VIEWPORT });
    const agentContext = await browser.newContext({ viewport: VIEWPORT });
    try {
      // The customer opens the widget and fills the pre-engagement form.
      const widget = await page(customerContext, "/", "widget");
      await connected(widget);
      assert.equal(await widget.locator("#sb-panel").isHidden(), true, "the widget starts minimized");
      await screenshot(widget, "01-widget-minimized");
      await widget.click("#sb-launcher");
      await widget.waitForSelector("#sb-form", { state: "visible" });
      await screenshot(widget, "02-widget-form");
      await widget.fill("#sb-name", "Ada");
      await widget.fill("#sb-email", "ada@example.com");
      await widget.fill("#sb-question", "My widget squeaks.");
      await widget.click("#sb-start");
      await widget.waitForSelector("#sb-chat", { state: "visible" });
      await waitText(widget, "#sb-messages", GREETING);
      await waitText(widget, "#sb-messages .msg--self", "My widget squeaks.");
      await waitText(widget, "#sb-status", "Waiting for an agent");

      // The agent signs in with a name (demo token) and sees the queue.
      const agentPage = await page(agentContext, "/console", "console");
      await screenshot(agentPage, "03-console-sign-in");
      await agentPage.fill("#agent-name", "Grace");
      await agentPage.click("#sign-in-button");
      await connected(agentPage);
      await waitText(agentPage, "#queue-list", "Ada");
      await waitText(agentPage, "#queue-list", "My widget squeaks.");
      assert.equal((await textOf(agentPage, "#queue-count")).trim(), "1");
      await screenshot(agentPage, "04-console-queue");

      // Join: the chat opens, the customer sees the agent arrive.
      await agentPage.getByRole("button", { name: "Join chat with Ada" }).click();
      await agentPage.waitForSelector("#chat-view", { state: "visible" });
      await waitText(agentPage, "#chat-title", "Ada");
      await waitText(agentPage, "#chat-details", "ada@example.com");
      await waitText(widget, "#sb-messages", "Grace joined the chat");
      await waitText(widget, "#sb-status", "Chatting with Grace");

      // The customer types: the agent sees the indicator; sending ends it.
      await widget.locator("#sb-input").pressSequentially("Is it the hinge", { delay: 15 });
      await waitText(agentPage, "#typing", "Ada is typing…");
      await screenshot(agentPage, "05-console-customer-typing");
      await widget.locator("#sb-input").pressSequentially("?");
      await widget.press("#sb-input", "Enter");
      await waitText(agentPage, "#transcript", "Is it the hinge?");
      await waitEmpty(agentPage, "#typing");
      assert.equal(await widget.inputValue("#sb-input"), "");

      // The agent types: the customer sees the indicator; then the reply.
      await agentPage.locator("#reply").pressSequentially("Most likely, ", { delay: 15 });
      await waitText(widget, "#sb-typing", "Grace is typing…");
      await screenshot(widget, "06-widget-agent-typing");
      await agentPage.locator("#reply").pressSequentially("a drop of oil will fix it.");
      await agentPage.press("#reply", "Enter");
      await waitText(widget, "#sb-messages .msg--agent", "Most likely, a drop of oil will fix it.");
      await waitEmpty(widget, "#sb-typing");
      await waitText(agentPage, "#transcript .message--self", "Most likely, a drop of oil will fix it.");

      await widget.fill("#sb-input", "Thanks, that did it!");
      await widget.press("#sb-input", "Enter");
      await waitText(agentPage, "#transcript", "Thanks, that did it!");
      await screenshot(widget, "07-widget-chat");
      await screenshot(agentPage, "08-console-chat");

      // Indices are in order on both sides.
      const order = await widget.$$eval("#sb-messages [data-index]", (items) => items.map((li) => Number(li.dataset.index)));
      assert.deepEqual(order, [...order].sort((a, b) => a - b));
      assert.ok(order.length >= 5);

      // The customer restarts: the agent sees it end.
      await widget.click("#sb-restart");
      await widget.click("#sb-confirm-ok");
      await widget.waitForSelector("#sb-form", { state: "visible" });
      await waitText(agentPage, "#transcript", "Ada restarted the chat and left");
      await waitText(agentPage, "#chat-subtitle", "This engagement has ended.");
      assert.equal(await agentPage.locator("#reply").isDisabled(), true);
      await waitText(agentPage, "#queue-count", "0");
      await screenshot(agentPage, "09-console-ended");
      assertNoPageErrors();
    } finally {
      await customerContext.close();
      await agentContext.close();
    }
  });

  test("the agent console keeps its sign-in and chats across a reload; sign out", async () => {
    const zoe = new SwitchboardClient({ url: broker.wsUrl, storage: false });
    const context = await browser.newContext({ viewport: VIEWPORT });
    try {
      await zoe.connect();
      const { channelSid } = await zoe.actions.invoke("StartEngagement", { formData: { name: "Zoe", question: "Where is my order?" } });
      const agentPage = await page(context, "/console", "console-reload");
      await agentPage.fill("#agent-name", "Hopper");
      await agentPage.press("#agent-name", "Enter");
      await waitText(agentPage, "#queue-list", "Zoe");
      await agentPage.getByRole("button", { name: "Join chat with Zoe" }).click();
      await waitText(agentPage, "#chat-title", "Zoe");

      await agentPage.reload();
      await connected(agentPage);
      await waitText(agentPage, "#agent-badge", "Signed in as Hopper");
      await waitText(agentPage, "#chat-list", "Zoe");
      await agentPage.click("#chat-list .entry-button");
      await waitText(agentPage, "#chat-title", "Zoe");
      const got = nextEvent(zoe, "messageAdded", (m) => m.author === "Hopper");
      await agentPage.fill("#reply", "It ships today.");
      await agentPage.press("#reply", "Enter");
      assert.equal((await got).body, "It ships today.");
      const fromZoe = "Great, thanks!";
      await zoe.actions.invoke("SendMessage", { channelSid, body: fromZoe });
      await waitText(agentPage, "#transcript", fromZoe);
      await screenshot(agentPage, "15-console-after-reload");

      // Leaving removes the chat; signing out returns to the sign-in form.
      await agentPage.click("#leave-button");
      await agentPage.click("#confirm-ok");
      await waitText(agentPage, "#chats-count", "0");
      await agentPage.click("#sign-out");
      await agentPage.waitForSelector("#sign-in-form", { state: "visible" });
      await agentPage.reload();
      await agentPage.waitForSelector("#sign-in-form", { state: "visible" });
      assertNoPageErrors();
    } finally {
      zoe.close();
      await context.close();
    }
  });

  test("the widget minimizes and expands in sync across two tabs; restart returns it to its form", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    try {
      const tab1 = await page(context, "/", "tab1");
      await connected(tab1);
      const tab2 = await page(context, "/", "tab2");
      await connected(tab2);
      const id1 = await tab1.evaluate(() => window.webchat.client.identity);
      const id2 = await tab2.evaluate(() => window.webchat.client.identity);
      assert.equal(id1, id2, "both tabs are the same customer (resume token in localStorage)");

      // Expand in tab 1: tab 2 follows.
      await tab1.click("#sb-launcher");
      await tab1.waitForSelector("#sb-panel", { state: "visible" });
      await tab2.waitForSelector("#sb-panel", { state: "visible" });
      assert.equal(await tab2.getAttribute("#sb-widget", "data-expanded"), "true");
      await screenshot(tab2, "10-tab2-expanded-by-tab1");

      // Minimize in tab 2 (with the keyboard: Escape): tab 1 follows.
      await tab2.focus("#sb-name");
      await tab2.keyboard.press("Escape");
      await tab2.waitForSelector("#sb-launcher", { state: "visible" });
      await tab1.waitForSelector("#sb-panel", { state: "hidden" });
      await tab1.waitForSelector("#sb-launcher", { state: "visible" });
      await screenshot(tab1, "11-tab1-minimized-by-tab2");

      // Expand again and start a chat in tab 1: tab 2 shows the same chat.
      await tab2.click("#sb-launcher");
      await tab1.waitForSelector("#sb-panel", { state: "visible" });
      await tab1.fill("#sb-name", "Tabby");
      await tab1.click("#sb-start");
      await tab1.waitForSelector("#sb-chat", { state: "visible" });
      await tab2.waitForSelector("#sb-chat", { state: "visible" });
      await tab1.fill("#sb-input", "Hello from tab one");
      await tab1.press("#sb-input", "Enter");
      await waitText(tab2, "#sb-messages", "Hello from tab one");

      // A draft typed in one tab reaches the other.
      await tab1.locator("#sb-input").pressSequentially("half-written", { delay: 10 });
      await tab2.waitForFunction(() => document.querySelector(".switchboard-webchat").shadowRoot.querySelector("#sb-input").value === "half-written");
      await screenshot(tab2, "12-tab2-same-chat");

      // A refreshed tab is the same identity with the same engagement.
      await tab2.reload();
      await connected(tab2);
      assert.equal(await tab2.evaluate(() => window.webchat.client.identity), id1);
      await tab2.waitForSelector("#sb-chat", { state: "visible" });
      assert.equal(await tab2.inputValue("#sb-input"), "half-written", "the draft survives a refresh");

      // Restart in tab 2: both tabs return to the form.
      await tab2.click("#sb-restart");
      await tab2.click("#sb-confirm-ok");
      await tab2.waitForSelector("#sb-form", { state: "visible" });
      await tab1.waitForSelector("#sb-form", { state: "visible" });
      assert.equal(await tab1.locator("#sb-chat").isHidden(), true);
      assert.equal(await tab1.locator("#sb-restart").isHidden(), true);
      await screenshot(tab1, "13-tab1-back-to-form");

      // A minimized widget counts unread messages on its launcher.
      await tab1.fill("#sb-name", "Tabby");
      await tab1.click("#sb-start");
      await tab2.waitForSelector("#sb-chat", { state: "visible" });
      await tab1.click("#sb-minimize");
      await tab2.waitForSelector("#sb-launcher", { state: "visible" });
      const channelSid = await tab1.evaluate(() => window.webchat.client.engagement.channelSid);
      const oscar = new SwitchboardClient({ url: broker.wsUrl, token: broker.token("Oscar", "agent"), storage: false });
      try {
        await oscar.connect();
        await oscar.actions.invoke("JoinChannel", { channelSid });
        await oscar.actions.invoke("SendMessage", { channelSid, body: "Hi Tabby, Oscar here." });
        await waitText(tab2, "#sb-unread", "1");
        await waitText(tab1, "#sb-unread", "1");
        await screenshot(tab2, "14-tab2-minimized-unread");
        await tab2.click("#sb-launcher");
        await waitText(tab1, "#sb-messages .msg--agent", "Hi Tabby, Oscar here.");
        await tab1.waitForSelector("#sb-unread", { state: "hidden" });
      } finally {
        oscar.close();
      }
      assertNoPageErrors();
    } finally {
      await context.close();
    }
  });
});
