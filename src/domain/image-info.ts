import {createHash} from 'node:crypto';

type ImageSize = typeof import('image-size').imageSize;
let imageSize: ImageSize | undefined;

/**
 * Loads the header reader (image-size) if it is not loaded yet. Nothing at
 * cold start needs it; a generation loads it while its upstream call waits.
 */
export function loadImageInspector(): ImageSize {
  return (imageSize ??= (require('image-size') as typeof import('image-size')).imageSize);
}

const FORMATS: Record<string, {contentType: string; extension: string}> = {
  png: {contentType: 'image/png', extension: 'png'},
  jpg: {contentType: 'image/jpeg', extension: 'jpg'},
  webp: {contentType: 'image/webp', extension: 'webp'},
};

export interface ImageInfo {
  contentType: string;
  extension: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
}

/**
 * Reads the format and dimensions from the image header and hashes the bytes
 * (unless the hash was computed already, while decoding).
 * Returns null for anything that is not a PNG, JPEG or WebP image.
 */
export function inspectImage(data: Buffer, knownSha256?: string): ImageInfo | null {
  const imageSize = loadImageInspector();
  let header: ReturnType<ImageSize>;
  try {
    header = imageSize(data);
  } catch {
    return null;
  }
  const format = header.type === undefined ? undefined : FORMATS[header.type];
  if (!format || !header.width || !header.height) return null;
  return {
    ...format,
    width: header.width,
    height: header.height,
    bytes: data.length,
    sha256: knownSha256 ?? createHash('sha256').update(data).digest('hex'),
  };
}
