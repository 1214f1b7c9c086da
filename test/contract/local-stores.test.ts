import {mkdtempSync} from 'node:fs';
import {join} from 'node:path';
import {LocalObjectStore} from '../../src/adapters/local/object-store';
import {SqliteMetadataStore} from '../../src/adapters/local/sqlite-metadata-store';
import {useTempDir} from '../support/temp-dir';
import {metadataStoreContract, objectStoreContract} from './store-contract';

const dataDir = useTempDir();

objectStoreContract('local disk', () => new LocalObjectStore(dataDir()));

// A fresh data directory per test, as the memory store is fresh per test: the contract's
// stale-job and reservation listings see every record in the store.
const metadataStores: SqliteMetadataStore[] = [];
afterAll(() => Promise.all(metadataStores.map(store => store.close())));
metadataStoreContract('local SQLite', () => {
  const store = new SqliteMetadataStore(mkdtempSync(join(dataDir(), 'metadata-')));
  metadataStores.push(store);
  return store;
});

describe('LocalObjectStore paths', () => {
  test.each(['../escape.png', '/etc/passwd', 'images/../../x.png', ''])('refuses %j', async path => {
    const store = new LocalObjectStore(dataDir());
    await expect(store.put(path, Buffer.from('x'), {contentType: 'image/png', metadata: {}})).rejects.toThrow(
      /store path/i,
    );
  });
});
