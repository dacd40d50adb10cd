// The page in headless Chromium (Debian's package), users in separate browser contexts, on a
// gateway of the memory engine (EDGE_ENGINE=amqp: the full path): sign in, a private group
// the second user is added to (he cannot join it), unread counts, a message and its ticks,
// typing, presence, a reply, then a screenshot of the first user's page; a public group
// joined by id, and members removed; a reload.

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import type { Browser, Page } from "playwright-core";
import { startDevServer } from "../src/server.js";
import type { DevServer } from "../src/server.js";

const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
/** The gateway's engine: the memory engine, or with EDGE_ENGINE=amqp the full path. */
const ENGINE = process.env["EDGE_ENGINE"] === "amqp" ? "amqp" : "memory";
/** Where the screenshot goes; the README's is refreshed with SCREENSHOT=screenshot.png. */
const SCREENSHOT = resolve(fileURLToPath(new URL("../..", import.meta.url)), process.env["SCREENSHOT"] ?? "dist/screenshot.png");

let server: DevServer;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (scripts/node.sh --chromium)`);
  server = await startDevServer({ engine: ENGINE });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Without these, Chromium reaches for Google's services at start, which this
    // machine's closed network refuses.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

async function signIn(user: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => assert.fail(`page error for user ${user}: ${error.message}`));
  await page.goto(server.url);
  await page.fill("#sign-in input[name=user]", user);
  await page.click("#sign-in button");
  await page.waitForSelector('#connection[data-state="open"]');
  return page;
}

const chatItem = (page: Page) => page.locator("#chats li").first();

/** Creates a chat from the sidebar's form and returns its id, read from the chat header. */
async function newChat(page: Page, kind: "direct" | "group" | "public_group", members: string, title = ""): Promise<string> {
  await page.selectOption("#new-chat select[name=kind]", kind);
  await page.fill("#new-chat input[name=members]", members);
  await page.fill("#new-chat input[name=title]", title);
  await page.click("#new-chat button");
  await page.waitForSelector("#composer:not([hidden])");
  const id = /#(\d+)/.exec((await page.locator("#chat-header .chat-id").textContent()) ?? "")?.[1];
  assert.ok(id !== undefined, "the chat header shows the chat's id");
  return id;
}

async function say(page: Page, body: string): Promise<void> {
  await page.fill("#composer input", body);
  await page.click("#composer button");
}

test("two users in a private group: B is added by A, then unread count, ticks, typing and presence", async () => {
  const alice = await signIn("1");
  const bob = await signIn("2");

  const lunch = await newChat(alice, "group", "", "Lunch");
  assert.match((await alice.locator("#chat-header").textContent()) ?? "", /private group #\d+/);

  // An invite-only group cannot be joined: a member adds Bob instead.
  await bob.fill("#join-chat input[name=chat]", lunch);
  await bob.click("#join-chat button");
  await bob.waitForSelector(`#status:has-text("chat ${lunch} is not a public group: a member must add you")`);
  assert.equal(await bob.locator("#chats li").count(), 0);
  await alice.fill("#add-members input[name=users]", "2");
  await alice.click("#add-members button");
  await alice.waitForSelector('#messages li.notice:has-text("You added User 2")');
  await bob.waitForSelector("#chats li");
  assert.equal(await chatItem(bob).locator(".name").textContent(), "Lunch");
  await alice.waitForSelector('#chat-header .member[data-user="2"] .presence[data-online="true"]');

  await say(alice, "Hello Bob, lunch at noon?");
  await bob.waitForSelector('#chats li .unread[data-count="1"]');
  assert.equal(await chatItem(bob).locator(".preview").textContent(), "Hello Bob, lunch at noon?");
  await alice.waitForSelector('#messages li[data-own="true"] .ticks[data-state="delivered"]');

  // Bob opens the chat: the message is read, his count drops, Alice's ticks turn blue.
  await chatItem(bob).click();
  await bob.waitForSelector('#messages li[data-seq="1"]');
  assert.equal(await bob.locator('#messages li[data-seq="1"] .sender').textContent(), "User 1");
  assert.equal(await chatItem(bob).locator(".unread").getAttribute("data-count"), "0");
  await alice.waitForSelector('#messages li[data-seq="1"] .ticks[data-state="read"]');

  await bob.type("#composer input", "Sure, see you");
  await alice.waitForSelector("#typing:has-text('User 2 is typing')");
  await bob.click("#composer button");
  await alice.waitForSelector('#messages li[data-seq="2"][data-own="false"]');
  assert.match((await alice.locator('#messages li[data-seq="2"]').textContent()) ?? "", /Sure, see you/);
  await bob.waitForSelector('#messages li[data-seq="2"] .ticks[data-state="read"]');

  await say(alice, "Great, the usual place");
  await alice.waitForSelector('#messages li[data-seq="3"] .ticks[data-state="read"]');
  await bob.type("#composer input", "On my way");
  await alice.waitForSelector("#typing:has-text('User 2 is typing')");
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await alice.screenshot({ path: SCREENSHOT });
});

test("a public group: anyone joins by its id; its admin removes members, who lose the chat, live or when they come back", async () => {
  const erin = await signIn("5");
  const frank = await signIn("6");
  const gina = await signIn("7");
  const floor = await newChat(erin, "public_group", "", "Open floor");
  assert.match((await erin.locator("#chat-header").textContent()) ?? "", /public group #\d+/);

  for (const [page, user] of [[frank, "6"], [gina, "7"]] as const) {
    await page.fill("#join-chat input[name=chat]", floor);
    await page.click("#join-chat button");
    await page.waitForSelector("#composer:not([hidden])");
    await erin.waitForSelector(`#messages li.notice:has-text("User ${user} joined")`);
  }
  await say(frank, "Hi all");
  await erin.waitForSelector('#messages li[data-own="false"]:has-text("Hi all")');
  assert.equal(await frank.locator("#chat-header .remove").count(), 0, "only the admin may remove");

  await erin.click('#chat-header .member[data-user="6"] .remove');
  await erin.waitForSelector('#messages li.notice:has-text("You removed User 6")');
  await frank.waitForSelector(`#status:has-text("User 5 removed you from Chat ${floor}")`);
  assert.equal(await frank.locator("#chats li").count(), 0);
  assert.ok(await frank.locator("#composer").isHidden());

  // Gina is away (her page reloaded, not signed in) when she is removed; she finds out when
  // her page asks for the chat it remembers.
  await gina.reload();
  await erin.click('#chat-header .member[data-user="7"] .remove');
  await erin.waitForSelector('#messages li.notice:has-text("You removed User 7")');
  await gina.fill("#sign-in input[name=user]", "7");
  await gina.click("#sign-in button");
  await gina.waitForSelector(`#status:has-text("you are no longer a member of Chat ${floor}")`);
  assert.equal(await gina.locator("#chats li").count(), 0);
});

test("a reload brings back the chats and their history from the server", async () => {
  const carol = await signIn("3");
  await newChat(carol, "direct", "4");
  for (const body of ["first", "second"]) await say(carol, body);
  await carol.waitForSelector('#messages li[data-seq="2"]:not([data-pending])');
  await carol.reload();
  await carol.fill("#sign-in input[name=user]", "3");
  await carol.click("#sign-in button");
  await chatItem(carol).click();
  await carol.waitForSelector('#messages li[data-seq="2"]');
  assert.deepEqual(await carol.locator("#messages li[data-seq]").evaluateAll((items) => items.map((li) => li.firstChild?.textContent)), [
    "first",
    "second",
  ]);
});

test("edits, deletes and reactions show in both users' chat views", async () => {
  const hana = await signIn("11");
  const ivan = await signIn("12");
  await newChat(hana, "direct", "12");
  await say(hana, "Meet at 10?");
  await hana.waitForSelector('#messages li[data-seq="1"]:not([data-pending])');
  await chatItem(ivan).click();
  await ivan.waitForSelector('#messages li[data-seq="1"]:has-text("Meet at 10?")');
  assert.equal(await ivan.locator('#messages li[data-seq="1"] .edit').count(), 0, "only the sender edits");

  await hana.click('#messages li[data-seq="1"] .edit');
  await hana.fill("#composer input", "Meet at 11?");
  await hana.click("#composer button");
  await ivan.waitForSelector('#messages li[data-seq="1"]:has-text("Meet at 11?") .edited');
  assert.equal(await ivan.locator("#messages li[data-seq]").count(), 1, "an edit is not a message of its own");

  await ivan.click('#messages li[data-seq="1"] .react');
  await hana.waitForSelector('#messages li[data-seq="1"] .reaction[data-emoji="👍"][data-count="1"][data-mine="false"]');
  await ivan.waitForSelector('#messages li[data-seq="1"] .reaction[data-mine="true"]');
  await hana.click('#messages li[data-seq="1"] .reaction[data-emoji="👍"]');
  await ivan.waitForSelector('#messages li[data-seq="1"] .reaction[data-count="2"]');

  await hana.click('#messages li[data-seq="1"] .delete');
  await ivan.waitForSelector('#messages li[data-seq="1"][data-deleted="true"]:has-text("message deleted")');
  assert.equal(await ivan.locator('#messages li[data-seq="1"] .reaction').count(), 0);
});

test("the chat list and its unread counts come from the server; history loads back as the user scrolls up; a second device's reads count", async () => {
  const jo = await signIn("13");
  await newChat(jo, "group", "14", "Long story");
  const total = 25;
  for (let i = 1; i <= total; i++) await say(jo, `part ${i}`);
  await jo.waitForSelector(`#messages li[data-seq="${total}"]:not([data-pending])`);

  // Kim's page has never seen the chat: list_chats brings it, with its unread count.
  const kim = await signIn("14");
  await kim.waitForSelector(`#chats li .unread[data-count="${total}"]`);
  assert.equal(await chatItem(kim).locator(".name").textContent(), "Long story");
  const laptop = await signIn("14");
  await laptop.waitForSelector(`#chats li .unread[data-count="${total}"]`);

  // Opening the chat shows the newest page; scrolling up brings the older one.
  await chatItem(kim).click();
  await kim.waitForSelector(`#messages li[data-seq="${total}"]`);
  await kim.waitForSelector('#messages li[data-seq="6"]');
  assert.equal(await kim.locator('#messages li[data-seq="5"]').count(), 0, "one page of 20 so far");
  await kim.locator("#messages").evaluate((list) => {
    list.scrollTop = 0;
  });
  await kim.waitForSelector('#messages li[data-seq="1"]:has-text("part 1")');
  await kim.waitForSelector("#messages li.history-start");

  // Kim read it on this device: the other device's count follows.
  // (A count of 0 is hidden, so the badge is waited for in the DOM, not on screen.)
  await laptop.waitForSelector('#chats li .unread[data-count="0"]', { state: "attached" });
});
