import {gzipSync} from 'node:zlib';
import fc from 'fast-check';
import {ERROR_CODES} from '../../src/core/errors';
import {MODEL_CATALOGUE} from '../../src/core/models';
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {chunkFrame, errorOf, rawRequest} from '../support/raw-http';
import {useTempDir} from '../support/temp-dir';

const MODEL_IDS = MODEL_CATALOGUE.map(entry => entry.id);
/** MAX_BODY_BYTES of the raw-request property: small, so bodies past it are cheap to send. */
const RAW_LIMIT = 4096;

/** Values of every JSON type, to put where a field expects one type. */
const anyJson = fc.oneof(
  fc.string({maxLength: 40}),
  fc.integer({min: -5, max: 20}),
  fc.double({noNaN: true, noDefaultInfinity: true}),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string({maxLength: 5}), {maxLength: 3}),
  fc.dictionary(fc.string({maxLength: 5}), fc.string({maxLength: 5}), {maxKeys: 3}),
);

/** A field's plausible values mixed with wrong ones, so both sides of every rule are hit. */
const field = <T>(valid: fc.Arbitrary<T>) =>
  fc.option(fc.oneof({weight: 3, arbitrary: valid}, {weight: 1, arbitrary: anyJson}), {nil: undefined});

const richBody = fc.record(
  {
    prompt: field(
      fc.oneof(fc.string({minLength: 1, maxLength: 60}), fc.string({maxLength: 60, unit: 'binary'})),
    ),
    count: field(fc.integer({min: 0, max: 11})),
    n: field(fc.integer({min: 1, max: 3})),
    model: field(fc.constantFrom(...MODEL_IDS)),
    size: field(
      fc.constantFrom(
        '256x256',
        '512x512',
        '1024x1024',
        '1536x1024',
        '1024x1792',
        'auto',
        '1536x864',
        '999x999',
      ),
    ),
    quality: field(fc.constantFrom('low', 'medium', 'high', 'xhigh', 'max', 'auto', 'standard', 'hd')),
    style: field(fc.constantFrom('vivid', 'natural')),
    background: field(fc.constantFrom('transparent', 'opaque', 'auto')),
    output_format: field(fc.constantFrom('png', 'jpeg', 'webp', 'gif', 'svg')),
    output_compression: field(fc.integer({min: -1, max: 101})),
    moderation: field(fc.constantFrom('low', 'auto')),
    complexity: field(fc.constantFrom('low', 'medium', 'high')),
    frame_count: field(fc.integer({min: 1, max: 17})),
    user: field(fc.string({maxLength: 10})),
    safety_identifier: field(fc.string({maxLength: 10})),
    metadata: field(fc.dictionary(fc.string({maxLength: 8}), fc.string({maxLength: 8}), {maxKeys: 4})),
    allow_partial: field(fc.boolean()),
    unexpected: fc.option(anyJson, {nil: undefined}),
  },
  {requiredKeys: []},
);

/** Requests valid by construction, so the success path runs under the same property. */
const validBody = fc.constantFrom(...MODEL_CATALOGUE).chain(({id: model, rules}) => {
  return fc.record(
    {
      prompt: fc
        .string({minLength: 1, maxLength: 60})
        .filter(p => p.trim().length > 0 && ![...p].some(c => c < ' ' || c === '\u007f')),
      count: fc.integer({min: 1, max: 3}),
      model: fc.constant(model),
      size: fc.constantFrom(
        ...rules.sizes.filter((size: string) => size === 'auto' || Number(size.split('x')[0]) <= 1536),
      ),
      quality: fc.constantFrom(...rules.qualities),
      metadata: fc.dictionary(fc.stringMatching(/^[a-z]{1,8}$/), fc.string({maxLength: 8}), {maxKeys: 3}),
    },
    {requiredKeys: ['prompt', 'model']},
  );
});

const body = fc.oneof(
  {weight: 3, arbitrary: validBody.map(b => JSON.stringify(b))},
  {weight: 6, arbitrary: richBody.map(b => JSON.stringify(b))},
  {
    weight: 2,
    arbitrary: richBody.map(b =>
      JSON.stringify({input: {body: {...b, prompt_image: b.prompt, prompt: undefined}}}),
    ),
  },
  {weight: 1, arbitrary: fc.jsonValue({maxDepth: 3}).map(v => JSON.stringify(v))},
  {weight: 1, arbitrary: fc.string({maxLength: 80})},
);

const contentType = fc.oneof(
  {weight: 8, arbitrary: fc.constant('application/json')},
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/xml',
      'application/json; charset=latin1',
    ),
  },
);

describe('any body: never a 5xx, always a JSON error with a stable code', () => {
  const dataDir = useTempDir();
  const codes = new Set<string>(ERROR_CODES);
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '0',
    LOG_LEVEL: 'error',
  }));

  test('1500 generated requests', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(body, contentType, async (payload, type) => {
        const response = await fetch(`${ctx.fn.url}/generate`, {
          method: 'POST',
          headers: {'content-type': type},
          body: payload,
        });
        seen.set(response.status, (seen.get(response.status) ?? 0) + 1);
        expect(response.status).toBeLessThan(500);
        expect(response.headers.get('content-type')).toMatch(/^application\/json/);
        const json = (await response.json()) as {
          code?: string;
          status?: string;
          job_id?: string;
          images?: unknown[];
        };
        const accepted = response.status === 200;
        expect(json.status).toBe(accepted ? 'completed' : 'failed');
        expect(accepted ? (json.images?.length ?? 0) > 0 : codes.has(json.code ?? '')).toBe(true);
      }),
      {numRuns: 1500, seed: 20261123},
    );
    // Both sides were exercised: some requests were accepted, many refused.
    expect(seen.get(200)).toBeGreaterThan(20);
    expect(seen.get(400)).toBeGreaterThan(200);
  }, 180_000);
});

/** Raw requests: paths, escapes, methods, encodings, media types, framing and headers no client library would send. */
const segment = fc.oneof(
  fc.constantFrom(
    'generate',
    'edits',
    'jobs',
    'images',
    'url',
    'health',
    'ready',
    'models',
    'openapi.json',
    'tasks',
  ),
  fc.constantFrom('reconcile', 'favicon.ico', 'robots.txt', '', '.', '..'),
  fc.uuid(),
  fc.constantFrom('%', '%Z1', '%E0%A4%A', '%00', '%2F', '%2e%2e', '%C0%AF', '%FF', '%ZZ%', '%%', '%u00e9'),
  fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@-]{0,12}$/),
);
const query = fc
  .array(
    fc.tuple(
      fc.constantFrom(
        'limit',
        'cursor',
        'status',
        'metadata.__x__',
        'metadata.tag',
        'expires',
        'signature',
        '%',
        'x',
      ),
      fc.constantFrom('1', '0', '1e9', '%%', '%E0%A4', 'completed', '', 'a'.repeat(600)),
    ),
    {maxLength: 3},
  )
  .map(pairs => pairs.map(([name, value]) => `${name}=${value}`).join('&'));
const target = fc.oneof(
  {weight: 8, arbitrary: fc.array(segment, {maxLength: 4}).map(parts => `/${parts.join('/')}`)},
  {
    weight: 1,
    arbitrary: fc.constantFrom('*', '//', '/?', 'http://evil.example.com/health', `/${'a'.repeat(9000)}`),
  },
);
const method = fc.constantFrom(
  'GET',
  'POST',
  'POST',
  'POST',
  'DELETE',
  'HEAD',
  'OPTIONS',
  'PUT',
  'PATCH',
  'BREW',
  'get',
);

const rawHeader = fc.oneof(
  fc.tuple(
    fc.constant('Content-Type'),
    fc.constantFrom(
      'application/json',
      'application/vnd.api+json',
      'application/json; charset=utf-16',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'garbage',
      '',
    ),
  ),
  fc.tuple(
    fc.constant('Content-Encoding'),
    fc.constantFrom('gzip', 'deflate', 'br', 'zstd', 'identity', 'x-garbage', 'gzip, br', ''),
  ),
  fc.tuple(fc.constant('Expect'), fc.constantFrom('100-continue', 'nonsense')),
  fc.tuple(
    fc.constant('X-Padding'),
    fc.constantFrom(10, 8000, 20_000).map(n => 'p'.repeat(n)),
  ),
  fc.tuple(fc.constantFrom('Idempotency-Key', 'X-API-Key', 'Authorization'), fc.string({maxLength: 40})),
  fc.tuple(
    fc.constantFrom('X-Forwarded-Host', 'X-Forwarded-Proto'),
    fc.constantFrom('evil.example.com', 'https'),
  ),
  fc.tuple(fc.constant('X-Odd'), fc.constantFrom('caf\u00e9', 'a\u0000b', '\u0007', ' padded ', '\u2603')),
  fc.tuple(fc.constant('Transfer-Encoding'), fc.constantFrom('gzip', 'chunked, gzip', 'identity')),
);

const jsonBody = fc.oneof(
  fc.constant('{"prompt":"a raw kite"}'),
  fc.constant('{"prompt":'),
  fc.constant('[]'),
  fc.jsonValue({maxDepth: 2}).map(value => JSON.stringify(value)),
);
const bodyBytes = fc.oneof(
  jsonBody.map(text => ({bytes: Buffer.from(text), gzip: false})),
  jsonBody.map(text => ({bytes: gzipSync(text), gzip: true})),
  fc.uint8Array({maxLength: 200}).map(bytes => ({bytes: Buffer.from(bytes), gzip: false})),
  fc.constant({bytes: Buffer.alloc(RAW_LIMIT * 2, 0x20), gzip: false}),
  fc.constant({bytes: gzipSync(Buffer.alloc(RAW_LIMIT * 64, 0x20)), gzip: true}),
);
/** How the body is framed; a declared length past the limit is sent without its body. */
const framing = fc.constantFrom('none', 'length', 'chunked', 'declared-only');

const rawExchange = fc.record({
  method,
  target,
  query: fc.option(query, {nil: undefined}),
  headers: fc.array(rawHeader, {maxLength: 5}),
  manyHeaders: fc.constantFrom(0, 0, 0, 150),
  body: bodyBytes,
  framing,
  chunkSize: fc.integer({min: 1, max: 4096}),
});

type RawExchange = typeof rawExchange extends fc.Arbitrary<infer T> ? T : never;

function requestOf(exchange: RawExchange): {head: string; body?: Buffer} {
  const lines = [
    `${exchange.method} ${exchange.target}${exchange.query ? `?${exchange.query}` : ''} HTTP/1.1`,
    'Host: localhost',
    ...exchange.headers.map(([name, value]) => `${name}: ${value}`),
    ...Array.from({length: exchange.manyHeaders}, (_, i) => `X-Many-${i}: ${i}`),
  ];
  const {bytes} = exchange.body;
  switch (exchange.framing) {
    case 'none':
      return {head: lines.join('\r\n')};
    case 'length':
      return {head: [...lines, `Content-Length: ${bytes.length}`].join('\r\n'), body: bytes};
    case 'declared-only':
      return {head: [...lines, `Content-Length: ${RAW_LIMIT * 1024}`].join('\r\n')};
    case 'chunked': {
      const frames: Buffer[] = [];
      for (let at = 0; at < bytes.length; at += exchange.chunkSize) {
        frames.push(chunkFrame(bytes.subarray(at, at + exchange.chunkSize)));
      }
      frames.push(Buffer.from('0\r\n\r\n'));
      return {head: [...lines, 'Transfer-Encoding: chunked'].join('\r\n'), body: Buffer.concat(frames)};
    }
  }
}

describe('any raw request: an answer, in JSON, never a 5xx, every error with a stable code', () => {
  const dataDir = useTempDir();
  const codes = new Set<string>(ERROR_CODES);
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '0',
    MAX_BODY_BYTES: String(RAW_LIMIT),
    LOG_LEVEL: 'error',
  }));

  test('1000 generated requests', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(rawExchange, async exchange => {
        const response = await rawRequest(ctx.fn.url, requestOf(exchange));
        seen.set(response.status, (seen.get(response.status) ?? 0) + 1);
        expect(response.status).toBeLessThan(500);
        expect(response.headers['content-type']).toMatch(/^application\/json/);
        // Every error is ours (a HEAD answer has no body to look at).
        const ours = response.status < 400 || exchange.method === 'HEAD' || codes.has(errorOf(response).code);
        expect(ours).toBe(true);
      }),
      {numRuns: 1000, seed: 20261201},
    );
    // Many kinds of refusal were met, and some requests got through.
    expect([...seen.keys()]).toEqual(expect.arrayContaining([200, 400, 404, 405, 413, 415, 431]));
  }, 180_000);
});
