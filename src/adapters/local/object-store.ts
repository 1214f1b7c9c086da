import {randomBytes} from 'node:crypto';
import {promises as nodeFs} from 'node:fs';
import * as path from 'node:path';
import type {Readable} from 'node:stream';
import type {ObjectInfo, ObjectStore} from '../../core/ports';
import {isAlreadyExists, isNotFound, resolveInside} from './fs';

interface Sidecar {
  contentType: string;
  metadata: Record<string, string>;
}

/** The file operations the store makes; tests pass ones that fail, to check what a failure leaves. */
export type ObjectFiles = Pick<
  typeof nodeFs,
  'mkdir' | 'writeFile' | 'link' | 'unlink' | 'readFile' | 'stat' | 'open' | 'readdir'
>;

/** What a write in progress is named: `<file>.tmp-<pid>-<random>`, in the file's own directory. */
const TEMP_FILE = /\.tmp-\d+-[0-9a-f]+$/;

function tempPathFor(file: string): string {
  return `${file}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

function sameSidecar(a: Sidecar, b: Sidecar): boolean {
  const keys = Object.keys(a.metadata);
  return (
    a.contentType === b.contentType &&
    keys.length === Object.keys(b.metadata).length &&
    keys.every(key => a.metadata[key] === b.metadata[key])
  );
}

function objectExists(path: string): Error {
  return new Error(`Object already exists: ${path}`);
}

/**
 * Image bytes on the local disk: `<dataDir>/objects/<path>` with the content
 * type and metadata in `<dataDir>/object-meta/<path>.json`.
 *
 * Every file is written whole to a temporary file next to it and then
 * hard-linked into place, which is atomic and fails if the name is taken: a
 * reader never sees part of a file, and a write that fails (a full disk, say)
 * removes its temporary file and leaves nothing. The sidecar is written
 * before the object and removed after it, so an object never exists without
 * its metadata.
 */
export class LocalObjectStore implements ObjectStore {
  private readonly objectsRoot: string;
  private readonly metaRoot: string;
  /** Directories known to exist; saves a mkdir call per write on the hot path. */
  private readonly existingDirs = new Set<string>();

  constructor(
    dataDir: string,
    private readonly files: ObjectFiles = nodeFs,
  ) {
    this.objectsRoot = path.resolve(dataDir, 'objects');
    this.metaRoot = path.resolve(dataDir, 'object-meta');
  }

  async put(objectPath: string, data: Buffer, info: Parameters<ObjectStore['put']>[2]): Promise<void> {
    const file = resolveInside(this.objectsRoot, objectPath);
    const sidecarFile = this.sidecarPath(objectPath);
    const sidecar: Sidecar = {contentType: info.contentType, metadata: info.metadata};

    let ownSidecar = true;
    try {
      await this.createExclusive(sidecarFile, JSON.stringify(sidecar));
    } catch (error) {
      if (!isAlreadyExists(error)) throw error;
      // Another write of this path got here first. Only the same write again (a retry, or a
      // duplicate running alongside) may go on; it must leave that write's sidecar alone.
      const existing = await this.readSidecar(sidecarFile);
      if (!existing || !sameSidecar(existing, sidecar)) throw objectExists(objectPath);
      ownSidecar = false;
    }

    try {
      await this.createExclusive(file, data);
    } catch (error) {
      if (isAlreadyExists(error)) {
        if (await this.holds(file, data)) return;
        // Only an object older than sidecars can be there without one; it keeps having none.
        if (ownSidecar) await this.unlinkQuietly(sidecarFile);
        throw objectExists(objectPath);
      }
      // Our sidecar goes, unless a duplicate of this write landed its object meanwhile.
      if (ownSidecar && !(await this.exists(file))) await this.unlinkQuietly(sidecarFile);
      throw error;
    }
  }

  async read(objectPath: string): Promise<Readable | null> {
    const file = resolveInside(this.objectsRoot, objectPath);
    // Open first so a missing file is a null, not a stream error later.
    const handle = await this.files.open(file, 'r').catch(error => {
      if (isNotFound(error)) return null;
      throw error;
    });
    return handle ? handle.createReadStream() : null;
  }

  async stat(objectPath: string): Promise<ObjectInfo | null> {
    const file = resolveInside(this.objectsRoot, objectPath);
    let stats;
    try {
      stats = await this.files.stat(file);
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
    // Written before the object, so it is there; a default only guards against hand-made files.
    const sidecar = await this.readSidecar(this.sidecarPath(objectPath));
    return {
      path: objectPath,
      bytes: stats.size,
      contentType: sidecar?.contentType ?? 'application/octet-stream',
      metadata: sidecar?.metadata ?? {},
      // Not every file system records a birth time; the object is never modified, so mtime is as good.
      createdAt: new Date(stats.birthtimeMs > 0 ? stats.birthtimeMs : stats.mtimeMs),
    };
  }

  async delete(objectPath: string): Promise<boolean> {
    const existed = await this.unlink(resolveInside(this.objectsRoot, objectPath));
    await this.unlink(this.sidecarPath(objectPath));
    return existed;
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    const found = (await this.filesUnder(this.objectsRoot, prefix)).filter(file => !TEMP_FILE.test(file));
    const infos = await Promise.all(found.sort().map(objectPath => this.stat(objectPath)));
    // An object deleted while listing is left out.
    return infos.filter(info => info !== null);
  }

  /**
   * Removes what writes that never finished left under `prefix`: a process
   * killed while writing leaves its temporary files, and a sidecar whose
   * object was never linked; nothing lists them, so nothing else ever would.
   * Only files last written before `olderThan` go, when no write can still
   * be under way. Returns them, relative to the data directory.
   */
  async removeAbandonedWrites(prefix: string, olderThan: Date): Promise<string[]> {
    const removed: string[] = [];
    const removeIfOld = async (file: string, shown: string) => {
      const stats = await this.files.stat(file).catch(() => null);
      if (stats && stats.mtimeMs < olderThan.getTime() && (await this.unlink(file))) removed.push(shown);
    };
    for (const file of await this.filesUnder(this.objectsRoot, prefix)) {
      if (TEMP_FILE.test(file)) await removeIfOld(resolveInside(this.objectsRoot, file), `objects/${file}`);
    }
    for (const file of await this.filesUnder(this.metaRoot, prefix)) {
      const abandoned =
        TEMP_FILE.test(file) ||
        (file.endsWith('.json') && !(await this.exists(resolveInside(this.objectsRoot, file.slice(0, -5)))));
      if (abandoned) await removeIfOld(resolveInside(this.metaRoot, file), `object-meta/${file}`);
    }
    return removed;
  }

  /** Every file under `root` whose path relative to it starts with `prefix`, temporary files included. */
  private async filesUnder(root: string, prefix: string): Promise<string[]> {
    const found: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries;
      try {
        entries = await this.files.readdir(dir, {withFileTypes: true});
      } catch (error) {
        if (isNotFound(error)) return;
        throw error;
      }
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else {
          const relative = path.relative(root, full).split(path.sep).join('/');
          if (relative.startsWith(prefix)) found.push(relative);
        }
      }
    };
    // Walk only the directory the prefix names, not the whole tree.
    const slash = prefix.lastIndexOf('/');
    await walk(slash === -1 ? root : resolveInside(root, prefix.slice(0, slash)));
    return found;
  }

  private sidecarPath(objectPath: string): string {
    return resolveInside(this.metaRoot, `${objectPath}.json`);
  }

  private async readSidecar(file: string): Promise<Sidecar | null> {
    try {
      return JSON.parse(await this.files.readFile(file, 'utf8')) as Sidecar;
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  /** Whether `file` holds exactly `data`. */
  private async holds(file: string, data: Buffer): Promise<boolean> {
    try {
      const stats = await this.files.stat(file);
      return stats.size === data.length && (await this.files.readFile(file)).equals(data);
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  }

  private async exists(file: string): Promise<boolean> {
    return this.files.stat(file).then(
      () => true,
      () => false,
    );
  }

  /** Proves both directories take a new file: writes a temporary file, as every write does, and removes it. */
  async checkWritable(): Promise<void> {
    for (const root of [this.objectsRoot, this.metaRoot]) {
      const probe = tempPathFor(path.join(root, 'ready-check'));
      await this.writeNew(probe, '');
      await this.unlinkQuietly(probe);
    }
  }

  /**
   * Creates `file` with `data`, whole or not at all; fails with EEXIST if it
   * exists. The temporary file is removed whatever happens.
   */
  private async createExclusive(file: string, data: Buffer | string): Promise<void> {
    const temp = tempPathFor(file);
    try {
      await this.writeNew(temp, data);
      await this.files.link(temp, file);
    } finally {
      await this.unlinkQuietly(temp);
    }
  }

  /** Creates `file`, making its directory first unless it is known to exist (and again if it was removed). */
  private async writeNew(file: string, data: Buffer | string): Promise<void> {
    const dir = path.dirname(file);
    if (!this.existingDirs.has(dir)) {
      await this.files.mkdir(dir, {recursive: true});
      this.existingDirs.add(dir);
    }
    try {
      await this.files.writeFile(file, data, {flag: 'wx'});
    } catch (error) {
      if (!isNotFound(error)) throw error;
      this.existingDirs.delete(dir);
      await this.files.mkdir(dir, {recursive: true});
      this.existingDirs.add(dir);
      await this.files.writeFile(file, data, {flag: 'wx'});
    }
  }

  /** Returns false when there was no such file. */
  private async unlink(file: string): Promise<boolean> {
    try {
      await this.files.unlink(file);
      return true;
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  }

  private async unlinkQuietly(file: string): Promise<void> {
    await this.files.unlink(file).catch(() => undefined);
  }
}
