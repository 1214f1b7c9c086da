import type {IncomingMessage} from 'node:http';
import {Readable} from 'node:stream';
import {parseEditForm} from '../../src/api/edit-form';
import {readMultipart, type MultipartForm, type MultipartLimits} from '../../src/api/multipart';
import {AppError, type FieldProblem} from '../../src/core/errors';
import {imageBytesOf} from '../../src/core/image-bytes';

const LIMITS: MultipartLimits = {
  maxBytes: 1024 * 1024,
  maxFileBytes: 256 * 1024,
  maxFiles: 4,
  maxTexts: 8,
  maxTextBytes: 1024,
};

const CHUNK = 16 * 1024;

/** A request carrying `body` in 16 KiB chunks; `pulled` is how much of it was read off the "wire". */
function requestOf(body: Buffer, headers: Record<string, string>) {
  let offset = 0;
  const stream = new Readable({
    highWaterMark: CHUNK,
    read() {
      if (offset >= body.length) {
        this.push(null);
        return;
      }
      this.push(body.subarray(offset, offset + CHUNK));
      offset += CHUNK;
    },
  });
  const req = Object.assign(stream, {headers, complete: false});
  stream.once('end', () => (req.complete = true));
  return {req: req as unknown as IncomingMessage, pulled: () => Math.min(offset, body.length)};
}

/** The bytes and content type fetch would send for `form`. */
async function encode(form: FormData): Promise<{body: Buffer; type: string}> {
  const response = new Response(form);
  return {body: Buffer.from(await response.arrayBuffer()), type: response.headers.get('content-type')!};
}

async function read(
  form: FormData,
  limits: MultipartLimits = LIMITS,
  headers: Record<string, string> = {},
): Promise<MultipartForm> {
  const {body, type} = await encode(form);
  const {req} = requestOf(body, {'content-type': type, ...headers});
  return readMultipart(req, limits, field => field === 'image' || field === 'image[]' || field === 'mask');
}

function file(bytes: number, fill = 1): Blob {
  return new Blob([Buffer.alloc(bytes, fill)]);
}

async function failure(promise: Promise<unknown>): Promise<AppError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AppError) return error;
    throw error;
  }
  throw new Error('expected a failure');
}

describe('readMultipart', () => {
  test('keeps text fields and files in order, each file whole', async () => {
    const form = new FormData();
    form.append('prompt', 'a cat');
    form.append('image[]', file(40_000, 1), 'one.png');
    form.append('image[]', file(20_000, 2), 'two.jpg');
    form.append('n', '2');
    const read_ = await read(form);
    expect(read_.texts).toEqual([
      {field: 'prompt', value: 'a cat'},
      {field: 'n', value: '2'},
    ]);
    expect(read_.files.map(f => [f.field, f.filename, f.data.size, f.data.head[0]])).toEqual([
      ['image[]', 'one.png', 40_000, 1],
      ['image[]', 'two.jpg', 20_000, 2],
    ]);
    expect(read_.problems).toEqual([]);
  });

  test('a Content-Length over the limit is refused before anything is read', async () => {
    const form = new FormData();
    form.append('image', file(2048));
    const {body, type} = await encode(form);
    const {req, pulled} = requestOf(body, {'content-type': type, 'content-length': String(body.length)});
    const error = await failure(readMultipart(req, {...LIMITS, maxBytes: 1024}, () => true));
    expect(error.code).toBe('PAYLOAD_TOO_LARGE');
    expect(pulled()).toBe(0);
  });

  test('a body that grows past the limit stops being read at the limit', async () => {
    const form = new FormData();
    for (let i = 0; i < 4; i++) form.append('image', file(200_000), `${i}.png`);
    const {body, type} = await encode(form);
    // No Content-Length: as a chunked request arrives.
    const {req, pulled} = requestOf(body, {'content-type': type});
    const error = await failure(readMultipart(req, {...LIMITS, maxBytes: 300_000}, () => true));
    expect(error.code).toBe('PAYLOAD_TOO_LARGE');
    await new Promise(resolve => setTimeout(resolve, 20));
    expect(pulled()).toBeLessThan(300_000 + 4 * CHUNK);
    expect(body.length).toBeGreaterThan(800_000);
  });

  test('a file past its limit, a file field not taken and a long text are reported, not kept', async () => {
    const form = new FormData();
    form.append('image', file(LIMITS.maxFileBytes + 1), 'big.png');
    form.append('photo', file(10), 'x.png');
    form.append('prompt', 'x'.repeat(LIMITS.maxTextBytes + 1));
    form.append('mask', file(10), 'mask.png');
    const read_ = await read(form);
    expect(read_.files.map(f => f.field)).toEqual(['mask']);
    expect(read_.texts).toEqual([]);
    expect(read_.problems).toEqual([
      {field: 'image', message: `a file is over the limit of ${LIMITS.maxFileBytes} bytes`},
      {field: 'photo', message: 'unknown field'},
      {field: 'prompt', message: `is over the limit of ${LIMITS.maxTextBytes} bytes`},
    ]);
  });

  test('too many files or text fields are said as such', async () => {
    const form = new FormData();
    for (let i = 0; i < LIMITS.maxFiles + 2; i++) form.append('image', file(10), `${i}.png`);
    for (let i = 0; i < LIMITS.maxTexts + 2; i++) form.append(`t${i}`, 'x');
    const read_ = await read(form);
    expect(read_.files).toHaveLength(LIMITS.maxFiles);
    expect(read_.texts).toHaveLength(LIMITS.maxTexts);
    expect(read_.problems).toEqual([
      {field: '(body)', message: `more than ${LIMITS.maxFiles} files`},
      {field: '(body)', message: `more than ${LIMITS.maxTexts} text fields`},
    ]);
  });

  test('a body that is not multipart, or ends early, is a validation error', async () => {
    const noBoundary = requestOf(Buffer.from('hello'), {'content-type': 'multipart/form-data'});
    expect((await failure(readMultipart(noBoundary.req, LIMITS, () => true))).code).toBe('VALIDATION_ERROR');

    const form = new FormData();
    form.append('image', file(50_000));
    const {body, type} = await encode(form);
    const cut = requestOf(body.subarray(0, 30_000), {'content-type': type});
    const error = await failure(readMultipart(cut.req, LIMITS, () => true));
    expect(error.code).toBe('VALIDATION_ERROR');
    expect(error.message).toMatch(/Unexpected end of form/);
  });

  test('a compressed body is refused', async () => {
    const form = new FormData();
    form.append('prompt', 'x');
    const error = await failure(read(form, LIMITS, {'content-encoding': 'gzip'}));
    expect(error.code).toBe('UNSUPPORTED_MEDIA_TYPE');
  });
});

describe('parseEditForm', () => {
  const png = (field = 'image', bytes = 8): MultipartForm['files'][number] => ({
    field,
    filename: `${field}.png`,
    contentType: 'image/png',
    data: imageBytesOf(Buffer.alloc(bytes, 1)),
  });
  const texts = (fields: Record<string, string>) =>
    Object.entries(fields).map(([field, value]) => ({field, value}));

  function problemsOf(form: Partial<MultipartForm>): string[] {
    try {
      parseEditForm({texts: [], files: [], problems: [], ...form});
    } catch (error) {
      if (!(error instanceof AppError) || error.code !== 'VALIDATION_ERROR') throw error;
      return (error.details as {fields: FieldProblem[]}).fields.map(p => `${p.field}: ${p.message}`);
    }
    throw new Error('expected a validation failure');
  }

  test('text becomes typed fields as OpenAI reads it; uploads become byte references in order', () => {
    const request = parseEditForm({
      texts: texts({
        prompt: ' add a hat ',
        model: 'gpt-image-2.5-flare',
        n: '2',
        output_compression: '40',
        output_format: 'webp',
        allow_partial: 'true',
        stream: 'false',
        complexity: 'null',
        'metadata[order]': '42',
        'metadata[team]': 'red',
        'svg[model]': 'x',
        input_fidelity: 'low',
        user: 'u-1',
      }),
      files: [png('image[]', 3), png('image[]', 5), png('mask', 7)],
      problems: [],
    });
    expect(request).toMatchObject({
      source: 'edit',
      prompt: 'add a hat',
      n: 2,
      model: 'gpt-image-2.5-flare',
      allowPartial: true,
      stream: null,
      metadata: {order: '42', team: 'red'},
      parameters: {
        output_compression: 40,
        output_format: 'webp',
        svg: {model: 'x'},
        input_fidelity: 'low',
        safety_identifier: 'u-1',
      },
      userAlias: true,
    });
    expect(request.parameters).not.toHaveProperty('complexity');
    expect(request.edit?.images.map(ref => ref.kind === 'bytes' && ref.data.size)).toEqual([3, 5]);
    expect(request.edit?.mask).toMatchObject({kind: 'bytes', filename: 'mask.png'});
    expect(request.edit?.imagesField).toBe('image');
  });

  test('metadata may also be JSON text', () => {
    const request = parseEditForm({
      texts: texts({prompt: 'p', metadata: '{"order":"42"}'}),
      files: [png()],
      problems: [],
    });
    expect(request.metadata).toEqual({order: '42'});
  });

  test('every problem is named as the field was sent', () => {
    expect(
      problemsOf({
        texts: [
          ...texts({
            n: 'two',
            stream: 'yes',
            'metadata[__name__]': 'x',
            'metadata[ok]': 'y'.repeat(600),
            colour: 'red',
            'n[0]': '1',
            mask: 'not a file',
          }),
          {field: 'quality', value: 'high'},
          {field: 'quality', value: 'low'},
        ],
        files: [png('mask'), png('mask')],
        problems: [{field: 'photo', message: 'unknown field'}],
      }),
    ).toEqual([
      'photo: unknown field',
      'mask: send one file',
      'n[0]: unknown field',
      'mask: must be a file',
      'quality: given more than once',
      'prompt: Invalid input: expected string, received undefined',
      'image: give at least one image',
      'n: Invalid input: expected number, received string',
      'metadata[__name__]: keys are 1-64 characters of letters, digits, _ . - (not __name__)',
      'metadata[ok]: values are at most 512 characters',
      'stream: Invalid input: expected boolean, received string',
      'colour: unknown field',
    ]);
  });

  test('an object is JSON text or bracketed fields, not both; JSON text must parse', () => {
    expect(
      problemsOf({
        texts: texts({prompt: 'p', metadata: '{"a":"b"}', 'metadata[c]': 'd'}),
        files: [png()],
      }),
    ).toEqual(['metadata[c]: metadata is given as JSON text already']);
    expect(problemsOf({texts: texts({prompt: 'p', svg: '{model'}), files: [png()]})).toEqual([
      'svg: must be JSON text, or sent as one field per key (name[key])',
    ]);
  });

  test('at most 16 images', () => {
    const many = Array.from({length: 17}, () => png('image'));
    expect(problemsOf({texts: texts({prompt: 'p'}), files: many})).toEqual(['image: at most 16 images']);
  });
});
