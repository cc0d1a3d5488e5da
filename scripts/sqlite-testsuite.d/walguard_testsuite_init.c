/*
** Linked into the walguard build of SQLite's testfixture by scripts/sqlite-testsuite,
** which compiles SQLite with -DSQLITE_EXTRA_INIT=walguard_testsuite_init.
**
** SQLite calls walguard_testsuite_init() at the end of every sqlite3_initialize() that
** really initialises the library: the first one of every process (testfixture itself and
** every child a test spawns with [info nameofexec]) and the first one after each
** sqlite3_shutdown() (tester.tcl shuts down and re-initialises at start-up; the unix VFS
** then registers itself as the default again). Each time, it loads the extension named
** by $WALGUARD_TESTSUITE_EXT through sqlite3_load_extension() on a private :memory:
** connection, entry point sqlite3_walguard_init, which (re)makes walguard the default
** VFS and (re)adds walguard_stats() to every new connection.
**
** If $WALGUARD_TESTSUITE_TRACE names a file, each load appends "<pid>\n" to it (the
** script counts the processes that ran with walguard per test file).
**
** Any failure aborts the process: a run that silently tests plain unix is worthless.
*/
#include "sqlite3.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

static void walguard_testsuite_die(const char *what, const char *detail){
  fprintf(stderr, "walguard_testsuite_init: %s%s%s\n", what,
          detail ? ": " : "", detail ? detail : "");
  fflush(stderr);
  abort();
}

static void walguard_testsuite_trace(void){
  const char *zTrace = getenv("WALGUARD_TESTSUITE_TRACE");
  char zLine[32];
  int fd, n;
  if( zTrace==0 || zTrace[0]==0 ) return;
  fd = open(zTrace, O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, 0644);
  if( fd<0 ) return;
  n = snprintf(zLine, sizeof(zLine), "%ld\n", (long)getpid());
  if( write(fd, zLine, n)!=n ){ /* best effort */ }
  close(fd);
}

int walguard_testsuite_init(const char *zUnused){
  const char *zPath = getenv("WALGUARD_TESTSUITE_EXT");
  sqlite3 *db = 0;
  char *zErr = 0;
  sqlite3_vfs *pDefault;
  int rc;
  (void)zUnused;
  if( zPath==0 || zPath[0]==0 ){
    walguard_testsuite_die("WALGUARD_TESTSUITE_EXT is not set (it must name "
        "libwalguard.so; scripts/sqlite-testsuite sets it)", 0);
  }
  /* isInit is already set when SQLITE_EXTRA_INIT runs: this open does not recurse. */
  rc = sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE|SQLITE_OPEN_CREATE, 0);
  if( rc!=SQLITE_OK ){
    walguard_testsuite_die("cannot open a :memory: connection",
        db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  }
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, (int*)0);
  rc = sqlite3_load_extension(db, zPath, "sqlite3_walguard_init", &zErr);
  if( rc!=SQLITE_OK ){
    walguard_testsuite_die("sqlite3_load_extension failed",
        zErr ? zErr : sqlite3_errstr(rc));
  }
  sqlite3_close(db);
  pDefault = sqlite3_vfs_find(0);
  if( pDefault==0 || strcmp(pDefault->zName, "walguard")!=0 ){
    walguard_testsuite_die("walguard is not the default VFS after loading",
        pDefault ? pDefault->zName : "(none)");
  }
  walguard_testsuite_trace();
  return SQLITE_OK;
}
