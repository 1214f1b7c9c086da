import {Writable} from 'node:stream';
import {childHiding, createLogger, traceFields, urlForLog} from '../../src/logger';

describe('traceFields', () => {
  test('X-Cloud-Trace-Context gives the trace, span (hex) and sampling', () => {
    expect(traceFields({'x-cloud-trace-context': '105445aa7843bc8bf206b12000100000/1;o=1'}, 'proj')).toEqual({
      'logging.googleapis.com/trace': 'projects/proj/traces/105445aa7843bc8bf206b12000100000',
      'logging.googleapis.com/spanId': '0000000000000001',
      'logging.googleapis.com/trace_sampled': true,
    });
  });

  test('W3C traceparent works too', () => {
    expect(
      traceFields({traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'}, 'proj'),
    ).toEqual({
      'logging.googleapis.com/trace': 'projects/proj/traces/4bf92f3577b34da6a3ce929d0e0e4736',
      'logging.googleapis.com/spanId': '00f067aa0ba902b7',
      'logging.googleapis.com/trace_sampled': true,
    });
  });

  test('without a project the bare trace id is kept; garbage gives nothing', () => {
    expect(traceFields({'x-cloud-trace-context': 'abcdefabcdefabcdefabcdefabcdefab'}, undefined)).toEqual({
      'logging.googleapis.com/trace': 'abcdefabcdefabcdefabcdefabcdefab',
    });
    expect(traceFields({'x-cloud-trace-context': 'nope', traceparent: 'also-nope'}, 'proj')).toEqual({});
  });
});

describe('createLogger', () => {
  test('writes Cloud Logging JSON lines: severity, message, time; hides keys', () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const logger = createLogger('info', sink);
    logger.warn({apiKey: 'sk-secret', headers: {authorization: 'Bearer x'}}, 'careful');
    logger.debug('not at info');
    expect(lines).toEqual([
      {
        severity: 'WARNING',
        time: expect.any(String),
        message: 'careful',
        apiKey: '[redacted]',
        headers: {authorization: '[redacted]'},
      },
    ]);
  });
});

describe('errors in logs', () => {
  function capture(secrets: string[] = []) {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    return {lines, logger: createLogger('info', sink, secrets)};
  }

  test('never show a configured secret or an OpenAI-shaped key, in messages, causes, stacks or fields', () => {
    const {lines, logger} = capture(['caller-key-0123456789', 'sk-configured-key']);
    const root = new Error('upstream said: Bearer sk-configured-key');
    const error = Object.assign(new Error('request failed for caller-key-0123456789', {cause: root}), {
      body: {message: 'key sk-proj-abcdefghijklmnopqrstuvwxyz0123 is wrong'},
      status: 401,
    });
    logger.error({err: error}, 'failed');
    const text = JSON.stringify(lines);
    for (const secret of ['caller-key-0123456789', 'sk-configured-key', 'sk-proj-abcdefghijkl']) {
      expect(text).not.toContain(secret);
    }
    expect(lines[0]).toMatchObject({
      err: {
        type: 'Error',
        message: 'request failed for [redacted]: upstream said: Bearer [redacted]',
        stack: expect.stringContaining('caused by: Error: upstream said: Bearer [redacted]'),
        body: {message: 'key [redacted] is wrong'},
        status: 401,
      },
    });
  });

  test("a child hiding a request's prompts hides them as sent and as JSON-escaped, from when they are added", () => {
    const {lines, logger} = capture();
    const hidden: string[] = [];
    const child = childHiding(logger, {request: 1}, hidden);
    const prompt = 'a "quoted" lighthouse';
    const upstream = new Error(`bad request (prompt: ${prompt}; as JSON: ${JSON.stringify(prompt)})`);
    child.warn({err: upstream}, 'before');
    hidden.push(prompt);
    child.warn({err: upstream}, 'after');
    expect((lines[0]!.err as {message: string}).message).toContain('lighthouse');
    expect(lines[1]).toMatchObject({
      request: 1,
      err: {message: 'bad request (prompt: [prompt]; as JSON: "[prompt]")'},
    });
  });
});

describe('urlForLog', () => {
  test("hides a signed link's signature wherever it is in the query, and leaves other URLs as they are", () => {
    const sig = 'ab'.repeat(32);
    expect(urlForLog(`/images/x?expires=1&signature=${sig}`)).toBe(
      '/images/x?expires=1&signature=[redacted]',
    );
    expect(urlForLog(`/images/x?signature=${sig}&expires=1`)).toBe(
      '/images/x?signature=[redacted]&expires=1',
    );
    expect(urlForLog('/jobs?limit=5&status=failed')).toBe('/jobs?limit=5&status=failed');
    expect(urlForLog(undefined)).toBeUndefined();
  });
});
