import {execFileSync} from 'node:child_process';
import {chmodSync, readdirSync, statSync, writeFileSync, rmSync} from 'node:fs';
import {join} from 'node:path';

function walk(dir: string, visit: (path: string, isDir: boolean) => void): void {
  for (const entry of readdirSync(dir, {withFileTypes: true})) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) walk(path, visit);
    visit(path, entry.isDirectory());
  }
  visit(dir, true);
}

/** Whether a new file can still be made in `dir`. */
function writable(dir: string): boolean {
  const probe = join(dir, `.probe-${process.pid}`);
  try {
    writeFileSync(probe, '');
    rmSync(probe);
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes `dir` and everything in it read-only, as a read-only volume would be:
 * by permissions, or as root (whom permissions do not stop) with the
 * immutable attribute. Returns how to undo it, or null when neither works
 * on this file system.
 */
export function makeReadOnly(dir: string): (() => void) | null {
  if (process.getuid?.() !== 0) {
    const modes = new Map<string, number>();
    walk(dir, path => {
      const mode = statSync(path).mode & 0o7777;
      modes.set(path, mode);
      chmodSync(path, mode & ~0o222);
    });
    const undo = () => {
      for (const [path, mode] of modes) chmodSync(path, mode);
    };
    if (!writable(dir)) return undo;
    undo();
    return null;
  }
  try {
    execFileSync('chattr', ['-R', '+i', dir], {stdio: 'ignore'});
  } catch {
    return null;
  }
  const undo = () => execFileSync('chattr', ['-R', '-i', dir], {stdio: 'ignore'});
  if (!writable(dir)) return undo;
  undo();
  return null;
}
