'use strict';
// Two SQLite libraries in one Node process on one WAL database: better-sqlite3 (its own
// SQLite) and node:sqlite (Node's). Used by vfs-tests/tests/npm_package.rs, which copies
// this file into a fresh npm project where `walguard` and better-sqlite3 are installed,
// and runs it with a Node that has node:sqlite (>= 22.13).
//
// Usage: node two_runtimes.js MODE DATABASE
//
// MODE:
//   plain     both libraries as they are (each with its own unix VFS)
//   walguard  walguard.load() into both libraries before the database is opened
//
// The sequence (one process, three connections):
//   X  better-sqlite3: WAL, writes 100 rows;
//   Y  node:sqlite: writes 100 rows and closes. Its library sees no other connection of
//      its own and takes the EXCLUSIVE lock (POSIX locks of one process never conflict),
//      so it believes it is the last: it checkpoints and unlinks -wal and -shm, and its
//      close() drops X's POSIX locks as well;
//   Z  node:sqlite: opens the database again (fresh -wal/-shm on the plain run), writes
//      150 rows and checkpoints;
//   X  writes 200 rows on;
//   Z  writes 100 rows.
// Every write is one transaction; a failed one is counted and the others go on.
//
// Prints key=value lines:
//   versions=BETTER_SQLITE3_SQLITE,NODE_SQLITE_SQLITE  the two libraries' SQLite versions
//   acked=N failed=N errors=CODE MESSAGE (xK)|...     over all writes
//   acked_tags=TAG,...                                  the acknowledged rows
//   sidecars_after_y_close=NAMES                        the directory after Y closed
//   stats=JSON                                          walguard.stats() (walguard mode)
//   done=1

const fs = require('fs');
const path = require('path');
const Database = require('better-sqlite3');
const { DatabaseSync } = require('node:sqlite');

const BUSY_MS = 10000;
const SCHEMA = 'CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL)';

function out(key, value) {
  process.stdout.write(`${key}=${value}\n`);
}

function oneLine(s) {
  return String(s).replace(/\s+/g, ' ').trim();
}

function errorCode(e) {
  if (e && e.code === 'ERR_SQLITE_ERROR' && e.errstr) return `SQLITE(${e.errcode}) ${e.errstr}`;
  return e && e.code ? String(e.code) : (e && e.name) || 'Error';
}

const acked = [];
const errors = new Map();
let failed = 0;

/** One row in one BEGIN IMMEDIATE transaction, through `exec`/`insert` of either library. */
function writeRows(conn, name, n) {
  for (let i = 0; i < n; i++) {
    const tag = `${name}-${acked.length + failed + 1}`;
    try {
      conn.exec('BEGIN IMMEDIATE');
      try {
        conn.exec(SCHEMA);
        conn.prepare('INSERT INTO t(tag) VALUES (?)').run(tag);
        conn.exec('COMMIT');
        acked.push(tag);
      } catch (e) {
        try {
          conn.exec('ROLLBACK');
        } catch (_) {
          // No transaction left to roll back; the first error is the one to report.
        }
        throw e;
      }
    } catch (e) {
      failed += 1;
      const key = `${errorCode(e)} ${oneLine(e.message)}`;
      errors.set(key, (errors.get(key) || 0) + 1);
    }
  }
}

function nodeSqlite(file) {
  const db = new DatabaseSync(file);
  db.exec(`PRAGMA busy_timeout=${BUSY_MS}`);
  return db;
}

function main() {
  const [mode, file] = process.argv.slice(2);
  if (!['plain', 'walguard'].includes(mode) || !file) {
    process.stderr.write('usage: node two_runtimes.js plain|walguard DATABASE\n');
    process.exit(2);
  }
  let walguard = null;
  if (mode === 'walguard') {
    walguard = require('walguard');
    walguard.load(new Database(':memory:'));
    walguard.load(new DatabaseSync(':memory:', { allowExtension: true }));
  }
  const x = new Database(file, { timeout: BUSY_MS });
  const probe = new DatabaseSync(':memory:');
  out(
    'versions',
    `${x.prepare('SELECT sqlite_version()').pluck().get()},` +
      `${probe.prepare('SELECT sqlite_version() AS v').get().v}`,
  );
  probe.close();

  out('journal_mode', x.pragma('journal_mode=WAL', { simple: true }));
  writeRows(x, 'X', 100);

  const y = nodeSqlite(file);
  writeRows(y, 'Y', 100);
  y.close();
  const dir = path.dirname(file);
  const base = path.basename(file);
  out(
    'sidecars_after_y_close',
    fs
      .readdirSync(dir)
      .filter((f) => f === `${base}-wal` || f === `${base}-shm`)
      .sort()
      .join(',') || 'none',
  );

  const z = nodeSqlite(file);
  writeRows(z, 'Z', 150);
  z.exec('PRAGMA wal_checkpoint(PASSIVE)');
  writeRows(x, 'X', 200);
  writeRows(z, 'Z', 100);

  out('acked', acked.length);
  out('failed', failed);
  out('errors', [...errors].map(([k, n]) => `${k} (x${n})`).join('|') || 'none');
  out('acked_tags', acked.join(','));
  if (walguard) out('stats', JSON.stringify(walguard.stats(x)));
  x.close();
  z.close();
  out('done', 1);
}

main();
