import {spawnSync} from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import {tmpdir} from 'node:os';
import {dirname, join} from 'node:path';
import {ENV_VARIABLES, loadConfig} from '../../src/config';

/** The deploy files: cloudbuild.yaml, env.yaml.example and .gcloudignore. */

const ROOT = join(__dirname, '..', '..');

// js-yaml 4: load() is safe (no custom types).
const jsYaml = require('js-yaml') as {load: (text: string) => unknown};
const parseYaml = (text: string) => jsYaml.load(text);

interface Step {
  id?: string;
  name: string;
  entrypoint?: string;
  args?: string[];
  script?: string;
  env?: string[];
}

interface BuildConfig {
  steps: Step[];
  substitutions?: Record<string, string>;
}

const build = parseYaml(readFileSync(join(ROOT, 'cloudbuild.yaml'), 'utf8')) as BuildConfig;

function step(id: string): Step {
  const found = build.steps.find(s => s.id === id);
  if (!found) throw new Error(`no step ${id} in cloudbuild.yaml`);
  return found;
}

/** Applies Cloud Build substitutions the way the service does, for the values given. */
function substitute(text: string, values: Record<string, string>): string {
  return text.replace(/\$(\$|[A-Z_][A-Z0-9_]*|\{[A-Z_][A-Z0-9_]*\})/g, (whole, name: string) => {
    if (name === '$') return '$';
    const key = name.replace(/[{}]/g, '');
    if (!(key in values)) throw new Error(`unknown substitution ${whole}`);
    return values[key]!;
  });
}

describe('cloudbuild.yaml', () => {
  test('runs install, lint, typecheck, test, deploy in that order', () => {
    expect(build.steps.map(s => s.id)).toEqual(['install', 'lint', 'typecheck', 'test', 'deploy']);
    // No waitFor: each step waits for the one before it.
    for (const s of build.steps) expect(s).not.toHaveProperty('waitFor');
  });

  test('install, lint and typecheck run the npm scripts on node:24', () => {
    const npmArgs = ['install', 'lint', 'typecheck'].map(id => {
      const s = step(id);
      expect(s.name).toBe('node:24');
      expect(s.entrypoint).toBe('npm');
      return s.args!.join(' ');
    });
    expect(npmArgs[0]).toMatch(/^ci\b/);
    expect(npmArgs.slice(1)).toEqual(['run lint', 'run typecheck']);
  });

  test('the test step has gcloud for the emulator and runs the package test script with node 24', () => {
    const s = step('test');
    expect(s.name).toBe('gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators');
    expect(s.env).toContain('CI=true');
    // Run the step's script here, in a fake workspace whose "test" script leaves a mark.
    const workspace = mkdtempSync(join(tmpdir(), 'imagegen-cloudbuild-'));
    try {
      mkdirSync(join(workspace, 'node_modules', '.bin'), {recursive: true});
      symlinkSync(process.execPath, join(workspace, 'node_modules', '.bin', 'node'));
      writeFileSync(
        join(workspace, 'package.json'),
        JSON.stringify({
          scripts: {
            test: "node -e \"require('fs').writeFileSync('ran', process.version + ' ' + process.env.CI)\"",
          },
        }),
      );
      const args = s.args!.map(arg => substitute(arg, {}).replaceAll('/workspace', workspace));
      const result = spawnSync(s.entrypoint!, args, {
        cwd: workspace,
        // stdin not a socket, and a bare HOME: bash reads no startup files, as in the build.
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {PATH: '/usr/bin:/bin', HOME: workspace, CI: 'true'},
        encoding: 'utf8',
      });
      expect(result.stderr).toBe('');
      expect(result.status).toBe(0);
      expect(result.stdout).toContain(`node ${process.version}`);
      // The node that ran the tests is the one from node_modules/.bin.
      expect(readFileSync(join(workspace, 'ran'), 'utf8')).toBe(`${process.version} true`);
    } finally {
      rmSync(workspace, {recursive: true, force: true});
    }
    // Keeps following package.json rather than a copy of its test command.
    expect(s.args!.join('\n')).toMatch(/require\("\.\/package\.json"\)\.scripts\.test/);
  });

  test('deploys a private gen2 nodejs24 function with the key from Secret Manager', () => {
    const s = step('deploy');
    expect(s.name).toMatch(/^gcr\.io\/google\.com\/cloudsdktool\/(google-cloud-cli|cloud-sdk)/);
    expect(s.entrypoint).toBe('gcloud');
    const args = s.args!;
    expect(args.slice(0, 3)).toEqual(['functions', 'deploy', 'imageGen']);
    expect(args).toEqual(
      expect.arrayContaining([
        '--gen2',
        '--runtime=nodejs24',
        '--region=$_REGION',
        '--source=.',
        '--entry-point=imageGen',
        '--trigger-http',
        '--no-allow-unauthenticated',
        '--service-account=$_SERVICE_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com',
        '--env-vars-file=$_ENV_FILE',
        '--set-secrets=OPENAI_API_KEY=$_SECRET_NAME:latest',
      ]),
    );
    expect(args).not.toContain('--allow-unauthenticated');
    expect(args.some(arg => /^--(set|update)-env-vars=.*OPENAI_API_KEY/.test(arg))).toBe(false);
    for (const flag of ['--memory=', '--cpu=', '--concurrency=', '--timeout=', '--max-instances=']) {
      expect(args.filter(arg => arg.startsWith(flag))).toHaveLength(1);
    }
  });

  test('every substitution used has a default, and every default is used', () => {
    expect(build.substitutions).toEqual({
      _REGION: 'us-central1',
      _SERVICE_ACCOUNT: 'imagegen-runtime',
      _SECRET_NAME: 'openai-api-key',
      _ENV_FILE: 'env.yaml',
    });
    const text = JSON.stringify(build.steps);
    const used = new Set([...text.matchAll(/(?<!\$)\$\{?(_[A-Z0-9_]+)/g)].map(m => m[1]));
    expect([...used].sort()).toEqual(Object.keys(build.substitutions!).sort());
    // Resolves with Cloud Build's built-in PROJECT_ID and the defaults.
    const deploy = step('deploy').args!.map(arg =>
      substitute(arg, {PROJECT_ID: 'p-123456', ...build.substitutions}),
    );
    expect(deploy).toContain('--service-account=imagegen-runtime@p-123456.iam.gserviceaccount.com');
    expect(deploy).toContain('--set-secrets=OPENAI_API_KEY=openai-api-key:latest');
  });
});

describe('env.yaml.example', () => {
  const env = parseYaml(readFileSync(join(ROOT, 'env.yaml.example'), 'utf8')) as Record<string, unknown>;

  test('NODE_OPTIONS is accepted by Node and caps the young generation', () => {
    const heapLimit = (nodeOptions: string) => {
      const child = spawnSync(
        process.execPath,
        ['-e', 'process.stdout.write(String(require("v8").getHeapStatistics().heap_size_limit))'],
        {env: {...process.env, NODE_OPTIONS: nodeOptions}, encoding: 'utf8'},
      );
      // Node refuses to start on a flag NODE_OPTIONS may not carry.
      expect([child.status, child.stderr]).toEqual([0, '']);
      return Number(child.stdout);
    };
    expect(env.NODE_OPTIONS).toMatch(/--max-semi-space-size=\d+/);
    // The heap limit includes the young generation's maximum, so a smaller one shows.
    expect(heapLimit(env.NODE_OPTIONS as string)).toBeLessThan(heapLimit(''));
  });

  test('holds every non-secret setting, each as a string, and no secret', () => {
    // Every variable the function reads, less secrets, older aliases and local-only ones,
    // plus NODE_OPTIONS, which Node itself reads.
    const notInFile = new Set([
      'OPENAI_API_KEY',
      'OPENAI_API',
      'OPENAI_ORG_ID',
      'GCLOUD_PROJECT',
      'API_KEYS',
      'URL_SIGNING_SECRET',
      'STORAGE_EMULATOR_HOST',
      'FUNCTION_TARGET',
      'K_SERVICE',
      'GCE_METADATA_HOST',
    ]);
    expect(Object.keys(env).sort()).toEqual(
      [...ENV_VARIABLES.filter(name => !notInFile.has(name)), 'NODE_OPTIONS'].sort(),
    );
    for (const [key, value] of Object.entries(env)) expect([key, typeof value]).toEqual([key, 'string']);
    expect(env).not.toHaveProperty('OPENAI_API_KEY');
    expect(env).not.toHaveProperty('OPENAI_API');
    expect(env).not.toHaveProperty('API_KEYS');
    expect(env).not.toHaveProperty('URL_SIGNING_SECRET');
  });

  test('is a valid production configuration', () => {
    const config = loadConfig(env as Record<string, string>);
    expect(config.storage).toEqual({
      kind: 'gcp',
      bucket: 'my-project-imagegen',
      projectId: 'my-project',
      firestoreDatabase: '(default)',
    });
    expect(config.urls.mode).toBe('signed');
    expect(config.log.prompts).toBe(false);
    expect(config.defaultModel).toBe('gpt-image-2.6-sunburst');
    // All upstream attempts fit in the function's 540 s timeout.
    const attempts = config.openai.maxRetries + 1;
    expect(attempts * config.openai.timeoutMs).toBeLessThan(540_000);
  });
});

describe('.gcloudignore', () => {
  const hasGcloud = spawnSync('gcloud', ['--version'], {stdio: 'ignore'}).status === 0;

  // `gcloud meta list-files-for-upload` applies .gcloudignore locally; it calls no API.
  const testWithGcloud = hasGcloud ? test : test.skip;
  testWithGcloud('uploads only the sources and the files the remote build needs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'imagegen-gcloudignore-'));
    try {
      const files = [
        'package.json',
        'package-lock.json',
        'tsconfig.json',
        'tsconfig.build.json',
        'src/index.ts',
        'src/http/app.ts',
        'src/.env',
        'dist/index.js',
        'node_modules/pino/index.js',
        'test/unit/config.test.ts',
        'test/scripts/setup-gcp.test.ts',
        'bench/run.mjs',
        'bench/README.md',
        'scripts/setup-gcp.sh',
        'data/jobs/x.json',
        'docs/api.md',
        'README.md',
        'env.yaml',
        'env.yaml.example',
        '.env',
        '.env.local',
        '.git/config',
        'cloudbuild.yaml',
        'jest.config.js',
        'coverage/lcov.info',
        'npm-debug.log',
      ];
      for (const file of files) {
        mkdirSync(dirname(join(dir, file)), {recursive: true});
        writeFileSync(join(dir, file), 'x');
      }
      copyFileSync(join(ROOT, '.gcloudignore'), join(dir, '.gcloudignore'));
      const result = spawnSync('gcloud', ['meta', 'list-files-for-upload', dir], {
        encoding: 'utf8',
        env: {
          ...process.env,
          CLOUDSDK_CONFIG: join(dir, '.gcloud-config'),
          CLOUDSDK_CORE_DISABLE_PROMPTS: '1',
        },
      });
      expect(result.status).toBe(0);
      const uploaded = result.stdout.split('\n').filter(Boolean).sort();
      expect(uploaded).toEqual(
        [
          'package-lock.json',
          'package.json',
          'src/http/app.ts',
          'src/index.ts',
          'tsconfig.build.json',
          'tsconfig.json',
        ].sort(),
      );
    } finally {
      rmSync(dir, {recursive: true, force: true});
    }
  });

  test('re-includes src/ and the build files after ignoring the rest', () => {
    const lines = readFileSync(join(ROOT, '.gcloudignore'), 'utf8')
      .split('\n')
      .map(line => line.trim())
      .filter(line => line && !line.startsWith('#'));
    expect(lines[0]).toBe('/*');
    expect(lines).toEqual(
      expect.arrayContaining([
        '!/src/',
        '!/package.json',
        '!/package-lock.json',
        '!/tsconfig.json',
        '!/tsconfig.build.json',
      ]),
    );
    // dist/ is built remotely by `npm run gcp-build`, so it must not be re-included.
    expect(
      lines.filter(line => line.startsWith('!')).some(line => /dist|node_modules|test|env/.test(line)),
    ).toBe(false);
  });
});
