// Fills dist/.compile-cache (see src/compile-cache.ts) by loading the compiled
// function and the clients it loads on first use, as an instance would.
require('../dist/index.js');
require('openai');
require('@google-cloud/storage');
require('@google-cloud/firestore');
