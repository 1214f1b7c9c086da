import {existsSync, readdirSync} from 'node:fs';
import {join, relative} from 'node:path';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startFunction, type RunningFunction} from '../support/function-server';
import {postStream} from '../support/sse-client';
import {useTempDir} from '../support/temp-dir';
import {streamingSuite} from './streaming-suite';

const dataDir = useTempDir();

streamingSuite('local store', {
  env: () => ({DATA_DIR: dataDir()}),
  objectPaths: async () => {
    const root = join(dataDir(), 'objects');
    if (!existsSync(root)) return [];
    return readdirSync(root, {recursive: true, withFileTypes: true})
      .filter(entry => entry.isFile())
      .map(entry => relative(root, join(entry.parentPath, entry.name)));
  },
});

describe('streamed generation: refused before the stream begins', () => {
  const CALLER = 'sk-stream-caller-000000000001';
  const SMALL = 'sk-stream-small-0000000000001';
  let openai: FakeOpenAI;
  let fn: RunningFunction;
  let unconfigured: RunningFunction;

  beforeAll(async () => {
    openai = await startFakeOpenAI();
    fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir(),
      API_KEYS: `caller:${CALLER},small:${SMALL}:1`,
    });
    unconfigured = await startFunction({DATA_DIR: dataDir()});
  });
  afterAll(async () => {
    await fn.close();
    await unconfigured.close();
    await openai.close();
  });

  const streamed = {prompt: 'refused', count: 2, stream: true};

  test.each([
    ['without an API key', {}, 401, 'UNAUTHENTICATED'],
    ['over the daily quota', {authorization: `Bearer ${SMALL}`}, 429, 'QUOTA_EXCEEDED'],
  ])('%s: a JSON error', async (_, headers, status, code) => {
    const answer = await postStream(`${fn.url}/generate`, streamed, {headers});
    expect(answer.headers.get('content-type')).toMatch(/^application\/json/);
    expect([answer.status, answer.json.code]).toEqual([status, code]);
    expect(openai.requests).toHaveLength(0);
  });

  test('a function without its OpenAI key: a JSON error', async () => {
    const answer = await postStream(`${unconfigured.url}/generate`, streamed);
    expect(answer.headers.get('content-type')).toMatch(/^application\/json/);
    expect([answer.status, answer.json.code]).toEqual([500, 'SERVICE_ERROR']);
  });

  test('with a key and room in the quota, the same request streams', async () => {
    const answer = await postStream(`${fn.url}/generate`, streamed, {
      headers: {authorization: `Bearer ${CALLER}`},
    });
    expect(answer.events.map(event => event.event).at(-1)).toBe('job.completed');
  });
});
