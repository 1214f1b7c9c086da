// HTTP client and statistics helpers for the bench.
import http from 'node:http';
import {createParser} from 'eventsource-parser';
import {sleep} from './processes.mjs';

/** One keep-alive pool without a socket cap, so N concurrent requests use N connections. */
export const agent = new http.Agent({keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024});

/**
 * Sends one request and reads the whole answer. Resolves with the status,
 * the body text (or bytes, with `raw`) and the elapsed milliseconds; rejects
 * only on a socket error.
 */
export function request(url, {method = 'GET', body, headers = {}, useAgent = agent, raw = false} = {}) {
  return new Promise((resolve, reject) => {
    const payload =
      body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const started = performance.now();
    const req = http.request(
      url,
      {
        method,
        agent: useAgent,
        headers: {
          ...(payload ? {'content-type': 'application/json', 'content-length': String(payload.length)} : {}),
          ...headers,
        },
      },
      res => {
        const chunks = [];
        res.on('data', chunk => chunks.push(chunk));
        res.on('end', () => {
          const elapsed = performance.now() - started;
          const bytes = Buffer.concat(chunks);
          resolve({
            status: res.statusCode,
            ms: elapsed,
            ...(raw ? {body: bytes, text: ''} : {text: bytes.toString('utf8')}),
          });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** performance.timeOrigin + performance.now(): the clock the fake OpenAI server records on, in any process. */
export const wallNow = () => performance.timeOrigin + performance.now();

/**
 * POSTs a JSON body and reads the answer as Server-Sent Events, as a caller
 * would. Resolves once the answer ends with its status, when the request was
 * sent, when the first event of each name arrived and how many came (times on
 * `wallNow`); an answer that is not a stream comes back as `text`.
 */
export function streamRequest(url, {body, headers = {}, useAgent = agent} = {}) {
  return new Promise((resolve, reject) => {
    const payload = Buffer.from(JSON.stringify(body));
    const sentAt = wallNow();
    const req = http.request(
      url,
      {
        method: 'POST',
        agent: useAgent,
        headers: {'content-type': 'application/json', 'content-length': String(payload.length), ...headers},
      },
      res => {
        const firstAt = {};
        const counts = {};
        let text = '';
        const streamed = String(res.headers['content-type']).startsWith('text/event-stream');
        const parser = createParser({
          onEvent: ({event = 'message'}) => {
            firstAt[event] ??= wallNow();
            counts[event] = (counts[event] ?? 0) + 1;
          },
        });
        res.setEncoding('utf8');
        res.on('data', chunk => (streamed ? parser.feed(chunk) : (text += chunk)));
        res.on('end', () => resolve({status: res.statusCode, sentAt, firstAt, counts, text}));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Retries `send` on connection errors (the server is not listening yet) every
 * `everyMs` until it answers with `okStatus`; returns the time that answer came.
 */
export async function pollUntil(
  send,
  {okStatus = 200, everyMs = 2, timeoutMs = 60_000, isDead = () => false} = {},
) {
  const deadline = performance.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (isDead()) throw new Error(`process exited before answering: ${last}`);
    try {
      const response = await send();
      if (response.status === okStatus) return {at: performance.now(), response};
      last = `HTTP ${response.status}: ${response.text.slice(0, 300)}`;
    } catch (error) {
      last = String(error?.code ?? error);
    }
    if (performance.now() > deadline)
      throw new Error(`no ${okStatus} within ${timeoutMs} ms (last: ${last})`);
    await sleep(everyMs);
  }
}

/** Nearest-rank percentile of numbers (p in 0..100). */
export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export const median = values => percentile(values, 50);
export const max = values => (values.length ? Math.max(...values) : NaN);
export const min = values => (values.length ? Math.min(...values) : NaN);

export const ms = value =>
  Number.isFinite(value) ? `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ms` : 'n/a';
export const mib = bytes => (Number.isFinite(bytes) ? `${(bytes / 1024 / 1024).toFixed(0)} MiB` : 'n/a');
export const ratio = value => (Number.isFinite(value) ? `${value.toFixed(2)}x` : 'n/a');
