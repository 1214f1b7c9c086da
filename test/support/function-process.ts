import {spawn, spawnSync, type ChildProcess} from 'node:child_process';
import {createServer} from 'node:net';
import {join} from 'node:path';

const root = join(__dirname, '../..');

/** Compiles src/ the way `npm run build` does, into a directory of its own. */
export function buildFunction(outDir: string): void {
  const result = spawnSync(
    process.execPath,
    [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', outDir],
    {
      cwd: root,
      encoding: 'utf8',
    },
  );
  if (result.status !== 0) throw new Error(`build failed:\n${result.stdout}${result.stderr}`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface FunctionProcess {
  url: string;
  pid: number;
  output(): string;
  stop(): Promise<number | null>;
  /** Ends the process at once (SIGKILL), as a crashed or evicted instance ends; resolves once it is gone. */
  kill(): Promise<void>;
}

/** Runs the Functions Framework CLI on the compiled function, as `npm start` and Cloud Run do. */
export async function startFunctionProcess(
  sourceDir: string,
  env: Record<string, string>,
): Promise<FunctionProcess> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    process.execPath,
    [
      join(root, 'node_modules/@google-cloud/functions-framework/build/src/main.js'),
      '--target=imageGen',
      `--source=${join(sourceDir, 'index.js')}`,
      `--port=${port}`,
    ],
    {
      cwd: root,
      env: {PATH: process.env.PATH ?? '', METADATA_SERVER_DETECTION: 'none', ...env},
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  child.stdout!.on('data', chunk => (output += chunk));
  child.stderr!.on('data', chunk => (output += chunk));
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; ; attempt++) {
    if (child.exitCode !== null) throw new Error(`function exited early:\n${output}`);
    try {
      await fetch(`${url}/health`);
      break;
    } catch {
      if (attempt > 200) throw new Error(`function did not start:\n${output}`);
      await new Promise(resolve => setTimeout(resolve, 50));
    }
  }
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  return {
    url,
    pid: child.pid!,
    output: () => output,
    stop: () =>
      new Promise(resolve => {
        if (exited()) return resolve(child.exitCode);
        child.once('exit', code => resolve(code));
        child.kill('SIGTERM');
      }),
    kill: () =>
      new Promise(resolve => {
        if (exited()) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}
