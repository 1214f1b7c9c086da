import {createHash, randomBytes} from 'node:crypto';
import {Readable} from 'node:stream';
import {parseImagesResponse} from '../../src/adapters/images-response-parser';

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
