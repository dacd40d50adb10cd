// The page in headless Chromium (Debian's package), two users in two browser contexts, on a
// gateway of the memory engine: sign in, a new chat, unread counts, a message and its ticks,
// typing, presence, a reply; then a screenshot of the first user's page.

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
/** Where the screenshot goes; the README's is refreshed with SCREENSHOT=screenshot.png. */
const SCREENSHOT = resolve(fileURLToPath(new URL("../..", import.meta.url)), process.env["SCREENSHOT"] ?? "dist/screenshot.png");

let server: DevServer;
let browser: Browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (scripts/node.sh --chromium)`);
  server = await startDevServer({ engine: "memory" });
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

test("two users chat in two pages: chat list, unread count, ticks, typing and presence", async () => {
  const alice = await signIn("1");
  const bob = await signIn("2");

  await alice.selectOption("#new-chat select[name=kind]", "direct");
  await alice.fill("#new-chat input[name=members]", "2");
  await alice.click("#new-chat button");
  await alice.waitForSelector("#composer:not([hidden])");
  await bob.waitForSelector("#chats li");
  assert.equal(await chatItem(bob).locator(".name").textContent(), "User 1");
  await alice.waitForSelector('#chat-header .presence[data-online="true"]');

  await alice.fill("#composer input", "Hello Bob, lunch at noon?");
  await alice.click("#composer button");
  await bob.waitForSelector('#chats li .unread[data-count="1"]');
  assert.equal(await chatItem(bob).locator(".preview").textContent(), "Hello Bob, lunch at noon?");
  await alice.waitForSelector('#messages li[data-own="true"] .ticks[data-state="delivered"]');

  // Bob opens the chat: the message is read, his count drops, Alice's ticks turn blue.
  await chatItem(bob).click();
  await bob.waitForSelector('#messages li[data-seq="1"]');
  assert.equal(await chatItem(bob).locator(".unread").getAttribute("data-count"), "0");
  await alice.waitForSelector('#messages li[data-seq="1"] .ticks[data-state="read"]');

  await bob.type("#composer input", "Sure, see you");
  await alice.waitForSelector("#typing:has-text('User 2 is typing')");
  await bob.click("#composer button");
  await alice.waitForSelector('#messages li[data-seq="2"][data-own="false"]');
  assert.match((await alice.locator('#messages li[data-seq="2"]').textContent()) ?? "", /Sure, see you/);
  await bob.waitForSelector('#messages li[data-seq="2"] .ticks[data-state="read"]');

  await alice.fill("#composer input", "Great, the usual place");
  await alice.click("#composer button");
  await alice.waitForSelector('#messages li[data-seq="3"] .ticks[data-state="read"]');
  await bob.type("#composer input", "On my way");
  await alice.waitForSelector("#typing:has-text('User 2 is typing')");
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await alice.screenshot({ path: SCREENSHOT });
});

test("a reload brings back the chats and their history from the server", async () => {
  const carol = await signIn("3");
  await carol.fill("#new-chat input[name=members]", "4");
  await carol.click("#new-chat button");
  await carol.waitForSelector("#composer:not([hidden])");
  for (const body of ["first", "second"]) {
    await carol.fill("#composer input", body);
    await carol.click("#composer button");
  }
  await carol.waitForSelector('#messages li[data-seq="2"]:not([data-pending])');
  await carol.reload();
  await carol.fill("#sign-in input[name=user]", "3");
  await carol.click("#sign-in button");
  await chatItem(carol).click();
  await carol.waitForSelector('#messages li[data-seq="2"]');
  assert.deepEqual(await carol.locator("#messages li").evaluateAll((items) => items.map((li) => li.firstChild?.textContent)), [
    "first",
    "second",
  ]);
});
