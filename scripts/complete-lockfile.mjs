// Adds lockfile entries for optional platform packages (native bindings for
// other systems) that the registry mirror used to make the lockfile did not
// serve. Without them `npm ci` refuses the lockfile ("Missing: ... from lock
// file"), and the Cloud Run functions build runs `npm ci`. Each entry names
// the version its parent pins and the os/cpu it is for, so npm skips it on
// other platforms; npm fetches it from the registry where it applies.
//
// Usage: node scripts/complete-lockfile.mjs [--check]
import {readFileSync, writeFileSync} from 'node:fs';

const file = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(file, 'utf8'));
const packages = lock.packages;

const OS = [
  'darwin',
  'linux',
  'win32',
  'freebsd',
  'android',
  'openharmony',
  'netbsd',
  'openbsd',
  'sunos',
  'aix',
];
const CPU = ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64', 'wasm32', 'mips64el'];

function platformOf(name) {
  const parts = name.split('/').pop().split('-');
  const os = parts.find(p => OS.includes(p));
  const cpu = parts.find(p => CPU.includes(p));
  const libc = parts.some(p => p.startsWith('musl'))
    ? 'musl'
    : parts.includes('gnu') || parts.some(p => p.startsWith('gnueabi'))
      ? 'glibc'
      : undefined;
  return {os, cpu, libc};
}

const missing = [];
for (const [path, entry] of Object.entries(packages)) {
  for (const [name, version] of Object.entries(entry.optionalDependencies ?? {})) {
    const nested = `${path ? `${path}/` : ''}node_modules/${name}`;
    if (packages[nested] || packages[`node_modules/${name}`]) continue;
    const {os, cpu, libc} = platformOf(name);
    if (!os || !cpu) continue; // not a platform binding: leave it to npm
    missing.push([
      `node_modules/${name}`,
      {
        version,
        ...(entry.dev ? {dev: true} : {}),
        optional: true,
        os: [os],
        cpu: [cpu],
        ...(libc ? {libc: [libc]} : {}),
      },
    ]);
  }
}

if (process.argv.includes('--check')) {
  if (missing.length > 0) {
    console.error(
      `package-lock.json lacks ${missing.length} platform packages; run: node scripts/complete-lockfile.mjs`,
    );
    process.exit(1);
  }
  console.log('package-lock.json is complete');
} else {
  for (const [key, value] of missing) packages[key] = value;
  lock.packages = Object.fromEntries(
    Object.entries(packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a < b ? -1 : 1)),
  );
  writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
  console.log(`added ${missing.length} entries`);
}
