import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import type {ImageProvider} from '../../src/core/ports';
import type {GenerateDeps} from '../../src/core/usecases/generate';
import {MemoryMetadataStore, MemoryObjectStore} from './memory-stores';

/** What the generate use case runs on in unit tests: memory stores, the real codec, no edit sources. */
export function generateDeps<P extends ImageProvider>(provider: P) {
  const objects = new MemoryObjectStore();
  const metadata = new MemoryMetadataStore();
  const deps: GenerateDeps = {
    provider,
    objects,
    metadata,
    codec: new HeaderImageCodec(),
    ownBucket: null,
    sourceBuckets: [],
  };
  return {provider, objects, metadata, deps};
}
