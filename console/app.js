// The console: sign in with a root key, list keys, create one (its secret
// shown once), revoke one, and look at a key's usage.

import * as api from './api.js';
import { closeModal, openModal } from './dialogs.js';
import { formatDay, formatDayAndTime, parseTimestamp, plural, timeAgo } from './format.js';
import { renderUsage } from './usage_chart.js';

const PAGE_SIZE = 50;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** What the list shows; rebuilt from the server whenever a filter changes. */
const list = {
  ownerId: '',
  includeRevoked: false,
  keys: [],
  nextPageToken: '',
  /** Bumped per reload, so a slow answer to an older filter is dropped. */
  generation: 0,
};

let catalogue = [];

// ---------------------------------------------------------------- sign in

function showSignedIn(signedIn) {
  $('sign-in-view').hidden = signedIn;
  $('keys-view').hidden = !signedIn;
  $('sign-out').hidden = !signedIn;
}

async function onSignIn(event) {
  event.preventDefault();
  const input = $('root-key');
  const error = $('root-key-error');
  const key = input.value.trim();
  error.textContent = '';
  input.removeAttribute('aria-invalid');
  if (key === '') {
    fail('Enter a root key.');
    return;
  }
  const button = event.submitter ?? $('sign-in-form').querySelector('button');
  button.disabled = true;
  api.signIn(key);
  try {
    await reloadKeys();
    input.value = '';
    showSignedIn(true);
    $('keys-heading').focus();
  } catch (e) {
    api.signOut();
    if (e.code === 'unauthenticated') {
      fail('Wrong root key: apikeyd does not know this key. Check it and try again.');
    } else if (e.code === 'permission_denied') {
      fail('This root key may not read keys: it needs the keys:read permission.');
    } else {
      fail(e.message);
    }
  } finally {
    button.disabled = false;
  }

  function fail(message) {
    error.textContent = message;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

/** Forgets the root key and everything shown with it. */
function signOut(message = '') {
  api.signOut();
  list.generation += 1;
  list.keys = [];
  list.nextPageToken = '';
  $('key-list').replaceChildren();
  $('list-status').textContent = '';
  $('owner-filter').value = '';
  $('show-revoked').checked = false;
  list.ownerId = '';
  list.includeRevoked = false;
  for (const dialog of document.querySelectorAll('dialog[open]')) closeModal(dialog);
  showSignedIn(false);
  $('root-key-error').textContent = message;
  $('root-key').focus();
}

/** Runs an API call; a root key the server no longer accepts signs the tab out. */
async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    if (e.code === 'unauthenticated' && api.signedIn()) {
      signOut('apikeyd no longer accepts this root key. Sign in again.');
    }
    throw e;
  }
}

// ---------------------------------------------------------------- the list

async function reloadKeys() {
  const generation = ++list.generation;
  $('list-status').textContent = 'Loading keys…';
  const page = await api.listKeys({
    ownerId: list.ownerId,
    includeRevoked: list.includeRevoked,
    pageSize: PAGE_SIZE,
  });
  if (generation !== list.generation) return;
  list.keys = page.apiKeys;
  list.nextPageToken = page.nextPageToken;
  $('key-list').replaceChildren(...list.keys.map(keyItem));
  showListState();
}

async function loadMore() {
  const button = $('load-more');
  const generation = list.generation;
  button.disabled = true;
  try {
    const page = await guarded(() => api.listKeys({
      ownerId: list.ownerId,
      includeRevoked: list.includeRevoked,
      pageSize: PAGE_SIZE,
      pageToken: list.nextPageToken,
    }));
    if (generation !== list.generation) return;
    list.keys.push(...page.apiKeys);
    list.nextPageToken = page.nextPageToken;
    const items = page.apiKeys.map(keyItem);
    $('key-list').append(...items);
    showListState();
    if (!list.nextPageToken) items[0]?.querySelector('.key-name')?.focus();
  } catch (e) {
    toast(e.message, 'error');
  } finally {
    button.disabled = false;
  }
}

function showListState() {
  const more = list.nextPageToken !== '';
  $('load-more').hidden = !more;
  const count = list.keys.length;
  const status = $('list-status');
  if (count === 0) {
    status.textContent = list.ownerId
      ? `No keys for owner “${list.ownerId}”.`
      : 'No keys yet. Create one to get started.';
  } else {
    const owner = list.ownerId ? ` of owner “${list.ownerId}”` : '';
    status.textContent = `${more ? 'First ' : ''}${plural(count, 'key')}${owner}${more ? ' shown' : ''}`;
  }
  status.classList.toggle('empty', count === 0);
}

function isRevoked(key, now = new Date()) {
  const revokedAt = parseTimestamp(key.revokedAt);
  return revokedAt !== null && revokedAt <= now;
}

function environmentName(key) {
  return key.environment === 'ENVIRONMENT_TEST' ? 'test' : 'live';
}

function keyItem(key) {
  const now = new Date();
  const created = parseTimestamp(key.createdAt);
  const expires = parseTimestamp(key.expiresAt);
  const lastUsed = parseTimestamp(key.lastUsedAt);
  const revokedAt = parseTimestamp(key.revokedAt);
  const revoked = isRevoked(key, now);
  const expired = expires !== null && expires <= now;
  const env = environmentName(key);

  const badges = [el('span', { class: `badge env ${env}` }, env)];
  if (revoked) badges.push(el('span', { class: 'badge state revoked' }, 'Revoked'));
  else if (revokedAt) badges.push(el('span', { class: 'badge state rotating', title: formatDayAndTime(revokedAt) }, 'Rotating'));
  if (!revoked && expired) badges.push(el('span', { class: 'badge state expired' }, 'Expired'));
  // proto3 JSON leaves out fields at their default: no `enabled` means false.
  if (!revoked && !key.enabled) badges.push(el('span', { class: 'badge state disabled' }, 'Disabled'));

  const dates = [
    el('span', {}, 'Created ', timeEl(created, formatDay(created))),
    expires === null
      ? el('span', {}, 'Never expires')
      : el('span', {}, expired ? 'Expired ' : 'Expires ', timeEl(expires, formatDay(expires))),
  ];
  if (revoked) dates.push(el('span', {}, 'Revoked ', timeEl(revokedAt, formatDay(revokedAt))));

  const usageId = `usage-${key.id}`;
  const usageButton = el('button', {
    type: 'button',
    class: 'button ghost small',
    'aria-expanded': 'false',
    'aria-controls': usageId,
    'aria-label': `Usage of ${key.name}`,
  }, chartIcon(), 'Usage');
  const usagePanel = el('div', { id: usageId, class: 'usage-panel', hidden: '' });
  usageButton.addEventListener('click', () => toggleUsage(key, usageButton, usagePanel));

  const actions = el('div', { class: 'key-actions' }, usageButton);
  if (!revoked) {
    const revoke = el('button', {
      type: 'button',
      class: 'button danger-ghost small',
      'aria-label': `Revoke ${key.name}`,
    }, 'Revoke');
    revoke.addEventListener('click', () => askRevoke(key));
    actions.append(revoke);
  }

  return el('li', { class: `key${revoked ? ' is-revoked' : ''}`, 'data-key-id': key.id },
    el('div', { class: 'key-main' },
      el('div', { class: 'key-title' },
        el('h2', { class: 'key-name', tabindex: '-1' }, key.name),
        ...badges),
      el('p', { class: 'key-ident' },
        el('code', { class: 'prefix' }, `${key.prefix}…`),
        el('span', { class: 'owner' }, el('span', { class: 'muted' }, 'Owner '), key.ownerId)),
      el('ul', { class: 'scopes', 'aria-label': 'Scopes' },
        ...(key.scopes ?? []).map((scope) => el('li', { class: 'badge scope' }, scope))),
      el('p', { class: 'key-dates muted' }, ...dates,
        lastUsed
          ? el('span', { class: 'last-used', title: formatDayAndTime(lastUsed) }, `Last used: ${timeAgo(lastUsed, now)}`)
          : el('span', { class: 'last-used never' }, 'Never used'))),
    actions,
    usagePanel);
}

function timeEl(date, text) {
  return el('time', { datetime: date.toISOString(), title: formatDayAndTime(date) }, text);
}

function chartIcon() {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 20 20');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const [x, h] of [[3, 6], [8.5, 11], [14, 8]]) {
    const bar = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    for (const [name, value] of Object.entries({ x, y: 17 - h, width: 3, height: h, rx: 1 })) {
      bar.setAttribute(name, String(value));
    }
    svg.append(bar);
  }
  return svg;
}

let ownerTimer = 0;

function onOwnerInput() {
  clearTimeout(ownerTimer);
  ownerTimer = setTimeout(() => applyFilters(), 300);
}

function applyFilters() {
  clearTimeout(ownerTimer);
  const ownerId = $('owner-filter').value.trim();
  const includeRevoked = $('show-revoked').checked;
  if (ownerId === list.ownerId && includeRevoked === list.includeRevoked) return;
  list.ownerId = ownerId;
  list.includeRevoked = includeRevoked;
  guarded(reloadKeys).catch((e) => {
    $('list-status').textContent = e.message;
  });
}

// ---------------------------------------------------------------- usage

async function toggleUsage(key, button, panel) {
  const opening = button.getAttribute('aria-expanded') !== 'true';
  button.setAttribute('aria-expanded', String(opening));
  panel.hidden = !opening;
  if (!opening) {
    panel.stopDrawing?.();
    panel.replaceChildren();
    return;
  }
  const body = el('div', { class: 'usage-body' });
  const ranges = [['hours', 'Last 24 hours'], ['days', 'Last 30 days']].map(([range, label]) => {
    const choice = el('button', { type: 'button', class: 'segment', 'aria-pressed': String(range === 'hours') }, label);
    choice.addEventListener('click', () => {
      for (const other of ranges) other.setAttribute('aria-pressed', String(other === choice));
      showUsage(key, range, body, panel);
    });
    return choice;
  });
  panel.replaceChildren(
    el('div', { class: 'usage-head' },
      el('h3', {}, 'Usage'),
      el('div', { class: 'segments', role: 'group', 'aria-label': 'Range' }, ...ranges)),
    body);
  await showUsage(key, 'hours', body, panel);
}

async function showUsage(key, range, body, panel) {
  panel.stopDrawing?.();
  body.replaceChildren(el('p', { class: 'muted', role: 'status' }, 'Loading usage…'));
  try {
    const buckets = await guarded(() => api.keyUsage(key.id, range));
    if (panel.hidden) return;
    panel.stopDrawing = renderUsage(body, buckets, range);
  } catch (e) {
    body.replaceChildren(el('p', { class: 'form-error', role: 'alert' }, e.message));
  }
}

// ---------------------------------------------------------------- create

const FIELD_INPUTS = {
  name: 'create-name',
  owner_id: 'create-owner',
  ownerId: 'create-owner',
  scopes: 'create-other-scopes',
  expires_in_days: 'create-expires',
  expiresInDays: 'create-expires',
  environment: 'create-environment',
};

const FIELD_ERRORS = {
  'create-name': 'create-name-error',
  'create-owner': 'create-owner-error',
  'create-other-scopes': 'create-scopes-error',
  'create-expires': 'create-expires-error',
  'create-environment': 'create-environment-error',
};

function fillScopeChoices() {
  $('scope-choices').replaceChildren(...catalogue.map((scope) => el('label', { class: 'check scope-choice' },
    el('input', { type: 'checkbox', value: scope, name: 'scope' }),
    el('span', { class: 'mono' }, scope))));
  $('scope-choices').hidden = catalogue.length === 0;
}

function clearCreateErrors() {
  for (const [inputId, errorId] of Object.entries(FIELD_ERRORS)) {
    $(inputId).removeAttribute('aria-invalid');
    $(errorId).textContent = '';
  }
  $('create-error').textContent = '';
}

function showFieldError(inputId, message) {
  $(inputId).setAttribute('aria-invalid', 'true');
  $(FIELD_ERRORS[inputId]).replaceChildren(...withCode(message));
}

/** The server's messages quote syntax in `backticks`: shown as code. */
function withCode(message) {
  return message.split('`').map((part, i) => (i % 2 === 1 ? el('code', {}, part) : part));
}

function openCreate() {
  $('create-form').reset();
  clearCreateErrors();
  if (list.ownerId) $('create-owner').value = list.ownerId;
  openModal($('create-dialog'), { initialFocus: $('create-name') });
}

function chosenScopes() {
  const checked = [...$('scope-choices').querySelectorAll('input:checked')].map((box) => box.value);
  const typed = $('create-other-scopes').value.split(/[\s,]+/).filter(Boolean);
  return [...new Set([...checked, ...typed])];
}

/** The first sentence in upper case: "must be ..." → "Must be ...". */
const sentence = (text) => text.charAt(0).toUpperCase() + text.slice(1);

async function onCreate(event) {
  event.preventDefault();
  clearCreateErrors();
  const name = $('create-name').value;
  const ownerId = $('create-owner').value.trim();
  const scopes = chosenScopes();
  const problems = [];
  if (name.trim() === '') problems.push(['create-name', 'Give the key a name, e.g. “Production integration”.']);
  if (ownerId === '') problems.push(['create-owner', 'Say whose key this is, e.g. a user or tenant id.']);
  if (scopes.length === 0) problems.push(['create-other-scopes', 'Choose at least one scope, or type one.']);
  if (problems.length > 0) {
    for (const [inputId, message] of problems) showFieldError(inputId, message);
    $(problems[0][0]).focus();
    return;
  }
  const request = { name, ownerId, scopes, environment: $('create-environment').value };
  const expires = $('create-expires').value;
  if (expires !== 'never') request.expiresInDays = Number(expires);

  const submit = $('create-submit');
  submit.disabled = true;
  let created;
  try {
    created = await guarded(() => api.createKey(request));
  } catch (e) {
    showCreateError(e);
    return;
  } finally {
    submit.disabled = false;
  }
  closeModal($('create-dialog'));
  showSecretOnce(created.key, created.apiKey);
  created = null;
  guarded(reloadKeys).catch((e) => toast(e.message, 'error'));
}

function showCreateError(e) {
  const field = e.field;
  const inputId = field ? FIELD_INPUTS[field.name] : e.code === 'resource_exhausted' ? 'create-owner' : null;
  if (inputId) {
    showFieldError(inputId, sentence(field ? field.reason : e.message));
    $(inputId).focus();
  } else if (e.code === 'permission_denied') {
    $('create-error').textContent = 'This root key may not create keys: it needs the keys:write permission.';
  } else if (!api.signedIn()) {
    // Signed out by `guarded`; the sign-in form says why.
  } else {
    $('create-error').replaceChildren(...withCode(e.message));
  }
}

/**
 * The one-time display. The dialog is built for this key and removed when
 * closed, so the secret is then in neither the page nor any variable.
 */
function showSecretOnce(secret, apiKey) {
  const field = el('textarea', {
    id: 'secret-value',
    class: 'mono secret-value',
    readonly: '',
    rows: '3',
    spellcheck: 'false',
    autocomplete: 'off',
    'aria-describedby': 'secret-warning',
  });
  field.value = secret;
  const copy = el('button', { type: 'button', class: 'button secondary copy' }, 'Copy');
  const copied = el('span', { class: 'visually-hidden', role: 'status' });
  const done = el('button', { type: 'button', class: 'button primary' }, 'Done');
  const dialog = el('dialog', { class: 'modal narrow secret', 'aria-labelledby': 'secret-title' },
    el('div', { class: 'modal-head' },
      el('div', { class: 'secret-title' }, warningIcon(), el('h2', { id: 'secret-title' }, 'Store this key securely'))),
    el('div', { class: 'modal-body' },
      el('p', {}, 'Your new key ', el('strong', {}, apiKey?.name ?? ''),
        ' is ready. Copy it into your secret store now.'),
      el('label', { for: 'secret-value', class: 'sub-label' }, 'API key'),
      el('div', { class: 'secret-field' }, field, copy),
      el('p', { id: 'secret-warning', class: 'warning' }, 'This key will not be shown again.'),
      copied),
    el('div', { class: 'modal-foot' }, done));

  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(field.value);
      copy.textContent = 'Copied';
      copy.classList.add('is-copied');
      copied.textContent = 'Copied';
    } catch {
      field.focus();
      field.select();
      copied.textContent = 'Copying is blocked here: the key is selected, press Ctrl+C (⌘C on a Mac).';
    }
  });
  done.addEventListener('click', () => closeModal(dialog));
  document.body.append(dialog);
  openModal(dialog, {
    initialFocus: copy,
    fallbackFocus: $('create-open'),
    onClose: () => {
      field.value = '';
      dialog.remove();
    },
  });
}

function warningIcon() {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'warning-icon');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', 'M12 3 2 21h20L12 3Zm0 6v5m0 3v.5');
  svg.append(path);
  return svg;
}

// ---------------------------------------------------------------- revoke

let revoking = null;

function askRevoke(key) {
  revoking = key;
  $('revoke-title').textContent = `Revoke “${key.name}”?`;
  $('revoke-description').replaceChildren(
    'Every service presenting ', el('code', {}, `${key.prefix}…`),
    ' will be refused from now on. This cannot be undone.');
  $('revoke-error').textContent = '';
  openModal($('revoke-dialog'), {
    initialFocus: $('revoke-cancel'),
    fallbackFocus: $('keys-heading'),
    onClose: () => { revoking = null; },
  });
}

async function onRevoke() {
  const key = revoking;
  if (!key) return;
  const button = $('revoke-confirm');
  button.disabled = true;
  try {
    await guarded(() => api.revokeKey(key.id));
    await guarded(reloadKeys);
    closeModal($('revoke-dialog'));
    toast(`Revoked “${key.name}”.`);
  } catch (e) {
    if (api.signedIn()) {
      $('revoke-error').textContent = e.code === 'permission_denied'
        ? 'This root key may not revoke keys: it needs the keys:write permission.'
        : e.message;
    }
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- toast

let toastTimer = 0;

function toast(message, kind = 'info') {
  const node = $('toast');
  node.textContent = message;
  node.dataset.kind = kind;
  node.classList.add('visible');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.classList.remove('visible'), 5000);
}

// ---------------------------------------------------------------- start

async function loadCatalogue() {
  try {
    const response = await fetch('/console/config.json', { cache: 'no-store' });
    catalogue = (await response.json()).scopes ?? [];
  } catch {
    catalogue = [];
  }
  fillScopeChoices();
}

function start() {
  $('sign-in-form').addEventListener('submit', onSignIn);
  $('sign-out').addEventListener('click', () => signOut());
  $('owner-filter').addEventListener('input', onOwnerInput);
  $('owner-filter').addEventListener('keydown', (e) => { if (e.key === 'Enter') applyFilters(); });
  $('show-revoked').addEventListener('change', applyFilters);
  $('load-more').addEventListener('click', loadMore);
  $('refresh').addEventListener('click', () => guarded(reloadKeys).catch((e) => toast(e.message, 'error')));
  $('create-open').addEventListener('click', openCreate);
  $('create-form').addEventListener('submit', onCreate);
  $('create-cancel').addEventListener('click', () => closeModal($('create-dialog')));
  $('revoke-cancel').addEventListener('click', () => closeModal($('revoke-dialog')));
  $('revoke-confirm').addEventListener('click', onRevoke);
  loadCatalogue();
  $('root-key').focus();
}

start();
