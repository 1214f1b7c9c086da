import {createHash, randomBytes} from 'node:crypto';
import {Readable} from 'node:stream';
import {BufferPool, parseImagesResponse} from '../../src/adapters/openai/response-parser';

function chunked(text: string, size: number): AsyncIterable<Uint8Array> {
  const bytes = Buffer.from(text);
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
  return Readable.from(chunks);
}

describe('parseImagesResponse', () => {
  const images = [randomBytes(10_001), randomBytes(3), randomBytes(65_536)];
  const body = {
    created: 1,
    data: images.map((image, i) => ({
      b64_json: image.toString('base64'),
      revised_prompt: `revised "${i}" \\ ok`,
    })),
    usage: {total_tokens: 7, input_tokens_details: {text_tokens: 2}},
    output_format: 'png',
  };

  test.each([1, 2, 3, 7, 64, 4096, 1 << 20])(
    'decodes every image whatever the chunk size (%i)',
    async size => {
      const parsed = await parseImagesResponse(chunked(JSON.stringify(body, null, size % 2 ? 0 : 2), size));
      expect(parsed.images.map(i => i.data.equals(images[parsed.images.indexOf(i)]!))).toEqual([
        true,
        true,
        true,
      ]);
      expect(parsed.images.map(i => i.sha256)).toEqual(
        images.map(i => createHash('sha256').update(i).digest('hex')),
      );
      expect(parsed.body.data!.map(d => d.revised_prompt)).toEqual([
        'revised "0" \\ ok',
        'revised "1" \\ ok',
        'revised "2" \\ ok',
      ]);
      expect(parsed.body.data!.map(d => d.b64_json)).toEqual(['', '', '']);
      expect(parsed.body.usage).toEqual(body.usage);
    },
  );

  test('escaped slashes in base64 are undone', async () => {
    const image = Buffer.from([0xff, 0xef, 0xff, 0xfe]); // base64 "/+//+g=="
    const text = `{"data":[{"b64_json":"${image.toString('base64').replaceAll('/', '\\/')}"}]}`;
    const parsed = await parseImagesResponse(chunked(text, 3));
    expect(parsed.images[0]!.data.equals(image)).toBe(true);
  });

  test('a key that only looks like b64_json inside a string is left alone', async () => {
    const text = '{"note":"b64_json","data":[{"b64_json":"AQID"}],"x":"\\"b64_json\\": \\"no\\""}';
    const parsed = await parseImagesResponse(chunked(text, 5));
    expect(parsed.images.map(i => [...i.data])).toEqual([[1, 2, 3]]);
    expect(parsed.body).toEqual({note: 'b64_json', data: [{b64_json: ''}], x: '"b64_json": "no"'});
  });

  test.each([
    ['cut inside image data', '{"data":[{"b64_json":"AQID', /ended inside a string/],
    ['not JSON', 'Internal Server Error', /JSON/],
  ])('%s is an error', async (_label, text, message) => {
    await expect(parseImagesResponse(chunked(text, 4))).rejects.toThrow(message);
  });
});

describe('parseImagesResponse with a BufferPool', () => {
  const answer = (images: Buffer[]) =>
    JSON.stringify({data: images.map(image => ({b64_json: image.toString('base64')}))});
  const parse = (images: Buffer[], pool: BufferPool) => {
    const text = answer(images);
    return parseImagesResponse(chunked(text, 4096), text.length, pool);
  };

  test('a released answer lends its memory to the next one, which still decodes right', async () => {
    const pool = new BufferPool();
    const first = await parse([randomBytes(100_000), randomBytes(50_000)], pool);
    const firstMemory = first.images[0]!.data.buffer;
    first.release();
    first.release(); // a second release changes nothing
    expect(pool.size).toBe(1);

    const images = [randomBytes(120_000)];
    const second = await parse(images, pool);
    expect(second.images[0]!.data.buffer).toBe(firstMemory);
    expect(second.images[0]!.data.equals(images[0]!)).toBe(true);
    expect(pool.size).toBe(0);
  });

  test('memory still in use is never lent', async () => {
    const pool = new BufferPool();
    const held = await parse([randomBytes(10_000)], pool);
    const other = await parse([randomBytes(10_000)], pool);
    expect(other.images[0]!.data.buffer).not.toBe(held.images[0]!.data.buffer);
  });

  test('a failed parse gives its memory back', async () => {
    const pool = new BufferPool();
    const text = '{"data":[{"b64_json":"AQID';
    await expect(parseImagesResponse(chunked(text, 4), 1_000_000, pool)).rejects.toThrow(/inside a string/);
    expect(pool.size).toBe(1);
  });

  test('the pool keeps at most its limit of buffers and bytes', () => {
    const pool = new BufferPool(2, 1000);
    pool.give(Buffer.alloc(400));
    pool.give(Buffer.alloc(400));
    pool.give(Buffer.alloc(10));
    expect(pool.size).toBe(2);
    const bytes = new BufferPool(8, 1000);
    bytes.give(Buffer.alloc(600));
    bytes.give(Buffer.alloc(600));
    expect(bytes.size).toBe(1);
    // The smallest buffer that fits is taken; a request nothing fits gets a new one.
    expect(pool.take(300).length).toBe(400);
    expect(pool.take(500).length).toBe(500);
  });
});
