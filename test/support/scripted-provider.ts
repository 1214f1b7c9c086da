import {deflateSync, crc32} from 'node:zlib';
import type {CallOptions, GeneratedImages, ImageProvider, UpstreamRequest} from '../../src/core/ports';

function chunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** A real, decodable RGB PNG of the given size; `seed` makes each one's bytes unique. */
export function tinyPng(width: number, height: number, seed = 0): Buffer {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  const rows = Buffer.alloc((width * 3 + 1) * height, seed % 256);
  for (let y = 0; y < height; y++) rows[y * (width * 3 + 1)] = 0; // filter byte: none
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(rows)),
    chunk('tEXt', Buffer.from(`seed\0${seed}`, 'latin1')),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** What one upstream call does: answer with images, or fail. */
export type ScriptedAnswer = {delayMs?: number} & (
  {error: unknown} | {images?: Buffer[]; usage?: Record<string, unknown> | null}
);

/**
 * An image provider for use case unit tests: each call takes the next
 * scripted answer (or makes `n` small PNGs), after an optional delay, and
 * honours the abort signal as the real provider does.
 */
export class ScriptedProvider implements ImageProvider {
  configured = true;
  readonly calls: UpstreamRequest[] = [];
  /** Calls whose abort signal fired while they waited upstream. */
  readonly cancelled: UpstreamRequest[] = [];
  readonly script: ScriptedAnswer[] = [];
  private made = 0;

  async generate<T>(
    request: UpstreamRequest,
    store: (result: GeneratedImages) => Promise<T>,
    options: CallOptions = {},
  ): Promise<T> {
    const {signal} = options;
    this.calls.push(request);
    const answer = this.script.shift() ?? {};
    if (answer.delayMs) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, answer.delayMs);
        signal?.addEventListener('abort', () => {
          clearTimeout(timer);
          this.cancelled.push(request);
          reject(signal.reason);
        });
      });
    }
    signal?.throwIfAborted();
    if ('error' in answer) throw answer.error;
    for (let i = 0; i < (request.partialImages ?? 0); i++) {
      options.onPartial?.({
        partialImageIndex: i,
        b64: tinyPng(4, 4, i).toString('base64'),
        contentType: 'image/png',
      });
    }
    const images = answer.images ?? Array.from({length: request.n}, () => tinyPng(16, 16, ++this.made));
    return store({
      images: images.map(data => ({data, revisedPrompt: null})),
      usage: answer.usage === undefined ? {input_tokens: 1, output_tokens: 2, total_tokens: 3} : answer.usage,
    });
  }
}
