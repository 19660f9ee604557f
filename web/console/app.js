// @ts-check
/**
 * The counsellor's console page. It holds no key and no credential: the
 * `fluister console` process on this computer does, and this page talks
 * only to it, over one WebSocket (`/live`) on the origin it came from.
 * Events come in (see model.js), commands go out as JSON objects
 * (`{"command":"say","chat":1,"text":"..."}` and the others in
 * web/README.md).
 *
 * Drawing: the side bar (queue, colleagues, canned replies), one panel per
 * chat (side by side when there is room, one at a time behind tabs when
 * not), each with its topic, language, running time, unread mark, the
 * young person's connection, messages with sent and delivered marks,
 * transfer, end and end-and-block. A new chat cues with a sound (which can
 * be turned off), the page title and the favicon.
 *
 * It keeps nothing: no cookies of its own, no Web Storage, no IndexedDB,
 * no caches. A reload rebuilds everything from the console's replay. An
 * ended chat stays on screen until it is closed, or two minutes at most,
 * so that its last lines can be read; then its text is gone.
 */

import { apply, attention, close, closeExpired, codable, codeChat, elapsed, emptyModel, look, transferTargets } from './model.js';

/** @typedef {import('./model.js').Chat} Chat */

const $ = (/** @type {string} */ selector, /** @type {ParentNode} */ root = document) =>
  /** @type {HTMLElement} */ (root.querySelector(selector));

const LANGUAGES = [
  { code: 'nl', name: 'Nederlands' },
  { code: 'en', name: 'English' },
];

const ui = {
  /** @type {Record<string, string>} */ texts: {},
  language: 'nl',
  model: emptyModel(),
  /** @type {WebSocket | null} */ socket: null,
  /** True once the console said the session is over: no reconnecting. */
  over: false,
  /** The page could not reach the console. */
  consoleLost: false,
  sound: true,
  /** @type {AudioContext | null} */ audio: null,
  /** @type {Map<number, HTMLElement>} */ panels: new Map(),
  /** The chat whose block is being confirmed. */
  /** @type {number | null} */ confirming: null,
};

function t(/** @type {string} */ key, /** @type {Record<string, string | number>} */ fields = {}) {
  const text = ui.texts[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(fields[name] ?? ''));
}

async function loadTexts(/** @type {string} */ language) {
  const response = await fetch(`i18n/${language}.json`, { cache: 'no-store' });
  ui.texts = await response.json();
  ui.language = language;
  document.documentElement.lang = language;
  for (const element of document.querySelectorAll('[data-i18n]')) {
    element.textContent = t(/** @type {string} */ (element.getAttribute('data-i18n')));
  }
  for (const element of document.querySelectorAll('[data-i18n-attr]')) {
    const [attr, key] = /** @type {string} */ (element.getAttribute('data-i18n-attr')).split(':');
    element.setAttribute(attr, t(key));
  }
  const next = LANGUAGES.find((l) => l.code !== language) ?? LANGUAGES[0];
  const switcher = $('[data-switch-language]');
  switcher.textContent = next.name;
  switcher.setAttribute('lang', next.code);
  // Panels carry texts too: draw them again.
  for (const panel of ui.panels.values()) panel.remove();
  ui.panels.clear();
  render();
}

// ---- the live connection ----

function connectLive() {
  const socket = new WebSocket(`ws://${location.host}/live`);
  ui.socket = socket;
  socket.addEventListener('open', () => {
    ui.consoleLost = false;
  });
  socket.addEventListener('message', (message) => {
    let event;
    try {
      event = JSON.parse(String(message.data));
    } catch {
      return;
    }
    onEvent(event);
  });
  socket.addEventListener('close', () => {
    if (ui.socket !== socket) return;
    ui.socket = null;
    if (ui.over) return;
    ui.consoleLost = true;
    render();
    setTimeout(connectLive, 2000);
  });
}

function send(/** @type {Record<string, unknown>} */ command) {
  if (ui.socket?.readyState === WebSocket.OPEN) ui.socket.send(JSON.stringify(command));
}

/**
 * Whether the counsellor is looking at chat `n` right now: the window has
 * focus and so has something in that chat's panel (typing a reply, say).
 */
function inView(/** @type {number} */ n) {
  const panel = ui.panels.get(n);
  return (
    document.hasFocus() &&
    document.visibilityState === 'visible' &&
    ui.model.active === n &&
    isShown(n) &&
    !!panel?.contains(document.activeElement)
  );
}

/** Whether chat `n`'s panel is on screen (all are when wide; one when narrow). */
function isShown(/** @type {number} */ n) {
  const panel = ui.panels.get(n);
  return !!panel && panel.offsetParent !== null;
}

function onEvent(/** @type {any} */ event) {
  const effect = apply(ui.model, event, Date.now(), inView);
  if (event.event === 'signed_out' || event.event === 'replaced') ui.over = true;
  if (effect.cue) cue();
  render();
}

// ---- cues ----

function cue() {
  if (!ui.sound) return;
  try {
    ui.audio ??= new AudioContext();
    const ctx = ui.audio;
    for (const [start, freq] of [
      [0, 660],
      [0.18, 880],
    ]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, ctx.currentTime + start);
      gain.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + start + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(ctx.currentTime + start);
      osc.stop(ctx.currentTime + start + 0.17);
    }
  } catch {
    // No audio here: the title and favicon still cue.
  }
}

const ICON = (/** @type {boolean} */ dot) =>
  'data:image/svg+xml,' +
  encodeURIComponent(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect x="2" y="5" width="24" height="18" rx="5" fill="#1f5f8b"/><path d="M8 23l-2 6 8-6z" fill="#1f5f8b"/>${
      dot ? '<circle cx="25" cy="8" r="7" fill="#c8102e" stroke="#fff" stroke-width="2"/>' : ''
    }</svg>`,
  );

function renderAttention() {
  const count = attention(ui.model);
  const title = count > 0 ? t('new_chat_title', { count }) : 'Fluister console';
  if (document.title !== title) document.title = title;
  const icon = $('[data-favicon]');
  const href = ICON(count > 0);
  if (icon.getAttribute('href') !== href) icon.setAttribute('href', href);
  document.body.dataset.attention = String(count);
}

// ---- drawing ----

function topicName(/** @type {number | undefined} */ id) {
  if (!id) return t('topic_none');
  const topic = ui.model.topics.find((x) => x.id === id);
  if (!topic) return `#${id}`;
  return ui.language === 'nl' ? topic.nl : topic.en;
}

function languageName(/** @type {string | undefined} */ code) {
  if (!code) return t('language_none');
  try {
    return new Intl.DisplayNames([ui.language], { type: 'language' }).of(code) ?? code;
  } catch {
    return code;
  }
}

function render() {
  const m = ui.model;
  $('[data-pseudonym]').textContent = m.pseudonym;
  const state = ui.consoleLost && !ui.over ? 'console_lost' : m.link;
  const pill = $('[data-link]');
  pill.dataset.state = state;
  pill.textContent = t(`link_${state}`);
  const banner = $('[data-banner]');
  const bannerText =
    state === 'online' || state === 'connecting' ? '' : t(`banner_${state}`, { message: m.failure ?? '' });
  banner.hidden = !bannerText;
  banner.textContent = bannerText;
  $('[data-notice]').textContent = m.notice ?? '';

  const working = state === 'online';
  const available = /** @type {HTMLButtonElement} */ ($('[data-available]'));
  available.setAttribute('aria-pressed', String(m.available));
  available.textContent = m.available ? t('available_on') : t('available_off');
  available.disabled = !working;
  const capacity = /** @type {HTMLInputElement} */ ($('[data-capacity]'));
  if (document.activeElement !== capacity) capacity.value = String(m.capacity);
  capacity.disabled = !working;
  const sound = $('[data-sound]');
  sound.setAttribute('aria-pressed', String(ui.sound));
  sound.textContent = ui.sound ? t('sound_on') : t('sound_off');
  /** @type {HTMLButtonElement} */ ($('[data-sign-out]')).disabled = ui.over;

  renderQueue();
  renderColleagues();
  renderReplies();
  renderCodings();
  renderChats();
  renderAttention();
}

function renderQueue() {
  const list = $('[data-queue]');
  const rows = [...ui.model.queue.entries()].filter(([, count]) => count > 0);
  list.replaceChildren(
    ...(rows.length === 0
      ? [Object.assign(document.createElement('li'), { textContent: t('queue_empty') })]
      : rows.map(([topic, count]) => {
          const li = document.createElement('li');
          li.dataset.topic = String(topic);
          const name = document.createElement('span');
          name.textContent = topicName(topic);
          const n = document.createElement('span');
          n.className = 'n';
          n.textContent = String(count);
          li.append(name, n);
          return li;
        })),
  );
}

function renderColleagues() {
  const list = $('[data-colleagues]');
  const rows = transferTargets(ui.model);
  list.replaceChildren(
    ...(rows.length === 0
      ? [Object.assign(document.createElement('li'), { textContent: t('colleagues_empty') })]
      : rows.map(({ name, presence }) => {
          const li = document.createElement('li');
          li.dataset.colleague = name;
          const who = document.createElement('span');
          who.textContent = name;
          const state = document.createElement('span');
          state.className = 'presence';
          state.dataset.presence = presence;
          state.textContent = t(`presence_${presence}`);
          li.append(who, state);
          return li;
        })),
  );
}

function renderReplies() {
  const list = $('[data-replies]');
  const key = JSON.stringify([ui.model.replies, ui.model.active, ui.language]);
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(
    ...ui.model.replies.map((reply) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.reply = reply;
      button.textContent = reply;
      if (ui.model.active !== null) button.setAttribute('aria-label', t('replies_insert', { chat: ui.model.active, reply }));
      li.append(button);
      return li;
    }),
  );
}

/** The coding form of an ended chat: one choice per field, all optional. */
function renderCoding(/** @type {HTMLElement} */ panel, /** @type {Chat} */ chat) {
  const form = ui.model.form;
  const coding = /** @type {HTMLFormElement} */ ($('[data-coding]', panel));
  coding.hidden = !codable(chat) || !form || !!chat.coded || ui.over;
  $('[data-coded]', panel).hidden = !chat.coded;
  if (coding.hidden || !form) return;
  const key = JSON.stringify([form, ui.language]);
  const fields = $('[data-coding-fields]', panel);
  if (fields.dataset.key === key) return;
  fields.dataset.key = key;
  fields.replaceChildren(
    ...form.map((field, i) => {
      const id = `coding-${chat.chat}-${i}`;
      const row = document.createElement('div');
      row.className = 'coding-field';
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent = field.name;
      const select = document.createElement('select');
      select.id = id;
      select.dataset.codingField = String(i);
      select.append(new Option(t('coding_not_coded'), ''), ...field.values.map((v) => new Option(v, v)));
      row.append(label, select);
      return row;
    }),
  );
}

/** The side bar's count of codings waiting, and "send now". */
function renderCodings() {
  const m = ui.model;
  const section = $('[data-codings]');
  section.hidden = !m.form;
  $('[data-codings-held]').textContent = t('coding_held', { count: m.codingsHeld });
  /** @type {HTMLButtonElement} */ ($('[data-codings-send]')).disabled = m.codingsHeld === 0 || m.link !== 'online';
}

function renderChats() {
  const m = ui.model;
  for (const [n, panel] of ui.panels) {
    if (!m.chats.has(n)) {
      panel.remove();
      ui.panels.delete(n);
    }
  }
  const container = $('[data-chats]');
  for (const chat of m.chats.values()) {
    let panel = ui.panels.get(chat.chat);
    if (!panel) {
      panel = chatPanel(chat);
      ui.panels.set(chat.chat, panel);
      container.append(panel);
    }
    updatePanel(panel, chat);
  }
  const empty = $('[data-empty]');
  empty.hidden = m.chats.size > 0;
  empty.textContent = m.available ? t('empty_available') : t('empty_away');
  renderTabs();
}

function renderTabs() {
  const m = ui.model;
  const tabs = $('[data-tabs]');
  tabs.replaceChildren(
    ...[...m.chats.values()].map((chat) => {
      const tab = document.createElement('button');
      tab.type = 'button';
      tab.setAttribute('role', 'tab');
      tab.id = `tab-${chat.chat}`;
      tab.dataset.tab = String(chat.chat);
      tab.setAttribute('aria-selected', String(m.active === chat.chat));
      tab.setAttribute('aria-controls', `chat-${chat.chat}`);
      tab.tabIndex = m.active === chat.chat ? 0 : -1;
      const name = document.createElement('span');
      name.textContent = t('chat_title', { chat: chat.chat });
      const badge = document.createElement('span');
      badge.className = 'badge';
      const marks = chat.unread > 0 ? t('tab_unread', { count: chat.unread }) : m.unseen.has(chat.chat) ? t('tab_new') : '';
      badge.textContent = chat.unread > 0 ? String(chat.unread) : m.unseen.has(chat.chat) ? '•' : '';
      if (marks) badge.setAttribute('aria-label', marks);
      tab.append(name, badge);
      return tab;
    }),
  );
}

/** A chat's panel, built once; `updatePanel` keeps it current. */
function chatPanel(/** @type {Chat} */ chat) {
  const n = chat.chat;
  const panel = document.createElement('section');
  panel.className = 'chat';
  panel.id = `chat-${n}`;
  panel.dataset.chat = String(n);
  panel.setAttribute('role', 'tabpanel');
  panel.setAttribute('aria-labelledby', `chat-${n}-title`);
  panel.innerHTML = `
    <header>
      <h2 id="chat-${n}-title"></h2>
      <span class="badge" data-unread></span>
      <span class="meta" data-topic></span>
      <span class="meta" data-language></span>
      <span class="meta" data-elapsed></span>
    </header>
    <p class="warning" role="alert" data-peer-away hidden></p>
    <p class="info" role="status" data-info></p>
    <ol class="messages" tabindex="0" data-messages aria-live="polite" aria-relevant="additions"></ol>
    <form class="compose" data-compose>
      <label class="visually-hidden" for="message-${n}"></label>
      <textarea id="message-${n}" rows="2" maxlength="4000" autocomplete="off" data-message></textarea>
      <button type="submit" class="primary" data-send></button>
    </form>
    <div class="actions" data-actions>
      <label for="transfer-${n}" data-transfer-label></label>
      <select id="transfer-${n}" data-transfer-to></select>
      <button type="button" data-transfer></button>
      <button type="button" data-end></button>
      <button type="button" class="danger" data-block></button>
    </div>
    <form class="coding" data-coding hidden>
      <fieldset>
        <legend data-coding-title></legend>
        <p class="hint" data-coding-hint></p>
        <div class="coding-fields" data-coding-fields></div>
      </fieldset>
      <button type="submit" class="primary" data-coding-save></button>
    </form>
    <p class="info" role="status" data-coded hidden></p>
    <div class="actions" data-closing hidden><button type="button" data-close></button></div>`;
  $('h2', panel).textContent = t('chat_title', { chat: n });
  $('label[for^="message"]', panel).textContent = t('message_label', { chat: n });
  $('[data-messages]', panel).setAttribute('aria-label', t('messages_label', { chat: n }));
  $('[data-send]', panel).textContent = t('send');
  $('[data-transfer-label]', panel).textContent = t('transfer_label');
  $('[data-transfer]', panel).textContent = t('transfer');
  $('[data-end]', panel).textContent = t('end');
  $('[data-block]', panel).textContent = t('block');
  $('[data-close]', panel).textContent = t('close_chat');
  $('[data-coding-title]', panel).textContent = t('coding_chat_title');
  $('[data-coding-hint]', panel).textContent = t('coding_hint');
  $('[data-coding-save]', panel).textContent = t('coding_save');
  $('[data-coded]', panel).textContent = t('coding_done');
  return panel;
}

function updatePanel(/** @type {HTMLElement} */ panel, /** @type {Chat} */ chat) {
  const m = ui.model;
  const n = chat.chat;
  panel.classList.toggle('active', m.active === n);
  panel.classList.toggle('ended', !!chat.ended);
  $('[data-unread]', panel).textContent = chat.unread > 0 ? String(chat.unread) : '';
  if (chat.unread > 0) $('[data-unread]', panel).setAttribute('aria-label', t('tab_unread', { count: chat.unread }));
  $('[data-topic]', panel).textContent = topicName(chat.topic);
  $('[data-language]', panel).textContent = languageName(chat.language);
  $('[data-elapsed]', panel).textContent = chat.ended ? '' : t('running_for', { time: elapsed(Date.now() - chat.startedAt) });
  const away = $('[data-peer-away]', panel);
  away.hidden = !chat.peerAway;
  away.textContent = chat.peerAway ? t('peer_away') : '';
  let info = '';
  if (chat.ended) {
    info = ui.texts[`ended_${chat.ended}`] ? t(`ended_${chat.ended}`) : t('ended_other', { reason: chat.ended });
    info += ` ${t('ended_closes')}`;
  }
  else if (chat.notice) info = ui.texts[chat.notice.key] ? t(chat.notice.key) : t('refused_other', chat.notice.fields ?? {});
  else if (!chat.ready) info = t('waiting_handshake');
  else if (chat.back) info = t('peer_back');
  const infoEl = $('[data-info]', panel);
  if (infoEl.textContent !== info) infoEl.textContent = info;
  infoEl.hidden = !info;

  // Messages: append new ones, update marks.
  const list = $('[data-messages]', panel);
  while (list.children.length > chat.lines.length) list.lastElementChild?.remove();
  chat.lines.forEach((line, i) => {
    let li = /** @type {HTMLElement | undefined} */ (list.children[i]);
    if (!li) {
      li = document.createElement('li');
      li.className = line.mine ? 'mine' : 'theirs';
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = line.mine ? t('you') : t('them');
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = line.text;
      li.append(who, text);
      if (line.mine) {
        const status = document.createElement('span');
        status.className = 'status';
        li.append(status);
      }
      list.append(li);
      list.scrollTop = list.scrollHeight;
    }
    if (line.mine) {
      const status = $('.status', li);
      if (status.dataset.status !== line.status) {
        status.dataset.status = line.status ?? '';
        status.textContent = t(`status_${line.status}`);
      }
    }
  });

  const open = !chat.ended && m.link === 'online' && !ui.over;
  const textarea = /** @type {HTMLTextAreaElement} */ ($('[data-message]', panel));
  textarea.disabled = !open || !chat.ready;
  /** @type {HTMLButtonElement} */ ($('[data-send]', panel)).disabled = !open || !chat.ready;
  $('[data-actions]', panel).hidden = !!chat.ended;
  $('[data-closing]', panel).hidden = !chat.ended;
  renderCoding(panel, chat);
  for (const selector of ['[data-transfer]', '[data-end]', '[data-block]']) {
    /** @type {HTMLButtonElement} */ ($(selector, panel)).disabled = !open;
  }
  const select = /** @type {HTMLSelectElement} */ ($('[data-transfer-to]', panel));
  select.disabled = !open;
  const targets = transferTargets(m);
  const key = JSON.stringify([targets, ui.language]);
  if (select.dataset.key !== key) {
    const chosen = select.value;
    select.dataset.key = key;
    const queue = new Option(t('transfer_queue'), 'queue');
    const options = targets.map(({ name, presence, room }) => {
      const option = new Option(t('transfer_colleague', { name, presence: t(`presence_${presence}`) }), name);
      option.disabled = !room;
      return option;
    });
    select.replaceChildren(...options, queue);
    const keep = [...select.options].find((o) => o.value === chosen && !o.disabled);
    select.value = keep ? chosen : (options.find((o) => !o.disabled)?.value ?? 'queue');
  }
}

// ---- what the counsellor does ----

function chatOf(/** @type {Element | null} */ element) {
  const panel = element?.closest('[data-chat]');
  return panel ? Number(/** @type {HTMLElement} */ (panel).dataset.chat) : null;
}

function focusChat(/** @type {number} */ n) {
  look(ui.model, n);
  render();
  const panel = ui.panels.get(n);
  const textarea = panel && /** @type {HTMLTextAreaElement} */ ($('[data-message]', panel));
  if (textarea && !textarea.disabled) textarea.focus();
  else panel?.querySelector('button:not(:disabled)')?.focus?.();
}

function sendFrom(/** @type {HTMLElement} */ panel) {
  const n = Number(panel.dataset.chat);
  const textarea = /** @type {HTMLTextAreaElement} */ ($('[data-message]', panel));
  const text = textarea.value.trim();
  if (!text || textarea.disabled) return;
  send({ command: 'say', chat: n, text });
  textarea.value = '';
}

function wire() {
  const chats = $('[data-chats]');
  chats.addEventListener('submit', (e) => {
    e.preventDefault();
    const target = /** @type {HTMLElement} */ (e.target);
    const panel = target.closest('[data-chat]');
    if (!panel) return;
    if (target.matches('[data-coding]')) {
      const n = chatOf(target);
      const chosen = [...target.querySelectorAll('[data-coding-field]')].map((s) => /** @type {HTMLSelectElement} */ (s).value);
      const command = n === null ? null : codeChat(ui.model, n, chosen);
      if (command) send(command);
      render();
      $('[data-close]', /** @type {HTMLElement} */ (panel)).focus();
      return;
    }
    sendFrom(/** @type {HTMLElement} */ (panel));
  });
  chats.addEventListener('keydown', (e) => {
    const target = /** @type {HTMLElement} */ (e.target);
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && target.matches('[data-message]')) {
      e.preventDefault();
      const panel = target.closest('[data-chat]');
      if (panel) sendFrom(/** @type {HTMLElement} */ (panel));
    }
  });
  chats.addEventListener('focusin', (e) => {
    const n = chatOf(/** @type {Element} */ (e.target));
    if (n !== null && (ui.model.active !== n || attention(ui.model) > 0)) {
      look(ui.model, n);
      render();
    }
  });
  chats.addEventListener('click', (e) => {
    const target = /** @type {HTMLElement} */ (e.target);
    const n = chatOf(target);
    if (n === null) return;
    if (ui.model.active !== n) look(ui.model, n);
    const panel = /** @type {HTMLElement} */ (ui.panels.get(n));
    if (target.closest('[data-transfer]')) {
      const to = /** @type {HTMLSelectElement} */ ($('[data-transfer-to]', panel)).value;
      const chat = ui.model.chats.get(n);
      if (chat) chat.notice = undefined;
      if (to) send({ command: 'transfer', chat: n, to });
    } else if (target.closest('[data-end]')) {
      send({ command: 'end', chat: n });
    } else if (target.closest('[data-block]')) {
      ui.confirming = n;
      $('[data-confirm-title]').textContent = t('block_title', { chat: n });
      /** @type {HTMLDialogElement} */ ($('[data-confirm-block]')).showModal();
    } else if (target.closest('[data-close]')) {
      close(ui.model, n);
    }
    render();
  });
  $('[data-confirm-yes]').addEventListener('click', () => {
    if (ui.confirming !== null) send({ command: 'block', chat: ui.confirming });
    ui.confirming = null;
    /** @type {HTMLDialogElement} */ ($('[data-confirm-block]')).close();
  });
  $('[data-confirm-no]').addEventListener('click', () => {
    ui.confirming = null;
    /** @type {HTMLDialogElement} */ ($('[data-confirm-block]')).close();
  });
  $('[data-tabs]').addEventListener('click', (e) => {
    const tab = /** @type {HTMLElement} */ (e.target).closest('[data-tab]');
    if (tab) focusChat(Number(/** @type {HTMLElement} */ (tab).dataset.tab));
  });
  $('[data-available]').addEventListener('click', () => send({ command: 'available', available: !ui.model.available }));
  $('[data-capacity]').addEventListener('change', (e) => {
    const value = Number(/** @type {HTMLInputElement} */ (e.target).value);
    if (Number.isInteger(value) && value >= 1 && value <= 255) send({ command: 'capacity', capacity: value });
  });
  $('[data-sound]').addEventListener('click', () => {
    ui.sound = !ui.sound;
    render();
  });
  $('[data-switch-language]').addEventListener('click', () => {
    const next = LANGUAGES.find((l) => l.code !== ui.language) ?? LANGUAGES[0];
    loadTexts(next.code);
  });
  $('[data-sign-out]').addEventListener('click', () => send({ command: 'sign_out' }));
  $('[data-codings-send]').addEventListener('click', () => send({ command: 'code_send' }));
  $('[data-replies]').addEventListener('click', (e) => {
    const button = /** @type {HTMLElement} */ (e.target).closest('[data-reply]');
    const n = ui.model.active;
    if (!button || n === null) return;
    const panel = ui.panels.get(n);
    const textarea = panel && /** @type {HTMLTextAreaElement} */ ($('[data-message]', panel));
    if (!textarea || textarea.disabled) return;
    const reply = /** @type {HTMLElement} */ (button).dataset.reply ?? '';
    textarea.value = textarea.value ? `${textarea.value} ${reply}` : reply;
    textarea.focus();
  });
  const editor = /** @type {HTMLFormElement} */ ($('[data-replies-editor]'));
  $('[data-edit-replies]').addEventListener('click', () => {
    /** @type {HTMLTextAreaElement} */ ($('[data-replies-text]')).value = ui.model.replies.join('\n');
    editor.hidden = false;
    $('[data-edit-replies]').hidden = true;
    $('[data-replies-text]').focus();
  });
  const closeEditor = () => {
    editor.hidden = true;
    $('[data-edit-replies]').hidden = false;
  };
  $('[data-cancel-replies]').addEventListener('click', closeEditor);
  editor.addEventListener('submit', (e) => {
    e.preventDefault();
    const replies = /** @type {HTMLTextAreaElement} */ ($('[data-replies-text]')).value
      .split('\n')
      .map((r) => r.trim())
      .filter((r) => r);
    send({ command: 'replies', replies });
    closeEditor();
  });
  // Alt+1…9: chat N; Alt+→ / Alt+←: next or previous chat.
  document.addEventListener('keydown', (e) => {
    if (!e.altKey || e.ctrlKey || e.metaKey) return;
    const order = [...ui.model.chats.keys()];
    if (order.length === 0) return;
    let to = null;
    if (/^Digit[1-9]$/.test(e.code)) to = order[Number(e.code.slice(5)) - 1] ?? null;
    const at = order.indexOf(ui.model.active ?? order[0]);
    if (e.key === 'ArrowRight') to = order[(at + 1) % order.length];
    if (e.key === 'ArrowLeft') to = order[(at - 1 + order.length) % order.length];
    if (to === null || to === undefined) return;
    e.preventDefault();
    focusChat(to);
  });
  // Coming back to the window clears the marks of the chat in view.
  window.addEventListener('focus', () => {
    if (ui.model.active !== null && inView(ui.model.active)) {
      look(ui.model, ui.model.active);
      render();
    }
  });
  // The running time of each chat; an ended chat goes after two minutes.
  setInterval(() => {
    if (closeExpired(ui.model, Date.now())) render();
    for (const [n, panel] of ui.panels) {
      const chat = ui.model.chats.get(n);
      if (chat && !chat.ended) $('[data-elapsed]', panel).textContent = t('running_for', { time: elapsed(Date.now() - chat.startedAt) });
    }
  }, 1000);
}

const preferred = navigator.languages?.some((l) => l.startsWith('nl')) || !navigator.language?.startsWith('en') ? 'nl' : 'en';
loadTexts(preferred).then(() => {
  wire();
  connectLive();
});
