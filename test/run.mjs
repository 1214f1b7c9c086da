// Runs the whole test suite: starts the Firestore emulator (unless one is
// already given in FIRESTORE_EMULATOR_HOST), runs jest, stops the emulator and
// prints one closing line, "N passed, N failed".
import {spawn} from 'node:child_process';
import {mkdirSync, readFileSync, rmSync} from 'node:fs';
import {join} from 'node:path';
import {hasGcloud, startFirestoreEmulator} from './support/firestore-emulator.mjs';

const root = new URL('..', import.meta.url).pathname;
const resultsDir = join(root, '.test-results');
const resultsFile = join(resultsDir, 'jest.json');

let emulator;
const env = {...process.env, METADATA_SERVER_DETECTION: 'none'};
if (!env.FIRESTORE_EMULATOR_HOST) {
  if (hasGcloud()) {
    emulator = await startFirestoreEmulator();
    env.FIRESTORE_EMULATOR_HOST = emulator.host;
    console.log(`Firestore emulator on ${emulator.host}`);
  } else if (process.env.CI) {
    console.error('gcloud is required in CI to run the Firestore emulator');
    console.log('0 passed, 1 failed');
    process.exit(1);
  } else {
    console.warn('gcloud not found: Firestore suites are skipped (install the Cloud SDK to run them)');
  }
}

const stop = () => emulator?.stop();
process.on('exit', stop);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

rmSync(resultsDir, {recursive: true, force: true});
mkdirSync(resultsDir, {recursive: true});
// Run without blocking this process: its event loop keeps draining the emulator's output, which
// would otherwise fill the pipe and block the emulator on its own logging (it logs every failed call).
const jestProcess = spawn(
  process.execPath,
  [
    // The storage and auth clients load node-fetch with a dynamic import(), which
    // jest's module sandbox only allows with this flag.
    '--experimental-vm-modules',
    join(root, 'node_modules/jest/bin/jest.js'),
    '--maxWorkers=2',
    '--json',
    `--outputFile=${resultsFile}`,
    ...process.argv.slice(2),
  ],
  {cwd: root, env, stdio: 'inherit'},
);
// A signal that ends this process ends jest too (a terminal's SIGINT reaches both, a SIGTERM this one only).
for (const signal of ['SIGINT', 'SIGTERM']) process.prependListener(signal, () => jestProcess.kill(signal));
const jest = await new Promise(resolve => jestProcess.on('exit', code => resolve({status: code})));
stop();

let passed = 0;
let failed = 0;
try {
  const results = JSON.parse(readFileSync(resultsFile, 'utf8'));
  passed = results.numPassedTests;
  // A suite that crashes before its tests run has no failed tests of its own.
  failed = results.numFailedTests + results.numRuntimeErrorTestSuites;
} catch {
  failed = 1;
}
if (jest.status !== 0 && failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && jest.status === 0 ? 0 : 1);
