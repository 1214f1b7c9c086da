import {createHash, randomUUID} from 'node:crypto';
import {promises as fs, mkdtempSync, readdirSync, statSync} from 'node:fs';
import {join, relative} from 'node:path';
import {LocalObjectStore, type ObjectFiles} from '../../src/adapters/local/object-store';
import {useTempDir} from '../support/temp-dir';

const root = useTempDir();

/** Every file under `dir`, relative to it, with its size. */
function filesUnder(dir: string): {file: string; bytes: number}[] {
  const found: {file: string; bytes: number}[] = [];
  const walk = (current: string) => {
    for (const entry of readdirSync(current, {withFileTypes: true})) {
      const full = join(current, entry.name);
      if (entry.isDirectory()) walk(full);
      else found.push({file: relative(dir, full), bytes: statSync(full).size});
    }
  };
  walk(dir);
  return found.sort((a, b) => (a.file < b.file ? -1 : 1));
}

function noSpaceLeft(syscall: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`ENOSPC: no space left on device, ${syscall}`), {
    code: 'ENOSPC',
    errno: -28,
    syscall,
  });
}

type WriteData = Parameters<typeof fs.writeFile>[1];

/**
 * A disk that fills up during the write whose path matches `which`: it writes
 * `keep` bytes of it (a partial file, or an empty one) and then fails as
 * writeFile does on a full disk.
 */
function fullDiskOnWrite(which: (file: string) => boolean, keep: (size: number) => number): ObjectFiles {
  return {
    ...fs,
    writeFile: (async (file: string, data: WriteData, options?: Parameters<typeof fs.writeFile>[2]) => {
      if (!which(file)) return fs.writeFile(file, data, options);
      const bytes = Buffer.from(data as Buffer | string);
      await fs.writeFile(file, bytes.subarray(0, keep(bytes.length)), options);
      throw noSpaceLeft('write');
    }) as typeof fs.writeFile,
  };
}

const image = Buffer.from(Array.from({length: 64 * 1024}, (_, i) => (i * 7) % 256));
const info = (data: Buffer) => ({
  contentType: 'image/png',
  metadata: {sha256: createHash('sha256').update(data).digest('hex'), job_id: 'j'},
});
const isObjectTemp = (file: string) => file.includes('/objects/') && file.includes('.tmp-');
const isSidecarTemp = (file: string) => file.includes('/object-meta/') && file.includes('.tmp-');

describe('LocalObjectStore when a write fails (a full disk)', () => {
  const failures: [string, (dataDir: string) => ObjectFiles][] = [
    ['the object bytes, half written', () => fullDiskOnWrite(isObjectTemp, size => size / 2)],
    ['the object bytes, nothing written', () => fullDiskOnWrite(isObjectTemp, () => 0)],
    ['the sidecar, half written', () => fullDiskOnWrite(isSidecarTemp, size => Math.floor(size / 2))],
    [
      'linking the object into place',
      () => ({
        ...fs,
        link: (async (from: string, to: string) => {
          if (to.includes('/objects/')) throw noSpaceLeft('link');
          return fs.link(from, to);
        }) as typeof fs.link,
      }),
    ],
  ];

  test.each(failures)(
    'failing on %s leaves no file at all, and the path stays writable',
    async (_, files) => {
      const dataDir = mkdtempSync(join(root(), 'data-'));
      const path = `images/${randomUUID()}/000-a.png`;
      const failing = new LocalObjectStore(dataDir, files(dataDir));
      await expect(failing.put(path, image, info(image))).rejects.toMatchObject({code: 'ENOSPC'});

      // No object, no sidecar, no temporary file, empty or partial.
      expect(filesUnder(dataDir)).toEqual([]);
      const store = new LocalObjectStore(dataDir);
      expect(await store.stat(path)).toBeNull();
      expect(await store.read(path)).toBeNull();
      expect(await store.list('images/')).toEqual([]);

      // Once there is room again, the same write goes through: object and sidecar together.
      await store.put(path, image, info(image));
      expect(filesUnder(dataDir)).toEqual([
        {file: `object-meta/${path}.json`, bytes: expect.any(Number)},
        {file: `objects/${path}`, bytes: image.length},
      ]);
      expect(await store.stat(path)).toMatchObject({bytes: image.length, metadata: info(image).metadata});
    },
  );

  test('a sidecar left by a process that stopped before its object lets the same write through, and no other', async () => {
    const dataDir = mkdtempSync(join(root(), 'data-'));
    const path = `images/${randomUUID()}/000-a.png`;
    // A killed process cannot clean up: its sidecar stays, complete (it was linked into place whole).
    await fs.mkdir(join(dataDir, 'object-meta', path, '..'), {recursive: true});
    await fs.writeFile(join(dataDir, 'object-meta', `${path}.json`), JSON.stringify(info(image)));

    const store = new LocalObjectStore(dataDir);
    expect(await store.stat(path)).toBeNull();
    const other = Buffer.from('other bytes');
    await expect(store.put(path, other, info(other))).rejects.toThrow(/already exists/);
    await store.put(path, image, info(image));
    expect((await store.stat(path))?.bytes).toBe(image.length);
  });

  test('identical writes racing each other both succeed, and leave one object and one sidecar', async () => {
    const dataDir = mkdtempSync(join(root(), 'data-'));
    const path = `images/${randomUUID()}/000-a.png`;
    const stores = [new LocalObjectStore(dataDir), new LocalObjectStore(dataDir)];
    await Promise.all(stores.flatMap(store => [1, 2, 3].map(() => store.put(path, image, info(image)))));
    expect(filesUnder(dataDir).map(entry => entry.file)).toEqual([
      `object-meta/${path}.json`,
      `objects/${path}`,
    ]);
  });
});

describe('LocalObjectStore after a process was killed while writing', () => {
  test('what the writes cut short left is removed once old enough; objects and files still being written stay', async () => {
    const dataDir = mkdtempSync(join(root(), 'data-'));
    const store = new LocalObjectStore(dataDir);
    const job = `images/${randomUUID()}`;
    const whole = `${job}/000-a.png`;
    await store.put(whole, image, info(image));
    // What a killed writer leaves: the temporary file of an object or of a sidecar, and a sidecar
    // linked into place before its object was.
    const leftovers = [
      `objects/${job}/001-b.png.tmp-4242-0a1b2c3d4e5f`,
      `object-meta/${job}/002-c.png.json.tmp-4242-0a1b2c3d4e5f`,
      `object-meta/${job}/003-d.png.json`,
    ];
    const beingWritten = `objects/${job}/004-e.png.tmp-4242-abcdef012345`;
    for (const file of [...leftovers, beingWritten]) {
      await fs.mkdir(join(dataDir, file, '..'), {recursive: true});
      await fs.writeFile(join(dataDir, file), 'part of a write');
    }
    const longAgo = new Date(Date.now() - 3600_000);
    for (const file of [...leftovers, `objects/${whole}`, `object-meta/${whole}.json`]) {
      await fs.utimes(join(dataDir, file), longAgo, longAgo);
    }

    const removed = await store.removeAbandonedWrites('images/', new Date(Date.now() - 60_000));
    expect(removed.sort()).toEqual([...leftovers].sort());
    expect(filesUnder(dataDir).map(entry => entry.file)).toEqual(
      [`object-meta/${whole}.json`, `objects/${whole}`, beingWritten].sort(),
    );
    expect((await store.list('images/')).map(object => object.path)).toEqual([whole]);
    // Only under the prefix asked for.
    expect(await store.removeAbandonedWrites('images/other/', new Date())).toEqual([]);
  });
});
