/** Types of firestore-emulator.mjs, for the TypeScript suites that start an emulator of their own. */
export interface StartedEmulator {
  /** 127.0.0.1:PORT, for FIRESTORE_EMULATOR_HOST. */
  host: string;
  /** The gcloud process, leader of the process group the emulator runs in. */
  pid: number;
  stop(): void;
}

export function freePort(): Promise<number>;
export function hasGcloud(): boolean;
export function startFirestoreEmulator(options?: {timeoutMs?: number}): Promise<StartedEmulator>;
