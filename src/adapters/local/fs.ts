import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import * as path from 'node:path';

/**
 * File helpers for the local stores. Every write goes to a temporary file in
 * the same directory first, so a reader never sees half a file.
 */

function tempPathFor(file: string): string {
  return `${file}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** Directories known to exist; saves a mkdir call per write on the hot path. */
const existingDirs = new Set<string>();

/**
 * Creates `file` exclusively with `data`, making its directory first unless it
 * is known to exist (and again if it was removed meanwhile).
 */
export async function writeNew(file: string, data: Buffer | string): Promise<void> {
  const dir = path.dirname(file);
  if (!existingDirs.has(dir)) {
    await fs.mkdir(dir, {recursive: true});
    existingDirs.add(dir);
  }
  try {
    await fs.writeFile(file, data, {flag: 'wx'});
  } catch (error) {
    if (!isNotFound(error)) throw error;
    existingDirs.delete(dir);
    await fs.mkdir(dir, {recursive: true});
    existingDirs.add(dir);
    await fs.writeFile(file, data, {flag: 'wx'});
  }
}

async function writeTemp(file: string, data: Buffer | string): Promise<string> {
  const temp = tempPathFor(file);
  await writeNew(temp, data);
  return temp;
}

/** Creates `file` with `data`; fails with EEXIST if it exists (a hard link is atomic and exclusive). */
export async function createExclusive(file: string, data: Buffer | string): Promise<void> {
  const temp = await writeTemp(file, data);
  try {
    await fs.link(temp, file);
  } finally {
    await fs.unlink(temp).catch(() => undefined);
  }
}

/** Replaces `file` with `data` atomically. */
export async function replaceAtomically(file: string, data: Buffer | string): Promise<void> {
  const temp = await writeTemp(file, data);
  try {
    await fs.rename(temp, file);
  } catch (error) {
    await fs.unlink(temp).catch(() => undefined);
    throw error;
  }
}

export function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

export function isAlreadyExists(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'EEXIST';
}

export async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch (error) {
    if (isNotFound(error)) return null;
    throw error;
  }
}

export async function removeFile(file: string): Promise<boolean> {
  try {
    await fs.unlink(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/**
 * Resolves a store-relative path under `root`, refusing anything that would
 * step outside it. Paths come from our own code, but a store should not trust that.
 */
export function resolveInside(root: string, relative: string): string {
  if (relative === '' || relative.includes('\0') || path.isAbsolute(relative)) {
    throw new Error(`Invalid store path: ${JSON.stringify(relative)}`);
  }
  const resolved = path.resolve(root, relative);
  if (!resolved.startsWith(root + path.sep)) {
    throw new Error(`Store path escapes the store: ${JSON.stringify(relative)}`);
  }
  return resolved;
}

/** Runs tasks for the same key one after another (read-modify-write on one file). */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(task);
    this.tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === next) this.tails.delete(key);
    }
  }
}
