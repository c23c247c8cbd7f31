// Skiff console: one page over the admin API (served at /ui by `skiff up` and the
// scheduler). Everything a guest controls (log lines, keys, payloads, errors) is put
// into the page as text nodes, never parsed as HTML; the Content-Security-Policy allows
// no inline script and no other origin. The admin token lives in this tab's
// sessionStorage and goes out as a bearer header, never in a URL.

const TOKEN_KEY = 'skiff-token';
const HISTORY_MS = 300_000; // sparklines show the last five minutes

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  history: [],
  latest: null,
  stream: null,
  pageAbort: null,
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function authHeaders() {
  return state.token ? { authorization: `Bearer ${state.token}` } : {};
}

class ApiError extends Error {}

/** Calls the admin API; throws ApiError with the server's message. */
async function api(path, options = {}) {
  const r = await fetch(path, {
    ...options,
    headers: { ...authHeaders(), ...(options.headers ?? {}) },
  });
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try {
      message = (await r.json()).error ?? message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message);
  }
  return r;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

/** Reads a streamed body a line at a time. */
async function readLines(response, onLine, separator = '\n') {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    let at;
    while ((at = pending.indexOf(separator)) >= 0) {
      const line = pending.slice(0, at);
      pending = pending.slice(at + separator.length);
      if (line) onLine(line);
    }
  }
}

const fmt = {
  rate: (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)),
  ms: (v) => (v === null || v === undefined ? '–' : v >= 100 ? v.toFixed(0) : v.toFixed(1)),
  bytes: (b) => (b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(1)} GiB` : `${(b / (1 << 20)).toFixed(0)} MiB`),
  time: (ms) => new Date(ms).toISOString().replace('T', ' ').replace('Z', ''),
  text: (bytes) => {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
    } catch {
      return `(${bytes.length} bytes, not UTF-8)`;
    }
  },
};

/** An SVG line of `points` ({t: ms, v}) over the five minutes before `now`. */
function sparkline(points, now) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${HISTORY_MS / 1000} 36`);
  svg.setAttribute('preserveAspectRatio', 'none');
  const max = Math.max(1, ...points.map((p) => p.v));
  const xy = points.map((p) => `${((HISTORY_MS - (now - p.t)) / 1000).toFixed(1)},${(34 - (p.v / max) * 32).toFixed(1)}`);
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', xy.join(' '));
  svg.append(line);
  return svg;
}

function view(...children) {
  const v = document.getElementById('view');
  delete v.dataset.live;
  v.replaceChildren(...children);
  return v;
}

/**
 * Brings `old` to look like `fresh` in place, keeping every node that is still there, so
 * that a page re-rendered each second does not swallow a click that spans the re-render
 * or drop a text selection. Pages shown this way attach no event listeners: a listener on
 * `fresh` would be lost where `old` is kept.
 */
function morph(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return;
  }
  if (old.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
    return;
  }
  for (const a of [...old.attributes]) if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of fresh.attributes) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
  morphChildren(old, [...fresh.childNodes]);
}

/** Morphs `parent`'s children, one by one, into `after`. */
function morphChildren(parent, after) {
  const before = [...parent.childNodes];
  after.forEach((c, i) => (i < before.length ? morph(before[i], c) : parent.append(c)));
  for (const c of before.slice(after.length)) c.remove();
}

/** Like `view`, for the pages the live stream re-renders: updates `#view` in place. */
function liveView(page, ...children) {
  const v = document.getElementById('view');
  if (v.dataset.live !== page) {
    view(...children);
    v.dataset.live = page;
    return v;
  }
  morphChildren(v, [...el('div', {}, ...children).childNodes]);
  return v;
}

function setLive(on) {
  const live = document.getElementById('live');
  live.textContent = on ? 'live' : 'offline';
  live.classList.toggle('on', on);
}

// ---------------------------------------------------------------- session

async function session() {
  // Answers 200 either way: whether a token is needed and whether ours is right.
  const r = await fetch('/v1/session', { headers: authHeaders() });
  return r.json();
}

function showLogin(message) {
  stopStream();
  document.getElementById('login').hidden = false;
  document.getElementById('view').replaceChildren();
  document.getElementById('logout').hidden = true;
  document.getElementById('login-error').textContent = message ?? '';
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById('token');
  state.token = input.value;
  const s = await session();
  if (!s.authorized) {
    state.token = null;
    showLogin('That token is not this server\'s.');
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = '';
  start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  showLogin();
}

// ---------------------------------------------------------------- live stream

function stopStream() {
  state.stream?.abort();
  state.stream = null;
  setLive(false);
}

async function openStream() {
  if (state.stream) return;
  const ctrl = new AbortController();
  state.stream = ctrl;
  while (state.stream === ctrl) {
    try {
      const r = await api('/v1/stream', { signal: ctrl.signal });
      setLive(true);
      await readLines(r, onStreamEvent, '\n\n');
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e instanceof ApiError) {
        showLogin(e.message);
        return;
      }
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function onStreamEvent(chunk) {
  let type = 'message';
  let data = '';
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) type = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trim();
  }
  if (!data) return;
  const payload = JSON.parse(data);
  if (type === 'history') state.history = payload;
  else if (type === 'snapshot') state.history.push(payload);
  else return;
  const horizon = (state.history[state.history.length - 1]?.time_ms ?? 0) - HISTORY_MS;
  while (state.history.length && state.history[0].time_ms < horizon) state.history.shift();
  state.latest = state.history[state.history.length - 1] ?? null;
  const page = route();
  if (page.name === 'overview' || page.name === 'functions') render();
}

// ---------------------------------------------------------------- pages

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'functions' && parts[1]) return { name: 'function', fn: parts[1] };
  if (parts[0] === 'functions') return { name: 'functions' };
  if (parts[0] === 'traces') return { name: 'traces', id: parts[1] ?? '' };
  return { name: 'overview' };
}

function overview() {
  const snap = state.latest;
  if (!snap) return view(el('p', { class: 'muted' }, 'Waiting for the first sample…'));
  const series = (name, key) => state.history.map((s) => ({ t: s.time_ms, v: s.nodes.find((n) => n.node === name)?.[key] ?? 0 }));
  const cards = snap.nodes.map((n) =>
    el('div', { class: 'card', 'data-node': n.node },
      el('h3', {}, el('span', {}, n.node), el('span', { class: `state-${n.state}` }, n.state)),
      el('div', { class: 'stats' },
        el('span', {}, el('b', { class: 'rps' }, fmt.rate(n.rps)), 'req/s'),
        el('span', {}, el('b', {}, `${n.in_flight}/${n.capacity}`), 'in flight'),
        el('span', {}, el('b', {}, fmt.bytes(n.memory_bytes)), 'memory'),
        el('span', {}, el('b', {}, fmt.ms(n.p50_ms)), 'p50 ms'),
        el('span', {}, el('b', {}, fmt.ms(n.p99_ms)), 'p99 ms'),
        el('span', {}, el('b', {}, n.functions), 'functions')),
      sparkline(series(n.node, 'rps'), snap.time_ms)));
  return liveView('overview',
    el('h1', {}, snap.mode === 'scheduler' ? 'Cluster' : 'Node'),
    el('div', { class: 'cards', id: 'nodes' }, cards),
    el('h2', {}, 'Functions'),
    functionTable(snap.functions));
}

function functionTable(functions) {
  return el('table', { id: 'functions' },
    el('thead', {}, el('tr', {}, ['name', 'version', 'world', 'route', 'instances', 'req/s', 'errors/s', 'p99 ms', 'triggers']
      .map((h) => el('th', {}, h)))),
    el('tbody', {}, functions.map((f) =>
      el('tr', { 'data-function': f.name },
        el('td', {}, el('a', { href: `#/functions/${encodeURIComponent(f.name)}` }, f.name)),
        el('td', { class: 'num' }, `v${f.version}`),
        el('td', {}, f.world ?? '–'),
        el('td', {}, f.route),
        el('td', { class: 'num' }, f.instances),
        el('td', { class: 'num' }, fmt.rate(f.rps)),
        el('td', { class: 'num' }, fmt.rate(f.errors)),
        el('td', { class: 'num' }, fmt.ms(f.p99_ms)),
        el('td', {}, f.triggers.join(', ') || '–')))));
}

function functionsPage() {
  const snap = state.latest;
  if (!snap) return view(el('p', { class: 'muted' }, 'Waiting for the first sample…'));
  return liveView('functions', el('h1', {}, 'Functions'), functionTable(snap.functions));
}

async function functionPage(name, signal) {
  const base = `/v1/functions/${encodeURIComponent(name)}`;
  const info = await apiJson(base, { signal });
  const manifest = await (await api(`${base}/manifest`, { signal })).text();
  const log = el('div', { class: 'log', id: 'log' });
  const keys = el('tbody');
  const letters = el('tbody');
  const invocations = el('tbody');
  view(
    el('h1', {}, `${info.name} `, el('span', { class: 'muted' }, `v${info.version} · ${info.route}`)),
    el('h2', {}, 'Manifest'), el('pre', { id: 'manifest' }, manifest),
    el('h2', {}, 'Recent invocations'),
    el('table', { id: 'invocations' }, el('thead', {}, el('tr', {}, ['when', 'trigger', 'outcome', 'ms', 'node', 'trace']
      .map((h) => el('th', {}, h)))), invocations),
    el('h2', {}, 'Logs (live)'), log,
    el('h2', {}, 'Keys'), el('table', { id: 'keys' }, el('thead', {}, el('tr', {}, el('th', {}, 'key'))), keys),
    el('h2', {}, 'Dead letters'),
    el('table', { id: 'dead-letters' }, el('thead', {}, el('tr', {}, ['id', 'topic', 'payload', 'attempts', 'last error', '']
      .map((h) => el('th', {}, h)))), letters));

  for (const s of await apiJson(`${base}/invocations`, { signal })) {
    invocations.append(el('tr', {},
      el('td', {}, fmt.time(s.start_ms)), el('td', {}, s.trigger), el('td', {}, s.outcome),
      el('td', { class: 'num' }, fmt.ms(s.duration_us / 1000)), el('td', {}, s.node),
      el('td', {}, el('a', { href: `#/traces/${encodeURIComponent(s.trace_id)}` }, s.trace_id.slice(0, 12)))));
  }
  await keyPage(base, keys, null, signal);
  await deadLetters(base, letters, signal);
  // The log stream runs until the page changes.
  const r = await api(`${base}/logs?tail=50&follow=true`, { signal });
  await readLines(r, (line) => {
    const l = JSON.parse(line);
    log.append(el('div', {}, `${fmt.time(l.ts_ms)} v${l.version} ${l.stream}: `, l.line));
    log.scrollTop = log.scrollHeight;
  });
}

async function keyPage(base, tbody, cursor, signal) {
  const q = cursor === null ? '' : `?cursor=${cursor}`;
  const page = await apiJson(`${base}/kv${q}`, { signal });
  tbody.querySelector('.more')?.remove();
  for (const k of page.keys) tbody.append(el('tr', {}, el('td', {}, k)));
  if (page.keys.length === 0 && cursor === null) tbody.append(el('tr', {}, el('td', { class: 'muted' }, 'no keys')));
  if (page.cursor !== null && page.cursor !== undefined) {
    tbody.append(el('tr', { class: 'more' }, el('td', {},
      el('button', { type: 'button', onclick: () => keyPage(base, tbody, page.cursor, signal) }, 'More keys'))));
  }
}

async function deadLetters(base, tbody, signal) {
  const list = await apiJson(`${base}/dead-letters`, { signal });
  tbody.replaceChildren();
  if (list.length === 0) tbody.append(el('tr', {}, el('td', { class: 'muted' }, 'none')));
  for (const d of list) {
    const cell = el('td');
    const confirm = () => {
      cell.replaceChildren(
        el('span', {}, 'Replay this event? '),
        el('button', { type: 'button', class: 'primary confirm', onclick: replay }, 'Yes, replay'),
        el('button', { type: 'button', onclick: ask }, 'No'));
    };
    const ask = () => cell.replaceChildren(el('button', { type: 'button', class: 'replay', onclick: confirm }, 'Replay…'));
    const replay = async () => {
      try {
        await api(`${base}/dead-letters/${encodeURIComponent(d.event.id)}/replay`, { method: 'POST' });
        cell.replaceChildren(el('span', { class: 'replayed' }, 'replayed'));
      } catch (e) {
        cell.replaceChildren(el('span', { class: 'error' }, e.message));
      }
    };
    ask();
    tbody.append(el('tr', { 'data-id': d.event.id },
      el('td', {}, d.event.id.slice(0, 12)), el('td', {}, d.event.topic), el('td', {}, fmt.text(d.event.data)),
      el('td', { class: 'num' }, d.attempts), el('td', {}, d.error), cell));
  }
}

async function tracesPage(id, signal) {
  const input = el('input', { id: 'trace-id', placeholder: 'trace id (x-skiff-trace-id)', size: 40, value: id });
  const result = el('div', { id: 'trace' });
  view(el('h1', {}, 'Traces'),
    el('form', { onsubmit: (e) => { e.preventDefault(); location.hash = `#/traces/${encodeURIComponent(input.value.trim())}`; } },
      input, ' ', el('button', { type: 'submit' }, 'Show')),
    result);
  if (!id) return;
  const spans = await apiJson(`/v1/traces/${encodeURIComponent(id)}`, { signal });
  result.append(traceTree(spans));
}

function traceTree(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const total = Math.max(1, ...spans.map((s) => s.duration_us));
  const walk = (parent) => el('ul', { class: 'tree' }, spans
    .filter((s) => (parent === null ? !s.parent || !ids.has(s.parent) : s.parent === parent))
    .sort((a, b) => a.start_ms - b.start_ms)
    .map((s) => {
      const bar = el('span', { class: 'bar' });
      bar.style.width = `${Math.max(2, (s.duration_us / total) * 200)}px`;
      return el('li', { class: 'span', 'data-function': s.function },
        el('b', {}, s.function), ` ${s.trigger} · ${s.outcome} · ${fmt.ms(s.duration_us / 1000)} ms · ${s.node}`, bar,
        walk(s.span_id));
    }));
  if (spans.length === 0) return el('p', { class: 'muted' }, 'no spans for this trace (yet)');
  return walk(null);
}

// ---------------------------------------------------------------- main

async function render() {
  const page = route();
  if (page.name === 'overview') return overview();
  if (page.name === 'functions') return functionsPage();
  state.pageAbort?.abort();
  const ctrl = new AbortController();
  state.pageAbort = ctrl;
  try {
    if (page.name === 'function') await functionPage(page.fn, ctrl.signal);
    if (page.name === 'traces') await tracesPage(page.id, ctrl.signal);
  } catch (e) {
    if (!ctrl.signal.aborted) view(el('p', { class: 'error' }, e.message));
  }
}

async function start() {
  const s = await session();
  if (!s.authorized) return showLogin(s.token_required && state.token ? 'That token is not this server\'s.' : '');
  document.getElementById('login').hidden = true;
  document.getElementById('logout').hidden = !s.token_required;
  openStream();
  render();
}

document.getElementById('login-form').addEventListener('submit', signIn);
document.getElementById('logout').addEventListener('click', signOut);
window.addEventListener('hashchange', () => {
  state.pageAbort?.abort();
  if (document.getElementById('login').hidden) render();
});
start();
