// The management API over HTTP/JSON (Connect unary calls), with the root key
// held here, in this module's memory, for the life of the tab. It is never
// written to a URL, a cookie or any storage.

let rootKey = null;

/** An error answer: a Connect code ("unauthenticated") and the server's message. */
export class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }

  /**
   * The request field an INVALID_ARGUMENT names ("name: must be ..." → "name"),
   * and the message without it.
   */
  get field() {
    const match = /^([a-zA-Z_.]+): (.*)$/s.exec(this.message);
    if (this.code !== 'invalid_argument' || !match) return null;
    return { name: match[1], reason: match[2] };
  }
}

/** Connect's mapping of HTTP statuses, for answers without a JSON error body. */
const CODE_BY_STATUS = {
  400: 'invalid_argument',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'unimplemented',
  408: 'deadline_exceeded',
  409: 'aborted',
  412: 'failed_precondition',
  429: 'resource_exhausted',
  502: 'unavailable',
  503: 'unavailable',
  504: 'unavailable',
};

export function signIn(key) {
  rootKey = key;
}

export function signOut() {
  rootKey = null;
}

export function signedIn() {
  return rootKey !== null;
}

async function call(service, method, request) {
  const headers = { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' };
  if (rootKey !== null) headers.Authorization = `Bearer ${rootKey}`;
  let response;
  try {
    response = await fetch(`/apikeyd.v1.${service}/${method}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(request),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError('unavailable', 'Cannot reach apikeyd. Check that the server is running, then try again.');
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const code = body?.code ?? CODE_BY_STATUS[response.status] ?? 'unknown';
    throw new ApiError(code, body?.message || `The server answered HTTP ${response.status}.`);
  }
  return body ?? {};
}

const keyService = (method, request) => call('KeyService', method, request);

/** One page of keys, newest first: `{ apiKeys, nextPageToken }`. */
export async function listKeys({ ownerId, includeRevoked, pageToken, pageSize }) {
  const page = await keyService('ListKeys', { ownerId, includeRevoked, pageToken, pageSize });
  return { apiKeys: page.apiKeys ?? [], nextPageToken: page.nextPageToken ?? '' };
}

/** `{ key, apiKey }`: the secret is in `key`, and only here. */
export function createKey(request) {
  return keyService('CreateKey', request);
}

export function revokeKey(id) {
  return keyService('RevokeKey', { id });
}

/** Buckets of validations by code: per hour for the last 24 h, or per day for the last 30 d. */
export async function keyUsage(id, range, now = new Date()) {
  const request = { id, endTime: now.toISOString() };
  if (range === 'days') {
    request.granularity = 'USAGE_GRANULARITY_DAY';
    request.startTime = new Date(now.getTime() - 29 * 24 * 3600 * 1000).toISOString();
  } else {
    request.granularity = 'USAGE_GRANULARITY_HOUR';
    request.startTime = new Date(now.getTime() - 23 * 3600 * 1000).toISOString();
  }
  const usage = await keyService('GetKeyUsage', request);
  return usage.buckets ?? [];
}
