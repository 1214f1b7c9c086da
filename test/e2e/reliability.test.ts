import {existsSync, readdirSync} from 'node:fs';
import {join} from 'node:path';
import {getJson, postJson, useFunctionWithFakeOpenAI} from '../support/function-server';
import {useTempDir} from '../support/temp-dir';

function objectCount(dataDir: string): number {
  const root = join(dataDir, 'objects');
  if (!existsSync(root)) return 0;
  return readdirSync(root, {recursive: true, withFileTypes: true}).filter(e => e.isFile()).length;
}

describe('upstream faults', () => {
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '2',
  }));

  const small = {prompt: 'retry'};

  test.each([
    [{kind: 'server_error', status: 503} as const],
    [{kind: 'connection_reset'} as const],
    [{kind: 'rate_limit', retryAfterSeconds: 1} as const],
  ])('a transient %j is retried and the job completes', async fault => {
    ctx.openai.injectFault(fault);
    const {status} = await postJson(`${ctx.fn.url}/generate`, small);
    expect(status).toBe(200);
    expect(ctx.openai.requests.filter(r => r.path === '/v1/images/generations')).toHaveLength(2);
  });

  test('retries stop after UPSTREAM_MAX_RETRIES and leave nothing behind', async () => {
    const before = objectCount(dataDir());
    ctx.openai.injectFault({kind: 'server_error', status: 502}, {times: 3});
    const {status, body} = await postJson(`${ctx.fn.url}/generate`, small);
    expect([status, body.code]).toEqual([502, 'UPSTREAM_ERROR']);
    expect(ctx.openai.requests).toHaveLength(3);
    expect(objectCount(dataDir())).toBe(before);
  });

  test('a refusal (400) is never retried', async () => {
    ctx.openai.injectFault({kind: 'content_policy'});
    const {status} = await postJson(`${ctx.fn.url}/generate`, small);
    expect(status).toBe(400);
    expect(ctx.openai.requests).toHaveLength(1);
  });

  test('a client that disconnects mid-generation still gets a whole job, not half of one', async () => {
    ctx.openai.setLatency(400);
    const tag = `disconnect-${Date.now()}`;
    const abort = new AbortController();
    const pending = fetch(`${ctx.fn.url}/generate`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({...small, count: 2, metadata: {tag}}),
      signal: abort.signal,
    }).catch((error: unknown) => error);
    while (ctx.openai.requests.length === 0) await new Promise(resolve => setTimeout(resolve, 10));
    abort.abort();
    expect(await pending).toMatchObject({name: 'AbortError'});
    // The job finishes on its own; poll for it rather than guess how long that takes.
    // The job is listed from the start (recorded running before the upstream call).
    let jobs: {images: {url: string; sha256: string}[]; status: string}[] = [];
    for (let i = 0; i < 100 && jobs[0]?.status !== 'completed'; i++) {
      await new Promise(resolve => setTimeout(resolve, 50));
      jobs = (await getJson(`${ctx.fn.url}/jobs?metadata.tag=${tag}`)).body.jobs;
    }
    expect(jobs).toHaveLength(1);
    expect(jobs[0]!.status).toBe('completed');
    expect(jobs[0]!.images).toHaveLength(2);
    for (const image of jobs[0]!.images) expect((await fetch(image.url)).status).toBe(200);
  });
});
