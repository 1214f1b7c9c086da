import {createHash, type Hash} from 'node:crypto';
import type {ImagesResponse} from 'openai/resources/images';
import type {Usage} from '../../core/records';

/** One image decoded from the response, with its sha256 computed on the way. */
export interface DecodedImage {
  data: Buffer;
  sha256: string;
}

export interface ParsedImagesResponse {
  /** The JSON with every b64_json value emptied, parsed. */
  body: {data?: {b64_json?: unknown; revised_prompt?: unknown}[]; usage?: unknown; svg_usage?: unknown};
  /** The b64_json values in order, decoded. */
  images: DecodedImage[];
  /**
   * Hands the images' memory back to the pool it came from. Call it once
   * nothing reads `images` any more: their bytes are then overwritten by
   * the next answer.
   */
  release(): void;
}

/**
 * Decode buffers kept for reuse. Each answer needs a few megabytes for as
 * long as its images are being stored; allocating them afresh leaves dead
 * buffers for V8 to find (it collects them only when external memory
 * pressure builds up, about a hundred megabytes later) and pays the page
 * faults of new memory every time. Reads are bounded per instance, so the
 * pool stays as small as the number of answers read at once.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private freeBytes = 0;

  constructor(
    private readonly maxBuffers = 8,
    private readonly maxBytes = 64 * 1024 * 1024,
  ) {}

  /** The smallest free buffer of at least `size` bytes, or a new one. */
  take(size: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const length = this.free[i]!.length;
      if (length >= size && (best === -1 || length < this.free[best]!.length)) best = i;
    }
    if (best === -1) return Buffer.allocUnsafe(size);
    const [buffer] = this.free.splice(best, 1);
    this.freeBytes -= buffer!.length;
    return buffer!;
  }

  give(buffer: Buffer): void {
    if (this.free.length >= this.maxBuffers || this.freeBytes + buffer.length > this.maxBytes) return;
    this.free.push(buffer);
    this.freeBytes += buffer.length;
  }

  get size(): number {
    return this.free.length;
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const KEY = Buffer.from('b64_json');

/**
 * One buffer for all the images of a response, sized from Content-Length when
 * known: base64 is decoded straight into it, so there is no per-chunk buffer
 * and no final copy, and far less for the garbage collector to do.
 */
class Arena {
  buffer: Buffer;
  used = 0;
  /** Every buffer this arena has used: images may point into any of them. */
  private readonly owned: Buffer[] = [];

  constructor(
    sizeHint: number,
    private readonly pool: BufferPool | undefined,
  ) {
    // The hint only sizes the first allocation; a wrong one costs a copy, never correctness.
    this.buffer = this.allocate(Math.min(Math.max(64 * 1024, sizeHint), 64 * 1024 * 1024));
  }

  /** Makes room for `bytes` more; earlier images keep pointing at the old buffer. */
  reserve(bytes: number): void {
    if (this.used + bytes <= this.buffer.length) return;
    const grown = this.allocate(Math.max(this.buffer.length * 2, this.used + bytes));
    this.buffer.copy(grown, 0, 0, this.used);
    this.buffer = grown;
  }

  release(): void {
    for (const buffer of this.owned.splice(0)) this.pool?.give(buffer);
  }

  private allocate(size: number): Buffer {
    const buffer = this.pool ? this.pool.take(size) : Buffer.allocUnsafe(size);
    this.owned.push(buffer);
    return buffer;
  }
}

class ImageDecoder {
  private readonly sha256: Hash = createHash('sha256');
  private readonly start: number;
  private carry = '';

  constructor(private readonly arena: Arena) {
    this.start = arena.used;
  }

  /** Base64 text, possibly cut anywhere; only whole 4-character groups are decoded now. */
  write(text: string): void {
    const all = this.carry === '' ? text : this.carry + text;
    const whole = all.length - (all.length % 4);
    this.carry = all.slice(whole);
    if (whole > 0) this.decode(whole === all.length ? all : all.slice(0, whole));
  }

  end(): DecodedImage {
    if (this.carry.length > 0) this.decode(this.carry);
    // A fresh view: a later reserve() may move the arena, never this image.
    const data = this.arena.buffer.subarray(this.start, this.arena.used);
    return {data, sha256: this.sha256.digest('hex')};
  }

  private decode(base64: string): void {
    const arena = this.arena;
    arena.reserve(Math.ceil(base64.length / 4) * 3);
    const written = arena.buffer.write(base64, arena.used, 'base64');
    this.sha256.update(arena.buffer.subarray(arena.used, arena.used + written));
    arena.used += written;
  }
}

/**
 * JSON that carries images as b64_json strings, fed in pieces as it arrives:
 * the strings are decoded chunk by chunk into image bytes and hashed on the
 * way; only the small rest of the JSON is kept as text and parsed at the end.
 * The images live in one arena until `release()`.
 */
export class JsonImagesDecoder {
  private readonly arena: Arena;
  private readonly skeleton: number[] = [];
  private readonly images: DecodedImage[] = [];
  private decoder: ImageDecoder | undefined;
  // Outside image data: where we are in the JSON text.
  private inString = false;
  private escaped = false;
  private stringStart = -1;
  private afterKey: 'no' | 'key' | 'colon' = 'no';

  /** `sizeHint`: the image bytes to expect, if known (it only sizes the first buffer). */
  constructor(sizeHint: number, pool?: BufferPool) {
    this.arena = new Arena(sizeHint, pool);
  }

  write(chunk: Buffer): void {
    const skeleton = this.skeleton;
    let i = 0;
    while (i < chunk.length) {
      if (this.decoder) {
        const end = chunk.indexOf(QUOTE, i);
        const stop = end === -1 ? chunk.length : end;
        let text = chunk.toString('latin1', i, stop);
        // JSON may escape '/' as '\/' (the backslash may end one chunk and the slash begin
        // the next); base64 has no other character that needs escaping, so drop backslashes.
        if (text.includes('\\')) text = text.replaceAll('\\', '');
        this.decoder.write(text);
        if (end === -1) break;
        this.images.push(this.decoder.end());
        this.decoder = undefined;
        skeleton.push(QUOTE);
        this.inString = false;
        i = end + 1;
        continue;
      }
      const byte = chunk[i]!;
      skeleton.push(byte);
      i++;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (byte === BACKSLASH) this.escaped = true;
        else if (byte === QUOTE) {
          this.inString = false;
          const content = skeleton.slice(this.stringStart, skeleton.length - 1);
          this.afterKey = content.length === KEY.length && KEY.equals(Buffer.from(content)) ? 'key' : 'no';
        }
        continue;
      }
      if (byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09) continue;
      if (byte === QUOTE) {
        if (this.afterKey === 'colon') {
          this.decoder = new ImageDecoder(this.arena);
          this.afterKey = 'no';
          continue;
        }
        this.inString = true;
        this.stringStart = skeleton.length;
        this.afterKey = 'no';
        continue;
      }
      this.afterKey = this.afterKey === 'key' && byte === 0x3a /* : */ ? 'colon' : 'no';
    }
  }

  /** The JSON with every b64_json value emptied, parsed, and the images in order. */
  end(): {body: unknown; images: DecodedImage[]} {
    if (this.decoder || this.inString) throw new Error('the JSON ended inside a string');
    return {body: JSON.parse(Buffer.from(this.skeleton).toString('utf8')), images: this.images};
  }

  /** Hands the images' memory back to the pool (see ParsedImagesResponse.release). */
  release(): void {
    this.arena.release();
  }
}

/**
 * Reads an Images API response body as it arrives (see JsonImagesDecoder).
 * The whole answer never exists as one string, which for a few 1536x1024
 * images would be tens of megabytes of string and garbage per call.
 */
export async function parseImagesResponse(
  body: AsyncIterable<Uint8Array>,
  contentLength?: number,
  pool?: BufferPool,
): Promise<ParsedImagesResponse> {
  // Base64 is 4 characters for 3 bytes: the body's length bounds the images' size.
  const decoder = new JsonImagesDecoder(
    contentLength && Number.isFinite(contentLength) ? Math.ceil(contentLength * 0.75) : 0,
    pool,
  );
  try {
    for await (const raw of body) decoder.write(asBuffer(raw));
    const {body: parsed, images} = decoder.end();
    return {body: parsed as ParsedImagesResponse['body'], images, release: () => decoder.release()};
  } catch (error) {
    decoder.release();
    throw error;
  }
}

/** A chunk as a Buffer over the same memory. */
export function asBuffer(raw: Uint8Array): Buffer {
  return Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
}

/**
 * The fields of a usage object the SDK types list, each marked by what it
 * holds: a count, a short text, or an object of its own. Typed from the SDK:
 * a field it adds or drops fails to compile here.
 */
type UsageShape<T> = {
  [K in keyof T]-?: NonNullable<T[K]> extends number
    ? 'count'
    : NonNullable<T[K]> extends string
      ? 'text'
      : UsageShape<NonNullable<T[K]>>;
};

const USAGE: UsageShape<ImagesResponse.Usage> = {
  input_tokens: 'count',
  input_tokens_details: {image_tokens: 'count', text_tokens: 'count'},
  output_tokens: 'count',
  total_tokens: 'count',
  output_tokens_details: {image_tokens: 'count', text_tokens: 'count'},
};

const SVG_USAGE: UsageShape<ImagesResponse.SvgUsage> = {
  input_tokens: 'count',
  model: 'text',
  output_tokens: 'count',
  reasoning_tokens: 'count',
  total_tokens: 'count',
};

/** A short text (a model id) is kept up to this length; a longer one is not a model id. */
const MAX_USAGE_TEXT = 100;

/** Only the fields `shape` lists, each of the kind it says; null when none is left. */
function pick(value: unknown, shape: UsageShape<object>): Record<string, unknown> | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const out: Record<string, unknown> = {};
  for (const [key, kind] of Object.entries(shape) as [string, unknown][]) {
    if (!Object.hasOwn(value, key)) continue;
    const item = (value as Record<string, unknown>)[key];
    if (kind === 'count') {
      if (typeof item === 'number' && Number.isFinite(item) && item >= 0) out[key] = item;
    } else if (kind === 'text') {
      if (typeof item === 'string' && item.length <= MAX_USAGE_TEXT) out[key] = item;
    } else {
      const nested = pick(item, kind as UsageShape<object>);
      if (nested) out[key] = nested;
    }
  }
  return Object.keys(out).length > 0 ? out : null;
}

/**
 * What is kept of an answer's token usage: the fields the SDK types list
 * (`usage`, and `svg_usage` for SVG output, under that name), nothing else.
 * What OpenAI sends is stored after it is paid for: a field the store refuses
 * (Firestore reserves names like `__x__`) would lose the images.
 */
export function usageOf(body: {usage?: unknown; svg_usage?: unknown}): Usage {
  const usage = pick(body.usage, USAGE);
  const svg = pick(body.svg_usage, SVG_USAGE);
  if (!svg) return usage;
  return {...usage, svg_usage: svg};
}

/** The longest revised prompt kept: OpenAI's prompt limit for GPT image models. */
export const MAX_REVISED_PROMPT_CHARS = 32_000;

/** An image's revised prompt, cut to a length a prompt can have; null if there is none. */
export function revisedPromptOf(value: unknown): string | null {
  if (typeof value !== 'string') return null;
  if (value.length <= MAX_REVISED_PROMPT_CHARS) return value;
  // Never half of a surrogate pair: the cut text stays valid UTF-16, and so encodes to UTF-8.
  const end = /[\uD800-\uDBFF]/.test(value[MAX_REVISED_PROMPT_CHARS - 1]!)
    ? MAX_REVISED_PROMPT_CHARS - 1
    : MAX_REVISED_PROMPT_CHARS;
  return value.slice(0, end);
}
