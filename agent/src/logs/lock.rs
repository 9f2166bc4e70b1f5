//! The lock every writer of a log file takes around a write or a rotation of it.
use std::fs::File;
use std::io;

/// An exclusive `flock` on a log file, held by one writer while it checks, writes and rotates
/// the file, released when dropped.
pub(super) struct FileLock<'a>(&'a File);
impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an error here leaves it to that.
        let _ = rustix::fs::flock(self.0, rustix::fs::FlockOperation::Unlock);
    }
}
/// Waits for the exclusive lock of `file`: the lock of the open file itself (the inode), not
/// of its path, so that a pump still holding the file another rotated finds out under the
/// lock, and a lock file next to it is not needed (nor left behind).
pub(super) fn lock_exclusive(file: &File) -> io::Result<FileLock<'_>> {
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(FileLock(file)),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
