// The nonstop console's pages: plain DOM, no build step. Every call goes to the JSON API with the
// session's CSRF token; the server checks every permission again, buttons are only hidden here.
'use strict';

const session = { me: null, csrf: null };

// ---- small helpers -------------------------------------------------------------------------

/** Creates an element: h('button', {class: 'x', onclick: f}, 'text', child…). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);
const enc = encodeURIComponent;
const time = (ms) => (ms ? new Date(ms).toLocaleString() : '-');
const clock = (ms) => new Date(ms).toLocaleTimeString();
const badge = (text, kind) => h('span', { class: `badge ${kind || text || ''}` }, text || '-');

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** Calls the API; JSON in and out; throws ApiError with the server's message. */
async function api(method, path, body) {
  const headers = {};
  if (session.csrf && method !== 'GET') headers['X-CSRF-Token'] = session.csrf;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`, data);
  }
  return data;
}

/** Runs `action` for a button, showing errors in `errorBox`. */
async function attempt(button, errorBox, action) {
  if (errorBox) errorBox.textContent = '';
  if (button) button.disabled = true;
  try {
    await action();
  } catch (e) {
    if (e.status === 401 && !['/login', '/setup'].includes(location.pathname)) location.href = '/login';
    if (errorBox) errorBox.textContent = e.message;
    else alert(e.message);
  } finally {
    if (button) button.disabled = false;
  }
}

/** Re-runs `fn` every `ms` while the page shows (polling of live state). */
function every(ms, fn) {
  fn();
  return setInterval(fn, ms);
}

function page(title, ...content) {
  const app = $('#app');
  app.replaceChildren(h('h1', {}, title), ...content);
  document.title = `${title} · nonstop`;
}

const isAdmin = () => session.me && session.me.role === 'admin';

// ---- layout --------------------------------------------------------------------------------

function layout() {
  const links = [['/', 'Services']];
  if (isAdmin()) links.push(['/audit', 'Audit log'], ['/users', 'Users'], ['/agents', 'Agents']);
  $('#nav').replaceChildren(...links.map(([href, text]) =>
    h('a', { href, class: location.pathname === href ? 'current' : '' }, text)));
  const logout = h('button', { id: 'logout', class: 'small', onclick: () => attempt(logout, null, async () => {
    await api('POST', '/api/logout');
    location.href = '/login';
  }) }, 'Log out');
  $('#who').replaceChildren(h('span', { id: 'whoami' }, `${session.me.user} (${session.me.role})`), logout);
}

// ---- login and setup -----------------------------------------------------------------------

function loginPage() {
  const error = h('p', { class: 'error', id: 'error' });
  const form = h('form', { class: 'panel narrow', id: 'login-form' },
    h('h2', {}, 'Log in'),
    h('label', {}, 'User', h('input', { id: 'login-user', autocomplete: 'username', required: true })),
    h('label', {}, 'Password', h('input', { id: 'login-password', type: 'password', autocomplete: 'current-password', required: true })),
    h('label', {}, 'Code from your authenticator app', h('input', { id: 'login-totp', inputmode: 'numeric', autocomplete: 'one-time-code', maxlength: '6' })),
    h('button', { class: 'primary', id: 'login-submit', type: 'submit' }, 'Log in'),
    error,
    h('p', { class: 'muted' }, 'First run? Use the one-time secret the console printed at ', h('a', { href: '/setup' }, '/setup'), '.'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt($('#login-submit'), error, async () => {
      const answer = await api('POST', '/api/login', {
        user: $('#login-user').value.trim(),
        password: $('#login-password').value,
        totp: $('#login-totp').value.trim(),
      });
      location.href = answer.setup_pending ? '/setup' : '/';
    });
  });
  $('#app').replaceChildren(form);
  document.title = 'Log in · nonstop';
}

async function setupPage() {
  let me = null;
  try { me = await api('GET', '/api/me'); } catch (_) { /* no session yet */ }
  if (me) session.csrf = me.csrf;
  if (me && !me.setup_pending) { location.href = '/'; return; }
  const error = h('p', { class: 'error', id: 'error' });
  const box = h('div', { class: 'panel narrow' });
  $('#app').replaceChildren(box);
  document.title = 'Set up · nonstop';

  const totpStep = async () => {
    const enrolment = await api('POST', '/api/account/totp/begin');
    const form = h('form', { id: 'totp-form' },
      h('h2', {}, 'Two-factor login'),
      h('p', {}, 'Scan this code with your authenticator app, or type the secret into it.'),
      h('img', { class: 'qr', id: 'totp-qr', alt: 'TOTP QR code', src: `data:image/svg+xml;base64,${enrolment.qr_svg_base64}` }),
      h('p', {}, 'Secret: ', h('span', { class: 'secret', id: 'totp-secret' }, enrolment.secret)),
      h('label', {}, 'Code the app shows now', h('input', { id: 'totp-code', inputmode: 'numeric', maxlength: '6', required: true })),
      h('button', { class: 'primary', id: 'totp-confirm', type: 'submit' }, 'Confirm'),
      error);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      attempt($('#totp-confirm'), error, async () => {
        await api('POST', '/api/account/totp/confirm', { code: $('#totp-code').value.trim() });
        location.href = '/';
      });
    });
    box.replaceChildren(form);
  };

  const passwordStep = (withSecret) => {
    const form = h('form', { id: 'setup-form' },
      h('h2', {}, withSecret ? 'Set up the console' : 'Choose your password'),
      withSecret && h('p', {}, 'Enter the one-time secret the console printed when it started, and the admin password you want.'),
      withSecret && h('label', {}, 'One-time secret', h('input', { id: 'setup-secret', autocomplete: 'off', required: true })),
      h('label', {}, 'New password (12 characters or more)', h('input', { id: 'setup-password', type: 'password', autocomplete: 'new-password', required: true })),
      h('label', {}, 'Repeat it', h('input', { id: 'setup-password2', type: 'password', autocomplete: 'new-password', required: true })),
      h('button', { class: 'primary', id: 'setup-submit', type: 'submit' }, 'Continue'),
      error);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      attempt($('#setup-submit'), error, async () => {
        const password = $('#setup-password').value;
        if (password !== $('#setup-password2').value) throw new Error('the two passwords differ');
        if (!session.csrf) {
          const answer = await api('POST', '/api/setup', { secret: $('#setup-secret').value.trim() });
          session.csrf = answer.csrf;
        }
        await api('POST', '/api/account/password', { password });
        await totpStep();
      });
    });
    box.replaceChildren(form);
  };

  if (!me) passwordStep(true);
  else if (me.must_change_password) passwordStep(false);
  else await totpStep().catch((e) => { error.textContent = e.message; box.append(error); });
}

// ---- services ------------------------------------------------------------------------------

function nodesTable(service, status, withActions) {
  const head = ['Node', 'Address', 'Version', 'Process', 'Balancer', 'Weight', 'In flight', 'Health'];
  if (withActions) head.push('');
  return h('table', { class: 'nodes' },
    h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))),
    h('tbody', {}, status.nodes.map((n) => h('tr', { 'data-node': n.node },
      h('td', {}, h('strong', {}, n.node)),
      h('td', {}, `${n.address}:${n.port}`),
      h('td', { class: 'version' }, n.version || '-'),
      h('td', {}, badge(n.process)),
      h('td', { class: 'lb' }, badge(n.balancer || 'not a member', n.balancer || 'disabled')),
      h('td', {}, n.weight ?? '-'),
      h('td', {}, n.in_flight ?? '-'),
      h('td', {}, badge(n.health, n.health.split(':')[0])),
      withActions && h('td', { class: 'actions' }, nodeActions(service, status, n))))));
}

function nodeActions(service, status, node) {
  const out = [h('a', { href: `/services/${enc(service)}/nodes/${enc(node.node)}/log`, class: 'log-link' }, 'Log')];
  if (status.can.drain) {
    const set = (what) => {
      const button = h('button', { class: 'small', 'data-action': what, onclick: () => attempt(button, null, async () => {
        await api('POST', `/api/services/${enc(service)}/nodes/${enc(node.node)}/${what}`);
        refreshService();
      }) }, what === 'drain' ? 'Drain' : 'Enable');
      return button;
    };
    out.push(' ', node.balancer === 'active' ? set('drain') : set('enable'));
  }
  return out;
}

// Maintenance mode: a badge for everyone, the switch for those who may drain (deployers).
function maintenanceControl(service, status) {
  const m = status.maintenance;
  const state = m ? badge('maintenance on', 'warn') : badge('off', 'active');
  if (!status.can.drain) return h('div', { id: 'maintenance' }, h('span', {}, 'maintenance'), state);
  const button = h('button', { class: m ? 'small' : 'small danger', id: 'maintenance-button', type: 'button', onclick: () => attempt(button, null, async () => {
    let body = { on: false };
    if (!m) {
      const message = prompt(`Maintenance page text for ${service} (everyone but the allowed addresses gets 503):`, '');
      if (message === null) return;
      const allow = prompt('Addresses or networks that still reach the backends (comma separated, may be empty):', '');
      if (allow === null) return;
      body = { on: true, message, allow: allow.split(',').map((a) => a.trim()).filter(Boolean) };
    }
    await api('POST', `/api/services/${enc(service)}/maintenance`, body);
    refreshService();
  }) }, m ? 'Turn maintenance off' : 'Turn maintenance on');
  return h('div', { id: 'maintenance' }, h('span', {}, 'maintenance'), state, ' ', button,
    m && m.allow.length ? ` (allowed: ${m.allow.join(', ')})` : '');
}

function servicesPage() {
  const list = h('div', { class: 'services', id: 'services' });
  page('Services', list);
  every(2000, async () => {
    try {
      const { services } = await api('GET', '/api/services');
      if (!services.length) {
        list.replaceChildren(h('p', { class: 'muted' }, 'No services you may see. An admin grants them on the Users page.'));
        return;
      }
      list.replaceChildren(...services.map((s) => h('section', { class: 'panel service', 'data-service': s.service },
        h('h2', {}, h('a', { href: `/services/${enc(s.service)}` }, s.service), ' ',
          s.running ? badge(`${s.running.kind} running`, 'warn') : null),
        h('div', { class: 'kv' },
          h('div', {}, h('span', {}, 'running'), s.current || 'nothing'),
          h('div', {}, h('span', {}, 'previous'), s.previous || '-'),
          h('div', {}, h('span', {}, 'strategy'), s.strategy),
          s.balancer_error && h('div', { class: 'error' }, h('span', {}, 'balancer'), s.balancer_error)),
        nodesTable(s.service, s, false))));
    } catch (e) {
      list.replaceChildren(h('p', { class: 'error' }, e.message));
    }
  });
}

let refreshService = () => {};

function servicePage(service) {
  const summary = h('div', { class: 'kv', id: 'summary' });
  const nodes = h('div', { id: 'nodes' });
  const actions = h('section', { class: 'panel', id: 'actions' });
  const progress = h('section', { class: 'panel hidden', id: 'progress' },
    h('h2', {}, 'Progress ', h('span', { id: 'progress-status' })),
    h('ol', { class: 'steps', id: 'progress-steps' }));
  const history = h('section', { class: 'panel', id: 'history' });
  const canary = h('section', { class: 'panel hidden', id: 'canary' });
  page(service, h('section', { class: 'panel' }, summary, nodes), canary, actions, progress, history);
  let lastStatus = null;
  canaryPanel(service, canary, () => Boolean(lastStatus && lastStatus.can.deploy));

  let following = null;
  let actionsBuilt = false;

  const follow = (job) => {
    if (following === job) return;
    following = job;
    progress.classList.remove('hidden');
    const steps = $('#progress-steps');
    steps.replaceChildren();
    $('#progress-status').replaceChildren(badge('running', 'warn'));
    const source = new EventSource(`/api/services/${enc(service)}/jobs/${job}/events`);
    source.addEventListener('job', (message) => {
      const event = JSON.parse(message.data);
      steps.append(h('li', { class: event.kind, 'data-kind': event.kind },
        h('span', { class: 'at' }, clock(event.at_ms)), event.node ? `[${event.node}] ` : '', event.message));
      if (event.kind === 'finished') {
        source.close();
        const outcome = event.message.split(':')[0];
        $('#progress-status').replaceChildren(badge(outcome));
        if (outcome === 'refused' && event.message.includes('--force-past-migration')) offerForcedRollback();
        loadHistory();
      }
    });
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) following = null; };
  };

  // A rollback refused past a migration that cannot be undone: a second, confirmed (and audited)
  // request may force it.
  const offerForcedRollback = () => {
    const error = h('p', { class: 'error' });
    const force = h('button', { class: 'danger', id: 'rollback-force', type: 'button', onclick: () => attempt(force, error, async () => {
      if (!confirm(`The current release of ${service} ran a database migration that cannot be undone. Roll back anyway? The previous release then runs on the migrated database.`)) return;
      const answer = await api('POST', `/api/services/${enc(service)}/rollback`, { force_past_migration: true });
      follow(answer.job);
    }) }, 'Roll back past the migration anyway');
    $('#progress-steps').append(h('li', { class: 'warn' }, force, error));
  };

  const buildActions = async (status) => {
    actionsBuilt = true;
    const error = h('p', { class: 'error', id: 'action-error' });
    const parts = [h('h2', {}, 'Deploy')];
    if (status.can.deploy) {
      let offer = { artifacts: [], drop_dir: false, upload_limit: 0 };
      try { offer = await api('GET', '/api/artifacts'); } catch (_) { /* upload only */ }
      const pick = h('select', { id: 'deploy-artifact' },
        h('option', { value: '' }, offer.drop_dir ? '— choose an artifact —' : '(no drop directory)'),
        offer.artifacts.map((a) => h('option', { value: a.name }, `${a.name} (${a.bytes} bytes)`)));
      const file = h('input', { type: 'file', id: 'deploy-file' });
      const version = h('input', { id: 'deploy-version', placeholder: 'default: checksum' });
      const strategy = h('select', { id: 'deploy-strategy' },
        h('option', { value: '' }, `service default (${status.strategy})`),
        ['blue-green', 'rolling', 'canary'].map((s) => h('option', { value: s }, s)));
      const pause = h('input', { type: 'checkbox', id: 'deploy-pause' });
      const deploy = h('button', { class: 'primary', id: 'deploy-button', type: 'button', onclick: () => attempt(deploy, error, async () => {
        let answer;
        if (file.files.length) {
          const form = new FormData();
          form.append('artifact', file.files[0]);
          if (version.value.trim()) form.append('version', version.value.trim());
          if (strategy.value) form.append('strategy', strategy.value);
          if (pause.checked) form.append('pause_before_switch', 'true');
          answer = await api('POST', `/api/services/${enc(service)}/deploy`, form);
        } else {
          if (!pick.value) throw new Error('choose an artifact or upload one');
          answer = await api('POST', `/api/services/${enc(service)}/deploy`, {
            artifact: pick.value, version: version.value.trim() || null, strategy: strategy.value || null,
            pause_before_switch: pause.checked,
          });
        }
        follow(answer.job);
      }) }, 'Deploy');
      parts.push(h('div', { class: 'row' },
        h('label', {}, 'Artifact from the drop directory', pick),
        h('label', {}, `…or upload (up to ${Math.round(offer.upload_limit / 1048576)} MiB)`, file),
        h('label', {}, 'Version', version),
        h('label', {}, 'Strategy', strategy),
        h('label', { class: 'check' }, pause, ' pause before the switch'),
        h('label', {}, ' ', deploy)));
    }
    if (status.can.rollback) {
      const rollback = h('button', { class: 'danger', id: 'rollback-button', type: 'button', onclick: () => attempt(rollback, error, async () => {
        if (!confirm(`Roll ${service} back to its previous release?`)) return;
        const answer = await api('POST', `/api/services/${enc(service)}/rollback`);
        follow(answer.job);
      }) }, 'Roll back to the previous release');
      parts.push(h('div', { class: 'row' }, rollback));
    }
    if (!status.can.deploy && !status.can.rollback) {
      parts.push(h('p', { class: 'muted', id: 'read-only' }, 'You can watch this service; deploying is for its deployers.'));
    }
    parts.push(error);
    actions.replaceChildren(...parts);
  };

  const loadHistory = async () => {
    try {
      const { deployments } = await api('GET', `/api/services/${enc(service)}/deploys?limit=20`);
      history.replaceChildren(h('h2', {}, 'History'), h('table', {},
        h('thead', {}, h('tr', {}, ['#', 'Started', 'Kind', 'Version', 'Strategy', 'Outcome', 'Took', 'By', 'Reason'].map((t) => h('th', {}, t)))),
        h('tbody', {}, deployments.map((d) => h('tr', {},
          h('td', {}, h('a', { href: `/services/${enc(service)}/deploys/${d.id}` }, `#${d.id}`)),
          h('td', {}, time(d.started_ms)),
          h('td', {}, d.kind),
          h('td', {}, `${d.from_version || '-'} → ${d.version}`),
          h('td', {}, d.strategy),
          h('td', {}, badge(d.outcome)),
          h('td', {}, d.finished_ms ? `${((d.finished_ms - d.started_ms) / 1000).toFixed(1)} s` : '-'),
          h('td', {}, d.holder),
          h('td', {}, d.reason || ''))))));
    } catch (e) {
      history.replaceChildren(h('p', { class: 'error' }, e.message));
    }
  };

  refreshService = async () => {
    try {
      const status = await api('GET', `/api/services/${enc(service)}`);
      lastStatus = status;
      summary.replaceChildren(...[
        h('div', {}, h('span', {}, 'running'), h('strong', { id: 'current-version' }, status.current || 'nothing')),
        h('div', {}, h('span', {}, 'previous'), status.previous || '-'),
        h('div', {}, h('span', {}, 'strategy'), status.strategy),
        status.unfinished && h('div', { class: 'error' }, h('span', {}, 'unfinished'), status.unfinished),
        status.balancer_error && h('div', { class: 'error' }, h('span', {}, 'balancer'), status.balancer_error),
        maintenanceControl(service, status),
      ].filter(Boolean));
      nodes.replaceChildren(nodesTable(service, status, true));
      if (!actionsBuilt) await buildActions(status);
      if (status.running) follow(status.running.id);
    } catch (e) {
      summary.replaceChildren(h('p', { class: 'error' }, e.message));
    }
  };
  every(2000, refreshService);
  loadHistory();
}

async function deployPage(service, id) {
  page(`${service} · deploy #${id}`, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const { deployment: d, steps } = await api('GET', `/api/services/${enc(service)}/deploys/${id}`);
    page(`${service} · deploy #${id}`,
      h('section', { class: 'panel' }, h('div', { class: 'kv' },
        h('div', {}, h('span', {}, 'kind'), d.kind),
        h('div', {}, h('span', {}, 'version'), `${d.from_version || '-'} → ${d.version}`),
        h('div', {}, h('span', {}, 'outcome'), badge(d.outcome)),
        h('div', {}, h('span', {}, 'started'), time(d.started_ms)),
        h('div', {}, h('span', {}, 'by'), d.holder)),
        d.reason && h('p', {}, d.reason)),
      h('section', { class: 'panel' }, h('h2', {}, 'Steps'), h('table', { id: 'journal' },
        h('thead', {}, h('tr', {}, ['At', 'Step', 'Detail', 'Took'].map((t) => h('th', {}, t)))),
        h('tbody', {}, steps.map((s) => h('tr', {},
          h('td', {}, clock(s.at_ms)), h('td', {}, s.step), h('td', {}, s.detail),
          h('td', {}, s.took_ms === null ? '-' : `${s.took_ms} ms`)))))),
      h('p', {}, h('a', { href: `/services/${enc(service)}` }, `← ${service}`)));
  } catch (e) {
    page(`${service} · deploy #${id}`, h('p', { class: 'error' }, e.message));
  }
}

function logPage(service, node) {
  const filter = h('input', { id: 'log-filter', placeholder: 'show only lines containing…' });
  const pause = h('button', { id: 'log-pause', type: 'button' }, 'Pause');
  const followBox = h('input', { id: 'log-follow', type: 'checkbox', checked: true });
  const pending = h('span', { class: 'muted', id: 'log-pending' });
  const view = h('div', { class: 'log', id: 'log-lines' });
  page(`${service} · ${node} · log`,
    h('div', { class: 'row panel' },
      h('label', {}, 'Search', filter), pause,
      h('label', {}, h('span', {}, 'Follow (scroll to the end)'), followBox), pending),
    view);
  const lines = [];
  let paused = false;
  let waiting = 0;
  const matches = (line) => !filter.value || line.text.toLowerCase().includes(filter.value.toLowerCase());
  const show = (line) => view.append(h('div', { class: line.kind === 'file' ? 'file' : 'line' }, line.text));
  const scroll = () => { if (followBox.checked) view.scrollTop = view.scrollHeight; };
  const render = () => {
    view.replaceChildren();
    lines.filter(matches).forEach(show);
    scroll();
  };
  filter.addEventListener('input', render);
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { waiting = 0; pending.textContent = ''; render(); }
  });
  const source = new EventSource(`/api/services/${enc(service)}/nodes/${enc(node)}/log?lines=200`);
  const add = (kind, text) => {
    const line = { kind, text: kind === 'file' ? `==> ${text} <==` : text };
    lines.push(line);
    if (lines.length > 5000) lines.shift();
    if (paused) { waiting += 1; pending.textContent = `${waiting} new lines while paused`; return; }
    if (matches(line)) { show(line); scroll(); }
  };
  source.addEventListener('file', (m) => add('file', m.data));
  source.addEventListener('line', (m) => add('line', m.data));
}

// ---- audit, users, agents ------------------------------------------------------------------

function auditPage() {
  const service = h('input', { id: 'audit-service', placeholder: 'service' });
  const actor = h('input', { id: 'audit-actor', placeholder: 'actor' });
  const query = () => `service=${enc(service.value.trim())}&actor=${enc(actor.value.trim())}`;
  const csv = h('a', { id: 'export-csv', href: '/api/audit/export.csv', download: 'nonstop-audit.csv' }, 'Export CSV');
  const json = h('a', { id: 'export-json', href: '/api/audit/export.json', download: 'nonstop-audit.json' }, 'Export JSON');
  const table = h('div', { id: 'audit' });
  page('Audit log', h('div', { class: 'row panel' },
    h('label', {}, 'Service', service), h('label', {}, 'Actor', actor), csv, json), h('section', { class: 'panel' }, table));
  const load = async () => {
    csv.href = `/api/audit/export.csv?${query()}`;
    json.href = `/api/audit/export.json?${query()}`;
    try {
      const { records } = await api('GET', `/api/audit?limit=300&${query()}`);
      table.replaceChildren(h('table', {},
        h('thead', {}, h('tr', {}, ['When', 'Who', 'From', 'Action', 'Service', 'Node', 'Outcome', 'Detail'].map((t) => h('th', {}, t)))),
        h('tbody', {}, records.map((r) => h('tr', { 'data-action': r.action },
          h('td', {}, time(r.at_ms)), h('td', {}, r.actor), h('td', {}, r.peer), h('td', {}, r.action),
          h('td', {}, r.service || ''), h('td', {}, r.node || ''), h('td', {}, badge(r.outcome)), h('td', {}, r.detail))))));
    } catch (e) {
      table.replaceChildren(h('p', { class: 'error' }, e.message));
    }
  };
  service.addEventListener('change', load);
  actor.addEventListener('change', load);
  every(3000, load);
}

function usersPage() {
  const error = h('p', { class: 'error', id: 'users-error' });
  const list = h('div', { id: 'users' });
  const secret = h('div', { id: 'token-created' });
  const name = h('input', { id: 'new-user-name', placeholder: 'name' });
  const password = h('input', { id: 'new-user-password', type: 'password', placeholder: 'initial password', autocomplete: 'new-password' });
  const role = h('select', { id: 'new-user-role' }, ['viewer', 'deployer', 'admin'].map((r) => h('option', { value: r }, r)));
  const create = h('button', { class: 'primary', id: 'new-user-create', type: 'button', onclick: () => attempt(create, error, async () => {
    await api('POST', '/api/users', { name: name.value.trim(), password: password.value, role: role.value });
    name.value = ''; password.value = '';
    load();
  }) }, 'Create user');
  page('Users and roles',
    h('section', { class: 'panel' }, h('h2', {}, 'New user'),
      h('p', { class: 'muted' }, 'They log in with this password once and then enrol TOTP.'),
      h('div', { class: 'row' }, name, password, role, create), error),
    secret,
    h('section', { class: 'panel' }, list));

  const load = async () => {
    const { users, services } = await api('GET', '/api/users');
    list.replaceChildren(h('table', {},
      h('thead', {}, h('tr', {}, ['User', 'Role', 'Service roles', 'API tokens'].map((t) => h('th', {}, t)))),
      h('tbody', {}, users.map((u) => userRow(u, services)))));
  };

  const userRow = (u, services) => {
    const act = (button, fn) => attempt(button, error, async () => { await fn(); await load(); });
    const roleSelect = h('select', { 'data-user': u.name, class: 'user-role' },
      ['viewer', 'deployer', 'admin'].map((r) => h('option', { value: r, selected: r === u.role }, r)));
    roleSelect.addEventListener('change', () => act(null, () => api('POST', `/api/users/${enc(u.name)}/role`, { role: roleSelect.value })));
    const grantService = h('select', {}, services.map((s) => h('option', { value: s }, s)));
    const grantRole = h('select', {}, ['viewer', 'deployer'].map((r) => h('option', { value: r }, r)));
    const grant = h('button', { class: 'small', type: 'button', onclick: () => act(grant, () =>
      api('POST', `/api/users/${enc(u.name)}/grants`, { service: grantService.value, role: grantRole.value })) }, 'Grant');
    const tokenName = h('input', { placeholder: 'token name', class: 'token-name' });
    const tokenServices = h('select', { multiple: true, class: 'token-services' }, services.map((s) => h('option', { value: s }, s)));
    const makeToken = h('button', { class: 'small', type: 'button', onclick: () => act(makeToken, async () => {
      const chosen = [...tokenServices.selectedOptions].map((o) => o.value);
      const t = await api('POST', `/api/users/${enc(u.name)}/tokens`, { name: tokenName.value.trim(), services: chosen });
      secret.replaceChildren(h('section', { class: 'panel' }, h('h2', {}, `Token ${t.owner}/${t.name}`),
        h('p', {}, 'Copy it now; it is not shown again. Send it as ', h('code', {}, 'Authorization: Bearer …'), '.'),
        h('p', { class: 'secret', id: 'token-secret' }, t.token)));
    }) }, 'Create token');
    const remove = h('button', { class: 'small danger', type: 'button', onclick: () => {
      if (confirm(`Delete user ${u.name}?`)) act(remove, () => api('DELETE', `/api/users/${enc(u.name)}`));
    } }, 'Delete');
    return h('tr', { 'data-user': u.name },
      h('td', {}, h('strong', {}, u.name), u.setup_pending ? h('div', { class: 'muted' }, 'setup pending') : null,
        u.name !== session.me.user ? remove : null),
      h('td', {}, u.name === session.me.user ? u.role : roleSelect),
      h('td', {}, u.role === 'admin' ? h('span', { class: 'muted' }, 'all services') : [
        ...u.grants.map((g) => {
          const revoke = h('button', { class: 'small', type: 'button', onclick: () => act(revoke, () =>
            api('DELETE', `/api/users/${enc(u.name)}/grants/${enc(g.service)}`)) }, '×');
          return h('div', {}, `${g.service}: ${g.role} `, revoke);
        }),
        h('div', { class: 'row' }, grantService, grantRole, grant)]),
      h('td', {},
        ...u.tokens.map((t) => {
          const revoke = h('button', { class: 'small', type: 'button', onclick: () => act(revoke, () =>
            api('DELETE', `/api/users/${enc(u.name)}/tokens/${enc(t.name)}`)) }, 'Revoke');
          return h('div', {}, `${t.name} (${t.services.join(', ')}; until ${new Date(t.expires_ms).toLocaleDateString()}) `, revoke);
        }),
        h('div', { class: 'row' }, tokenName, tokenServices, makeToken)));
  };
  load().catch((e) => { error.textContent = e.message; });
}

function agentsPage() {
  const error = h('p', { class: 'error' });
  const name = h('input', { id: 'agent-name', placeholder: 'host name, as in [hosts.NAME]' });
  const issued = h('div', { id: 'agent-issued' });
  const info = h('div', { id: 'agents-info' });
  const issue = h('button', { class: 'primary', id: 'agent-issue', type: 'button', onclick: () => attempt(issue, error, async () => {
    const t = await api('POST', '/api/agents/tokens', { name: name.value.trim() });
    issued.replaceChildren(
      h('p', {}, `One-time join token for ${t.name}, valid until ${time(t.expires_ms)}. Run this on the host:`),
      h('p', { class: 'secret', id: 'agent-command' }, t.command));
    load();
  }) }, 'Issue join token');
  page('Agents',
    h('section', { class: 'panel' }, h('h2', {}, 'Enrol a host'),
      h('div', { class: 'row' }, name, issue), error, issued),
    h('section', { class: 'panel' }, info));
  const load = async () => {
    const a = await api('GET', '/api/agents');
    info.replaceChildren(
      h('p', {}, 'Console CA sha256 (agents pin it): ', h('code', { id: 'ca-sha256' }, a.ca_sha256)),
      h('h2', {}, 'Hosts in the config'),
      a.hosts.length ? h('ul', {}, a.hosts.map((x) => h('li', {}, `${x.name} — agent at ${x.agent}`))) : h('p', { class: 'muted' }, 'none'),
      h('h2', {}, 'Join tokens and joins'),
      h('table', {}, h('tbody', {}, a.events.map((r) => h('tr', {},
        h('td', {}, time(r.at_ms)), h('td', {}, r.actor), h('td', {}, r.action), h('td', {}, badge(r.outcome)), h('td', {}, r.detail))))));
  };
  load().catch((e) => { error.textContent = e.message; });
}

// ---- routing -------------------------------------------------------------------------------

const pages = [
  [/^\/$/, servicesPage],
  [/^\/services\/([^/]+)$/, servicePage],
  [/^\/services\/([^/]+)\/deploys\/(\d+)$/, deployPage],
  [/^\/services\/([^/]+)\/nodes\/([^/]+)\/log$/, logPage],
  [/^\/audit$/, auditPage],
  [/^\/users$/, usersPage],
  [/^\/agents$/, agentsPage],
];

async function main() {
  const path = location.pathname;
  if (path === '/login') { loginPage(); return; }
  if (path === '/setup') { await setupPage(); return; }
  try {
    session.me = await api('GET', '/api/me');
  } catch (e) {
    location.href = '/login';
    return;
  }
  session.csrf = session.me.csrf;
  if (session.me.setup_pending) { location.href = '/setup'; return; }
  layout();
  for (const [pattern, render] of pages) {
    const match = path.match(pattern);
    if (match) { render(...match.slice(1).map(decodeURIComponent)); return; }
  }
  page('Not found', h('p', {}, 'There is no such page. ', h('a', { href: '/' }, 'Services')));
}

main();
