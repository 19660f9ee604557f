// @ts-check
/**
 * The counsellor's console as data: what the page shows, built from the
 * console's events (the objects `fluister counsellor --json` prints, plus
 * the console's own: `console`, `replies`, `replaced`, `signed_out`). No
 * DOM and no timers, so that it is tested with `node --test`; `app.js`
 * renders it.
 *
 * `apply(model, event, now)` changes the model and returns what the page
 * should do about it beyond drawing: `cue` for a new chat (a sound, the
 * title, the favicon), `unread` for a message in a chat not in view.
 * Replayed events (with `ago_ms`, after a reload) never cue.
 */

/**
 * @typedef {{ id: number, mine: boolean, text: string, status?: string }} Line
 * @typedef {{ chat: number, topic?: number, language?: string, startedAt: number, ready: boolean,
 *   lines: Line[], unread: number, peerAway: boolean, back?: boolean, ended?: string, endedAt?: number, notice?: { key: string, fields?: Record<string, string> },
 *   coded?: boolean }} Chat
 */

/** A fresh model: nothing known yet. */
export function emptyModel() {
  return {
    pseudonym: '',
    /** 'connecting' | 'online' | 'reconnecting' | 'signed_out' | 'failed' | 'replaced' */
    link: 'connecting',
    /** @type {string | undefined} */ failure: undefined,
    available: false,
    capacity: 1,
    /** @type {{ id: number, nl: string, en: string }[]} */ topics: [],
    /** @type {Map<number, number>} topic id (0: none chosen) → young people waiting */
    queue: new Map(),
    /** @type {Map<string, string>} name → presence */
    colleagues: new Map(),
    /** @type {Map<number, Chat>} */ chats: new Map(),
    /** @type {string[]} */ replies: [],
    /** The chat in view (focused, or the tab shown). */
    /** @type {number | null} */ active: null,
    /** Chats paired and not looked at yet. */
    /** @type {Set<number>} */ unseen: new Set(),
    /** The last error that ends nothing, for the status line. */
    /** @type {string | undefined} */ notice: undefined,
    /** The case coding form (absent: the relay collects no statistics). */
    /** @type {{ name: string, values: string[] }[] | null} */ form: null,
    /** Codings kept by the console, waiting to be sent in a batch. */
    codingsHeld: 0,
  };
}

/** @typedef {ReturnType<typeof emptyModel>} Model */

/**
 * Takes in one event. `now` is the page's clock (ms); `inView` says
 * whether chat `n` is what the counsellor looks at.
 * @param {Model} model
 * @param {any} event
 * @param {number} now
 * @param {(n: number) => boolean} inView
 * @returns {{ cue?: boolean, unread?: number }}
 */
export function apply(model, event, now, inView = () => false) {
  const at = now - (event.ago_ms ?? 0);
  const live = event.ago_ms === undefined;
  const chat = typeof event.chat === 'number' ? model.chats.get(event.chat) : undefined;
  switch (event.event) {
    case 'console':
      // A (re)opened live connection: the replay that follows rebuilds all.
      Object.assign(model, emptyModel(), { pseudonym: event.pseudonym, replies: event.replies ?? [], active: model.active });
      return {};
    case 'replies':
      model.replies = event.replies;
      return {};
    case 'connected':
      model.topics = event.topics ?? [];
      model.link = 'online';
      return {};
    case 'status':
      model.available = event.available;
      model.capacity = event.capacity;
      model.link = 'online';
      return {};
    case 'reconnecting':
      model.link = 'reconnecting';
      return {};
    case 'queue_stats':
      model.queue = new Map((event.waiting ?? []).map((/** @type {any} */ w) => [w.topic ?? 0, w.count]));
      return {};
    case 'colleague':
      if (event.presence === 'signed_out') model.colleagues.delete(event.name);
      else model.colleagues.set(event.name, event.presence);
      return {};
    case 'paired': {
      if (typeof event.chat !== 'number') return {};
      model.chats.set(event.chat, {
        chat: event.chat,
        topic: event.topic,
        language: event.language,
        startedAt: at,
        ready: false,
        lines: [],
        unread: 0,
        peerAway: false,
      });
      if (model.active === null || !model.chats.has(model.active)) model.active = event.chat;
      if (!live) return {};
      if (!inView(event.chat)) model.unseen.add(event.chat);
      return { cue: true };
    }
    case 'ready':
      if (chat) chat.ready = true;
      return {};
    case 'said':
      chat?.lines.push({ id: event.id, mine: true, text: event.text, status: 'sending' });
      return {};
    case 'sent':
    case 'delivered':
    case 'not_delivered': {
      const line = chat?.lines.find((l) => l.mine && l.id === event.id);
      // Never back from delivered to sent.
      if (line && !(line.status === 'delivered' && event.event === 'sent')) line.status = event.event;
      return {};
    }
    case 'message': {
      if (!chat) return {};
      chat.back = false;
      chat.lines.push({ id: chat.lines.length, mine: false, text: event.text });
      if (inView(chat.chat)) return {};
      chat.unread += 1;
      return { unread: chat.chat };
    }
    case 'peer_away':
      if (chat) {
        chat.peerAway = true;
        chat.back = false;
      }
      return {};
    case 'peer_back':
      if (chat) {
        chat.peerAway = false;
        chat.back = true;
      }
      return {};
    case 'resumed':
      if (chat) chat.peerAway = false;
      return {};
    case 'transfer_refused':
      if (chat) chat.notice = { key: `refused_${event.code}`, fields: { reason: event.reason } };
      return {};
    case 'ended':
      if (chat) {
        chat.ended = event.reason;
        chat.endedAt = at;
        chat.peerAway = false;
        for (const line of chat.lines) if (line.mine && line.status !== 'delivered') line.status = 'not_delivered';
      }
      model.unseen.delete(event.chat);
      return {};
    case 'error':
      if (event.fatal) {
        model.link = 'failed';
        model.failure = event.message;
      } else {
        model.notice = event.message;
      }
      return {};
    case 'replaced':
      model.link = 'replaced';
      return {};
    case 'form':
      model.form = event.fields;
      return {};
    case 'coded':
      model.codingsHeld = event.held;
      return {};
    case 'signed_out':
      if (model.link !== 'failed') model.link = 'signed_out';
      return {};
    default:
      return {};
  }
}

/** The counsellor looks at chat `n`: its marks go. */
export function look(/** @type {Model} */ model, /** @type {number} */ n) {
  model.active = n;
  model.unseen.delete(n);
  const chat = model.chats.get(n);
  if (chat) chat.unread = 0;
}

/** How long an ended chat stays on screen, for its last lines to be read. */
export const ENDED_KEPT_MS = 120_000;

/** Closes the ended chats shown for longer than {@link ENDED_KEPT_MS}. */
export function closeExpired(/** @type {Model} */ model, /** @type {number} */ now) {
  let closed = false;
  for (const chat of [...model.chats.values()]) {
    if (chat.ended && chat.endedAt !== undefined && now - chat.endedAt >= ENDED_KEPT_MS) {
      close(model, chat.chat);
      closed = true;
    }
  }
  return closed;
}

/**
 * Whether an ended chat is coded here: not one handed to a colleague or
 * back to the queue, which whoever ends it codes.
 * @param {Chat} chat
 */
export function codable(chat) {
  return !!chat.ended && chat.ended !== 'transferred';
}

/**
 * The `code` command for an ended chat, from the values chosen per field
 * (`''` = not coded), and the chat marked coded. The command names no
 * chat: the console keeps codings apart from chats. `null` if the chat has
 * not ended or was coded already.
 * @param {Model} model
 * @param {number} n
 * @param {string[]} chosen
 */
export function codeChat(model, n, chosen) {
  const chat = model.chats.get(n);
  if (!chat?.ended || chat.coded || !model.form || !codable(chat)) return null;
  chat.coded = true;
  const values = model.form
    .map((field, i) => ({ field: field.name, value: chosen[i] ?? '' }))
    .filter((c) => c.value !== '' && model.form?.find((f) => f.name === c.field)?.values.includes(c.value));
  return { command: 'code', values };
}

/** Closes an ended chat's panel; what it showed is gone. */
export function close(/** @type {Model} */ model, /** @type {number} */ n) {
  const chat = model.chats.get(n);
  if (!chat?.ended) return;
  for (const line of chat.lines) line.text = '';
  chat.lines.length = 0;
  model.chats.delete(n);
  if (model.active === n) model.active = model.chats.keys().next().value ?? null;
}

/** What the title and favicon count: unread messages plus chats not looked at. */
export function attention(/** @type {Model} */ model) {
  let n = model.unseen.size;
  for (const chat of model.chats.values()) n += chat.unread;
  return n;
}

/** A chat's running time as m:ss or h:mm:ss. */
export function elapsed(/** @type {number} */ ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (/** @type {number} */ v) => String(v).padStart(2, '0');
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/** Colleagues who can take a transfer now, and those who cannot. */
export function transferTargets(/** @type {Model} */ model) {
  return [...model.colleagues.entries()]
    .filter(([name]) => name !== model.pseudonym)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, presence]) => ({ name, presence, room: presence === 'available' }));
}
