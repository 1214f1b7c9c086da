import {randomBytes} from 'node:crypto';
import sharp from 'sharp';

export interface MadeImage {
  data: Buffer;
  width: number;
  height: number;
}

/** A solid image in the given format; PNG and WebP keep an alpha channel when `alpha` is set. */
export async function solidImage(
  format: 'png' | 'jpeg' | 'webp',
  width = 64,
  height = 64,
  {alpha = false}: {alpha?: boolean} = {},
): Promise<Buffer> {
  const channels = alpha ? 4 : 3;
  const background = alpha ? {r: 10, g: 120, b: 200, alpha: 0.5} : {r: 10, g: 120, b: 200};
  const image = sharp({create: {width, height, channels, background}});
  return (format === 'png' ? image.png() : format === 'jpeg' ? image.jpeg() : image.webp()).toBuffer();
}

/**
 * Random noise of about `bytes` as a real PNG or JPEG (noise does not
 * compress, so the file is about as large as its pixels): what a large photo
 * upload weighs, without a large photo.
 */
export async function noiseImage(format: 'png' | 'jpeg', bytes: number): Promise<MadeImage> {
  const channels = 3;
  const side = Math.ceil(Math.sqrt(bytes / channels) / 16) * 16;
  const pixels = randomBytes(side * side * channels);
  const image = sharp(pixels, {raw: {width: side, height: side, channels}});
  const data = await (
    format === 'png'
      ? image.png({compressionLevel: 0})
      : image.jpeg({quality: 100, chromaSubsampling: '4:4:4'})
  ).toBuffer();
  return {data, width: side, height: side};
}
