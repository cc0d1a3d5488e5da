'use strict';
// A Node process writing to a shared WAL database on command, with or without walguard.
// Used by vfs-tests/tests/npm_package.rs, which copies this file into a fresh npm project
// where `walguard` (the packed tarball) and better-sqlite3 are installed.
//
// Usage: node worker.js MODE DATABASE NAME
//
// MODE:
//   plain     better-sqlite3 as it is (SQLite's unix VFS)
//   walguard  walguard.load(new Database(':memory:')), then new Database(DATABASE)
//
// Prints `ready pid=P sqlite=V` once the database is open, then answers one line per
// command line on stdin with `ok PAYLOAD` or `err CODE MESSAGE`:
//   wal          PRAGMA journal_mode=WAL                               -> ok wal
//   write N      N transactions of one row each (BEGIN IMMEDIATE); a failed one is
//                rolled back and counted, the others go on
//                -> ok acked=ID:TAG,... failed=F errors=CODE MESSAGE (xK)|...
//   copy DIR     copies the database, its -wal and its -shm into DIR with
//                fs.copyFileSync, as a backup helper would: each open/close of a file
//                drops this process's POSIX locks on it     -> ok FILES
//   checkpoint   PRAGMA wal_checkpoint(PASSIVE)             -> ok BUSY LOG CHECKPOINTED
//   rows         every row                                  -> ok ID:TAG ...
//   integrity    PRAGMA integrity_check                     -> ok ok
//   stats        walguard.stats(db) as JSON, `none` in plain mode
//   close        closes the connection                      -> ok
//   quit         closes and exits                           -> bye

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const Database = require('better-sqlite3');

const BUSY_MS = 10000;
const SCHEMA = 'CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT NOT NULL)';

function reply(line) {
  process.stdout.write(line + '\n');
}

function oneLine(s) {
  return String(s).replace(/\s+/g, ' ').trim();
}

function errorCode(e) {
  return e && e.code ? String(e.code) : (e && e.name) || 'Error';
}

function main() {
  const [mode, dbPath, name] = process.argv.slice(2);
  if (!['plain', 'walguard'].includes(mode) || !dbPath || !name) {
    process.stderr.write('usage: node worker.js plain|walguard DATABASE NAME\n');
    process.exit(2);
  }
  let walguard = null;
  if (mode === 'walguard') {
    walguard = require('walguard');
    walguard.load(new Database(':memory:'));
  }
  let db = new Database(dbPath, { timeout: BUSY_MS });
  const version = db.prepare('SELECT sqlite_version()').pluck().get();
  reply(`ready pid=${process.pid} sqlite=${version}`);

  let seq = 0;
  const handle = (line) => {
    const words = line.trim().split(/\s+/);
    const cmd = words[0];
    const args = words.slice(1);
    if (!cmd) return true;
    if (cmd === 'quit') return false;
    try {
      if (cmd === 'wal') {
        reply(`ok ${db.pragma('journal_mode=WAL', { simple: true })}`);
      } else if (cmd === 'write') {
        const acked = [];
        const errors = new Map();
        let failed = 0;
        for (let i = 0; i < Number(args[0]); i++) {
          seq += 1;
          const tag = `${name}-${process.pid}-${seq}`;
          try {
            db.exec('BEGIN IMMEDIATE');
            try {
              db.exec(SCHEMA);
              const r = db.prepare('INSERT INTO t(tag) VALUES (?)').run(tag);
              db.exec('COMMIT');
              acked.push(`${r.lastInsertRowid}:${tag}`);
            } catch (e) {
              if (db.inTransaction) {
                try {
                  db.exec('ROLLBACK');
                } catch (_) {
                  // The transaction is already gone; the first error is the one to report.
                }
              }
              throw e;
            }
          } catch (e) {
            failed += 1;
            const key = `${errorCode(e)} ${oneLine(e.message)}`;
            errors.set(key, (errors.get(key) || 0) + 1);
          }
        }
        const summary = [...errors].map(([k, n]) => `${k} (x${n})`).join('|');
        reply(`ok acked=${acked.join(',')} failed=${failed} errors=${summary}`);
      } else if (cmd === 'copy') {
        const dir = args[0];
        const copied = [];
        for (const suffix of ['', '-wal', '-shm']) {
          const src = dbPath + suffix;
          if (fs.existsSync(src)) {
            fs.copyFileSync(src, path.join(dir, path.basename(src)));
            copied.push(path.basename(src));
          }
        }
        reply(`ok ${copied.join(' ')}`);
      } else if (cmd === 'checkpoint') {
        const r = db.pragma('wal_checkpoint(PASSIVE)')[0];
        reply(`ok ${r.busy} ${r.log} ${r.checkpointed}`);
      } else if (cmd === 'rows') {
        const rows = db.prepare("SELECT id || ':' || tag FROM t ORDER BY id").pluck().all();
        reply(`ok ${rows.join(' ')}`);
      } else if (cmd === 'integrity') {
        reply(`ok ${db.pragma('integrity_check', { simple: false }).map((r) => r.integrity_check).join(';')}`);
      } else if (cmd === 'stats') {
        reply(walguard ? `ok ${JSON.stringify(walguard.stats(db))}` : 'ok none');
      } else if (cmd === 'close') {
        db.close();
        reply('ok');
      } else {
        reply(`err unknown unknown command ${JSON.stringify(cmd)}`);
      }
    } catch (e) {
      reply(`err ${errorCode(e)} ${oneLine(e.message)}`);
    }
    return true;
  };

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    if (!handle(line)) rl.close();
  });
  rl.on('close', () => {
    try {
      if (db.open) db.close();
    } catch (_) {
      // Exiting anyway.
    }
    db = null;
    reply('bye');
  });
}

main();
