/**
 * A fake OpenAI Images HTTP server for tests.
 *
 * It speaks the wire format of `POST /v1/images/generations` closely enough for
 * the official `openai` SDK to be pointed at it (`baseURL: fake.url`), validates
 * requests per model the way the real API does, answers with real, decodable
 * images of the requested dimensions and format, and can inject the failures a
 * client has to cope with (rate limits, 5xx, safety refusals, resets, hangs,
 * garbage bodies, latency).
 *
 * Image bytes are random noise encoded with sharp, so their sizes resemble real
 * outputs. Encoding noise is slow, so a small pool of encoded variants is made
 * lazily per (size, format, background, quality) and shared by every instance
 * in the process; each returned image gets a unique metadata chunk stamped into
 * it, so no two images ever have the same bytes.
 */
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http';
import {randomBytes} from 'node:crypto';
import {crc32} from 'node:zlib';
import sharp from 'sharp';
import {listenOnLoopback} from './loopback-server';

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

export interface FakeOpenAIOptions {
  /** Accepted bearer key, default 'sk-test-key'. */
  apiKey?: string;
  /** If set, requests must carry header OpenAI-Organization equal to it, else 401. */
  organization?: string;
  /** Delay before answering each generation request, default 0. */
  latencyMs?: number;
}

export type FakeFault =
  | {kind: 'rate_limit'; retryAfterSeconds?: number}
  | {kind: 'server_error'; status?: 500 | 502 | 503}
  | {kind: 'content_policy'}
  | {kind: 'connection_reset'}
  | {kind: 'hang'}
  | {kind: 'malformed'};

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export interface FakeOpenAI {
  /** Base URL to give the SDK, e.g. http://127.0.0.1:PORT/v1 */
  readonly url: string;
  /** Every request received, in arrival order (body is the parsed JSON, or null). */
  readonly requests: RecordedRequest[];
  setLatency(ms: number): void;
  /**
   * Make the next `times` (default 1) generation requests fail with `fault`, or,
   * with `probability`, make each generation request fail with that chance until
   * clearFaults(). Counted faults are used up first, in injection order.
   */
  injectFault(fault: FakeFault, opts?: {times?: number; probability?: number}): void;
  clearFaults(): void;
  /** Clear requests and faults, latency back to the option value. */
  reset(): void;
  /** Close the server and every socket, including hung ones. */
  close(): Promise<void>;
}

export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const fake = new FakeOpenAIServer(options);
  await fake.listen();
  return fake;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

interface OpenAIErrorBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

class ApiError extends Error {
  readonly status: number;
  readonly body: OpenAIErrorBody;
  readonly headers: Record<string, string>;

  constructor(status: number, body: OpenAIErrorBody, headers: Record<string, string> = {}) {
    super(body.message);
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

function invalidRequest(message: string, param: string | null, code: string | null): ApiError {
  return new ApiError(400, {message, type: 'invalid_request_error', param, code});
}

/** 'a', 'a' and 'b', 'a', 'b', and 'c' — each value quoted. */
function quotedList(values: readonly string[]): string {
  const q = values.map(v => `'${v}'`);
  if (q.length <= 1) return q.join('');
  if (q.length === 2) return `${q[0]} and ${q[1]}`;
  return `${q.slice(0, -1).join(', ')}, and ${q[q.length - 1]}`;
}

function describeJsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'string':
      return 'a string';
    case 'boolean':
      return 'a boolean';
    case 'number':
      return Number.isInteger(value) ? 'an integer' : 'a decimal';
    case 'object':
      return 'an object';
    default:
      return typeof value;
  }
}

function invalidType(param: string, expected: string, value: unknown): ApiError {
  return invalidRequest(
    `Invalid type for '${param}': expected ${expected}, but got ${describeJsonType(value)} instead.`,
    param,
    'invalid_type',
  );
}

function invalidValue(param: string, value: unknown, supported: readonly string[]): ApiError {
  return invalidRequest(
    `Invalid value: '${String(value)}'. Supported values are: ${quotedList(supported)}.`,
    param,
    'invalid_value',
  );
}

function unsupportedParameter(param: string): ApiError {
  return invalidRequest(
    `Unsupported parameter: '${param}' is not supported with this model.`,
    param,
    'unsupported_parameter',
  );
}

function maskApiKey(key: string): string {
  if (key.length <= 4) return '*'.repeat(key.length);
  const last4 = key.slice(-4);
  const prefix = /^sk-(?:proj-|svcacct-|admin-)?/.exec(key)?.[0] ?? '';
  const visiblePrefix = key.length - prefix.length > 4 ? prefix : '';
  return visiblePrefix + '*'.repeat(key.length - visiblePrefix.length - 4) + last4;
}

const SAFETY_MARKER = '[[content-policy]]';

function contentPolicyError(family: ModelFamily, requestId: string): ApiError {
  if (family === 'gpt-image') {
    return new ApiError(400, {
      message:
        'Your request was rejected by the safety system. If you believe this is an error, ' +
        `contact us at help.openai.com and include the request ID ${requestId}.`,
      type: 'image_generation_user_error',
      param: null,
      code: 'moderation_blocked',
    });
  }
  return new ApiError(400, {
    message:
      'Your request was rejected as a result of our safety system. ' +
      'Your prompt may contain text that is not allowed by our safety system.',
    type: 'image_generation_user_error',
    param: null,
    code: 'content_policy_violation',
  });
}

function serverError(status: number): ApiError {
  return new ApiError(status, {
    message: 'The server had an error while processing your request. Sorry about that!',
    type: 'server_error',
    param: null,
    code: null,
  });
}

function rateLimitError(retryAfterSeconds: number): ApiError {
  const seconds = Math.max(0, retryAfterSeconds);
  return new ApiError(
    429,
    {
      message: `Rate limit reached for images per min. Limit: 5/1min. Please try again in ${seconds}s.`,
      type: 'requests',
      param: null,
      code: 'rate_limit_exceeded',
    },
    {
      'retry-after': String(Math.ceil(seconds)),
      'retry-after-ms': String(Math.round(seconds * 1000)),
      'x-ratelimit-limit-requests': '5',
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-reset-requests': `${seconds}s`,
    },
  );
}

// ---------------------------------------------------------------------------
// Models and request validation
// ---------------------------------------------------------------------------

type ModelFamily = 'dall-e-2' | 'dall-e-3' | 'gpt-image';
type OutputFormat = 'png' | 'jpeg' | 'webp';

interface ModelSpec {
  family: ModelFamily;
  maxPrompt: number;
  maxN: number;
  sizes: readonly string[];
  defaultSize: string;
  /** gpt-image-2: any WxH within limits. */
  customSizes: boolean;
}

const GPT_IMAGE_SIZES = ['1024x1024', '1536x1024', '1024x1536', 'auto'] as const;

function gptImageSpec(customSizes: boolean): ModelSpec {
  return {
    family: 'gpt-image',
    maxPrompt: 32000,
    maxN: 10,
    sizes: GPT_IMAGE_SIZES,
    defaultSize: 'auto',
    customSizes,
  };
}

const MODELS: ReadonlyMap<string, ModelSpec> = new Map<string, ModelSpec>([
  [
    'dall-e-2',
    {
      family: 'dall-e-2',
      maxPrompt: 1000,
      maxN: 10,
      sizes: ['256x256', '512x512', '1024x1024'],
      defaultSize: '1024x1024',
      customSizes: false,
    },
  ],
  [
    'dall-e-3',
    {
      family: 'dall-e-3',
      maxPrompt: 4000,
      maxN: 1,
      sizes: ['1024x1024', '1792x1024', '1024x1792'],
      defaultSize: '1024x1024',
      customSizes: false,
    },
  ],
  ['gpt-image-1', gptImageSpec(false)],
  ['gpt-image-1-mini', gptImageSpec(false)],
  ['gpt-image-1.5', gptImageSpec(false)],
  ['gpt-image-2', gptImageSpec(true)],
]);

const DEFAULT_MODEL = 'dall-e-2';

/** Fields the generations endpoint knows at all; anything else is "unrecognized". */
const KNOWN_FIELDS = new Set([
  'prompt',
  'model',
  'n',
  'size',
  'quality',
  'style',
  'response_format',
  'background',
  'output_format',
  'output_compression',
  'moderation',
  'user',
  'safety_identifier',
  'stream',
]);
const GPT_ONLY_FIELDS = ['background', 'output_format', 'output_compression', 'moderation'] as const;

const GPT_MAX_EDGE = 3840;
const GPT_MAX_PIXELS = 3840 * 2160;
/** Output tokens per 1024x1024 image by quality; scaled by pixel count for other sizes. */
const OUTPUT_TOKENS_1024: Record<'low' | 'medium' | 'high', number> = {low: 272, medium: 1056, high: 4160};

interface ResolvedRequest {
  model: string;
  family: ModelFamily;
  prompt: string;
  promptLength: number;
  n: number;
  width: number;
  height: number;
  /** dall-e: standard|hd; GPT image: low|medium|high (auto resolved). */
  quality: string;
  style: 'vivid' | 'natural' | undefined;
  responseFormat: 'url' | 'b64_json';
  background: 'transparent' | 'opaque';
  outputFormat: OutputFormat;
  /** Encoder quality for jpeg/webp. */
  compression: number;
}

function isPresent(value: unknown): boolean {
  return value !== undefined && value !== null;
}

function familyOf(model: unknown): ModelFamily {
  if (typeof model === 'string') {
    const spec = MODELS.get(model);
    if (spec) return spec.family;
    if (model.startsWith('gpt-image')) return 'gpt-image';
  }
  return 'dall-e-2';
}

function checkEnum<T extends string>(param: string, value: unknown, allowed: readonly T[]): T | undefined {
  if (!isPresent(value)) return undefined;
  if (typeof value !== 'string') throw invalidType(param, 'a string', value);
  if (!(allowed as readonly string[]).includes(value)) throw invalidValue(param, value, allowed);
  return value as T;
}

function checkInteger(param: string, value: unknown, min: number, max: number): number | undefined {
  if (!isPresent(value)) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidType(param, 'an integer', value);
  if (value < min) {
    throw invalidRequest(
      `Invalid '${param}': integer below minimum value. Expected a value >= ${min}, but got ${value} instead.`,
      param,
      'integer_below_min_value',
    );
  }
  if (value > max) {
    throw invalidRequest(
      `Invalid '${param}': integer above maximum value. Expected a value <= ${max}, but got ${value} instead.`,
      param,
      'integer_above_max_value',
    );
  }
  return value;
}

function parseCustomSize(size: string): {width: number; height: number} {
  const match = /^(\d{1,5})x(\d{1,5})$/.exec(size);
  if (!match) {
    throw invalidRequest(
      `Invalid value: '${size}'. Supported values are: ${quotedList(GPT_IMAGE_SIZES)}, ` +
        `or a custom size 'WIDTHxHEIGHT' (for example '1536x864').`,
      'size',
      'invalid_value',
    );
  }
  const width = Number(match[1]);
  const height = Number(match[2]);
  const fail = (why: string) => invalidRequest(`Invalid size '${size}'. ${why}`, 'size', 'invalid_value');
  if (width === 0 || height === 0 || width % 16 !== 0 || height % 16 !== 0) {
    throw fail('Width and height must both be positive multiples of 16.');
  }
  if (Math.max(width, height) > GPT_MAX_EDGE) {
    throw fail(`The longest edge must be at most ${GPT_MAX_EDGE} pixels.`);
  }
  if (width * height > GPT_MAX_PIXELS) {
    throw fail(`The total number of pixels must be at most ${GPT_MAX_PIXELS} (3840x2160).`);
  }
  if (Math.max(width, height) > 3 * Math.min(width, height)) {
    throw fail('The aspect ratio must be between 1:3 and 3:1.');
  }
  return {width, height};
}

function resolveSize(spec: ModelSpec, value: unknown): {width: number; height: number} {
  if (!isPresent(value)) value = spec.defaultSize;
  if (typeof value !== 'string') throw invalidType('size', 'a string', value);
  if (value === 'auto' && spec.sizes.includes('auto')) return {width: 1024, height: 1024};
  if (spec.sizes.includes(value)) {
    const [w, h] = value.split('x').map(Number);
    return {width: w ?? 1024, height: h ?? 1024};
  }
  if (spec.customSizes) return parseCustomSize(value);
  throw invalidValue('size', value, spec.sizes);
}

/** Validates a generations request body like the real endpoint; throws ApiError. */
function validateGenerationRequest(body: unknown): ResolvedRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalidRequest(
      `Invalid type for request body: expected an object, but got ${describeJsonType(body)} instead.`,
      null,
      'invalid_type',
    );
  }
  const b = body as Record<string, unknown>;

  for (const key of Object.keys(b)) {
    if (!KNOWN_FIELDS.has(key)) {
      throw invalidRequest(`Unrecognized request argument supplied: ${key}`, key, 'unknown_parameter');
    }
  }

  let model = DEFAULT_MODEL;
  if (isPresent(b.model)) {
    if (typeof b.model !== 'string') throw invalidType('model', 'a string', b.model);
    model = b.model;
  }
  const spec = MODELS.get(model);
  if (!spec) throw invalidRequest(`The model '${model}' does not exist.`, 'model', 'model_not_found');
  const isGpt = spec.family === 'gpt-image';

  if (b.prompt === undefined) {
    throw invalidRequest("Missing required parameter: 'prompt'.", 'prompt', 'missing_required_parameter');
  }
  if (typeof b.prompt !== 'string') throw invalidType('prompt', 'a string', b.prompt);
  const prompt = b.prompt;
  const promptLength = [...prompt].length;
  if (promptLength === 0) {
    throw invalidRequest(
      "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
      'prompt',
      'empty_string',
    );
  }
  if (promptLength > spec.maxPrompt) {
    throw invalidRequest(
      `Invalid 'prompt': string too long. Expected a string with maximum length ${spec.maxPrompt}, ` +
        `but got a string with length ${promptLength} instead.`,
      'prompt',
      'string_above_max_length',
    );
  }

  // Parameters that exist but not for this model.
  if (spec.family !== 'dall-e-3' && isPresent(b.style)) throw unsupportedParameter('style');
  if (isGpt && isPresent(b.response_format)) throw unsupportedParameter('response_format');
  if (!isGpt) {
    for (const field of GPT_ONLY_FIELDS) if (isPresent(b[field])) throw unsupportedParameter(field);
  }

  const nValue = isPresent(b.n) ? b.n : 1;
  if (spec.maxN === 1 && typeof nValue === 'number' && Number.isInteger(nValue) && nValue !== 1) {
    throw invalidRequest('You must provide n=1 for this model.', 'n', 'invalid_value');
  }
  const n = checkInteger('n', nValue, 1, spec.maxN) ?? 1;

  const {width, height} = resolveSize(spec, b.size);

  let quality: string;
  if (spec.family === 'dall-e-2') {
    quality = checkEnum('quality', b.quality, ['standard'] as const) ?? 'standard';
  } else if (spec.family === 'dall-e-3') {
    quality = checkEnum('quality', b.quality, ['standard', 'hd'] as const) ?? 'standard';
  } else {
    const q = checkEnum('quality', b.quality, ['low', 'medium', 'high', 'auto'] as const) ?? 'auto';
    quality = q === 'auto' ? 'high' : q;
  }

  const style =
    spec.family === 'dall-e-3'
      ? (checkEnum('style', b.style, ['vivid', 'natural'] as const) ?? 'vivid')
      : undefined;
  const responseFormat = isGpt
    ? 'b64_json'
    : (checkEnum('response_format', b.response_format, ['url', 'b64_json'] as const) ?? 'url');

  let background: 'transparent' | 'opaque' = 'opaque';
  let outputFormat: OutputFormat = 'png';
  let compression = 100;
  if (isGpt) {
    const bg = checkEnum('background', b.background, ['transparent', 'opaque', 'auto'] as const) ?? 'auto';
    outputFormat = checkEnum('output_format', b.output_format, ['png', 'jpeg', 'webp'] as const) ?? 'png';
    const requestedCompression = checkInteger('output_compression', b.output_compression, 0, 100);
    if (requestedCompression !== undefined) {
      if (outputFormat === 'png') {
        throw invalidRequest(
          "Invalid 'output_compression': compression is only supported for the 'jpeg' and 'webp' output formats.",
          'output_compression',
          'invalid_value',
        );
      }
      compression = requestedCompression;
    }
    checkEnum('moderation', b.moderation, ['low', 'auto'] as const);
    if (bg === 'transparent' && outputFormat === 'jpeg') {
      throw invalidRequest(
        "Transparent background is not supported for the 'jpeg' output format. Use 'png' or 'webp'.",
        'background',
        'invalid_value',
      );
    }
    background = bg === 'transparent' ? 'transparent' : 'opaque';
  }

  for (const field of ['user', 'safety_identifier'] as const) {
    if (isPresent(b[field]) && typeof b[field] !== 'string') throw invalidType(field, 'a string', b[field]);
  }
  if (isPresent(b.stream)) {
    if (typeof b.stream !== 'boolean') throw invalidType('stream', 'a boolean', b.stream);
    if (b.stream) {
      throw invalidRequest(
        'Streaming is not supported by the fake OpenAI server.',
        'stream',
        'unsupported_value',
      );
    }
  }

  return {
    model,
    family: spec.family,
    prompt,
    promptLength,
    n,
    width,
    height,
    quality,
    style,
    responseFormat,
    background,
    outputFormat,
    compression,
  };
}

function revisePrompt(prompt: string, style: 'vivid' | 'natural' | undefined): string {
  const lead =
    style === 'natural' ? 'A natural, true-to-life depiction of' : 'A vivid, richly detailed depiction of';
  return `${lead} ${prompt.trim()}, with a balanced composition, soft directional lighting and fine textures.`;
}

function outputTokensPerImage(req: ResolvedRequest): number {
  const base = OUTPUT_TOKENS_1024[req.quality as 'low' | 'medium' | 'high'] ?? OUTPUT_TOKENS_1024.high;
  return Math.round((base * req.width * req.height) / (1024 * 1024));
}

// ---------------------------------------------------------------------------
// Images: pooled noise variants + unique stamps
// ---------------------------------------------------------------------------

interface ImageSpec {
  width: number;
  height: number;
  format: OutputFormat;
  alpha: boolean;
  /** jpeg/webp encoder quality (ignored for png). */
  quality: number;
}

const POOL_SIZE = 3;
const POOL_CACHE_KEYS = 48;
/** Gaussian noise sigma: a 1024x1024 PNG comes out at ~2.2 MB. */
const NOISE_SIGMA = 12;

/** Shared by all instances in the process: key -> lazily encoded variants. */
const variantPools = new Map<string, Array<Promise<Buffer> | undefined>>();
const processNonce = randomBytes(4).toString('hex');
let stampCounter = 0;
let variantCounter = 0;

function poolKey(spec: ImageSpec): string {
  const q = spec.format === 'png' ? '' : `q${spec.quality}`;
  return `${spec.width}x${spec.height}.${spec.format}.${spec.alpha ? 'rgba' : 'rgb'}${q}`;
}

function getVariant(spec: ImageSpec, index: number): Promise<Buffer> {
  const key = poolKey(spec);
  let pool = variantPools.get(key);
  if (pool) {
    // Refresh recency for the simple LRU below.
    variantPools.delete(key);
  } else {
    pool = Array.from<Promise<Buffer> | undefined>({length: POOL_SIZE});
  }
  variantPools.set(key, pool);
  while (variantPools.size > POOL_CACHE_KEYS) {
    const oldest = variantPools.keys().next().value;
    if (oldest === undefined) break;
    variantPools.delete(oldest);
  }
  const slot = index % POOL_SIZE;
  let variant = pool[slot];
  if (!variant) {
    const created = encodeNoise(spec);
    variant = created;
    pool[slot] = created;
    const owner = pool;
    created.catch(() => {
      if (owner[slot] === created) owner[slot] = undefined;
    });
  }
  return variant;
}

/** Elliptical opaque subject on a fully transparent background. */
function ellipseAlphaMask(width: number, height: number): Buffer {
  const mask = Buffer.alloc(width * height);
  const cx = width / 2;
  const cy = height / 2;
  const rx = width * 0.4;
  const ry = height * 0.4;
  for (let y = 0; y < height; y++) {
    const dy = (y + 0.5 - cy) / ry;
    if (dy * dy >= 1) continue;
    const half = rx * Math.sqrt(1 - dy * dy);
    const x0 = Math.max(0, Math.round(cx - half));
    const x1 = Math.min(width, Math.round(cx + half));
    mask.fill(255, y * width + x0, y * width + x1);
  }
  return mask;
}

async function encodeNoise(spec: ImageSpec): Promise<Buffer> {
  const {width, height} = spec;
  let image = sharp({
    create: {
      width,
      height,
      channels: 3,
      background: {r: 128, g: 128, b: 128},
      noise: {type: 'gaussian', mean: 128, sigma: NOISE_SIGMA},
    },
  });
  if (spec.alpha) {
    image = image.joinChannel(ellipseAlphaMask(width, height), {raw: {width, height, channels: 1}});
  }
  const quality = Math.min(100, Math.max(1, spec.quality));
  switch (spec.format) {
    case 'png':
      image = image.png();
      break;
    case 'jpeg':
      image = image.jpeg({quality});
      break;
    case 'webp':
      image = image.webp({quality, alphaQuality: 100, effort: 0});
      break;
  }
  return image.toBuffer();
}

/** Inserts a tEXt chunk (with a valid CRC) right before IEND. */
function stampPng(png: Buffer, id: string): Buffer {
  let offset = 8;
  while (offset + 12 <= png.length) {
    const length = png.readUInt32BE(offset);
    if (png.toString('latin1', offset + 4, offset + 8) === 'IEND') {
      const data = Buffer.from(`Comment\0fake-openai ${id}`, 'latin1');
      const chunk = Buffer.alloc(12 + data.length);
      chunk.writeUInt32BE(data.length, 0);
      chunk.write('tEXt', 4, 'latin1');
      data.copy(chunk, 8);
      chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
      return Buffer.concat([png.subarray(0, offset), chunk, png.subarray(offset)]);
    }
    offset += 12 + length;
  }
  throw new Error('fake-openai: PNG without IEND chunk');
}

/** Inserts a COM segment right after SOI. */
function stampJpeg(jpeg: Buffer, id: string): Buffer {
  const text = Buffer.from(`fake-openai ${id}`, 'latin1');
  const segment = Buffer.alloc(4 + text.length);
  segment[0] = 0xff;
  segment[1] = 0xfe;
  segment.writeUInt16BE(text.length + 2, 2);
  text.copy(segment, 4);
  return Buffer.concat([jpeg.subarray(0, 2), segment, jpeg.subarray(2)]);
}

/**
 * Converts a simple-format WebP to the extended format (VP8X) if needed and
 * appends an unknown chunk carrying the id, which decoders skip.
 */
function stampWebp(webp: Buffer, id: string, width: number, height: number, alpha: boolean): Buffer {
  if (webp.toString('latin1', 0, 4) !== 'RIFF' || webp.toString('latin1', 8, 12) !== 'WEBP') {
    throw new Error('fake-openai: not a RIFF WebP');
  }
  const riffEnd = Math.min(webp.length, 8 + webp.readUInt32LE(4));
  const chunks = webp.subarray(12, riffEnd);
  const parts: Buffer[] = [];
  if (webp.toString('latin1', 12, 16) !== 'VP8X') {
    const vp8x = Buffer.alloc(18);
    vp8x.write('VP8X', 0, 'latin1');
    vp8x.writeUInt32LE(10, 4);
    vp8x[8] = alpha ? 0x10 : 0;
    vp8x.writeUIntLE(width - 1, 12, 3);
    vp8x.writeUIntLE(height - 1, 15, 3);
    parts.push(vp8x);
  }
  parts.push(chunks);
  const payload = Buffer.from(`fake-openai ${id}`, 'latin1');
  const padded = payload.length + (payload.length % 2);
  const extra = Buffer.alloc(8 + padded);
  extra.write('FAKE', 0, 'latin1');
  extra.writeUInt32LE(payload.length, 4);
  payload.copy(extra, 8);
  parts.push(extra);
  const header = Buffer.alloc(12);
  header.write('RIFF', 0, 'latin1');
  header.write('WEBP', 8, 'latin1');
  const body = Buffer.concat(parts);
  header.writeUInt32LE(4 + body.length, 4);
  return Buffer.concat([header, body]);
}

function stamp(base: Buffer, spec: ImageSpec, id: string): Buffer {
  switch (spec.format) {
    case 'png':
      return stampPng(base, id);
    case 'jpeg':
      return stampJpeg(base, id);
    case 'webp':
      return stampWebp(base, id, spec.width, spec.height, spec.alpha);
  }
}

function nextImageId(): string {
  stampCounter += 1;
  return `${processNonce}${stampCounter.toString(36).padStart(6, '0')}`;
}

const CONTENT_TYPES: Record<OutputFormat, string> = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
};

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

const GENERATIONS_PATH = '/v1/images/generations';
const IMAGE_ROUTE = /^\/images\/(img-[0-9a-z]+)\.(png|jpeg|webp)$/;
const MAX_BODY_BYTES = 10 * 1024 * 1024;
const MAX_STORED_URL_IMAGES = 10000;
const BASE64_SLICE_BYTES = 3 * 512 * 1024;

interface StoredImage {
  base: Buffer;
  spec: ImageSpec;
}

type FaultEntry = {fault: FakeFault; remaining: number} | {fault: FakeFault; probability: number};

const yieldToEventLoop = () => new Promise<void>(resolve => setImmediate(resolve));

class FakeOpenAIServer implements FakeOpenAI {
  readonly requests: RecordedRequest[] = [];
  private readonly server: Server;
  private destroyConnections: () => void = () => undefined;
  private readonly sleepers = new Set<{timer: NodeJS.Timeout; resolve: () => void}>();
  private readonly urlImages = new Map<string, StoredImage>();
  private readonly apiKey: string;
  private readonly organization: string | undefined;
  private readonly defaultLatency: number;
  private latency: number;
  private faults: FaultEntry[] = [];
  private origin = '';
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(options: FakeOpenAIOptions) {
    this.apiKey = options.apiKey ?? 'sk-test-key';
    this.organization = options.organization;
    this.defaultLatency = checkLatency(options.latencyMs ?? 0);
    this.latency = this.defaultLatency;
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) => {
        // Validation errors are thrown as ApiError; anything else is a bug or a sharp failure.
        this.sendError(res, error instanceof ApiError ? error : serverError(500));
      });
    });
  }

  get url(): string {
    return `${this.origin}/v1`;
  }

  async listen(): Promise<void> {
    const listener = await listenOnLoopback(this.server);
    this.origin = listener.origin;
    this.destroyConnections = listener.destroyConnections;
  }

  setLatency(ms: number): void {
    this.latency = checkLatency(ms);
  }

  injectFault(fault: FakeFault, opts: {times?: number; probability?: number} = {}): void {
    if (opts.times !== undefined && opts.probability !== undefined) {
      throw new TypeError('injectFault: times and probability are mutually exclusive');
    }
    if (
      fault.kind === 'server_error' &&
      fault.status !== undefined &&
      ![500, 502, 503].includes(fault.status)
    ) {
      throw new RangeError(`injectFault: unsupported server_error status ${String(fault.status)}`);
    }
    if (opts.probability !== undefined) {
      const p = opts.probability;
      if (!Number.isFinite(p) || p < 0 || p > 1)
        throw new RangeError('injectFault: probability must be within 0..1');
      this.faults.push({fault, probability: p});
      return;
    }
    const times = opts.times ?? 1;
    if (!Number.isInteger(times) || times < 1)
      throw new RangeError('injectFault: times must be a positive integer');
    this.faults.push({fault, remaining: times});
  }

  clearFaults(): void {
    this.faults = [];
  }

  reset(): void {
    this.requests.length = 0;
    this.clearFaults();
    this.latency = this.defaultLatency;
  }

  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    for (const sleeper of this.sleepers) {
      clearTimeout(sleeper.timer);
      sleeper.resolve();
    }
    this.sleepers.clear();
    this.closing = new Promise<void>(resolve => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
      this.destroyConnections();
    });
    return this.closing;
  }

  // -------------------------------------------------------------------------

  private takeFault(): FakeFault | undefined {
    const counted = this.faults.find((f): f is {fault: FakeFault; remaining: number} => 'remaining' in f);
    if (counted) {
      counted.remaining -= 1;
      if (counted.remaining <= 0) this.faults = this.faults.filter(f => f !== counted);
      return counted.fault;
    }
    for (const entry of this.faults) {
      if ('probability' in entry && Math.random() < entry.probability) return entry.fault;
    }
    return undefined;
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.closed) return Promise.resolve();
    return new Promise(resolve => {
      const sleeper = {
        timer: setTimeout(() => {
          this.sleepers.delete(sleeper);
          resolve();
        }, ms),
        resolve,
      };
      this.sleepers.add(sleeper);
    });
  }

  private checkAuth(req: IncomingMessage): ApiError | undefined {
    const header = req.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S.*)$/i.exec(header.trim()) : null;
    const provided = match?.[1]?.trim();
    if (!provided) {
      return new ApiError(401, {
        message:
          "You didn't provide an API key. You need to provide your API key in an Authorization header using " +
          'Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from ' +
          'https://platform.openai.com/account/api-keys.',
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_api_key',
      });
    }
    if (provided !== this.apiKey) {
      return new ApiError(401, {
        message:
          `Incorrect API key provided: ${maskApiKey(provided)}. ` +
          'You can find your API key at https://platform.openai.com/account/api-keys.',
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_api_key',
      });
    }
    if (this.organization !== undefined && req.headers['openai-organization'] !== this.organization) {
      return new ApiError(401, {
        message: 'OpenAI-Organization header should match organization for API key',
        type: 'invalid_request_error',
        param: null,
        code: 'mismatched_organization',
      });
    }
    return undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    res.setHeader('x-request-id', `req_${randomBytes(16).toString('hex')}`);
    res.on('error', () => undefined);
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://fake.invalid').pathname;
    const record: RecordedRequest = {method, path, headers: {...req.headers}, body: null};
    this.requests.push(record);

    const isGeneration = method === 'POST' && path === GENERATIONS_PATH;
    // Decide auth and the fault at arrival so concurrent requests consume faults in arrival order.
    const authError = isGeneration ? this.checkAuth(req) : undefined;
    const fault = isGeneration && !authError ? this.takeFault() : undefined;
    const latency = this.latency;

    const raw = await readBody(req);
    let parsed: unknown = null;
    let validJson = false;
    if (raw !== undefined && raw.length > 0) {
      try {
        parsed = JSON.parse(raw.toString('utf8'));
        validJson = true;
      } catch {
        // Answered below (generation route) or irrelevant (404).
      }
    }
    record.body = parsed;

    if (!isGeneration) {
      const image = method === 'GET' ? IMAGE_ROUTE.exec(path) : null;
      const stored = image?.[1] ? this.urlImages.get(image[1]) : undefined;
      if (image?.[1] && stored) {
        const bytes = stamp(stored.base, stored.spec, image[1]);
        this.send(res, 200, bytes, {'content-type': CONTENT_TYPES[stored.spec.format]});
        return;
      }
      this.sendError(
        res,
        new ApiError(404, {
          message: `Invalid URL (${method} ${path})`,
          type: 'invalid_request_error',
          param: null,
          code: null,
        }),
      );
      return;
    }

    await this.sleep(latency);
    if (this.closed) return;
    const requestId = String(res.getHeader('x-request-id'));

    if (authError) return this.sendError(res, authError);
    if (fault) {
      switch (fault.kind) {
        case 'rate_limit':
          return this.sendError(res, rateLimitError(fault.retryAfterSeconds ?? 1));
        case 'server_error':
          return this.sendError(res, serverError(fault.status ?? 500));
        case 'content_policy': {
          const model =
            typeof parsed === 'object' && parsed !== null ? (parsed as {model?: unknown}).model : undefined;
          return this.sendError(res, contentPolicyError(familyOf(model), requestId));
        }
        case 'connection_reset':
          req.socket.resetAndDestroy();
          return;
        case 'hang':
          return; // The socket stays open until close().
        case 'malformed':
          this.send(
            res,
            200,
            Buffer.from('{"created": 1700000000, "data": [{"b64_json": "iVBORw0KGgoAAAANSUhEUgAA'),
            {
              'content-type': 'application/json',
            },
          );
          return;
      }
    }

    if (raw === undefined) {
      return this.sendError(
        res,
        new ApiError(413, {
          message: `Request body too large; the maximum is ${MAX_BODY_BYTES} bytes.`,
          type: 'invalid_request_error',
          param: null,
          code: null,
        }),
      );
    }
    if (!validJson) {
      return this.sendError(
        res,
        invalidRequest(
          "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP " +
            'library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you ' +
            'have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)',
          null,
          null,
        ),
      );
    }

    const request = validateGenerationRequest(parsed);
    if (request.prompt.includes(SAFETY_MARKER)) throw contentPolicyError(request.family, requestId);

    const pieces = await this.generate(request);
    await this.sendPieces(res, 200, pieces, {
      'content-type': 'application/json',
      'openai-processing-ms': String(Date.now() - started),
    });
  }

  /**
   * Builds the success body as JSON text pieces. The (large) base64 strings are
   * spliced in verbatim instead of going through one giant JSON.stringify, so
   * no single step holds the event loop for long.
   */
  private async generate(req: ResolvedRequest): Promise<string[]> {
    const spec: ImageSpec = {
      width: req.width,
      height: req.height,
      format: req.outputFormat,
      alpha: req.background === 'transparent',
      quality: req.compression,
    };
    const first = variantCounter;
    variantCounter += req.n;
    const bases = await Promise.all(Array.from({length: req.n}, (_, i) => getVariant(spec, first + i)));

    const meta: Record<string, unknown> = {created: Math.floor(Date.now() / 1000)};
    if (req.family === 'gpt-image') {
      const inputTokens = Math.max(1, Math.ceil(req.promptLength / 4));
      const outputTokens = outputTokensPerImage(req) * req.n;
      meta.background = req.background;
      meta.output_format = req.outputFormat;
      meta.quality = req.quality;
      meta.size = `${req.width}x${req.height}`;
      meta.usage = {
        input_tokens: inputTokens,
        input_tokens_details: {text_tokens: inputTokens, image_tokens: 0},
        output_tokens: outputTokens,
        total_tokens: inputTokens + outputTokens,
      };
    }
    const metaJson = JSON.stringify(meta);
    const pieces: string[] = [`${metaJson.slice(0, -1)},"data":[`];
    const revised =
      req.family === 'dall-e-3'
        ? `,"revised_prompt":${JSON.stringify(revisePrompt(req.prompt, req.style))}`
        : '';
    for (const [i, base] of bases.entries()) {
      if (this.closed) break;
      const id = `img-${nextImageId()}`;
      const separator = i === 0 ? '' : ',';
      if (req.responseFormat === 'url') {
        this.storeUrlImage(id, {base, spec});
        pieces.push(
          `${separator}{"url":${JSON.stringify(`${this.origin}/images/${id}.${spec.format}`)}${revised}}`,
        );
      } else {
        pieces.push(`${separator}{"b64_json":"`);
        const bytes = stamp(base, spec, id);
        // Encode in slices (a multiple of 3 bytes, so the base64 pieces concatenate)
        // and yield in between, so big images don't stall other requests.
        for (let offset = 0; offset < bytes.length; offset += BASE64_SLICE_BYTES) {
          pieces.push(bytes.toString('base64', offset, Math.min(bytes.length, offset + BASE64_SLICE_BYTES)));
          await yieldToEventLoop();
        }
        pieces.push(`"${revised}}`);
      }
    }
    pieces.push(']}');
    return pieces;
  }

  private storeUrlImage(id: string, image: StoredImage): void {
    this.urlImages.set(id, image);
    while (this.urlImages.size > MAX_STORED_URL_IMAGES) {
      const oldest = this.urlImages.keys().next().value;
      if (oldest === undefined) break;
      this.urlImages.delete(oldest); // Like an expired URL: 404 from now on.
    }
  }

  private writeHead(
    res: ServerResponse,
    status: number,
    length: number,
    headers: Record<string, string>,
  ): boolean {
    if (this.closed || res.destroyed || res.headersSent) return false;
    res.writeHead(status, {
      'openai-version': '2020-10-01',
      ...(this.organization !== undefined ? {'openai-organization': this.organization} : {}),
      ...headers,
      'content-length': String(length),
    });
    return true;
  }

  private send(res: ServerResponse, status: number, body: Buffer, headers: Record<string, string>): void {
    if (this.writeHead(res, status, body.length, headers)) res.end(body);
  }

  /** Writes a body given as text pieces, honouring backpressure. */
  private async sendPieces(
    res: ServerResponse,
    status: number,
    pieces: string[],
    headers: Record<string, string>,
  ): Promise<void> {
    const length = pieces.reduce((sum, piece) => sum + Buffer.byteLength(piece, 'utf8'), 0);
    if (!this.writeHead(res, status, length, headers)) return;
    for (const piece of pieces) {
      if (this.closed || res.destroyed) return;
      if (!res.write(piece, 'utf8')) {
        await new Promise<void>(resolve => {
          const done = () => {
            res.off('drain', done);
            res.off('close', done);
            resolve();
          };
          res.on('drain', done);
          res.on('close', done);
        });
      }
    }
    res.end();
  }

  private sendError(res: ServerResponse, error: ApiError): void {
    this.send(res, error.status, Buffer.from(JSON.stringify({error: error.body}), 'utf8'), {
      'content-type': 'application/json',
      ...error.headers,
    });
  }
}

function checkLatency(ms: number): number {
  if (!Number.isFinite(ms) || ms < 0)
    throw new RangeError(`latency must be a non-negative number of ms, got ${ms}`);
  return ms;
}

/** Reads the whole body; undefined when it exceeds MAX_BODY_BYTES. */
function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise(resolve => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) tooLarge = true;
      if (!tooLarge) chunks.push(chunk);
    });
    req.on('end', () => resolve(tooLarge ? undefined : Buffer.concat(chunks)));
    req.on('error', () => resolve(tooLarge ? undefined : Buffer.concat(chunks)));
    req.on('close', () => resolve(tooLarge ? undefined : Buffer.concat(chunks)));
  });
}
