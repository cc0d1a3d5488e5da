'use strict';
// Checks of the installed walguard package, run by vfs-tests/tests/npm_package.rs in a
// fresh npm project (this file is copied there) where the packed walguard and
// better-sqlite3 are installed.
//
// Usage: node checks.js SCENARIO DIR   (DIR: an empty directory for databases)
//
// Scenarios (each in a process of its own: walguard stays loaded for the process's life):
//   api             better-sqlite3: path, load, stats, errors for wrong arguments, ESM
//   nodefault       better-sqlite3 with { default: false } (run with SQLITE_USE_URI=1)
//   no-binary       a copy of the package without the library, and one on "darwin"
//   node-sqlite     node:sqlite (Node >= 22.13): load, stats, extension loading refused
//   node-nodefault  node:sqlite with { default: false }
//   both            better-sqlite3 and node:sqlite in one process, walguard in both
//
// Prints key=value lines that the Rust test asserts on, then done=1. Any unexpected
// exception ends the script with a stack trace and a non-zero status.

const fs = require('fs');
const path = require('path');

function out(key, value) {
  process.stdout.write(`${key}=${String(value).replace(/\n/g, ' ')}\n`);
}

/** Runs fn; prints KEY.error (the constructor's name), KEY.code and KEY.message. */
function errorOf(key, fn) {
  try {
    fn();
  } catch (e) {
    out(`${key}.error`, (e && e.name) || typeof e);
    out(`${key}.code`, (e && e.code) || 'none');
    out(`${key}.message`, (e && e.message) || String(e));
    return e;
  }
  out(`${key}.error`, 'none');
  return null;
}

function counters(key, s) {
  out(`${key}.type`, typeof s);
  out(`${key}.all_numbers`, Number(Object.values(s).every((v) => Number.isInteger(v))));
  for (const name of ['registrations', 'db_opened', 'wal_opened', 'shm_mapped']) {
    out(`${key}.${name}`, s[name]);
  }
}

function scenarioApi(dir) {
  const Database = require('better-sqlite3');
  const walguard = require('walguard');
  const pkgDir = path.dirname(require.resolve('walguard/package.json'));
  out('version', require('walguard/package.json').version);
  out('platform', walguard.platform());
  const file = walguard.getLoadablePath();
  out('path', path.relative(pkgDir, file));
  out('path_is_file', Number(fs.statSync(file).isFile()));
  out('entry_default', walguard.ENTRY_DEFAULT);
  out('entry_nodefault', walguard.ENTRY_NODEFAULT);

  const early = new Database(':memory:');
  errorOf('stats_before', () => walguard.stats(early));
  errorOf('load_string', () => walguard.load('app.db'));
  errorOf('load_object', () => walguard.load({}));
  errorOf('load_options', () => walguard.load(new Database(':memory:'), 'default'));
  const closed = new Database(':memory:');
  closed.close();
  errorOf('load_closed', () => walguard.load(closed));

  errorOf('load', () => walguard.load(new Database(':memory:')));
  errorOf('load_again', () => walguard.load(new Database(':memory:')));
  const db = new Database(path.join(dir, 'app.db'), { timeout: 10000 });
  out('journal_mode', db.pragma('journal_mode=WAL', { simple: true }));
  db.exec('CREATE TABLE t(x)');
  db.prepare('INSERT INTO t VALUES (?)').run(1);
  counters('stats', walguard.stats(db));
  db.close();

  // The CommonJS module's names, as ESM sees them.
  return import('walguard').then((esm) => {
    out('esm_names', Object.keys(esm).filter((k) => k !== 'default' && k !== 'module.exports').sort().join(','));
    out('esm_same_load', Number(esm.load === walguard.load));
    // A connection opened before the load has no walguard_stats().
    out('error_class', Number(errorOf('stats_early', () => walguard.stats(early)) instanceof walguard.WalguardError));
  });
}

function scenarioNodefault(dir) {
  const Database = require('better-sqlite3');
  const walguard = require('walguard');
  walguard.load(new Database(':memory:'), { default: false });
  const plain = new Database(path.join(dir, 'plain.db'));
  plain.exec('CREATE TABLE t(x)');
  out('after_plain.db_opened', walguard.stats(new Database(':memory:')).db_opened);
  const named = new Database(`file:${path.join(dir, 'named.db')}?vfs=walguard`);
  named.exec('CREATE TABLE t(x)');
  out('after_uri.db_opened', walguard.stats(named).db_opened);
  out('files', fs.readdirSync(dir).filter((f) => f.endsWith('.db')).sort().join(','));
}

/** A copy of the installed package in `dir`, to break without touching the original. */
function packageCopy(dir, name) {
  const src = path.dirname(require.resolve('walguard/package.json'));
  const dst = path.join(dir, name, 'walguard');
  fs.cpSync(src, dst, { recursive: true });
  return dst;
}

function scenarioNoBinary(dir) {
  const Database = require('better-sqlite3');
  const bare = packageCopy(dir, 'bare');
  fs.rmSync(path.join(bare, 'lib'), { recursive: true, force: true });
  const wg = require(bare);
  errorOf('bare.path', () => wg.getLoadablePath());
  errorOf('bare.load', () => wg.load(new Database(':memory:')));

  const other = packageCopy(dir, 'other-arch');
  fs.renameSync(path.join(other, 'lib', 'linux-x64-gnu'), path.join(other, 'lib', 'linux-riscv64-gnu'));
  errorOf('other_arch.path', () => require(other).getLoadablePath());

  const mac = packageCopy(dir, 'darwin');
  Object.defineProperty(process, 'platform', { value: 'darwin' });
  const wgMac = require(mac);
  out('darwin.platform', wgMac.platform());
  errorOf('darwin.path', () => wgMac.getLoadablePath());
}

function scenarioNodeSqlite(dir) {
  const { DatabaseSync } = require('node:sqlite');
  const walguard = require('walguard');
  errorOf('not_allowed', () => walguard.load(new DatabaseSync(':memory:')));
  errorOf('stats_before', () => walguard.stats(new DatabaseSync(':memory:')));
  const closed = new DatabaseSync(':memory:', { allowExtension: true });
  closed.close();
  errorOf('load_closed', () => walguard.load(closed));

  // Allowed at construction, switched off since: switched on for the call, then off.
  const loader = new DatabaseSync(':memory:', { allowExtension: true });
  loader.enableLoadExtension(false);
  errorOf('load', () => walguard.load(loader));
  errorOf('loading_after', () => loader.loadExtension(walguard.getLoadablePath()));

  const db = new DatabaseSync(path.join(dir, 'app.db'));
  db.exec('PRAGMA busy_timeout=10000');
  out('journal_mode', db.prepare('PRAGMA journal_mode=WAL').get().journal_mode);
  db.exec('CREATE TABLE t(x)');
  db.prepare('INSERT INTO t VALUES (?)').run(1);
  counters('stats', walguard.stats(db));
  counters('stats_via_loader', walguard.stats(loader));
  db.close();
}

function scenarioNodeNodefault(dir) {
  const { DatabaseSync } = require('node:sqlite');
  const walguard = require('walguard');
  walguard.load(new DatabaseSync(':memory:', { allowExtension: true }), { default: false });
  const plain = new DatabaseSync(path.join(dir, 'plain.db'));
  plain.exec('CREATE TABLE t(x)');
  out('after_plain.db_opened', walguard.stats(new DatabaseSync(':memory:')).db_opened);
  const named = new DatabaseSync(`file:${path.join(dir, 'named.db')}?vfs=walguard`);
  named.exec('CREATE TABLE t(x)');
  out('after_uri.db_opened', walguard.stats(named).db_opened);
}

function scenarioBoth(dir) {
  const Database = require('better-sqlite3');
  const { DatabaseSync } = require('node:sqlite');
  const walguard = require('walguard');
  walguard.load(new Database(':memory:'));
  walguard.load(new DatabaseSync(':memory:', { allowExtension: true }));
  const file = path.join(dir, 'app.db');
  const a = new Database(file, { timeout: 10000 });
  out('journal_mode', a.pragma('journal_mode=WAL', { simple: true }));
  a.exec('CREATE TABLE t(who TEXT)');
  a.prepare('INSERT INTO t VALUES (?)').run('better-sqlite3');
  const b = new DatabaseSync(file);
  b.exec('PRAGMA busy_timeout=10000');
  b.prepare('INSERT INTO t VALUES (?)').run('node:sqlite');
  out('versions', `${a.prepare('SELECT sqlite_version()').pluck().get()},${b.prepare('SELECT sqlite_version() AS v').get().v}`);
  out('better_sqlite3_sees', a.prepare('SELECT who FROM t ORDER BY who').pluck().all().join(','));
  out('node_sqlite_sees', b.prepare('SELECT who FROM t ORDER BY who').all().map((r) => r.who).join(','));
  const sa = walguard.stats(a);
  const sb = walguard.stats(b);
  out('same_counters', Number(JSON.stringify(sa) === JSON.stringify(sb)));
  out('registrations', sa.registrations);
  out('db_opened', sa.db_opened);
  out('shm_mapped', sa.shm_mapped);
  b.close();
  a.close();
}

const scenarios = {
  api: scenarioApi,
  nodefault: scenarioNodefault,
  'no-binary': scenarioNoBinary,
  'node-sqlite': scenarioNodeSqlite,
  'node-nodefault': scenarioNodeNodefault,
  both: scenarioBoth,
};

const [scenario, dir] = process.argv.slice(2);
if (!scenarios[scenario] || !dir) {
  process.stderr.write(`usage: node checks.js ${Object.keys(scenarios).join('|')} DIR\n`);
  process.exit(2);
}
Promise.resolve(scenarios[scenario](dir)).then(
  () => out('done', 1),
  (e) => {
    process.stderr.write(`${(e && e.stack) || e}\n`);
    process.exit(1);
  },
);
