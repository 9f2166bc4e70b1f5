#!/bin/sh
# reload.sh MASTER_PID: reloads HAProxy (master-worker mode) and returns once a new worker runs.
#
# HAProxy 2.6's master drops a USR2 that arrives while it re-executes, and now and then one
# that arrives soon after: two endpoint changes a moment apart (a scale from 1 to 3) could
# leave the first backend loaded for good. So one reload at a time, each confirmed by a new
# worker process, and a USR2 sent again when none appears within 3 s. The backend file is read
# at reload time, so whichever reload lands loads the latest one.
set -u
master="${1:?usage: reload.sh MASTER_PID}"
workers() { echo $(cat /proc/"$master"/task/*/children 2>/dev/null); }
attempt=1
while [ "$attempt" -le 5 ]; do
  before=" $(workers) "
  kill -USR2 "$master" || exit 1
  tick=0
  while [ "$tick" -lt 30 ]; do
    for pid in $(workers); do
      case "$before" in *" $pid "*) ;; *) exit 0 ;; esac
    done
    sleep 0.1
    tick=$((tick + 1))
  done
  echo "reload.sh: no new HAProxy worker 3 s after USR2 (try $attempt of 5)" >&2
  attempt=$((attempt + 1))
done
echo "reload.sh: HAProxy did not reload; is the config valid? (haproxy -c -f ...)" >&2
exit 1
