// Starts the real Firestore emulator for the test run (test/run.mjs) and the
// benchmarks (bench/): `gcloud emulators firestore start` on a free port, ready
// when it prints "Dev App Server is now running". gcloud starts java as its
// child, so it runs in its own process group and is stopped through it.
import {spawn, spawnSync} from 'node:child_process';
import {createServer} from 'node:net';

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const {port} = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function hasGcloud() {
  return spawnSync('gcloud', ['--version'], {stdio: 'ignore'}).status === 0;
}

/** Resolves to {host, pid, stop()} once the emulator answers. */
export async function startFirestoreEmulator({timeoutMs = 120_000} = {}) {
  const port = await freePort();
  const child = spawn(
    'gcloud',
    ['emulators', 'firestore', 'start', `--host-port=127.0.0.1:${port}`, '--quiet'],
    {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const stop = () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  };
  let output = '';
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`Firestore emulator did not start in ${timeoutMs / 1000} s:\n${output}`)),
        timeoutMs,
      );
      const onData = chunk => {
        output = (output + chunk).slice(-8000);
        if (output.includes('Dev App Server is now running')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('error', error => {
        clearTimeout(timer);
        reject(error);
      });
      child.on('exit', code => {
        clearTimeout(timer);
        reject(new Error(`Firestore emulator exited (${code}):\n${output}`));
      });
    });
  } catch (error) {
    stop();
    throw error;
  }
  child.stdout.resume();
  child.stderr.resume();
  child.removeAllListeners('exit');
  return {host: `127.0.0.1:${port}`, pid: child.pid, stop};
}
