import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {metadataStoreContract, objectStoreContract} from './store-contract';

// The stores the use case unit tests run on must behave as the real ones do.
objectStoreContract('memory', () => new MemoryObjectStore());
metadataStoreContract('memory', () => new MemoryMetadataStore());
