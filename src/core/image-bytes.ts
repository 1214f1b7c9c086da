import {createHash} from 'node:crypto';
import type {Readable} from 'node:stream';

/**
 * An edit's input as it is held while the edit runs: its bytes once, in a
 * Blob (which the upstream call sends as it is, however many calls there
 * are), with their sha256 and their first bytes taken on the way in. No
 * contiguous copy of the whole image is made: an upload goes from the wire
 * into the Blob, and is judged by its head and its hash.
 */
export interface ImageBytes {
  blob: Blob;
  size: number;
  sha256: string;
  /** The first bytes, where an image's header is (up to HEAD_BYTES). */
  head: Buffer;
}

/**
 * Base64 values a body reader decoded as they arrived, by the token that
 * stands for each in the parsed body (see parseEditBody).
 */
export type DecodedBase64 = ReadonlyMap<string, ImageBytes>;

/** Enough for the header of any PNG, WebP or JPEG but one with unusually large metadata first. */
export const HEAD_BYTES = 256 * 1024;

/** Chunks wait in memory until this many bytes are gathered into a part of the Blob. */
const PART_BYTES = 1024 * 1024;

/** Gathers chunks as they arrive into ImageBytes. */
export class ImageBytesCollector {
  private readonly hash = createHash('sha256');
  private readonly head: Buffer[] = [];
  private headBytes = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly parts: Blob[] = [];
  size = 0;

  add(chunk: Buffer): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    if (this.headBytes < HEAD_BYTES) {
      // Copied, so the head does not keep a whole chunk alive.
      const piece = Buffer.from(chunk.subarray(0, HEAD_BYTES - this.headBytes));
      this.head.push(piece);
      this.headBytes += piece.length;
    }
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    // A Blob copies what it is made of; chunks copied early are garbage while they are still young.
    if (this.pendingBytes >= PART_BYTES) this.flush();
  }

  finish(): ImageBytes {
    this.flush();
    return {
      // Made of the parts' data without copying it again.
      blob: new Blob(this.parts),
      size: this.size,
      sha256: this.hash.digest('hex'),
      head: Buffer.concat(this.head, this.headBytes),
    };
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.parts.push(new Blob(this.pending));
    this.pending = [];
    this.pendingBytes = 0;
  }
}

/** Bytes already in one buffer (which may be dropped once this returns). */
export function imageBytesOf(data: Buffer): ImageBytes {
  const collector = new ImageBytesCollector();
  collector.add(data);
  return collector.finish();
}

/** Base64 text decoded a slice at a time, so no buffer of the whole image is made. */
export function imageBytesFromBase64(text: string): ImageBytes {
  const collector = new ImageBytesCollector();
  // A multiple of 4 characters decodes on its own.
  const slice = Math.floor(PART_BYTES / 3) * 4;
  for (let start = 0; start < text.length; start += slice) {
    collector.add(Buffer.from(text.slice(start, start + slice), 'base64'));
  }
  return collector.finish();
}

/** A stream's bytes; null once they pass `maxBytes` (the stream is then destroyed). */
export async function imageBytesFromStream(stream: Readable, maxBytes: number): Promise<ImageBytes | null> {
  const collector = new ImageBytesCollector();
  for await (const chunk of stream) {
    collector.add(chunk as Buffer);
    if (collector.size > maxBytes) {
      stream.destroy();
      return null;
    }
  }
  return collector.finish();
}

/** All of the bytes in one buffer: only for the rare header the first bytes do not hold. */
export async function wholeBytes(bytes: ImageBytes): Promise<Buffer> {
  if (bytes.head.length === bytes.size) return bytes.head;
  return Buffer.from(await bytes.blob.arrayBuffer());
}
