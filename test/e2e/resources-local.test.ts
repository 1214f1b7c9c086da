import {readdirSync, existsSync} from 'node:fs';
import {join, relative} from 'node:path';
import {useTempDir} from '../support/temp-dir';
import {resourceSuite} from './resources-suite';

const dataDir = useTempDir();

resourceSuite('local store', {
  env: () => ({DATA_DIR: dataDir()}),
  objectPaths: async () => {
    const root = join(dataDir(), 'objects');
    if (!existsSync(root)) return [];
    return readdirSync(root, {recursive: true, withFileTypes: true})
      .filter(entry => entry.isFile())
      .map(entry => relative(root, join(entry.parentPath, entry.name)));
  },
});
