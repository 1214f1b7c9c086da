import {randomBytes} from 'node:crypto';
import {ImageBytesCollector, type DecodedBase64, type ImageBytes} from '../core/image-bytes';

/**
 * Reads JSON that carries images as base64 strings (`{"b64_json": "..."}`) as
 * it arrives: the strings at the paths asked for are decoded chunk by chunk
 * into ImageBytes (one Blob each, hashed on the way, as a multipart upload
 * is), and only the rest of the JSON, the "skeleton", is kept as bytes, to be
 * parsed as any JSON body is. No string of the base64 text is ever made whole.
 *
 * In the skeleton each decoded value is replaced by a token (random base64
 * text, valid where the value was), and the token maps to the bytes: the
 * schema that validates the body finds the bytes by it. Nothing else changes:
 *
 * - A value of at most `inlineBytes` bytes as sent is kept as it was, so a
 *   short or empty value is judged by the schema as before.
 * - Escapes (`\/`, `\u0041`) are read as JSON reads them.
 * - A value that turns out not to be base64 (a character outside the
 *   alphabet, padding inside, a control character, non-ASCII bytes) is kept
 *   as sent from that character on, after `!!!!` in place of what was already
 *   decoded: it is still not base64 for the schema, and the JSON and UTF-8
 *   after it are still checked by the parser.
 *
 * The scanner checks no grammar; it only finds strings, which a JSON lexer
 * finds the same way in any text, and which keys and containers they are in.
 * Replacing a string's content by other valid content keeps valid JSON valid
 * and invalid JSON invalid.
 */

export type JsonPath = readonly (string | number)[];

/** At least this much is kept inline: a longer value has 4 characters or more however it is escaped. */
const MIN_INLINE_BYTES = 24;
/** Keys longer than this (as sent) are no key a caller looks for. */
const MAX_KEY_BYTES = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const NOT_BASE64 = Buffer.from('!!!!');
const QUOTE_BYTE = Buffer.from('"');

interface Frame {
  array: boolean;
  /** In an object: the last key read; in an array: the index of the current item. */
  at: string | number | undefined;
  /** In an object: a ':' was read since the last key began. */
  afterColon: boolean;
}

/** Which base64 characters a byte is: 0 none, 1 the alphabet, 2 padding. */
const KIND = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') KIND[c.charCodeAt(0)] = 1;
KIND['='.charCodeAt(0)] = 2;

/** One base64 value being decoded. */
class Base64Value {
  readonly collector = new ImageBytesCollector();
  private carry = '';
  padding = 0;
  characters = 0;
  /** The value as sent, while it is at most `inlineBytes` long. */
  raw: Buffer[] | null = [];
  rawBytes = 0;
  /** An escape being read (a backslash and what follows, up to `\uXXXX`). */
  escape: number[] | null = null;

  constructor(private readonly inlineBytes: number) {}

  keepRaw(bytes: Buffer): void {
    this.rawBytes += bytes.length;
    if (this.raw === null) return;
    if (this.rawBytes > this.inlineBytes) this.raw = null;
    else this.raw.push(Buffer.from(bytes));
  }

  /** Adds one character; false when it makes the value not base64. */
  character(code: number): boolean {
    const kind = code < 256 ? KIND[code]! : 0;
    if (kind === 0 || (kind === 1 && this.padding > 0) || (kind === 2 && this.padding === 2)) return false;
    if (kind === 2) this.padding++;
    this.text(String.fromCharCode(code));
    return true;
  }

  /** Base64 characters known to be valid, possibly cut anywhere: only whole 4-character groups are decoded now. */
  text(text: string): void {
    this.characters += text.length;
    const all = this.carry === '' ? text : this.carry + text;
    const whole = all.length - (all.length % 4);
    this.carry = all.slice(whole);
    if (whole > 0)
      this.collector.add(Buffer.from(whole === all.length ? all : all.slice(0, whole), 'base64'));
  }

  finish(): ImageBytes {
    if (this.carry !== '') this.collector.add(Buffer.from(this.carry, 'base64'));
    return this.collector.finish();
  }
}

export class JsonBase64Scanner {
  private readonly skeleton: Buffer[] = [];
  private readonly images = new Map<string, ImageBytes>();
  private readonly stack: Frame[] = [];
  private readonly inlineBytes: number;
  /** In a string that is kept as it is: a key or any other value. */
  private inString = false;
  private escaped = false;
  /** The key being read, as sent; null when it is not a key or too long to be one looked for. */
  private key: number[] | null = null;
  private value: Base64Value | null = null;

  /**
   * `decodes(path)`: whether a string value at `path` (keys and array
   * indexes from the top) is base64 to decode, e.g. ['images', 0, 'b64_json'].
   */
  constructor(
    private readonly decodes: (path: JsonPath) => boolean,
    inlineBytes = 64 * 1024,
  ) {
    this.inlineBytes = Math.max(MIN_INLINE_BYTES, inlineBytes);
  }

  write(chunk: Buffer): void {
    let i = 0;
    let copied = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.value) {
        i = this.readValue(chunk, i);
        copied = i;
        continue;
      }
      const byte = chunk[i]!;
      i++;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (byte === BACKSLASH) this.escaped = true;
        else if (byte === QUOTE) {
          this.inString = false;
          if (this.key) this.endKey();
          continue;
        }
        if (this.key) {
          if (this.key.length < MAX_KEY_BYTES) this.key.push(byte);
          else this.key = null;
        }
        continue;
      }
      this.structure(byte);
      if (this.value) {
        // The opening quote is the last of the skeleton until the value ends.
        this.skeleton.push(chunk.subarray(copied, i));
        copied = i;
      }
    }
    if (n > copied && !this.value) this.skeleton.push(chunk.subarray(copied, n));
  }

  /** The skeleton (the JSON with each decoded value replaced by its token) and the bytes by token. */
  end(): {skeleton: Buffer; images: DecodedBase64} {
    // An unfinished value leaves the JSON unfinished: the parser refuses it as such.
    return {skeleton: Buffer.concat(this.skeleton), images: this.images};
  }

  /** A byte outside strings: keeps track of where in the JSON the next value is. */
  private structure(byte: number): void {
    const top = this.stack.at(-1);
    switch (byte) {
      case QUOTE:
        if (top && !top.array && !top.afterColon) {
          this.inString = true;
          this.key = [];
          return;
        }
        if (this.decodes(this.path())) {
          this.value = new Base64Value(this.inlineBytes);
          return;
        }
        this.inString = true;
        return;
      case 0x7b /* { */:
      case 0x5b /* [ */:
        this.stack.push({array: byte === 0x5b, at: byte === 0x5b ? 0 : undefined, afterColon: false});
        return;
      case 0x7d /* } */:
      case 0x5d /* ] */:
        this.stack.pop();
        return;
      case 0x2c /* , */:
        if (top?.array) top.at = (top.at as number) + 1;
        else if (top) {
          top.at = undefined;
          top.afterColon = false;
        }
        return;
      case 0x3a /* : */:
        if (top && !top.array) top.afterColon = true;
        return;
      default:
    }
  }

  private endKey(): void {
    const raw = Buffer.from(this.key!);
    this.key = null;
    const top = this.stack.at(-1)!;
    if (!raw.includes(BACKSLASH)) {
      top.at = raw.toString('latin1');
      return;
    }
    try {
      top.at = JSON.parse(`"${raw.toString('utf8')}"`) as string;
    } catch {
      top.at = undefined;
    }
  }

  private path(): JsonPath {
    return this.stack.map(frame => frame.at ?? '');
  }

  /** Reads a base64 value from `start`; where reading stopped (the value may go on in the next chunk). */
  private readValue(chunk: Buffer, start: number): number {
    const value = this.value!;
    let i = start;
    const n = chunk.length;
    while (i < n) {
      if (value.escape) {
        value.escape.push(chunk[i]!);
        i++;
        const code = escapedCode(value.escape);
        if (code === undefined) continue;
        const bytes = Buffer.from(value.escape);
        value.escape = null;
        if (code === -1 || !value.character(code)) return this.giveUp(bytes, chunk, i);
        value.keepRaw(bytes);
        continue;
      }
      // The run of alphabet characters from here: by far the most of a value, checked byte by byte (no regex).
      let stop = i;
      while (stop < n && KIND[chunk[stop]!] === 1) stop++;
      if (stop > i) {
        // Anything after padding makes it not base64.
        if (value.padding > 0) return this.giveUp(chunk.subarray(i, i + 1), chunk, i + 1);
        value.text(chunk.toString('latin1', i, stop));
        value.keepRaw(chunk.subarray(i, stop));
        i = stop;
        continue;
      }
      const byte = chunk[i]!;
      if (byte !== QUOTE && byte !== BACKSLASH) {
        // Padding, or a character that is not base64.
        if (!value.character(byte)) return this.giveUp(chunk.subarray(i, i + 1), chunk, i + 1);
        value.keepRaw(chunk.subarray(i, i + 1));
        i++;
        continue;
      }
      if (chunk[i] === BACKSLASH) {
        value.escape = [BACKSLASH];
        i++;
        continue;
      }
      // The closing quote.
      this.endValue();
      this.skeleton.push(QUOTE_BYTE);
      return i + 1;
    }
    return i;
  }

  private endValue(): void {
    const value = this.value!;
    this.value = null;
    if (value.raw) {
      this.skeleton.push(...value.raw);
      return;
    }
    const token = randomBytes(18).toString('base64');
    this.images.set(token, value.finish());
    this.skeleton.push(Buffer.from(token, 'latin1'));
  }

  /**
   * The value is not base64 at `bytes` (one character as sent): from there on
   * it is kept as sent, an ordinary string. Returns where reading goes on.
   */
  private giveUp(bytes: Buffer, chunk: Buffer, next: number): number {
    const value = this.value!;
    this.value = null;
    if (value.raw) this.skeleton.push(...value.raw);
    else this.skeleton.push(NOT_BASE64);
    this.skeleton.push(Buffer.from(bytes));
    this.inString = true;
    // The rest of this chunk is copied from `next` by write().
    return next;
  }
}

/**
 * The character an escape stands for once it is whole (`\/`, `\u002F`), -1
 * for one that is no base64 character or is not an escape at all, or
 * undefined while more of it is to come.
 */
function escapedCode(escape: number[]): number | undefined {
  const kind = escape[1];
  if (kind === undefined) return undefined;
  if (kind === 0x2f /* / */) return 0x2f;
  if (kind !== 0x75 /* u */) return -1;
  const last = escape.at(-1)!;
  if (escape.length > 2 && !/[0-9A-Fa-f]/.test(String.fromCharCode(last))) return -1;
  if (escape.length < 6) return undefined;
  return Number.parseInt(Buffer.from(escape.slice(2)).toString('latin1'), 16);
}
