import {createHash, randomBytes} from 'node:crypto';
import {JsonBase64Scanner, type JsonPath} from '../../src/api/json-base64';
import type {ImageBytes} from '../../src/core/image-bytes';

/** The edit routes' paths: images[i].b64_json, mask.b64_json, markup.b64_json. */
const editPaths = (path: JsonPath) =>
  path.at(-1) === 'b64_json' &&
  ((path.length === 3 && path[0] === 'images' && typeof path[1] === 'number') ||
    (path.length === 2 && (path[0] === 'mask' || path[0] === 'markup')));

/** Scans `text` cut into the given chunks; the skeleton as text and the decoded values. */
function scan(text: string | Buffer, cuts: number[] = [], inlineBytes = 0) {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text);
  const scanner = new JsonBase64Scanner(editPaths, inlineBytes);
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    scanner.write(bytes.subarray(start, cut));
    start = cut;
  }
  const {skeleton, images} = scanner.end();
  return {skeleton: skeleton.toString('utf8'), images};
}

async function bytesOf(image: ImageBytes | undefined): Promise<Buffer> {
  expect(image).toBeDefined();
  return Buffer.from(await image!.blob.arrayBuffer());
}

/** The parsed skeleton with each token replaced by the base64 of its bytes, as the original would parse. */
async function restored(skeleton: string, images: ReadonlyMap<string, ImageBytes>): Promise<unknown> {
  const decoded = new Map<string, string>();
  for (const [token, image] of images) {
    const data = await bytesOf(image);
    expect(image.size).toBe(data.length);
    expect(image.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(image.head.equals(data.subarray(0, image.head.length))).toBe(true);
    decoded.set(token, data.toString('base64'));
  }
  return JSON.parse(skeleton, (_key, value: unknown) =>
    typeof value === 'string' && decoded.has(value) ? decoded.get(value) : value,
  );
}

const a = randomBytes(301).toString('base64'); // ends with '='
const b = randomBytes(200).toString('base64'); // ends with '=='
const c = randomBytes(90).toString('base64'); // no padding
// JSON may escape '/' (and any character as \uXXXX): the same base64, as another encoder sends it.
const escaped = (s: string) => s.replaceAll('/', '\\/').replace(/A/, '\\u0041').replace(/B/, '\\u0042');

const body = `\uFEFF{"prompt": "say \\"b64_json\\": \\\\ {[\\"x\\"]}", "images": [
  {"b64_json": "${escaped(a)}"}, {"image_id": "img_1"}, {"b64_json":"${b}"}],
 "metadata": {"b64_json": "${c}", "nested": {"images": [{"b64_json": "${c}"}]}},
 "mask": {"b64_json": "${escaped(c)}"}, "markup": {"b64_json": "${c}"}, "n": 2, "x": [1, {"b64_json": "${c}"}]}`;
const expected = JSON.parse(body.slice(1)) as unknown;

describe('JsonBase64Scanner', () => {
  it('decodes the values at the paths asked for, and only those, the rest kept as it was', async () => {
    const {skeleton, images} = scan(body);
    expect(images.size).toBe(4);
    expect(await restored(skeleton.slice(1), images)).toEqual(expected);
    const parsed = JSON.parse(skeleton.slice(1)) as {
      images: {b64_json?: string}[];
      metadata: {b64_json: string};
      mask: {b64_json: string};
    };
    expect(images.has(parsed.images[0]!.b64_json!)).toBe(true);
    expect(images.has(parsed.mask.b64_json)).toBe(true);
    expect(parsed.metadata.b64_json).toBe(c);
    expect(await bytesOf(images.get(parsed.images[0]!.b64_json!))).toEqual(Buffer.from(a, 'base64'));
    // The BOM and everything outside the values is kept byte for byte.
    expect(skeleton.startsWith('\uFEFF{"prompt": "say \\"b64_json\\"')).toBe(true);
  });

  it('gives the same at every cut of the body into two chunks, and in one-byte chunks', async () => {
    const bytes = Buffer.from(body);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const {skeleton, images} = scan(bytes, [cut]);
      expect(images.size).toBe(4);
      expect(await restored(skeleton.slice(1), images)).toEqual(expected);
    }
    const {skeleton, images} = scan(
      bytes,
      Array.from({length: bytes.length - 1}, (_, i) => i + 1),
    );
    expect(await restored(skeleton.slice(1), images)).toEqual(expected);
  });

  it('keeps a value no longer than inlineBytes as it was sent', () => {
    const {skeleton, images} = scan(
      `{"images": [{"b64_json": "${escaped(c)}"}, {"b64_json": ""}]}`,
      [30],
      4096,
    );
    expect(images.size).toBe(0);
    expect(skeleton).toBe(`{"images": [{"b64_json": "${escaped(c)}"}, {"b64_json": ""}]}`);
  });

  it('decodes a value longer than inlineBytes', async () => {
    const {skeleton, images} = scan(`{"mask": {"b64_json": "${escaped(a)}"}}`, [100], 200);
    expect(images.size).toBe(1);
    expect(await restored(skeleton, images)).toEqual({mask: {b64_json: a}});
  });

  it.each([
    ['a character outside the alphabet', `${c}*${c}`, 120],
    ['padding inside', `${c.slice(0, 40)}=${c}`, 41],
    ['a third padding character', `${c}===`, 122],
    ['an escaped newline', `${c}\\n${c}`, 120],
    ['an escape of a character outside the alphabet', `${c}\\u002a${c}`, 120],
    ['non-ASCII text', `${c}é${c}`, 120],
  ])('keeps a value with %s a string that is not base64, from that character on', (_what, value, at) => {
    for (let cut = 0; cut < value.length + 30; cut += 7) {
      const sent = `{"images": [{"b64_json": "${value}"}], "n": 1}`;
      const long = scan(sent, [cut]);
      expect(long.images.size).toBe(0);
      const parsed = JSON.parse(long.skeleton) as {images: {b64_json: string}[]; n: number};
      const original = (JSON.parse(sent) as {images: {b64_json: string}[]}).images[0]!.b64_json;
      expect(parsed.images[0]!.b64_json).toBe(`!!!!${original.slice(at)}`);
      expect(parsed.n).toBe(1);
      // Within inlineBytes, the value is kept whole.
      const short = scan(sent, [cut], 4096);
      expect(short.skeleton).toBe(sent);
    }
  });

  it('leaves JSON that is not valid as it was: unfinished, or with an escape that is not one', () => {
    for (const sent of [
      `{"images": [{"b64_json": "${c}\\x${c}"}]}`,
      `{"images": [{"b64_json": "${c}\\u12"}]}`,
      `{"images": [{"b64_json": "${c}\t${c}"}]}`,
      `{"images": [{"b64_json": "${c}`,
      `{"images": [{"b64_json": "${c}"`,
    ]) {
      const {skeleton} = scan(sent);
      expect(() => JSON.parse(skeleton)).toThrow(SyntaxError);
    }
  });

  it('keeps bytes that are not UTF-8 after a value that is given up on', () => {
    const sent = Buffer.concat([
      Buffer.from(`{"images": [{"b64_json": "${c}`),
      Buffer.from([0xff]),
      Buffer.from('"}]}'),
    ]);
    const scanner = new JsonBase64Scanner(editPaths, 0);
    scanner.write(sent);
    const {skeleton, images} = scanner.end();
    expect(images.size).toBe(0);
    expect(skeleton.includes(0xff)).toBe(true);
  });

  it('reads a key as JSON does: escaped, or spelled otherwise', async () => {
    const {skeleton, images} = scan(`{"images": [{"b64\\u005fjson": "${c}"}], "Mask": {"b64_json": "${c}"}}`);
    expect(images.size).toBe(1);
    expect(await restored(skeleton, images)).toEqual({images: [{b64_json: c}], Mask: {b64_json: c}});
  });

  it('decodes nothing in a body that is not an object', () => {
    const sent = `[{"images": [{"b64_json": "${c}"}]}, "${c}"]`;
    const {skeleton, images} = scan(sent);
    expect(images.size).toBe(0);
    expect(skeleton).toBe(sent);
  });
});
