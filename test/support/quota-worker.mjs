// A separate OS process that reserves daily quota in a shared data directory,
// for the cross-process quota test (test/contract/sqlite-store.test.ts).
//
//   node test/support/quota-worker.mjs DATA_DIR SUBJECT LIMIT DAYS ATTEMPTS_PER_DAY
//
// Opens the store, sends {ready} over IPC, waits for "go", then for each day
// tries ATTEMPTS_PER_DAY reservations of one image, and sends back how many
// were granted per day.
import {randomUUID} from 'node:crypto';
import {registerTsHooks} from '../../bench/ts-hooks.mjs';

registerTsHooks();
const {SqliteMetadataStore} = await import('../../src/adapters/local/sqlite-metadata-store.ts');

const [dataDir, subject, limit, days, attempts] = process.argv.slice(2);
const store = new SqliteMetadataStore(dataDir);
await store.ping();
const go = new Promise(resolve => process.once('message', resolve));
process.send({ready: true});
await go;

const granted = [];
for (let day = 0; day < Number(days); day++) {
  const dayName = new Date(Date.UTC(2030, 0, 1 + day)).toISOString().slice(0, 10);
  let count = 0;
  for (let attempt = 0; attempt < Number(attempts); attempt++) {
    const reservation = {
      subject,
      day: dayName,
      jobId: randomUUID(),
      amount: 1,
      createdAt: new Date().toISOString(),
    };
    if ((await store.reserveQuota(reservation, Number(limit))).ok) count++;
  }
  granted.push(count);
}
await store.close();
process.send({granted}, () => process.exit(0));
