// Types of the walguard npm package (index.js).

/** The entry point that registers walguard as the default VFS of the SQLite library. */
export declare const ENTRY_DEFAULT: 'sqlite3_walguard_init';
/** The entry point that registers walguard without making it the default. */
export declare const ENTRY_NODEFAULT: 'sqlite3_walguard_nodefault_init';

/**
 * What `load()` needs of a connection: a better-sqlite3 `Database`, or a node:sqlite
 * `DatabaseSync` opened with `{ allowExtension: true }`.
 */
export interface LoadableDatabase {
  loadExtension(path: string, entryPoint?: string): unknown;
  prepare(sql: string): { get(): unknown };
}

/** What `stats()` needs of a connection: any connection of either library. */
export interface QueryableDatabase {
  prepare(sql: string): { get(): unknown };
}

export interface LoadOptions {
  /**
   * `true` (the default): walguard becomes the default VFS of the connection's SQLite
   * library, so every connection opened afterwards goes through it. `false`: it is only
   * registered; open with `file:app.db?vfs=walguard`.
   */
  default?: boolean;
}

/**
 * walguard's counters, shared by every SQLite library of the process that loaded it.
 * The names below are the ones to watch; the object carries every counter walguard
 * keeps.
 */
export interface WalguardStats {
  /** Times the extension was registered (one per SQLite library that loaded it). */
  registrations: number;
  /** Main database files opened through walguard. */
  db_opened: number;
  /** `-wal` files opened through walguard. */
  wal_opened: number;
  /** `-shm` files mapped through walguard. */
  shm_mapped: number;
  /** A closer's EXCLUSIVE lock refused because another holder was still present. */
  exclusive_blocked: number;
  /** `-wal`/`-shm` found removed or replaced under an open connection. */
  sidecar_replaced: number;
  [counter: string]: number;
}

export type WalguardErrorCode =
  /** No library for this platform in the package (`getLoadablePath`, `load`). */
  | 'WALGUARD_NO_BINARY'
  /** node:sqlite connection opened without `{ allowExtension: true }`. */
  | 'WALGUARD_EXTENSION_LOADING_DISABLED'
  /** The SQLite library refused the extension; the message carries its reason. */
  | 'WALGUARD_LOAD_FAILED'
  /** `stats()` on a connection whose SQLite library has not loaded walguard. */
  | 'WALGUARD_NOT_LOADED'
  /** `walguard_stats()` failed or returned something else than walguard's JSON. */
  | 'WALGUARD_STATS_FAILED';

/** walguard could not be loaded or queried; the message says why and what to do. */
export declare class WalguardError extends Error {
  readonly name: 'WalguardError';
  readonly code: WalguardErrorCode;
}

/**
 * The absolute path of walguard's loadable extension for this platform, for any SQLite
 * host that loads extensions (SQLite derives the entry point from the file name).
 * @throws {WalguardError} `WALGUARD_NO_BINARY` when the package has no library for it.
 */
export declare function getLoadablePath(): string;

/**
 * Loads walguard into the SQLite library of `db` (a better-sqlite3 `Database`, or a
 * node:sqlite `DatabaseSync` opened with `{ allowExtension: true }`). From then on every
 * connection that library opens goes through walguard; `db` itself keeps its VFS. Load
 * it once per library, before opening the shared databases.
 * @throws {TypeError} `db` is neither.
 * @throws {WalguardError} no library for this platform, extension loading not allowed on
 *   `db`, or SQLite refused the library.
 */
export declare function load(db: LoadableDatabase, options?: LoadOptions): void;

/**
 * walguard's counters, read through `db` (a connection of a library that loaded
 * walguard, opened after it was loaded, or the one that loaded it).
 * @throws {WalguardError} `WALGUARD_NOT_LOADED` when walguard is not loaded there.
 */
export declare function stats(db: QueryableDatabase): WalguardStats;

/** This process's platform key, as the package's `lib/` folders name them (`linux-x64-gnu`). */
export declare function platform(): string;
