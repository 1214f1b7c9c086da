import {setImmediate as nextTurn} from 'node:timers/promises';
import {JsonImagesDecoder, asBuffer, type BufferPool, type DecodedImage} from './response-parser';

/** The completed image of a streamed call, decoded, and the rest of its event. */
export interface StreamedImage {
  image: DecodedImage;
  /** The completed event's data without its b64_json (usage, output_format, ...). */
  event: Record<string, unknown>;
  /** Hands the image's memory back to the pool; call it once nothing reads the image. */
  release(): void;
}

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

/** Events whose data carries the final image. */
const isCompleted = (name: string | null) => name !== null && name.endsWith('.completed');

/**
 * Reads a streamed Images API answer (Server-Sent Events) as it arrives. Every
 * event but the completed one is parsed and handed to `onEvent` (which may
 * throw to stop the reading). The completed event's base64 image, megabytes
 * of it, is decoded and hashed chunk by chunk as it arrives, as a
 * non-streamed answer's is (JsonImagesDecoder): it never exists as one
 * string, and no step holds the event loop for more than a chunk, so the
 * partial images of other calls go on flowing meanwhile. Lines are found
 * with Buffer.indexOf. Resolves at the completed event.
 *
 * `beforeImage` is awaited once the completed event is named, before any of
 * its image is decoded: the stream is not read meanwhile (its bytes wait in
 * the socket), other streams go on.
 */
export async function readImageStream(
  body: AsyncIterable<Uint8Array>,
  onEvent: (name: string | null, data: unknown) => void,
  options: {
    pool?: BufferPool;
    sizeHint?: number;
    beforeImage?: () => Promise<void>;
    onDecode?: () => void;
  } = {},
): Promise<StreamedImage> {
  const parser = new ImageStreamParser(
    onEvent,
    options.pool,
    options.sizeHint ?? 0,
    options.beforeImage !== undefined,
    options.onDecode,
  );
  /** Feeds a chunk, waiting on `beforeImage` where the parser stops for it. */
  const feed = async (chunk: Buffer): Promise<StreamedImage | undefined> => {
    for (let from = 0; ;) {
      const step = parser.write(chunk, from);
      if (!(step instanceof Paused)) return step;
      await options.beforeImage!();
      from = step.resumeAt;
    }
  };
  try {
    for await (const chunk of body) {
      const image = await feed(asBuffer(chunk));
      if (image) return image;
      // Chunks already received are otherwise read in one run of promise callbacks; with many
      // streams behind at once, that holds every socket (other calls' partial images) back for
      // hundreds of milliseconds. One chunk per turn of the event loop lets them through.
      await nextTurn();
    }
    // The stream ended: its last line ends here (it may name the completed event, so the
    // parser may stop for `beforeImage`), and an event not closed by a blank line still counts.
    const image = (await feed(Buffer.from('\n'))) ?? parser.end();
    if (image) return image;
  } catch (error) {
    parser.release();
    throw error;
  }
  throw new Error('the stream ended without the completed image');
}

/** Where the parser is within the current line. */
type LineState =
  /** Reading the field name (bytes kept in `field`). */
  | 'field'
  /** Right after `data:`: one space may follow, then the value, streamed to the event's data. */
  | 'data-start'
  | 'data'
  /** The value of an `event:` line (kept in `value`). */
  | 'event'
  /** Any other field or a comment: ignored to the end of the line. */
  | 'ignore';

class TextData {
  private readonly chunks: Buffer[] = [];
  write(chunk: Buffer): void {
    this.chunks.push(chunk);
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** The parser stopped before the completed image: resume at `resumeAt` of the same chunk. */
class Paused {
  constructor(readonly resumeAt: number) {}
}

class ImageStreamParser {
  private state: LineState = 'field';
  private field: Buffer[] = [];
  private value: Buffer[] = [];
  /** A CR ended the last chunk: a LF starting the next one belongs to it. */
  private skipLF = false;
  private eventName: string | null = null;
  private dataLines = 0;
  private data: TextData | JsonImagesDecoder | undefined;
  /** Stop once, as the completed event is named, before its image is decoded. */
  private pauseBeforeImage: boolean;

  constructor(
    private readonly onEvent: (name: string | null, data: unknown) => void,
    private readonly pool: BufferPool | undefined,
    /** The image bytes to expect: one buffer of the right size, instead of doubling into it. */
    private readonly sizeHint: number,
    pauseBeforeImage: boolean,
    /** Told as the completed image begins to be decoded. */
    private readonly onDecode: (() => void) | undefined,
  ) {
    this.pauseBeforeImage = pauseBeforeImage;
  }

  /**
   * Feeds a chunk from `from`; returns the image once its event is complete,
   * or Paused once the completed event is named (feed the rest after).
   */
  write(chunk: Buffer, from = 0): StreamedImage | Paused | undefined {
    let i = from;
    if (this.skipLF && i < chunk.length) {
      this.skipLF = false;
      if (chunk[i] === LF) i++;
    }
    while (i < chunk.length) {
      const eol = lineEnd(chunk, i);
      const stop = eol === -1 ? chunk.length : eol;
      this.consume(chunk, i, stop);
      if (eol === -1) break;
      i = eol + 1;
      if (chunk[eol] === CR) {
        if (i === chunk.length) this.skipLF = true;
        else if (chunk[i] === LF) i++;
      }
      const image = this.endLine();
      if (image) return image;
      if (this.pauseBeforeImage && isCompleted(this.eventName)) {
        this.pauseBeforeImage = false;
        return new Paused(i);
      }
    }
    return undefined;
  }

  /** The stream ended: an event not closed by a blank line still counts. */
  end(): StreamedImage | undefined {
    if (this.state !== 'field' || this.field.length > 0) this.endLine();
    return this.dataLines > 0 ? this.dispatch() : undefined;
  }

  release(): void {
    if (this.data instanceof JsonImagesDecoder) this.data.release();
  }

  /** Takes the bytes [from, to) of the current line. */
  private consume(chunk: Buffer, from: number, to: number): void {
    let i = from;
    if (this.state === 'field') {
      const colon = chunk.indexOf(COLON, i);
      if (colon === -1 || colon >= to) {
        if (to > i) this.field.push(chunk.subarray(i, to));
        return;
      }
      const name = Buffer.concat([...this.field, chunk.subarray(i, colon)]).toString('utf8');
      this.field = [];
      this.state = name === 'data' ? 'data-start' : name === 'event' ? 'event' : 'ignore';
      if (this.state === 'event') this.value = [];
      i = colon + 1;
    }
    if (this.state === 'data-start' && i < to) {
      this.startData();
      if (chunk[i] === SPACE) i++;
    }
    if (i >= to) return;
    if (this.state === 'data') this.data!.write(chunk.subarray(i, to));
    else if (this.state === 'event') this.value.push(chunk.subarray(i, to));
  }

  private startData(): void {
    this.data ??= isCompleted(this.eventName) ? this.imageDecoder(this.sizeHint) : new TextData();
    // Lines of one event's data are joined with a line feed.
    if (this.dataLines > 0) this.data.write(Buffer.from('\n'));
    this.state = 'data';
  }

  private endLine(): StreamedImage | undefined {
    const state = this.state;
    this.state = 'field';
    if (state === 'field') {
      const empty = this.field.length === 0;
      if (!empty) {
        // A line without a colon is a field with an empty value.
        const name = Buffer.concat(this.field).toString('utf8');
        this.field = [];
        if (name === 'data') {
          this.startData();
          this.dataLines++;
        } else if (name === 'event') this.eventName = '';
        return undefined;
      }
      return this.dataLines > 0 ? this.dispatch() : this.reset();
    }
    if (state === 'data-start') this.startData();
    if (state === 'data' || state === 'data-start') this.dataLines++;
    if (state === 'event') this.eventName = Buffer.concat(this.value).toString('utf8').replace(/^ /, '');
    return undefined;
  }

  private dispatch(): StreamedImage | undefined {
    const {eventName, data} = this;
    this.data = undefined;
    this.reset();
    if (data instanceof JsonImagesDecoder) {
      let parsed;
      try {
        parsed = data.end();
      } catch (error) {
        data.release();
        throw error;
      }
      if (parsed.images.length !== 1) {
        data.release();
        throw new Error(`the completed event carried ${parsed.images.length} images`);
      }
      return {
        image: parsed.images[0]!,
        event: parsed.body as Record<string, unknown>,
        release: () => data.release(),
      };
    }
    const text = data!.text();
    if (text === '[DONE]') return undefined;
    const parsed = JSON.parse(text) as unknown;
    // Data before its event name: the slow path, still right.
    if (isCompleted(eventName)) return completedFromText(parsed, this.imageDecoder(0));
    this.onEvent(eventName, parsed);
    return undefined;
  }

  private imageDecoder(sizeHint: number): JsonImagesDecoder {
    this.onDecode?.();
    return new JsonImagesDecoder(sizeHint, this.pool);
  }

  private reset(): undefined {
    this.eventName = null;
    this.dataLines = 0;
    return undefined;
  }
}

/** The first CR or LF at or after `from`, or -1. */
function lineEnd(chunk: Buffer, from: number): number {
  const lf = chunk.indexOf(LF, from);
  const cr = chunk.subarray(from, lf === -1 ? chunk.length : lf).indexOf(CR);
  return cr === -1 ? lf : from + cr;
}

function completedFromText(parsed: unknown, decoder: JsonImagesDecoder): StreamedImage {
  decoder.write(Buffer.from(JSON.stringify(parsed)));
  const {body, images} = decoder.end();
  if (images.length !== 1) {
    decoder.release();
    throw new Error(`the completed event carried ${images.length} images`);
  }
  return {image: images[0]!, event: body as Record<string, unknown>, release: () => decoder.release()};
}
