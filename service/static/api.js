// The service's public API, as the page uses it. Every failure becomes an ApiError carrying the
// API's own message ({"error": {"code", "message"}}), so the page can show it as it is.

const ROOT = new URL('../', import.meta.url); // the page lives at <root>/ui/

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(new URL(path, ROOT), options);
  } catch (error) {
    throw new ApiError(0, 'unreachable', `could not reach the service: ${error.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line below says what happened
  }
  if (!response.ok) {
    const detail = body && body.error;
    const message = typeof detail === 'string' ? detail : detail && detail.message;
    throw new ApiError(response.status, (detail && detail.code) || 'http_error',
      message || `${response.status} ${response.statusText}`);
  }
  if (body === null) {
    throw new ApiError(response.status, 'not_json', `the service answered ${path} with something other than JSON`);
  }
  return body;
}

function query(parameters) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== null) search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/** The address of one model version's operations, as in README's "Serving". */
export function modelPath(model) {
  return `v1/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}`;
}

export const listModels = () => call('v1/models');

export const modelCard = (model) => call(modelPath(model));

/** POST one image as multipart (a part named `file`), as a browser form would. */
export function postImage(model, operation, blob, parameters = {}) {
  const form = new FormData();
  form.append('file', blob, blob.name || 'image');
  return call(`${modelPath(model)}/${operation}${query(parameters)}`, { method: 'POST', body: form });
}

export function decode(model, z) {
  return call(`${modelPath(model)}/decode${query({ format: 'json' })}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ z }),
  });
}

export function sample(model, { n, seed, temperature }) {
  return call(`${modelPath(model)}/sample${query({ format: 'json', n, seed, temperature })}`);
}
