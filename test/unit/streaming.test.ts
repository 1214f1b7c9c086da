import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http';
import type {AddressInfo} from 'node:net';
import {openApiDocument} from '../../src/api/openapi';
import {
  JOB_EVENTS,
  PARTIAL_IMAGE_BUDGET_BYTES,
  PartialImageBudget,
  STREAM_LIMIT_BYTES,
  completionReserve,
} from '../../src/api/job-answer';
import {ROUTES} from '../../src/api/routes';
import {EventStream, acceptsEventStream} from '../../src/api/sse';
import {imageView, jobView} from '../../src/api/views';
import type {JobRecord} from '../../src/core/records';
import {OpenApiValidator} from '../support/openapi-validator';
import {finishedJob} from '../support/records';
import {postStream} from '../support/sse-client';

describe('acceptsEventStream', () => {
  const accepts = (accept: string | undefined) =>
    acceptsEventStream({headers: accept === undefined ? {} : {accept}} as IncomingMessage);

  test.each([
    ['text/event-stream', true],
    ['application/json, text/event-stream', true],
    ['TEXT/EVENT-STREAM; q=0.2', true],
    ['text/event-stream;q=0', false],
    ['application/json', false],
    ['*/*', false],
    [undefined, false],
  ])('%s: %s', (accept, expected) => expect(accepts(accept)).toBe(expected));
});

describe('EventStream', () => {
  let server: Server;
  let url: string;
  let handler: (res: ServerResponse) => void;

  beforeAll(async () => {
    server = createServer((_req, res) => handler(res));
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise(resolve => server.close(resolve));
  });

  test('sends nothing before the first event, then numbers every event', async () => {
    let startedBefore: boolean | undefined;
    handler = res => {
      const stream = new EventStream(res);
      startedBefore = stream.started;
      stream.setHeader('X-Early', 'yes');
      stream.send('first', {a: 1});
      stream.setHeader('X-Late', 'no');
      stream.send('second', {text: 'line\nbreak'});
      stream.end();
    };
    const answer = await postStream(url, {});
    expect(startedBefore).toBe(false);
    expect(answer.headers.get('x-early')).toBe('yes');
    expect(answer.headers.get('x-late')).toBeNull();
    expect(answer.events.map(({id, event, data}) => ({id, event, data}))).toEqual([
      {id: '1', event: 'first', data: {a: 1}},
      {id: '2', event: 'second', data: {text: 'line\nbreak'}},
    ]);
  });

  test('sizeOf is the size the event takes on the wire', async () => {
    let sizes: number[] = [];
    let written = 0;
    handler = res => {
      const stream = new EventStream(res);
      const json = JSON.stringify({text: 'ünïcode'});
      sizes = [stream.sizeOf('e', json)];
      stream.sendSerialized('e', json);
      written = stream.bytesWritten;
      stream.end();
    };
    const answer = await postStream(url, {});
    expect(sizes).toEqual([written]);
    expect(answer.bytes).toBe(written);
  });

  test('sends a comment while idle', async () => {
    let stream: EventStream | undefined;
    handler = res => {
      stream = new EventStream(res, {heartbeatMs: 5});
      stream.send('open', {});
    };
    const answer = await postStream(url, {}, {stopAfterComment: true});
    stream?.end();
    expect(answer.comments[0]).toBe('ping');
  });

  test('a caller that went away makes later events no-ops', async () => {
    const gone = new Promise<EventStream>(resolve => {
      handler = res => {
        const stream = new EventStream(res);
        stream.send('open', {});
        res.once('close', () => resolve(stream));
      };
    });
    const answer = await postStream(url, {}, {stopAfter: event => event.event === 'open'});
    expect(answer.aborted).toBe(true);
    const stream = await gone;
    expect(stream.disconnected).toBe(true);
    const before = stream.bytesWritten;
    expect(() => stream.send('later', {})).not.toThrow();
    stream.end();
    expect(stream.bytesWritten).toBe(before);
  });
});

describe('PartialImageBudget', () => {
  test('admits partial images until one does not fit, then none', () => {
    const budget = new PartialImageBudget(100);
    expect([budget.admit(40), budget.admit(40), budget.admit(30), budget.admit(10)]).toEqual([
      true,
      true,
      false,
      false,
    ]);
    expect([budget.sent, budget.dropped, budget.exhausted]).toEqual([2, 2, true]);
  });
});

describe('completionReserve', () => {
  /** The largest request: 10 images, a 32,000-character prompt of 4-byte characters, full metadata. */
  function largestJob(): JobRecord {
    const job = finishedJob({prompt: '🦉'.repeat(32_000)}, 10);
    job.metadata = Object.fromEntries(
      Array.from({length: 20}, (_, i) => [`key-${i}`.padEnd(64, 'k'), 'v'.repeat(512)]),
    );
    job.parameters.safety_identifier = 's'.repeat(256);
    job.failures = [];
    return job;
  }
  /** A signed URL is about 1.5 KB; allow twice that. */
  const links = async () => ({
    url: `https://storage.googleapis.com/${'u'.repeat(3000)}`,
    url_expires_at: new Date().toISOString(),
    gcs_uri: `gs://bucket/${'p'.repeat(120)}`,
  });
  const bytes = (event: string, data: unknown) =>
    Buffer.byteLength(`id: 99\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);

  test('bounds what follows the partial images, and leaves them room under the limit', async () => {
    const job = largestJob();
    let after = bytes('job.completed', await jobView(job, links));
    for (const image of job.images)
      after += bytes('image.completed', {index: image.index, image: await imageView(image, job, links)});
    const reserve = completionReserve({...job, images: []});
    expect(after).toBeLessThanOrEqual(reserve);
    // Even for the largest job, partial images keep more than half the budget.
    expect(reserve).toBeLessThan(PARTIAL_IMAGE_BUDGET_BYTES / 2);
    expect(PARTIAL_IMAGE_BUDGET_BYTES).toBeLessThan(STREAM_LIMIT_BYTES);
  });
});

describe('the OpenAPI document', () => {
  const doc = openApiDocument(ROUTES) as any;

  test.each(['/generate', '/'])('POST %s documents the event stream and its events', path => {
    const content = doc.paths[path].post.responses['200'].content;
    expect(Object.keys(content)).toEqual(['application/json', 'text/event-stream']);
    const schema = content['text/event-stream'].schema;
    const events = (schema.anyOf ?? schema.oneOf).map(
      (variant: {properties: {event: {const: string}}}) => variant.properties.event.const,
    );
    expect(events).toEqual(Object.keys(JOB_EVENTS));
    expect(events).toEqual(['job.created', 'image.partial', 'image.completed', 'job.completed', 'error']);
  });

  test('events are checked against it', () => {
    const validator = new OpenApiValidator();
    const created = {job_id: '0b6f4f0e-0000-4000-8000-000000000000', model: 'm', count: 1, warnings: []};
    expect(() =>
      validator.checkEvent('POST', 'http://x/generate', {id: '1', event: 'job.created', data: created}),
    ).not.toThrow();
    expect(() =>
      validator.checkEvent('POST', 'http://x/generate', {id: '1', event: 'job.created', data: {}}),
    ).toThrow(/does not match/);
    expect(() =>
      validator.checkEvent('POST', 'http://x/generate', {id: '1', event: 'job.started', data: created}),
    ).toThrow(/does not match/);
  });
});
