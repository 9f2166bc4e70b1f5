//! Stdout as a verb writes to it, for when its reader goes away (`| head`, `| grep -q`, `| true`).
//! A read then ends quietly (exit 0): there is nothing left for it to do. A change finishes what
//! it was asked (every app of `apply -f`, the write `reload` prints its diff before) and its
//! report is dropped: a change half made because nobody read the report would be far worse than
//! lines nobody reads.

use std::io::{self, Write};

/// What a closed stdout does to the verb writing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// The write fails (`BrokenPipe`), which ends the verb with exit 0.
    Ends,
    /// The write is dropped, and so is every later one.
    Finishes,
}

pub struct Stdout<'a> {
    inner: &'a mut dyn Write,
    unread: Unread,
    gone: bool,
}

impl<'a> Stdout<'a> {
    pub fn new(inner: &'a mut dyn Write, unread: Unread) -> Stdout<'a> {
        Stdout {
            inner,
            unread,
            gone: false,
        }
    }

    /// `result` of a write to the reader, unless the reader is gone and the verb finishes.
    fn unless_gone<T>(&mut self, result: io::Result<T>, dropped: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && self.unread == Unread::Finishes => {
                self.gone = true;
                Ok(dropped)
            }
            other => other,
        }
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        let result = self.inner.write(buf);
        self.unless_gone(result, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        let result = self.inner.flush();
        self.unless_gone(result, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away after `room` bytes.
    struct Closed {
        room: usize,
        got: Vec<u8>,
    }

    impl Write for Closed {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.got.len() + buf.len() > self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_ends_a_read_and_not_a_change() -> io::Result<()> {
        let mut reader = Closed {
            room: 4,
            got: Vec::new(),
        };
        let mut out = Stdout::new(&mut reader, Unread::Ends);
        writeln!(out, "one")?;
        let err = writeln!(out, "two").err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::BrokenPipe));

        let mut reader = Closed {
            room: 4,
            got: Vec::new(),
        };
        let mut out = Stdout::new(&mut reader, Unread::Finishes);
        writeln!(out, "one")?;
        writeln!(out, "two")?;
        writeln!(out, "x")?;
        out.flush()?;
        // What came after the reader left is dropped, even what would have fitted.
        assert_eq!(reader.got, b"one\n");
        Ok(())
    }
}
