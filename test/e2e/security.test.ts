import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {
  getJson,
  postJson,
  startFunction,
  useFunctionWithFakeOpenAI,
  type RunningFunction,
} from '../support/function-server';
import {useTempDir} from '../support/temp-dir';
import {OpenApiValidator} from '../support/openapi-validator';

const ALICE = 'alice-key-0123456789abcdef';
const BOB = 'bob-key-0123456789abcdef00';

describe('API keys, quotas and refused input', () => {
  const validator = new OpenApiValidator();
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '0',
    API_KEYS: `alice:${ALICE}:3,bob:${BOB}`,
    MAX_BODY_BYTES: '2048',
    LOG_PROMPTS: 'false',
  }));

  const small = {prompt: 'a secret prompt about pelicans'};

  test('without a key every route but health, ready and the API document is 401', async () => {
    const generate = await postJson(`${ctx.fn.url}/generate`, small);
    validator.check('POST', `${ctx.fn.url}/generate`, generate.status, generate.body);
    expect([generate.status, generate.body.code]).toEqual([401, 'UNAUTHENTICATED']);
    expect(generate.headers.get('www-authenticate')).toBe('Bearer');
    for (const path of [
      '/jobs',
      '/jobs/6f1c7d1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f',
      '/images/6f1c7d1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f',
    ]) {
      const read = await getJson(`${ctx.fn.url}${path}`);
      expect([path, read.status, read.body.code]).toEqual([path, 401, 'UNAUTHENTICATED']);
    }
    expect((await getJson(`${ctx.fn.url}/health`)).status).toBe(200);
    expect((await getJson(`${ctx.fn.url}/ready`)).status).toBe(200);
    expect((await getJson(`${ctx.fn.url}/openapi.json`)).status).toBe(200);
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a wrong key is 401; a right one works in either header', async () => {
    const wrong = await postJson(`${ctx.fn.url}/generate`, small, {'x-api-key': `${BOB}x`});
    expect([wrong.status, wrong.body.error]).toEqual([401, 'The API key is not valid']);
    const viaHeader = await postJson(`${ctx.fn.url}/generate`, small, {'x-api-key': BOB});
    expect(viaHeader.status).toBe(200);
    const viaBearer = await getJson(`${ctx.fn.url}/jobs/${viaHeader.body.job_id}`, {
      headers: {authorization: `Bearer ${BOB}`},
    });
    expect([viaBearer.status, viaBearer.body.job_id]).toEqual([200, viaHeader.body.job_id]);
  });

  test('an ID token in Authorization does not hide a valid X-API-Key', async () => {
    const both = await postJson(`${ctx.fn.url}/generate`, small, {
      authorization: 'Bearer eyJhbGciOi.not-ours',
      'x-api-key': BOB,
    });
    expect(both.status).toBe(200);
  });

  test('a daily quota is enforced before any upstream call, and failures give images back', async () => {
    ctx.openai.injectFault({kind: 'server_error'});
    const failed = await postJson(`${ctx.fn.url}/generate`, {...small, count: 2}, {'x-api-key': ALICE});
    expect(failed.status).toBe(502);
    const first = await postJson(`${ctx.fn.url}/generate`, {...small, count: 2}, {'x-api-key': ALICE});
    expect(first.status).toBe(200);
    const over = await postJson(`${ctx.fn.url}/generate`, {...small, count: 2}, {'x-api-key': ALICE});
    expect([over.status, over.body.code]).toEqual([429, 'QUOTA_EXCEEDED']);
    validator.check('POST', `${ctx.fn.url}/generate`, over.status, over.body);
    expect(Number(over.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(Number(over.headers.get('retry-after'))).toBeLessThanOrEqual(86400);
    const last = await postJson(`${ctx.fn.url}/generate`, small, {'x-api-key': ALICE});
    expect(last.status).toBe(200);
    // Two failed-then-given-back images, two made, one more made: three upstream calls, none for the refusal.
    expect(ctx.openai.requests).toHaveLength(3);
  });

  test('a body over MAX_BODY_BYTES is 413', async () => {
    const big = await postJson(`${ctx.fn.url}/generate`, {prompt: 'x'.repeat(4096)}, {'x-api-key': BOB});
    expect([big.status, big.body.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
  });

  test.each([
    ['__proto__', '{"prompt":"x","__proto__":{"admin":true}}'],
    ['constructor', '{"prompt":"x","metadata":{"constructor":"y"}}'],
  ])('a %s key is refused', async (_key, raw) => {
    const response = await postJson(`${ctx.fn.url}/generate`, raw, {'x-api-key': BOB});
    expect([response.status, response.body.code]).toEqual([400, 'VALIDATION_ERROR']);
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('an upstream error quoting the Authorization header and the prompt leaves neither in logs or answer', async () => {
    ctx.openai.injectFault({kind: 'echo_secrets'});
    const response = await postJson(
      `${ctx.fn.url}/generate`,
      {prompt: 'a confidential sketch of "otters" at dusk'},
      {'x-api-key': BOB},
    );
    expect([response.status, response.body.code]).toEqual([502, 'UPSTREAM_ERROR']);
    // The fake did quote both: what the function must keep out.
    expect(JSON.stringify(ctx.openai.requests)).toContain('otters');
    const logged = JSON.stringify(ctx.fn.logs);
    const line = ctx.fn.logs.findLast(entry => entry.code === 'UPSTREAM_ERROR');
    expect(JSON.stringify(line?.err)).toMatch(/\[redacted\].*\[prompt\]/);
    for (const text of [logged, JSON.stringify(response.body)]) {
      for (const secret of ['sk-test-key', 'otters', ALICE, BOB]) expect(text).not.toContain(secret);
    }
  });

  test('with LOG_PROMPTS=false no prompt and no key reaches the logs', () => {
    const logs = JSON.stringify(ctx.fn.logs);
    expect(ctx.fn.logs.some(line => line.message === 'generation started')).toBe(true);
    expect(logs).not.toContain('pelicans');
    for (const secret of ['sk-test-key', ALICE, BOB]) expect(logs).not.toContain(secret);
    expect(
      ctx.fn.logs.some(
        line => (line['logging.googleapis.com/labels'] as {caller?: string})?.caller === 'alice',
      ),
    ).toBe(true);
  });
});

describe('an OpenAI key that is not sk-shaped, quoted back by a gateway', () => {
  const GATEWAY_KEY = 'gw-gateway-secret-0123456789';
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let fn: RunningFunction;
  beforeAll(async () => {
    openai = await startFakeOpenAI({apiKey: GATEWAY_KEY});
    fn = await startFunction({
      OPENAI_API_KEY: GATEWAY_KEY,
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      DATA_DIR: dataDir(),
    });
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
  });
  beforeEach(() => openai.reset());

  const failedJobs = async () => (await getJson(`${fn.url}/jobs?status=failed`)).body.jobs as unknown[];

  test('a 400 quoting it leaves it out of the answer and the stored job error', async () => {
    openai.injectFault({kind: 'echo_secrets', status: 400});
    const response = await postJson(`${fn.url}/generate`, {prompt: 'a harbour at night'});
    expect([response.status, response.body.code]).toEqual([400, 'VALIDATION_ERROR']);
    // The fake did quote it, and the rest of its message still reaches the caller.
    expect(JSON.stringify(openai.requests)).toContain(GATEWAY_KEY);
    expect(response.body.error).toContain('Gateway rejected the request');
    expect(response.body.error).toContain('[redacted]');
    const jobs = await failedJobs();
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatchObject({status: 'failed', error: {code: 'VALIDATION_ERROR'}});
    for (const text of [JSON.stringify(response.body), JSON.stringify(jobs), JSON.stringify(fn.logs)])
      expect(text).not.toContain(GATEWAY_KEY);
  });

  test('nor in the failures of a partial job', async () => {
    openai.injectFault({kind: 'echo_secrets', status: 400}, {times: 1});
    // SVG makes one image per call: two calls, the first refused.
    const response = await postJson(`${fn.url}/generate`, {
      prompt: 'two harbours',
      model: 'gpt-image-2',
      output_format: 'svg',
      count: 2,
      allow_partial: true,
    });
    expect([response.status, response.body.status]).toEqual([200, 'partial']);
    expect(response.body.failures).toHaveLength(1);
    expect(response.body.failures[0].error).toContain('[redacted]');
    const stored = await getJson(`${fn.url}/jobs/${response.body.job_id}`);
    for (const text of [JSON.stringify(response.body), JSON.stringify(stored.body)])
      expect(text).not.toContain(GATEWAY_KEY);
  });
});
