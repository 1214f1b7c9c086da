import {promises as fs} from 'node:fs';
import * as path from 'node:path';
import type {Readable} from 'node:stream';
import type {ObjectStore} from '../../core/ports';
import {createExclusive, isAlreadyExists, isNotFound, removeFile, resolveInside, writeNew} from './fs';

interface Sidecar {
  contentType: string;
  metadata: Record<string, string>;
}

/**
 * Image bytes on the local disk: `<dataDir>/objects/<path>` with the content
 * type and metadata in `<dataDir>/object-meta/<path>.json`.
 */
export class LocalObjectStore implements ObjectStore {
  private readonly objectsRoot: string;
  private readonly metaRoot: string;

  constructor(dataDir: string) {
    this.objectsRoot = path.resolve(dataDir, 'objects');
    this.metaRoot = path.resolve(dataDir, 'object-meta');
  }

  async put(objectPath: string, data: Buffer, info: Parameters<ObjectStore['put']>[2]): Promise<void> {
    const file = resolveInside(this.objectsRoot, objectPath);
    const sidecar: Sidecar = {contentType: info.contentType, metadata: info.metadata};
    try {
      // The sidecar goes first: an object that exists always has its metadata.
      await createExclusive(this.sidecarPath(objectPath), JSON.stringify(sidecar));
    } catch (error) {
      if (isAlreadyExists(error)) throw new Error(`Object already exists: ${objectPath}`, {cause: error});
      throw error;
    }
    try {
      // Object bytes are written in place (create-only): no reader knows the path
      // until the records that name it are written, after this write completes.
      await writeNew(file, data);
    } catch (error) {
      if (!isAlreadyExists(error)) await removeFile(file).catch(() => undefined);
      await removeFile(this.sidecarPath(objectPath)).catch(() => undefined);
      throw isAlreadyExists(error)
        ? new Error(`Object already exists: ${objectPath}`, {cause: error})
        : error;
    }
  }

  async read(objectPath: string): Promise<Readable | null> {
    const file = resolveInside(this.objectsRoot, objectPath);
    // Open first so a missing file is a null, not a stream error later.
    const handle = await fs.open(file, 'r').catch(error => {
      if (isNotFound(error)) return null;
      throw error;
    });
    return handle ? handle.createReadStream() : null;
  }

  async delete(objectPath: string): Promise<boolean> {
    const existed = await removeFile(resolveInside(this.objectsRoot, objectPath));
    await removeFile(this.sidecarPath(objectPath));
    return existed;
  }

  async list(prefix: string): Promise<string[]> {
    const found: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries;
      try {
        entries = await fs.readdir(dir, {withFileTypes: true});
      } catch (error) {
        if (isNotFound(error)) return;
        throw error;
      }
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (!entry.name.includes('.tmp-')) {
          const relative = path.relative(this.objectsRoot, full).split(path.sep).join('/');
          if (relative.startsWith(prefix)) found.push(relative);
        }
      }
    };
    // Walk only the directory the prefix names, not the whole tree.
    const slash = prefix.lastIndexOf('/');
    await walk(slash === -1 ? this.objectsRoot : resolveInside(this.objectsRoot, prefix.slice(0, slash)));
    return found.sort();
  }

  private sidecarPath(objectPath: string): string {
    return resolveInside(this.metaRoot, `${objectPath}.json`);
  }
}
