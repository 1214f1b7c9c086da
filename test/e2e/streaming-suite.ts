import {randomUUID} from 'node:crypto';
import sharp from 'sharp';
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {OpenApiValidator} from '../support/openapi-validator';
import {
  names,
  postStream,
  type ReceivedEvent,
  type StreamAnswer,
  type StreamOptions,
} from '../support/sse-client';

export interface StreamingBackend {
  /** Environment selecting the stores under test. */
  env(): Record<string, string>;
  /** Every stored object path. */
  objectPaths(): Promise<string[]>;
}

/** Cloud Run's cap on a streamed answer. */
const TEN_MB = 10_000_000;

/** Polls `probe` until it gives a value; the test's own timeout bounds the wait. */
async function until<T>(probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise(resolve => setTimeout(resolve, 20));
  }
}

const ofType = (answer: StreamAnswer, name: string) => answer.events.filter(e => e.event === name);

/**
 * What differs between two jobs made from the same request by nature: ids,
 * times, each image's bytes and hash (no two images are the same), and the
 * token usage (a streamed job makes one upstream call per image).
 */
function shapeOf(job: any): unknown {
  return {
    ...job,
    job_id: 'id',
    image_url: typeof job.image_url,
    usage: typeof job.usage,
    created_at: 'time',
    updated_at: 'time',
    completed_at: 'time',
    images: job.images.map((image: any) => ({
      ...image,
      id: 'id',
      url: typeof image.url,
      gcs_uri: typeof image.gcs_uri,
      url_expires_at: image.url_expires_at === null ? null : 'time',
      bytes: 'bytes',
      sha256: 'sha256',
    })),
  };
}

/**
 * Generation answered as Server-Sent Events, over real HTTP through the
 * Functions Framework, every event checked against the OpenAPI document. Run
 * once per storage backend.
 */
export function streamingSuite(name: string, backend: StreamingBackend): void {
  describe(`streamed generation: ${name}`, () => {
    const ctx = useFunctionWithFakeOpenAI(() => ({UPSTREAM_MAX_RETRIES: '0', ...backend.env()}));
    const validator = new OpenApiValidator();

    /** POSTs and reads the answer, stream or JSON, checking it against the document. */
    async function post(body: unknown, options: StreamOptions & {path?: string} = {}): Promise<StreamAnswer> {
      const url = `${ctx.fn.url}${options.path ?? '/generate'}`;
      const answer = await postStream(url, body, options);
      if (answer.headers.get('content-type')?.startsWith('text/event-stream')) {
        for (const {id, event, data} of answer.events) validator.checkEvent('POST', url, {id, event, data});
      } else {
        validator.check('POST', url, answer.status, answer.json);
      }
      return answer;
    }

    async function get(path: string): Promise<{status: number; body: any}> {
      const url = `${ctx.fn.url}${path}`;
      const response = await fetch(url);
      const body = await response.json();
      validator.check('GET', url, response.status, body);
      return {status: response.status, body};
    }

    /** The access log line of the generation that made `jobId`, once it is written. */
    const accessLogOf = (jobId: string) =>
      until(() =>
        ctx.fn.logs.find(
          line =>
            (line.httpRequest as {requestMethod?: string} | undefined)?.requestMethod === 'POST' &&
            (line['logging.googleapis.com/labels'] as Record<string, string> | undefined)?.job_id === jobId,
        ),
      );

    test('events come in order, each with an id, with the stream headers', async () => {
      const answer = await post({prompt: 'a lighthouse', stream: true, partial_images: 2});
      expect(answer.status).toBe(200);
      expect(answer.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
      expect(answer.headers.get('cache-control')).toBe('no-cache');
      expect(answer.headers.get('x-accel-buffering')).toBe('no');
      expect(answer.headers.get('content-length')).toBeNull();
      expect(names(answer)).toEqual([
        'job.created',
        'image.partial',
        'image.partial',
        'image.completed',
        'job.completed',
      ]);
      expect(answer.events.map(event => event.id)).toEqual(['1', '2', '3', '4', '5']);

      const [created, first, second, completed, done] = answer.events as [
        ReceivedEvent,
        ReceivedEvent,
        ReceivedEvent,
        ReceivedEvent,
        ReceivedEvent,
      ];
      expect(created.data).toEqual({
        job_id: done.data.job_id,
        model: 'gpt-image-2.6-sunburst',
        count: 1,
        warnings: [],
      });
      expect([first.data.index, first.data.partial_image_index]).toEqual([0, 0]);
      expect([second.data.index, second.data.partial_image_index]).toEqual([0, 1]);
      // Partial images are images, as OpenAI sent them.
      expect(first.data.content_type).toBe('image/png');
      const partial = await sharp(Buffer.from(first.data.b64_json, 'base64')).metadata();
      expect([partial.format, partial.width, partial.height]).toEqual(['png', 1024, 1024]);
      expect(completed.data).toEqual({index: 0, image: done.data.images[0]});
      expect(done.data).toMatchObject({status: 'completed', prompt: 'a lighthouse'});

      // One streamed upstream call, asking for the partial images.
      expect(ctx.openai.requests).toHaveLength(1);
      expect(ctx.openai.requests[0]!.body).toMatchObject({n: 1, stream: true, partial_images: 2});
      const log = await accessLogOf(done.data.job_id);
      expect(log).toMatchObject({httpRequest: {status: 200}});
      expect(log['logging.googleapis.com/labels']).toMatchObject({partial_images: '2'});
      expect(log.disconnected).toBeUndefined();
    });

    test('partial images reach the caller before the upstream call has ended', async () => {
      // The fake spreads its latency over the stream: partials at 1/3 and 2/3, the image at the end.
      ctx.openai.setLatency(1500);
      const answer = await post({prompt: 'a slow sunrise', stream: true, partial_images: 2});
      const [upstream] = ctx.openai.requests;
      const firstPartial = ofType(answer, 'image.partial')[0]!;
      expect(upstream?.firstPartialAt).toBeDefined();
      expect(upstream?.completedAt).toBeDefined();
      expect(firstPartial.at).toBeLessThan(upstream!.completedAt!);
    });

    test('the final body is the one a JSON request gets, and the job GET /jobs/:id keeps', async () => {
      const request = {
        prompt: 'two owls',
        count: 2,
        size: '1536x1024',
        output_format: 'webp',
        output_compression: 50,
        metadata: {case: 'same-result'},
      };
      const answer = await post({...request, stream: true, partial_images: 1});
      const plain = await post(request);
      expect(plain.status).toBe(200);
      const done = ofType(answer, 'job.completed')[0]!.data;

      expect(shapeOf(done)).toEqual(shapeOf(plain.json));
      expect(done.images).toHaveLength(2);
      expect(done.usage).toEqual(expect.objectContaining({total_tokens: expect.any(Number)}));
      expect((await get(`/jobs/${done.job_id}`)).body).toEqual(done);
      expect(shapeOf((await get(`/jobs/${done.job_id}`)).body)).toEqual(
        shapeOf((await get(`/jobs/${plain.json.job_id}`)).body),
      );
      for (const event of ofType(answer, 'image.completed')) {
        expect(event.data.image).toEqual(done.images[event.data.index]);
      }
      // Every image stored once, under its job.
      const paths = await backend.objectPaths();
      expect(paths.filter(path => path.includes(done.job_id))).toHaveLength(2);
      const partial = await sharp(
        Buffer.from(ofType(answer, 'image.partial')[0]!.data.b64_json, 'base64'),
      ).metadata();
      expect([partial.format, partial.width, partial.height]).toEqual(['webp', 1536, 1024]);
    });

    test('count > 1 streams one call per image, and their events interleave by index', async () => {
      const answer = await post({prompt: 'three kites', count: 3, stream: true, partial_images: 2});
      const events = names(answer);
      expect(events[0]).toBe('job.created');
      expect(events.at(-1)).toBe('job.completed');
      expect(events.filter(name => name === 'image.partial')).toHaveLength(6);
      for (const index of [0, 1, 2]) {
        const own = answer.events
          .filter(event => event.data.index === index && event.event.startsWith('image.'))
          .map(event => `${event.event} ${event.data.partial_image_index ?? ''}`.trim());
        expect(own).toEqual(['image.partial 0', 'image.partial 1', 'image.completed']);
      }
      expect(ctx.openai.requests).toHaveLength(3);
      for (const request of ctx.openai.requests) {
        expect(request.body).toMatchObject({n: 1, stream: true, partial_images: 2});
      }
      const done = ofType(answer, 'job.completed')[0]!.data;
      expect(done.images.map((image: {id: string}) => image.id)).toEqual(
        ofType(answer, 'image.completed')
          .sort((a, b) => a.data.index - b.data.index)
          .map(event => event.data.image.id),
      );
    });

    test('Accept: text/event-stream streams with 2 partial images unless partial_images says', async () => {
      const byHeader = await post(
        {prompt: 'asked by header'},
        {headers: {accept: 'application/json;q=0.5, text/event-stream'}},
      );
      expect(byHeader.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(names(byHeader)).toEqual([
        'job.created',
        'image.partial',
        'image.partial',
        'image.completed',
        'job.completed',
      ]);
      expect(ctx.openai.requests[0]!.body).toMatchObject({stream: true, partial_images: 2});

      const one = await post(
        {prompt: 'one partial', partial_images: 1},
        {headers: {accept: 'text/event-stream'}},
      );
      expect(ofType(one, 'image.partial')).toHaveLength(1);
      const refused = await post({prompt: 'not by q=0'}, {headers: {accept: 'text/event-stream;q=0'}});
      expect(refused.headers.get('content-type')).toMatch(/^application\/json/);
      expect(refused.json.status).toBe('completed');
    });

    test('"stream": false in the body wins over Accept: text/event-stream', async () => {
      const answer = await post(
        {prompt: 'asked not to stream', stream: false},
        {headers: {accept: 'text/event-stream'}},
      );
      expect(answer.headers.get('content-type')).toMatch(/^application\/json/);
      expect(answer.json.status).toBe('completed');
      expect(ctx.openai.requests[0]!.body).not.toHaveProperty('stream');
    });

    test.each(['gif', 'svg'])('%s output streams the job without partial images', async format => {
      const answer = await post({prompt: `a ${format}`, count: 2, output_format: format, stream: true});
      const events = names(answer);
      expect(events[0]).toBe('job.created');
      expect(events.slice(1, 3)).toEqual(['image.completed', 'image.completed']);
      expect(events.slice(3)).toEqual(['job.completed']);
      for (const request of ctx.openai.requests) expect(request.body).not.toHaveProperty('stream');
      const done = ofType(answer, 'job.completed')[0]!.data;
      expect(done.images.map((image: {content_type: string}) => image.content_type)).toEqual(
        format === 'gif' ? ['image/gif', 'image/gif'] : ['image/svg+xml', 'image/svg+xml'],
      );
    });

    test('a request made larger upstream and resized streams without partial images', async () => {
      const answer = await post({prompt: 'a red panda', model: 'dall-e-2', size: '256x256', stream: true});
      expect(names(answer)).toEqual(['job.created', 'image.completed', 'job.completed']);
      expect(ctx.openai.requests[0]!.body).toMatchObject({size: '1024x1024'});
      expect(ctx.openai.requests[0]!.body).not.toHaveProperty('stream');
      const {image} = ofType(answer, 'image.completed')[0]!.data;
      expect([image.width, image.height, image.size]).toEqual([256, 256, '256x256']);
    });

    test.each([
      ['an invalid parameter', {prompt: 'x', size: '999x1'}, {}, 400, 'VALIDATION_ERROR'],
      ['a model the catalogue does not know', {prompt: 'x', model: 'dall-e-9'}, {}, 400, 'VALIDATION_ERROR'],
      ['invalid JSON', '{"prompt":', {}, 400, 'INVALID_JSON'],
    ] as const)(
      'an error before the first event is a JSON error: %s',
      async (_, body, headers, status, code) => {
        const url = `${ctx.fn.url}/generate`;
        const response = await fetch(url, {
          method: 'POST',
          headers: {'content-type': 'application/json', accept: 'text/event-stream', ...headers},
          body: typeof body === 'string' ? body : JSON.stringify({...body, stream: true}),
        });
        expect(response.headers.get('content-type')).toMatch(/^application\/json/);
        const json = (await response.json()) as {code: string};
        validator.check('POST', url, response.status, json);
        expect([response.status, json.code]).toEqual([status, code]);
        expect(ctx.openai.requests).toHaveLength(0);
      },
    );

    test('a reused Idempotency-Key is a JSON error before the stream begins', async () => {
      const key = randomUUID();
      const first = await post({prompt: 'keyed', stream: true}, {headers: {'Idempotency-Key': key}});
      expect(names(first).at(-1)).toBe('job.completed');
      const reused = await post({prompt: 'another', stream: true}, {headers: {'Idempotency-Key': key}});
      expect([reused.status, reused.json.code]).toEqual([422, 'IDEMPOTENCY_KEY_REUSED']);
    });

    test('an upstream failure after the first partial is an error event that ends the stream', async () => {
      ctx.openai.injectFault({kind: 'stream_error'});
      const answer = await post({prompt: 'breaks midway', stream: true, partial_images: 2});
      expect(answer.status).toBe(200);
      expect(names(answer)).toEqual(['job.created', 'image.partial', 'error']);
      const error = ofType(answer, 'error')[0]!.data;
      expect(error).toMatchObject({status: 'failed', code: 'UPSTREAM_ERROR', error: expect.any(String)});
      const jobId = answer.events[0]!.data.job_id;
      // The job is recorded as failed, with nothing of it kept.
      const job = await get(`/jobs/${jobId}`);
      expect(job.body).toMatchObject({status: 'failed', images: [], error: {code: 'UPSTREAM_ERROR'}});
      expect((await backend.objectPaths()).filter(path => path.includes(jobId))).toEqual([]);
      const log = await accessLogOf(jobId);
      expect(log).toMatchObject({code: 'UPSTREAM_ERROR', httpRequest: {status: 502}, severity: 'ERROR'});
    });

    test('a caller who disconnects does not cancel the job: it completes, and the log says so', async () => {
      ctx.openai.setLatency(1000);
      const answer = await post(
        {prompt: 'left early', count: 2, stream: true, partial_images: 2},
        {stopAfter: event => event.event === 'job.created'},
      );
      expect(answer.aborted).toBe(true);
      const jobId = answer.events[0]!.data.job_id;
      const job = await until(async () => {
        const read = await get(`/jobs/${jobId}`);
        return read.body.status === 'running' ? undefined : read.body;
      });
      expect(job.status).toBe('completed');
      expect(job.images).toHaveLength(2);
      const log = await accessLogOf(jobId);
      expect(log).toMatchObject({disconnected: true, httpRequest: {status: 499}});
      expect(log.message).toBe('POST /generate 499');
    }, 20_000);

    test('the stream stays under 10 MB: partials stop at the budget, completed events all arrive', async () => {
      // 30 partial images of about 540 KB each (base64): 16 MB if they were all sent.
      const answer = await post({
        prompt: 'a wide, detailed panorama',
        model: 'gpt-image-2',
        size: '3840x2160',
        output_format: 'webp',
        output_compression: 90,
        count: 10,
        stream: true,
        partial_images: 3,
      });
      expect(answer.status).toBe(200);
      expect(answer.bytes).toBeLessThan(TEN_MB);
      const partials = ofType(answer, 'image.partial');
      expect(partials.length).toBeGreaterThan(0);
      expect(partials.length).toBeLessThan(30);
      const completed = ofType(answer, 'image.completed').map(event => event.data.index);
      expect(completed.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(names(answer).at(-1)).toBe('job.completed');
      const done = ofType(answer, 'job.completed')[0]!.data;
      expect(done.images).toHaveLength(10);
      const labels = (await accessLogOf(done.job_id))['logging.googleapis.com/labels'] as Record<
        string,
        string
      >;
      expect(Number(labels.partial_images)).toBe(partials.length);
      expect(Number(labels.partial_images) + Number(labels.partial_images_dropped)).toBe(30);
      expect(Number(labels.stream_bytes)).toBe(answer.bytes);
    }, 60_000);

    test('a replayed Idempotency-Key answers one job.completed with the stored job', async () => {
      const key = randomUUID();
      const body = {prompt: 'replay me', count: 2, stream: true, partial_images: 1};
      const first = await post(body, {headers: {'Idempotency-Key': key}});
      const done = ofType(first, 'job.completed')[0]!.data;
      const replay = await post(body, {headers: {'Idempotency-Key': key}});
      expect(replay.headers.get('idempotent-replayed')).toBe('true');
      expect(replay.events.map(event => [event.id, event.event])).toEqual([['1', 'job.completed']]);
      expect(replay.events[0]!.data).toEqual(done);
      // Asked without a stream, the replay is the JSON body.
      const {stream: _stream, ...plain} = body;
      const json = await post(plain, {headers: {'Idempotency-Key': key}});
      expect(json.headers.get('idempotent-replayed')).toBe('true');
      expect(json.json).toEqual(done);
      expect(ctx.openai.requests).toHaveLength(2);
    });

    test('the legacy payload at / streams too', async () => {
      const answer = await post(
        {input: {body: {prompt_image: 'legacy stream', stream: true, partial_images: 1}}},
        {path: '/'},
      );
      expect(names(answer)).toEqual(['job.created', 'image.partial', 'image.completed', 'job.completed']);
      expect(ofType(answer, 'job.completed')[0]!.data.prompt).toBe('legacy stream');
    });
  });
}
