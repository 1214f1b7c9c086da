import * as nodeModule from 'node:module';
import * as path from 'node:path';

/**
 * Node's compile cache keeps the compiled code of every module loaded after
 * this call. `npm run build` (and so the Cloud Run functions build, through
 * gcp-build) fills it next to the compiled function, so an instance starting
 * from those files skips compiling zod, pino, the OpenAI SDK and the Google
 * clients on its cold start. Only for the compiled function, never for tests.
 */
if (__filename.endsWith('.js')) {
  nodeModule.enableCompileCache?.(path.join(__dirname, '.compile-cache'));
}
