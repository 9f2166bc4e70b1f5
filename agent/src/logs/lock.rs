//! The lock every writer of a log file takes around a write or a rotation of it.
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// How long a writer waits for a log file's lock before it goes on without it. A pump holds
/// the lock for one write and perhaps a rotation: well under a millisecond on a local disk, a
/// few on a slow one. Held longer, it is held by something else (a backup script's `flock`),
/// maybe for minutes, and waiting for that would stop the pump reading, fill the instance's
/// pipe and block the instance at its next write. Unlocked, a writer races only the other
/// pumps of its path, which share one only during a rolling update.
pub(super) const LOCK_WAIT: Duration = Duration::from_millis(200);
/// The first pause between two tries for a lock that is held, doubled at each refusal up to
/// [`LOCK_RETRY_MAX`]: another pump lets it go within one write, tens of microseconds, so a
/// refused write need not sleep a millisecond. (Refusals are rare: two threads flooding one
/// path wrote as much with a flat millisecond as with this, and more than with a blocking
/// `flock`.) Tries rather than a blocking `flock` cut short by a timer signal, which is the
/// whole process's, and an agent without its helper pumps in threads of its own.
const LOCK_RETRY_FIRST: Duration = Duration::from_micros(20);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(1);
/// How long a writer waits for a lock that was last found held past its bound: a little
/// rather than not at all, so that a pump slowed for a while (descheduled on a loaded host)
/// does not leave the others writing unlocked for good, and a lock held for minutes outside
/// costs a write at most this.
pub(super) const LOCK_WAIT_HELD_LONG: Duration = Duration::from_millis(10);

/// An exclusive `flock` on a log file, held by one writer while it checks, writes and rotates
/// the file, released when dropped.
pub(super) struct FileLock<'a>(&'a File);
impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an error here leaves it to that.
        let _ = rustix::fs::flock(self.0, FlockOperation::Unlock);
    }
}
/// The exclusive lock of `file`, waited for up to `wait`; `None` when it is still held by then.
/// The lock of the open file itself (the inode), not of its path, so that a pump still holding
/// the file another rotated finds out under the lock, and a lock file next to it is not needed
/// (nor left behind). Blocking (it sleeps between tries): for a pump, or a blocking task.
pub(super) fn lock_within(file: &File, wait: Duration) -> io::Result<Option<FileLock<'_>>> {
    // Taken at the first refusal only: a lock nobody holds costs one call, as before the bound.
    let mut first_refusal = None;
    let mut pause = LOCK_RETRY_FIRST;
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(FileLock(file))),
            Err(Errno::INTR) => {}
            Err(Errno::WOULDBLOCK) => {
                let waited = first_refusal.get_or_insert_with(Instant::now).elapsed();
                let Some(left) = wait.checked_sub(waited).filter(|left| !left.is_zero()) else {
                    return Ok(None);
                };
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(LOCK_RETRY_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
/// The size of `file` when `path` names it still; `None` when it names another file or none.
/// With rustix's `fstat` and `stat`: std's metadata calls cost a third more, and these run at
/// every write of a pump.
pub(super) fn size_if_named(file: &File, path: &Path) -> io::Result<Option<u64>> {
    let held = rustix::fs::fstat(file)?;
    match rustix::fs::stat(path) {
        Ok(named) if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) => {
            Ok(Some(u64::try_from(held.st_size).unwrap_or(0)))
        }
        Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
