//! JSON Lines and JSON arrays, streamed. A JSON array is split into its elements by a small byte scanner
//! (strings, escapes and nesting depth) so only one element is in memory at a time, and each element's
//! starting line is known for error messages; a malformed element is skipped like a bad JSON line.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use super::{into_object, read_error, RawRecord, Records, MAX_RECORD_BYTES};
use crate::error::{Error, FieldError, Location, Result};

pub struct JsonLines {
    reader: Box<dyn BufRead>,
    path: Arc<Path>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl JsonLines {
    pub fn new(reader: Box<dyn BufRead>, path: Arc<Path>) -> Self {
        Self::starting_at(reader, path, 0)
    }

    fn starting_at(reader: Box<dyn BufRead>, path: Arc<Path>, line: u64) -> Self {
        Self {
            reader,
            path,
            line,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl Iterator for JsonLines {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            match read_line_capped(&mut *self.reader, &mut self.buf, MAX_RECORD_BYTES) {
                Ok((0, _)) => self.done = true,
                Ok((n, complete)) => {
                    self.line += 1;
                    let loc = Location::line(&self.path, self.line);
                    if !complete {
                        self.buf = Vec::new();
                        return Some(Err(FieldError::record(too_long("line", n)).at(&loc).into()));
                    }
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed = serde_json::from_slice(self.buf.trim_ascii_end())
                        .map_err(|e| json_error(&e))
                        .and_then(into_object);
                    return Some(match parsed {
                        Ok(value) => Ok(RawRecord { loc, value }),
                        Err(msg) => Err(FieldError::record(msg).at(&loc).into()),
                    });
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(read_error(&self.path, e)));
                }
            }
        }
        None
    }
}

/// Reads through the next `\n` (or to the end of the input) like `read_until`, but keeps at most `max`
/// bytes in `buf`: the rest of a longer line is read and dropped. Returns the bytes read (0 at the end)
/// and whether the whole line is in `buf`.
fn read_line_capped(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let (mut read, mut complete) = (0, true);
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((read, complete));
        }
        let (n, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if complete && buf.len() + n <= max {
            buf.extend_from_slice(&chunk[..n]);
        } else {
            complete = false;
            buf.clear();
        }
        r.consume(n);
        read += n;
        if end {
            return Ok((read, complete));
        }
    }
}

fn too_long(what: &str, n: usize) -> String {
    format!(
        "{what} of {n} bytes is longer than the {} MiB a record may be; skipped",
        MAX_RECORD_BYTES >> 20
    )
}

/// serde's message with its position relative to the parsed text replaced by the column alone (the
/// line is in the record's location).
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!("invalid JSON at column {}: {msg}", e.column())
}

/// A `.json` file: an array of objects, or JSON Lines if its first non-blank byte is `{`.
pub fn open_json(mut reader: Box<dyn BufRead>, path: Arc<Path>) -> Result<Records> {
    let mut lines = 0u64;
    let first = loop {
        let buf = reader.fill_buf().map_err(|e| read_error(&path, e))?;
        let Some(&b) = buf.first() else { break None };
        if !b.is_ascii_whitespace() {
            break Some(b);
        }
        lines += u64::from(b == b'\n');
        reader.consume(1);
    };
    match first {
        Some(b'[') => Ok(Box::new(JsonArray {
            reader,
            path,
            line: lines + 1,
            state: State::Start,
            buf: Vec::new(),
            element_len: 0,
        })),
        Some(b'{') => Ok(Box::new(JsonLines::starting_at(reader, path, lines))),
        None => Ok(Box::new(std::iter::empty())),
        Some(_) => Err(Error::file(
            path.to_path_buf(),
            format!(
                "line {}: expected a JSON array (`[`) or JSON Lines (`{{`)",
                lines + 1
            ),
        )),
    }
}

#[derive(PartialEq, Eq)]
enum State {
    Start,
    Elements,
    Done,
}

struct JsonArray {
    reader: Box<dyn BufRead>,
    path: Arc<Path>,
    /// Line of the next unread byte.
    line: u64,
    state: State,
    buf: Vec<u8>,
    /// Bytes of the current element, kept or not (past `MAX_RECORD_BYTES` they are dropped).
    element_len: usize,
}

impl JsonArray {
    fn fatal(&mut self, msg: String) -> Option<Result<RawRecord>> {
        self.state = State::Done;
        Some(Err(Error::file(self.path.to_path_buf(), msg)))
    }

    /// Skips whitespace and returns the next byte without consuming it.
    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf()?;
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            if !b.is_ascii_whitespace() {
                return Ok(Some(b));
            }
            self.line += u64::from(b == b'\n');
            self.reader.consume(1);
        }
    }

    /// Reads one element into `buf`, up to (and consuming) the `,` or `]` that ends it. Returns the
    /// terminator, or None at end of file.
    fn element(&mut self) -> std::io::Result<Option<u8>> {
        self.buf.clear();
        self.element_len = 0;
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let mut used = 0;
            let mut end = None;
            for &b in chunk {
                used += 1;
                self.line += u64::from(b == b'\n');
                if in_str {
                    match (esc, b) {
                        (true, _) => esc = false,
                        (false, b'\\') => esc = true,
                        (false, b'"') => in_str = false,
                        _ => {}
                    }
                } else {
                    match b {
                        b'"' => in_str = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' if depth > 0 => depth -= 1,
                        b',' | b']' if depth == 0 => {
                            end = Some(b);
                            break;
                        }
                        _ => {}
                    }
                }
                self.element_len += 1;
                if self.element_len <= MAX_RECORD_BYTES {
                    self.buf.push(b);
                } else if !self.buf.is_empty() {
                    self.buf = Vec::new();
                }
            }
            self.reader.consume(used);
            if end.is_some() {
                return Ok(end);
            }
        }
    }
}

impl Iterator for JsonArray {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.state {
                State::Done => return None,
                State::Start => {
                    // open_json saw `[`.
                    self.reader.consume(1);
                    match self.peek() {
                        Ok(Some(b']')) => self.state = State::Done,
                        Ok(_) => self.state = State::Elements,
                        Err(e) => {
                            self.state = State::Done;
                            return Some(Err(read_error(&self.path, e)));
                        }
                    }
                }
                State::Elements => {
                    if let Err(e) = self.peek() {
                        self.state = State::Done;
                        return Some(Err(read_error(&self.path, e)));
                    }
                    let start = self.line;
                    let end = match self.element() {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            return self.fatal(format!(
                            "unexpected end of file in the JSON array (element at line {start})"
                        ))
                        }
                        Err(e) => {
                            self.state = State::Done;
                            return Some(Err(read_error(&self.path, e)));
                        }
                    };
                    if end == b']' {
                        self.state = State::Done;
                    }
                    if self.element_len > MAX_RECORD_BYTES {
                        let loc = Location::line(&self.path, start);
                        return Some(Err(FieldError::record(too_long(
                            "array element",
                            self.element_len,
                        ))
                        .at(&loc)
                        .into()));
                    }
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        let loc = Location::line(&self.path, start);
                        return Some(Err(FieldError::record(
                            "empty array element (stray comma?)",
                        )
                        .at(&loc)
                        .into()));
                    }
                    let parsed = serde_json::from_slice(&self.buf);
                    return Some(match parsed.map_err(|e| (e.line() as u64, e)) {
                        Ok(v) => match into_object(v) {
                            Ok(value) => Ok(RawRecord {
                                loc: Location::line(&self.path, start),
                                value,
                            }),
                            Err(msg) => Err(FieldError::record(msg)
                                .at(&Location::line(&self.path, start))
                                .into()),
                        },
                        // serde counts lines within the element; make them file lines.
                        Err((l, e)) => {
                            let loc = Location::line(&self.path, start + l.saturating_sub(1));
                            Err(FieldError::record(json_error(&e)).at(&loc).into())
                        }
                    });
                }
            }
        }
    }
}
