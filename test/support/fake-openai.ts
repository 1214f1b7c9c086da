/**
 * A fake OpenAI Images HTTP server for tests and the bench.
 *
 * It mirrors the Images contract of the official SDK, openai 7.57.0
 * (`node_modules/openai/resources/images.d.ts`): `POST /v1/images/generations`
 * (JSON) and `POST /v1/images/edits` (multipart), non-streamed and streamed
 * (server-sent events), so the SDK can be pointed at it with `baseURL: fake.url`.
 * The accepted fields and enum values are tied to the SDK's types at compile
 * time, so an SDK upgrade that changes them breaks the type check here.
 *
 * What it checks is what catches a mistake of the product calling it: the
 * model lifecycle (a calendar of shutdown dates), required fields, field types
 * and the SDK's enum values, the wire rules that hold for every model (formats,
 * compression, GIF and SVG options, streaming), the general size limits, the
 * edit inputs, and the shapes of answers, streams and faults. It deliberately
 * holds no per-model rule table (which model takes which size, quality or
 * option): the product keeps its own model catalogue, and a copy here would
 * only prove that the two copies agree.
 *
 * Answers carry real images: PNG, JPEG and WebP encoded by sharp from noise at
 * the requested size (with an alpha channel when transparent), animated GIFs
 * with the requested frames and delays, and SVG documents. Encoding is slow,
 * so a few encoded variants per (size, format, ...) are pooled and shared by
 * every instance in the process; each image handed out gets a unique stamp
 * (a metadata chunk or comment), so no two images ever have the same bytes.
 */
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http';
import {createHash, randomBytes} from 'node:crypto';
import {crc32} from 'node:zlib';
import busboy from 'busboy';
import type {
  ImageEditCompletedEvent,
  ImageEditParamsBase,
  ImageEditPartialImageEvent,
  ImageGenCompletedEvent,
  ImageGenerateParamsBase,
  ImageGenPartialImageEvent,
  ImagesResponse,
} from 'openai/resources/images';
import sharp from 'sharp';
import {listenOnLoopback} from './loopback-server';

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

export interface PreviewAccess {
  /** output_format 'gif' allowed for this project. */
  gif?: boolean;
  /** output_format 'svg' allowed for this project. */
  svg?: boolean;
}

export interface FakeOpenAIOptions {
  /** Accepted bearer key, default 'sk-test-key'. */
  apiKey?: string;
  /** If set, requests must carry header OpenAI-Organization equal to it, else 401. */
  organization?: string;
  /** Delay before answering each image request, default 0. A stream spreads it over its events. */
  latencyMs?: number;
  /**
   * Spacing between the events of a stream. Unset, the latency is split evenly
   * over the events; set, the first event comes after what remains of the
   * latency once the other events are spaced this far apart (at once if nothing).
   */
  partialIntervalMs?: number;
  /** The calendar day ('YYYY-MM-DD') the model lifecycle is judged on; default the real (UTC) clock. */
  today?: string;
  /** Model ids to know beyond the built-in lifecycle: id -> shutdown date ('YYYY-MM-DD') or null. */
  extraModels?: Readonly<Record<string, string | null>>;
  /** Preview access of the project; both default to true. */
  previews?: PreviewAccess;
  /** Add `usage.output_tokens_details` to non-streamed answers (the API often leaves it out). */
  includeOutputTokensDetails?: boolean;
}

export type FakeFault =
  /** 429 with retry-after headers. */
  | {kind: 'rate_limit'; retryAfterSeconds?: number}
  /** 500, 502 or 503 with OpenAI's server_error body. */
  | {kind: 'server_error'; status?: 500 | 502 | 503}
  /** 400 moderation_blocked, as the safety system answers GPT image requests. */
  | {kind: 'content_policy'}
  /** The TCP connection is reset before any answer. */
  | {kind: 'connection_reset'}
  /** No answer at all until close(). */
  | {kind: 'hang'}
  /** 200 with a body that does not parse (truncated JSON, or an SSE event with broken JSON). */
  | {kind: 'malformed'}
  /**
   * Streams: the first partial image (if any were asked for), then an SSE
   * `error` event. A non-streamed request gets a 500 instead.
   */
  | {kind: 'stream_error'; message?: string}
  /**
   * Streams: the first partial image (if any were asked for), then a TCP reset
   * at least 100 ms later (a reset discards what the client has not read yet).
   * A non-streamed request gets its headers and part of the body, then the reset.
   */
  | {kind: 'stream_reset'}
  /**
   * An error whose message repeats the Authorization header and the prompt, like a leaky
   * gateway: 502 (default), or a 400 invalid_request_error, whose message a client shows.
   */
  | {kind: 'echo_secrets'; status?: 400 | 502}
  /**
   * A normal non-streamed answer, with each image's revised_prompt set to `revisedPrompt` and
   * `usage` given these fields too: what an answer could carry that a store should not keep.
   */
  | {kind: 'odd_answer'; revisedPrompt?: string; usage?: Record<string, unknown>}
  /** Any error OpenAI might answer, as given (what a preview refusal looks like varies). */
  | {
      kind: 'api_error';
      status: number;
      message: string;
      type?: string;
      param?: string | null;
      code?: string | null;
    };

export interface RecordedFilePart {
  /** Form field name as sent, e.g. 'image[]'. */
  field: string;
  filename: string | undefined;
  /** Content type declared in the part header. */
  contentType: string;
  bytes: number;
  sha256: string;
}

/** What `RecordedRequest.body` holds for a multipart request. */
export interface RecordedMultipartBody {
  /** Text fields by their raw names ('svg[model]'); a repeated name keeps its last value. */
  fields: Record<string, string>;
  /** File parts in arrival order. */
  files: RecordedFilePart[];
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  /** 'json': body is the parsed JSON; 'multipart': a RecordedMultipartBody; 'none': empty or unparsable, body is null. */
  bodyKind: 'json' | 'multipart' | 'none';
  body: unknown;
  /** Arrival time, performance.timeOrigin + performance.now() (ms). */
  receivedAt: number;
  /** HTTP status answered (200 for a stream), once headers are sent. */
  status?: number;
  /** Streams: when the first partial image event was handed to the socket. */
  firstPartialAt?: number;
  /** When the last completed event (streams) or the last byte of the JSON answer was handed to the socket. */
  completedAt?: number;
}

export interface FakeOpenAI {
  /** Base URL to give the SDK, e.g. http://127.0.0.1:PORT/v1 */
  readonly url: string;
  /** Every request received, in arrival order. */
  readonly requests: RecordedRequest[];
  setLatency(ms: number): void;
  /** Spacing between stream events; null splits the latency evenly. */
  setPartialInterval(ms: number | null): void;
  /**
   * Make the next `times` (default 1) image requests fail with `fault`, or,
   * with `probability`, make each image request fail with that chance until
   * clearFaults(). Counted faults are used up first, in injection order.
   */
  injectFault(fault: FakeFault, opts?: {times?: number; probability?: number}): void;
  clearFaults(): void;
  /** Judge the model lifecycle on this day ('YYYY-MM-DD'), or on the real clock with null. */
  setToday(date: string | null): void;
  /** Make a model id known (as OpenAI adding a model), optionally with a shutdown date. */
  addModel(id: string, shutdownDate?: string | null): void;
  /** Shut a known model down from `date` on. */
  retireModel(id: string, date: string): void;
  setPreviewAccess(access: PreviewAccess): void;
  /** Clear requests and faults; latency, interval, calendar, models and previews back to the options. */
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
// Model lifecycle: data only, id -> shutdown day (the model fails from that day on)
// ---------------------------------------------------------------------------

const MODEL_LIFECYCLE: ReadonlyArray<readonly [id: string, shutdownDate: string | null]> = [
  ['dall-e-2', '2026-05-12'],
  ['dall-e-3', '2026-05-12'],
  ['gpt-image-1', '2026-10-23'],
  ['gpt-image-1.5', '2026-12-01'],
  ['gpt-image-1.5-2025-12-16', '2026-12-01'],
  ['gpt-image-1-mini', '2026-12-01'],
  ['chatgpt-image-latest', '2026-12-01'],
  ['gpt-image-2', null],
  ['gpt-image-2-2026-04-21', null],
  ['gpt-image-2.5-sunburst', null],
  ['gpt-image-2.5-sunburst-2026-09-08', null],
  ['gpt-image-2.5-flare', null],
  ['gpt-image-2.5-flare-2026-09-08', null],
  ['gpt-image-2.6-sunburst', null],
  ['gpt-image-2.6-flare', null],
];

/** The retired DALL·E family takes the legacy `style` and `response_format`; every other model is a GPT image model. */
function isLegacyModel(model: string): boolean {
  return model.startsWith('dall-e-');
}

function checkIsoDate(date: string): string {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(date);
  const parsed = match ? new Date(`${date}T00:00:00Z`) : undefined;
  if (!parsed || Number.isNaN(parsed.getTime()) || parsed.toISOString().slice(0, 10) !== date) {
    throw new RangeError(`expected a date as 'YYYY-MM-DD', got '${date}'`);
  }
  return date;
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

function invalidType(param: string, expected: string, got: string): ApiError {
  return invalidRequest(
    `Invalid type for '${param}': expected ${expected}, but got ${got} instead.`,
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

function missingParameter(param: string): ApiError {
  return invalidRequest(`Missing required parameter: '${param}'.`, param, 'missing_required_parameter');
}

function unknownParameter(param: string): ApiError {
  return invalidRequest(`Unknown parameter: '${param}'.`, param, 'unknown_parameter');
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

/** A prompt containing this is refused by the "safety system". */
const SAFETY_MARKER = '[[content-policy]]';

function contentPolicyError(requestId: string): ApiError {
  return new ApiError(400, {
    message:
      'Your request was rejected by the safety system. If you believe this is an error, ' +
      `contact us at help.openai.com and include the request ID ${requestId}.`,
    type: 'image_generation_user_error',
    param: null,
    code: 'moderation_blocked',
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

function echoSecretsError(status: 400 | 502, authorization: string, prompt: string): ApiError {
  if (status === 400) {
    return new ApiError(400, {
      message: `Gateway rejected the request: header authorization '${authorization}' is not valid here (prompt: ${prompt})`,
      type: 'invalid_request_error',
      param: null,
      code: null,
    });
  }
  return new ApiError(502, {
    message: `Bad gateway: upstream refused the request (authorization: ${authorization}; prompt: ${prompt})`,
    type: 'server_error',
    param: null,
    code: null,
  });
}

// ---------------------------------------------------------------------------
// Request fields, tied to the SDK's parameter types
// ---------------------------------------------------------------------------

type FieldRule =
  | {type: 'string'; nullable: boolean}
  | {type: 'integer'; nullable: boolean; min: number; max?: number}
  | {type: 'boolean'; nullable: boolean}
  | {type: 'enum'; nullable: boolean; values: readonly string[]}
  | {type: 'object'; nullable: boolean; fields: Readonly<Record<string, FieldRule>>; required?: string}
  | {type: 'file'; multiple: boolean};

type Present<T> = Exclude<T, null | undefined>;
type GenerateParams = ImageGenerateParamsBase;
type EditParams = ImageEditParamsBase;
type GenerateSvg = Present<GenerateParams['svg']>;
type EditSvg = Present<EditParams['svg']>;

/**
 * Every member of a string union, exactly once: a missing or an extra member
 * is a compile error, so the lists below follow the SDK's unions.
 */
function allOf<T extends string>(members: Record<T, true>): readonly T[] {
  return Object.keys(members) as T[];
}

const str = (nullable: boolean): FieldRule => ({type: 'string', nullable});
const int = (min: number, max?: number): FieldRule =>
  max === undefined ? {type: 'integer', nullable: true, min} : {type: 'integer', nullable: true, min, max};
const oneOf = (values: readonly string[], nullable = true): FieldRule => ({type: 'enum', nullable, values});

const BACKGROUNDS = allOf<Present<GenerateParams['background']>>({
  transparent: true,
  opaque: true,
  auto: true,
});
const EDIT_BACKGROUNDS = allOf<Present<EditParams['background']>>({
  transparent: true,
  opaque: true,
  auto: true,
});
const COMPLEXITIES = allOf<Present<GenerateParams['complexity']>>({low: true, medium: true, high: true});
const EDIT_COMPLEXITIES = allOf<Present<EditParams['complexity']>>({low: true, medium: true, high: true});
const OUTPUT_FORMATS = allOf<Present<GenerateParams['output_format']>>({
  png: true,
  webp: true,
  jpeg: true,
  gif: true,
  svg: true,
});
const EDIT_OUTPUT_FORMATS = allOf<Present<EditParams['output_format']>>({
  png: true,
  webp: true,
  jpeg: true,
  gif: true,
  svg: true,
});
const QUALITIES = allOf<Present<GenerateParams['quality']>>({
  low: true,
  medium: true,
  high: true,
  xhigh: true,
  max: true,
  auto: true,
  standard: true,
  hd: true,
});
const EDIT_QUALITIES = allOf<Present<EditParams['quality']>>({
  low: true,
  medium: true,
  high: true,
  xhigh: true,
  max: true,
  auto: true,
  standard: true,
});
const MODERATIONS = allOf<Present<GenerateParams['moderation']>>({low: true, auto: true});
const INPUT_FIDELITIES = allOf<Present<EditParams['input_fidelity']>>({high: true, low: true});
const RESPONSE_FORMATS = allOf<Present<GenerateParams['response_format']>>({url: true, b64_json: true});
const EDIT_RESPONSE_FORMATS = allOf<Present<EditParams['response_format']>>({url: true, b64_json: true});
const STYLES = allOf<Present<GenerateParams['style']>>({vivid: true, natural: true});
const SVG_EFFORTS = allOf<Present<Present<Present<GenerateSvg['reasoning']>['effort']>>>({
  none: true,
  minimal: true,
  low: true,
  medium: true,
  high: true,
  xhigh: true,
  max: true,
});
const EDIT_SVG_EFFORTS = allOf<Present<Present<EditSvg['reasoning']>['effort']>>({
  none: true,
  minimal: true,
  low: true,
  medium: true,
  high: true,
  xhigh: true,
  max: true,
});

/** Quality values of the retired DALL·E models, refused for GPT image models. */
const LEGACY_QUALITIES: ReadonlySet<string> = new Set(['standard', 'hd']);

const GENERATE_FIELDS = {
  prompt: str(false),
  background: oneOf(BACKGROUNDS),
  complexity: oneOf(COMPLEXITIES),
  frame_count: int(2, 16),
  frame_duration_ms: int(1),
  model: str(true),
  moderation: oneOf(MODERATIONS),
  n: int(1, 10),
  output_compression: int(0, 100),
  output_format: oneOf(OUTPUT_FORMATS),
  partial_images: int(0, 3),
  quality: oneOf(QUALITIES),
  response_format: oneOf(RESPONSE_FORMATS),
  safety_identifier: str(true),
  size: str(true),
  stream: {type: 'boolean', nullable: true},
  style: oneOf(STYLES),
  svg: {
    type: 'object',
    nullable: true,
    required: 'model',
    fields: {
      model: str(false),
      reasoning: {
        type: 'object',
        nullable: true,
        fields: {effort: oneOf(SVG_EFFORTS)} satisfies Record<
          keyof Present<GenerateSvg['reasoning']>,
          FieldRule
        >,
      },
    } satisfies Record<keyof GenerateSvg, FieldRule>,
  },
  user: str(false),
} as const satisfies Record<keyof GenerateParams, FieldRule>;

const EDIT_FIELDS = {
  image: {type: 'file', multiple: true},
  prompt: str(false),
  background: oneOf(EDIT_BACKGROUNDS),
  complexity: oneOf(EDIT_COMPLEXITIES),
  frame_count: int(2, 16),
  frame_duration_ms: int(1),
  input_fidelity: oneOf(INPUT_FIDELITIES),
  markup: {type: 'file', multiple: false},
  mask: {type: 'file', multiple: false},
  model: str(true),
  n: int(1, 10),
  output_compression: int(0, 100),
  output_format: oneOf(EDIT_OUTPUT_FORMATS),
  partial_images: int(0, 3),
  quality: oneOf(EDIT_QUALITIES),
  response_format: oneOf(EDIT_RESPONSE_FORMATS),
  safety_identifier: str(true),
  size: str(true),
  stream: {type: 'boolean', nullable: true},
  svg: {
    type: 'object',
    nullable: true,
    fields: {
      model: str(false),
      reasoning: {
        type: 'object',
        nullable: true,
        // The edit type's effort is not nullable, but a null member of an optional object is harmless.
        fields: {effort: oneOf(EDIT_SVG_EFFORTS)} satisfies Record<
          keyof Present<EditSvg['reasoning']>,
          FieldRule
        >,
      },
    } satisfies Record<keyof EditSvg, FieldRule>,
  },
  user: str(false),
} as const satisfies Record<keyof EditParams, FieldRule>;

type Endpoint = 'generations' | 'edits';
const FIELDS: Record<Endpoint, Readonly<Record<string, FieldRule>>> = {
  generations: GENERATE_FIELDS,
  edits: EDIT_FIELDS,
};

const MAX_PROMPT_CHARS = 32000;

function isPresent(value: unknown): boolean {
  return value !== undefined && value !== null;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Any key that the SDK's parameter type does not have, at any depth: 400 unknown_parameter. */
function checkKnownFields(
  body: Record<string, unknown>,
  rules: Readonly<Record<string, FieldRule>>,
  prefix = '',
): void {
  for (const [key, value] of Object.entries(body)) {
    const rule = rules[key];
    const param = prefix + key;
    if (!rule) throw unknownParameter(param);
    if (rule.type === 'object' && isPlainObject(value)) checkKnownFields(value, rule.fields, `${param}.`);
  }
}

/** Type, enum and range checks of one present value. */
function checkField(param: string, rule: FieldRule, value: unknown): void {
  if (value === undefined) return;
  if (value === null) {
    if (rule.type !== 'file' && rule.nullable) return;
    throw invalidType(param, expectedType(rule), 'null');
  }
  switch (rule.type) {
    case 'string':
      if (typeof value !== 'string') throw invalidType(param, 'a string', describeJsonType(value));
      return;
    case 'boolean':
      if (typeof value !== 'boolean') throw invalidType(param, 'a boolean', describeJsonType(value));
      return;
    case 'enum':
      if (typeof value !== 'string') throw invalidType(param, 'a string', describeJsonType(value));
      if (!rule.values.includes(value)) throw invalidValue(param, value, rule.values);
      return;
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        throw invalidType(param, 'an integer', describeJsonType(value));
      }
      if (value < rule.min) {
        throw invalidRequest(
          `Invalid '${param}': integer below minimum value. Expected a value >= ${rule.min}, but got ${value} instead.`,
          param,
          'integer_below_min_value',
        );
      }
      if (rule.max !== undefined && value > rule.max) {
        throw invalidRequest(
          `Invalid '${param}': integer above maximum value. Expected a value <= ${rule.max}, but got ${value} instead.`,
          param,
          'integer_above_max_value',
        );
      }
      return;
    case 'object': {
      if (!isPlainObject(value)) throw invalidType(param, 'an object', describeJsonType(value));
      if (rule.required !== undefined && !isPresent(value[rule.required])) {
        throw missingParameter(`${param}.${rule.required}`);
      }
      for (const [key, member] of Object.entries(rule.fields))
        checkField(`${param}.${key}`, member, value[key]);
      return;
    }
    case 'file':
      throw invalidType(param, 'a file', describeJsonType(value));
  }
}

function expectedType(rule: FieldRule): string {
  switch (rule.type) {
    case 'string':
    case 'enum':
      return 'a string';
    case 'integer':
      return 'an integer';
    case 'boolean':
      return 'a boolean';
    case 'object':
      return 'an object';
    case 'file':
      return 'a file';
  }
}

/**
 * Multipart text to JSON-like values, as the API reads them: integers and
 * booleans from their text, the text 'null' as null for fields that are not
 * strings. Text that does not parse stays a string, so the type check names it.
 */
function coerceFormText(rule: FieldRule, text: string): unknown {
  if (text === 'null' && rule.type !== 'string' && rule.type !== 'file' && rule.nullable) return null;
  if (rule.type === 'integer' && /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(text))
    return Number(text);
  if (rule.type === 'boolean' && (text === 'true' || text === 'false')) return text === 'true';
  return text;
}

function coerceFormObject(body: Record<string, unknown>, rules: Readonly<Record<string, FieldRule>>): void {
  for (const [key, value] of Object.entries(body)) {
    const rule = rules[key];
    if (!rule) continue;
    if (typeof value === 'string') body[key] = coerceFormText(rule, value);
    else if (rule.type === 'object' && isPlainObject(value)) coerceFormObject(value, rule.fields);
  }
}

// ---------------------------------------------------------------------------
// Validation: body -> image job
// ---------------------------------------------------------------------------

type OutputFormat = 'png' | 'jpeg' | 'webp' | 'gif' | 'svg';
type RasterFormat = Exclude<OutputFormat, 'svg'>;
type ResolvedQuality = Present<ImagesResponse['quality']>;
type RequestedBackground = 'transparent' | 'opaque' | 'auto';

interface InputImage {
  width: number;
  height: number;
}

interface ImageJob {
  endpoint: Endpoint;
  model: string;
  prompt: string;
  promptLength: number;
  n: number;
  width: number;
  height: number;
  /** As asked (default 'auto'); stream events carry it. */
  requestedQuality: string;
  /** As made; non-streamed answers carry it. */
  quality: ResolvedQuality;
  requestedBackground: RequestedBackground;
  background: 'transparent' | 'opaque';
  outputFormat: OutputFormat;
  /** Encoder quality for jpeg/webp. */
  compression: number;
  frameCount: number;
  frameDurationMs: number;
  svgModel: string | undefined;
  svgEffort: string | undefined;
  stream: boolean;
  partialImages: number;
  safetyIdentifier: string | null;
  /** Edits: the input images, in order. */
  inputs: InputImage[];
}

interface ModelContext {
  today: string;
  models: ReadonlyMap<string, string | null>;
  previews: Required<PreviewAccess>;
}

const DEFAULT_SIZE = 1024;
const SIZE_MULTIPLE = 16;
const MAX_EDGE = 3840;
const MIN_PIXELS = 655_360;
const MAX_PIXELS = 3840 * 2160;
const MAX_ASPECT = 3;
const DEFAULT_FRAME_COUNT = 9;
const DEFAULT_FRAME_DURATION_MS = 200;

/** `WxH` within the general limits (the same for every model); absent or 'auto' is 1024x1024. */
function parseSize(value: unknown): {width: number; height: number} {
  if (!isPresent(value) || value === 'auto') return {width: DEFAULT_SIZE, height: DEFAULT_SIZE};
  const size = String(value);
  const match = /^([1-9]\d{0,4})x([1-9]\d{0,4})$/.exec(size);
  const fail = (why: string) => invalidRequest(`Invalid size '${size}'. ${why}`, 'size', 'invalid_value');
  if (!match) throw fail("Use 'auto' or 'WIDTHxHEIGHT', for example '1536x864'.");
  const width = Number(match[1]);
  const height = Number(match[2]);
  if (width % SIZE_MULTIPLE !== 0 || height % SIZE_MULTIPLE !== 0) {
    throw fail(`Width and height must both be multiples of ${SIZE_MULTIPLE}.`);
  }
  if (Math.max(width, height) > MAX_EDGE) throw fail(`The longest edge must be at most ${MAX_EDGE} pixels.`);
  const pixels = width * height;
  if (pixels < MIN_PIXELS || pixels > MAX_PIXELS) {
    throw fail(`The total number of pixels must be between ${MIN_PIXELS} and ${MAX_PIXELS} (3840x2160).`);
  }
  if (Math.max(width, height) > MAX_ASPECT * Math.min(width, height)) {
    throw fail('The aspect ratio must be between 1:3 and 3:1.');
  }
  return {width, height};
}

function checkModel(value: unknown, context: ModelContext): string {
  if (!isPresent(value)) throw missingParameter('model');
  if (typeof value !== 'string') throw invalidType('model', 'a string', describeJsonType(value));
  if (!context.models.has(value)) {
    const available = [...context.models]
      .filter(([, shutdown]) => shutdown === null || context.today < shutdown)
      .map(([id]) => id);
    throw invalidValue('model', value, available);
  }
  const shutdown = context.models.get(value);
  if (shutdown !== undefined && shutdown !== null && context.today >= shutdown) {
    throw new ApiError(404, {
      message: `The model \`${value}\` has been deprecated, learn more here: https://platform.openai.com/docs/deprecations`,
      type: 'invalid_request_error',
      param: null,
      code: 'model_not_found',
    });
  }
  return value;
}

function checkPrompt(value: unknown): {prompt: string; length: number} {
  if (!isPresent(value)) throw missingParameter('prompt');
  if (typeof value !== 'string') throw invalidType('prompt', 'a string', describeJsonType(value));
  const length = [...value].length;
  if (length === 0) {
    throw invalidRequest(
      "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
      'prompt',
      'empty_string',
    );
  }
  if (length > MAX_PROMPT_CHARS) {
    throw invalidRequest(
      `Invalid 'prompt': string too long. Expected a string with maximum length ${MAX_PROMPT_CHARS}, ` +
        `but got a string with length ${length} instead.`,
      'prompt',
      'string_above_max_length',
    );
  }
  return {prompt: value, length};
}

function notWith(param: string, why: string): ApiError {
  return invalidRequest(`Invalid '${param}': ${why}`, param, 'invalid_value');
}

/** Validates a request body (JSON, or multipart text fields already nested and coerced); throws ApiError. */
function validateImageRequest(endpoint: Endpoint, body: unknown, context: ModelContext): ImageJob {
  if (!isPlainObject(body)) {
    throw invalidRequest(
      `Invalid type for request body: expected an object, but got ${describeJsonType(body)} instead.`,
      null,
      'invalid_type',
    );
  }
  const rules = FIELDS[endpoint];
  checkKnownFields(body, rules);
  const model = checkModel(body.model, context);
  const {prompt, length: promptLength} = checkPrompt(body.prompt);
  for (const [key, rule] of Object.entries(rules)) checkField(key, rule, body[key]);
  const field = <T>(key: string): T | undefined => (isPresent(body[key]) ? (body[key] as T) : undefined);

  const legacy = isLegacyModel(model);
  if (!legacy) {
    if (field('style') !== undefined) throw unsupportedParameter('style');
    if (field('response_format') !== undefined) throw unsupportedParameter('response_format');
  }
  const requestedQuality = field<string>('quality') ?? 'auto';
  if (!legacy && LEGACY_QUALITIES.has(requestedQuality)) {
    throw invalidValue(
      'quality',
      requestedQuality,
      (endpoint === 'edits' ? EDIT_QUALITIES : QUALITIES).filter(q => !LEGACY_QUALITIES.has(q)),
    );
  }
  if (legacy && field('response_format') === 'url') {
    throw invalidRequest(
      "Invalid 'response_format': this server only answers 'b64_json'.",
      'response_format',
      'unsupported_value',
    );
  }
  const stream = field<boolean>('stream') ?? false;
  if (legacy && stream) throw unsupportedParameter('stream');

  const outputFormat = field<OutputFormat>('output_format') ?? 'png';
  if (outputFormat === 'gif' || outputFormat === 'svg') {
    if (!context.previews[outputFormat]) {
      throw new ApiError(403, {
        message: `This project does not have access to ${outputFormat.toUpperCase()} output.`,
        type: 'invalid_request_error',
        param: 'output_format',
        code: 'unsupported_value',
      });
    }
  }

  // Wire rules that hold for every model.
  const compression = field<number>('output_compression');
  if (compression !== undefined && outputFormat !== 'jpeg' && outputFormat !== 'webp') {
    throw notWith(
      'output_compression',
      "compression is only supported for the 'jpeg' and 'webp' output formats.",
    );
  }
  const requestedBackground = field<RequestedBackground>('background') ?? 'auto';
  if (requestedBackground === 'transparent' && outputFormat !== 'png' && outputFormat !== 'webp') {
    throw notWith(
      'background',
      `a transparent background needs output_format 'png' or 'webp', not '${outputFormat}'.`,
    );
  }
  if (outputFormat !== 'gif') {
    for (const gifOnly of ['frame_count', 'frame_duration_ms']) {
      if (field(gifOnly) !== undefined) throw notWith(gifOnly, "only supported with output_format 'gif'.");
    }
  }
  if (outputFormat !== 'svg' && field('svg') !== undefined) {
    throw notWith('svg', "only supported with output_format 'svg'.");
  }
  const n = field<number>('n') ?? 1;
  if (outputFormat === 'svg' && n !== 1) throw notWith('n', "output_format 'svg' requires n=1.");
  if (outputFormat === 'gif' || outputFormat === 'svg') {
    if (stream) throw notWith('stream', `output_format '${outputFormat}' cannot be streamed.`);
    if (field('partial_images') !== undefined) {
      throw notWith('partial_images', `output_format '${outputFormat}' does not support partial images.`);
    }
  }

  const {width, height} = parseSize(body.size);
  const svg = field<{model?: unknown; reasoning?: {effort?: unknown} | null}>('svg');
  const user = field<string>('user');
  const safetyIdentifier = field<string>('safety_identifier') || user || null;
  return {
    endpoint,
    model,
    prompt,
    promptLength,
    n,
    width,
    height,
    requestedQuality,
    quality: resolveQuality(requestedQuality),
    requestedBackground,
    background: requestedBackground === 'transparent' ? 'transparent' : 'opaque',
    outputFormat,
    compression: compression ?? 100,
    frameCount: field<number>('frame_count') ?? DEFAULT_FRAME_COUNT,
    frameDurationMs: field<number>('frame_duration_ms') ?? DEFAULT_FRAME_DURATION_MS,
    svgModel: typeof svg?.model === 'string' ? svg.model : undefined,
    svgEffort: typeof svg?.reasoning?.effort === 'string' ? svg.reasoning.effort : undefined,
    stream,
    partialImages: field<number>('partial_images') ?? 0,
    safetyIdentifier,
    inputs: [],
  };
}

function resolveQuality(requested: string): ResolvedQuality {
  switch (requested) {
    case 'low':
    case 'medium':
    case 'high':
    case 'xhigh':
    case 'max':
      return requested;
    default:
      // 'auto' picks the best; the legacy values exist only on retired models.
      return 'high';
  }
}

// ---------------------------------------------------------------------------
// Multipart (edits)
// ---------------------------------------------------------------------------

const MAX_INPUT_IMAGES = 16;
const MAX_IMAGE_BYTES = 50 * 1024 * 1024;
const MAX_MASK_BYTES = 4 * 1024 * 1024;
/** Bytes of all parts together beyond which nothing more is kept and the answer is 413. */
const MAX_MULTIPART_BYTES = 128 * 1024 * 1024;
const MAX_JSON_BYTES = 10 * 1024 * 1024;
/** Leading bytes kept of every file part, enough for any magic number. */
const SNIFF_BYTES = 64;
const MULTIPART_LIMITS = {
  fieldNameSize: 200,
  // A 32,000-character prompt is at most 128,000 bytes of UTF-8.
  fieldSize: 256 * 1024,
  fields: 64,
  files: 64,
  parts: 128,
  headerPairs: 32,
};

interface UploadedFile extends RecordedFilePart {
  /** Field name without a trailing '[]'. */
  name: string;
  /** The first bytes, for judging the format. */
  head: Buffer;
  /** All bytes, or undefined when the part was larger than this server keeps. */
  data: Buffer | undefined;
}

interface ParsedForm {
  /** Text fields nested by their bracketed names ('svg[model]' -> svg.model), values still text. */
  body: Record<string, unknown>;
  files: readonly UploadedFile[];
}

/** 'svg[reasoning][effort]' -> ['svg', 'reasoning', 'effort']; 'image[]' -> ['image', '']. */
function splitFieldName(name: string): string[] | undefined {
  const match = /^([A-Za-z_][\w.-]*)((?:\[[\w.-]*\])*)$/.exec(name);
  if (!match?.[1]) return undefined;
  const inner = [...(match[2] ?? '').matchAll(/\[([\w.-]*)\]/g)].map(m => m[1] ?? '');
  return [match[1], ...inner];
}

/** Places the text fields into a nested body and checks the file parts' names against the schema. */
function assembleForm(
  fields: ReadonlyArray<{name: string; value: string; truncated: boolean}>,
  files: readonly UploadedFile[],
): ParsedForm {
  const rules = EDIT_FIELDS as Readonly<Record<string, FieldRule>>;
  const body: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (const {name, value, truncated} of fields) {
    const path = splitFieldName(name);
    if (!path || path.includes('')) throw unknownParameter(name);
    const [base] = path;
    const baseRule = base === undefined ? undefined : rules[base];
    if (!baseRule) throw unknownParameter(name);
    if (baseRule.type === 'file') throw invalidType(name, 'a file', 'a string');
    if (truncated) {
      throw invalidRequest(`Invalid '${name}': string too long.`, name, 'string_above_max_length');
    }
    if (seen.has(name)) {
      throw invalidRequest(`Duplicate parameter: '${name}' was sent more than once.`, name, 'invalid_value');
    }
    seen.add(name);
    let target = body;
    for (const [depth, key] of path.entries()) {
      if (depth === path.length - 1) {
        if (isPlainObject(target[key]))
          throw invalidType(path.slice(0, depth + 1).join('.'), 'an object', 'a string');
        target[key] = value;
      } else {
        const next = target[key] ?? {};
        if (!isPlainObject(next))
          throw invalidType(path.slice(0, depth + 1).join('.'), 'an object', 'a string');
        target[key] = next;
        target = next;
      }
    }
  }
  for (const file of files) {
    const path = splitFieldName(file.field);
    const base = path?.[0];
    const rule = base === undefined ? undefined : rules[base];
    const isArray = path?.length === 2 && path[1] === '';
    if (!path || !rule || (path.length > 1 && !isArray)) throw unknownParameter(file.field);
    if (rule.type !== 'file') throw invalidType(file.field, expectedType(rule), 'a file');
    if (isArray && !rule.multiple) throw unknownParameter(file.field);
  }
  coerceFormObject(body, rules);
  return {body, files};
}

type SniffedFormat = 'png' | 'jpeg' | 'webp';

/** The image format by its magic numbers, whatever the part's declared content type says. */
function sniffImage(head: Buffer): SniffedFormat | undefined {
  if (head.length >= 8 && head.readUInt32BE(0) === 0x89504e47 && head.readUInt32BE(4) === 0x0d0a1a0a)
    return 'png';
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'jpeg';
  if (
    head.length >= 12 &&
    head.toString('latin1', 0, 4) === 'RIFF' &&
    head.toString('latin1', 8, 12) === 'WEBP'
  ) {
    return 'webp';
  }
  return undefined;
}

interface DecodedInput {
  format: SniffedFormat;
  /** After EXIF orientation. */
  width: number;
  height: number;
  hasAlpha: boolean;
}

async function readImageHeader(file: UploadedFile, param: string): Promise<DecodedInput> {
  const format = sniffImage(file.head);
  if (!format) {
    throw invalidRequest(
      `Invalid file '${param}': unsupported image format (declared '${file.contentType}'). ` +
        "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
      param,
      'unsupported_file_mimetype',
    );
  }
  if (!file.data)
    throw invalidRequest(`Invalid file '${param}': the file is too large.`, param, 'image_too_large');
  try {
    const metadata = await sharp(file.data).metadata();
    const oriented = metadata.autoOrient;
    return {format, width: oriented.width, height: oriented.height, hasAlpha: metadata.hasAlpha};
  } catch {
    throw invalidRequest(
      `Invalid file '${param}': the ${format} image could not be read.`,
      param,
      'invalid_image_format',
    );
  }
}

/** The inputs of an edit, checked as the API does; returns the input images' sizes. */
async function checkEditInputs(files: readonly UploadedFile[], job: ImageJob): Promise<InputImage[]> {
  const images = files.filter(f => f.name === 'image');
  const masks = files.filter(f => f.name === 'mask');
  const markups = files.filter(f => f.name === 'markup');
  if (images.length === 0) throw missingParameter('image');
  if (images.length > MAX_INPUT_IMAGES) {
    throw invalidRequest(
      `Invalid 'image': array too long. Expected an array with maximum length ${MAX_INPUT_IMAGES}, ` +
        `but got an array with length ${images.length} instead.`,
      'image',
      'array_above_max_length',
    );
  }
  for (const [param, parts] of [
    ['mask', masks],
    ['markup', markups],
  ] as const) {
    if (parts.length > 1) {
      throw invalidRequest(
        `Invalid '${param}': expected one file, got ${parts.length}.`,
        param,
        'invalid_value',
      );
    }
  }
  const decoded: DecodedInput[] = [];
  for (const image of images) {
    if (image.bytes >= MAX_IMAGE_BYTES) {
      throw invalidRequest(
        `Invalid file 'image': each image must be smaller than 50 MB, got ${image.bytes} bytes.`,
        'image',
        'image_too_large',
      );
    }
    decoded.push(await readImageHeader(image, 'image'));
  }
  const first = decoded[0];
  if (!first) throw missingParameter('image');

  const mask = masks[0];
  const markup = markups[0];
  if (mask && markup)
    throw invalidRequest("'markup' cannot be combined with 'mask'.", 'markup', 'invalid_value');
  if (mask && job.outputFormat === 'gif') {
    throw invalidRequest(
      "Invalid 'mask': output_format 'gif' does not support masks.",
      'mask',
      'invalid_value',
    );
  }
  for (const [param, file] of [
    ['mask', mask],
    ['markup', markup],
  ] as const) {
    if (!file) continue;
    if (sniffImage(file.head) !== 'png') {
      throw invalidRequest(`Invalid file '${param}': must be a PNG image.`, param, 'invalid_image_format');
    }
    const limit = param === 'mask' ? MAX_MASK_BYTES : MAX_IMAGE_BYTES;
    if (file.bytes >= limit) {
      throw invalidRequest(
        `Invalid file '${param}': must be smaller than ${limit / 1024 / 1024} MB, got ${file.bytes} bytes.`,
        param,
        'image_too_large',
      );
    }
    const header = await readImageHeader(file, param);
    if (!header.hasAlpha) {
      throw invalidRequest(
        `Invalid file '${param}': the PNG must have an alpha channel.`,
        param,
        'invalid_image_format',
      );
    }
    if (header.width !== first.width || header.height !== first.height) {
      throw invalidRequest(
        `Invalid file '${param}': its size ${header.width}x${header.height} must match the first image's ` +
          `${first.width}x${first.height}.`,
        param,
        'invalid_value',
      );
    }
    if (param === 'markup' && file.data) {
      const alpha = (await sharp(file.data).stats()).channels[3];
      if (!alpha || alpha.min === 255) {
        throw invalidRequest(
          "Invalid file 'markup': it must contain transparent pixels.",
          'markup',
          'invalid_image_format',
        );
      }
    }
  }
  return decoded.map(({width, height}) => ({width, height}));
}

// ---------------------------------------------------------------------------
// Usage (stand-in figures: deterministic, plausible, not OpenAI's pricing)
// ---------------------------------------------------------------------------

/** Output tokens per 1024x1024 image by quality; scaled by pixel count for other sizes. */
const OUTPUT_TOKENS_1024: Record<ResolvedQuality, number> = {
  low: 272,
  medium: 1056,
  high: 4160,
  xhigh: 6240,
  max: 8320,
};
const SVG_REASONING_TOKENS: Record<string, number> = {
  none: 0,
  minimal: 64,
  low: 256,
  medium: 1024,
  high: 4096,
  xhigh: 8192,
  max: 16384,
};

interface Usage {
  input_tokens: number;
  input_tokens_details: {image_tokens: number; text_tokens: number};
  output_tokens: number;
  total_tokens: number;
  output_tokens_details?: {image_tokens: number; text_tokens: number};
}

function textTokens(job: ImageJob): number {
  return Math.max(1, Math.ceil(job.promptLength / 4));
}

/** 65 tokens per input image plus 129 per 512-pixel tile, after fitting it in 2048x2048. */
function inputImageTokens(job: ImageJob): number {
  return job.inputs.reduce((sum, {width, height}) => {
    const scale = Math.min(1, 2048 / Math.max(width, height));
    const tiles = Math.ceil((width * scale) / 512) * Math.ceil((height * scale) / 512);
    return sum + 65 + 129 * tiles;
  }, 0);
}

function outputTokensPerImage(job: ImageJob): number {
  const perFrame = Math.round((OUTPUT_TOKENS_1024[job.quality] * job.width * job.height) / (1024 * 1024));
  return job.outputFormat === 'gif' ? perFrame * job.frameCount : perFrame;
}

function usageFor(job: ImageJob, images: number, withOutputDetails: boolean): Usage {
  const text = textTokens(job);
  const image = inputImageTokens(job);
  const output = outputTokensPerImage(job) * images;
  const usage: Usage = {
    input_tokens: text + image,
    input_tokens_details: {image_tokens: image, text_tokens: text},
    output_tokens: output,
    total_tokens: text + image + output,
  };
  if (withOutputDetails) usage.output_tokens_details = {image_tokens: output, text_tokens: 0};
  return usage;
}

function svgUsageFor(job: ImageJob, svgBytes: number): Present<ImagesResponse['svg_usage']> {
  const input = textTokens(job) + 85;
  const reasoning = SVG_REASONING_TOKENS[job.svgEffort ?? 'medium'] ?? 0;
  const output = Math.ceil(svgBytes / 4) + reasoning;
  return {
    input_tokens: input,
    model: job.svgModel ?? 'default',
    output_tokens: output,
    reasoning_tokens: reasoning,
    total_tokens: input + output,
  };
}

// ---------------------------------------------------------------------------
// Images: pooled variants + unique stamps
// ---------------------------------------------------------------------------

interface ImageSpec {
  width: number;
  height: number;
  format: RasterFormat;
  alpha: boolean;
  /** jpeg/webp encoder quality (ignored otherwise). */
  quality: number;
  /** gif: number of frames. */
  frames: number;
  /** 'coarse' is the cheap, blocky variant used for partial images. */
  detail: 'full' | 'coarse';
}

const POOL_SIZE = 3;
const POOL_CACHE_KEYS = 64;
/** Gaussian noise sigma: a 1024x1024 PNG comes out at ~2.2 MB, like a real one. */
const NOISE_SIGMA = 12;
/** Side of the blocks of a coarse (partial) image. */
const COARSE_BLOCK = 16;
/** GIF frames are flat blocks: quantising noise for GIF takes seconds. */
const GIF_BLOCK = 32;

/** Shared by all instances in the process: key -> lazily encoded variants. */
const variantPools = new Map<string, Array<Promise<Buffer> | undefined>>();
const processNonce = randomBytes(4).toString('hex');
let stampCounter = 0;
let variantCounter = 0;

function poolKey(spec: ImageSpec): string {
  const q = spec.format === 'jpeg' || spec.format === 'webp' ? `q${spec.quality}` : '';
  const frames = spec.format === 'gif' ? `f${spec.frames}` : '';
  return `${spec.detail}.${spec.width}x${spec.height}.${spec.format}.${spec.alpha ? 'rgba' : 'rgb'}${q}${frames}`;
}

function getVariant(spec: ImageSpec, index: number): Promise<Buffer> {
  const key = poolKey(spec);
  let pool = variantPools.get(key);
  if (pool) {
    // Refresh recency for the simple LRU below.
    variantPools.delete(key);
  } else {
    // Partial and GIF variants are cheap to stamp but dear to make: one each is enough.
    const size = spec.detail === 'coarse' || spec.format === 'gif' ? 1 : POOL_SIZE;
    pool = Array.from<Promise<Buffer> | undefined>({length: size});
  }
  variantPools.set(key, pool);
  while (variantPools.size > POOL_CACHE_KEYS) {
    const oldest = variantPools.keys().next().value;
    if (oldest === undefined) break;
    variantPools.delete(oldest);
  }
  const slot = index % pool.length;
  let variant = pool[slot];
  if (!variant) {
    const created = encodeVariant(spec, index);
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

/**
 * Frames of coloured blocks that shift from frame to frame, as raw RGB. Built
 * a block row at a time with native fill and copy: a per-pixel loop is slow.
 */
function gifFrames(width: number, height: number, frames: number, seed: number): Buffer {
  const rowBytes = width * 3;
  const raw = Buffer.alloc(rowBytes * height * frames);
  const row = Buffer.alloc(rowBytes);
  for (let frame = 0; frame < frames; frame++) {
    for (let top = 0; top < height; top += GIF_BLOCK) {
      const blockRow = top / GIF_BLOCK;
      for (let left = 0; left < width; left += GIF_BLOCK) {
        const level = (((left / GIF_BLOCK) * 7 + blockRow * 13 + frame * 5 + seed * 3) % 16) * 16;
        const colour = Buffer.from([level, 255 - level, (level * 3) & 255]);
        row.fill(colour, left * 3, Math.min(width, left + GIF_BLOCK) * 3);
      }
      const bottom = Math.min(height, top + GIF_BLOCK);
      for (let y = top; y < bottom; y++) row.copy(raw, (frame * height + y) * rowBytes);
    }
  }
  return raw;
}

async function encodeVariant(spec: ImageSpec, seed: number): Promise<Buffer> {
  const {width, height} = spec;
  if (spec.format === 'gif') {
    const raw = gifFrames(width, height, spec.frames, seed);
    return sharp(raw, {raw: {width, height: height * spec.frames, channels: 3, pageHeight: height}})
      .gif({
        effort: 1,
        dither: 0,
        colours: 16,
        loop: 0,
        delay: Array<number>(spec.frames).fill(DEFAULT_FRAME_DURATION_MS),
      })
      .toBuffer();
  }
  let image =
    spec.detail === 'coarse'
      ? sharp({
          create: {
            width: Math.ceil(width / COARSE_BLOCK),
            height: Math.ceil(height / COARSE_BLOCK),
            channels: 3,
            background: {r: 128, g: 128, b: 128},
            noise: {type: 'gaussian', mean: 128, sigma: 48},
          },
        }).resize(width, height, {kernel: 'nearest', fit: 'fill'})
      : sharp({
          create: {
            width,
            height,
            channels: 3,
            background: {r: 128, g: 128, b: 128},
            noise: {type: 'gaussian', mean: 128, sigma: NOISE_SIGMA},
          },
        });
  if (spec.alpha) {
    // Materialise the resize first: joinChannel needs the final dimensions.
    if (spec.detail === 'coarse')
      image = sharp(await image.raw().toBuffer(), {raw: {width, height, channels: 3}});
    image = image.joinChannel(ellipseAlphaMask(width, height), {raw: {width, height, channels: 1}});
  }
  const quality = Math.min(100, Math.max(1, spec.quality));
  switch (spec.format) {
    case 'png':
      return image.png().toBuffer();
    case 'jpeg':
      return image.jpeg({quality}).toBuffer();
    case 'webp':
      return image.webp({quality, alphaQuality: 100, effort: 0}).toBuffer();
  }
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

/** Offset just past a run of GIF data sub-blocks (ending with the empty block). */
function skipGifSubBlocks(gif: Buffer, offset: number): number {
  let at = offset;
  while (at < gif.length) {
    const size = gif[at] ?? 0;
    at += 1 + size;
    if (size === 0) return at;
  }
  throw new Error('fake-openai: truncated GIF');
}

/**
 * Sets every frame's delay (GIF stores hundredths of a second: the requested
 * milliseconds round to the nearest 10 and cap at 655,350) and inserts a
 * comment extension carrying the id after the global colour table.
 */
function stampGif(gif: Buffer, id: string, frameDurationMs: number): Buffer {
  if (gif.toString('latin1', 0, 6) !== 'GIF89a') throw new Error('fake-openai: not a GIF89a');
  const out = Buffer.from(gif);
  const packed = out[10] ?? 0;
  const tablesEnd = 13 + (packed & 0x80 ? 3 * 2 ** ((packed & 7) + 1) : 0);
  const delay = Math.min(0xffff, Math.round(frameDurationMs / 10));
  let offset = tablesEnd;
  while (offset < out.length) {
    const block = out[offset];
    if (block === 0x3b) break;
    if (block === 0x21) {
      if (out[offset + 1] === 0xf9) out.writeUInt16LE(delay, offset + 4);
      offset = skipGifSubBlocks(out, offset + 2);
    } else if (block === 0x2c) {
      const local = out[offset + 9] ?? 0;
      offset += 10 + (local & 0x80 ? 3 * 2 ** ((local & 7) + 1) : 0) + 1;
      offset = skipGifSubBlocks(out, offset);
    } else {
      throw new Error(`fake-openai: unexpected GIF block 0x${(block ?? 0).toString(16)}`);
    }
  }
  const text = Buffer.from(`fake-openai ${id}`, 'latin1');
  const comment = Buffer.concat([Buffer.from([0x21, 0xfe, text.length]), text, Buffer.from([0])]);
  return Buffer.concat([out.subarray(0, tablesEnd), comment, out.subarray(tablesEnd)]);
}

function stamp(base: Buffer, spec: ImageSpec, id: string, frameDurationMs: number): Buffer {
  switch (spec.format) {
    case 'png':
      return stampPng(base, id);
    case 'jpeg':
      return stampJpeg(base, id);
    case 'webp':
      return stampWebp(base, id, spec.width, spec.height, spec.alpha);
    case 'gif':
      return stampGif(base, id, frameDurationMs);
  }
}

/** A small SVG document of the requested size, unique by its shapes and comment. */
function makeSvg(job: ImageJob, id: string): Buffer {
  const {width, height} = job;
  const random = randomBytes(24);
  const shapes: string[] = [];
  for (let i = 0; i < 6; i++) {
    const cx = Math.round(((random[i * 4] ?? 0) / 255) * width);
    const cy = Math.round(((random[i * 4 + 1] ?? 0) / 255) * height);
    const r = Math.round(((random[i * 4 + 2] ?? 0) / 255) * Math.min(width, height) * 0.3) + 8;
    const hue = Math.round(((random[i * 4 + 3] ?? 0) / 255) * 360);
    shapes.push(`  <circle cx="${cx}" cy="${cy}" r="${r}" fill="hsl(${hue},70%,55%)"/>`);
  }
  const backdrop =
    job.background === 'transparent' ? [] : ['  <rect width="100%" height="100%" fill="#f4f1ea"/>'];
  return Buffer.from(
    [
      '<?xml version="1.0" encoding="UTF-8"?>',
      `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
      `  <!-- fake-openai ${id} -->`,
      ...backdrop,
      ...shapes,
      '</svg>',
      '',
    ].join('\n'),
    'utf8',
  );
}

function nextImageId(): string {
  stampCounter += 1;
  return `${processNonce}${stampCounter.toString(36).padStart(6, '0')}`;
}

function specFor(job: ImageJob, detail: 'full' | 'coarse'): ImageSpec {
  if (job.outputFormat === 'svg') throw new Error('fake-openai: SVG has no raster spec');
  return {
    width: job.width,
    height: job.height,
    format: job.outputFormat,
    alpha: job.background === 'transparent',
    quality: job.compression,
    frames: job.frameCount,
    detail,
  };
}

/** A unique, finished image for the job: a stamped pooled variant, or a fresh SVG. */
async function makeImage(job: ImageJob, detail: 'full' | 'coarse', variant: number): Promise<Buffer> {
  const id = `img-${nextImageId()}`;
  if (job.outputFormat === 'svg') return makeSvg(job, id);
  const spec = specFor(job, detail);
  return stamp(await getVariant(spec, variant), spec, id, job.frameDurationMs);
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

const ROUTES: Readonly<Record<string, Endpoint>> = {
  '/v1/images/generations': 'generations',
  '/v1/images/edits': 'edits',
};
const BASE64_SLICE_BYTES = 3 * 512 * 1024;
/** Least time between the last event sent and a stream_reset. */
const RESET_GRACE_MS = 100;

type FaultEntry = {fault: FakeFault; remaining: number} | {fault: FakeFault; probability: number};

/** A request body read off the wire: the parsed value, or the error to answer with. */
type ReadBody = {ok: true; value: unknown; files: readonly UploadedFile[]} | {ok: false; error: ApiError};

const yieldToEventLoop = () => new Promise<void>(resolve => setImmediate(resolve));
const now = () => performance.timeOrigin + performance.now();
const unixSeconds = () => Math.floor(Date.now() / 1000);

class FakeOpenAIServer implements FakeOpenAI {
  readonly requests: RecordedRequest[] = [];
  private readonly server: Server;
  private destroyConnections: () => void = () => undefined;
  private readonly sleepers = new Set<{timer: NodeJS.Timeout; resolve: () => void}>();
  private readonly options: FakeOpenAIOptions;
  private readonly apiKey: string;
  private readonly organization: string | undefined;
  private latency = 0;
  private partialInterval: number | null = null;
  private fixedToday: string | null = null;
  private models = new Map<string, string | null>();
  private previews: Required<PreviewAccess> = {gif: true, svg: true};
  private faults: FaultEntry[] = [];
  private origin = '';
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(options: FakeOpenAIOptions) {
    this.options = options;
    this.apiKey = options.apiKey ?? 'sk-test-key';
    this.organization = options.organization;
    this.restoreOptions();
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
    this.latency = checkDuration('latency', ms);
  }

  setPartialInterval(ms: number | null): void {
    this.partialInterval = ms === null ? null : checkDuration('partial interval', ms);
  }

  setToday(date: string | null): void {
    this.fixedToday = date === null ? null : checkIsoDate(date);
  }

  addModel(id: string, shutdownDate: string | null = null): void {
    if (id.length === 0) throw new RangeError('addModel: empty model id');
    this.models.set(id, shutdownDate === null ? null : checkIsoDate(shutdownDate));
  }

  retireModel(id: string, date: string): void {
    if (!this.models.has(id)) throw new RangeError(`retireModel: unknown model '${id}'`);
    this.models.set(id, checkIsoDate(date));
  }

  setPreviewAccess(access: PreviewAccess): void {
    this.previews = {...this.previews, ...definedOnly(access)};
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
    this.restoreOptions();
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

  private restoreOptions(): void {
    const o = this.options;
    this.latency = checkDuration('latency', o.latencyMs ?? 0);
    this.partialInterval =
      o.partialIntervalMs === undefined ? null : checkDuration('partial interval', o.partialIntervalMs);
    this.fixedToday = o.today === undefined ? null : checkIsoDate(o.today);
    this.models = new Map(MODEL_LIFECYCLE);
    for (const [id, shutdown] of Object.entries(o.extraModels ?? {})) this.addModel(id, shutdown);
    this.previews = {gif: true, svg: true, ...definedOnly(o.previews ?? {})};
  }

  private context(): ModelContext {
    return {
      today: this.fixedToday ?? new Date().toISOString().slice(0, 10),
      models: this.models,
      previews: this.previews,
    };
  }

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
    const record: RecordedRequest = {
      method,
      path,
      headers: {...req.headers},
      bodyKind: 'none',
      body: null,
      receivedAt: now(),
    };
    this.requests.push(record);

    const endpoint = method === 'POST' ? ROUTES[path] : undefined;
    if (!endpoint) {
      req.resume();
      this.sendError(
        res,
        new ApiError(404, {
          message: `Invalid URL (${method} ${path})`,
          type: 'invalid_request_error',
          param: null,
          code: null,
        }),
        record,
      );
      return;
    }

    // Decide auth and the fault at arrival so concurrent requests consume faults in arrival order.
    const authError = this.checkAuth(req);
    const fault = authError ? undefined : this.takeFault();
    const latency = this.latency;
    const interval = this.partialInterval;
    const read = endpoint === 'edits' ? await readMultipart(req, record) : await readJson(req, record);
    if (this.closed) return;
    const requestId = String(res.getHeader('x-request-id'));
    const answerError = async (error: ApiError) => {
      await this.sleep(latency);
      this.sendError(res, error, record);
    };

    if (authError) return answerError(authError);
    const loose = read.ok && isPlainObject(read.value) ? read.value : {};
    const looseStream = loose.stream === true || loose.stream === 'true';
    if (
      fault &&
      fault.kind !== 'stream_error' &&
      fault.kind !== 'stream_reset' &&
      fault.kind !== 'odd_answer'
    ) {
      await this.sleep(latency);
      if (this.closed) return;
      switch (fault.kind) {
        case 'rate_limit':
          return this.sendError(res, rateLimitError(fault.retryAfterSeconds ?? 1), record);
        case 'server_error':
          return this.sendError(res, serverError(fault.status ?? 500), record);
        case 'content_policy':
          return this.sendError(res, contentPolicyError(requestId), record);
        case 'echo_secrets':
          return this.sendError(
            res,
            echoSecretsError(
              fault.status ?? 502,
              String(req.headers.authorization ?? ''),
              String(loose.prompt ?? ''),
            ),
            record,
          );
        case 'api_error':
          return this.sendError(
            res,
            new ApiError(fault.status, {
              message: fault.message,
              type: fault.type ?? 'invalid_request_error',
              param: fault.param ?? null,
              code: fault.code ?? null,
            }),
            record,
          );
        case 'connection_reset':
          req.socket.resetAndDestroy();
          return;
        case 'hang':
          return; // The socket stays open until close().
        case 'malformed':
          return this.sendMalformed(res, record, looseStream, endpoint);
      }
    }
    if (!read.ok) return answerError(read.error);

    let job: ImageJob;
    try {
      job = validateImageRequest(endpoint, read.value, this.context());
      if (endpoint === 'edits') job.inputs = await checkEditInputs(read.files, job);
      if (job.prompt.includes(SAFETY_MARKER)) throw contentPolicyError(requestId);
    } catch (error) {
      if (error instanceof ApiError) return answerError(error);
      throw error;
    }

    if (job.stream) {
      await this.stream(res, record, job, latency, interval, fault);
      return;
    }
    if (fault?.kind === 'stream_error') return answerError(serverError(500));
    // Make the images while the latency runs, so it is not added on top.
    const odd = fault?.kind === 'odd_answer' ? fault : undefined;
    const [pieces] = await Promise.all([this.buildJsonAnswer(job, odd), this.sleep(latency)]);
    if (this.closed) return;
    const headers = {
      'content-type': 'application/json',
      'openai-processing-ms': String(Date.now() - started),
    };
    await this.sendPieces(res, record, pieces, headers, fault?.kind === 'stream_reset');
  }

  /**
   * Builds a non-streamed success body as JSON text pieces. The (large) base64
   * strings are spliced in verbatim instead of going through one giant
   * JSON.stringify, so no single step holds the event loop for long.
   */
  private async buildJsonAnswer(
    job: ImageJob,
    odd?: Extract<FakeFault, {kind: 'odd_answer'}>,
  ): Promise<string[]> {
    const first = variantCounter;
    variantCounter += job.n;
    const images = await Promise.all(
      Array.from({length: job.n}, (_, i) => makeImage(job, 'full', first + i)),
    );
    const head = {
      created: unixSeconds(),
      background: job.background,
      output_format: job.outputFormat,
      quality: job.quality,
      size: `${job.width}x${job.height}`,
      safety_identifier: job.safetyIdentifier,
    } satisfies Omit<ImagesResponse, 'data' | 'usage' | 'svg_usage'>;
    const tail: Pick<ImagesResponse, 'usage' | 'svg_usage'> = {
      usage: usageFor(job, job.n, this.options.includeOutputTokensDetails === true),
    };
    if (job.outputFormat === 'svg') tail.svg_usage = svgUsageFor(job, images[0]?.length ?? 0);
    if (odd?.usage) Object.assign(tail.usage!, odd.usage);
    const revised =
      odd?.revisedPrompt === undefined ? '' : `,"revised_prompt":${JSON.stringify(odd.revisedPrompt)}`;
    const pieces: string[] = [`${JSON.stringify(head).slice(0, -1)},"data":[`];
    for (const [i, bytes] of images.entries()) {
      if (this.closed) break;
      pieces.push(`${i === 0 ? '' : ','}{"b64_json":"`);
      for await (const slice of base64Slices(bytes)) pieces.push(slice);
      pieces.push(`"${revised}}`);
    }
    pieces.push(`],${JSON.stringify(tail).slice(1)}`);
    return pieces;
  }

  /**
   * Answers as server-sent events: for each image, its partial images and then
   * its completed event. The latency is spread over the events: with an
   * interval set, events are that far apart and the first comes after what
   * remains of the latency; without, the latency is split evenly.
   */
  private async stream(
    res: ServerResponse,
    record: RecordedRequest,
    job: ImageJob,
    latency: number,
    interval: number | null,
    fault: FakeFault | undefined,
  ): Promise<void> {
    const eventsPerImage = job.partialImages + 1;
    const events = job.n * eventsPerImage;
    const spacing = interval ?? latency / events;
    const firstAt = interval === null ? spacing : Math.max(0, latency - (events - 1) * interval);
    const prefix = job.endpoint === 'generations' ? 'image_generation' : 'image_edit';
    const first = variantCounter;
    variantCounter += job.n;
    // Start encoding at once; each event waits only for its own image.
    const finals = Array.from({length: job.n}, (_, i) => makeImage(job, 'full', first + i));
    const partials = Array.from({length: job.n}, () =>
      Array.from({length: job.partialImages}, (_, p) => makeImage(job, 'coarse', p)),
    );
    for (const promise of [...finals, ...partials.flat()]) promise.catch(() => undefined);

    if (
      !this.writeHead(res, record, 200, undefined, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
      })
    )
      return;
    res.flushHeaders();
    const start = performance.now();
    const waitForEvent = (index: number) => this.sleep(start + firstAt + index * spacing - performance.now());
    // The stream faults strike right after the first partial image (or first thing, without partials).
    const streamFault = fault?.kind === 'stream_error' || fault?.kind === 'stream_reset' ? fault : undefined;

    let index = 0;
    for (let image = 0; image < job.n; image++) {
      for (let p = 0; p < job.partialImages; p++) {
        await waitForEvent(index++);
        const bytes = await partials[image]?.[p];
        if (this.closed || res.destroyed || !bytes) return;
        const event = {
          type: `${prefix}.partial_image`,
          background: job.requestedBackground,
          created_at: unixSeconds(),
          output_format: job.outputFormat as 'png' | 'webp' | 'jpeg',
          partial_image_index: p,
          quality: job.requestedQuality as ImageGenPartialImageEvent['quality'],
          size: `${job.width}x${job.height}`,
        } satisfies Omit<ImageGenPartialImageEvent | ImageEditPartialImageEvent, 'b64_json'>;
        await this.writeEvent(res, event.type, event, bytes);
        record.firstPartialAt ??= now();
        if (streamFault) return this.failStream(res, streamFault, index, waitForEvent);
      }
      if (streamFault) return this.failStream(res, streamFault, index, waitForEvent);
      await waitForEvent(index++);
      const bytes = await finals[image];
      if (this.closed || res.destroyed || !bytes) return;
      const event = {
        type: `${prefix}.completed`,
        background: job.requestedBackground,
        created_at: unixSeconds(),
        output_format: job.outputFormat as 'png' | 'webp' | 'jpeg',
        quality: job.requestedQuality as ImageGenCompletedEvent['quality'],
        size: `${job.width}x${job.height}`,
        usage: usageFor(job, 1, false),
        safety_identifier: job.safetyIdentifier,
      } satisfies Omit<ImageGenCompletedEvent | ImageEditCompletedEvent, 'b64_json'>;
      await this.writeEvent(res, event.type, event, bytes);
      record.completedAt = now();
    }
    res.end();
  }

  private async failStream(
    res: ServerResponse,
    fault: FakeFault,
    index: number,
    waitForEvent: (index: number) => Promise<void>,
  ): Promise<void> {
    if (fault.kind === 'stream_reset') {
      // A reset discards what the client has not read yet: give it time to read the partial first.
      await Promise.all([waitForEvent(index), this.sleep(RESET_GRACE_MS)]);
      if (!this.closed && !res.destroyed) res.socket?.resetAndDestroy();
      return;
    }
    await waitForEvent(index);
    if (this.closed || res.destroyed) return;
    const message =
      fault.kind === 'stream_error' && fault.message !== undefined
        ? fault.message
        : 'The server had an error while processing your request. Sorry about that!';
    const error = {type: 'error', error: {type: 'server_error', code: 'server_error', message, param: null}};
    await writePieces(res, [`event: error\ndata: ${JSON.stringify(error)}\n\n`]);
    res.end();
  }

  /** One SSE event whose data is `{"type", "b64_json", ...rest}`, the base64 written in slices. */
  private async writeEvent(
    res: ServerResponse,
    name: string,
    fields: {type: string},
    bytes: Buffer,
  ): Promise<void> {
    const {type, ...rest} = fields;
    await writePieces(res, [`event: ${name}\ndata: {"type":${JSON.stringify(type)},"b64_json":"`]);
    for await (const slice of base64Slices(bytes)) {
      if (this.closed || res.destroyed) return;
      await writePieces(res, [slice]);
    }
    await writePieces(res, [`",${JSON.stringify(rest).slice(1)}\n\n`]);
  }

  private sendMalformed(
    res: ServerResponse,
    record: RecordedRequest,
    stream: boolean,
    endpoint: Endpoint,
  ): void {
    if (stream) {
      const type = endpoint === 'generations' ? 'image_generation.completed' : 'image_edit.completed';
      if (!this.writeHead(res, record, 200, undefined, {'content-type': 'text/event-stream; charset=utf-8'}))
        return;
      res.end(`event: ${type}\ndata: {"type":"${type}","b64_json":"iVBORw0KGgoAAAANSUhEUgAA\n\n`);
      return;
    }
    this.send(
      res,
      record,
      200,
      Buffer.from('{"created": 1700000000, "data": [{"b64_json": "iVBORw0KGgoAAAANSUhEUgAA'),
      {
        'content-type': 'application/json',
      },
    );
  }

  private writeHead(
    res: ServerResponse,
    record: RecordedRequest,
    status: number,
    length: number | undefined,
    headers: Record<string, string>,
  ): boolean {
    if (this.closed || res.destroyed || res.headersSent) return false;
    res.writeHead(status, {
      'openai-version': '2020-10-01',
      ...(this.organization !== undefined ? {'openai-organization': this.organization} : {}),
      ...headers,
      ...(length === undefined ? {} : {'content-length': String(length)}),
    });
    record.status = status;
    return true;
  }

  private send(
    res: ServerResponse,
    record: RecordedRequest,
    status: number,
    body: Buffer,
    headers: Record<string, string>,
  ): void {
    if (this.writeHead(res, record, status, body.length, headers)) res.end(body);
  }

  /** Writes a JSON answer given as text pieces, honouring backpressure; `resetMidway` cuts it short. */
  private async sendPieces(
    res: ServerResponse,
    record: RecordedRequest,
    pieces: string[],
    headers: Record<string, string>,
    resetMidway = false,
  ): Promise<void> {
    const length = pieces.reduce((sum, piece) => sum + Buffer.byteLength(piece, 'utf8'), 0);
    if (!this.writeHead(res, record, 200, length, headers)) return;
    if (resetMidway) {
      await writePieces(res, pieces.slice(0, Math.max(1, Math.floor(pieces.length / 2))));
      res.socket?.resetAndDestroy();
      return;
    }
    if (!(await writePieces(res, pieces))) return;
    res.end();
    record.completedAt = now();
  }

  private sendError(res: ServerResponse, error: ApiError, record?: RecordedRequest): void {
    const body = Buffer.from(JSON.stringify({error: error.body}), 'utf8');
    const headers = {'content-type': 'application/json', ...error.headers};
    if (record) this.send(res, record, error.status, body, headers);
    else if (!this.closed && !res.destroyed && !res.headersSent) {
      res.writeHead(error.status, {...headers, 'content-length': String(body.length)});
      res.end(body);
    }
  }
}

/** Writes pieces in order, waiting for 'drain' when the socket is full; false if the response went away. */
async function writePieces(res: ServerResponse, pieces: readonly string[]): Promise<boolean> {
  for (const piece of pieces) {
    if (res.destroyed) return false;
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
  return !res.destroyed;
}

/** Base64 in slices of a multiple of 3 bytes (so they concatenate), yielding in between. */
async function* base64Slices(bytes: Buffer): AsyncGenerator<string> {
  for (let offset = 0; offset < bytes.length; offset += BASE64_SLICE_BYTES) {
    yield bytes.toString('base64', offset, Math.min(bytes.length, offset + BASE64_SLICE_BYTES));
    if (offset + BASE64_SLICE_BYTES < bytes.length) await yieldToEventLoop();
  }
}

function checkDuration(what: string, ms: number): number {
  if (!Number.isFinite(ms) || ms < 0)
    throw new RangeError(`${what} must be a non-negative number of ms, got ${ms}`);
  return ms;
}

function definedOnly(access: PreviewAccess): PreviewAccess {
  return Object.fromEntries(Object.entries(access).filter(([, value]) => value !== undefined));
}

const UNPARSABLE_JSON =
  "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP " +
  'library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you ' +
  'have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)';

function tooLarge(limit: number): ApiError {
  return new ApiError(413, {
    message: `Request body too large; the maximum is ${limit} bytes.`,
    type: 'invalid_request_error',
    param: null,
    code: null,
  });
}

/** Reads and parses a JSON body, recording it. */
function readJson(req: IncomingMessage, record: RecordedRequest): Promise<ReadBody> {
  return new Promise(resolve => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      if (size > MAX_JSON_BYTES) return resolve({ok: false, error: tooLarge(MAX_JSON_BYTES)});
      try {
        const value: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        record.body = value;
        record.bodyKind = 'json';
        resolve({ok: true, value, files: []});
      } catch {
        resolve({ok: false, error: invalidRequest(UNPARSABLE_JSON, null, null)});
      }
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_JSON_BYTES) chunks.push(chunk);
    });
    req.on('end', finish);
    req.on('error', finish);
    req.on('close', finish);
  });
}

/** Parses a multipart body as a stream with busboy, recording text fields and a summary of each file. */
function readMultipart(req: IncomingMessage, record: RecordedRequest): Promise<ReadBody> {
  const contentType = req.headers['content-type'] ?? '';
  const refuse = (error: ApiError): Promise<ReadBody> => {
    req.resume();
    return new Promise(resolve => {
      const done = () => resolve({ok: false, error});
      req.once('end', done);
      req.once('close', done);
    });
  };
  if (!/^multipart\/form-data\b/i.test(contentType)) {
    return refuse(
      invalidRequest(
        `Invalid Content-Type header (${contentType || 'none'}), expected multipart/form-data.`,
        null,
        null,
      ),
    );
  }
  let parser: busboy.Busboy;
  try {
    parser = busboy({headers: req.headers, limits: MULTIPART_LIMITS});
  } catch (error) {
    return refuse(invalidRequest(`Could not parse the multipart body: ${String(error)}`, null, null));
  }
  const recorded: RecordedMultipartBody = {fields: {}, files: []};
  record.body = recorded;
  record.bodyKind = 'multipart';
  const fields: Array<{name: string; value: string; truncated: boolean}> = [];
  const fileSlots: Array<UploadedFile | undefined> = [];
  const fileDone: Array<Promise<void>> = [];
  let total = 0;
  let overflow: string | undefined;

  parser.on('field', (name, value, info) => {
    total += Buffer.byteLength(value);
    fields.push({name, value, truncated: info.valueTruncated || info.nameTruncated});
    recorded.fields[name] = value;
  });
  parser.on('file', (name, stream, info) => {
    // Each part keeps its arrival slot: the first image is the one a mask or markup must match.
    const slot = fileSlots.length;
    fileSlots.push(undefined);
    const summary: RecordedFilePart = {
      field: name,
      filename: info.filename,
      contentType: info.mimeType,
      bytes: 0,
      sha256: '',
    };
    recorded.files.push(summary);
    const hash = createHash('sha256');
    const chunks: Buffer[] = [];
    let head = Buffer.alloc(0);
    let kept = true;
    fileDone.push(
      new Promise<void>(resolve => {
        stream.on('data', (chunk: Buffer) => {
          hash.update(chunk);
          summary.bytes += chunk.length;
          total += chunk.length;
          if (head.length < SNIFF_BYTES) {
            head = Buffer.concat([head, chunk.subarray(0, SNIFF_BYTES - head.length)]);
          }
          // Beyond what any rule accepts, only the head is needed (to judge the format).
          if (kept && (summary.bytes > MAX_IMAGE_BYTES || total > MAX_MULTIPART_BYTES)) {
            kept = false;
            chunks.length = 0;
          }
          if (kept) chunks.push(chunk);
        });
        stream.on('close', resolve);
        stream.on('end', () => {
          summary.sha256 = hash.digest('hex');
          fileSlots[slot] = {
            ...summary,
            name: name.replace(/\[\]$/, ''),
            head,
            data: kept ? Buffer.concat(chunks) : undefined,
          };
          resolve();
        });
      }),
    );
  });
  for (const limit of ['partsLimit', 'filesLimit', 'fieldsLimit'] as const) {
    parser.on(limit, () => (overflow ??= limit));
  }
  return new Promise(resolve => {
    let settled = false;
    const finish = (error?: ApiError) => {
      if (settled) return;
      settled = true;
      void Promise.all(fileDone).then(() => {
        if (error) return resolve({ok: false, error});
        if (overflow) {
          return resolve({
            ok: false,
            error: invalidRequest(`Too many parts in the multipart body (${overflow}).`, null, null),
          });
        }
        if (total > MAX_MULTIPART_BYTES) return resolve({ok: false, error: tooLarge(MAX_MULTIPART_BYTES)});
        try {
          const files = fileSlots.filter((file): file is UploadedFile => file !== undefined);
          const form = assembleForm(fields, files);
          resolve({ok: true, value: form.body, files: form.files});
        } catch (caught) {
          if (caught instanceof ApiError) resolve({ok: false, error: caught});
          else throw caught;
        }
      });
    };
    parser.on('close', () => finish());
    parser.on('error', (error: unknown) => {
      req.unpipe(parser);
      req.resume();
      finish(invalidRequest(`Could not parse the multipart body: ${String(error)}`, null, null));
    });
    const cutShort = () => finish(invalidRequest('The request body was cut short.', null, null));
    req.on('error', cutShort);
    req.on('close', () => {
      if (!req.complete) cutShort();
    });
    req.pipe(parser);
  });
}
