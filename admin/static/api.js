// The admin JSON API on this origin, and its errors put into words for people.

export class ApiError extends Error {
  constructor(status, code, message, { fields = [], requestId = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.requestId = requestId;
  }
}

const UNREACHABLE =
  "Can't reach the gateway's admin API. Check that the gateway is running and your network connection, then try again.";

const FIELD_LABELS = {
  name: 'Name',
  scopes: 'Permissions',
  permissions: 'Permissions',
  email: 'Email',
  role: 'Role',
  url: 'URL',
  events: 'Events',
  enabled: 'Enabled',
  rate_limit: 'Rate limits',
  'rate_limit.per_minute': 'Requests per minute',
  'rate_limit.per_day': 'Requests per day',
  ip_allowlist: 'IP allowlist',
  expires_at: 'Expires',
  body: 'Request',
};

export function fieldLabel(field) {
  return FIELD_LABELS[field] ?? field;
}

function describe(status, error, requestId) {
  const reference = requestId ? ` (request id ${requestId})` : '';
  if (status >= 500 && status !== 503) {
    return `The gateway ran into a problem${reference}. Try again; if it keeps happening, give the request id to whoever runs the gateway.`;
  }
  if (typeof error.message === 'string' && error.message) return error.message;
  return `The gateway answered with an unexpected error (HTTP ${status})${reference}.`;
}

export class Api {
  /**
   * @param {() => string | null} token the admin token, read for every request
   * @param {(error: ApiError) => void} onUnauthorized called when the token is refused
   */
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  get(path) { return this.request('GET', path); }
  post(path, body) { return this.request('POST', path, body); }
  patch(path, body) { return this.request('PATCH', path, body); }
  delete(path) { return this.request('DELETE', path); }

  async request(method, path, body, token = this.token()) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch {
      throw new ApiError(0, 'unreachable', UNREACHABLE);
    }
    if (response.status === 204) return null;
    let data = null;
    if ((response.headers.get('Content-Type') ?? '').startsWith('application/json')) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }
    const requestId = response.headers.get('X-Request-Id');
    if (response.ok && data !== null) return data;
    if (response.ok) {
      throw new ApiError(response.status, 'bad_response', 'The gateway sent an answer this page cannot read. Reload the page and try again.', { requestId });
    }
    const error = (data && typeof data.error === 'object' && data.error) || {};
    const failure = new ApiError(response.status, error.code ?? `http_${response.status}`, describe(response.status, error, error.request_id ?? requestId), {
      fields: Array.isArray(error.fields) ? error.fields : [],
      requestId: error.request_id ?? requestId,
    });
    if (response.status === 401 && token === this.token()) this.onUnauthorized(failure);
    throw failure;
  }
}
