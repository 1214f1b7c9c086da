import {createHash} from 'node:crypto';
import {crc32} from 'node:zlib';
import OpenAI, {APIError, toFile} from 'openai';
import sharp from 'sharp';
import {
  startFakeOpenAI,
  type FakeOpenAI,
  type RecordedMultipartBody,
  type RecordedRequest,
} from './fake-openai';

type GenerateBody = OpenAI.ImageGenerateParamsNonStreaming;

const API_KEY = 'sk-test-key';
/** Before gpt-image-1.5 and its siblings shut down (2026-12-01). */
const BEFORE_SHUTDOWN = '2026-11-23';
const AFTER_SHUTDOWN = '2026-12-02';
/** The smallest size the general limits allow: cheap to encode. */
const SMALL = '1024x640';

function clientFor(fake: FakeOpenAI, options: {apiKey?: string; organization?: string} = {}): OpenAI {
  return new OpenAI({
    apiKey: options.apiKey ?? API_KEY,
    organization: options.organization ?? null,
    project: null,
    baseURL: fake.url,
    maxRetries: 0,
  });
}

/** Sends any body, including ones the SDK types would not allow. */
function generate(client: OpenAI, body: Record<string, unknown>): Promise<OpenAI.ImagesResponse> {
  return client.images.generate(body as unknown as GenerateBody);
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the promise to reject');
}

async function apiErrorOf(promise: Promise<unknown>): Promise<APIError> {
  const error = await rejectionOf(promise);
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

/** Asserts an SDK error's status, param and code. */
async function expectApiError(
  promise: Promise<unknown>,
  status: number,
  param: string | null,
  code: string | null,
): Promise<APIError> {
  const error = await apiErrorOf(promise);
  expect({status: error.status, param: error.param, code: error.code}).toEqual({status, param, code});
  return error;
}

const sha256 = (bytes: Buffer | Uint8Array) => createHash('sha256').update(bytes).digest('hex');

function b64Images(response: OpenAI.ImagesResponse): Buffer[] {
  const data = response.data ?? [];
  return data.map(item => {
    expect(Object.keys(item)).toEqual(['b64_json']);
    return Buffer.from(item.b64_json ?? '', 'base64');
  });
}

function onlyImage(response: OpenAI.ImagesResponse): Buffer {
  const images = b64Images(response);
  expect(images).toHaveLength(1);
  return images[0] ?? Buffer.alloc(0);
}

/** Fully decodes the image (not just the header) and returns its metadata. */
async function decode(bytes: Buffer) {
  const metadata = await sharp(bytes).metadata();
  const {info} = await sharp(bytes).raw().toBuffer({resolveWithObject: true});
  expect(info.width).toBe(metadata.width);
  expect(info.height).toBe(metadata.height);
  return metadata;
}

async function timed<T>(fn: () => Promise<T>): Promise<{ms: number; result: T}> {
  const start = performance.now();
  const result = await fn();
  return {ms: performance.now() - start, result};
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** Walks a PNG's chunks, checking every CRC; returns the tEXt payloads. */
function pngTextChunks(png: Buffer): string[] {
  expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const texts: string[] = [];
  let offset = 8;
  let last = '';
  while (offset < png.length) {
    const length = png.readUInt32BE(offset);
    last = png.toString('latin1', offset + 4, offset + 8);
    const typeAndData = png.subarray(offset + 4, offset + 8 + length);
    expect(png.readUInt32BE(offset + 8 + length)).toBe(crc32(typeAndData));
    if (last === 'tEXt') texts.push(png.toString('latin1', offset + 8, offset + 8 + length));
    offset += 12 + length;
  }
  expect(offset).toBe(png.length);
  expect(last).toBe('IEND');
  return texts;
}

/** Walks a WebP's RIFF chunks, checking the sizes add up; returns the chunk FourCCs. */
function webpChunks(webp: Buffer): string[] {
  expect(webp.toString('latin1', 0, 4)).toBe('RIFF');
  expect(webp.readUInt32LE(4)).toBe(webp.length - 8);
  expect(webp.toString('latin1', 8, 12)).toBe('WEBP');
  const names: string[] = [];
  let offset = 12;
  while (offset < webp.length) {
    names.push(webp.toString('latin1', offset, offset + 4));
    const size = webp.readUInt32LE(offset + 4);
    offset += 8 + size + (size % 2);
  }
  expect(offset).toBe(webp.length);
  return names;
}

/** Small input images for edits. */
const opaquePng = (width: number, height: number) =>
  sharp({create: {width, height, channels: 3, background: {r: 200, g: 40, b: 40}}})
    .png()
    .toBuffer();
/** Fully transparent on the left half, opaque on the right: a valid mask or markup. */
async function maskPng(width: number, height: number): Promise<Buffer> {
  const alpha = Buffer.alloc(width * height);
  for (let y = 0; y < height; y++) alpha.fill(255, y * width + Math.floor(width / 2), (y + 1) * width);
  return sharp({create: {width, height, channels: 3, background: {r: 0, g: 0, b: 0}}})
    .joinChannel(alpha, {raw: {width, height, channels: 1}})
    .png()
    .toBuffer();
}

interface FormFile {
  field: string;
  bytes: Buffer;
  filename?: string;
  type?: string;
}

/** Posts a multipart edit by hand, for inputs the SDK cannot express. */
async function postEdit(
  fake: FakeOpenAI,
  fields: Record<string, string>,
  files: FormFile[],
): Promise<{status: number; body: {error?: Record<string, unknown>} & Record<string, unknown>}> {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  for (const file of files) {
    form.append(
      file.field,
      new Blob([file.bytes], {type: file.type ?? 'image/png'}),
      file.filename ?? 'in.png',
    );
  }
  const response = await fetch(`${fake.url}/images/edits`, {
    method: 'POST',
    headers: {authorization: `Bearer ${API_KEY}`},
    body: form,
  });
  return {status: response.status, body: (await response.json()) as Record<string, unknown>};
}

function expectErrorBody(
  answer: {status: number; body: {error?: Record<string, unknown>}},
  status: number,
  param: string | null,
  code: string | null,
): void {
  expect({status: answer.status, param: answer.body.error?.param, code: answer.body.error?.code}).toEqual({
    status,
    param,
    code,
  });
}

function multipartBodyOf(request: RecordedRequest | undefined): RecordedMultipartBody {
  expect(request?.bodyKind).toBe('multipart');
  return request?.body as RecordedMultipartBody;
}

let fake: FakeOpenAI;
let client: OpenAI;
let png64x48: Buffer;
let mask64x48: Buffer;

beforeAll(async () => {
  fake = await startFakeOpenAI({today: BEFORE_SHUTDOWN});
  client = clientFor(fake);
  png64x48 = await opaquePng(64, 48);
  mask64x48 = await maskPng(64, 48);
});

afterEach(() => fake.reset());

afterAll(() => fake.close());

describe('model lifecycle', () => {
  const body = {prompt: 'a lighthouse', size: SMALL, output_format: 'jpeg'} as const;

  it('gpt-image-1.5 works before 2026-12-01 and is 404 model_not_found from that day on', async () => {
    fake.setToday('2026-11-30');
    const before = await client.images.generate({...body, model: 'gpt-image-1.5'});
    expect(b64Images(before)).toHaveLength(1);

    for (const day of ['2026-12-01', AFTER_SHUTDOWN]) {
      fake.setToday(day);
      const error = await apiErrorOf(client.images.generate({...body, model: 'gpt-image-1.5'}));
      expect(error).toBeInstanceOf(OpenAI.NotFoundError);
      expect(error.error).toEqual({
        message:
          'The model `gpt-image-1.5` has been deprecated, learn more here: https://platform.openai.com/docs/deprecations',
        type: 'invalid_request_error',
        param: null,
        code: 'model_not_found',
      });
    }
    // Models without a shutdown date keep working.
    expect(b64Images(await client.images.generate({...body, model: 'gpt-image-2'}))).toHaveLength(1);
  });

  it.each(['gpt-image-1.5-2025-12-16', 'gpt-image-1-mini', 'chatgpt-image-latest'])(
    '%s shares the 2026-12-01 shutdown',
    async model => {
      expect(b64Images(await client.images.generate({...body, model}))).toHaveLength(1);
      fake.setToday(AFTER_SHUTDOWN);
      await expectApiError(client.images.generate({...body, model}), 404, null, 'model_not_found');
    },
  );

  it('dall-e-3 and gpt-image-1 are gone on both days; gpt-image-1 worked the day before its shutdown', async () => {
    for (const day of [BEFORE_SHUTDOWN, AFTER_SHUTDOWN]) {
      fake.setToday(day);
      for (const model of ['dall-e-2', 'dall-e-3', 'gpt-image-1']) {
        const error = await expectApiError(
          client.images.generate({...body, model}),
          404,
          null,
          'model_not_found',
        );
        expect(error.message).toContain(`The model \`${model}\` has been deprecated`);
      }
    }
    fake.setToday('2026-10-22');
    expect(b64Images(await client.images.generate({...body, model: 'gpt-image-1'}))).toHaveLength(1);
  });

  it('before its shutdown a legacy model takes style and response_format, answering b64_json only', async () => {
    fake.setToday('2026-05-11');
    const legacy = {model: 'dall-e-3', prompt: 'p', size: SMALL} as const;
    const res = await client.images.generate({
      ...legacy,
      style: 'natural',
      response_format: 'b64_json',
      quality: 'hd',
    });
    expect(res.quality).toBe('high');
    expect(b64Images(res)).toHaveLength(1);
    await expectApiError(
      client.images.generate({...legacy, response_format: 'url'}),
      400,
      'response_format',
      'unsupported_value',
    );
    await expectApiError(generate(client, {...legacy, stream: true}), 400, 'stream', 'unsupported_parameter');
    fake.setToday('2026-05-12');
    await expectApiError(client.images.generate(legacy), 404, null, 'model_not_found');
  });

  it.each([
    'gpt-image-2',
    'gpt-image-2-2026-04-21',
    'gpt-image-2.5-sunburst',
    'gpt-image-2.5-sunburst-2026-09-08',
    'gpt-image-2.5-flare',
    'gpt-image-2.5-flare-2026-09-08',
    'gpt-image-2.6-sunburst',
    'gpt-image-2.6-flare',
  ])('%s is active after the December shutdown', async model => {
    fake.setToday(AFTER_SHUTDOWN);
    expect(b64Images(await client.images.generate({...body, model}))).toHaveLength(1);
  });

  it('an unknown model id is 400 invalid_value on model, listing the models available that day', async () => {
    const error = await expectApiError(
      client.images.generate({...body, model: 'gpt-image-9'}),
      400,
      'model',
      'invalid_value',
    );
    expect(error.message).toContain("'gpt-image-9'");
    expect(error.message).toContain("'gpt-image-1.5'");
    expect(error.message).not.toContain("'dall-e-3'");
    fake.setToday(AFTER_SHUTDOWN);
    const later = await apiErrorOf(client.images.generate({...body, model: 'gpt-image-9'}));
    expect(later.message).not.toContain("'gpt-image-1.5'");
    expect(later.message).toContain("'gpt-image-2'");
  });

  it('addModel makes a new id work; retireModel shuts one down early; reset() restores the lifecycle', async () => {
    await expectApiError(
      client.images.generate({...body, model: 'gpt-image-3'}),
      400,
      'model',
      'invalid_value',
    );
    fake.addModel('gpt-image-3');
    expect(b64Images(await client.images.generate({...body, model: 'gpt-image-3'}))).toHaveLength(1);
    fake.addModel('gpt-image-3-preview', '2026-11-24');
    expect(b64Images(await client.images.generate({...body, model: 'gpt-image-3-preview'}))).toHaveLength(1);
    fake.setToday('2026-11-24');
    await expectApiError(
      client.images.generate({...body, model: 'gpt-image-3-preview'}),
      404,
      null,
      'model_not_found',
    );

    fake.retireModel('gpt-image-2', '2026-11-20');
    await expectApiError(
      client.images.generate({...body, model: 'gpt-image-2'}),
      404,
      null,
      'model_not_found',
    );

    fake.reset();
    expect(b64Images(await client.images.generate({...body, model: 'gpt-image-2'}))).toHaveLength(1);
    await expectApiError(
      client.images.generate({...body, model: 'gpt-image-3'}),
      400,
      'model',
      'invalid_value',
    );
    expect(() => fake.retireModel('gpt-image-404', '2026-12-01')).toThrow(RangeError);
    expect(() => fake.setToday('2026-13-01')).toThrow(RangeError);
    expect(() => fake.addModel('x', '1 December')).toThrow(RangeError);
  });

  it('extraModels and today are options; setToday(null) follows the real clock', async () => {
    const optioned = await startFakeOpenAI({
      today: AFTER_SHUTDOWN,
      extraModels: {'gpt-image-7': '2026-12-03'},
    });
    try {
      const optionedClient = clientFor(optioned);
      expect(b64Images(await optionedClient.images.generate({...body, model: 'gpt-image-7'}))).toHaveLength(
        1,
      );
      await expectApiError(
        optionedClient.images.generate({...body, model: 'gpt-image-1.5'}),
        404,
        null,
        'model_not_found',
      );
      optioned.setToday(null);
      const realToday = new Date().toISOString().slice(0, 10);
      const realTomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
      optioned.retireModel('gpt-image-2', realTomorrow);
      expect(b64Images(await optionedClient.images.generate({...body, model: 'gpt-image-2'}))).toHaveLength(
        1,
      );
      optioned.retireModel('gpt-image-2', realToday);
      await expectApiError(
        optionedClient.images.generate({...body, model: 'gpt-image-2'}),
        404,
        null,
        'model_not_found',
      );
    } finally {
      await optioned.close();
    }
  });

  it('model is required on both endpoints', async () => {
    await expectApiError(generate(client, {prompt: 'p'}), 400, 'model', 'missing_required_parameter');
    await expectApiError(
      generate(client, {prompt: 'p', model: null}),
      400,
      'model',
      'missing_required_parameter',
    );
    await expectApiError(generate(client, {prompt: 'p', model: 2}), 400, 'model', 'invalid_type');
    const edit = await postEdit(fake, {prompt: 'p'}, [{field: 'image', bytes: png64x48}]);
    expectErrorBody(edit, 400, 'model', 'missing_required_parameter');
    expect(edit.body.error?.message).toBe("Missing required parameter: 'model'.");
  });
});

describe('request fields', () => {
  const base = {model: 'gpt-image-2', prompt: 'p', size: SMALL};
  const long = (n: number) => 'x'.repeat(n);

  const cases: Array<[string, Record<string, unknown>, string, string]> = [
    ['unknown top-level field', {seed: 3}, 'seed', 'unknown_parameter'],
    [
      'unknown nested field',
      {output_format: 'svg', svg: {model: 'm', colour: 'red'}},
      'svg.colour',
      'unknown_parameter',
    ],
    ['an edits-only field', {input_fidelity: 'high'}, 'input_fidelity', 'unknown_parameter'],
    ['style on a GPT image model', {style: 'vivid'}, 'style', 'unsupported_parameter'],
    [
      'response_format on a GPT image model',
      {response_format: 'b64_json'},
      'response_format',
      'unsupported_parameter',
    ],
    ['legacy quality hd on a GPT image model', {quality: 'hd'}, 'quality', 'invalid_value'],
    ['legacy quality standard on a GPT image model', {quality: 'standard'}, 'quality', 'invalid_value'],
    ['missing prompt', {prompt: undefined}, 'prompt', 'missing_required_parameter'],
    ['empty prompt', {prompt: ''}, 'prompt', 'empty_string'],
    ['prompt over 32000 characters', {prompt: long(32001)}, 'prompt', 'string_above_max_length'],
    ['prompt not a string', {prompt: 42}, 'prompt', 'invalid_type'],
    ['n as a string', {n: '2'}, 'n', 'invalid_type'],
    ['n a decimal', {n: 1.5}, 'n', 'invalid_type'],
    ['n below 1', {n: 0}, 'n', 'integer_below_min_value'],
    ['n above 10', {n: 11}, 'n', 'integer_above_max_value'],
    ['stream not a boolean', {stream: 'yes'}, 'stream', 'invalid_type'],
    ['svg not an object', {output_format: 'svg', svg: 'm'}, 'svg', 'invalid_type'],
    ['svg without its model', {output_format: 'svg', svg: {}}, 'svg.model', 'missing_required_parameter'],
    ['size not a string', {size: 1024}, 'size', 'invalid_type'],
    ['user null', {user: null}, 'user', 'invalid_type'],
    ['quality outside the enum', {quality: 'ultra'}, 'quality', 'invalid_value'],
    ['background outside the enum', {background: 'white'}, 'background', 'invalid_value'],
    ['output_format outside the enum', {output_format: 'bmp'}, 'output_format', 'invalid_value'],
    ['moderation outside the enum', {moderation: 'high'}, 'moderation', 'invalid_value'],
    ['complexity outside the enum', {complexity: 'extreme'}, 'complexity', 'invalid_value'],
    [
      'svg effort outside the enum',
      {output_format: 'svg', svg: {model: 'm', reasoning: {effort: 'huge'}}},
      'svg.reasoning.effort',
      'invalid_value',
    ],
    ['partial_images above 3', {partial_images: 4}, 'partial_images', 'integer_above_max_value'],
    [
      'output_compression above 100',
      {output_format: 'jpeg', output_compression: 101},
      'output_compression',
      'integer_above_max_value',
    ],
    ['frame_count below 2', {output_format: 'gif', frame_count: 1}, 'frame_count', 'integer_below_min_value'],
    [
      'frame_count above 16',
      {output_format: 'gif', frame_count: 17},
      'frame_count',
      'integer_above_max_value',
    ],
    [
      'frame_duration_ms not positive',
      {output_format: 'gif', frame_duration_ms: 0},
      'frame_duration_ms',
      'integer_below_min_value',
    ],
    // Wire rules that hold for every model.
    ['compression with png', {output_compression: 50}, 'output_compression', 'invalid_value'],
    [
      'compression with gif',
      {output_format: 'gif', output_compression: 50},
      'output_compression',
      'invalid_value',
    ],
    ['transparent jpeg', {background: 'transparent', output_format: 'jpeg'}, 'background', 'invalid_value'],
    ['frame_count without gif', {frame_count: 4}, 'frame_count', 'invalid_value'],
    [
      'frame_duration_ms without gif',
      {output_format: 'webp', frame_duration_ms: 100},
      'frame_duration_ms',
      'invalid_value',
    ],
    ['svg without svg output', {svg: {model: 'm'}}, 'svg', 'invalid_value'],
    ['svg with n=2', {output_format: 'svg', n: 2}, 'n', 'invalid_value'],
    ['gif streamed', {output_format: 'gif', stream: true}, 'stream', 'invalid_value'],
    ['svg streamed', {output_format: 'svg', stream: true}, 'stream', 'invalid_value'],
    ['gif with partial_images', {output_format: 'gif', partial_images: 1}, 'partial_images', 'invalid_value'],
    ['svg with partial_images', {output_format: 'svg', partial_images: 0}, 'partial_images', 'invalid_value'],
  ];

  it.each(cases.map(([name, extra, param, code]) => ({name, extra, param, code})))(
    '$name → 400 $param/$code',
    async ({extra, param, code}) => {
      const error = await expectApiError(generate(client, {...base, ...extra}), 400, param, code);
      expect(error).toBeInstanceOf(OpenAI.BadRequestError);
      expect(error.type).toBe('invalid_request_error');
      expect(error.message.length).toBeGreaterThan(20);
    },
  );

  it('uses OpenAI-style messages', async () => {
    const unknown = await apiErrorOf(generate(client, {...base, seed: 3}));
    expect(unknown.message).toBe("400 Unknown parameter: 'seed'.");
    const n = await apiErrorOf(generate(client, {...base, n: 11}));
    expect(n.message).toBe(
      "400 Invalid 'n': integer above maximum value. Expected a value <= 10, but got 11 instead.",
    );
    const quality = await apiErrorOf(generate(client, {...base, quality: 'ultra'}));
    expect(quality.message).toBe(
      "400 Invalid value: 'ultra'. Supported values are: 'low', 'medium', 'high', 'xhigh', 'max', 'auto', 'standard', and 'hd'.",
    );
    const type = await apiErrorOf(generate(client, {...base, n: '2'}));
    expect(type.message).toBe("400 Invalid type for 'n': expected an integer, but got a string instead.");
  });

  it('counts the prompt in code points: 32,000 emoji pass', async () => {
    const res = await client.images.generate({...base, prompt: '😀'.repeat(32000), output_format: 'jpeg'});
    expect(b64Images(res)).toHaveLength(1);
    await expectApiError(
      generate(client, {...base, prompt: '😀'.repeat(32001)}),
      400,
      'prompt',
      'string_above_max_length',
    );
  });

  it('takes every SDK enum value and option together where the wire rules allow it', async () => {
    const res = await client.images.generate({
      ...base,
      background: 'opaque',
      complexity: 'high',
      moderation: 'low',
      quality: 'xhigh',
      output_format: 'webp',
      output_compression: 0,
      n: 1,
      stream: false,
      partial_images: 0,
      safety_identifier: null,
    });
    expect(res).toMatchObject({
      quality: 'xhigh',
      output_format: 'webp',
      background: 'opaque',
      safety_identifier: null,
    });
  });

  describe('sizes (general limits, the same for every model)', () => {
    // SVG answers are cheap to make, so they check that a size is accepted and made.
    it.each([
      ['1024x640', 1024, 640], // exactly 655,360 pixels
      ['1536x512', 1536, 512], // 3:1
      ['512x1536', 512, 1536], // 1:3
      ['1536x1024', 1536, 1024],
      ['2560x1440', 2560, 1440],
      ['3840x2160', 3840, 2160], // the maximum
      ['auto', 1024, 1024],
    ])('%s is made as %ix%i', async (size, width, height) => {
      const res = await client.images.generate({...base, size, output_format: 'svg'});
      expect(res.size).toBe(`${width}x${height}`);
      const meta = await sharp(onlyImage(res)).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['svg', width, height]);
    });

    it('an absent size is 1024x1024', async () => {
      const res = await client.images.generate({model: 'gpt-image-2', prompt: 'p', output_format: 'svg'});
      expect(res.size).toBe('1024x1024');
    });

    it.each([
      '1000x1000', // not multiples of 16
      '1024x1000',
      '3856x1296', // edge above 3840
      '3840x2176', // above 3840x2160 pixels
      '2160x3856',
      '1584x512', // beyond 3:1
      '512x1584',
      '1024x624', // below 655,360 pixels
      '512x512',
      '256x256',
      '0x1024',
      '01024x1024',
      '1024X1024',
      'big',
      '1024x',
    ])('%s → 400 size/invalid_value', async size => {
      const error = await expectApiError(
        client.images.generate({...base, size}),
        400,
        'size',
        'invalid_value',
      );
      expect(error.message).toContain(`'${size}'`);
    });
  });

  it('without preview access, gif and svg output are 403; setPreviewAccess and the option control it', async () => {
    fake.setPreviewAccess({gif: false});
    const gif = await apiErrorOf(client.images.generate({...base, output_format: 'gif'}));
    expect(gif).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(gif.status).toBe(403);
    expect(gif.error).toEqual({
      message: 'This project does not have access to GIF output.',
      type: 'invalid_request_error',
      param: 'output_format',
      code: 'unsupported_value',
    });
    expect((await client.images.generate({...base, output_format: 'svg'})).output_format).toBe('svg');
    fake.setPreviewAccess({svg: false});
    const svg = await expectApiError(
      client.images.generate({...base, output_format: 'svg'}),
      403,
      'output_format',
      'unsupported_value',
    );
    expect(svg.message).toContain('does not have access to SVG output');
    const edit = await postEdit(fake, {...base, output_format: 'gif'}, [{field: 'image', bytes: png64x48}]);
    expectErrorBody(edit, 403, 'output_format', 'unsupported_value');
    fake.reset();
    expect((await client.images.generate({...base, output_format: 'svg'})).output_format).toBe('svg');

    const restricted = await startFakeOpenAI({previews: {svg: false}});
    try {
      await expectApiError(
        clientFor(restricted).images.generate({...base, output_format: 'svg'}),
        403,
        'output_format',
        'unsupported_value',
      );
    } finally {
      await restricted.close();
    }
  });
});

describe('answers', () => {
  it('gpt-image-2 with defaults: a 1024x1024 PNG and exactly the documented fields', async () => {
    const prompt = 'an isometric city block at night, neon signs';
    const before = Math.floor(Date.now() / 1000);
    const res = await client.images.generate({model: 'gpt-image-2', prompt});
    expect(Object.keys(res).sort()).toEqual(
      [
        'background',
        'created',
        'data',
        'output_format',
        'quality',
        'safety_identifier',
        'size',
        'usage',
      ].sort(),
    );
    const image = onlyImage(res);
    const meta = await decode(image);
    expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual(['png', 1024, 1024, false]);
    // Noise makes the PNG as heavy as a real one.
    expect(image.length).toBeGreaterThan(1_000_000);
    expect(res).toMatchObject({
      background: 'opaque',
      output_format: 'png',
      quality: 'high',
      size: '1024x1024',
      safety_identifier: null,
    });
    expect(res.created).toBeGreaterThanOrEqual(before);
    expect(res.created).toBeLessThanOrEqual(Math.floor(Date.now() / 1000));
    const textTokens = Math.ceil(prompt.length / 4);
    expect(res.usage).toEqual({
      input_tokens: textTokens,
      input_tokens_details: {image_tokens: 0, text_tokens: textTokens},
      output_tokens: 4160,
      total_tokens: textTokens + 4160,
    });
  });

  it('safety_identifier echoes the effective value: non-empty safety_identifier, else user, else null', async () => {
    const base = {model: 'gpt-image-2', prompt: 'p', size: SMALL, output_format: 'jpeg'} as const;
    const cases: Array<[Partial<GenerateBody>, string | null]> = [
      [{safety_identifier: 'sid-1', user: 'user-1'}, 'sid-1'],
      [{safety_identifier: '', user: 'user-1'}, 'user-1'],
      [{safety_identifier: null, user: 'user-1'}, 'user-1'],
      [{user: 'user-1'}, 'user-1'],
      [{safety_identifier: 'sid-1'}, 'sid-1'],
      [{}, null],
    ];
    for (const [extra, expected] of cases) {
      const res = await client.images.generate({...base, ...extra});
      expect(res.safety_identifier).toBe(expected);
    }
  });

  it('output_tokens_details appears only with the option', async () => {
    const detailed = await startFakeOpenAI({includeOutputTokensDetails: true});
    try {
      const body = {
        model: 'gpt-image-2',
        prompt: 'p',
        size: SMALL,
        quality: 'low',
        output_format: 'jpeg',
      } as const;
      const res = await clientFor(detailed).images.generate(body);
      expect(res.usage?.output_tokens_details).toEqual({
        image_tokens: res.usage?.output_tokens,
        text_tokens: 0,
      });
      expect((await client.images.generate(body)).usage).not.toHaveProperty('output_tokens_details');
    } finally {
      await detailed.close();
    }
  });

  it('JPEG with compression, n images, all distinct; output tokens scale with pixels and n', async () => {
    const res = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a bowl of ramen',
      size: '1536x1024',
      quality: 'low',
      output_format: 'jpeg',
      output_compression: 40,
      n: 3,
    });
    const images = b64Images(res);
    expect(images).toHaveLength(3);
    for (const image of images) {
      const meta = await decode(image);
      expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 1536, 1024]);
    }
    expect(new Set(images.map(sha256)).size).toBe(3);
    expect(res).toMatchObject({
      output_format: 'jpeg',
      quality: 'low',
      size: '1536x1024',
      background: 'opaque',
    });
    expect(res.usage?.output_tokens).toBe(3 * 408);
  });

  it('transparent WebP and PNG carry a real alpha channel', async () => {
    for (const output_format of ['webp', 'png'] as const) {
      const res = await client.images.generate({
        model: 'gpt-image-2.5-flare',
        prompt: 'a sticker of a cat',
        size: '640x1024',
        background: 'transparent',
        output_format,
      });
      const image = onlyImage(res);
      const meta = await decode(image);
      expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual([output_format, 640, 1024, true]);
      const alpha = (await sharp(image).stats()).channels[3];
      expect([alpha?.min, alpha?.max]).toEqual([0, 255]);
      expect(res.background).toBe('transparent');
    }
  });

  it('GIF: an animated image with frame_count frames and the delay rounded to 10 ms', async () => {
    const res = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a waving flag',
      size: SMALL,
      output_format: 'gif',
      frame_count: 4,
      frame_duration_ms: 123,
    });
    expect(res.output_format).toBe('gif');
    const gif = onlyImage(res);
    const meta = await sharp(gif, {animated: true}).metadata();
    expect([meta.format, meta.pages, meta.width, meta.pageHeight]).toEqual(['gif', 4, 1024, 640]);
    expect(meta.delay).toEqual([120, 120, 120, 120]);
    // Frames differ: it is an animation, not one picture repeated.
    const frames = await Promise.all([0, 1].map(page => sharp(gif, {page}).raw().toBuffer()));
    expect(sha256(frames[0] ?? Buffer.alloc(0))).not.toBe(sha256(frames[1] ?? Buffer.alloc(0)));
    // Each frame counts as an image for output tokens.
    expect(res.usage?.output_tokens).toBe(4 * Math.round((4160 * 1024 * 640) / (1024 * 1024)));

    const defaults = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'p',
      size: SMALL,
      output_format: 'gif',
    });
    const defaultMeta = await sharp(onlyImage(defaults), {animated: true}).metadata();
    expect(defaultMeta.pages).toBe(9);
    expect(defaultMeta.delay?.every(delay => delay === 200)).toBe(true);
  });

  it('SVG: a document of the requested size with svg_usage', async () => {
    const res = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a logo',
      size: '1536x1024',
      output_format: 'svg',
      svg: {model: 'svg-author-1', reasoning: {effort: 'low'}},
    });
    const svg = onlyImage(res);
    const text = svg.toString('utf8');
    expect(text).toMatch(
      /^<\?xml version="1\.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="1536" height="1024"/,
    );
    expect(text.trimEnd().endsWith('</svg>')).toBe(true);
    const meta = await sharp(svg).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['svg', 1536, 1024]);
    expect(res.svg_usage).toEqual({
      input_tokens: expect.any(Number),
      model: 'svg-author-1',
      output_tokens: expect.any(Number),
      reasoning_tokens: 256,
      total_tokens: (res.svg_usage?.input_tokens ?? 0) + (res.svg_usage?.output_tokens ?? 0),
    });
    expect(res.usage?.input_tokens).toBeGreaterThan(0);
    const other = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a logo',
      size: '1536x1024',
      output_format: 'svg',
    });
    expect(sha256(onlyImage(other))).not.toBe(sha256(svg));
  });

  it('stamps a unique id into a well-formed container for every raster format', async () => {
    const base = {model: 'gpt-image-2', prompt: 'p', size: SMALL} as const;
    const pngs = b64Images(await client.images.generate({...base, n: 2}));
    const texts = pngs.map(pngTextChunks);
    for (const chunkTexts of texts) expect(chunkTexts).toHaveLength(1);
    expect(texts[0]?.[0]).not.toBe(texts[1]?.[0]);

    const jpeg = onlyImage(await client.images.generate({...base, output_format: 'jpeg'}));
    // SOI, then a COM segment.
    expect([...jpeg.subarray(0, 4)]).toEqual([0xff, 0xd8, 0xff, 0xfe]);

    for (const background of ['opaque', 'transparent'] as const) {
      const webp = onlyImage(await client.images.generate({...base, output_format: 'webp', background}));
      const chunks = webpChunks(webp);
      expect(chunks[0]).toBe('VP8X');
      expect(chunks.at(-1)).toBe('FAKE');
      expect((await decode(webp)).hasAlpha).toBe(background === 'transparent');
    }

    const gifs = await Promise.all(
      [0, 1].map(async () =>
        onlyImage(await client.images.generate({...base, output_format: 'gif', frame_count: 2})),
      ),
    );
    expect(gifs[0]?.includes(Buffer.from('fake-openai img-'))).toBe(true);
    expect(sha256(gifs[0] ?? Buffer.alloc(0))).not.toBe(sha256(gifs[1] ?? Buffer.alloc(0)));
  });

  it('records each request: method, path, headers, body, timings and status', async () => {
    const body = {
      model: 'gpt-image-2',
      prompt: 'a kite',
      size: SMALL,
      user: 'user-1',
      safety_identifier: 'hash-123',
    };
    await client.images.generate(body);
    expect(fake.requests).toHaveLength(1);
    const [recorded] = fake.requests;
    expect(recorded).toMatchObject({
      method: 'POST',
      path: '/v1/images/generations',
      bodyKind: 'json',
      body,
      status: 200,
    });
    expect(recorded?.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(recorded?.headers['content-type']).toContain('application/json');
    expect(recorded?.firstPartialAt).toBeUndefined();
    expect(recorded?.completedAt).toBeGreaterThanOrEqual(recorded?.receivedAt ?? Infinity);
    expect(Math.abs((recorded?.receivedAt ?? 0) - (performance.timeOrigin + performance.now()))).toBeLessThan(
      10_000,
    );
  });

  it('serves 128 concurrent requests with distinct images', async () => {
    fake.setLatency(100);
    const result = await Promise.all(
      Array.from({length: 128}, (_, i) =>
        client.images.generate({
          model: 'gpt-image-2',
          prompt: `concurrent ${i}`,
          size: SMALL,
          output_format: 'jpeg',
          output_compression: 5,
        }),
      ),
    );
    const hashes = result.flatMap(res => b64Images(res).map(sha256));
    expect(new Set(hashes).size).toBe(128);
    expect(fake.requests).toHaveLength(128);
    // Served side by side, not one after another: some request arrived before another was answered.
    const arrivals = fake.requests.map(r => r.receivedAt);
    const answers = fake.requests.map(r => r.completedAt ?? Infinity);
    const firstAnswer = Math.min(...answers);
    expect(arrivals.filter(at => at < firstAnswer).length).toBeGreaterThan(1);
  });

  it('puts an x-request-id on answers', async () => {
    const {data, response, request_id} = await client.images
      .generate({model: 'gpt-image-2', prompt: 'a dog', size: SMALL, output_format: 'svg'})
      .withResponse();
    expect(data.data).toHaveLength(1);
    expect(response.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
    expect(request_id).toBe(response.headers.get('x-request-id'));
    const error = await apiErrorOf(generate(client, {model: 'gpt-image-2', prompt: ''}));
    expect(error.requestID).toMatch(/^req_[0-9a-f]{32}$/);
    expect(error.requestID).not.toBe(request_id);
  });

  it('rejects a body that is not valid JSON, and answers unknown routes with an OpenAI-style 404', async () => {
    const response = await fetch(`${fake.url}/images/generations`, {
      method: 'POST',
      headers: {authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json'},
      body: '{"prompt": "unterminated',
    });
    expect(response.status).toBe(400);
    const body = (await response.json()) as {error: Record<string, unknown>};
    expect(body.error).toMatchObject({type: 'invalid_request_error', param: null, code: null});
    expect(String(body.error.message)).toContain('could not parse the JSON body');
    expect(fake.requests[0]).toMatchObject({bodyKind: 'none', body: null});

    expect(await rejectionOf(client.models.list())).toBeInstanceOf(OpenAI.NotFoundError);
    const nope = await fetch(`${fake.url}/nope`);
    expect(nope.status).toBe(404);
    expect(await nope.json()).toEqual({
      error: {message: 'Invalid URL (GET /v1/nope)', type: 'invalid_request_error', param: null, code: null},
    });
    // The retired variations endpoint and URL images are gone.
    expect((await fetch(`${fake.url}/images/variations`, {method: 'POST'})).status).toBe(404);
    expect((await fetch(new URL('/images/img-1.png', fake.url))).status).toBe(404);
  });
});

interface Arrival<T> {
  event: T;
  at: number;
}

async function collect<T>(stream: AsyncIterable<T>): Promise<Array<Arrival<T>>> {
  const arrivals: Array<Arrival<T>> = [];
  for await (const event of stream) arrivals.push({event, at: performance.now()});
  return arrivals;
}

describe('streaming', () => {
  const base = {model: 'gpt-image-2', prompt: 'a comet', size: SMALL} as const;

  it('partial images, then the completed event, spaced over the latency, in the SDK shapes', async () => {
    fake.setLatency(400);
    fake.setPartialInterval(150);
    const start = performance.now();
    const stream = await client.images.generate({
      ...base,
      stream: true,
      partial_images: 2,
      safety_identifier: 'sid-9',
    });
    const arrivals = await collect(stream);
    expect(arrivals.map(a => a.event.type)).toEqual([
      'image_generation.partial_image',
      'image_generation.partial_image',
      'image_generation.completed',
    ]);
    const [first, , completed] = arrivals;
    // The first event after what remains of the latency (400 - 2 x 150), then 150 ms apart. The
    // spacing is checked on the fake's own clock: a busy client may read two events at once.
    expect((first?.at ?? 0) - start).toBeGreaterThanOrEqual(90);
    const sent = fake.requests.at(-1)!;
    expect(sent.completedAt! - sent.firstPartialAt!).toBeGreaterThanOrEqual(2 * 150 - 5);

    for (const [index, arrival] of arrivals.slice(0, 2).entries()) {
      const event = arrival.event as OpenAI.ImageGenPartialImageEvent;
      expect(Object.keys(event).sort()).toEqual(
        [
          'b64_json',
          'background',
          'created_at',
          'output_format',
          'partial_image_index',
          'quality',
          'size',
          'type',
        ].sort(),
      );
      expect(event).toMatchObject({
        partial_image_index: index,
        background: 'auto',
        quality: 'auto',
        output_format: 'png',
        size: SMALL,
      });
      const meta = await decode(Buffer.from(event.b64_json, 'base64'));
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 1024, 640]);
    }
    const done = completed?.event as OpenAI.ImageGenCompletedEvent;
    expect(Object.keys(done).sort()).toEqual(
      [
        'b64_json',
        'background',
        'created_at',
        'output_format',
        'quality',
        'safety_identifier',
        'size',
        'type',
        'usage',
      ].sort(),
    );
    expect(done).toMatchObject({
      background: 'auto',
      quality: 'auto',
      output_format: 'png',
      size: SMALL,
      safety_identifier: 'sid-9',
    });
    expect(Math.abs(done.created_at - Date.now() / 1000)).toBeLessThan(60);
    expect(Object.keys(done.usage).sort()).toEqual([
      'input_tokens',
      'input_tokens_details',
      'output_tokens',
      'total_tokens',
    ]);
    const final = Buffer.from(done.b64_json, 'base64');
    const finalMeta = await decode(final);
    expect([finalMeta.format, finalMeta.width, finalMeta.height]).toEqual(['png', 1024, 640]);
    // The final image is the full one: heavier than the coarse partials.
    const partialBytes = Buffer.from(
      (first?.event as OpenAI.ImageGenPartialImageEvent | undefined)?.b64_json ?? '',
      'base64',
    );
    expect(final.length).toBeGreaterThan(partialBytes.length * 5);

    const [recorded] = fake.requests;
    expect(recorded?.status).toBe(200);
    expect((recorded?.completedAt ?? 0) - (recorded?.firstPartialAt ?? Infinity)).toBeGreaterThanOrEqual(290);
    expect(recorded?.firstPartialAt).toBeGreaterThan(recorded?.receivedAt ?? Infinity);
  });

  it('without an interval, the latency is split evenly over the events', async () => {
    fake.setLatency(300);
    const start = performance.now();
    const arrivals = await collect(await client.images.generate({...base, stream: true, partial_images: 1}));
    expect(arrivals.map(a => a.event.type)).toEqual([
      'image_generation.partial_image',
      'image_generation.completed',
    ]);
    expect((arrivals[0]?.at ?? 0) - start).toBeGreaterThanOrEqual(140);
    expect((arrivals[1]?.at ?? 0) - start).toBeGreaterThanOrEqual(290);
  });

  it('n images: each with its partials then its completed event; no partials gives one event per image', async () => {
    const twice = await collect(
      await client.images.generate({...base, stream: true, partial_images: 1, n: 2}),
    );
    expect(twice.map(a => a.event.type)).toEqual([
      'image_generation.partial_image',
      'image_generation.completed',
      'image_generation.partial_image',
      'image_generation.completed',
    ]);
    const finals = twice.filter(a => a.event.type === 'image_generation.completed');
    expect(new Set(finals.map(a => sha256(Buffer.from(a.event.b64_json, 'base64')))).size).toBe(2);

    const single = await collect(
      await client.images.generate({
        ...base,
        stream: true,
        output_format: 'jpeg',
        quality: 'medium',
        background: 'opaque',
      }),
    );
    expect(single.map(a => a.event.type)).toEqual(['image_generation.completed']);
    expect(single[0]?.event).toMatchObject({output_format: 'jpeg', quality: 'medium', background: 'opaque'});
    expect(fake.requests.at(-1)?.firstPartialAt).toBeUndefined();
    expect(fake.requests.at(-1)?.completedAt).toBeGreaterThan(0);
  });

  it('is plain SSE on the wire: event names match the data types', async () => {
    const response = await fetch(`${fake.url}/images/generations`, {
      method: 'POST',
      headers: {authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json'},
      body: JSON.stringify({...base, output_format: 'webp', stream: true, partial_images: 1}),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const blocks = (await response.text()).split('\n\n').filter(Boolean);
    expect(blocks).toHaveLength(2);
    for (const block of blocks) {
      const match = /^event: (\S+)\ndata: (\{.*\})$/s.exec(block);
      expect(match).not.toBeNull();
      const data = JSON.parse(match?.[2] ?? '{}') as {type: string; b64_json: string};
      expect(data.type).toBe(match?.[1]);
      expect((await sharp(Buffer.from(data.b64_json, 'base64')).metadata()).format).toBe('webp');
    }
  });

  it('edits stream image_edit events', async () => {
    const stream = await client.images.edit({
      ...base,
      image: await toFile(png64x48, 'in.png'),
      stream: true,
      partial_images: 1,
    });
    const arrivals = await collect(stream);
    expect(arrivals.map(a => a.event.type)).toEqual(['image_edit.partial_image', 'image_edit.completed']);
    const done = arrivals[1]?.event as OpenAI.ImageEditCompletedEvent;
    expect(done.usage.input_tokens_details.image_tokens).toBeGreaterThan(0);
    expect(done.safety_identifier).toBeNull();
  });

  it('validation errors come before the stream, as JSON', async () => {
    const error = await expectApiError(
      client.images.generate({...base, size: '100x100', stream: true}),
      400,
      'size',
      'invalid_value',
    );
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
  });
});

describe('edits', () => {
  const base = {model: 'gpt-image-2', prompt: 'add a hat', size: SMALL};

  it('takes PNG, JPEG and WebP inputs judged by their bytes, counts their tokens and records the parts', async () => {
    const jpeg = await sharp(png64x48).jpeg().toBuffer();
    const webp = await sharp(png64x48).webp().toBuffer();
    const res = await client.images.edit({
      ...base,
      output_format: 'jpeg',
      safety_identifier: 'sid-e',
      image: [
        await toFile(png64x48, 'a.png', {type: 'image/png'}),
        // Declared types that lie: the bytes decide.
        await toFile(jpeg, 'b.bin', {type: 'application/octet-stream'}),
        await toFile(webp, 'c.png', {type: 'image/png'}),
      ],
    });
    const image = onlyImage(res);
    expect([(await decode(image)).format, res.size, res.safety_identifier]).toEqual(['jpeg', SMALL, 'sid-e']);
    const usage = res.usage;
    expect(usage?.input_tokens_details.image_tokens).toBe(3 * (65 + 129));
    expect(usage?.input_tokens).toBe(
      (usage?.input_tokens_details.image_tokens ?? 0) + (usage?.input_tokens_details.text_tokens ?? 0),
    );

    const recorded = fake.requests[0];
    expect(recorded?.path).toBe('/v1/images/edits');
    const body = multipartBodyOf(recorded);
    expect(body.fields).toEqual({...base, output_format: 'jpeg', safety_identifier: 'sid-e'});
    expect(body.files).toEqual([
      {
        field: 'image[]',
        filename: 'a.png',
        contentType: 'image/png',
        bytes: png64x48.length,
        sha256: sha256(png64x48),
      },
      {
        field: 'image[]',
        filename: 'b.bin',
        contentType: 'application/octet-stream',
        bytes: jpeg.length,
        sha256: sha256(jpeg),
      },
      {
        field: 'image[]',
        filename: 'c.png',
        contentType: 'image/png',
        bytes: webp.length,
        sha256: sha256(webp),
      },
    ]);
  });

  it('parses multipart numbers, booleans and nested fields as the API does', async () => {
    const two = await postEdit(fake, {...base, n: '2', output_format: 'jpeg', output_compression: '30'}, [
      {field: 'image', bytes: png64x48},
    ]);
    expect(two.status).toBe(200);
    expect(two.body.data).toHaveLength(2);

    const svg = await client.images.edit({
      ...base,
      image: await toFile(png64x48, 'in.png'),
      output_format: 'svg',
      svg: {model: 'svg-author-2', reasoning: {effort: 'high'}},
    });
    expect(svg.svg_usage).toMatchObject({model: 'svg-author-2', reasoning_tokens: 4096});
    expect(multipartBodyOf(fake.requests.at(-1)).fields).toMatchObject({
      'svg[model]': 'svg-author-2',
      'svg[reasoning][effort]': 'high',
    });

    const cases: Array<[Record<string, string>, string, string]> = [
      [{n: 'two'}, 'n', 'invalid_type'],
      [{n: '1.5'}, 'n', 'invalid_type'],
      [{n: '11'}, 'n', 'integer_above_max_value'],
      [{stream: 'yes'}, 'stream', 'invalid_type'],
      [{quality: 'hd'}, 'quality', 'invalid_value'], // not in the edit union at all
      [{moderation: 'low'}, 'moderation', 'unknown_parameter'], // generations only
      [{style: 'vivid'}, 'style', 'unknown_parameter'], // not an edit parameter
      [{response_format: 'b64_json'}, 'response_format', 'unsupported_parameter'],
      [{'svg[colour]': 'red', output_format: 'svg'}, 'svg.colour', 'unknown_parameter'],
      [{'svg[reasoning][effort]': 'huge', output_format: 'svg'}, 'svg.reasoning.effort', 'invalid_value'],
      [{'prompt[]': 'p'}, 'prompt[]', 'unknown_parameter'],
      [{input_fidelity: 'medium'}, 'input_fidelity', 'invalid_value'],
      [{output_format: 'gif', partial_images: '1'}, 'partial_images', 'invalid_value'],
      [{image: 'https://example.com/a.png'}, 'image', 'invalid_type'],
    ];
    for (const [extra, param, code] of cases) {
      const answer = await postEdit(fake, {...base, ...extra}, [{field: 'image', bytes: png64x48}]);
      expectErrorBody(answer, 400, param, code);
    }
    // input_fidelity and frame options parse and pass.
    const fidelity = await postEdit(
      fake,
      {...base, input_fidelity: 'high', output_format: 'gif', frame_count: '2'},
      [{field: 'image', bytes: png64x48}],
    );
    expect(fidelity.status).toBe(200);
    expect(fidelity.body.output_format).toBe('gif');
  });

  it('checks the images: 1 to 16, PNG/JPEG/WebP by their bytes, each under 50 MB', async () => {
    expectErrorBody(await postEdit(fake, base, []), 400, 'image', 'missing_required_parameter');
    const seventeen = Array.from({length: 17}, () => ({field: 'image[]', bytes: png64x48}));
    expectErrorBody(await postEdit(fake, base, seventeen), 400, 'image', 'array_above_max_length');
    const sixteen = seventeen.slice(1);
    const ok = await postEdit(fake, {...base, output_format: 'jpeg'}, sixteen);
    expect(ok.status).toBe(200);
    expect((ok.body.usage as OpenAI.ImagesResponse.Usage).input_tokens_details.image_tokens).toBe(16 * 194);

    const gifBytes = await sharp(png64x48).gif().toBuffer();
    const gif = await postEdit(fake, base, [
      {field: 'image[]', bytes: png64x48},
      {field: 'image[]', bytes: gifBytes, type: 'image/png', filename: 'fake.png'},
    ]);
    expectErrorBody(gif, 400, 'image', 'unsupported_file_mimetype');
    const text = await postEdit(fake, base, [
      {field: 'image', bytes: Buffer.from('not an image'), type: 'image/jpeg'},
    ]);
    expectErrorBody(text, 400, 'image', 'unsupported_file_mimetype');
    const broken = await postEdit(fake, base, [{field: 'image', bytes: png64x48.subarray(0, 20)}]);
    expectErrorBody(broken, 400, 'image', 'invalid_image_format');
    // Declared as GIF, but PNG bytes: accepted.
    const declaredGif = await postEdit(fake, {...base, output_format: 'jpeg'}, [
      {field: 'image', bytes: png64x48, type: 'image/gif', filename: 'x.gif'},
    ]);
    expect(declaredGif.status).toBe(200);

    const huge = Buffer.alloc(50 * 1024 * 1024);
    png64x48.copy(huge);
    const tooBig = await postEdit(fake, base, [{field: 'image', bytes: huge}]);
    expectErrorBody(tooBig, 400, 'image', 'image_too_large');
    const summary = multipartBodyOf(fake.requests.at(-1)).files[0];
    expect(summary).toMatchObject({field: 'image', bytes: huge.length, sha256: sha256(huge)});
  });

  it('checks the mask: a PNG with alpha, under 4 MB, the size of the first image', async () => {
    const image = {field: 'image', bytes: png64x48};
    const ok = await postEdit(fake, {...base, output_format: 'jpeg'}, [
      image,
      {field: 'mask', bytes: mask64x48},
    ]);
    expect(ok.status).toBe(200);

    const cases: Array<[string, Buffer, string]> = [
      ['a JPEG', await sharp(mask64x48).jpeg().toBuffer(), 'invalid_image_format'],
      ['without alpha', png64x48, 'invalid_image_format'],
      ['of another size', await maskPng(48, 64), 'invalid_value'],
      ['over 4 MB', Buffer.concat([mask64x48, Buffer.alloc(4 * 1024 * 1024)]), 'image_too_large'],
    ];
    for (const [, bytes, code] of cases) {
      expectErrorBody(await postEdit(fake, base, [image, {field: 'mask', bytes}]), 400, 'mask', code);
    }
    // Against the first image, whatever the others are.
    const second = await postEdit(fake, {...base, output_format: 'jpeg'}, [
      image,
      {field: 'image', bytes: await opaquePng(32, 32)},
      {field: 'mask', bytes: mask64x48},
    ]);
    expect(second.status).toBe(200);
    const two = await postEdit(fake, base, [
      image,
      {field: 'mask', bytes: mask64x48},
      {field: 'mask', bytes: mask64x48},
    ]);
    expectErrorBody(two, 400, 'mask', 'invalid_value');
    const gif = await postEdit(fake, {...base, output_format: 'gif'}, [
      image,
      {field: 'mask', bytes: mask64x48},
    ]);
    expectErrorBody(gif, 400, 'mask', 'invalid_value');
  });

  it('judges the first image after its EXIF orientation', async () => {
    // 64x48 pixels stored, shown rotated: 48x64.
    const rotated = await sharp(png64x48).jpeg().withMetadata({orientation: 6}).toBuffer();
    const image = {field: 'image', bytes: rotated, type: 'image/jpeg', filename: 'r.jpg'};
    const upright = await postEdit(fake, {...base, output_format: 'jpeg'}, [
      image,
      {field: 'mask', bytes: await maskPng(48, 64)},
    ]);
    expect(upright.status).toBe(200);
    expectErrorBody(
      await postEdit(fake, base, [image, {field: 'mask', bytes: mask64x48}]),
      400,
      'mask',
      'invalid_value',
    );
  });

  it('checks the markup: a transparent PNG the size of the first image, never with a mask', async () => {
    const image = {field: 'image', bytes: png64x48};
    const ok = await postEdit(fake, {...base, output_format: 'jpeg'}, [
      image,
      {field: 'markup', bytes: mask64x48},
    ]);
    expect(ok.status).toBe(200);
    const both = await postEdit(fake, base, [
      image,
      {field: 'mask', bytes: mask64x48},
      {field: 'markup', bytes: mask64x48},
    ]);
    expectErrorBody(both, 400, 'markup', 'invalid_value');
    const opaqueWithAlpha = await sharp(png64x48).ensureAlpha().png().toBuffer();
    const cases: Array<[Buffer, string]> = [
      [png64x48, 'invalid_image_format'], // no alpha channel
      [opaqueWithAlpha, 'invalid_image_format'], // alpha, but no transparent pixel
      [await sharp(mask64x48).webp().toBuffer(), 'invalid_image_format'],
      [await maskPng(64, 64), 'invalid_value'],
    ];
    for (const [bytes, code] of cases) {
      expectErrorBody(await postEdit(fake, base, [image, {field: 'markup', bytes}]), 400, 'markup', code);
    }
  });

  it('refuses malformed forms: wrong content type, files in text fields, unknown or repeated parts', async () => {
    const json = await fetch(`${fake.url}/images/edits`, {
      method: 'POST',
      headers: {authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json'},
      body: JSON.stringify(base),
    });
    expect(json.status).toBe(400);
    expect(((await json.json()) as {error: {message: string}}).error.message).toContain(
      'expected multipart/form-data',
    );

    const image = {field: 'image', bytes: png64x48};
    expectErrorBody(
      await postEdit(fake, base, [image, {field: 'prompt', bytes: png64x48}]),
      400,
      'prompt',
      'invalid_type',
    );
    expectErrorBody(
      await postEdit(fake, base, [image, {field: 'thumbnail', bytes: png64x48}]),
      400,
      'thumbnail',
      'unknown_parameter',
    );
    expectErrorBody(
      await postEdit(fake, base, [image, {field: 'mask[]', bytes: mask64x48}]),
      400,
      'mask[]',
      'unknown_parameter',
    );

    const form = new FormData();
    form.append('model', 'gpt-image-2');
    form.append('prompt', 'one');
    form.append('prompt', 'two');
    form.append('image', new Blob([png64x48], {type: 'image/png'}), 'in.png');
    const repeated = await fetch(`${fake.url}/images/edits`, {
      method: 'POST',
      headers: {authorization: `Bearer ${API_KEY}`},
      body: form,
    });
    expect(repeated.status).toBe(400);
    expect(((await repeated.json()) as {error: {param: string}}).error.param).toBe('prompt');
  });
});

describe('authentication', () => {
  const body = {model: 'gpt-image-2', prompt: 'p', size: SMALL, output_format: 'svg'} as const;

  it('rejects a wrong key with a masked key in the message', async () => {
    const wrong = clientFor(fake, {apiKey: 'sk-wrongsecret-9876'});
    const error = await apiErrorOf(wrong.images.generate(body));
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect([error.status, error.code, error.type]).toEqual([401, 'invalid_api_key', 'invalid_request_error']);
    expect(error.message).toBe(
      '401 Incorrect API key provided: sk-************9876. ' +
        'You can find your API key at https://platform.openai.com/account/api-keys.',
    );
    expect(error.message).not.toContain('wrongsecret');
    const edit = await apiErrorOf(wrong.images.edit({...body, image: await toFile(png64x48, 'a.png')}));
    expect(edit.status).toBe(401);
  });

  it('rejects a request without an Authorization header', async () => {
    const response = await fetch(`${fake.url}/images/generations`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify(body),
    });
    expect(response.status).toBe(401);
    const answer = (await response.json()) as {error: {code: string; message: string}};
    expect(answer.error.code).toBe('invalid_api_key');
    expect(answer.error.message).toContain("You didn't provide an API key");
  });

  it('checks a custom key and the OpenAI-Organization header', async () => {
    const orgFake = await startFakeOpenAI({apiKey: 'sk-proj-custom-abcd', organization: 'org-fake123'});
    try {
      const good = clientFor(orgFake, {apiKey: 'sk-proj-custom-abcd', organization: 'org-fake123'});
      expect((await good.images.generate(body)).data).toHaveLength(1);
      expect(orgFake.requests[0]?.headers['openai-organization']).toBe('org-fake123');

      for (const organization of [undefined, 'org-other']) {
        const bad = clientFor(orgFake, {
          apiKey: 'sk-proj-custom-abcd',
          ...(organization ? {organization} : {}),
        });
        const error = await apiErrorOf(bad.images.generate(body));
        expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
        expect(error.code).toBe('mismatched_organization');
      }
      const defaultKey = await apiErrorOf(
        clientFor(orgFake, {organization: 'org-fake123'}).images.generate(body),
      );
      expect(defaultKey.code).toBe('invalid_api_key');
      expect(defaultKey.message).toContain('sk-****');
    } finally {
      await orgFake.close();
    }
  });
});

describe('faults', () => {
  const cheap = {model: 'gpt-image-2', prompt: 'p', size: SMALL, output_format: 'svg'} as const;
  const streamed = {model: 'gpt-image-2', prompt: 'p', size: SMALL, stream: true} as const;

  it('rate_limit surfaces as RateLimitError with retry-after headers, once by default', async () => {
    fake.injectFault({kind: 'rate_limit', retryAfterSeconds: 7});
    const error = await apiErrorOf(client.images.generate(cheap));
    expect(error).toBeInstanceOf(OpenAI.RateLimitError);
    expect(error.headers?.get('retry-after')).toBe('7');
    expect(error.headers?.get('retry-after-ms')).toBe('7000');
    expect(error.error).toEqual({
      message: 'Rate limit reached for images per min. Limit: 5/1min. Please try again in 7s.',
      type: 'requests',
      param: null,
      code: 'rate_limit_exceeded',
    });
    expect((await client.images.generate(cheap)).data).toHaveLength(1);

    fake.injectFault({kind: 'rate_limit'});
    expect((await apiErrorOf(client.images.generate(cheap))).headers?.get('retry-after')).toBe('1');
  });

  it('server_error honours times and status, on both endpoints', async () => {
    fake.injectFault({kind: 'server_error', status: 503}, {times: 2});
    const generation = await apiErrorOf(client.images.generate(cheap));
    expect(generation).toBeInstanceOf(OpenAI.InternalServerError);
    expect(generation.status).toBe(503);
    expect(generation.error).toEqual({
      message: 'The server had an error while processing your request. Sorry about that!',
      type: 'server_error',
      param: null,
      code: null,
    });
    const edit = await apiErrorOf(client.images.edit({...cheap, image: await toFile(png64x48, 'a.png')}));
    expect(edit.status).toBe(503);
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
    fake.injectFault({kind: 'server_error'});
    expect((await apiErrorOf(client.images.generate(cheap))).status).toBe(500);
  });

  it('applies before validation, only to authenticated image requests', async () => {
    fake.injectFault({kind: 'server_error', status: 502});
    expect((await fetch(`${fake.url}/nope`)).status).toBe(404);
    const unauthenticated = await apiErrorOf(clientFor(fake, {apiKey: 'sk-nope'}).images.generate(cheap));
    expect(unauthenticated.status).toBe(401);
    // Still pending: the invalid request gets the fault, not a 400.
    expect((await apiErrorOf(generate(client, {...cheap, n: 99}))).status).toBe(502);
    expect((await apiErrorOf(generate(client, {...cheap, n: 99}))).status).toBe(400);
  });

  it('content_policy and the [[content-policy]] marker answer moderation_blocked', async () => {
    fake.injectFault({kind: 'content_policy'});
    const injected = await apiErrorOf(client.images.generate({...cheap, prompt: 'a harmless prompt'}));
    const marked = await apiErrorOf(
      client.images.generate({...cheap, prompt: 'draw [[content-policy]] please'}),
    );
    const markedEdit = await apiErrorOf(
      client.images.edit({...cheap, prompt: '[[content-policy]]', image: await toFile(png64x48, 'a.png')}),
    );
    for (const error of [injected, marked, markedEdit]) {
      expect(error).toBeInstanceOf(OpenAI.BadRequestError);
      expect([error.code, error.type, error.param]).toEqual([
        'moderation_blocked',
        'image_generation_user_error',
        null,
      ]);
      expect(error.message).toMatch(/^400 Your request was rejected by the safety system\./);
      expect(error.message).toContain(String(error.requestID));
    }
  });

  it('connection_reset surfaces as APIConnectionError and the next request works', async () => {
    fake.injectFault({kind: 'connection_reset'});
    expect(await rejectionOf(client.images.generate(cheap))).toBeInstanceOf(OpenAI.APIConnectionError);
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
  });

  it('malformed answers 200 with a body the SDK cannot parse, JSON or SSE', async () => {
    fake.injectFault({kind: 'malformed'}, {times: 3});
    expect(await rejectionOf(client.images.generate(cheap))).toBeInstanceOf(SyntaxError);
    const raw = await client.images.generate(cheap).asResponse();
    expect([raw.status, raw.headers.get('content-type')]).toEqual([200, 'application/json']);
    const text = await raw.text();
    expect(text.length).toBeGreaterThan(0);
    expect(() => JSON.parse(text)).toThrow(SyntaxError);
    const consoleError = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const stream = await client.images.generate(streamed);
      const error = await rejectionOf(collect(stream));
      expect(error).toBeInstanceOf(SyntaxError);
      expect((error as Error).message).toContain('malformed server-sent event JSON');
    } finally {
      consoleError.mockRestore();
    }
  });

  it('stream_error: the first partial, then an SSE error event the SDK raises as APIError', async () => {
    fake.setPartialInterval(50);
    fake.injectFault({kind: 'stream_error', message: 'Image generation failed midway.'});
    const stream = await client.images.generate({...streamed, partial_images: 2});
    const types: string[] = [];
    const error = await rejectionOf(
      (async () => {
        for await (const event of stream) types.push(event.type);
      })(),
    );
    expect(types).toEqual(['image_generation.partial_image']);
    expect(error).toBeInstanceOf(APIError);
    expect((error as APIError).message).toContain('Image generation failed midway.');
    expect((error as APIError).error).toMatchObject({type: 'server_error'});
    expect(fake.requests[0]?.firstPartialAt).toBeGreaterThan(0);
    expect(fake.requests[0]?.completedAt).toBeUndefined();

    // Without partials the error is the first event; a non-streamed request gets a 500.
    fake.injectFault({kind: 'stream_error'}, {times: 2});
    const bare = await client.images.generate(streamed);
    expect(await rejectionOf(collect(bare))).toBeInstanceOf(APIError);
    expect((await apiErrorOf(client.images.generate(cheap))).status).toBe(500);
  });

  it('stream_reset: the first partial, then the connection is reset', async () => {
    fake.injectFault({kind: 'stream_reset'}, {times: 2});
    const stream = await client.images.edit({
      ...streamed,
      image: await toFile(png64x48, 'a.png'),
      partial_images: 1,
    });
    const types: string[] = [];
    const error = await rejectionOf(
      (async () => {
        for await (const event of stream) types.push(event.type);
      })(),
    );
    expect(types).toEqual(['image_edit.partial_image']);
    // The transport's error (undici's, from another realm under jest), not an API error.
    expect(error).not.toBeInstanceOf(APIError);
    expect(error).toMatchObject({name: 'TypeError', message: 'terminated'});
    // A non-streamed answer is cut off partway.
    expect(await rejectionOf(client.images.generate({...cheap, output_format: 'png'}))).toBeInstanceOf(
      OpenAI.APIConnectionError,
    );
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
  });

  it('echo_secrets answers 502 repeating the Authorization header and the prompt', async () => {
    fake.injectFault({kind: 'echo_secrets'}, {times: 2});
    const generation = await apiErrorOf(client.images.generate({...cheap, prompt: 'a secret garden'}));
    expect(generation.status).toBe(502);
    expect(generation.message).toContain(`Bearer ${API_KEY}`);
    expect(generation.message).toContain('a secret garden');
    const edit = await apiErrorOf(
      client.images.edit({...cheap, prompt: 'private edit', image: await toFile(png64x48, 'a.png')}),
    );
    expect(edit.status).toBe(502);
    expect(edit.message).toContain(`Bearer ${API_KEY}`);
    expect(edit.message).toContain('private edit');
  });

  it('odd_answer sets revised_prompt and adds usage fields to a normal answer', async () => {
    fake.injectFault({kind: 'odd_answer', revisedPrompt: 'r'.repeat(40_000), usage: {__weird__: 1}});
    const answer = await client.images.generate({...cheap, output_format: 'png', n: 2});
    expect(answer.data?.map(d => d.revised_prompt?.length)).toEqual([40_000, 40_000]);
    expect(answer.usage).toMatchObject({__weird__: 1, total_tokens: expect.any(Number)});
    expect((await client.images.generate(cheap)).data?.[0]?.revised_prompt).toBeUndefined();
  });

  it('echo_secrets with status 400 answers an invalid_request_error repeating the same', async () => {
    fake.injectFault({kind: 'echo_secrets', status: 400});
    const error = await apiErrorOf(client.images.generate({...cheap, prompt: 'a secret garden'}));
    expect([error.status, error.type, error.param]).toEqual([400, 'invalid_request_error', null]);
    expect(error.message).toContain(`Bearer ${API_KEY}`);
    expect(error.message).toContain('a secret garden');
  });

  it('probability faults apply until clearFaults()', async () => {
    fake.injectFault({kind: 'server_error', status: 502}, {probability: 1});
    for (let i = 0; i < 3; i++) expect((await apiErrorOf(client.images.generate(cheap))).status).toBe(502);
    fake.clearFaults();
    expect((await client.images.generate(cheap)).data).toHaveLength(1);

    fake.injectFault({kind: 'rate_limit'}, {probability: 0.5});
    const outcomes = await Promise.all(
      Array.from({length: 40}, () =>
        client.images.generate(cheap).then(
          () => 'ok',
          (error: unknown) => (error instanceof OpenAI.RateLimitError ? '429' : 'other'),
        ),
      ),
    );
    expect(outcomes).toContain('ok');
    expect(outcomes).toContain('429');
    expect(outcomes).not.toContain('other');
  });

  it('rejects contradictory or out-of-range fault and timing options', () => {
    expect(() => fake.injectFault({kind: 'hang'}, {times: 1, probability: 0.5})).toThrow(TypeError);
    expect(() => fake.injectFault({kind: 'hang'}, {probability: 1.5})).toThrow(RangeError);
    expect(() => fake.injectFault({kind: 'hang'}, {times: 0})).toThrow(RangeError);
    expect(() => fake.injectFault({kind: 'server_error', status: 504 as 503})).toThrow(RangeError);
    expect(() => fake.setLatency(-1)).toThrow(RangeError);
    expect(() => fake.setPartialInterval(Number.NaN)).toThrow(RangeError);
  });

  it('latency delays answers, also faulted ones, and reset() restores the option value', async () => {
    const slow = await startFakeOpenAI({latencyMs: 150});
    try {
      const slowClient = clientFor(slow);
      expect((await timed(() => slowClient.images.generate(cheap))).ms).toBeGreaterThanOrEqual(140);

      slow.setLatency(400);
      slow.injectFault({kind: 'server_error'});
      const faulted = await timed(() => rejectionOf(slowClient.images.generate(cheap)));
      expect(faulted.result).toBeInstanceOf(OpenAI.InternalServerError);
      expect(faulted.ms).toBeGreaterThanOrEqual(390);

      // Were the latency still ten minutes, this request would never finish.
      slow.setLatency(600_000);
      slow.setLatency(0);
      expect((await slowClient.images.generate(cheap)).data).toHaveLength(1);

      slow.reset();
      expect(slow.requests).toHaveLength(0);
      expect((await timed(() => slowClient.images.generate(cheap))).ms).toBeGreaterThanOrEqual(140);
    } finally {
      await slow.close();
    }
  });

  it('reset() clears requests and pending faults', async () => {
    fake.injectFault({kind: 'server_error'}, {times: 5});
    await rejectionOf(client.images.generate(cheap));
    expect(fake.requests).toHaveLength(1);
    fake.reset();
    expect(fake.requests).toHaveLength(0);
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
    expect(fake.requests).toHaveLength(1);
  });

  it('close() finishes promptly with hung requests and a slow stream in flight', async () => {
    const hanging = await startFakeOpenAI();
    const hangingClient = clientFor(hanging);
    hanging.injectFault({kind: 'hang'});
    const hung = rejectionOf(hangingClient.images.generate(cheap));
    while (hanging.requests.length < 1) await sleep(5);
    hanging.setLatency(60_000);
    const delayed = rejectionOf(hangingClient.images.generate(cheap)); // stuck in the 60 s latency
    const streaming = hangingClient.images.generate({...streamed, partial_images: 3}).then(
      stream => rejectionOf(collect(stream)),
      (error: unknown) => error,
    );
    while (hanging.requests.length < 3) await sleep(5);

    // close() settles at all although one request hangs and one waits out a minute of latency.
    await hanging.close();
    expect(await hung).toBeInstanceOf(OpenAI.APIConnectionError);
    expect(await delayed).toBeInstanceOf(OpenAI.APIConnectionError);
    expect(String(((await streaming) as Error | undefined)?.message)).toMatch(
      /^(terminated|Connection error\.)$/,
    );
    // The port is closed now.
    expect(await rejectionOf(hangingClient.images.generate(cheap))).toBeInstanceOf(OpenAI.APIConnectionError);
  });
});
