import * as path from 'node:path';

/** File-system helpers for the local stores. */

export function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

export function isAlreadyExists(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'EEXIST';
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
