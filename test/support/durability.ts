import {join} from 'node:path';
import type {FunctionProcess} from './function-process';

/**
 * UPSTREAM_TIMEOUT_SECONDS for the durability suites: its least value, so a
 * run's lease (upstream timeout + 60 s) is as short as the function allows.
 */
export const UPSTREAM_TIMEOUT_SECONDS = 5;
export const LEASE_MS = (UPSTREAM_TIMEOUT_SECONDS + 60) * 1000;

/** How far ahead a "later" process runs: past every lease taken before it, well within the day. */
export const LATER_MS = LEASE_MS + 5 * 60_000;

/** The callers of the durability scenes: carol, with a daily quota, and an admin that runs the reconciler. */
export const CAROL_KEY = 'carol-key-0123456789abcdef';
export const OPS_KEY = 'ops-key-0123456789abcdef';
export const asCarol = {'x-api-key': CAROL_KEY};
export const asOps = {'x-api-key': OPS_KEY};

/** API_KEYS for carol with `carolQuota` images a day, and the admin. */
export function carolAndOps(carolQuota: number): string {
  return `carol:${CAROL_KEY}:${carolQuota},ops:${OPS_KEY}:admin`;
}

/**
 * Environment that moves a function process's wall clock `offsetMs` ahead
 * (test/support/clock-offset.cjs): the process acts as an instance started
 * that much later, when the leases of earlier runs have ended, without the
 * test waiting for them.
 */
export function clockMovedBy(offsetMs: number): Record<string, string> {
  return {
    NODE_OPTIONS: `--require "${join(__dirname, 'clock-offset.cjs')}"`,
    TEST_CLOCK_OFFSET_MS: String(offsetMs),
  };
}

/**
 * Polls until `probe` gives a value other than undefined, null or false.
 * The bound is generous: it only keeps a broken run from hanging the suite.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== null && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise(resolve => setTimeout(resolve, 10));
  }
}

/** An answer of the function, or `status: 0` when the connection failed (the process was gone). */
export interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

export async function call(
  fn: Pick<FunctionProcess, 'url'>,
  method: 'GET' | 'POST',
  path: string,
  options: {body?: unknown; headers?: Record<string, string>} = {},
): Promise<Answer> {
  let response: Response;
  let text: string;
  try {
    response = await fetch(`${fn.url}${path}`, {
      method,
      headers: {'content-type': 'application/json', ...options.headers},
      ...(options.body === undefined ? {} : {body: JSON.stringify(options.body)}),
    });
    text = await response.text();
  } catch {
    return {status: 0, body: null, headers: new Headers()};
  }
  const json = response.headers.get('content-type')?.startsWith('application/json');
  return {status: response.status, body: json ? JSON.parse(text) : text, headers: response.headers};
}

/** The repairs a reconciler report lists, all kinds together. */
export function repairCount(report: Record<string, string[]>): number {
  return Object.values(report).reduce((sum, list) => sum + list.length, 0);
}
