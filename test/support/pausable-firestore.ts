import {spawnSync} from 'node:child_process';
import {Firestore} from '@google-cloud/firestore';

/** A Firestore emulator of one suite's own, which the suite may freeze and thaw like a stalled backend. */
export interface PausableFirestore {
  /** 127.0.0.1:PORT, for FIRESTORE_EMULATOR_HOST. */
  host: string;
  /** Freezes the emulator (SIGSTOP of its Java process): every call waits, none fails. */
  pause(): void;
  /** Lets it go on (SIGCONT) with whatever reached it meanwhile. */
  resume(): void;
  /** A client for the test itself on this emulator, on the given project. */
  client(projectId: string): Firestore;
  stop(): void;
}

/**
 * Starts an emulator apart from the one test/run.mjs shares between suites,
 * which must never be frozen under them. gcloud runs the emulator as a Java
 * process in its own process group: that process is the one paused.
 */
export async function startPausableFirestore(): Promise<PausableFirestore> {
  const {startFirestoreEmulator} = await import('./firestore-emulator.mjs');
  const emulator = await startFirestoreEmulator();
  let javaPid: number;
  try {
    javaPid = javaProcessOf(emulator.pid);
  } catch (error) {
    emulator.stop();
    throw error;
  }
  const clients: Firestore[] = [];
  let paused = false;
  return {
    host: emulator.host,
    pause() {
      process.kill(javaPid, 'SIGSTOP');
      paused = true;
    },
    resume() {
      process.kill(javaPid, 'SIGCONT');
      paused = false;
    },
    client(projectId) {
      const db = firestoreClientFor(emulator.host, projectId);
      clients.push(db);
      return db;
    },
    stop() {
      // A stopped process ignores SIGTERM until it runs again.
      if (paused) process.kill(javaPid, 'SIGCONT');
      for (const db of clients) void db.terminate().catch(() => undefined);
      emulator.stop();
    },
  };
}

/** The Java process in the emulator's process group. */
function javaProcessOf(groupLeader: number): number {
  const listing = spawnSync('ps', ['-o', 'pid=,comm=', '-g', String(groupLeader)], {encoding: 'utf8'});
  const java = listing.stdout
    .split('\n')
    .map(line => line.trim().split(/\s+/))
    .find(([, command]) => command === 'java');
  if (!java) throw new Error(`no Java process in the emulator's process group:\n${listing.stdout}`);
  return Number(java[0]);
}

/**
 * A client on the emulator at `host`. The client takes FIRESTORE_EMULATOR_HOST
 * over any host it is given, and reads it once, when it is built: it is set
 * for that moment only.
 */
export function firestoreClientFor(host: string, projectId: string): Firestore {
  const shared = process.env.FIRESTORE_EMULATOR_HOST;
  process.env.FIRESTORE_EMULATOR_HOST = host;
  try {
    return new Firestore({projectId, ignoreUndefinedProperties: true});
  } finally {
    if (shared === undefined) delete process.env.FIRESTORE_EMULATOR_HOST;
    else process.env.FIRESTORE_EMULATOR_HOST = shared;
  }
}
