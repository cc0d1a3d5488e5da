# Run by scripts/sqlite-testsuite with each testfixture build before the test files:
# reports which VFS is the default and what walguard_stats() says, in this process
# after tester.tcl's own sqlite3_shutdown/sqlite3_initialize, after one more
# shutdown/initialize, and in a child process spawned the way tests spawn them
# ([info nameofexec]). The script judges the printed KEY=VALUE lines.
#
# Usage: testfixture verify.tcl SQLITE_TEST_DIR      (cwd: a scratch directory)
#        testfixture verify.tcl --child

proc stats_of {db} {
  if {[catch {$db eval {SELECT walguard_stats()}} s]} { return none }
  return $s
}
proc counter {json name} {
  if {[regexp "\"$name\":(\[0-9\]+)" $json -> n]} { return $n }
  return none
}
proc report {{prefix ""}} {
  puts "${prefix}DEFAULT_VFS=[lindex [sqlite3_vfs_list] 0]"
  forcedelete verify-$prefix.db verify-$prefix.db-wal verify-$prefix.db-shm
  sqlite3 vdb verify-$prefix.db
  vdb eval {PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1);}
  set s [stats_of vdb]
  vdb close
  puts "${prefix}DB_OPENED=[counter $s db_opened]"
  puts "${prefix}WAL_OPENED=[counter $s wal_opened]"
  puts "${prefix}SHM_MAPPED=[counter $s shm_mapped]"
}

if {[lindex $argv 0] eq "--child"} {
  proc forcedelete {args} { foreach f $args { file delete -force $f } }
  report CHILD_
  exit 0
}

set testdir [lindex $argv 0]
set argv {}
source $testdir/tester.tcl
report
sqlite3_shutdown
sqlite3_initialize
report REINIT_
# 2>@1: a warning on the child's stderr must not turn into a Tcl error here.
puts [exec [info nameofexec] [info script] --child 2>@1]
catch {db close}
exit 0
