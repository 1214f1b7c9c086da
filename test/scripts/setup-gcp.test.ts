import {spawnSync} from 'node:child_process';
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';

/**
 * scripts/setup-gcp.sh is run with a fake `gcloud` (and `gsutil`) first on
 * PATH that records every call, so nothing here can reach Google Cloud.
 */

const SCRIPT = join(__dirname, '..', '..', 'scripts', 'setup-gcp.sh');
const PROJECT = 'my-proj-123';
const SA_EMAIL = `imagegen-runtime@${PROJECT}.iam.gserviceaccount.com`;
const SA_MEMBER = `--member=serviceAccount:${SA_EMAIL}`;
const SCHEDULER_EMAIL = `imagegen-scheduler@${PROJECT}.iam.gserviceaccount.com`;
const FUNCTION_URL = `https://us-central1-${PROJECT}.cloudfunctions.net/imageGen`;
const FAKE_KEY = 'sk-test-DO-NOT-PRINT-4f2a9c';

const APIS = [
  'cloudfunctions.googleapis.com',
  'run.googleapis.com',
  'cloudbuild.googleapis.com',
  'artifactregistry.googleapis.com',
  'storage.googleapis.com',
  'firestore.googleapis.com',
  'secretmanager.googleapis.com',
  'iamcredentials.googleapis.com',
  'logging.googleapis.com',
  'cloudscheduler.googleapis.com',
];

/** The exact --field-config flags of each composite index, in the order they are created. */
const JOB_INDEXES = [
  ['status,order=ascending', 'created_at,order=descending', '__name__,order=descending'],
  ['owner,order=ascending', 'created_at,order=descending', '__name__,order=descending'],
  [
    'owner,order=ascending',
    'status,order=ascending',
    'created_at,order=descending',
    '__name__,order=descending',
  ],
  ['source,order=ascending', 'created_at,order=descending', '__name__,order=descending'],
  [
    'source,order=ascending',
    'status,order=ascending',
    'created_at,order=descending',
    '__name__,order=descending',
  ],
  [
    'owner,order=ascending',
    'source,order=ascending',
    'created_at,order=descending',
    '__name__,order=descending',
  ],
  [
    'owner,order=ascending',
    'source,order=ascending',
    'status,order=ascending',
    'created_at,order=descending',
    '__name__,order=descending',
  ],
  ['status,order=ascending', 'lease_until,order=ascending'],
].map(fields => fields.map(field => `--field-config=field-path=${field}`));

const TTL_GROUPS = ['idempotency', 'quotas', 'quota_reservations'];

/**
 * fail: every call is recorded and fails (for dry runs, which must not call it).
 * missing: describe says NOT_FOUND, everything else succeeds.
 * present: everything exists (describe succeeds, the TTL is ACTIVE, the index exists).
 * denied: describe fails with PERMISSION_DENIED.
 * index-denied: as missing, but creating a composite index fails with PERMISSION_DENIED.
 */
type FakeMode = 'fail' | 'missing' | 'present' | 'denied' | 'index-denied';

const FAKE_GCLOUD = `#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$FAKE_GCLOUD_LOG"
mode="$FAKE_GCLOUD_MODE"
if [[ "$mode" == fail ]]; then
  echo "fake gcloud: must not be called" >&2
  exit 97
fi
args=" $* "
if [[ "$mode" == index-denied && "$args" == *" indexes composite create "* ]]; then
  echo "ERROR: (gcloud) PERMISSION_DENIED: caller may not create indexes" >&2
  exit 1
fi
if [[ "$args" == *" describe "* ]]; then
  case "$mode" in
    missing | index-denied) echo "ERROR: (gcloud) NOT_FOUND: resource not found" >&2; exit 1 ;;
    denied) echo "ERROR: (gcloud) PERMISSION_DENIED: caller does not have permission" >&2; exit 1 ;;
    present) [[ "$args" == *" indexes fields describe "* ]] && echo ACTIVE; exit 0 ;;
  esac
fi
if [[ "$args" == *" secrets create "* ]]; then
  cat > "$FAKE_GCLOUD_STDIN"
fi
if [[ "$mode" == present && "$args" == *" indexes composite create "* ]]; then
  echo "ERROR: (gcloud) ALREADY_EXISTS: index already exists" >&2
  exit 1
fi
exit 0
`;

interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
  /** Commands the script printed ("+ ..." lines), split into words. */
  printed: string[][];
  /** Calls the fake gcloud/gsutil received, one line each. */
  calls: string[];
  /** What `gcloud secrets create` received on stdin, if it was called. */
  secretStdin: string | undefined;
}

let root = '';
let runCount = 0;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'imagegen-setup-gcp-'));
  const bin = join(root, 'bin');
  mkdirSync(bin);
  for (const name of ['gcloud', 'gsutil']) {
    writeFileSync(join(bin, name), FAKE_GCLOUD);
    chmodSync(join(bin, name), 0o755);
  }
});

afterAll(() => rmSync(root, {recursive: true, force: true}));

/** Splits a printed command line into words, undoing the script's single quotes. */
function words(line: string): string[] {
  const out: string[] = [];
  let current = '';
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unbalanced quote in: ${line}`);
      current += line.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (c === '\\' && i + 1 < line.length) {
      current += line[++i];
      inWord = true;
    } else if (c === ' ') {
      if (inWord) out.push(current);
      current = '';
      inWord = false;
    } else {
      current += c;
      inWord = true;
    }
  }
  if (inWord) out.push(current);
  return out;
}

function run(
  args: string[],
  options: {mode?: FakeMode; env?: Record<string, string>; input?: string} = {},
): RunResult {
  const dir = join(root, `run-${++runCount}`);
  mkdirSync(dir);
  const log = join(dir, 'calls.log');
  const stdinFile = join(dir, 'secret-stdin');
  writeFileSync(log, '');
  const result = spawnSync('bash', [SCRIPT, ...args], {
    // A clean environment, so a developer's PROJECT_ID or OPENAI_API_KEY cannot leak in.
    env: {
      PATH: `${join(root, 'bin')}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      HOME: dir,
      TMPDIR: dir,
      FAKE_GCLOUD_LOG: log,
      FAKE_GCLOUD_STDIN: stdinFile,
      FAKE_GCLOUD_MODE: options.mode ?? 'fail',
      ...options.env,
    },
    input: options.input ?? '',
    encoding: 'utf8',
    timeout: 20_000,
  });
  const stdout = result.stdout;
  return {
    status: result.status,
    stdout,
    stderr: result.stderr,
    printed: stdout
      .split('\n')
      .filter(line => line.startsWith('+ '))
      .map(line => words(line.slice(2))),
    calls: readFileSync(log, 'utf8').split('\n').filter(Boolean),
    secretStdin: existsSync(stdinFile) ? readFileSync(stdinFile, 'utf8') : undefined,
  };
}

function dryRun(extraArgs: string[] = [], env: Record<string, string> = {}): RunResult {
  const result = run(['--dry-run', '--project', PROJECT, ...extraArgs], {mode: 'fail', env});
  // Shared by every dry-run test: it succeeds and never calls gcloud.
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  expect(result.calls).toEqual([]);
  return result;
}

/** Printed commands whose first words are `prefix`. */
function commands(result: {printed: string[][]}, ...prefix: string[]): string[][] {
  return result.printed.filter(cmd => prefix.every((word, i) => cmd[i] === word));
}

function only(result: {printed: string[][]}, ...prefix: string[]): string[] {
  const found = commands(result, ...prefix);
  expect(found).toHaveLength(1);
  return found[0]!;
}

/** The whole scheduler job command the script should print and run. */
function reconcileJob(
  verb: 'create' | 'update',
  options: {location?: string; schedule?: string; url?: string; email?: string} = {},
): string[] {
  const url = options.url ?? FUNCTION_URL;
  return [
    'gcloud',
    'scheduler',
    'jobs',
    verb,
    'http',
    'imagegen-reconcile',
    `--location=${options.location ?? 'us-central1'}`,
    `--schedule=${options.schedule ?? '*/10 * * * *'}`,
    '--time-zone=Etc/UTC',
    `--uri=${url}/tasks/reconcile`,
    '--http-method=POST',
    `--oidc-service-account-email=${options.email ?? SCHEDULER_EMAIL}`,
    `--oidc-token-audience=${url}`,
    '--attempt-deadline=300s',
    '--description=imagegen: repair what stopped runs left',
    `--project=${PROJECT}`,
  ];
}

/** The post-deploy grant the script prints for the scheduler account. */
function invokerGrant(email = SCHEDULER_EMAIL, region = 'us-central1'): string {
  return (
    `gcloud functions add-invoker-policy-binding imageGen --region=${region} ` +
    `--member=serviceAccount:${email} --project=${PROJECT}`
  );
}

/** A run that must stop during validation, before printing or calling anything. */
function rejected(args: string[], env: Record<string, string> = {}): RunResult {
  const result = run(['--dry-run', '--project', PROJECT, ...args], {env});
  expect(result.status).not.toBe(0);
  expect(result.printed).toEqual([]);
  expect(result.calls).toEqual([]);
  return result;
}

describe('setup-gcp.sh --dry-run', () => {
  test('never invokes gcloud, not even to describe, and prints every gcloud command', () => {
    const result = dryRun(['--retention-days', '7'], {OPENAI_API_KEY: FAKE_KEY});
    expect(result.calls).toEqual([]);
    // Every resource is treated as missing: all the create commands are printed.
    expect(commands(result, 'gcloud', 'storage', 'buckets', 'create')).toHaveLength(1);
    expect(commands(result, 'gcloud', 'firestore', 'databases', 'create')).toHaveLength(1);
    expect(commands(result, 'gcloud', 'secrets', 'create')).toHaveLength(1);
    expect(commands(result, 'gcloud', 'iam', 'service-accounts', 'create')).toHaveLength(2);
    expect(commands(result, 'gcloud', 'scheduler', 'jobs', 'create')).toHaveLength(1);
    expect(commands(result, 'gcloud', 'scheduler', 'jobs', 'update')).toEqual([]);
    expect(result.printed.some(cmd => cmd.includes('describe'))).toBe(false);
    expect(result.printed.every(cmd => cmd[0] === 'gcloud')).toBe(true);
    expect(result.stdout).toMatch(/Dry run: nothing was changed/);
  });

  test('enables every API the function needs', () => {
    const enable = only(dryRun(), 'gcloud', 'services', 'enable');
    for (const api of APIS) expect(enable).toContain(api);
    expect(enable).toContain(`--project=${PROJECT}`);
  });

  test('creates the bucket in the region with uniform access and public access prevention', () => {
    const create = only(dryRun(), 'gcloud', 'storage', 'buckets', 'create');
    expect(create[4]).toBe(`gs://${PROJECT}-imagegen`);
    expect(create).toEqual(
      expect.arrayContaining([
        '--location=us-central1',
        '--uniform-bucket-level-access',
        '--public-access-prevention',
        `--project=${PROJECT}`,
      ]),
    );
  });

  test('adds no lifecycle rule unless IMAGE_RETENTION_DAYS is set', () => {
    const result = dryRun();
    expect(result.printed.flat().some(word => word.startsWith('--lifecycle-file'))).toBe(false);
    expect(result.stdout).not.toMatch(/"Delete"/);
  });

  test('adds a delete-after-N-days lifecycle rule when IMAGE_RETENTION_DAYS is set', () => {
    for (const result of [dryRun([], {IMAGE_RETENTION_DAYS: '30'}), dryRun(['--retention-days=30'])]) {
      const create = only(result, 'gcloud', 'storage', 'buckets', 'create');
      const lifecycle = create.find(word => word.startsWith('--lifecycle-file='));
      expect(lifecycle).toMatch(/^--lifecycle-file=.*lifecycle\.json$/);
      // The JSON written to the temp file is shown (commented) in the output.
      const json = result.stdout
        .split('\n')
        .filter(line => line.startsWith('#   | '))
        .map(line => line.slice(6))
        .join('\n');
      expect(JSON.parse(json)).toEqual({
        rule: [{action: {type: 'Delete'}, condition: {age: 30, matchesPrefix: ['images/']}}],
      });
    }
  });

  test('rejects an IMAGE_RETENTION_DAYS that is not a positive whole number', () => {
    for (const days of ['0', '-1', '7d', '1.5']) {
      const result = run(['--dry-run', '--project', PROJECT], {env: {IMAGE_RETENTION_DAYS: days}});
      expect(result.status).not.toBe(0);
      expect(result.stderr).toMatch(/IMAGE_RETENTION_DAYS must be a whole number/);
      expect(result.printed).toEqual([]);
      expect(result.calls).toEqual([]);
    }
  });

  test('creates a native-mode Firestore database in the region', () => {
    const create = only(dryRun(), 'gcloud', 'firestore', 'databases', 'create');
    expect(create).toEqual(
      expect.arrayContaining(['--database=(default)', '--location=us-central1', '--type=firestore-native']),
    );
    const named = only(dryRun(['--database', 'imagegen-db']), 'gcloud', 'firestore', 'databases', 'create');
    expect(named).toContain('--database=imagegen-db');
  });

  test('enables the TTL policy on expires_at in idempotency, quotas and quota_reservations', () => {
    const ttls = commands(dryRun(['--database', 'imagegen-db']), 'gcloud', 'firestore', 'fields', 'ttls');
    expect(ttls).toEqual(
      TTL_GROUPS.map(group => [
        'gcloud',
        'firestore',
        'fields',
        'ttls',
        'update',
        'expires_at',
        `--collection-group=${group}`,
        '--enable-ttl',
        '--database=imagegen-db',
        `--project=${PROJECT}`,
        '--async',
      ]),
    );
  });

  test('creates the four jobs indexes with their exact fields, and notes the per-metadata-key indexes', () => {
    const result = dryRun();
    const indexes = commands(result, 'gcloud', 'firestore', 'indexes', 'composite', 'create');
    expect(indexes.map(index => index.filter(word => word.startsWith('--field-config=')))).toEqual(
      JOB_INDEXES,
    );
    for (const index of indexes) {
      expect(index.filter(word => !word.startsWith('--field-config='))).toEqual([
        'gcloud',
        'firestore',
        'indexes',
        'composite',
        'create',
        '--collection-group=jobs',
        '--query-scope=collection',
        '--database=(default)',
        `--project=${PROJECT}`,
        '--async',
      ]);
    }
    // quota_reservations is only ever queried by a range on created_at ordered by created_at.
    expect(indexes.flat()).not.toContain('--collection-group=quota_reservations');
    expect(result.stdout).toContain(
      "Composite index for the reconciler's expired leases (jobs: status ASC, lease_until ASC)",
    );
    expect(result.stdout).toMatch(/NOTE: .*metadata/);
    expect(result.stdout).toMatch(/one composite index per key/);
  });

  test('grants exactly four roles, each scoped to its own resource', () => {
    const result = dryRun();
    const bindings = result.printed.filter(cmd => cmd.includes('add-iam-policy-binding'));
    const summary = bindings.map(cmd => {
      const at = cmd.indexOf('add-iam-policy-binding');
      return {
        scope: cmd.slice(1, at).join(' '),
        target: cmd[at + 1],
        member: cmd.find(word => word.startsWith('--member=')),
        role: cmd.find(word => word.startsWith('--role=')),
      };
    });
    expect(summary).toEqual([
      {
        scope: 'storage buckets',
        target: `gs://${PROJECT}-imagegen`,
        member: SA_MEMBER,
        role: '--role=roles/storage.objectAdmin',
      },
      {scope: 'projects', target: PROJECT, member: SA_MEMBER, role: '--role=roles/datastore.user'},
      {
        scope: 'secrets',
        target: 'openai-api-key',
        member: SA_MEMBER,
        role: '--role=roles/secretmanager.secretAccessor',
      },
      {
        scope: 'iam service-accounts',
        target: SA_EMAIL,
        member: SA_MEMBER,
        role: '--role=roles/iam.serviceAccountTokenCreator',
      },
    ]);
  });

  test('--edit-source-buckets grants read on objects of each source bucket, and nothing more', () => {
    for (const result of [
      dryRun(['--edit-source-buckets', 'shots-raw, shots-archive,,' + `${PROJECT}-imagegen`]),
      dryRun([], {EDIT_SOURCE_BUCKETS: 'shots-raw,shots-archive'}),
    ]) {
      const reads = commands(result, 'gcloud', 'storage', 'buckets', 'add-iam-policy-binding').filter(cmd =>
        cmd.includes('--role=roles/storage.objectViewer'),
      );
      expect(reads.map(cmd => cmd[4])).toEqual(['gs://shots-raw', 'gs://shots-archive']);
      for (const cmd of reads) expect(cmd).toContain(SA_MEMBER);
      expect(result.printed.flat().filter(word => word.startsWith('--role='))).toHaveLength(6);
      expect(result.stdout).toContain('EDIT_SOURCE_BUCKETS: "shots-raw,shots-archive"');
    }
    expect(
      commands(dryRun(), 'gcloud', 'storage', 'buckets', 'add-iam-policy-binding').map(cmd => cmd[4]),
    ).toEqual([`gs://${PROJECT}-imagegen`]);
  });

  test('rejects an edit source that is not a bucket name', () => {
    const result = rejected(['--edit-source-buckets', 'gs://shots-raw']);
    expect(result.stderr).toContain("'gs://shots-raw' is not a valid bucket name");
  });

  test('grants no project-level storage role and no owner or editor role', () => {
    const result = dryRun(['--retention-days', '3']);
    const projectBindings = commands(result, 'gcloud', 'projects', 'add-iam-policy-binding');
    expect(projectBindings).toHaveLength(1);
    expect(projectBindings[0]).toContain('--role=roles/datastore.user');
    const roles = result.printed.flat().filter(word => word.startsWith('--role='));
    expect(roles).toHaveLength(4);
    for (const role of roles) expect(role).not.toMatch(/roles\/(owner|editor|viewer|storage\.admin)$/);
    expect(result.stdout).not.toMatch(/roles\/(owner|editor)\b/);
  });

  test('creates a dedicated service account and uses it in the deploy command', () => {
    const result = dryRun();
    const create = commands(result, 'gcloud', 'iam', 'service-accounts', 'create')[0]!;
    expect(create[4]).toBe('imagegen-runtime');
    expect(result.stdout).toMatch(
      /gcloud functions deploy imageGen --gen2 --runtime=nodejs24 --region=us-central1/,
    );
    expect(result.stdout).toContain(`--service-account=${SA_EMAIL}`);
    expect(result.stdout).toContain('--set-secrets=OPENAI_API_KEY=openai-api-key:latest');
    expect(result.stdout).toContain('--no-allow-unauthenticated');
  });

  test('never prints the secret value, even when OPENAI_API_KEY is set', () => {
    const result = dryRun([], {OPENAI_API_KEY: FAKE_KEY});
    expect(result.stdout).not.toContain(FAKE_KEY);
    expect(result.stderr).not.toContain(FAKE_KEY);
    const create = only(result, 'gcloud', 'secrets', 'create');
    expect(create).toEqual([
      'gcloud',
      'secrets',
      'create',
      'openai-api-key',
      '--replication-policy=automatic',
      `--project=${PROJECT}`,
      '--data-file=-',
    ]);
    expect(result.stdout).toMatch(/key from OPENAI_API_KEY \(passed on stdin, not shown\)/);
  });

  test('names from flags and environment flow into every command', () => {
    const result = dryRun(
      ['--region', 'europe-west4', '--bucket', 'imgs-bucket', '--service-account=img-sa-test'],
      {
        SECRET_NAME: 'oai-key',
      },
    );
    const url = `https://europe-west4-${PROJECT}.cloudfunctions.net/imageGen`;
    expect(only(result, 'gcloud', 'scheduler', 'jobs', 'create')).toEqual(
      reconcileJob('create', {location: 'europe-west4', url}),
    );
    expect(result.stdout).toContain(invokerGrant(SCHEDULER_EMAIL, 'europe-west4'));
    const sa = `img-sa-test@${PROJECT}.iam.gserviceaccount.com`;
    expect(only(result, 'gcloud', 'storage', 'buckets', 'create')).toEqual(
      expect.arrayContaining(['gs://imgs-bucket', '--location=europe-west4']),
    );
    expect(only(result, 'gcloud', 'storage', 'buckets', 'add-iam-policy-binding')[4]).toBe(
      'gs://imgs-bucket',
    );
    expect(only(result, 'gcloud', 'secrets', 'add-iam-policy-binding')[3]).toBe('oai-key');
    expect(only(result, 'gcloud', 'iam', 'service-accounts', 'add-iam-policy-binding')[4]).toBe(sa);
    expect(only(result, 'gcloud', 'firestore', 'databases', 'create')).toContain('--location=europe-west4');
    expect(result.stdout).toContain('--set-secrets=OPENAI_API_KEY=oai-key:latest');
  });
});

describe('setup-gcp.sh reconciler schedule (--dry-run)', () => {
  test('creates a dedicated scheduler account and grants it no role', () => {
    const result = dryRun();
    const creates = commands(result, 'gcloud', 'iam', 'service-accounts', 'create');
    expect(creates[1]).toEqual([
      'gcloud',
      'iam',
      'service-accounts',
      'create',
      'imagegen-scheduler',
      '--display-name=imagegen reconcile scheduler',
      `--project=${PROJECT}`,
    ]);
    // Its one role (run.invoker on the function) can only be granted after the deploy.
    const schedulerWords = result.printed.filter(cmd =>
      cmd.some(word => word.includes('imagegen-scheduler')),
    );
    expect(schedulerWords.map(cmd => cmd.slice(0, 4).join(' '))).toEqual([
      'gcloud iam service-accounts create',
      'gcloud scheduler jobs create',
    ]);
    // Nor is anything granted to Cloud Scheduler's service agent.
    expect(result.printed.flat().join(' ')).not.toMatch(/gcp-sa-cloudscheduler|serviceAgent/);
  });

  test('creates the reconcile job: POST every 10 minutes to /tasks/reconcile with an OIDC token', () => {
    const job = only(dryRun(), 'gcloud', 'scheduler', 'jobs', 'create');
    expect(job).toEqual(reconcileJob('create'));
    // Spelled out: the target is the task URL, the token's audience the function URL.
    expect(job).toContain(`--uri=https://us-central1-${PROJECT}.cloudfunctions.net/imageGen/tasks/reconcile`);
    expect(job).toContain(`--oidc-token-audience=https://us-central1-${PROJECT}.cloudfunctions.net/imageGen`);
    expect(job).toContain('--schedule=*/10 * * * *');
  });

  test('prints the invoker grant for the scheduler account after the deploy command', () => {
    const result = dryRun();
    const deployAt = result.stdout.indexOf('gcloud functions deploy imageGen');
    const grantAt = result.stdout.indexOf(invokerGrant());
    expect(deployAt).toBeGreaterThan(-1);
    expect(grantAt).toBeGreaterThan(deployAt);
    // It is printed for later, not run now: no "+ " line grants run.invoker.
    expect(commands(result, 'gcloud', 'functions')).toEqual([]);
    expect(result.stdout).toMatch(/That binding is all the scheduler needs: the job sends an OIDC ID token/);
    // The service agent's role is only described, for projects that enabled the API before 2019-03-19.
    expect(result.stdout).toMatch(/^#.*--role=roles\/cloudscheduler\.serviceAgent/m);
    expect(result.stdout).not.toMatch(/serviceAccountTokenCreator.*gcp-sa-cloudscheduler/);
  });

  test('--function-url and FUNCTION_URL replace the target and the audience', () => {
    const url = 'https://images.example.com/api';
    for (const result of [
      dryRun(['--function-url', `${url}/`]),
      dryRun([`--function-url=${url}`]),
      dryRun([], {FUNCTION_URL: url}),
    ]) {
      expect(only(result, 'gcloud', 'scheduler', 'jobs', 'create')).toEqual(reconcileJob('create', {url}));
      expect(result.stdout).toMatch(/FUNCTION_URL was given: use your function's name in place of imageGen/);
      expect(result.stdout).toContain(`--add-custom-audiences=${url} `);
    }
    expect(dryRun().stdout).not.toMatch(/FUNCTION_URL was given/);
  });

  test('--reconcile-schedule and RECONCILE_SCHEDULE replace the schedule', () => {
    for (const result of [
      dryRun(['--reconcile-schedule', '0 */2 * * MON-FRI']),
      dryRun(['--reconcile-schedule=0 */2 * * MON-FRI']),
      dryRun([], {RECONCILE_SCHEDULE: '0 */2 * * MON-FRI'}),
    ]) {
      expect(only(result, 'gcloud', 'scheduler', 'jobs', 'create')).toEqual(
        reconcileJob('create', {schedule: '0 */2 * * MON-FRI'}),
      );
    }
  });

  test('--scheduler-account and SCHEDULER_ACCOUNT name the account, the token and the grant', () => {
    const email = `cron-caller@${PROJECT}.iam.gserviceaccount.com`;
    for (const result of [
      dryRun(['--scheduler-account', 'cron-caller']),
      dryRun([], {SCHEDULER_ACCOUNT: 'cron-caller'}),
    ]) {
      expect(commands(result, 'gcloud', 'iam', 'service-accounts', 'create')[1]![4]).toBe('cron-caller');
      expect(only(result, 'gcloud', 'scheduler', 'jobs', 'create')).toEqual(reconcileJob('create', {email}));
      expect(result.stdout).toContain(invokerGrant(email));
      expect(result.stdout).not.toContain(SCHEDULER_EMAIL);
    }
  });
});

describe('setup-gcp.sh arguments', () => {
  test('fails with a clear message when --project is missing', () => {
    for (const args of [['--dry-run'], []]) {
      const result = run(args);
      expect(result.status).not.toBe(0);
      expect(result.stderr).toMatch(/project is required: pass --project PROJECT_ID/);
      expect(result.printed).toEqual([]);
      expect(result.calls).toEqual([]);
    }
  });

  test('fails when --project has no value, or on an unknown option', () => {
    const noValue = run(['--dry-run', '--project']);
    expect(noValue.status).not.toBe(0);
    expect(noValue.stderr).toMatch(/--project needs a value/);
    const unknown = run(['--dry-run', '--project', PROJECT, '--bogus']);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toMatch(/unknown argument '--bogus'/);
    expect([...noValue.calls, ...unknown.calls]).toEqual([]);
  });

  test('rejects a function URL that is not https, or has a query, fragment or the task path', () => {
    for (const url of [
      'http://us-central1-my-proj-123.cloudfunctions.net/imageGen',
      'us-central1-my-proj-123.cloudfunctions.net/imageGen',
      'https://',
      'https://host.example.com/imageGen?x=1',
      'https://host.example.com/imageGen#frag',
      'https://host example.com',
    ]) {
      for (const result of [rejected(['--function-url', url]), rejected([], {FUNCTION_URL: url})]) {
        expect(result.stderr).toMatch(/FUNCTION_URL must be an https URL with no query or fragment/);
      }
    }
    const task = rejected(['--function-url', `${FUNCTION_URL}/tasks/reconcile`]);
    expect(task.stderr).toMatch(/FUNCTION_URL is the function's base URL; \/tasks\/reconcile is added/);
  });

  test('rejects a reconcile schedule that is not five cron fields', () => {
    for (const schedule of [
      '*/10 * * *',
      '*/10 * * * * *',
      'every 10 minutes',
      '*/10 * * * ;',
      '*/10\n* * * *',
    ]) {
      for (const result of [
        rejected(['--reconcile-schedule', schedule]),
        rejected([], {RECONCILE_SCHEDULE: schedule}),
      ]) {
        expect(result.stderr).toMatch(/RECONCILE_SCHEDULE must be a cron schedule of five fields/);
      }
    }
  });

  test('rejects an invalid scheduler account name, or the runtime account as the scheduler account', () => {
    for (const name of ['Sched', 'imagegen_scheduler', '1scheduler', 'x'.repeat(31)]) {
      for (const result of [
        rejected(['--scheduler-account', name]),
        rejected([], {SCHEDULER_ACCOUNT: name}),
      ]) {
        expect(result.stderr).toContain(`'${name}' is not a valid service account name`);
      }
    }
    const same = rejected(['--scheduler-account', 'imagegen-runtime']);
    expect(same.stderr).toMatch(/scheduler account must not be the runtime service account/);
  });

  test('accepts PROJECT_ID from the environment', () => {
    const result = run(['--dry-run'], {env: {PROJECT_ID: PROJECT}});
    expect(result.status).toBe(0);
    expect(only(result, 'gcloud', 'services', 'enable')).toContain(`--project=${PROJECT}`);
    expect(result.calls).toEqual([]);
  });
});

describe('setup-gcp.sh against a fake gcloud', () => {
  test('creates what is missing and passes the key on stdin only', () => {
    const result = run(['--project', PROJECT], {mode: 'missing', env: {OPENAI_API_KEY: FAKE_KEY}});
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const created = result.calls
      .filter(call => / create /.test(call))
      .map(call => call.split(' ').slice(0, 5).join(' '));
    expect(created).toEqual([
      `gcloud storage buckets create gs://${PROJECT}-imagegen`,
      'gcloud firestore databases create --database=(default)',
      ...JOB_INDEXES.map(() => 'gcloud firestore indexes composite create'),
      'gcloud secrets create openai-api-key --replication-policy=automatic',
      'gcloud iam service-accounts create imagegen-runtime',
      'gcloud iam service-accounts create imagegen-scheduler',
      'gcloud scheduler jobs create http',
    ]);
    expect(
      result.calls
        .filter(call => call.startsWith('gcloud firestore fields ttls update expires_at'))
        .map(call => call.split(' ')[6]),
    ).toEqual(TTL_GROUPS.map(group => `--collection-group=${group}`));
    // The job was looked up, found missing, and created with the exact flags.
    expect(result.calls).toContain(
      `gcloud scheduler jobs describe imagegen-reconcile --location=us-central1 --project=${PROJECT}`,
    );
    expect(result.calls.filter(call => call.startsWith('gcloud scheduler jobs create'))).toEqual([
      reconcileJob('create').join(' '),
    ]);
    expect(result.calls.some(call => call.startsWith('gcloud scheduler jobs update'))).toBe(false);
    expect(result.secretStdin).toBe(FAKE_KEY);
    expect(result.calls.join('\n')).not.toContain(FAKE_KEY);
    expect(result.stdout + result.stderr).not.toContain(FAKE_KEY);
    // Each command that ran was printed first.
    const printed = result.printed.map(cmd => cmd.join(' '));
    for (const call of result.calls) expect(printed).toContain(call);
    expect(result.calls.some(call => call.startsWith('gsutil'))).toBe(false);
  });

  test('reads the key from stdin when OPENAI_API_KEY is not set', () => {
    const result = run(['--project', PROJECT], {mode: 'missing', input: 'sk-from-stdin-77\n'});
    expect(result.status).toBe(0);
    expect(result.secretStdin).toBe('sk-from-stdin-77');
    expect(result.stdout + result.stderr).not.toContain('sk-from-stdin-77');
  });

  test('re-running when everything exists creates nothing but attempts the indexes, and updates the job', () => {
    const result = run(['--project', PROJECT, '--retention-days', '14'], {
      mode: 'present',
      env: {OPENAI_API_KEY: FAKE_KEY},
    });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const creates = result.calls.filter(call => / create /.test(call));
    // Only the index creates are attempted (they have no describe), and ALREADY_EXISTS is accepted.
    expect(creates).toHaveLength(JOB_INDEXES.length);
    for (const create of creates) expect(create).toMatch(/^gcloud firestore indexes composite create /);
    expect(result.stdout.match(/^# The index already exists$/gm)).toHaveLength(JOB_INDEXES.length);
    // Every TTL was checked, and none was changed.
    expect(
      result.calls
        .filter(call => call.startsWith('gcloud firestore indexes fields describe expires_at'))
        .map(call => call.split(' ')[6]),
    ).toEqual(TTL_GROUPS.map(group => `--collection-group=${group}`));
    expect(result.calls.some(call => call.includes('ttls update'))).toBe(false);
    // Both service accounts were found, so neither was created; the job is brought back to its flags.
    expect(result.calls).toContain(
      `gcloud iam service-accounts describe ${SCHEDULER_EMAIL} --project=${PROJECT}`,
    );
    expect(result.calls.filter(call => call.startsWith('gcloud scheduler jobs update'))).toEqual([
      reconcileJob('update').join(' '),
    ]);
    expect(result.stdout).toMatch(/Scheduler job imagegen-reconcile exists: updating it/);
    expect(result.secretStdin).toBeUndefined();
    // The existing bucket gets the required settings enforced.
    const update = result.calls.find(call => call.startsWith('gcloud storage buckets update'));
    expect(update).toMatch(/--uniform-bucket-level-access --public-access-prevention --lifecycle-file=/);
    expect(result.calls.filter(call => call.includes('add-iam-policy-binding'))).toHaveLength(4);
  });

  test('stops when an index cannot be created for a reason other than ALREADY_EXISTS', () => {
    const result = run(['--project', PROJECT], {mode: 'index-denied', env: {OPENAI_API_KEY: FAKE_KEY}});
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/PERMISSION_DENIED: caller may not create indexes/);
    expect(result.stderr).toMatch(/could not create the jobs index for listing jobs by status/);
    // It stopped at the first index: nothing after it was attempted.
    expect(result.calls.filter(call => call.includes('indexes composite create'))).toHaveLength(1);
    expect(
      result.calls.some(call => /secrets create|service-accounts create|scheduler jobs/.test(call)),
    ).toBe(false);
  });

  test('stops when a describe check fails for a reason other than not found', () => {
    const result = run(['--project', PROJECT], {mode: 'denied', env: {OPENAI_API_KEY: FAKE_KEY}});
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/PERMISSION_DENIED/);
    expect(result.stderr).toMatch(/could not check whether the resource exists/);
    expect(result.calls.some(call => / create /.test(call))).toBe(false);
  });
});
