// Type-checked (tsc --strict --noEmit) by vfs-tests/tests/npm_package.rs in a fresh npm
// project with the packed walguard, better-sqlite3 and @types/better-sqlite3,
// @types/node: the declarations accept both libraries' connections and type the results.
import Database from 'better-sqlite3';
import { DatabaseSync } from 'node:sqlite';
import {
  ENTRY_DEFAULT,
  ENTRY_NODEFAULT,
  WalguardError,
  getLoadablePath,
  load,
  platform,
  stats,
  type LoadOptions,
  type WalguardErrorCode,
  type WalguardStats,
} from 'walguard';

const path: string = getLoadablePath();
const key: string = platform();
const entries: [string, string] = [ENTRY_DEFAULT, ENTRY_NODEFAULT];

const bs3 = new Database(':memory:');
load(bs3);
const options: LoadOptions = { default: false };
load(bs3, options);
const node = new DatabaseSync(':memory:', { allowExtension: true });
load(node);

const s: WalguardStats = stats(bs3);
const opened: number = s.db_opened + s.wal_opened + s.shm_mapped;
const any: number = s['files_opened'];
const fromNode: WalguardStats = stats(node);

try {
  stats(new Database(':memory:'));
} catch (e) {
  if (e instanceof WalguardError) {
    const code: WalguardErrorCode = e.code;
    const message: string = e.message;
    void [code, message];
  }
}

// @ts-expect-error: load() takes a connection, not a path.
load('app.db');
// @ts-expect-error: no such option value.
load(bs3, { default: 'yes' });
// @ts-expect-error: counters are numbers.
const wrong: string = stats(bs3).db_opened;

void [path, key, entries, opened, any, fromNode, wrong];
