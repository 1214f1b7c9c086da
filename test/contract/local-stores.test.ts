import {LocalImageStore} from '../../src/adapters/local-image-store';
import {LocalMetadataStore} from '../../src/adapters/local-metadata-store';
import {useTempDir} from '../support/temp-dir';
import {imageStoreContract, metadataStoreContract} from './store-contract';

const dataDir = useTempDir();

imageStoreContract('local disk', () => new LocalImageStore(dataDir()));
metadataStoreContract('local disk', () => new LocalMetadataStore(dataDir()));

describe('LocalImageStore paths', () => {
  test.each(['../escape.png', '/etc/passwd', 'images/../../x.png', ''])('refuses %j', async path => {
    const store = new LocalImageStore(dataDir());
    await expect(store.put(path, Buffer.from('x'), {contentType: 'image/png', metadata: {}})).rejects.toThrow(
      /store path/i,
    );
  });
});
