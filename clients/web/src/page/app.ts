// The browser chat page: sign in as a user id, then chats (direct, private and public
// groups) listed by the server with their unread counts, members, messages loaded back as
// the user scrolls up, edits, deletes and reactions, typing, presence and receipts through
// the SDK. Rendering is plain DOM, redrawn from the store on each change.

import { EdgeClient, ErrorCode, ServerError } from "edge-client";
import type { ChatKind, ChatSummary, MessageView, PresenceEntry } from "edge-client";
import { ChatStore, TYPING_SHOWS_MS } from "./store.js";
import type { Ticks } from "./store.js";

/** Typing events go out at most this often while the user types. */
const TYPING_EVERY_MS = 2000;
/** Presence has no push: the page asks again this often. */
const PRESENCE_EVERY_MS = 10_000;
/** Entries per page of backward history, when a chat opens and when the user scrolls up. */
const HISTORY_PAGE = 20;
/** Scrolled this close (px) to the top of the messages, the page loads older ones. */
const LOAD_OLDER_WITHIN_PX = 40;
/** The one reaction the page offers (any member toggles it on any message). */
const REACTION = "👍";
/** Most chat list pages the page asks for at each connect. */
const MAX_CHAT_LIST_PAGES = 10;

const byId = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

const TICKS: Record<Ticks, string> = { pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" };
const KINDS: Record<ChatKind, string> = { direct: "direct chat", group: "private group", public_group: "public group" };

/** User ids typed as "2, 3" or "2 3"; undefined if any is not a number. */
function userIds(text: string): bigint[] | undefined {
  const ids = text.split(/[\s,]+/).filter(Boolean);
  return ids.every((id) => /^[0-9]{1,20}$/.test(id)) ? ids.map(BigInt) : undefined;
}

function time(us: bigint): string {
  return new Date(Number(us / 1000n)).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

byId<HTMLFormElement>("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = new FormData(event.target as HTMLFormElement).get("user") as string;
  if (/^[1-9][0-9]*$/.test(user)) void start(BigInt(user));
});

async function start(me: bigint): Promise<void> {
  const config = (await (await fetch("/config")).json()) as { url: string };
  const store = new ChatStore(me, localStorage);
  const client = new EdgeClient({
    url: config.url,
    // A fresh development token for every connection attempt.
    token: async () => {
      const response = await fetch(`/token?user=${me}`);
      if (!response.ok) throw new Error(`no token: ${response.status}`);
      return response.text();
    },
    tokenCarrier: "subprotocol",
  });
  const presence = new Map<bigint, PresenceEntry>();
  let openChat: bigint | undefined;
  /** The message of the open chat whose body the composer is editing. */
  let editing: bigint | undefined;
  let lastTypingSent = 0;
  let localKey = 0;

  byId("sign-in").hidden = true;
  byId("app").hidden = false;
  byId("me").textContent = `User ${me}`;
  const status = (text: string): void => {
    byId("status").textContent = text;
  };

  const renderChats = () => {
    const list = byId("chats");
    list.replaceChildren(
      ...store.ordered().map((chat) => {
        const last = store.messages(chat).at(-1);
        const unread = store.unread(chat);
        const item = element(
          "li",
          { "data-chat-id": String(chat.id), "aria-current": String(chat.id === openChat) },
          element("span", { class: "name" }, store.name(chat)),
          element("span", { class: "unread", "data-count": String(unread) }, String(unread)),
          element("span", { class: "preview" }, last ? (last.deleted ? "message deleted" : last.body) : "no messages yet"),
        );
        item.addEventListener("click", () => open(chat.id));
        return item;
      }),
    );
  };

  const renderChat = () => {
    const chat = openChat === undefined ? undefined : store.chats.get(openChat);
    byId("composer").hidden = chat === undefined;
    // Anyone in a group may add members; a direct chat's never change.
    byId("add-members").hidden = chat === undefined || chat.kind === "direct";
    if (chat === undefined) {
      byId("chat-header").replaceChildren();
      byId("messages").replaceChildren();
      return;
    }
    const admin = store.isAdmin(chat);
    const members = store.others(chat).map((user) => {
      const member = element(
        "span",
        { class: "member", "data-user": String(user) },
        element("span", { class: "presence", "data-online": String(presence.get(user)?.online ?? false) }),
        `User ${user}`,
      );
      if (admin) {
        const remove = element("button", { class: "remove", type: "button", title: `Remove User ${user}` }, "×");
        remove.addEventListener("click", () => {
          client.removeMembers(chat.id, [user]).then(() => status(""), (error: Error) => status(error.message));
        });
        member.append(remove);
      }
      return member;
    });
    byId("chat-header").replaceChildren(
      element("strong", {}, store.name(chat)),
      element("span", { class: "chat-id hint" }, ` ${chat.kind ? `${KINDS[chat.kind]} ` : ""}#${chat.id}`),
      element("div", { class: "members" }, ...members),
    );
    const entries = store.timeline(chat).map((entry) => {
      if ("notice" in entry) return element("li", { class: "notice" }, entry.notice.text);
      const message = entry.message;
      const own = message.sender === me;
      const meta = element("span", { class: "meta" }, time(message.server_time_us));
      if (message.edited && !message.deleted) meta.prepend(element("span", { class: "edited" }, "edited "));
      if (own) {
        const ticks = store.ticks(chat, message);
        meta.append(element("span", { class: "ticks", "data-state": ticks }, TICKS[ticks]));
      }
      return element(
        "li",
        { "data-seq": String(message.seq), "data-own": String(own), "data-deleted": String(message.deleted) },
        ...(own || chat.kind === "direct" ? [] : [element("span", { class: "sender" }, `User ${message.sender}`)]),
        message.deleted ? element("em", { class: "deleted" }, "message deleted") : message.body,
        meta,
        ...(message.deleted ? [] : [reactions(chat.id, message), actions(chat.id, message, own)]),
      );
    });
    if (!chat.history.more) entries.unshift(element("li", { class: "notice history-start" }, "the start of the chat"));
    const pending = [...chat.pending.values()].map(({ body, error }) =>
      element(
        "li",
        { "data-own": "true", "data-pending": "true", ...(error ? { title: error } : {}) },
        body,
        element("span", { class: "meta" }, element("span", { class: "ticks", "data-state": "pending" }, error ? "⚠" : TICKS.pending)),
      ),
    );
    const list = byId("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(...entries, ...pending);
    if (atBottom) list.scrollTop = list.scrollHeight;
  };

  /** The message's reactions, each a button that toggles this user's own. */
  const reactions = (chatId: bigint, message: MessageView) =>
    element(
      "span",
      { class: "reactions" },
      ...[...message.reactions].map(([emoji, users]) => {
        const mine = users.includes(me);
        const button = element(
          "button",
          { class: "reaction", type: "button", "data-emoji": emoji, "data-count": String(users.length), "data-mine": String(mine) },
          `${emoji} ${users.length}`,
        );
        button.addEventListener("click", () => toggleReaction(chatId, message, emoji));
        return button;
      }),
    );

  /** React to any message; edit or delete one's own. */
  const actions = (chatId: bigint, message: MessageView, own: boolean) => {
    const react = element("button", { class: "react", type: "button", title: `React with ${REACTION}` }, `+${REACTION}`);
    react.addEventListener("click", () => toggleReaction(chatId, message, REACTION));
    const buttons = [react];
    if (own) {
      const edit = element("button", { class: "edit", type: "button" }, "edit");
      edit.addEventListener("click", () => {
        editing = message.seq;
        const composer = byId<HTMLFormElement>("composer");
        (composer.elements.namedItem("body") as HTMLInputElement).value = message.body;
        composer.dataset["editing"] = String(message.seq);
        byId("send").textContent = "Save";
      });
      const remove = element("button", { class: "delete", type: "button" }, "delete");
      remove.addEventListener("click", () => {
        client.delete(chatId, message.seq).then(() => status(""), (error: Error) => status(error.message));
      });
      buttons.push(edit, remove);
    }
    return element("span", { class: "actions" }, ...buttons);
  };

  const toggleReaction = (chatId: bigint, message: MessageView, emoji: string) => {
    const held = message.reactions.get(emoji)?.includes(me) ?? false;
    const request = held ? client.unreact(chatId, message.seq, emoji) : client.react(chatId, message.seq, emoji);
    request.then(() => status(""), (error: Error) => status(error.message));
  };

  const stopEditing = () => {
    editing = undefined;
    delete byId<HTMLFormElement>("composer").dataset["editing"];
    byId("send").textContent = "Send";
  };

  /** The next page of history back from the oldest entry the open chat holds, keeping the
   * messages on screen where they were. */
  const loadOlder = async (chatId: bigint) => {
    const chat = store.chats.get(chatId);
    if (chat === undefined || chat.history.loading || !chat.history.more) return;
    chat.history.loading = true;
    try {
      const page = await client.history(chatId, chat.history.oldest, HISTORY_PAGE);
      const list = byId("messages");
      const fromBottom = list.scrollHeight - list.scrollTop;
      store.historyPage(chatId, page.messages, page.hasMore);
      render();
      if (chatId === openChat) list.scrollTop = list.scrollHeight - fromBottom;
      readOpenChat();
    } catch (error) {
      status((error as Error).message);
    } finally {
      chat.history.loading = false;
    }
  };

  /** The user's chats as the server lists them, most recent activity first; chats the
   * page remembers that the server does not list are asked about, so the page learns
   * why they are gone. */
  const loadChatList = async () => {
    const listed = new Set<bigint>();
    let after: ChatSummary | undefined;
    try {
      for (let page = 0; page < MAX_CHAT_LIST_PAGES; page++) {
        const list = await client.listChats(undefined, after);
        for (const summary of list.chats) {
          store.summary(summary);
          listed.add(summary.chat_id);
          client.follow(summary.chat_id, summary.last_seq);
        }
        after = list.chats.at(-1);
        if (!list.has_more || after === undefined) break;
      }
    } catch (error) {
      return status((error as Error).message);
    }
    for (const chat of store.chats.values()) if (!listed.has(chat.id)) client.follow(chat.id, 0n);
    render();
    if (openChat !== undefined) void loadOlder(openChat);
  };

  const renderTyping = () => {
    const chat = openChat === undefined ? undefined : store.chats.get(openChat);
    const typing = chat ? store.whoIsTyping(chat, Date.now()) : [];
    byId("typing").textContent = typing.length ? `${typing.map((u) => `User ${u}`).join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : "";
  };

  const render = () => {
    renderChats();
    renderChat();
    renderTyping();
  };

  /** Marks the open chat read when the user can see it. */
  const readOpenChat = () => {
    const chat = openChat === undefined ? undefined : store.chats.get(openChat);
    if (chat === undefined || document.visibilityState !== "visible") return;
    const seq = store.markRead(chat);
    if (seq !== undefined) client.markRead(chat.id, seq);
  };

  const refreshPresence = async () => {
    const users = [...new Set([...store.chats.values()].flatMap((chat) => store.others(chat)))].slice(0, 200);
    if (users.length === 0 || client.state !== "open") return;
    try {
      for (const entry of await client.presence(users)) presence.set(entry.user_id, entry);
      render();
    } catch {
      // The next round asks again.
    }
  };

  const open = (chatId: bigint) => {
    if (chatId !== openChat) stopEditing();
    openChat = chatId;
    readOpenChat();
    render();
    byId("messages").scrollTop = byId("messages").scrollHeight;
    if (store.chats.get(chatId)?.history.oldest === undefined) void loadOlder(chatId);
    void refreshPresence();
  };

  client.on("connected", () => {
    const badge = byId("connection");
    badge.dataset["state"] = "open";
    badge.textContent = "online";
    void loadChatList();
    void refreshPresence();
  });
  client.on("disconnected", ({ reconnectInMs }) => {
    const badge = byId("connection");
    badge.dataset["state"] = "waiting";
    badge.textContent = reconnectInMs === undefined ? "offline" : "reconnecting";
  });
  client.on("chatCreated", (event) => {
    store.created(event);
    render();
  });
  client.on("joined", (event) => {
    store.joined(event.chat_id, event.user_id);
    render();
  });
  client.on("left", (event) => {
    store.left(event.chat_id, event.user_id);
    if (event.user_id === me && event.chat_id === openChat) openChat = undefined;
    render();
  });
  client.on("membersAdded", (event) => {
    store.membersAdded(event);
    render();
    void refreshPresence();
  });
  client.on("membersRemoved", (event) => {
    const known = store.chats.get(event.chat_id);
    const name = known ? store.name(known) : `chat ${event.chat_id}`;
    if (store.membersRemoved(event)) {
      status(`User ${event.by} removed you from ${name}`);
      if (event.chat_id === openChat) openChat = undefined;
    }
    render();
  });
  client.on("chatLost", ({ chatId }) => {
    const known = store.chats.get(chatId);
    status(`you are no longer a member of ${known ? store.name(known) : `chat ${chatId}`}`);
    store.forget(chatId);
    if (chatId === openChat) openChat = undefined;
    render();
  });
  client.on("message", (message) => {
    store.message(message);
    if (message.chat_id === openChat) readOpenChat();
    render();
  });
  client.on("ownRead", ({ chatId, seq }) => {
    store.readElsewhere(chatId, seq);
    renderChats();
  });
  byId("messages").addEventListener("scroll", () => {
    if (openChat !== undefined && byId("messages").scrollTop < LOAD_OLDER_WITHIN_PX) void loadOlder(openChat);
  });
  client.on("receipt", (receipt) => {
    store.receipt(receipt);
    renderChat();
  });
  client.on("typing", (event) => {
    store.typing(event.chat_id, event.user_id, Date.now());
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOWS_MS + 50);
  });
  client.on("serverError", (error) => status(error.reason));
  document.addEventListener("visibilitychange", () => {
    readOpenChat();
    renderChats();
  });

  byId<HTMLFormElement>("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target as HTMLFormElement;
    const input = form.elements.namedItem("body") as HTMLInputElement;
    const chat = openChat === undefined ? undefined : store.chats.get(openChat);
    if (chat === undefined || input.value.trim() === "") return;
    const body = input.value;
    input.value = "";
    if (editing !== undefined) {
      const seq = editing;
      stopEditing();
      client.edit(chat.id, seq, body).then(() => status(""), (error: Error) => status(error.message));
      return;
    }
    // The message ends this bout of typing; the next keystroke starts another.
    lastTypingSent = 0;
    const key = ++localKey;
    chat.pending.set(key, { body });
    renderChat();
    client.send(chat.id, body).then(
      () => chat.pending.delete(key),
      (error: Error) => chat.pending.set(key, { body, error: error.message }),
    ).finally(render);
  });
  byId<HTMLFormElement>("composer").addEventListener("input", () => {
    const now = Date.now();
    if (openChat === undefined || now - lastTypingSent < TYPING_EVERY_MS) return;
    lastTypingSent = now;
    client.typing(openChat);
  });
  byId<HTMLFormElement>("new-chat").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    const members = userIds(String(form.get("members")));
    const kind = String(form.get("kind")) as ChatKind;
    if (members === undefined) return status("member ids are numbers");
    if (!Object.hasOwn(KINDS, kind)) return status("choose a kind of chat");
    if (kind === "direct" && members.length !== 1) return status("a direct chat is with one other user");
    client.createChat(kind, String(form.get("title") ?? ""), members).then(
      (chat) => {
        (event.target as HTMLFormElement).reset();
        status("");
        open(chat.chat_id);
      },
      (error: Error) => status(error.message),
    );
  });
  byId<HTMLFormElement>("join-chat").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = String(new FormData(event.target as HTMLFormElement).get("chat"));
    if (!/^[0-9]+$/.test(id)) {
      status("a chat id is a number");
      return;
    }
    client.join(BigInt(id)).then(
      () => {
        (event.target as HTMLFormElement).reset();
        status("");
        open(BigInt(id));
      },
      (error: Error) =>
        status(
          error instanceof ServerError && error.code === ErrorCode.NOT_MEMBER
            ? `chat ${id} is not a public group: a member must add you`
            : error.message,
        ),
    );
  });
  byId<HTMLFormElement>("add-members").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target as HTMLFormElement;
    const users = userIds(String(new FormData(form).get("users")));
    if (openChat === undefined) return;
    if (users === undefined || users.length === 0) return status("user ids are numbers");
    client.addMembers(openChat, users).then(
      () => {
        form.reset();
        status("");
      },
      (error: Error) => status(error.message),
    );
  });

  client.connect();
  setInterval(() => void refreshPresence(), PRESENCE_EVERY_MS);
  render();
}
