# deb822 stanzas (blank-line separated) of the machine's release → deb-src copies.
function flush() {
  if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites ~ ("(^|[ \t])" codename "(-[a-z]+)?([ \t]|$)")) {
    print "Types: deb-src"; printf "%s", body; print ""
  }
  types = ""; suites = ""; body = ""
}
/^[ \t]*$/ { flush(); next }
/^[ \t]*#/ { next }
/^Types:/ { types = substr($0, 7); next }
{ if ($0 ~ /^Suites:/) suites = substr($0, 8); body = body $0 "\n" }
END { flush() }
