import {createHash, randomBytes} from 'node:crypto';
import {Readable} from 'node:stream';
import fc from 'fast-check';
import {readImageStream} from '../../src/adapters/openai/stream-parser';

/** `text` cut at the given offsets. */
function cut(text: string, offsets: number[]): AsyncIterable<Uint8Array> {
  const bytes = Buffer.from(text);
  const points = [...new Set([0, ...offsets.map(o => o % (bytes.length + 1)), bytes.length])].sort(
    (a, b) => a - b,
  );
  const chunks: Buffer[] = [];
  for (let i = 1; i < points.length; i++) chunks.push(bytes.subarray(points[i - 1], points[i]));
  return Readable.from(chunks);
}

function chunked(text: string, size: number): AsyncIterable<Uint8Array> {
  const offsets: number[] = [];
  for (let i = size; i < Buffer.byteLength(text); i += size) offsets.push(i);
  return cut(text, offsets);
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A stream as OpenAI sends it: two partial images, then the image. */
function upstream(image: Buffer, partials: Buffer[], newline = '\n'): string {
  const event = (name: string, data: unknown) =>
    `event: ${name}${newline}data: ${JSON.stringify(data)}${newline}${newline}`;
  return [
    ...partials.map((partial, index) =>
      event('image_generation.partial_image', {
        type: 'image_generation.partial_image',
        b64_json: partial.toString('base64'),
        partial_image_index: index,
        output_format: 'png',
      }),
    ),
    `: a comment${newline}${newline}`,
    event('image_generation.completed', {
      type: 'image_generation.completed',
      b64_json: image.toString('base64'),
      output_format: 'png',
      usage: {total_tokens: 9},
    }),
  ].join('');
}

async function read(body: AsyncIterable<Uint8Array>) {
  const events: {name: string | null; data: any}[] = [];
  const streamed = await readImageStream(body, (name, data) => events.push({name, data}));
  return {events, streamed};
}

describe('readImageStream', () => {
  const image = randomBytes(20_001);
  const partials = [randomBytes(5_000), randomBytes(4)];

  test.each([1, 2, 3, 7, 64, 4096, 1 << 20])(
    'hands on the partial images and decodes the image whatever the chunk size (%i)',
    async size => {
      const {events, streamed} = await read(chunked(upstream(image, partials), size));
      expect(events.map(e => [e.name, e.data.partial_image_index])).toEqual([
        ['image_generation.partial_image', 0],
        ['image_generation.partial_image', 1],
      ]);
      expect(events.map(e => Buffer.from(e.data.b64_json, 'base64'))).toEqual(partials);
      expect(streamed.image.data.equals(image)).toBe(true);
      expect(streamed.image.sha256).toBe(sha256(image));
      expect(streamed.event).toEqual({
        type: 'image_generation.completed',
        b64_json: '',
        output_format: 'png',
        usage: {total_tokens: 9},
      });
      streamed.release();
    },
  );

  const small = randomBytes(301);
  /** Runs `check` on the upstream stream of `small`, cut anywhere, with any line ending. */
  const anyCut = (check: (body: AsyncIterable<Uint8Array>) => Promise<void>) =>
    fc.assert(
      fc.asyncProperty(
        fc.constantFrom('\n', '\r\n', '\r'),
        fc.array(fc.nat(), {maxLength: 12}),
        (newline, offsets) => check(cut(upstream(small, partials, newline), offsets)),
      ),
    );

  test('any cut, CRLF or CR line endings', async () => {
    await anyCut(async body => {
      const {events, streamed} = await read(body);
      expect(events).toHaveLength(2);
      expect(streamed.image.data.equals(small)).toBe(true);
    });
  });

  test('fields without a space, data in several lines, data before the event name', async () => {
    const text =
      'event:image_generation.partial_image\ndata:{"type":"image_generation.partial_image",\ndata:"b64_json":"AQID"}\n\n' +
      'data: {"type":"image_generation.completed","b64_json":"BAUG"}\nevent: image_generation.completed\n\n';
    const {events, streamed} = await read(chunked(text, 5));
    expect(events).toEqual([
      {
        name: 'image_generation.partial_image',
        data: {type: 'image_generation.partial_image', b64_json: 'AQID'},
      },
    ]);
    expect([...streamed.image.data]).toEqual([4, 5, 6]);
  });

  test('an event the handler refuses (an error event) stops the reading', async () => {
    const text =
      'event: error\ndata: {"type":"error","error":{"code":"server_error"}}\n\n' +
      'event: image_generation.completed\ndata: {"b64_json":"AQID"}\n\n';
    await expect(
      readImageStream(chunked(text, 8), name => {
        if (name === 'error') throw new Error('upstream error event');
      }),
    ).rejects.toThrow('upstream error event');
  });

  test('a stream that ends without the image, or inside it, is an error', async () => {
    const partialOnly = upstream(image, partials).split('event: image_generation.completed')[0]!;
    await expect(read(chunked(partialOnly, 100))).rejects.toThrow(/without the completed image/);
    const truncated = 'event: image_generation.completed\ndata: {"b64_json":"AQID';
    await expect(read(chunked(truncated, 100))).rejects.toThrow(/inside a string/);
  });

  test('a last event without its blank line still counts', async () => {
    const text = 'event: image_generation.completed\ndata: {"b64_json":"AQID"}';
    const {streamed} = await read(chunked(text, 4));
    expect([...streamed.image.data]).toEqual([1, 2, 3]);
  });

  describe('beforeImage', () => {
    /** What happens, in order: events handed on, beforeImage called and done, the image's decode begun. */
    async function steps(body: AsyncIterable<Uint8Array>) {
      const log: string[] = [];
      const streamed = await readImageStream(body, name => log.push(String(name)), {
        beforeImage: async () => {
          log.push('before');
          await new Promise(resolve => setImmediate(resolve));
          log.push('admitted');
        },
        onDecode: () => log.push('decode'),
      });
      streamed.release();
      return {log, data: streamed.image.data};
    }

    test('is awaited once, after the partial images, before the image is decoded; any cut or line ending', async () => {
      await anyCut(async body => {
        const {log, data} = await steps(body);
        expect(log).toEqual([
          'image_generation.partial_image',
          'image_generation.partial_image',
          'before',
          'admitted',
          'decode',
        ]);
        expect(data.equals(small)).toBe(true);
      });
    });

    test.each([
      ['data before the event name', 'data: {"b64_json":"AQID"}\nevent: image_generation.completed\n\n'],
      [
        'the event named on the last line, without its line end',
        'data: {"b64_json":"AQID"}\nevent: image_generation.completed',
      ],
    ])('%s: still before the image is decoded', async (_, text) => {
      const {log, data} = await steps(chunked(text, 4));
      expect(log).toEqual(['before', 'admitted', 'decode']);
      expect([...data]).toEqual([1, 2, 3]);
    });

    test('a failing beforeImage stops the reading', async () => {
      const failing = readImageStream(chunked(upstream(image, partials), 64), () => undefined, {
        beforeImage: () => Promise.reject(new Error('no slot')),
      });
      await expect(failing).rejects.toThrow('no slot');
    });
  });
});
