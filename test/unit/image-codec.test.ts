import sharp from 'sharp';
import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';

describe('HeaderImageCodec.resize', () => {
  const codec = new HeaderImageCodec();

  test('an animated GIF keeps every frame, each at the new size', async () => {
    const frames = await Promise.all(
      [0, 1, 2].map(i =>
        sharp({create: {width: 64, height: 48, channels: 3, background: {r: i * 100, g: 0, b: 0}}})
          .png()
          .toBuffer(),
      ),
    );
    const gif = await sharp(frames, {join: {animated: true}})
      .gif()
      .toBuffer();
    const resized = await codec.resize(gif, {width: 32, height: 16});
    const meta = await sharp(resized, {animated: true}).metadata();
    expect([meta.format, meta.pages, meta.width, meta.pageHeight]).toEqual(['gif', 3, 32, 16]);
    expect(codec.inspect(resized)).toMatchObject({contentType: 'image/gif', width: 32, height: 16});
  });

  test('an SVG is left as it is, still an SVG', async () => {
    const svg = Buffer.from(
      '<svg xmlns="http://www.w3.org/2000/svg" width="1024" height="1024"><rect width="10" height="10"/></svg>',
    );
    const resized = await codec.resize(svg, {width: 256, height: 256});
    expect(resized.equals(svg)).toBe(true);
    expect(codec.inspect(resized)?.contentType).toBe('image/svg+xml');
  });

  test('a PNG is resized, still a PNG', async () => {
    const png = await sharp({create: {width: 64, height: 48, channels: 4, background: '#0000'}})
      .png()
      .toBuffer();
    expect(codec.inspect(await codec.resize(png, {width: 20, height: 10}))).toMatchObject({
      contentType: 'image/png',
      width: 20,
      height: 10,
    });
  });
});
