import {gzipSync} from 'node:zlib';
import {getTestServer} from '@google-cloud/functions-framework/testing';
import * as functions from '@google-cloud/functions-framework';
import {DISCARD_LIMIT_BYTES} from '../../src/api/body';
import {installFrameworkAdapters} from '../../src/api/framework';
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {chunkFrame, chunksOf, errorOf, rawRequest} from '../support/raw-http';
import {useTempDir} from '../support/temp-dir';

const LIMIT = 64 * 1024;
const MIB = 1024 * 1024;

/** A valid generate request padded with spaces to `size` bytes: JSON the function would act on. */
function paddedRequest(size: number): Buffer {
  const json = Buffer.from(JSON.stringify({prompt: 'a bomb that must never be opened'}));
  return Buffer.concat([json, Buffer.alloc(size - json.length, 0x20)]);
}

describe('bodies are refused on the wire and as inflated, before anything else reads them', () => {
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    MAX_BODY_BYTES: String(LIMIT),
    UPSTREAM_MAX_RETRIES: '0',
  }));
  const head = (lines: string[]) => ['POST /generate HTTP/1.1', 'Host: localhost', ...lines].join('\r\n');

  test('a Content-Length over the limit is 413 before the body is asked for (no 100 Continue)', async () => {
    const response = await rawRequest(ctx.fn.url, {
      head: head(['Content-Type: application/json', `Content-Length: ${1024 * MIB}`, 'Expect: 100-continue']),
    });
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
    expect(response.interim).toEqual([]);
    expect(response.headers.connection).toBe('close');
  });

  test('a Content-Length over the limit is 413 while the body is still on its way', async () => {
    const response = await rawRequest(ctx.fn.url, {
      head: head(['Content-Type: application/json', `Content-Length: ${1024 * MIB}`]),
      body: paddedRequest(LIMIT / 2),
    });
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a body within its Content-Length asked for with Expect gets 100 Continue and is read', async () => {
    const body = JSON.stringify({prompt: 'x', count: 0});
    const response = await rawRequest(ctx.fn.url, {
      head: head([
        'Content-Type: application/json',
        `Content-Length: ${body.length}`,
        'Expect: 100-continue',
      ]),
      body,
    });
    expect(response.interim).toEqual([100]);
    expect(errorOf(response)).toMatchObject({status: 400, code: 'VALIDATION_ERROR'});
  });

  test('a chunked body without a content type is 413 once past the limit, though it never ends', async () => {
    const response = await rawRequest(ctx.fn.url, {
      head: head(['Transfer-Encoding: chunked']),
      stream: [...chunksOf(16 * 1024, 8)].map(chunkFrame),
    });
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a large chunked body without a content type gets the 413, not a reset connection', async () => {
    const response = await rawRequest(ctx.fn.url, {
      head: head(['Transfer-Encoding: chunked']),
      stream: [...[...chunksOf(64 * 1024, 128)].map(chunkFrame), Buffer.from('0\r\n\r\n')],
    });
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a client that reads only after sending far past the limit still gets the 413 (lingering close)', async () => {
    // More than the function discards before it closes its side: it must not reset the connection on the answer.
    const response = await rawRequest(ctx.fn.url, {
      head: head(['Content-Type: application/json', 'Transfer-Encoding: chunked']),
      stream: [...[...chunksOf(256 * 1024, 192)].map(chunkFrame), Buffer.from('0\r\n\r\n')],
      readAfterSending: true,
    });
    expect(response.bodyBytesSent).toBeGreaterThan(DISCARD_LIMIT_BYTES);
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a gzip body is refused once it inflates past the limit, before the rest of it arrives', async () => {
    // 64 MiB of JSON in well under a megabyte: only its first part is sent.
    const bomb = gzipSync(paddedRequest(64 * MIB));
    const response = await rawRequest(ctx.fn.url, {
      head: head([
        'Content-Type: application/json',
        'Content-Encoding: gzip',
        `Content-Length: ${bomb.length}`,
      ]),
      body: bomb.subarray(0, Math.min(bomb.length - 1, LIMIT / 2)),
    });
    expect(errorOf(response)).toMatchObject({status: 413, code: 'PAYLOAD_TOO_LARGE'});
    expect(ctx.openai.requests).toHaveLength(0);
    expect(errorOf(response).error).toMatch(/inflates to more than/);
  });

  test('a gzip body within the limit is inflated and served', async () => {
    const body = gzipSync(JSON.stringify({prompt: 'gzipped'}));
    const response = await fetch(`${ctx.fn.url}/generate`, {
      method: 'POST',
      headers: {'content-type': 'application/json', 'content-encoding': 'gzip'},
      body,
    });
    expect(response.status).toBe(200);
    ctx.openai.reset();
  });

  test.each([
    ['a truncated gzip stream', gzipSync('{"prompt":"x"}').subarray(0, 12)],
    ['bytes that are not gzip', Buffer.from('{"prompt":"not compressed"}')],
  ])('%s is 400 BAD_REQUEST', async (_case, body) => {
    const response = await rawRequest(ctx.fn.url, {
      head: head([
        'Content-Type: application/json',
        'Content-Encoding: gzip',
        `Content-Length: ${body.length}`,
      ]),
      body,
    });
    expect(errorOf(response)).toMatchObject({status: 400, code: 'BAD_REQUEST'});
  });

  test.each(['deflate', 'br', 'zstd', 'compress', 'gzip, gzip', 'x-garbage'])(
    'Content-Encoding %s is 415 with Accept-Encoding: gzip',
    async encoding => {
      const body = '{"prompt":"x"}';
      const response = await rawRequest(ctx.fn.url, {
        head: head([
          'Content-Type: application/json',
          `Content-Encoding: ${encoding}`,
          `Content-Length: ${body.length}`,
        ]),
        body,
      });
      expect(errorOf(response)).toMatchObject({status: 415, code: 'UNSUPPORTED_MEDIA_TYPE'});
      expect(response.headers['accept-encoding']).toBe('gzip');
    },
  );

  test('an over-limit body on a route that takes none is discarded and the connection still answers', async () => {
    const response = await rawRequest(ctx.fn.url, {
      head: ['GET /health HTTP/1.1', 'Host: localhost', `Content-Length: ${4 * MIB}`].join('\r\n'),
      stream: chunksOf(64 * 1024, 64),
    });
    expect(response.status).toBe(200);
  });
});

describe('the Functions Framework parses no body before the function', () => {
  test('its app keeps no body parser and no default ignored routes', async () => {
    const name = 'bodyParsersGone';
    let reached = 0;
    functions.http(name, (_req, res) => {
      reached++;
      res.status(204).end();
    });
    installFrameworkAdapters();
    const server = getTestServer(name);
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    try {
      const {port} = server.address() as {port: number};
      const favicon = await fetch(`http://127.0.0.1:${port}/favicon.ico`);
      expect(favicon.status).toBe(204);
      const stack = (server.listeners('request')[0] as unknown as {router: {stack: {name: string}[]}}).router
        .stack;
      expect(stack.map(layer => layer.name)).not.toEqual(
        expect.arrayContaining([expect.stringMatching(/Parser$/)]),
      );
      expect(reached).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise(resolve => server.close(resolve));
    }
  });
});

describe('content types: JSON in any of its spellings, nothing else', () => {
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({DATA_DIR: dataDir(), UPSTREAM_MAX_RETRIES: '0'}));
  const post = (body: string | Buffer, headers: Record<string, string>) =>
    rawRequest(ctx.fn.url, {
      head: [
        'POST /generate HTTP/1.1',
        'Host: localhost',
        `Content-Length: ${Buffer.byteLength(body)}`,
        ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
      ].join('\r\n'),
      body,
    });

  test.each([
    ['no Content-Type (as curl -d sends without -H)', {}],
    ['application/json', {'Content-Type': 'application/json'}],
    ['application/json; charset=UTF-8', {'Content-Type': 'application/json; charset=UTF-8'}],
    ['application/vnd.api+json', {'Content-Type': 'application/vnd.api+json'}],
    ['application/merge-patch+json', {'Content-Type': 'application/merge-patch+json'}],
    ['APPLICATION/JSON', {'Content-Type': 'APPLICATION/JSON'}],
  ])('%s is JSON', async (_case, headers) => {
    const response = await post(JSON.stringify({prompt: 'a kite'}), headers);
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toMatchObject({status: 'completed', prompt: 'a kite'});
  });

  test.each([
    'text/plain',
    'text/plain; charset=utf-8',
    'application/x-www-form-urlencoded',
    'application/xml',
    'application/octet-stream',
    'multipart/form-data; boundary=x',
    'application/jsonx',
    'application/json; charset=latin1',
    'not a media type',
  ])('%s is 415 UNSUPPORTED_MEDIA_TYPE', async type => {
    const response = await post(JSON.stringify({prompt: 'a kite'}), {'Content-Type': type});
    expect(errorOf(response)).toMatchObject({status: 415, code: 'UNSUPPORTED_MEDIA_TYPE'});
    expect(ctx.openai.requests).toHaveLength(0);
  });

  test('a urlencoded body with thousands of parameters is 415, never parsed', async () => {
    const body = Array.from({length: 5000}, (_, i) => `p${i}=${i}`).join('&');
    const response = await post(body, {'Content-Type': 'application/x-www-form-urlencoded'});
    expect(errorOf(response)).toMatchObject({status: 415, code: 'UNSUPPORTED_MEDIA_TYPE'});
  });

  test.each([
    ['[]', 'an array'],
    ['"a kite"', 'a string'],
    ['42', 'a number'],
    ['null', 'null'],
    ['true', 'a boolean'],
  ])('valid JSON that is not an object (%s) is told a JSON object is required', async (body, kind) => {
    const response = await post(body, {'Content-Type': 'application/json'});
    expect(errorOf(response)).toMatchObject({status: 400, code: 'VALIDATION_ERROR'});
    expect(errorOf(response).error).toBe(`(body): a JSON object is required, not ${kind}`);
  });

  test.each([
    ['an empty body', '', 'VALIDATION_ERROR'],
    ['malformed JSON', '{"prompt":', 'INVALID_JSON'],
    ['bytes that are not UTF-8', Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d]), 'INVALID_JSON'],
  ])('%s is 400 %s', async (_case, body, code) => {
    const response = await post(body, {'Content-Type': 'application/json'});
    expect(errorOf(response)).toMatchObject({status: 400, code});
  });
});
