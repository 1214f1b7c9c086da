import {createHash} from 'node:crypto';
import {readdirSync, existsSync} from 'node:fs';
import {join} from 'node:path';
import sharp from 'sharp';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {getJson, postJson, startFunction, type RunningFunction} from '../support/function-server';
import {useTempDir} from '../support/temp-dir';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const API_KEY = 'sk-test-e2e-secret-key-0123456789';

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, {recursive: true, withFileTypes: true})
    .filter(entry => entry.isFile())
    .map(entry => join(entry.parentPath, entry.name));
}

describe('imageGen end to end, local store', () => {
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let fn: RunningFunction;

  beforeAll(async () => {
    openai = await startFakeOpenAI({apiKey: API_KEY, organization: 'org-e2e'});
    fn = await startFunction({
      OPENAI_API_KEY: API_KEY,
      OPENAI_ORGANIZATION: 'org-e2e',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir(),
      UPSTREAM_MAX_RETRIES: '0',
      UPSTREAM_TIMEOUT_SECONDS: '5',
    });
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
  });
  beforeEach(() => openai.reset());

  test('the legacy payload answers with an image URL that serves the stored image', async () => {
    const {status, body} = await postJson(`${fn.url}/`, {
      input: {body: {prompt_image: 'Image of a sunset over mountains'}},
    });
    expect(status).toBe(200);
    expect(body.status).toBe('completed');
    expect(body.job_id).toMatch(UUID);
    expect(body.images).toHaveLength(1);
    const [image] = body.images;
    expect(image.id).toMatch(UUID);
    expect(body.image_url).toBe(`${fn.url}/images/${image.id}?job=${body.job_id}`);
    expect(image).toMatchObject({
      content_type: 'image/png',
      width: 1024,
      height: 1024,
      model: 'gpt-image-2.6-sunburst',
      size: '1024x1024',
      prompt: 'Image of a sunset over mountains',
      revised_prompt: null,
    });
    expect(body.usage).toEqual(expect.objectContaining({total_tokens: expect.any(Number)}));

    const served = await fetch(body.image_url);
    expect(served.status).toBe(200);
    expect(served.headers.get('content-type')).toBe('image/png');
    expect(served.headers.get('etag')).toBe(`"${image.sha256}"`);
    expect(served.headers.get('cache-control')).toMatch(/max-age=31536000/);
    const bytes = Buffer.from(await served.arrayBuffer());
    expect(bytes.length).toBe(image.bytes);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(image.sha256);
    const decoded = await sharp(bytes).metadata();
    expect([decoded.format, decoded.width, decoded.height]).toEqual(['png', 1024, 1024]);

    // The upstream call carried the configured credentials and organization.
    expect(openai.requests).toHaveLength(1);
    expect(openai.requests[0]!.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(openai.requests[0]!.headers['openai-organization']).toBe('org-e2e');
  });

  test('the rich payload stores every image under images/<job>/<nnn>-<id>.<ext>', async () => {
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'three foxes',
      count: 3,
      model: 'gpt-image-2.5-flare',
      size: '1536x1024',
      quality: 'low',
      output_format: 'webp',
      output_compression: 60,
      metadata: {order: 'A-17'},
    });
    expect(status).toBe(200);
    expect(body.images.map((i: {content_type: string}) => i.content_type)).toEqual([
      'image/webp',
      'image/webp',
      'image/webp',
    ]);
    expect(new Set(body.images.map((i: {sha256: string}) => i.sha256)).size).toBe(3);
    expect(body.metadata).toEqual({order: 'A-17'});
    expect(body.parameters).toMatchObject({
      count: 3,
      model: 'gpt-image-2.5-flare',
      size: '1536x1024',
      quality: 'low',
      output_format: 'webp',
      output_compression: 60,
    });
    // count 3 fits in one call for GPT image models.
    expect(openai.requests).toHaveLength(1);
    expect(openai.requests[0]!.body).toMatchObject({
      model: 'gpt-image-2.5-flare',
      n: 3,
      size: '1536x1024',
      output_format: 'webp',
    });
    const objects = filesUnder(join(dataDir(), 'objects', 'images', body.job_id)).map(f =>
      f.split('/').pop(),
    );
    expect(objects.sort()).toEqual(
      body.images.map((image: {id: string}, index: number) => `00${index}-${image.id}.webp`),
    );
    for (const image of body.images) {
      const served = Buffer.from(await (await fetch(image.url)).arrayBuffer());
      const meta = await sharp(served).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['webp', 1536, 1024]);
    }
  });

  test('SVG count=4 is split into four parallel one-image calls', async () => {
    // The first call hangs. Sequential calls would never send the other three;
    // parallel calls send all four, and the job then fails on the deadline
    // with every stored image removed again.
    openai.injectFault({kind: 'hang'});
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'four cats',
      count: 4,
      output_format: 'svg',
    });
    expect(openai.requests.filter(r => r.path === '/v1/images/generations')).toHaveLength(4);
    expect(openai.requests.every(r => (r.body as {n: number}).n === 1)).toBe(true);
    expect(status).toBe(504);
    expect(body).toEqual({
      error: expect.stringMatching(/did not answer in time/),
      status: 'failed',
      code: 'UPSTREAM_TIMEOUT',
    });
    // Nothing of the failed job is left: no object, and its record says why.
    const jobs = (await getJson(`${fn.url}/jobs?status=failed`)).body.jobs;
    expect(jobs[0]).toMatchObject({status: 'failed', images: [], error: {code: 'UPSTREAM_TIMEOUT'}});
    expect(filesUnder(join(dataDir(), 'objects', 'images', jobs[0].job_id))).toEqual([]);
  }, 20_000);

  test('SVG authoring usage is kept in the job usage', async () => {
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'two logos',
      count: 2,
      output_format: 'svg',
    });
    expect(status).toBe(200);
    const tokens = expect.any(Number);
    expect(body.usage.svg_usage).toEqual({
      input_tokens: tokens,
      model: 'default',
      output_tokens: tokens,
      reasoning_tokens: tokens,
      total_tokens: tokens,
    });
    expect(body.usage.total_tokens).toEqual(expect.any(Number));
    const stored = await getJson(`${fn.url}/jobs/${body.job_id}`);
    expect(stored.body.usage).toEqual(body.usage);
  });

  test('what OpenAI sends back is bounded before it is stored', async () => {
    openai.injectFault({
      kind: 'odd_answer',
      revisedPrompt: 'a lighthouse, '.repeat(15_000),
      usage: {__weird__: 3, extra: {nested: 1}, total_tokens: 'lots'},
    });
    const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'a lighthouse'});
    expect(status).toBe(200);
    const stored = await getJson(`${fn.url}/jobs/${body.job_id}`);
    for (const job of [body, stored.body]) {
      expect(job.images[0].revised_prompt.length).toBe(32_000);
      expect(job.images[0].revised_prompt.startsWith('a lighthouse, a lighthouse')).toBe(true);
      // Only the fields the SDK lists, each a count: nothing the store could refuse.
      expect(Object.keys(job.usage).sort()).toEqual([
        'input_tokens',
        'input_tokens_details',
        'output_tokens',
      ]);
    }
  });

  test('SVG and GIF images are stored and served with their own content types', async () => {
    const svg = await postJson(`${fn.url}/generate`, {prompt: 'a logo', output_format: 'svg'});
    expect([svg.status, svg.body.images[0].content_type]).toEqual([200, 'image/svg+xml']);
    const served = await fetch(svg.body.image_url);
    expect(served.headers.get('content-type')).toBe('image/svg+xml');
    expect(await served.text()).toMatch(/^<\?xml|^<svg/);
    const gif = await postJson(`${fn.url}/generate`, {
      prompt: 'a spinner',
      output_format: 'gif',
      frame_count: 3,
    });
    expect([gif.status, gif.body.images[0].content_type]).toEqual([200, 'image/gif']);
    const frames = await sharp(Buffer.from(await (await fetch(gif.body.image_url)).arrayBuffer())).metadata();
    expect([frames.format, frames.pages]).toEqual(['gif', 3]);
    expect(openai.requests.at(-1)!.body).toMatchObject({output_format: 'gif', frame_count: 3});
  });

  test('a served SVG can never run script in the function origin', async () => {
    const {body} = await postJson(`${fn.url}/generate`, {prompt: 'an icon', output_format: 'svg'});
    for (const method of ['GET', 'HEAD']) {
      const served = await fetch(body.image_url, {method});
      expect(served.headers.get('content-security-policy')).toBe(
        "default-src 'none'; style-src 'unsafe-inline'; sandbox",
      );
      expect(served.headers.get('x-content-type-options')).toBe('nosniff');
    }
  });

  test('a refused prompt in a multi-call job leaves no object and no record behind', async () => {
    const objectsBefore = filesUnder(join(dataDir(), 'objects')).length;
    const recordsBefore = filesUnder(join(dataDir(), 'records')).length;
    openai.setLatency(50);
    openai.injectFault({kind: 'content_policy'});
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'three dogs',
      count: 3,
      output_format: 'svg',
    });
    expect(status).toBe(400);
    expect(body.code).toBe('CONTENT_POLICY_VIOLATION');
    expect(openai.requests).toHaveLength(3);
    expect(filesUnder(join(dataDir(), 'objects')).length).toBe(objectsBefore);
    expect(filesUnder(join(dataDir(), 'records')).length).toBe(recordsBefore);
  });

  test('GPT image moderation refusals are CONTENT_POLICY_VIOLATION too', async () => {
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'x [[content-policy]]',
      model: 'gpt-image-2',
    });
    expect([status, body.code]).toEqual([400, 'CONTENT_POLICY_VIOLATION']);
  });

  test('a rate limit passes Retry-After through', async () => {
    openai.injectFault({kind: 'rate_limit', retryAfterSeconds: 17});
    const {status, headers, body} = await postJson(`${fn.url}/generate`, {prompt: 'x'});
    expect(status).toBe(429);
    expect(headers.get('retry-after')).toBe('17');
    expect(body).toMatchObject({
      status: 'failed',
      code: 'RATE_LIMIT_EXCEEDED',
      details: {upstream_status: 429},
    });
    expect(body.error).toMatch(/rate limit/i);
  });

  test.each([
    [{kind: 'server_error', status: 503} as const],
    [{kind: 'connection_reset'} as const],
    [{kind: 'malformed'} as const],
  ])('upstream failure %j is UPSTREAM_ERROR 502', async fault => {
    openai.injectFault(fault);
    const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'x'});
    expect([status, body.code, body.status]).toEqual([502, 'UPSTREAM_ERROR', 'failed']);
  });

  test('malformed JSON is INVALID_JSON, as JSON', async () => {
    const response = await fetch(`${fn.url}/`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: '{"input":',
    });
    expect(response.status).toBe(400);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await response.json()).toEqual({
      error: 'The request body is not valid JSON',
      status: 'failed',
      code: 'INVALID_JSON',
    });
  });

  test('validation errors name the field and the allowed values, before any upstream call', async () => {
    const {status, body} = await postJson(`${fn.url}/generate`, {
      prompt: 'x',
      model: 'gpt-image-2.6-flare',
      size: '1536x864',
    });
    expect(status).toBe(400);
    expect(body.code).toBe('VALIDATION_ERROR');
    expect(body.error).toBe(
      "size: '1536x864' is invalid for gpt-image-2.6-flare (not supported); allowed: 1024x1024, 1536x1024, 1024x1536, auto",
    );
    expect(openai.requests).toHaveLength(0);
  });

  test('a body that is not JSON at all is 415', async () => {
    const response = await fetch(`${fn.url}/generate`, {
      method: 'POST',
      headers: {'content-type': 'application/xml'},
      body: '<x/>',
    });
    expect(response.status).toBe(415);
    expect(((await response.json()) as {code: string}).code).toBe('UNSUPPORTED_MEDIA_TYPE');
  });

  test('a JSON body without a content type is accepted', async () => {
    const response = await fetch(`${fn.url}/generate`, {
      method: 'POST',
      body: Buffer.from(JSON.stringify({prompt: 'no header'})),
    });
    expect(response.status).toBe(200);
    expect(((await response.json()) as {images: {prompt: string}[]}).images[0]!.prompt).toBe('no header');
  });

  test.each([
    ['an unknown UUID', '6f1c7d1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f'],
    ['a non-UUID', 'not-an-id'],
    ['an encoded traversal', '..%2F..%2Frecords%2Fjobs'],
  ])('GET /images/<%s> is IMAGE_NOT_FOUND', async (_label, id) => {
    const {status, body} = await getJson(`${fn.url}/images/${id}`);
    expect([status, body.code]).toEqual([404, 'IMAGE_NOT_FOUND']);
  });

  test('If-None-Match answers 304 and HEAD answers headers only', async () => {
    const {body} = await postJson(`${fn.url}/generate`, {prompt: 'cached'});
    const image = body.images[0];
    const notModified = await fetch(image.url, {headers: {'if-none-match': `"${image.sha256}"`}});
    expect(notModified.status).toBe(304);
    const head = await fetch(image.url, {method: 'HEAD'});
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(image.bytes));
    expect((await head.arrayBuffer()).byteLength).toBe(0);
  });

  test('health reports the instance without calling a store; ready checks both stores', async () => {
    const health = await getJson(`${fn.url}/health`);
    expect(health.status).toBe(200);
    expect(health.body).toEqual({
      status: 'healthy',
      api_key_configured: true,
      timestamp: expect.any(String),
      storage: {kind: 'local'},
      metadata: {kind: 'local'},
      default_model: 'gpt-image-2.6-sunburst',
    });
    const ready = await getJson(`${fn.url}/ready`);
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({
      status: 'ready',
      api_key_configured: true,
      timestamp: expect.any(String),
      storage: {kind: 'local', ok: true},
      metadata: {kind: 'local', ok: true},
      openai: {ok: true},
      default_model: 'gpt-image-2.6-sunburst',
    });
  });

  test('unknown routes are 404 NOT_FOUND; wrong methods are 405 with Allow', async () => {
    const missing = await getJson(`${fn.url}/nope`);
    expect([missing.status, missing.body.code]).toEqual([404, 'NOT_FOUND']);
    const wrong = await getJson(`${fn.url}/generate`);
    expect([wrong.status, wrong.body.code, wrong.headers.get('allow')]).toEqual([
      405,
      'METHOD_NOT_ALLOWED',
      'POST',
    ]);
  });

  test('URLs ignore a forwarded proto and host the function does not trust', async () => {
    const {body} = await postJson(
      `${fn.url}/generate`,
      {prompt: 'proxied'},
      {'x-forwarded-proto': 'https', 'x-forwarded-host': 'img.example.com'},
    );
    expect(body.image_url).toBe(`${fn.url}/images/${body.images[0].id}?job=${body.job_id}`);
  });

  test('the access line carries the trace, the job and image ids, and the upstream time', async () => {
    const trace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const {body} = await postJson(
      `${fn.url}/generate`,
      {prompt: 'traced'},
      {'x-cloud-trace-context': `${trace}/7;o=1`},
    );
    const line = fn.logs.find(entry => entry['logging.googleapis.com/trace'] === trace && entry.httpRequest);
    expect(line).toMatchObject({
      'logging.googleapis.com/spanId': '0000000000000007',
      'logging.googleapis.com/labels': {
        job_id: body.job_id,
        image_ids: body.images[0].id,
        upstream_ms: expect.any(String),
      },
      httpRequest: {requestMethod: 'POST', requestUrl: '/generate', status: 200},
    });
  });

  test('the API key never reaches the logs', () => {
    expect(fn.logs.length).toBeGreaterThan(10);
    expect(JSON.stringify(fn.logs)).not.toContain(API_KEY);
  });

  test('every request has one access log line with latency and status', () => {
    const access = fn.logs.filter(line => line.httpRequest);
    expect(access.length).toBeGreaterThan(10);
    for (const line of access) {
      expect(line).toMatchObject({
        severity: expect.stringMatching(/^(INFO|WARNING|ERROR)$/),
        httpRequest: {status: expect.any(Number), latency: expect.stringMatching(/^\d+\.\d{3}s$/)},
      });
    }
  });
});

describe('imageGen configuration problems', () => {
  const dataDir = useTempDir();

  test('without a key: health says so and generate is SERVICE_ERROR', async () => {
    const fn = await startFunction({DATA_DIR: dataDir()});
    try {
      const health = await getJson(`${fn.url}/health`);
      expect(health.body.api_key_configured).toBe(false);
      const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'x'});
      expect(status).toBe(500);
      expect(body).toEqual({
        error: expect.stringMatching(/OPENAI_API_KEY is not set/),
        status: 'failed',
        code: 'SERVICE_ERROR',
      });
    } finally {
      await fn.close();
    }
  });

  test('a wrong key is SERVICE_ERROR and the key is not echoed', async () => {
    const openai = await startFakeOpenAI({apiKey: 'sk-right'});
    const fn = await startFunction({
      DATA_DIR: dataDir(),
      OPENAI_API_KEY: 'sk-wrong-key-abcdef',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
    });
    try {
      const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'x'});
      expect([status, body.code]).toEqual([500, 'SERVICE_ERROR']);
      expect(JSON.stringify(body)).not.toContain('abcdef');
      expect(JSON.stringify(fn.logs)).not.toContain('sk-wrong-key-abcdef');
    } finally {
      await fn.close();
      await openai.close();
    }
  });

  test('an invalid environment answers SERVICE_ERROR naming every bad variable', async () => {
    const fn = await startFunction({
      DATA_DIR: dataDir(),
      DEFAULT_MODEL: 'dall-e-9',
      UPSTREAM_TIMEOUT_SECONDS: 'soon',
    });
    try {
      const {status, body} = await getJson(`${fn.url}/models`);
      expect([status, body.code]).toEqual([500, 'SERVICE_ERROR']);
      expect(body.error).toMatch(/DEFAULT_MODEL/);
      expect(body.error).toMatch(/UPSTREAM_TIMEOUT_SECONDS/);
      const health = await getJson(`${fn.url}/health`);
      expect(health.status).toBe(200);
      expect(health.body.config_errors).toHaveLength(2);
    } finally {
      await fn.close();
    }
  });
});
