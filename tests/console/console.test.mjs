// The web console in a real browser (Debian's chromium, driven by
// playwright-core) against a real `apikeyd serve`, found through the
// accessible names people and screen readers use. `scripts/test-console`
// starts the server and runs this file with node's test runner.
//
// Environment: APIKEYD_CONSOLE_URL (the HTTP listener), APIKEYD_GRPC_ADDR,
// APIKEYD_ROOT_KEY_FILE (the bootstrap root key), APIKEYD_CONSOLE_SCOPES
// (the configured catalogue, comma-separated), CONSOLE_SCREENSHOTS (where
// each step's screenshot goes).

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const BASE = process.env.APIKEYD_CONSOLE_URL ?? assert.fail('APIKEYD_CONSOLE_URL is not set');
const GRPC_ADDR = process.env.APIKEYD_GRPC_ADDR ?? assert.fail('APIKEYD_GRPC_ADDR is not set');
const ROOT_KEY = readFileSync(process.env.APIKEYD_ROOT_KEY_FILE ?? assert.fail('APIKEYD_ROOT_KEY_FILE is not set'), 'utf8').trim();
const CATALOGUE = (process.env.APIKEYD_CONSOLE_SCOPES ?? '').split(',').filter(Boolean);
const SHOTS = process.env.CONSOLE_SCREENSHOTS ?? 'target/console-screenshots';
const KEY_PATTERN = /^sk_(live|test)_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}$/;
/** Longest wait for anything the page should show. */
const TIMEOUT = 15_000;

// ------------------------------------------------------------- gRPC client

const protoDir = fileURLToPath(new URL('../../proto', import.meta.url));
const definition = protoLoader.loadSync(
  ['apikeyd/v1/key_service.proto', 'apikeyd/v1/validation_service.proto'],
  { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).apikeyd.v1;
const validation = new v1.ValidationService(GRPC_ADDR, grpc.credentials.createInsecure());
const keyService = new v1.KeyService(GRPC_ADDR, grpc.credentials.createInsecure());

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

const validate = (key, requiredScopes = []) =>
  unary(validation, 'Validate', { key, required_scopes: requiredScopes });

function asRoot() {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${ROOT_KEY}`);
  return metadata;
}

const createOverGrpc = (request) => unary(keyService, 'CreateKey', request, asRoot());

// ------------------------------------------------------------- browser

let browser;
let context;
let page;
/** CSP violations and script errors the page reported. */
const pageProblems = [];
/** Every URL the page requested, to prove nothing comes from elsewhere. */
const requested = [];
let shotNumber = 0;
const started = Date.now();

async function shot(name, options = {}) {
  shotNumber += 1;
  const path = join(SHOTS, `${String(shotNumber).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path, fullPage: true, ...options });
  return path;
}

/** Polls `read` until it satisfies `check` (or TIMEOUT passes), then asserts. */
async function eventually(read, check, message) {
  const deadline = Date.now() + TIMEOUT;
  let value = await read();
  while (!check(value) && Date.now() < deadline) {
    await page.waitForTimeout(50);
    value = await read();
  }
  assert.ok(check(value), `${message} (last seen: ${JSON.stringify(value)})`);
  return value;
}

/** The text of the elements that describe `locator` (aria-describedby). */
function description(locator) {
  return locator.evaluate((node) => (node.getAttribute('aria-describedby') ?? '')
    .split(/\s+/).filter(Boolean)
    .map((id) => document.getElementById(id)?.textContent ?? '')
    .join(' ').trim());
}

/** The list's owner filter (the create dialog has an `Owner` field too). */
const ownerFilter = () => page.getByRole('searchbox', { name: 'Owner' });

/**
 * axe-core's WCAG 2.1 A/AA and best-practice rules on what is on screen now;
 * fails with each violation and the elements it concerns. The script goes in
 * through the DevTools protocol, so the page's own policy stays as served.
 */
async function assertAccessible(where) {
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await globalThis.axe.run(document, {
      runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'],
    });
    return result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  });
  assert.deepEqual(violations, [], `accessibility of ${where}`);
}

/** Whether the one element `locator` finds has the keyboard focus. */
const isFocused = (locator) => locator.evaluate((node) => node === document.activeElement);

const button = (name, within = page) => within.getByRole('button', { name, exact: true });

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: 'light' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (message) => {
    if (message.type() === 'error') pageProblems.push(message.text());
  });
  page.on('pageerror', (error) => pageProblems.push(String(error)));
  page.on('request', (request) => requested.push(request.url()));
});

after(async () => {
  await browser?.close();
  validation.close();
  keyService.close();
  console.log(`browser test took ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${SHOTS}`);
});

// ------------------------------------------------------------- the steps

const created = { key: '', name: 'Production integration', owner: 'user_1' };

test('the console is served with a strict policy and a wrong root key says so', async () => {
  const response = await page.goto(BASE);
  const headers = response.headers();
  assert.match(headers['content-security-policy'], /default-src 'self'/);
  assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
  assert.equal(headers['referrer-policy'], 'no-referrer');
  assert.equal(headers['x-content-type-options'], 'nosniff');

  await page.getByLabel('Root key').fill(`rk_${'0'.repeat(16)}_${'A'.repeat(49)}`);
  await page.getByRole('button', { name: 'Sign in' }).click();
  const alert = page.getByRole('alert').filter({ hasText: /root key/i });
  await alert.waitFor();
  assert.match(await alert.textContent(), /Wrong root key/);
  assert.equal(await page.getByRole('heading', { name: 'API Keys' }).count(), 0, 'still signed out');
  await shot('wrong-root-key');
  await assertAccessible('the sign-in form with an error');
});

test('signing in keeps the root key in memory only', async () => {
  await page.getByLabel('Root key').fill(ROOT_KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'API Keys' }).waitFor();
  assert.ok(!page.url().includes(ROOT_KEY), 'not in the URL');
  assert.deepEqual(await context.cookies(), [], 'no cookie');
  const stored = await page.evaluate(() => [localStorage.length, sessionStorage.length]);
  assert.deepEqual(stored, [0, 0], 'nothing in web storage');
  assert.equal(await page.getByLabel('Root key').isVisible(), false, 'the sign-in form is gone');
  await shot('signed-in-empty');
});

test('creating a key: server validation errors appear next to their field', async () => {
  assert.ok(CATALOGUE.length >= 2, 'the server has a catalogue of at least two scopes');
  await page.getByRole('button', { name: 'Create API Key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create API Key' });
  await dialog.waitFor();
  for (const scope of CATALOGUE) {
    assert.equal(await dialog.getByRole('checkbox', { name: scope, exact: true }).count(), 1, scope);
  }
  await dialog.getByLabel('Name').fill(created.name);
  await dialog.getByLabel('Owner').fill(created.owner);
  await dialog.getByRole('checkbox', { name: CATALOGUE[0], exact: true }).check();
  await dialog.getByRole('checkbox', { name: CATALOGUE[1], exact: true }).check();
  const other = dialog.getByLabel('Other scopes');
  await other.fill('billing read');
  await dialog.getByLabel('Expires').selectOption({ label: '90 days' });
  await dialog.getByLabel('Environment').selectOption({ label: 'live' });
  await dialog.getByRole('button', { name: 'Create Key' }).click();

  // "billing" is not `resource:action`: the server says so, under the field.
  await eventually(() => other.getAttribute('aria-invalid'), (v) => v === 'true', 'Other scopes is marked invalid');
  assert.match(await description(other), /Scope "billing" is not resource:action/);
  assert.ok(await isFocused(other), 'focus on the field');
  await shot('create-server-error', { fullPage: false });
  await assertAccessible('the create dialog with a field error');

  await other.fill('billing:read');
  await dialog.getByRole('button', { name: 'Create Key' }).click();
  await page.getByRole('dialog', { name: 'Store this key securely' }).waitFor();
  assert.equal(await dialog.isVisible(), false, 'the create dialog closed');
});

test('the one-time display shows the key once and copies it', async () => {
  const display = page.getByRole('dialog', { name: 'Store this key securely' });
  const field = display.getByRole('textbox');
  const key = await field.inputValue();
  assert.match(key, KEY_PATTERN);
  assert.match(await field.evaluate((node) => getComputedStyle(node).fontFamily), /mono/i);
  await display.getByText('This key will not be shown again').waitFor();
  await shot('one-time-display', { fullPage: false });

  await display.getByRole('button', { name: 'Copy' }).click();
  await display.getByRole('button', { name: 'Copied' }).waitFor();
  created.key = await page.evaluate(() => navigator.clipboard.readText());
  assert.equal(created.key, key, 'the clipboard holds the key');
  await shot('copied', { fullPage: false });
  await assertAccessible('the one-time display');
});

test('once closed, the secret is gone from the page and from memory', async () => {
  await page.getByRole('dialog', { name: 'Store this key securely' }).getByRole('button', { name: 'Done' }).click();
  await eventually(() => page.getByRole('dialog').count(), (n) => n === 0, 'no dialog open');
  assert.ok(await isFocused(button('Create API Key')), 'focus returns to the opener');

  const item = page.getByRole('listitem').filter({ has: page.getByRole('heading', { name: created.name }) });
  await item.waitFor();
  for (const scope of [CATALOGUE[0], CATALOGUE[1], 'billing:read']) {
    await item.getByText(scope, { exact: true }).waitFor();
  }
  const text = await item.innerText();
  assert.match(text, /sk_live_[0-9A-Za-z]{16}…/, 'the display prefix');
  assert.match(text, /\blive\b/);
  assert.match(text, /Created /);
  assert.match(text, /Expires /);
  assert.match(text, /Never used/);
  assert.equal(await item.getByRole('button', { name: `Revoke ${created.name}`, exact: true }).count(), 1);

  const secret = created.key.slice(-55);
  assert.ok(!(await page.content()).includes(secret), 'not in the DOM');
  const inFields = await page.evaluate((s) => [...document.querySelectorAll('input, textarea')]
    .some((node) => node.value.includes(s)), secret);
  assert.ok(!inFields, 'not in any field');

  // The JavaScript heap, after a collection, holds no copy of the secret.
  const cdp = await context.newCDPSession(page);
  await cdp.send('HeapProfiler.enable');
  await cdp.send('HeapProfiler.collectGarbage');
  const chunks = [];
  cdp.on('HeapProfiler.addHeapSnapshotChunk', ({ chunk }) => chunks.push(chunk));
  await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
  const snapshot = chunks.join('');
  assert.ok(snapshot.length > 100_000, 'a heap snapshot was taken');
  assert.ok(!snapshot.includes(secret), 'the secret is not in the page heap');
  assert.ok(snapshot.includes(created.name), 'the snapshot does see the page state');
  await cdp.detach();
  await shot('list-after-create');
});

test('the copied key validates over gRPC, and its usage is charted', async () => {
  const ok = await validate(created.key, [CATALOGUE[0]]);
  assert.equal(ok.code, 'VALIDATION_CODE_VALID');
  assert.equal(ok.valid, true);
  const refused = await validate(created.key, ['admin:write']);
  assert.equal(refused.code, 'VALIDATION_CODE_INSUFFICIENT_SCOPE');

  // Keys for a fuller list (and screenshot).
  await createOverGrpc({ owner_id: 'user_1', name: 'Staging worker', scopes: ['posts:read'],
    environment: 'ENVIRONMENT_TEST', expires_in_days: 7 });
  const nightly = await createOverGrpc({ owner_id: 'analytics', name: 'Nightly export',
    scopes: ['reports:read', 'users:read'] });
  await unary(keyService, 'UpdateKey', { id: nightly.api_key.id, enabled: false }, asRoot());

  // last_used_at is written in batches; refresh the list until it shows.
  const item = page.getByRole('listitem').filter({ has: page.getByRole('heading', { name: created.name }) });
  await eventually(async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    await page.getByRole('status').filter({ hasText: /^\d+ keys?$/ }).waitFor();
    return item.innerText();
  }, (text) => /Last used: (just now|\d+ seconds? ago)/.test(text), 'Last used appears');
  const disabled = page.getByRole('listitem').filter({ has: page.getByRole('heading', { name: 'Nightly export' }) });
  await disabled.getByText('Disabled', { exact: true }).waitFor();
  assert.equal(await item.getByText('Disabled', { exact: true }).count(), 0, 'an enabled key says nothing');

  await item.getByRole('button', { name: `Usage of ${created.name}` }).click();
  const chart = item.getByRole('img', { name: /^Requests per hour over the last 24 hours/ });
  await chart.waitFor();
  assert.match(await chart.getAttribute('aria-label'), /1 valid request, 0 rate limited, 1 other refusal$/);
  await item.getByText('Show as table').click();
  const table = item.getByRole('table', { name: 'Requests per hour, last 24 hours' });
  const rows = await table.getByRole('row').allInnerTexts();
  assert.equal(rows.length, 25, 'a header and 24 hours');
  assert.match(rows.at(-1), /\t1\t0\t1\t2$/, 'this hour: 1 valid, 0 limited, 1 other, 2 in all');
  await shot('usage-chart');
  await assertAccessible('the list with a usage chart and its table');

  await item.getByRole('button', { name: 'Last 30 days' }).click();
  await item.getByRole('img', { name: /^Requests per day over the last 30 days: 1 valid request/ }).waitFor();
  await item.getByText('Show as table').click();
  assert.equal(await item.getByRole('table', { name: 'Requests per day, last 30 days' }).getByRole('row').count(), 31);
  await item.getByRole('button', { name: 'Last 24 hours' }).click();
  await chart.waitFor();
  // The README's picture: the top of the page, with this key's usage open.
  await page.setViewportSize({ width: 1280, height: 1040 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot('readme', { fullPage: false });
  await page.setViewportSize({ width: 1280, height: 860 });
});

test('revoking in the console asks first, and Validate then answers REVOKED', async () => {
  const revoke = page.getByRole('button', { name: `Revoke ${created.name}`, exact: true });
  await revoke.click();
  const confirm = page.getByRole('dialog', { name: /Revoke/ });
  await confirm.waitFor();
  await shot('revoke-confirmation', { fullPage: false });
  await assertAccessible('the revoke confirmation');

  // Escape closes it without revoking, and focus returns to the button.
  await page.keyboard.press('Escape');
  await eventually(() => confirm.count(), (n) => n === 0, 'Escape closes the dialog');
  assert.ok(await isFocused(revoke), 'focus returns to the revoke button');
  assert.equal((await validate(created.key)).code, 'VALIDATION_CODE_VALID', 'not revoked by Escape');

  await revoke.click();
  await confirm.getByRole('button', { name: 'Revoke key' }).click();
  await eventually(() => confirm.count(), (n) => n === 0, 'the dialog closes');
  await eventually(() => page.getByRole('heading', { name: created.name }).count(), (n) => n === 0,
    'the revoked key leaves the list');
  assert.ok(await isFocused(page.getByRole('heading', { name: 'API Keys' })), 'focus moves to the list heading');

  const answer = await validate(created.key);
  assert.equal(answer.code, 'VALIDATION_CODE_REVOKED');
  assert.equal(answer.valid, false);

  await page.getByRole('checkbox', { name: 'Show revoked' }).check();
  const item = page.getByRole('listitem').filter({ has: page.getByRole('heading', { name: created.name }) });
  await item.getByText('Revoked', { exact: true }).waitFor();
  assert.equal(await item.getByRole('button', { name: /^Revoke / }).count(), 0, 'a revoked key has no revoke button');
  await shot('show-revoked');
  await assertAccessible('the list with a revoked key');
  await page.getByRole('checkbox', { name: 'Show revoked' }).uncheck();
});

test('a key can be created with the keyboard alone', async () => {
  await page.getByRole('heading', { name: 'API Keys' }).focus();
  await eventually(async () => {
    await page.keyboard.press('Tab');
    return isFocused(button('Create API Key'));
  }, (focused) => focused, 'Tab reaches Create API Key');

  // Escape closes the dialog and focus returns to the button.
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Create API Key' });
  await dialog.waitFor();
  assert.ok(await isFocused(dialog.getByLabel('Name')), 'focus starts in Name');
  await page.keyboard.press('Escape');
  await eventually(() => dialog.isVisible(), (v) => !v, 'Escape closes');
  assert.ok(await isFocused(button('Create API Key')), 'focus returns to the button');

  await page.keyboard.press('Enter');
  await dialog.waitFor();
  await page.keyboard.type('Keyboard key');
  await page.keyboard.press('Tab');
  await page.keyboard.type('user_2');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Space'); // the first catalogue scope
  await page.keyboard.press('Tab');
  await page.keyboard.press('Space'); // the second
  assert.deepEqual(
    await dialog.getByRole('checkbox', { checked: true }).evaluateAll((boxes) => boxes.map((b) => b.value)),
    CATALOGUE.slice(0, 2),
  );
  // Focus stays in the dialog: Shift+Tab from the first field goes to the last button.
  await dialog.getByLabel('Name').focus();
  await page.keyboard.press('Shift+Tab');
  assert.ok(await isFocused(button('Create Key', dialog)), 'Shift+Tab wraps to the last control');
  await page.keyboard.press('Tab');
  assert.ok(await isFocused(dialog.getByLabel('Name')), 'Tab wraps to the first');
  await shot('keyboard-create', { fullPage: false });

  await page.keyboard.press('Enter'); // submits the form from Name
  const display = page.getByRole('dialog', { name: 'Store this key securely' });
  await display.waitFor();
  assert.ok(await isFocused(button('Copy', display)), 'focus on Copy');
  await page.keyboard.press('Tab');
  assert.ok(await isFocused(button('Done', display)), 'Tab goes on to Done');
  await page.keyboard.press('Enter');
  await eventually(() => display.count(), (n) => n === 0, 'the display closes');
  assert.ok(await isFocused(button('Create API Key')), 'focus returns to the opener');
  await page.getByRole('heading', { name: 'Keyboard key' }).waitFor();
});

test('the list pages past 100 keys', async () => {
  const total = 110;
  for (let i = 0; i < total; i += 10) {
    await Promise.all(Array.from({ length: Math.min(10, total - i) }, (_, j) => createOverGrpc({
      owner_id: 'bulk', name: `Bulk key ${String(i + j + 1).padStart(3, '0')}`, scopes: ['posts:read'],
    })));
  }
  await ownerFilter().fill('bulk');
  await ownerFilter().press('Enter');
  const items = page.getByRole('list', { name: 'API Keys' }).getByRole('listitem')
    .filter({ has: page.getByRole('heading') });
  await eventually(() => items.count(), (n) => n === 50, 'the first page');
  const more = page.getByRole('button', { name: 'Load more keys' });
  await more.click();
  await eventually(() => items.count(), (n) => n === 100, 'the second page');
  await more.click();
  await eventually(() => items.count(), (n) => n === total, 'the third page');
  assert.equal(await more.isVisible(), false, 'no more pages');
  const names = await items.getByRole('heading').allInnerTexts();
  assert.equal(new Set(names).size, total, 'no key twice');
  // Created ten at a time: the newest first means one of the last ten first.
  assert.match(names[0], /^Bulk key 1(0[1-9]|10)$/, 'newest first');
  assert.match(names.at(-1), /^Bulk key 0(0[1-9]|10)$/, 'oldest last');
  assert.match(await page.getByRole('status').filter({ hasText: 'keys' }).innerText(), /110 keys of owner “bulk”/);
  await ownerFilter().fill('');
  await ownerFilter().press('Enter');
});

test('at 360 px nothing scrolls sideways', async () => {
  await page.setViewportSize({ width: 360, height: 780 });
  await ownerFilter().fill('user_1');
  await ownerFilter().press('Enter');
  await page.getByRole('heading', { name: 'Staging worker' }).waitFor();
  const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.equal(await overflow(), 0, 'the list fits');
  await shot('narrow-list');

  await page.getByRole('button', { name: 'Create API Key' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create API Key' });
  await dialog.waitFor();
  const box = await dialog.boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 360, `the dialog fits (${JSON.stringify(box)})`);
  assert.equal(await overflow(), 0, 'the dialog does not widen the page');
  await shot('narrow-create', { fullPage: false });
  await dialog.getByLabel('Name').fill('Phone key');
  await dialog.getByRole('checkbox', { name: CATALOGUE[0], exact: true }).check();
  await button('Create Key', dialog).click();
  const display = page.getByRole('dialog', { name: 'Store this key securely' });
  await display.waitFor();
  const shown = await display.boundingBox();
  assert.ok(shown.x >= 0 && shown.x + shown.width <= 360, `the one-time display fits (${JSON.stringify(shown)})`);
  assert.match(await display.getByRole('textbox').inputValue(), KEY_PATTERN);
  assert.equal(await overflow(), 0, 'the one-time display does not widen the page');
  await shot('narrow-one-time-display', { fullPage: false });
  await button('Done', display).click();

  const item = page.getByRole('listitem').filter({ has: page.getByRole('heading', { name: 'Staging worker' }) });
  await item.getByRole('button', { name: 'Usage of Staging worker' }).click();
  await item.getByRole('img', { name: /^Requests per hour/ }).waitFor();
  assert.equal(await overflow(), 0, 'the usage chart fits');
  await shot('narrow-usage');
  await page.setViewportSize({ width: 1280, height: 860 });
});

test('dark mode follows the system setting', async () => {
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const light = await background();
  await page.emulateMedia({ colorScheme: 'dark' });
  const dark = await background();
  assert.notEqual(dark, light);
  await ownerFilter().fill('user_1');
  await ownerFilter().press('Enter');
  await page.getByRole('heading', { name: 'Staging worker' }).waitFor();
  await shot('dark');
  await assertAccessible('the list in dark mode');
  await page.emulateMedia({ colorScheme: 'light' });
});

test('signing out forgets the root key and what it showed', async () => {
  await button('Sign out').click();
  await page.getByLabel('Root key').waitFor();
  assert.ok(await isFocused(page.getByLabel('Root key')), 'focus on the root key field');
  assert.equal(await page.getByRole('heading', { name: 'API Keys' }).isVisible(), false);
  assert.ok(!(await page.content()).includes('Staging worker'), 'the keys are gone from the page');
  assert.ok(!(await page.content()).includes(ROOT_KEY.slice(-40)), 'the root key is not in the page');
  await shot('signed-out');
});

test('the page fetched nothing from elsewhere and broke no policy', () => {
  const foreign = requested.filter((url) => !url.startsWith(BASE));
  assert.deepEqual(foreign, []);
  const problems = pageProblems.filter((text) => !/status of 401|status of 400/.test(text));
  assert.deepEqual(problems, [], 'no CSP violation or script error');
});
