'use strict';
// walguard for Node: loads the walguard SQLite VFS into better-sqlite3 and node:sqlite.
//
// walguard keeps a WAL database shared by many processes (and by several SQLite
// libraries in one process) from being corrupted. This package carries its loadable
// extension (libwalguard.so, which uses the host's SQLite and has none of its own) in
// lib/<platform>/ and four functions:
//
// - load(db)           loads it through a better-sqlite3 Database or a node:sqlite
//                      DatabaseSync (opened with { allowExtension: true }); from then on
//                      walguard is the default VFS of that library's SQLite;
// - stats(db)          walguard's counters, through any connection of such a library;
// - getLoadablePath()  the path of the library for this platform, for any other host;
// - platform()         the platform key it looks for (linux-x64-gnu, ...).
//
// Once loaded, walguard stays registered in that SQLite for the life of the process (the
// extension answers SQLITE_OK_LOAD_PERMANENTLY), whatever happens to the connection that
// loaded it. Connections opened before it was loaded keep the VFS they were opened with.

const fs = require('fs');
const path = require('path');

/** The entry point that registers walguard as the default VFS of the SQLite library. */
const ENTRY_DEFAULT = 'sqlite3_walguard_init';
/** The entry point that registers walguard without making it the default. */
const ENTRY_NODEFAULT = 'sqlite3_walguard_nodefault_init';

const LIBRARY = 'libwalguard.so';
const LIB_DIR = path.join(__dirname, 'lib');

/** walguard could not be loaded or queried; `code` says which case, the message what to do. */
class WalguardError extends Error {
  constructor(message, code, options) {
    super(message, options);
    this.name = 'WalguardError';
    this.code = code;
  }
}

/** The C library this Node runs on: `gnu` (glibc), `musl`, or '' off Linux. */
function linuxLibc() {
  if (process.platform !== 'linux') return '';
  try {
    const report = process.report && process.report.getReport();
    const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
    if (header && header.glibcVersionRuntime) return 'gnu';
  } catch (_) {
    // No report: fall back to the loader's file name below.
  }
  for (const dir of ['/lib', '/usr/lib']) {
    try {
      if (fs.readdirSync(dir).some((f) => f.startsWith('ld-musl-'))) return 'musl';
    } catch (_) {
      // No such directory.
    }
  }
  return 'gnu';
}

let cachedPlatform = null;

/** This process's platform key, as the lib/ folders name them: `linux-x64-gnu`, ... */
function platformKey() {
  if (cachedPlatform === null) {
    const libc = linuxLibc();
    cachedPlatform = [process.platform, process.arch, libc].filter(Boolean).join('-');
  }
  return cachedPlatform;
}

/** The platforms this copy of the package carries a library for. */
function shippedPlatforms() {
  let entries = [];
  try {
    entries = fs.readdirSync(LIB_DIR);
  } catch (_) {
    return [];
  }
  return entries.filter((d) => fs.existsSync(path.join(LIB_DIR, d, LIBRARY))).sort();
}

/**
 * The absolute path of walguard's loadable extension for this platform.
 *
 * Give it to any SQLite host that loads extensions; SQLite derives the entry point
 * sqlite3_walguard_init from the file name.
 *
 * Throws a WalguardError with code WALGUARD_NO_BINARY when this package has no library
 * for the platform (the message says which ones it has and what to do).
 */
function getLoadablePath() {
  const key = platformKey();
  const file = path.join(LIB_DIR, key, LIBRARY);
  if (fs.existsSync(file)) return file;
  const shipped = shippedPlatforms();
  const has = shipped.length ? shipped.join(', ') : 'none';
  let advice;
  if (process.platform !== 'linux') {
    advice =
      'walguard is a Linux VFS (open-file-description locks, inotify, /proc): it has no ' +
      `build for ${process.platform}. Run the processes that share the database on Linux, ` +
      'and do not call walguard.load() on this platform.';
  } else if (shipped.length === 0 || fs.existsSync(path.dirname(file))) {
    advice =
      `The package is incomplete (${file} is missing): reinstall it (npm install --force ` +
      'walguard), or rebuild it from a walguard checkout with `scripts/build-npm`.';
  } else if (key.endsWith('-musl')) {
    advice =
      'walguard is not built for musl (Alpine): run on a glibc-based system or image ' +
      '(Debian, Ubuntu, RHEL and their node images).';
  } else {
    advice =
      'Build the package for this machine from a walguard checkout with ' +
      '`scripts/build-npm` (needs Rust and npm; `--target TRIPLE` cross-compiles for ' +
      'another *-linux-gnu target) and install target/npm/walguard-VERSION.tgz, or load ' +
      'the library you built into your SQLite yourself (entry point sqlite3_walguard_init).';
  }
  throw new WalguardError(
    `walguard has no binary for this platform (${key}); this package carries: ${has}. ${advice}`,
    'WALGUARD_NO_BINARY',
  );
}

function isNodeSqlite(db) {
  return (
    typeof db.enableLoadExtension === 'function' &&
    typeof db.loadExtension === 'function' &&
    typeof db.prepare === 'function'
  );
}

function isBetterSqlite3(db) {
  return (
    typeof db.loadExtension === 'function' &&
    typeof db.pragma === 'function' &&
    typeof db.prepare === 'function'
  );
}

function describe(value) {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  const ctor = value.constructor && value.constructor.name;
  if (!ctor) return 'an object';
  return `${/^[AEIOU]/.test(ctor) ? 'an' : 'a'} ${ctor}`;
}

function notADatabase(fn, db) {
  return new TypeError(
    `walguard.${fn}(db) takes a better-sqlite3 Database or a node:sqlite DatabaseSync; got ` +
      `${describe(db)}. For another SQLite host, load walguard.getLoadablePath() through ` +
      `its own extension loader (entry point ${ENTRY_DEFAULT}), before opening the shared ` +
      'databases.',
  );
}

/** ` VERSION` of a connection's SQLite, or '' when it cannot be asked. */
function sqliteVersion(db) {
  try {
    const row = db.prepare('SELECT sqlite_version() AS v').get();
    return row && row.v ? ` ${row.v}` : '';
  } catch (_) {
    return '';
  }
}

function loadIntoNodeSqlite(db, file, entry) {
  try {
    db.loadExtension(file, entry);
    return;
  } catch (e) {
    // Anything but "not allowed" (a closed connection says "database is not open", and
    // enableLoadExtension() on a closed connection crashes Node 22.23) goes up as it is.
    if (!e || e.code !== 'ERR_INVALID_STATE' || !/not allowed/i.test(e.message)) throw e;
  }
  // Extension loading is off on this connection: allowed at construction but switched
  // off since (enableLoadExtension(false)) can be switched on for the call; not allowed
  // at construction cannot.
  try {
    db.enableLoadExtension(true);
  } catch (e) {
    throw new WalguardError(
      'extension loading is not allowed on this node:sqlite connection, so walguard ' +
        'cannot be loaded through it. Open the connection that loads walguard with ' +
        "new DatabaseSync(':memory:', { allowExtension: true }) and call " +
        'walguard.load() on it before opening the shared databases (the other ' +
        'connections need no option).',
      'WALGUARD_EXTENSION_LOADING_DISABLED',
      { cause: e },
    );
  }
  try {
    db.loadExtension(file, entry);
  } finally {
    db.enableLoadExtension(false);
  }
}

/**
 * Loads walguard into the SQLite library of `db` (a better-sqlite3 Database or a
 * node:sqlite DatabaseSync opened with { allowExtension: true }).
 *
 * With `default: true` (the default; entry point sqlite3_walguard_init) walguard becomes
 * the default VFS of that library: every connection it opens afterwards goes through
 * walguard. With `default: false` (sqlite3_walguard_nodefault_init) it is only
 * registered: open with `file:app.db?vfs=walguard`. `db` itself stays on the VFS it was
 * opened with. Loading again is harmless.
 */
function load(db, options) {
  const opts = options === undefined ? {} : options;
  if (opts === null || typeof opts !== 'object') {
    throw new TypeError('walguard.load(db, options): options must be an object, e.g. { default: false }');
  }
  const entry = opts.default === false ? ENTRY_NODEFAULT : ENTRY_DEFAULT;
  if (db === null || typeof db !== 'object') throw notADatabase('load', db);
  const nodeSqlite = isNodeSqlite(db);
  if (!nodeSqlite && !isBetterSqlite3(db)) throw notADatabase('load', db);
  const file = getLoadablePath();
  const library = nodeSqlite ? 'node:sqlite' : 'better-sqlite3';
  try {
    if (nodeSqlite) {
      loadIntoNodeSqlite(db, file, entry);
    } else {
      db.loadExtension(file, entry);
    }
  } catch (e) {
    if (e instanceof WalguardError) throw e;
    const why = (e && e.message ? e.message : String(e)).replace(/\.$/, '');
    let advice = '';
    if (/not open/i.test(why)) {
      advice = ' Load walguard through an open connection.';
    } else if (/not allowed|not authorized/i.test(why)) {
      advice =
        ' Extension loading is disabled on this connection: use one where it is ' +
        'allowed (better-sqlite3 allows it by default; node:sqlite needs ' +
        '{ allowExtension: true }).';
    }
    throw new WalguardError(
      `loading ${file} (entry point ${entry}) into ${library}'s SQLite` +
        `${sqliteVersion(db)} failed: ${why}.${advice}`,
      'WALGUARD_LOAD_FAILED',
      { cause: e },
    );
  }
}

/**
 * walguard's counters (db_opened, wal_opened, shm_mapped, exclusive_blocked,
 * sidecar_replaced, ...), read through `db` with the SQL function walguard_stats().
 * They are the process's: every SQLite library that loaded walguard shares them.
 *
 * Throws a WalguardError with code WALGUARD_NOT_LOADED when walguard is not loaded in
 * the SQLite library of `db`, or when `db` was opened before it was loaded.
 */
function stats(db) {
  if (db === null || typeof db !== 'object' || typeof db.prepare !== 'function') {
    throw notADatabase('stats', db);
  }
  let text;
  try {
    const row = db.prepare('SELECT walguard_stats() AS s').get();
    text = row && row.s;
  } catch (e) {
    const why = e && e.message ? e.message : String(e);
    if (/no such function/i.test(why)) {
      throw new WalguardError(
        'walguard is not loaded in the SQLite library of this connection, or the ' +
          'connection was opened before it was loaded: call walguard.load(db) first, ' +
          'then ask stats() of that connection or of any opened after it.',
        'WALGUARD_NOT_LOADED',
        { cause: e },
      );
    }
    throw new WalguardError(`walguard_stats() failed: ${why}`, 'WALGUARD_STATS_FAILED', { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new WalguardError(
      `walguard_stats() returned ${JSON.stringify(text)}, not a JSON object: this ` +
        'connection has a walguard_stats() function that is not walguard\'s.',
      'WALGUARD_STATS_FAILED',
      { cause: e },
    );
  }
}

exports.ENTRY_DEFAULT = ENTRY_DEFAULT;
exports.ENTRY_NODEFAULT = ENTRY_NODEFAULT;
exports.WalguardError = WalguardError;
exports.getLoadablePath = getLoadablePath;
exports.load = load;
exports.platform = platformKey;
exports.stats = stats;
