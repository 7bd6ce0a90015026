// The agent console in headless Chromium against a real broker: its queue,
// ending and leaving chats, the tab title, accessibility and the keyboard.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { SwitchboardClient } from "@switchboard/client";
import { DEMO_CONFIG, startBroker } from "../helpers/broker.js";
import { axeViolations, docShot, launchBrowser, watchErrors } from "../helpers/browser.js";
import { nextEvent } from "../helpers/wait.js";

const VIEWPORT = { width: 1100, height: 720 };
const TIMEOUT = 15_000;
const BASE_TITLE = "Switchboard · Agent console";

function waitText(page, selector, text) {
  return page.locator(selector, { hasText: text }).first().waitFor({ state: "attached" });
}

describe("agent console in headless Chromium", () => {
  let broker;
  let browser;
  const errors = [];

  before(async () => {
    broker = await startBroker({ config: DEMO_CONFIG });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await broker?.stop();
  });

  /** A console page signed in as `name` with the keyboard only. */
  async function signIn(context, name) {
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    errors.push(watchErrors(page, `console-${name}`));
    await page.goto(`${broker.httpUrl}/console`);
    await page.waitForFunction(() => document.activeElement?.id === "agent-name");
    await page.keyboard.type(name);
    await page.keyboard.press("Enter");
    await waitText(page, "#agent-badge", `Signed in as ${name}`);
    return page;
  }

  function customer() {
    return new SwitchboardClient({ url: broker.wsUrl, storage: false });
  }

  async function startEngagement(client, name, question) {
    const formData = { name };
    if (question) formData.question = question;
    const { channelSid } = await client.actions.invoke("StartEngagement", { formData });
    return channelSid;
  }

  /** The queue entries' names. */
  async function queueNames(page) {
    return (await page.locator("#queue-list .entry-name").allInnerTexts()).map((t) => t.trim());
  }

  test("problem 6: the queue shows only waiting engagements; a customer's two chats are told apart; the end reads last", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const ann = customer();
    const bob = customer();
    const oscar = new SwitchboardClient({ url: broker.wsUrl, token: broker.token("Oscar", "agent"), storage: false });
    try {
      const page = await signIn(context, "Grace");
      await ann.connect();
      await bob.connect();
      await oscar.connect();
      const annChat = await startEngagement(ann, "Ann", "Where is my parcel?");
      await startEngagement(bob, "Bob", "Refund please");
      await waitText(page, "#queue-list", "Ann");
      await waitText(page, "#queue-list", "Bob");

      // Another agent takes Ann: she is no longer waiting here.
      await oscar.actions.invoke("JoinChannel", { channelSid: annChat });
      await page.waitForFunction(() => ![...document.querySelectorAll("#queue-list .entry-name")].some((e) => e.textContent === "Ann"));
      assert.deepEqual(await queueNames(page), ["Bob"]);
      await waitText(page, "#queue-count", "1");

      // Grace takes Bob: he leaves her queue too.
      await page.getByRole("button", { name: "Join chat with Bob" }).click();
      await waitText(page, "#chat-title", "Bob");
      await page.locator("#queue-empty").waitFor();
      await bob.actions.invoke("SendMessage", { channelSid: bob.engagement.channelSid, body: "It arrived broken." });
      await waitText(page, "#transcript", "It arrived broken.");

      // Bob restarts: his leaving reads before the end.
      await bob.actions.invoke("RestartEngagement");
      await waitText(page, "#transcript", "The engagement ended.");
      await waitText(page, "#transcript", "Bob restarted the chat and left");
      const lines = await page.locator("#transcript li").allInnerTexts();
      const left = lines.findIndex((l) => l.includes("restarted the chat and left"));
      const ended = lines.findIndex((l) => l.includes("The engagement ended."));
      assert.ok(left >= 0 && left < ended && ended === lines.length - 1, lines.join(" | "));

      // Bob's second chat: a distinct entry, with its own preview and time.
      await startEngagement(bob, "Bob", "Second try: a replacement?");
      await waitText(page, "#queue-list", "Second try: a replacement?");
      await page.getByRole("button", { name: "Join chat with Bob" }).click();
      await page.waitForFunction(() => document.querySelectorAll("#chat-list .entry").length === 2);
      const entries = await page.locator("#chat-list .entry").allInnerTexts();
      assert.notEqual(entries[0], entries[1]);
      assert.ok(entries.every((e) => /started \d/.test(e.replace(/\s+/g, " "))), entries.join(" | "));
      assert.ok(entries.some((e) => e.includes("It arrived broken.") && e.includes("ended")), entries.join(" | "));
      assert.ok(entries.some((e) => e.includes("Second try: a replacement?") && e.includes("active")), entries.join(" | "));
      await docShot(page, "console-chat");
    } finally {
      ann.close();
      bob.close();
      oscar.close();
      await context.close();
    }
  });

  test("problems 5 and 8: End chat and Leave ask first; the tab title counts chats with unread messages", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const cat = customer();
    const dan = customer();
    try {
      const page = await signIn(context, "Hopper");
      await cat.connect();
      await dan.connect();
      const catChat = await startEngagement(cat, "Cat", "Hello?");
      const danChat = await startEngagement(dan, "Dan", "Hi!");
      await page.getByRole("button", { name: "Join chat with Cat" }).click();
      await waitText(page, "#chat-title", "Cat");
      await page.getByRole("button", { name: "Join chat with Dan" }).click();
      await waitText(page, "#chat-title", "Dan");
      assert.equal(await page.title(), BASE_TITLE);

      // A message in the chat not on screen: the title says so.
      await cat.actions.invoke("SendMessage", { channelSid: catChat, body: "Are you there?" });
      await page.waitForFunction((t) => document.title === `(1) ${t}`, BASE_TITLE);
      await page.locator("#chat-list .entry-button", { hasText: "Cat" }).click();
      await page.waitForFunction((t) => document.title === t, BASE_TITLE);

      // End chat asks; Cancel keeps it.
      await page.click("#end-button");
      const dialog = page.getByRole("dialog", { name: "End the chat with Cat?" });
      await dialog.waitFor();
      assert.deepEqual(await axeViolations(page), [], "the console with its confirmation");
      await docShot(page, "console-end-confirm");
      await page.keyboard.press("Escape");
      await dialog.waitFor({ state: "hidden" });
      assert.equal(await page.locator("#reply").isDisabled(), false);

      // Confirmed: the customer is told and is back before the engagement.
      const endedForCat = nextEvent(cat, "engagementEnded");
      await page.click("#end-button");
      await dialog.getByRole("button", { name: "End chat" }).click();
      assert.equal((await endedForCat).channelSid, catChat);
      await waitText(page, "#chat-subtitle", "This engagement has ended.");
      assert.equal(cat.engagement, null);
      await startEngagement(cat, "Cat", "One more question");

      // Leave asks too.
      await page.locator("#chat-list .entry-button", { hasText: "Dan" }).click();
      await page.click("#leave-button");
      await page.getByRole("dialog", { name: "Leave the chat with Dan?" }).waitFor();
      await page.click("#confirm-cancel");
      assert.equal(dan.channel(danChat).members.some((m) => m.identity === "Hopper"), true);
      const left = nextEvent(dan, "memberLeft", (e) => e.identity === "Hopper");
      await page.click("#leave-button");
      await page.click("#confirm-ok");
      await left;
      assert.equal(errors.flat().length, 0, errors.flat().join("\n"));
    } finally {
      cat.close();
      dan.close();
      await context.close();
    }
  });

  test("accessibility: axe finds nothing serious on the sign-in and the workspace; replying with the keyboard", async () => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const eve = customer();
    try {
      const page = await context.newPage();
      page.setDefaultTimeout(TIMEOUT);
      await page.goto(`${broker.httpUrl}/console`);
      assert.deepEqual(await axeViolations(page), [], "sign-in");
      await page.close();

      const agentPage = await signIn(context, "Ida");
      await eve.connect();
      const chat = await startEngagement(eve, "Eve", "Keyboard question");
      await waitText(agentPage, "#queue-list", "Eve");
      // Tab to the Join button, Enter; the reply box takes focus.
      const join = agentPage.getByRole("button", { name: "Join chat with Eve" });
      for (let i = 0; i < 10 && !(await join.evaluate((el) => el === document.activeElement)); i++) await agentPage.keyboard.press("Tab");
      await agentPage.keyboard.press("Enter");
      await waitText(agentPage, "#chat-title", "Eve");
      await agentPage.waitForFunction(() => document.activeElement?.id === "reply");
      const got = nextEvent(eve, "messageAdded", (m) => m.author === "Ida");
      await agentPage.keyboard.type("Typed without a mouse.");
      await agentPage.keyboard.press("Enter");
      assert.equal((await got).body, "Typed without a mouse.");
      await eve.actions.invoke("SendMessage", { channelSid: chat, body: "Thanks" });
      await waitText(agentPage, "#transcript", "Thanks");
      assert.deepEqual(await axeViolations(agentPage), [], "workspace with a chat");
    } finally {
      eve.close();
      await context.close();
    }
  });
});
