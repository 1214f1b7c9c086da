import {LocalMetadataStore} from '../../src/adapters/local/metadata-store';
import {LocalObjectStore} from '../../src/adapters/local/object-store';
import {useTempDir} from '../support/temp-dir';
import {metadataStoreContract, objectStoreContract} from './store-contract';

const dataDir = useTempDir();

objectStoreContract('local disk', () => new LocalObjectStore(dataDir()));
metadataStoreContract('local disk', () => new LocalMetadataStore(dataDir()));

describe('LocalObjectStore paths', () => {
  test.each(['../escape.png', '/etc/passwd', 'images/../../x.png', ''])('refuses %j', async path => {
    const store = new LocalObjectStore(dataDir());
    await expect(store.put(path, Buffer.from('x'), {contentType: 'image/png', metadata: {}})).rejects.toThrow(
      /store path/i,
    );
  });
});
