import {createHash} from 'node:crypto';
import type {ImageCodec, ImageInfo} from '../../core/ports';

type ImageSize = typeof import('image-size').imageSize;

const FORMATS: Record<string, {contentType: string; extension: string}> = {
  png: {contentType: 'image/png', extension: 'png'},
  jpg: {contentType: 'image/jpeg', extension: 'jpg'},
  webp: {contentType: 'image/webp', extension: 'webp'},
  gif: {contentType: 'image/gif', extension: 'gif'},
  svg: {contentType: 'image/svg+xml', extension: 'svg'},
};

/**
 * Reads image headers with image-size, loaded on first use: nothing at cold
 * start needs it. Resizes with sharp, loaded only when a request asks for a
 * size its model cannot make.
 */
export class HeaderImageCodec implements ImageCodec {
  private imageSize: ImageSize | undefined;

  /** Loads the header reader if it is not loaded yet (a generation does it while its upstream call waits). */
  load(): ImageSize {
    return (this.imageSize ??= (require('image-size') as typeof import('image-size')).imageSize);
  }

  /**
   * The format and dimensions from the image header, and the bytes' sha256
   * (unless it was computed already, while decoding). Null for anything that
   * is not a PNG, JPEG, WebP, GIF or SVG image.
   */
  inspect(data: Buffer, knownSha256?: string): ImageInfo | null {
    const imageSize = this.load();
    let header: ReturnType<ImageSize>;
    try {
      header = imageSize(data);
    } catch {
      return null;
    }
    const format = header.type === undefined ? undefined : FORMATS[header.type];
    if (!format || !header.width || !header.height) return null;
    // EXIF orientations 5-8 turn the picture a quarter: it is shown, and edited, the other way round.
    const turned = header.orientation !== undefined && header.orientation >= 5 && header.orientation <= 8;
    return {
      ...format,
      width: turned ? header.height : header.width,
      height: turned ? header.width : header.height,
      bytes: data.length,
      sha256: knownSha256 ?? createHash('sha256').update(data).digest('hex'),
      alpha: hasAlpha(header.type!, data),
    };
  }

  /**
   * The image at `size`, in the format it came in. Every frame of an animated
   * image (a GIF) is resized: without `animated`, sharp reads the first frame
   * only. An SVG is returned as it is: it is drawn at whatever size it is
   * shown, and sharp would only rasterise it, storing a PNG where an SVG was
   * asked for.
   */
  async hasTransparentPixels(data: Buffer): Promise<boolean> {
    const sharp = require('sharp') as typeof import('sharp');
    const alpha = (await sharp(data).stats()).channels[3];
    return alpha !== undefined && alpha.min < 255;
  }

  async resize(data: Buffer, size: {width: number; height: number}): Promise<Buffer> {
    if (this.typeOf(data) === 'svg') return data;
    const sharp = require('sharp') as typeof import('sharp');
    // Same format out as in: sharp keeps it unless told otherwise.
    return sharp(data, {animated: true}).resize(size.width, size.height, {fit: 'cover'}).toBuffer();
  }

  private typeOf(data: Buffer): string | undefined {
    try {
      return this.load()(data).type;
    } catch {
      return undefined;
    }
  }
}

/**
 * Whether an image can hold transparent pixels, read from its header: PNG's
 * colour type (grey or RGB with alpha) or a tRNS chunk before the image data;
 * WebP's alpha flag (VP8X) or a lossless stream (VP8L, which may carry alpha).
 */
function hasAlpha(type: string, data: Buffer): boolean {
  if (type === 'png') {
    const colourType = data[25];
    if (colourType === 4 || colourType === 6) return true;
    const dataStart = data.indexOf('IDAT', 8, 'latin1');
    const transparency = data.indexOf('tRNS', 8, 'latin1');
    return transparency !== -1 && (dataStart === -1 || transparency < dataStart);
  }
  if (type === 'webp') {
    const chunk = data.toString('latin1', 12, 16);
    if (chunk === 'VP8X') return ((data[20] ?? 0) & 0x10) !== 0;
    return chunk === 'VP8L';
  }
  return false;
}
