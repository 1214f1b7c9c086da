import {createHash, randomBytes} from 'node:crypto';
import {createServer, type Server} from 'node:http';
import type {AddressInfo} from 'node:net';
import {gzipSync} from 'node:zlib';
import {parseJsonObject} from '../../src/api/body';
import {readRouteBody} from '../../src/api/route-body';
import {editRoutes} from '../../src/api/routes/edits';
import type {Config} from '../../src/config';
import {isAppError} from '../../src/core/errors';
import {parseEditBody, type GenerateRequest} from '../../src/core/generation';
import {imageBytesOf} from '../../src/core/image-bytes';
import {rawRequest} from '../support/raw-http';

const spec = editRoutes[0]!.body!;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** What a read gives: the prompt and the inputs' hashes and sizes (or kinds), or the error. */
async function outcomeOf(read: () => GenerateRequest | Promise<GenerateRequest>) {
  try {
    const request = await read();
    const refs = [...(request.edit?.images ?? []), request.edit?.mask, request.edit?.markup];
    return {
      prompt: request.prompt,
      inputs: refs.map(ref =>
        ref?.kind === 'bytes' ? [ref.data.sha256, ref.data.size] : (ref?.kind ?? null),
      ),
    };
  } catch (error) {
    return isAppError(error)
      ? {code: error.code, message: error.message, details: error.details}
      : {error: String(error)};
  }
}

/** The same body parsed whole, as JSON bodies were read before: what the streamed read must give. */
const wholeAnswerOf = (text: string) => outcomeOf(() => parseEditBody(parseJsonObject(Buffer.from(text))));

describe('an edit as JSON: base64 decoded as it arrives', () => {
  let server: Server;
  let url = '';
  beforeAll(async () => {
    server = createServer(async (req, res) => {
      const payload = JSON.stringify(
        await outcomeOf(() => readRouteBody(spec, req, res, {maxUploadBytes: 1024 * 1024} as Config)),
      );
      res.writeHead(200, {'content-type': 'application/json', 'content-length': Buffer.byteLength(payload)});
      res.end(payload);
    });
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise(resolve => server.close(resolve)));

  /** Sends `body` in chunks of `size` bytes (chunked transfer coding), as sent or gzip. */
  async function send(body: string | Buffer, size = 4093, headers = 'Content-Type: application/json') {
    const chunks: Buffer[] = [];
    const bytes = Buffer.from(body);
    for (let i = 0; i < bytes.length; i += size) {
      const chunk = bytes.subarray(i, i + size);
      chunks.push(
        Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]),
      );
    }
    const response = await rawRequest(url, {
      head: `POST / HTTP/1.1\r\nHost: x\r\n${headers}\r\nTransfer-Encoding: chunked`,
      stream: [...chunks, Buffer.from('0\r\n\r\n')],
    });
    return JSON.parse(response.body) as unknown;
  }

  const image = randomBytes(300_000);
  const mask = randomBytes(70_000);
  const b64 = image.toString('base64');
  const body = JSON.stringify({
    prompt: 'x',
    images: [{b64_json: b64}, {image_id: 'img_1'}],
    mask: {b64_json: mask.toString('base64')},
  });

  test('gives each input its bytes and hash, as the whole body parsed would', async () => {
    const expected = {
      prompt: 'x',
      inputs: [[sha256(image), image.length], 'image_id', [sha256(mask), mask.length], null],
    };
    expect(await wholeAnswerOf(body)).toEqual(expected);
    expect(await send(body)).toEqual(expected);
    expect(await send(body, 1000)).toEqual(expected);
    // Escaped slashes, and gzip cut anywhere.
    const escaped = body.replaceAll('/', '\\/');
    expect(await send(escaped, 777)).toEqual(expected);
    expect(
      await send(gzipSync(escaped), 501, 'Content-Type: application/json\r\nContent-Encoding: gzip'),
    ).toEqual(expected);
  });

  test.each([
    [
      'base64 that is not',
      JSON.stringify({prompt: 'x', images: [{b64_json: `${b64.slice(0, 90_000)}*${b64}`}]}),
    ],
    [
      'padding inside',
      JSON.stringify({prompt: 'x', images: [{b64_json: `${b64.slice(0, 90_000)}=A${b64}`}]}),
    ],
    ['a short value', JSON.stringify({prompt: 'x', images: [{b64_json: 'AA'}], mask: {b64_json: ''}})],
    ['a value that is not a string', JSON.stringify({prompt: 'x', images: [{b64_json: 12}]})],
    [
      'two images in one reference',
      JSON.stringify({prompt: 'x', images: [{b64_json: b64, image_id: 'img_1'}]}),
    ],
    [
      'an unknown field',
      JSON.stringify({prompt: 'x', images: [{b64_json: b64}], markup: {b64_json: b64, x: 1}}),
    ],
    ['JSON cut short', body.slice(0, 200_000)],
    ['an escape that is not one', body.replace('"prompt":"x"', '"prompt":"\\x"')],
    ['a JSON scalar', '"x"'],
    ['an empty body', '  '],
  ])('refuses %s as before, with the same code, message and fields', async (_what, sent) => {
    const answer = await send(sent);
    expect(answer).toEqual(JSON.parse(JSON.stringify(await wholeAnswerOf(sent))));
    expect((answer as {code?: string}).code).toMatch(/VALIDATION_ERROR|INVALID_JSON/);
  });

  test('refuses bytes that are not UTF-8 after a base64 value as such', async () => {
    const sent = Buffer.concat([Buffer.from(body.slice(0, -2)), Buffer.from([0xff]), Buffer.from('"}')]);
    expect(await send(sent)).toMatchObject({
      code: 'INVALID_JSON',
      message: 'The request body is not valid UTF-8',
    });
  });

  test('refuses a body over the limit, as sent or inflated', async () => {
    const large = JSON.stringify({
      prompt: 'x',
      images: [{b64_json: randomBytes(800_000).toString('base64')}],
    });
    expect(await send(large)).toMatchObject({code: 'PAYLOAD_TOO_LARGE'});
    expect(
      await send(gzipSync(large), 4093, 'Content-Type: application/json\r\nContent-Encoding: gzip'),
    ).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
    });
  });
});

describe('parseEditBody with base64 the reader decoded', () => {
  test('takes each decoded value by its token, as it was read, and judges the rest as sent', () => {
    const bytes = imageBytesOf(randomBytes(1000));
    const token = randomBytes(18).toString('base64');
    const request = parseEditBody(
      {prompt: 'x', images: [{b64_json: token}, {b64_json: 'AAAA'}]},
      new Map([[token, bytes]]),
    );
    const [first, second] = request.edit!.images;
    expect(first).toEqual({kind: 'bytes', data: bytes, filename: 'image'});
    expect(first?.kind === 'bytes' && first.data).toBe(bytes);
    expect(second?.kind === 'bytes' && second.data.size).toBe(3);
    // Out of that parse, a token is base64 text like any other.
    const later = parseEditBody({prompt: 'x', images: [{b64_json: token}]}).edit!.images[0];
    expect(later?.kind === 'bytes' && later.data.size).toBe(18);
  });
});
