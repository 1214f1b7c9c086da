import {createServer, type IncomingMessage, type Server} from 'node:http';
import type {AddressInfo} from 'node:net';
import {gzipSync} from 'node:zlib';
import {z} from 'zod';
import {readRouteBody} from '../../src/api/route-body';
import type {BodySpec} from '../../src/api/route';
import type {Config} from '../../src/config';
import {AppError, isAppError} from '../../src/core/errors';
import {chunksOf, errorOf, rawRequest} from '../support/raw-http';

/** A stand-in for a multipart reader: reads the stream itself, up to `maxBytes`. */
async function readText(req: IncomingMessage, maxBytes: number): Promise<{text: string}> {
  let text = '';
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > maxBytes) throw new AppError('PAYLOAD_TOO_LARGE', 'too large for the reader');
  }
  return {text};
}

/** One route that takes JSON and, besides, text/csv read by its own reader, with a 1 KiB limit. */
describe('a route that reads a media type besides JSON itself', () => {
  let server: Server;
  let url = '';
  const reads: string[] = [];
  const spec: BodySpec<unknown> = {
    schema: z.object({}),
    parse: body => ({json: body}),
    streamed: {
      'text/csv': {
        schema: z.string(),
        read: async (req, maxBytes) => {
          reads.push(req.headers['content-type'] ?? '');
          return readText(req, maxBytes);
        },
      },
    },
  };
  beforeAll(async () => {
    server = createServer(async (req, res) => {
      let status = 200;
      let answer: unknown;
      try {
        answer = await readRouteBody(spec, req, res, {maxBodyBytes: 1024} as Config);
      } catch (error) {
        status = 400;
        answer = {
          status: 'failed',
          code: isAppError(error) ? error.code : 'SERVICE_ERROR',
          error: String(error),
        };
      }
      const payload = JSON.stringify(answer);
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(payload);
    });
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise(resolve => server.close(resolve)));
  beforeEach(() => reads.splice(0));

  const send = async (body: string | Buffer, headers: Record<string, string>) =>
    (await (await fetch(url, {method: 'POST', headers, body})).json()) as Record<string, any>;

  test('gets that body unread, with its Content-Type, to read as it arrives', async () => {
    expect(await send('a,b\n1,2', {'content-type': 'text/csv; header=present'})).toEqual({text: 'a,b\n1,2'});
    expect(reads).toEqual(['text/csv; header=present']);
  });

  test('never calls the reader for a declared length over the limit, or an encoded body', async () => {
    const declared = await rawRequest(url, {
      head: 'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 4096',
    });
    expect([declared.status, JSON.parse(declared.body).code]).toEqual([400, 'PAYLOAD_TOO_LARGE']);
    const gzipped = await send(gzipSync('a,b'), {'content-type': 'text/csv', 'content-encoding': 'gzip'});
    expect(gzipped.code).toBe('UNSUPPORTED_MEDIA_TYPE');
    expect(reads).toEqual([]);
  });

  test('discards what a failed reader left on the wire, so the answer arrives', async () => {
    const response = await rawRequest(url, {
      head: 'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked',
      stream: [...chunksOf(512, 64)].map(chunk =>
        Buffer.concat([Buffer.from('200\r\n'), chunk, Buffer.from('\r\n')]),
      ),
    });
    expect(errorOf(response).code).toBe('PAYLOAD_TOO_LARGE');
  });

  test('still takes JSON, and names both types when refusing another', async () => {
    expect(await send('{"a":1}', {'content-type': 'application/json'})).toEqual({json: {a: 1}});
    const refused = await send('a=1', {'content-type': 'text/plain'});
    expect(refused.code).toBe('UNSUPPORTED_MEDIA_TYPE');
    expect(refused.error).toMatch(/send application\/json or text\/csv/);
  });
});
