// @ts-check
/**
 * The young person's page: one screen at a time (connecting, choose, wait,
 * chat, closed, ended) over the client library (`../src`). It reads
 * `config.json` (the organisation's name and key, the exit URL, the
 * default language, where the relay is) and the texts of one language
 * (`i18n/<lang>.json`), connects at once so that the topics are there when
 * the young person is, and shows every event of the chat.
 *
 * It keeps nothing: no cookies, no Web Storage, no IndexedDB, no caches,
 * no service worker. Quick exit (the button, or Escape) ends the chat,
 * wipes the keys and the page, and replaces the page with the exit URL so
 * that Back does not return to it.
 *
 * `?transport=websocket` skips WebTransport (for tests and for networks
 * that break it).
 */

import { hexToBytes } from '@noble/hashes/utils.js';
import { connect } from '../src/transport.js';
import { startChat } from '../src/driver.js';

/** @typedef {Record<string, string>} Texts */

const $ = (/** @type {string} */ selector) => /** @type {HTMLElement} */ (document.querySelector(selector));

const state = {
  /** @type {any} */ config: null,
  /** @type {Texts} */ texts: {},
  language: 'nl',
  /** The page's languages (`i18n/languages.json`): adding one is adding files. */
  /** @type {{ code: string, name: string }[]} */ pageLanguages: [{ code: 'nl', name: 'Nederlands' }],
  /** @type {ReturnType<typeof startChat> | null} */ chat: null,
  /** @type {{ id: number, nl: string, en: string }[]} */ topics: [],
  /** @type {string[]} */ languages: [],
  counsellor: '',
  /** @type {Map<number, HTMLElement>} */ mine: new Map(),
  /** Each sent message's last status, also for one whose line is not up yet. */
  /** @type {Map<number, string>} */ statuses: new Map(),
  /** @type {{ position: number, estimated_wait_secs?: number } | null} */ queued: null,
  /** @type {number | null | undefined} */ nextOpen: undefined,
  /** @type {string | null} */ endedReason: null,
  screen: 'connecting',
  exiting: false,
};

/** A text with `{name}` fields filled in. */
function t(/** @type {string} */ key, /** @type {Record<string, string | number>} */ fields = {}) {
  const text = state.texts[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(fields[name] ?? ''));
}

/** The language the switch offers: the one after the current, in the list's order. */
function nextLanguage() {
  const list = state.pageLanguages;
  const at = list.findIndex((l) => l.code === state.language);
  return list[(at + 1) % list.length];
}

async function loadTexts(/** @type {string} */ language) {
  const response = await fetch(`i18n/${language}.json`, { cache: 'no-store', credentials: 'omit' });
  state.texts = await response.json();
  state.language = language;
  document.documentElement.lang = language;
  applyTexts();
}

/** Puts the current language's texts into every marked element. */
function applyTexts() {
  for (const element of document.querySelectorAll('[data-i18n]')) {
    element.textContent = t(/** @type {string} */ (element.getAttribute('data-i18n')));
  }
  for (const element of document.querySelectorAll('[data-i18n-attr]')) {
    const [attr, key] = /** @type {string} */ (element.getAttribute('data-i18n-attr')).split(':');
    element.setAttribute(attr, t(key));
  }
  const next = nextLanguage();
  const switcher = $('[data-switch-language]');
  switcher.textContent = next.name;
  switcher.setAttribute('lang', next.code);
  switcher.hidden = state.pageLanguages.length < 2;
  document.title = state.config ? `${t('connecting_title')} · ${state.config.organisation}` : t('connecting_title');
  renderChoices();
  renderQueue();
  renderClosed();
  renderEnded();
  renderVerified();
}

function show(/** @type {string} */ screen) {
  state.screen = screen;
  for (const section of document.querySelectorAll('[data-screen]')) {
    /** @type {HTMLElement} */ (section).hidden = section.getAttribute('data-screen') !== screen;
  }
  document.body.dataset.current = screen;
  const heading = /** @type {HTMLElement | null} */ (document.querySelector(`[data-screen="${screen}"] h1`));
  if (screen !== 'chat') heading?.setAttribute('tabindex', '-1');
  if (screen === 'chat') /** @type {HTMLElement} */ ($('[data-message]')).focus();
  else heading?.focus();
}

function banner(/** @type {string | null} */ text) {
  const element = $('[data-banner]');
  element.hidden = !text;
  element.textContent = text ?? '';
}

function renderChoices() {
  const topics = $('[data-topics]');
  const languages = $('[data-languages]');
  const picked = {
    topic: /** @type {HTMLInputElement | null} */ (topics.querySelector('input:checked'))?.value ?? '',
    language: /** @type {HTMLInputElement | null} */ (languages.querySelector('input:checked'))?.value ?? '',
  };
  const label = (/** @type {{ nl: string, en: string }} */ topic) => (state.language === 'en' ? topic.en : topic.nl);
  topics.replaceChildren(
    ...[{ id: '', text: t('topic_none') }, ...state.topics.map((topic) => ({ id: String(topic.id), text: label(topic) }))].map(
      (option) => radio('topic', option.id, option.text, picked.topic === option.id),
    ),
  );
  const names = new Intl.DisplayNames([state.language], { type: 'language' });
  languages.replaceChildren(
    ...[{ id: '', text: t('language_any') }, ...state.languages.map((code) => ({ id: code, text: names.of(code) ?? code }))].map(
      (option) => radio('language', option.id, option.text, picked.language === option.id),
    ),
  );
}

function radio(/** @type {string} */ name, /** @type {string} */ value, /** @type {string} */ text, /** @type {boolean} */ checked) {
  const label = document.createElement('label');
  const input = document.createElement('input');
  input.type = 'radio';
  input.name = name;
  input.value = value;
  input.checked = checked;
  label.append(input, document.createTextNode(text));
  return label;
}

function renderQueue() {
  const q = state.queued;
  const element = $('[data-queue]');
  if (!q) return void (element.textContent = '');
  const position = q.position <= 1 ? t('queue_next') : t('queue_position', { position: q.position });
  let estimate = '';
  if (q.estimated_wait_secs !== undefined) {
    estimate = q.estimated_wait_secs < 60 ? t('queue_estimate_soon') : t('queue_estimate', { minutes: Math.round(q.estimated_wait_secs / 60) });
  }
  element.textContent = `${position} ${estimate}`.trim();
}

function renderClosed() {
  const element = $('[data-next-open]');
  if (state.nextOpen === undefined) return;
  if (state.nextOpen === null) return void (element.textContent = t('next_open_unknown'));
  const time = new Intl.DateTimeFormat(state.language, { weekday: 'long', day: 'numeric', month: 'long', hour: '2-digit', minute: '2-digit' }).format(
    new Date(state.nextOpen * 1000),
  );
  element.textContent = t('next_open', { time });
}

function renderEnded() {
  if (state.endedReason) $('[data-ended-reason]').textContent = t(`reason_${state.endedReason}`);
}

function renderVerified(transferred = false) {
  if (!state.counsellor) return;
  $('[data-verified]').textContent = t(transferred ? 'transferred' : 'verified', {
    name: state.counsellor,
    org: state.config?.organisation ?? '',
  });
}

/** A line in the chat: theirs, mine (with a status), or a note. */
function addLine(/** @type {'theirs' | 'mine' | 'note'} */ kind, /** @type {string} */ text) {
  const item = document.createElement('li');
  item.className = kind;
  if (kind !== 'note') {
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = kind === 'mine' ? t('you') : state.counsellor;
    item.append(who);
  }
  item.append(document.createTextNode(text));
  $('[data-messages]').append(item);
  item.scrollIntoView({ block: 'end' });
  return item;
}

function setStatus(/** @type {number} */ id, /** @type {string} */ status) {
  state.statuses.set(id, status);
  const item = state.mine.get(id);
  if (!item) return;
  let mark = /** @type {HTMLElement | null} */ (item.querySelector('.status'));
  if (!mark) {
    mark = document.createElement('span');
    mark.className = 'status';
    item.append(mark);
  }
  mark.dataset.status = status;
  mark.textContent = t(`status_${status}`);
}

/** What each event of the chat does to the page. */
function onEvent(/** @type {Record<string, any>} */ event) {
  switch (event.event) {
    case 'transport':
      document.body.dataset.transport = event.transport;
      break;
    case 'connected':
      state.topics = event.topics;
      state.languages = event.languages;
      renderChoices();
      show('choose');
      break;
    case 'queued':
      state.queued = { position: event.position, estimated_wait_secs: event.estimated_wait_secs };
      renderQueue();
      if (state.screen !== 'wait') show('wait');
      break;
    case 'closed':
      state.nextOpen = event.next_open ?? null;
      renderClosed();
      show('closed');
      break;
    case 'paired':
      state.counsellor = event.counsellor;
      renderVerified();
      show('chat');
      break;
    case 'transferred':
      state.counsellor = event.counsellor;
      renderVerified(true);
      addLine('note', t('transferred', { name: event.counsellor, org: state.config.organisation }));
      break;
    case 'message':
      addLine('theirs', event.text);
      break;
    case 'sent':
      setStatus(event.id, 'sent');
      break;
    case 'delivered':
      setStatus(event.id, 'delivered');
      break;
    case 'not_delivered':
      setStatus(event.id, 'not_delivered');
      break;
    case 'peer_away':
      addLine('note', t('peer_away', { name: state.counsellor }));
      break;
    case 'peer_back':
      addLine('note', t('peer_back', { name: state.counsellor }));
      break;
    case 'reconnecting':
      banner(t('reconnecting'));
      break;
    case 'resumed':
      banner(null);
      break;
    case 'ended':
      banner(null);
      state.endedReason = event.reason in REASONS ? event.reason : 'error';
      renderEnded();
      show('ended');
      break;
    case 'error':
      if (event.fatal) {
        banner(null);
        state.endedReason = event.code === 'unsupported_version' ? 'unsupported' : 'error';
        renderEnded();
        show('ended');
      }
      break;
    default:
      break;
  }
}

const REASONS = {
  you_ended: 1, left_queue: 1, peer_ended: 1, peer_disconnected: 1, security_failure: 1, relay_shutdown: 1,
  busy: 1, wait_exceeded: 1, ended_while_away: 1, blocked: 1, counsellor_revoked: 1,
};

/** Solves a proof of work in a Web Worker, so that the page stays responsive. */
function solveInWorker(/** @type {Uint8Array} */ challenge, /** @type {number} */ difficulty) {
  show(state.screen === 'choose' ? 'connecting' : state.screen);
  return new Promise((resolve, reject) => {
    const worker = new Worker('pow-worker.js', { type: 'module' });
    worker.onmessage = (message) => {
      if (message.data.solution) {
        worker.terminate();
        resolve(message.data.solution);
      } else if (message.data.error) {
        worker.terminate();
        reject(new Error(message.data.error));
      }
    };
    worker.onerror = () => reject(new Error('the proof of work failed'));
    worker.postMessage({ challenge, difficulty });
  });
}

/**
 * Where the relays are: the config's list (an entry without URLs is the
 * host this page came from), or just that host. Each attempt to connect
 * takes the next, so that a relay that is gone or leaves (a cluster) is
 * followed by another of the same service, where the chat resumes.
 */
function relayUrls(/** @type {number} */ attempt) {
  const list = state.config.relays?.length ? state.config.relays : [{}];
  const relay = list[attempt % list.length] ?? {};
  const ws = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return {
    webtransport: relay.webtransport ?? `https://${location.host}/fluister/1`,
    websocket: relay.websocket ?? `${ws}//${location.host}/fluister/1`,
  };
}

function begin() {
  let attempt = 0;
  const hashes = (state.config.certificateHashes ?? []).map((/** @type {string} */ b64) =>
    Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)),
  );
  const webTransport = new URLSearchParams(location.search).get('transport') !== 'websocket';
  state.chat = startChat({
    orgKey: hexToBytes(state.config.orgKey),
    connect: () => {
      const urls = relayUrls(attempt++);
      return connect({ webTransportUrl: urls.webtransport, webSocketUrl: urls.websocket, certificateHashes: hashes, webTransport });
    },
    solve: solveInWorker,
    onEvent,
  });
}

/** Quick exit: end, wipe, and leave without a way Back. */
function quickExit() {
  if (state.exiting) return;
  state.exiting = true;
  try {
    state.chat?.wipe();
  } catch {
    // Leaving matters more.
  }
  state.chat = null;
  state.mine.clear();
  state.statuses.clear();
  document.title = '';
  document.body.replaceChildren();
  location.replace(state.config?.exitUrl ?? 'https://www.google.com/');
}

async function main() {
  $('[data-quick-exit]').addEventListener('click', quickExit);
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') quickExit();
  });
  const response = await fetch('config.json', { cache: 'no-store', credentials: 'omit' });
  state.config = await response.json();
  $('[data-org]').textContent = state.config.organisation;
  const languages = await fetch('i18n/languages.json', { cache: 'no-store', credentials: 'omit' });
  state.pageLanguages = await languages.json();
  const preferred = state.pageLanguages.find((l) => l.code === state.config.defaultLanguage) ?? state.pageLanguages[0];
  await loadTexts(preferred.code);
  $('[data-switch-language]').addEventListener('click', () => void loadTexts(nextLanguage().code));
  if (!state.config.orgKey) {
    state.endedReason = null;
    $('[data-ended-reason]').textContent = t('not_configured');
    $('[data-restart]').hidden = true;
    show('ended');
    return;
  }
  $('[data-choose-form]').addEventListener('submit', (event) => {
    event.preventDefault();
    const topic = /** @type {HTMLInputElement | null} */ (document.querySelector('[data-topics] input:checked'))?.value;
    const language = /** @type {HTMLInputElement | null} */ (document.querySelector('[data-languages] input:checked'))?.value;
    show('connecting');
    state.chat?.join(topic ? Number(topic) : null, language || null);
  });
  $('[data-compose]').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = /** @type {HTMLTextAreaElement} */ ($('[data-message]'));
    const text = input.value.trim();
    if (!text || !state.chat) return;
    const item = addLine('mine', text);
    const id = state.chat.send(text);
    if (typeof id === 'number') {
      state.mine.set(id, item);
      setStatus(id, state.statuses.get(id) ?? 'sending');
    }
    input.value = '';
    input.focus();
  });
  $('[data-message]').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      /** @type {HTMLFormElement} */ ($('[data-compose]')).requestSubmit();
    }
  });
  $('[data-end]').addEventListener('click', () => state.chat?.end());
  $('[data-leave]').addEventListener('click', () => state.chat?.end());
  $('[data-restart]').addEventListener('click', () => location.reload());
  begin();
}

void main();
