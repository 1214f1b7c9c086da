import {mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';

/** A fresh directory per suite, removed when the suite ends. */
export function useTempDir(): () => string {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'imagegen-test-'));
  });
  afterAll(() => rmSync(dir, {recursive: true, force: true}));
  return () => dir;
}
