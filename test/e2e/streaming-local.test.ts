import {createHash, createHmac, randomUUID} from 'node:crypto';
import {existsSync, readdirSync} from 'node:fs';
import {join, relative} from 'node:path';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startFunction, type RunningFunction} from '../support/function-server';
import {startHttpGate, type HttpGate} from '../support/http-gate';
import {OpenApiValidator} from '../support/openapi-validator';
import {postStream, type ReceivedEvent} from '../support/sse-client';
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

describe('streamed generation: each image.completed URL serves its image at once', () => {
  const CAROL = 'sk-stream-carol-00000000000001';
  const BOB = 'sk-stream-bob-0000000000000001';
  const SIGNING_SECRET = 'a-url-signing-secret-of-32-characters';
  const validator = new OpenApiValidator();
  let openai: FakeOpenAI;
  let gate: HttpGate;
  /** No API keys: plain proxy URLs. */
  let open: RunningFunction;
  /** API keys: signed proxy URLs. */
  let keyed: RunningFunction;

  beforeAll(async () => {
    openai = await startFakeOpenAI();
    // OpenAI's answers pass a gate, so the second image can wait while the first one's URL is read.
    gate = await startHttpGate(openai.url.replace(/\/v1$/, ''));
    const env = {OPENAI_API_KEY: 'sk-test-key', OPENAI_BASE_URL: `${gate.url}/v1`, DATA_DIR: dataDir()};
    open = await startFunction(env);
    keyed = await startFunction({
      ...env,
      API_KEYS: `carol:${CAROL},bob:${BOB}`,
      URL_SIGNING_SECRET: SIGNING_SECRET,
    });
  });
  afterAll(async () => {
    await open.close();
    await keyed.close();
    await gate.close();
    await openai.close();
  });

  interface Served {
    status: number;
    contentType: string | null;
    sha256: string;
  }

  async function fetchImage(url: string, headers: Record<string, string> = {}): Promise<Served> {
    const response = await fetch(url, {headers});
    const bytes = Buffer.from(await response.arrayBuffer());
    return {
      status: response.status,
      contentType: response.headers.get('content-type'),
      sha256: createHash('sha256').update(bytes).digest('hex'),
    };
  }

  /**
   * Streams a generation of two images whose second upstream answer is held
   * until `whileRunning` has run on the first image.completed event; every
   * image.completed URL is fetched as soon as its event arrives.
   */
  async function streamTwo(
    fn: RunningFunction,
    headers: Record<string, string>,
    whileRunning: (event: ReceivedEvent) => Promise<void> = async () => undefined,
  ) {
    let answered = 0;
    const second = gate.hold(request => request.path.startsWith('/v1/images/') && ++answered === 2);
    const fetched: Promise<Served>[] = [];
    const during: Promise<void>[] = [];
    const answer = await postStream(
      `${fn.url}/generate`,
      {prompt: 'two boats', count: 2, stream: true, partial_images: 0},
      {
        headers,
        stopAfter: event => {
          if (event.event !== 'image.completed') return false;
          const served = fetchImage(event.data.image.url);
          fetched.push(served);
          if (fetched.length === 1) {
            // The second image is held upstream: the job is still running.
            during.push(served.then(() => whileRunning(event)).finally(() => second.release()));
          }
          return false;
        },
      },
    );
    second.release();
    await Promise.all(during);
    const events = answer.events;
    const completed = events.filter(event => event.event === 'image.completed');
    const done = events.find(event => event.event === 'job.completed');
    expect(events.map(event => event.event)).toEqual([
      'job.created',
      'image.completed',
      'image.completed',
      'job.completed',
    ]);
    for (const {id, event, data} of events)
      validator.checkEvent('POST', `${fn.url}/generate`, {id, event, data});
    return {completed, done: done!.data, served: await Promise.all(fetched)};
  }

  const expectServed = (completed: ReceivedEvent[], served: Served[]) =>
    expect(served).toEqual(
      completed.map(event => ({
        status: 200,
        contentType: event.data.image.content_type,
        sha256: event.data.image.sha256,
      })),
    );

  test('without API keys: the plain proxy URL of each image answers 200 with its bytes', async () => {
    const {completed, done, served} = await streamTwo(open, {});
    expectServed(completed, served);
    expect(done.status).toBe('completed');
    expect(completed.map(event => event.data.image.sha256).sort()).toEqual(
      done.images.map((image: {sha256: string}) => image.sha256).sort(),
    );
  });

  test('with API keys: the signed URL serves it; to another caller the image is as missing as a missing one', async () => {
    const seen: Record<string, unknown> = {};
    const {completed, served} = await streamTwo(keyed, {'x-api-key': CAROL}, async event => {
      const signed = new URL(event.data.image.url);
      expect(signed.searchParams.get('signature')).toMatch(/^[0-9a-f]{64}$/);
      // The same image without the URL's own credential: the caller's key decides.
      const bare = new URL(signed);
      bare.searchParams.delete('expires');
      bare.searchParams.delete('signature');
      const missing = new URL(bare);
      missing.pathname = `/images/${randomUUID()}`;
      const answer = async (url: URL, key: string) => {
        const response = await fetch(url, {headers: {'x-api-key': key}});
        const body = response.headers.get('content-type')?.startsWith('application/json')
          ? await response.json()
          : null;
        if (body) validator.check('GET', `${url.origin}${url.pathname}`, response.status, body);
        return {status: response.status, code: (body as {code?: string} | null)?.code};
      };
      seen.owner = (await fetchImage(bare.href, {'x-api-key': CAROL})).status;
      seen.other = await answer(bare, BOB);
      seen.nobody = await answer(missing, BOB);
      // The job a URL names is signed with it: naming another job makes it a forgery.
      const forged = new URL(signed);
      forged.searchParams.set('job', randomUUID());
      seen.forged = (await fetch(forged)).status;
    });
    expectServed(completed, served);

    // A URL signed before links named their job (HMAC of the id and the expiry only) still opens the image.
    const image = completed[0]!.data.image;
    const key = createHash('sha256').update(`imagegen proxy URLs\n${SIGNING_SECRET}`).digest();
    const expires = Math.floor(Date.now() / 1000) + 300;
    const signature = createHmac('sha256', key).update(`${image.id}\n${expires}`).digest('hex');
    const old = await fetchImage(`${keyed.url}/images/${image.id}?expires=${expires}&signature=${signature}`);
    expect(old).toEqual({status: 200, contentType: image.content_type, sha256: image.sha256});

    expect(seen).toEqual({
      owner: 200,
      other: {status: 404, code: 'IMAGE_NOT_FOUND'},
      nobody: {status: 404, code: 'IMAGE_NOT_FOUND'},
      forged: 401,
    });
  });
});
