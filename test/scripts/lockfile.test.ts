import {spawnSync} from 'node:child_process';
import {join} from 'node:path';

// `npm ci` (CI, and the Cloud Run functions build) refuses a lockfile that lacks an optional
// platform package; a lockfile written against a mirror without them must be completed.
test('package-lock.json names every optional platform package, so npm ci accepts it', () => {
  const result = spawnSync(
    process.execPath,
    [join(__dirname, '../../scripts/complete-lockfile.mjs'), '--check'],
    {
      encoding: 'utf8',
    },
  );
  expect(result.stderr).toBe('');
  expect(result.stdout.trim()).toBe('package-lock.json is complete');
  expect(result.status).toBe(0);
});
