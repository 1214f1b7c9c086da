// Starting, watching and stopping the processes the bench needs. Every process
// started here is remembered and stopped by its own id when the bench ends.
import {execFileSync, fork, spawn} from 'node:child_process';
import {existsSync, readFileSync, readdirSync, writeFileSync} from 'node:fs';
import {
  freePort,
  hasGcloud,
  startFirestoreEmulator as startEmulator,
} from '../../test/support/firestore-emulator.mjs';
import {fileURLToPath} from 'node:url';
import {join} from 'node:path';

export const root = fileURLToPath(new URL('../..', import.meta.url));
const benchDir = join(root, 'bench');

/** Node 24 from the project's own `node` package; the running node otherwise. */
export const nodeBin = existsSync(join(root, 'node_modules/node/bin/node'))
  ? join(root, 'node_modules/node/bin/node')
  : process.execPath;

const frameworkMain = join(root, 'node_modules/@google-cloud/functions-framework/build/src/main.js');

/** pid -> how to stop it; emptied as processes exit. */
const running = new Map();

function track(child, stop) {
  running.set(child.pid, stop);
  child.once('exit', () => running.delete(child.pid));
}

/** Stops every process the bench started and has not stopped yet (by pid). */
export function stopAll() {
  for (const [pid, stop] of running) {
    try {
      stop();
    } catch {
      // already gone
    }
    running.delete(pid);
  }
}

export {freePort};

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Keeps the last `max` characters a stream wrote (for error reports). */
function tail(stream, max = 8000) {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', chunk => {
    text = (text + chunk).slice(-max);
  });
  return () => text;
}

/**
 * Starts bench/service-process.mjs (the fake OpenAI server or the GCS test
 * server) in its own process and returns an RPC handle to it.
 */
export async function startService(kind, args = []) {
  const child = fork(join(benchDir, 'service-process.mjs'), [kind, ...args], {
    execPath: nodeBin,
    execArgv: ['--no-warnings'],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  track(child, () => child.kill('SIGKILL'));
  const output = tail(child.stderr);
  child.stdout.resume();
  let nextId = 1;
  const pending = new Map();
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${kind} did not start in 30 s:\n${output()}`)), 30_000);
    child.on('message', message => {
      if (message?.type === 'ready') {
        clearTimeout(timer);
        resolve(message);
        return;
      }
      const waiter = pending.get(message?.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`${kind}: ${message.error}`));
      else waiter.resolve(message.result);
    });
    child.once('exit', code => {
      clearTimeout(timer);
      const error = new Error(`${kind} exited (${code}):\n${output()}`);
      reject(error);
      for (const waiter of pending.values()) waiter.reject(error);
    });
  });
  const call = (cmd, ...callArgs) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, {resolve, reject});
      child.send({id, cmd, args: callArgs});
    });
  return {
    url: ready.url,
    pid: child.pid,
    call,
    async close() {
      if (child.exitCode !== null) return;
      const exited = new Promise(resolve => child.once('exit', resolve));
      await Promise.race([call('close').catch(() => undefined), sleep(3000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Spawns the real Functions Framework CLI on `source`/`target`. Returns as
 * soon as the process exists: callers measure readiness themselves.
 */
export function spawnFunction({source, target, env, port, nodeArgs = []}) {
  const startedAt = performance.now();
  const child = spawn(
    nodeBin,
    [...nodeArgs, frameworkMain, `--target=${target}`, `--source=${source}`, `--port=${port}`],
    {
      cwd: root,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  track(child, () => child.kill('SIGKILL'));
  const out = tail(child.stdout);
  const err = tail(child.stderr);
  return {
    pid: child.pid,
    port,
    url: `http://127.0.0.1:${port}`,
    startedAt,
    output: () => `${out()}${err()}`,
    exited: () => child.exitCode !== null || child.signalCode !== null,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise(resolve => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export {hasGcloud};

/** The shared emulator starter (test/support/firestore-emulator.mjs), tracked so stopAll() stops it. */
export async function startFirestoreEmulator() {
  const emulator = await startEmulator();
  running.set(emulator.pid, emulator.stop);
  return {
    host: emulator.host,
    pgid: emulator.pid,
    async stop() {
      emulator.stop();
      running.delete(emulator.pid);
    },
  };
}

/** VmRSS and VmHWM (peak RSS) of a process, in bytes. */
export function memoryOf(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = name => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return {rss: kib('VmRSS'), hwm: kib('VmHWM')};
  } catch {
    return {rss: NaN, hwm: NaN};
  }
}

/** Resets a process's VmHWM to its current RSS (Linux clear_refs "5"); false if not allowed. */
export function resetPeakRss(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Samples VmRSS every `everyMs` until stopped; returns the highest sample. */
export function sampleRss(pid, everyMs = 5) {
  let max = memoryOf(pid).rss;
  let samples = 0;
  const timer = setInterval(() => {
    const {rss} = memoryOf(pid);
    samples++;
    if (rss > max) max = rss;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const {rss} = memoryOf(pid);
      return {maxRss: Math.max(max, Number.isNaN(rss) ? 0 : rss), samples};
    },
  };
}

/** Kernel clock ticks per second, the unit of /proc/<pid>/stat CPU times. */
const clockTicks = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], {encoding: 'utf8'}).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ..., utime at 11, stime at 12]. */
function statFields(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** User + system CPU time a process has used so far, in ms (10 ms resolution). */
export function cpuMsOf(pid) {
  const fields = statFields(pid);
  if (!fields) return NaN;
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
}

/** CPU ms of every live process in a process group (the Firestore emulator: gcloud + java). */
export function groupCpuMs(pgid) {
  let total = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const fields = statFields(name);
    if (fields && Number(fields[2]) === pgid)
      total += ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
  }
  return total;
}
