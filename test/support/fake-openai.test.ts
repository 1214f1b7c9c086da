import {createHash} from 'node:crypto';
import {crc32} from 'node:zlib';
import OpenAI, {APIError} from 'openai';
import sharp from 'sharp';
import {startFakeOpenAI, type FakeOpenAI} from './fake-openai';

type GenerateBody = OpenAI.ImageGenerateParamsNonStreaming;

const API_KEY = 'sk-test-key';

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

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

function b64Images(response: OpenAI.ImagesResponse): Buffer[] {
  const data = response.data ?? [];
  return data.map(item => {
    expect(typeof item.b64_json).toBe('string');
    return Buffer.from(item.b64_json ?? '', 'base64');
  });
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

let fake: FakeOpenAI;
let client: OpenAI;

beforeAll(async () => {
  fake = await startFakeOpenAI();
  client = clientFor(fake);
});

afterEach(() => fake.reset());

afterAll(() => fake.close());

describe('successful generations', () => {
  it('dall-e-2 is the default model and returns distinct b64 PNGs of the requested size', async () => {
    const before = Math.floor(Date.now() / 1000);
    const res = await client.images.generate({
      prompt: 'a red fox',
      n: 3,
      size: '256x256',
      response_format: 'b64_json',
    });
    const images = b64Images(res);
    expect(images).toHaveLength(3);
    for (const image of images) {
      const meta = await decode(image);
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 256, 256]);
      expect(res.data?.[0]).not.toHaveProperty('url');
    }
    expect(new Set(images.map(sha256)).size).toBe(3);
    expect(res.created).toBeGreaterThanOrEqual(before);
    expect(res.created).toBeLessThanOrEqual(Math.floor(Date.now() / 1000));
    expect(res.usage).toBeUndefined();
    expect(res.data?.[0]?.revised_prompt).toBeUndefined();
    expect(res).not.toHaveProperty('output_format');
  });

  it('dall-e-2 defaults to url responses whose bytes the fake serves', async () => {
    const res = await client.images.generate({
      model: 'dall-e-2',
      prompt: 'a lighthouse',
      n: 2,
      size: '512x512',
    });
    const urls = (res.data ?? []).map(item => item.url);
    expect(urls).toHaveLength(2);
    expect(res.data?.[0]?.b64_json).toBeUndefined();
    const hashes: string[] = [];
    for (const url of urls) {
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/images\/img-[0-9a-z]+\.png$/);
      const download = await fetch(url ?? '');
      expect(download.status).toBe(200);
      expect(download.headers.get('content-type')).toBe('image/png');
      const bytes = Buffer.from(await download.arrayBuffer());
      const meta = await decode(bytes);
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 512, 512]);
      hashes.push(sha256(bytes));
      // A URL is stable: fetching it again returns the same bytes.
      const again = Buffer.from(await (await fetch(url ?? '')).arrayBuffer());
      expect(sha256(again)).toBe(sha256(bytes));
    }
    expect(new Set(hashes).size).toBe(2);
  });

  it('dall-e-3 returns the requested landscape size with a revised prompt and no usage', async () => {
    const res = await client.images.generate({
      model: 'dall-e-3',
      prompt: 'a quiet harbour at dawn',
      size: '1792x1024',
      quality: 'hd',
      style: 'natural',
      response_format: 'b64_json',
    });
    const [image] = b64Images(res);
    const meta = await decode(image ?? Buffer.alloc(0));
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 1792, 1024]);
    const revised = res.data?.[0]?.revised_prompt ?? '';
    expect(revised).toContain('a quiet harbour at dawn');
    expect(revised.length).toBeGreaterThan('a quiet harbour at dawn'.length);
    expect(res.usage).toBeUndefined();
  });

  it('gpt-image-1 resolves defaults and reports usage; a 1024x1024 noise PNG is megabytes like a real one', async () => {
    const prompt = 'an isometric city block at night, neon signs';
    const res = await client.images.generate({model: 'gpt-image-1', prompt});
    expect(res.data?.[0]?.url).toBeUndefined();
    const [image] = b64Images(res);
    const meta = await decode(image ?? Buffer.alloc(0));
    expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual(['png', 1024, 1024, false]);
    expect(image?.length).toBeGreaterThan(1_000_000);
    expect(image?.length).toBeLessThan(3_500_000);
    expect(res).toMatchObject({
      background: 'opaque',
      output_format: 'png',
      quality: 'high',
      size: '1024x1024',
    });
    const inputTokens = Math.ceil(prompt.length / 4);
    expect(res.usage).toEqual({
      input_tokens: inputTokens,
      input_tokens_details: {text_tokens: inputTokens, image_tokens: 0},
      output_tokens: 4160,
      total_tokens: inputTokens + 4160,
    });
  });

  it('gpt-image-1-mini encodes JPEG with output_compression and scales output tokens by pixels and n', async () => {
    const res = await client.images.generate({
      model: 'gpt-image-1-mini',
      prompt: 'a bowl of ramen',
      size: '1536x1024',
      quality: 'low',
      output_format: 'jpeg',
      output_compression: 40,
      n: 2,
    });
    const images = b64Images(res);
    expect(images).toHaveLength(2);
    for (const image of images) {
      const meta = await decode(image);
      expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 1536, 1024]);
    }
    expect(new Set(images.map(sha256)).size).toBe(2);
    expect(res).toMatchObject({
      output_format: 'jpeg',
      quality: 'low',
      size: '1536x1024',
      background: 'opaque',
    });
    expect(res.usage?.output_tokens).toBe(2 * 408);
  });

  it('gpt-image-1.5 returns transparent WebP with a real alpha channel', async () => {
    const res = await client.images.generate({
      model: 'gpt-image-1.5',
      prompt: 'a sticker of a cat',
      size: '1024x1536',
      quality: 'medium',
      background: 'transparent',
      output_format: 'webp',
    });
    const [image] = b64Images(res);
    const meta = await decode(image ?? Buffer.alloc(0));
    expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual(['webp', 1024, 1536, true]);
    const alpha = (await sharp(image).stats()).channels[3];
    expect(alpha?.min).toBe(0);
    expect(alpha?.max).toBe(255);
    expect(res).toMatchObject({
      background: 'transparent',
      output_format: 'webp',
      quality: 'medium',
      size: '1024x1536',
    });
    expect(res.usage?.output_tokens).toBe(1584);
  });

  it('gpt-image-2 accepts custom sizes (opaque WebP and transparent PNG) at the 3:1 aspect limit', async () => {
    const webp = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a panorama',
      size: '1536x512',
      quality: 'medium',
      output_format: 'webp',
      n: 2,
    });
    const webps = b64Images(webp);
    for (const image of webps) {
      const meta = await decode(image);
      expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual(['webp', 1536, 512, false]);
    }
    expect(new Set(webps.map(sha256)).size).toBe(2);
    expect(webp.size).toBe('1536x512');
    expect(webp.usage?.output_tokens).toBe(2 * Math.round((1056 * 1536 * 512) / (1024 * 1024)));

    const png = await client.images.generate({
      model: 'gpt-image-2',
      prompt: 'a tall banner',
      size: '512x1536',
      background: 'transparent',
    });
    const [image] = b64Images(png);
    const meta = await decode(image ?? Buffer.alloc(0));
    expect([meta.format, meta.width, meta.height, meta.hasAlpha]).toEqual(['png', 512, 1536, true]);
  });

  it('stamps a unique id into a well-formed container for every format', async () => {
    const png = b64Images(
      await client.images.generate({prompt: 'p', size: '256x256', response_format: 'b64_json', n: 2}),
    );
    const pngTexts = png.map(pngTextChunks);
    for (const texts of pngTexts) expect(texts).toHaveLength(1);
    expect(pngTexts[0]?.[0]).not.toBe(pngTexts[1]?.[0]);

    const jpeg = b64Images(
      await client.images.generate({
        model: 'gpt-image-2',
        prompt: 'p',
        size: '256x256',
        output_format: 'jpeg',
      }),
    );
    // SOI, then a COM segment.
    expect([...(jpeg[0] ?? Buffer.alloc(0)).subarray(0, 4)]).toEqual([0xff, 0xd8, 0xff, 0xfe]);

    for (const background of ['opaque', 'transparent'] as const) {
      const [webp] = b64Images(
        await client.images.generate({
          model: 'gpt-image-2',
          prompt: 'p',
          size: '256x256',
          output_format: 'webp',
          background,
        }),
      );
      const chunks = webpChunks(webp ?? Buffer.alloc(0));
      expect(chunks[0]).toBe('VP8X');
      expect(chunks.at(-1)).toBe('FAKE');
      expect((await decode(webp ?? Buffer.alloc(0))).hasAlpha).toBe(background === 'transparent');
    }
  });

  it('accepts user and safety_identifier and records the request', async () => {
    const res = await client.images.generate({
      prompt: 'a kite',
      size: '256x256',
      response_format: 'b64_json',
      user: 'user-1',
      safety_identifier: 'hash-123',
    });
    expect(res.data).toHaveLength(1);
    expect(fake.requests).toHaveLength(1);
    const [recorded] = fake.requests;
    expect(recorded?.method).toBe('POST');
    expect(recorded?.path).toBe('/v1/images/generations');
    expect(recorded?.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(recorded?.headers['content-type']).toContain('application/json');
    expect(recorded?.body).toEqual({
      prompt: 'a kite',
      size: '256x256',
      response_format: 'b64_json',
      user: 'user-1',
      safety_identifier: 'hash-123',
    });
  });

  it('serves 256 concurrent requests with distinct images', async () => {
    fake.setLatency(100);
    const {ms, result} = await timed(() =>
      Promise.all(
        Array.from({length: 256}, (_, i) =>
          client.images.generate({prompt: `concurrent ${i}`, size: '256x256', response_format: 'b64_json'}),
        ),
      ),
    );
    const hashes = result.flatMap(res => b64Images(res).map(sha256));
    expect(hashes).toHaveLength(256);
    expect(new Set(hashes).size).toBe(256);
    expect(fake.requests).toHaveLength(256);
    // Serially this would take at least 25.6 s of latency alone.
    expect(ms).toBeLessThan(10_000);
  });

  it('puts an x-request-id on responses', async () => {
    const {data, response, request_id} = await client.images
      .generate({prompt: 'a dog', size: '256x256', response_format: 'b64_json'})
      .withResponse();
    expect(data.data).toHaveLength(1);
    expect(response.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]{32}$/);
    expect(request_id).toBe(response.headers.get('x-request-id'));
    const error = await apiErrorOf(generate(client, {prompt: ''}));
    expect(error.requestID).toMatch(/^req_[0-9a-f]{32}$/);
    expect(error.requestID).not.toBe(request_id);
  });
});

describe('validation', () => {
  const long = (n: number) => 'x'.repeat(n);
  const cases: Array<[string, Record<string, unknown>, string, string | null]> = [
    ['dall-e-2 unsupported size', {prompt: 'p', size: '1792x1024'}, 'size', 'invalid_value'],
    ['dall-e-2 n above 10', {prompt: 'p', n: 11}, 'n', 'integer_above_max_value'],
    ['dall-e-2 n below 1', {prompt: 'p', n: 0}, 'n', 'integer_below_min_value'],
    ['n not an integer', {prompt: 'p', n: 1.5}, 'n', 'invalid_type'],
    ['dall-e-2 quality hd', {prompt: 'p', quality: 'hd'}, 'quality', 'invalid_value'],
    ['dall-e-2 style', {prompt: 'p', style: 'vivid'}, 'style', 'unsupported_parameter'],
    [
      'dall-e-2 GPT-only output_format',
      {prompt: 'p', output_format: 'png'},
      'output_format',
      'unsupported_parameter',
    ],
    ['dall-e-2 prompt over 1000', {prompt: long(1001)}, 'prompt', 'string_above_max_length'],
    [
      'dall-e-2 bad response_format',
      {prompt: 'p', response_format: 'base64'},
      'response_format',
      'invalid_value',
    ],
    ['dall-e-3 n=2', {model: 'dall-e-3', prompt: 'p', n: 2}, 'n', 'invalid_value'],
    ['dall-e-3 square 512', {model: 'dall-e-3', prompt: 'p', size: '512x512'}, 'size', 'invalid_value'],
    ['dall-e-3 quality low', {model: 'dall-e-3', prompt: 'p', quality: 'low'}, 'quality', 'invalid_value'],
    ['dall-e-3 style', {model: 'dall-e-3', prompt: 'p', style: 'cartoon'}, 'style', 'invalid_value'],
    [
      'dall-e-3 prompt over 4000',
      {model: 'dall-e-3', prompt: long(4001)},
      'prompt',
      'string_above_max_length',
    ],
    ['empty prompt', {prompt: ''}, 'prompt', 'empty_string'],
    ['missing prompt', {model: 'dall-e-3'}, 'prompt', 'missing_required_parameter'],
    ['prompt not a string', {prompt: 42}, 'prompt', 'invalid_type'],
    ['unknown model', {model: 'dall-e-9', prompt: 'p'}, 'model', 'model_not_found'],
    ['unknown field', {prompt: 'p', seed: 3}, 'seed', 'unknown_parameter'],
    ['gpt size 256', {model: 'gpt-image-1', prompt: 'p', size: '256x256'}, 'size', 'invalid_value'],
    [
      'gpt custom size on gpt-image-1',
      {model: 'gpt-image-1', prompt: 'p', size: '1536x864'},
      'size',
      'invalid_value',
    ],
    ['gpt quality hd', {model: 'gpt-image-1', prompt: 'p', quality: 'hd'}, 'quality', 'invalid_value'],
    [
      'gpt background',
      {model: 'gpt-image-1', prompt: 'p', background: 'white'},
      'background',
      'invalid_value',
    ],
    [
      'gpt output_format gif',
      {model: 'gpt-image-1.5', prompt: 'p', output_format: 'gif'},
      'output_format',
      'invalid_value',
    ],
    [
      'gpt compression with png',
      {model: 'gpt-image-1', prompt: 'p', output_compression: 50},
      'output_compression',
      'invalid_value',
    ],
    [
      'gpt compression above 100',
      {model: 'gpt-image-1', prompt: 'p', output_format: 'jpeg', output_compression: 101},
      'output_compression',
      'integer_above_max_value',
    ],
    [
      'gpt moderation',
      {model: 'gpt-image-1-mini', prompt: 'p', moderation: 'high'},
      'moderation',
      'invalid_value',
    ],
    [
      'gpt transparent jpeg',
      {model: 'gpt-image-1', prompt: 'p', background: 'transparent', output_format: 'jpeg'},
      'background',
      'invalid_value',
    ],
    ['gpt n above 10', {model: 'gpt-image-1', prompt: 'p', n: 11}, 'n', 'integer_above_max_value'],
    [
      'gpt prompt over 32000',
      {model: 'gpt-image-1', prompt: long(32001)},
      'prompt',
      'string_above_max_length',
    ],
    ['gpt style', {model: 'gpt-image-1', prompt: 'p', style: 'vivid'}, 'style', 'unsupported_parameter'],
    [
      'gpt response_format',
      {model: 'gpt-image-1', prompt: 'p', response_format: 'url'},
      'response_format',
      'unsupported_parameter',
    ],
    [
      'gpt-image-2 not multiple of 16',
      {model: 'gpt-image-2', prompt: 'p', size: '1000x1000'},
      'size',
      'invalid_value',
    ],
    [
      'gpt-image-2 edge above 3840',
      {model: 'gpt-image-2', prompt: 'p', size: '3856x1312'},
      'size',
      'invalid_value',
    ],
    [
      'gpt-image-2 too many pixels',
      {model: 'gpt-image-2', prompt: 'p', size: '3840x2176'},
      'size',
      'invalid_value',
    ],
    [
      'gpt-image-2 aspect beyond 3:1',
      {model: 'gpt-image-2', prompt: 'p', size: '1584x512'},
      'size',
      'invalid_value',
    ],
    ['gpt-image-2 nonsense size', {model: 'gpt-image-2', prompt: 'p', size: 'big'}, 'size', 'invalid_value'],
  ];

  it.each(cases.map(([name, body, param, code]) => ({name, body, param, code})))(
    '$name → 400 $param/$code',
    async ({body, param, code}) => {
      const error = await apiErrorOf(generate(client, body));
      expect(error).toBeInstanceOf(OpenAI.BadRequestError);
      expect(error.status).toBe(400);
      expect(error.type).toBe('invalid_request_error');
      expect(error.param).toBe(param);
      expect(error.code).toBe(code);
      expect(error.message.length).toBeGreaterThan(10);
    },
  );

  it('uses OpenAI-style messages', async () => {
    const size = await apiErrorOf(generate(client, {prompt: 'p', size: '999x999'}));
    expect(size.error).toEqual({
      message: "Invalid value: '999x999'. Supported values are: '256x256', '512x512', and '1024x1024'.",
      type: 'invalid_request_error',
      param: 'size',
      code: 'invalid_value',
    });
    const unknown = await apiErrorOf(generate(client, {prompt: 'p', seed: 3}));
    expect(unknown.message).toBe('400 Unrecognized request argument supplied: seed');
    const model = await apiErrorOf(generate(client, {prompt: 'p', model: 'x'}));
    expect(model.message).toBe("400 The model 'x' does not exist.");
    const n = await apiErrorOf(generate(client, {prompt: 'p', n: 11}));
    expect(n.message).toBe(
      "400 Invalid 'n': integer above maximum value. Expected a value <= 10, but got 11 instead.",
    );
  });

  it('counts prompt length in characters, not UTF-16 units', async () => {
    const res = await client.images.generate({
      prompt: '😀'.repeat(1000),
      size: '256x256',
      response_format: 'b64_json',
    });
    expect(res.data).toHaveLength(1);
  });

  it('rejects a body that is not valid JSON', async () => {
    const response = await fetch(`${fake.url}/images/generations`, {
      method: 'POST',
      headers: {authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json'},
      body: '{"prompt": "unterminated',
    });
    expect(response.status).toBe(400);
    expect(response.headers.get('x-request-id')).toMatch(/^req_[0-9a-f]+$/);
    const body = (await response.json()) as {error: Record<string, unknown>};
    expect(body.error).toMatchObject({type: 'invalid_request_error', param: null, code: null});
    expect(String(body.error.message)).toContain('could not parse the JSON body');
    expect(fake.requests[0]?.body).toBeNull();
  });

  it('answers unknown routes with an OpenAI-style 404', async () => {
    expect(await rejectionOf(client.models.list())).toBeInstanceOf(OpenAI.NotFoundError);
    const response = await fetch(`${fake.url}/nope`);
    expect(response.status).toBe(404);
    expect(await response.json()).toEqual({
      error: {message: 'Invalid URL (GET /v1/nope)', type: 'invalid_request_error', param: null, code: null},
    });
    expect((await fetch(new URL('/images/img-doesnotexist.png', fake.url))).status).toBe(404);
    expect(fake.requests.map(r => `${r.method} ${r.path}`)).toEqual([
      'GET /v1/models',
      'GET /v1/nope',
      'GET /images/img-doesnotexist.png',
    ]);
  });
});

describe('authentication', () => {
  it('rejects a wrong key with a masked key in the message', async () => {
    const wrong = clientFor(fake, {apiKey: 'sk-wrongsecret-9876'});
    const error = await apiErrorOf(wrong.images.generate({prompt: 'p'}));
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(error.status).toBe(401);
    expect(error.code).toBe('invalid_api_key');
    expect(error.type).toBe('invalid_request_error');
    expect(error.message).toBe(
      '401 Incorrect API key provided: sk-************9876. ' +
        'You can find your API key at https://platform.openai.com/account/api-keys.',
    );
    expect(error.message).not.toContain('wrongsecret');
  });

  it('rejects a request without an Authorization header', async () => {
    const response = await fetch(`${fake.url}/images/generations`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({prompt: 'p'}),
    });
    expect(response.status).toBe(401);
    const body = (await response.json()) as {error: {code: string; message: string}};
    expect(body.error.code).toBe('invalid_api_key');
    expect(body.error.message).toContain("You didn't provide an API key");
  });

  it('checks a custom key and the OpenAI-Organization header', async () => {
    const orgFake = await startFakeOpenAI({apiKey: 'sk-proj-custom-abcd', organization: 'org-fake123'});
    try {
      const body = {prompt: 'p', size: '256x256', response_format: 'b64_json'} as const;
      const good = clientFor(orgFake, {apiKey: 'sk-proj-custom-abcd', organization: 'org-fake123'});
      const res = await good.images.generate(body);
      expect(res.data).toHaveLength(1);
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
      // The default key is not accepted by an instance with a custom key.
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
  const cheap = {prompt: 'p', size: '256x256', response_format: 'b64_json'} as const;

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
    const defaulted = await apiErrorOf(client.images.generate(cheap));
    expect(defaulted.headers?.get('retry-after')).toBe('1');
  });

  it('server_error honours times and status', async () => {
    fake.injectFault({kind: 'server_error', status: 503}, {times: 2});
    for (let i = 0; i < 2; i++) {
      const error = await apiErrorOf(client.images.generate(cheap));
      expect(error).toBeInstanceOf(OpenAI.InternalServerError);
      expect(error.status).toBe(503);
      expect(error.error).toEqual({
        message: 'The server had an error while processing your request. Sorry about that!',
        type: 'server_error',
        param: null,
        code: null,
      });
    }
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
    fake.injectFault({kind: 'server_error'});
    expect((await apiErrorOf(client.images.generate(cheap))).status).toBe(500);
  });

  it('applies before validation, only to authenticated generation requests', async () => {
    fake.injectFault({kind: 'server_error', status: 502});
    expect((await fetch(`${fake.url}/nope`)).status).toBe(404);
    const unauthenticated = await apiErrorOf(clientFor(fake, {apiKey: 'sk-nope'}).images.generate(cheap));
    expect(unauthenticated.status).toBe(401);
    // Still pending: the invalid request gets the fault, not a 400.
    expect((await apiErrorOf(generate(client, {prompt: 'p', n: 99}))).status).toBe(502);
    expect((await apiErrorOf(generate(client, {prompt: 'p', n: 99}))).status).toBe(400);
  });

  it.each([
    ['dall-e-3', 'content_policy_violation', 'Your request was rejected as a result of our safety system.'],
    ['gpt-image-1', 'moderation_blocked', 'Your request was rejected by the safety system.'],
  ])('content_policy fault on %s → %s', async (model, code, message) => {
    fake.injectFault({kind: 'content_policy'});
    const error = await apiErrorOf(client.images.generate({model, prompt: 'a harmless prompt'}));
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error.code).toBe(code);
    expect(error.type).toBe('image_generation_user_error');
    expect(error.message).toContain(message);
  });

  it.each([
    ['dall-e-2', 'content_policy_violation'],
    ['dall-e-3', 'content_policy_violation'],
    ['gpt-image-1-mini', 'moderation_blocked'],
    ['gpt-image-2', 'moderation_blocked'],
  ])('a [[content-policy]] prompt on %s is refused with %s', async (model, code) => {
    const error = await apiErrorOf(client.images.generate({model, prompt: 'draw [[content-policy]] please'}));
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error.code).toBe(code);
    expect(error.type).toBe('image_generation_user_error');
    const dallE =
      /^400 Your request was rejected as a result of our safety system\. Your prompt may contain text that is not allowed by our safety system\.$/;
    const requestIdShown = new RegExp(String(error.requestID));
    expect(error.message).toMatch(code === 'content_policy_violation' ? dallE : requestIdShown);
  });

  it('connection_reset surfaces as APIConnectionError and the next request works', async () => {
    fake.injectFault({kind: 'connection_reset'});
    const error = await rejectionOf(client.images.generate(cheap));
    expect(error).toBeInstanceOf(OpenAI.APIConnectionError);
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
  });

  it('malformed answers 200 with a body the SDK cannot parse', async () => {
    fake.injectFault({kind: 'malformed'}, {times: 2});
    const error = await rejectionOf(client.images.generate(cheap));
    expect(error).toBeInstanceOf(SyntaxError);
    const raw = await client.images.generate(cheap).asResponse();
    expect(raw.status).toBe(200);
    expect(raw.headers.get('content-type')).toBe('application/json');
    const text = await raw.text();
    expect(text.length).toBeGreaterThan(0);
    expect(() => JSON.parse(text)).toThrow(SyntaxError);
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

    fake.clearFaults();
    fake.injectFault({kind: 'rate_limit'}, {probability: 0});
    expect((await client.images.generate(cheap)).data).toHaveLength(1);
  });

  it('rejects contradictory or out-of-range fault options', () => {
    expect(() => fake.injectFault({kind: 'hang'}, {times: 1, probability: 0.5})).toThrow(TypeError);
    expect(() => fake.injectFault({kind: 'hang'}, {probability: 1.5})).toThrow(RangeError);
    expect(() => fake.injectFault({kind: 'hang'}, {times: 0})).toThrow(RangeError);
    expect(() => fake.setLatency(-1)).toThrow(RangeError);
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

      slow.setLatency(0);
      const fast = await timed(() => slowClient.images.generate(cheap));
      expect(fast.ms).toBeLessThan(390);

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

  it('close() finishes promptly with a hung request in flight', async () => {
    const hanging = await startFakeOpenAI();
    const hangingClient = clientFor(hanging);
    hanging.injectFault({kind: 'hang'});
    const hung = rejectionOf(hangingClient.images.generate(cheap));
    while (hanging.requests.length < 1) await new Promise(resolve => setTimeout(resolve, 5));
    hanging.setLatency(60_000);
    const delayed = rejectionOf(hangingClient.images.generate(cheap)); // stuck in the 60 s latency
    while (hanging.requests.length < 2) await new Promise(resolve => setTimeout(resolve, 5));

    const {ms} = await timed(() => hanging.close());
    expect(ms).toBeLessThan(1000);
    expect(await hung).toBeInstanceOf(OpenAI.APIConnectionError);
    expect(await delayed).toBeInstanceOf(OpenAI.APIConnectionError);
    // The port is closed now.
    expect(await rejectionOf(hangingClient.images.generate(cheap))).toBeInstanceOf(OpenAI.APIConnectionError);
  });
});
