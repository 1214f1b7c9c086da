// Lets a plain Node process import the project's TypeScript test servers
// (test/support/*.ts). Node's own type stripping refuses non-erasable syntax
// such as constructor parameter properties (gcs-server.ts uses them), so every
// project .ts file is compiled with the installed @swc/core instead, through
// Node's synchronous module hooks (module.registerHooks, Node >= 22.15).
import {readFileSync} from 'node:fs';
import {createRequire, registerHooks} from 'node:module';
import {fileURLToPath} from 'node:url';

const require = createRequire(import.meta.url);
const projectRoot = fileURLToPath(new URL('..', import.meta.url));

export function registerTsHooks() {
  const swc = require('@swc/core');
  registerHooks({
    // The test servers import each other without an extension, as TypeScript code does.
    resolve(specifier, context, nextResolve) {
      const fromProject = context.parentURL?.startsWith('file:') && context.parentURL.endsWith('.ts');
      if (fromProject && specifier.startsWith('.') && !/\.[cm]?[jt]s$/.test(specifier)) {
        return nextResolve(`${specifier}.ts`, context);
      }
      return nextResolve(specifier, context);
    },
    load(url, context, nextLoad) {
      if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context);
      const filename = fileURLToPath(url);
      if (!filename.startsWith(projectRoot) || filename.includes('/node_modules/'))
        return nextLoad(url, context);
      const {code} = swc.transformSync(readFileSync(filename, 'utf8'), {
        filename,
        sourceMaps: 'inline',
        jsc: {parser: {syntax: 'typescript'}, target: 'es2022'},
        module: {type: 'es6'},
      });
      return {format: 'module', source: code, shortCircuit: true};
    },
  });
}
