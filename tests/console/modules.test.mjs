// The console's pure functions, imported straight from the files the binary
// serves (they touch the DOM only when called to render).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ApiError } from '../../console/api.js';
import { plural, timeAgo } from '../../console/format.js';
import { tally } from '../../console/usage_chart.js';

test('last use reads as people say it', () => {
  const now = new Date('2026-11-29T12:00:00Z');
  const ago = (seconds) => timeAgo(new Date(now.getTime() - seconds * 1000), now);
  assert.equal(ago(2 * 3600), '2 hours ago');
  assert.equal(ago(2 * 3600 + 1799), '2 hours ago');
  assert.equal(ago(3600), '1 hour ago');
  assert.equal(ago(5 * 60), '5 minutes ago');
  assert.equal(ago(20), 'just now');
  assert.equal(ago(3 * 86400), '3 days ago');
  assert.equal(ago(45 * 86400), '1 month ago');
  assert.equal(timeAgo(new Date(now.getTime() + 3 * 86400 * 1000), now), 'in 3 days');
});

test('counts are pluralised', () => {
  assert.equal(plural(1, 'key'), '1 key');
  assert.equal(plural(110, 'key'), '110 keys');
  assert.equal(plural(0, 'other refusal'), '0 other refusals');
});

test('usage codes fall into valid, rate limited and other refusals', () => {
  const rows = tally([
    { startTime: '2026-11-29T10:00:00Z' },
    {
      startTime: '2026-11-29T11:00:00Z',
      total: '9',
      counts: [
        { code: 'VALIDATION_CODE_VALID', count: '5' },
        { code: 'VALIDATION_CODE_RATE_LIMITED', count: '2' },
        { code: 'VALIDATION_CODE_INSUFFICIENT_SCOPE', count: '1' },
        { code: 'VALIDATION_CODE_USAGE_EXCEEDED', count: '1' },
      ],
    },
  ]);
  assert.deepEqual(rows.map(({ valid, limited, other, total }) => [valid, limited, other, total]), [
    [0, 0, 0, 0],
    [5, 2, 2, 9],
  ]);
  assert.equal(rows[1].start.toISOString(), '2026-11-29T11:00:00.000Z');
});

test('an invalid argument names its field; other errors do not', () => {
  const invalid = new ApiError('invalid_argument', 'name: must be 1 to 100 characters and not blank (got 0)');
  assert.deepEqual(invalid.field, { name: 'name', reason: 'must be 1 to 100 characters and not blank (got 0)' });
  const scopes = new ApiError('invalid_argument', 'scopes: scope "a b" is not `resource:action`');
  assert.equal(scopes.field.name, 'scopes');
  assert.equal(new ApiError('invalid_argument', 'malformed JSON at line 1').field, null);
  assert.equal(new ApiError('not_found', 'no API key with id "x"').field, null);
});
