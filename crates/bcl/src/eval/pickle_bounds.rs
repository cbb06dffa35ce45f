//! A pass over a pickle's opcodes before `serde-pickle` decodes it: the decoder builds nested
//! values, then clones and drops them recursively, so a list nested a million deep (three bytes
//! a level) overflows the stack. This pass tracks how deep every value on the pickle machine's
//! stack and in its memo can be, and refuses the file past [`MAX_PICKLE_DEPTH`]; it accepts only
//! plain data (no opcode that builds Python objects, which the ground truth never holds).
//! Hand-written: no crate inspects a pickle without building its values.

use std::collections::HashMap;

/// The deepest nesting accepted (the Revisited ground truth is four deep).
pub const MAX_PICKLE_DEPTH: u32 = 64;

/// One slot of the pickle machine's stack: a MARK or a value of some nesting depth.
#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Value(u32),
}

/// Reads the little-endian unsigned integer of `n` bytes at `at`.
fn uint(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
}

fn truncated(at: usize) -> String {
    format!("truncated at byte {at}")
}

/// The stack of the pass: each value's nesting depth, and the MARKs.
struct Stack(Vec<Slot>);

impl Stack {
    /// Pops a value's depth.
    fn pop(&mut self, at: usize) -> Result<u32, String> {
        match self.0.pop() {
            Some(Slot::Value(d)) => Ok(d),
            _ => Err(format!(
                "opcode at byte {at} takes a value from an empty stack"
            )),
        }
    }

    /// Pops the values above the topmost MARK and the MARK; their deepest depth (0 if none).
    fn pop_mark(&mut self, at: usize) -> Result<u32, String> {
        let mut deepest = 0;
        loop {
            match self.0.pop() {
                Some(Slot::Value(d)) => deepest = deepest.max(d),
                Some(Slot::Mark) => return Ok(deepest),
                None => return Err(format!("opcode at byte {at} has no MARK before it")),
            }
        }
    }

    /// Puts a value one level above `inner` into the container on the top of the stack.
    fn fill(&mut self, inner: u32, at: usize) -> Result<(), String> {
        match self.0.last_mut() {
            Some(Slot::Value(d)) => {
                *d = (*d).max(inner + 1);
                Ok(())
            }
            _ => Err(format!("opcode at byte {at} has no container to fill")),
        }
    }
}

/// For an opcode that pushes a leaf value (a number, a string, None, a bool), the length of
/// its argument starting at `at`; `None` for every other opcode.
fn leaf_arg(bytes: &[u8], op: u8, at: usize) -> Result<Option<usize>, String> {
    let len = |n: usize| uint(bytes, at, n).ok_or_else(|| truncated(at));
    Ok(Some(match op {
        b'N' | 0x88 | 0x89 => 0,
        b'I' | b'L' | b'F' | b'S' | b'V' => line_end(bytes, at)? + 1 - at,
        b'J' => 4,
        b'K' => 1,
        b'M' => 2,
        b'G' => 8,
        b'T' | b'X' | b'B' => 4 + len(4)? as usize,
        b'U' | 0x8c | b'C' | 0x8a => 1 + len(1)? as usize,
        0x8b => 4 + (len(4)? as u32 as i32).max(0) as usize,
        0x8d | 0x8e | 0x96 => 8usize.saturating_add(usize::try_from(len(8)?).unwrap_or(usize::MAX)),
        _ => return Ok(None),
    }))
}

/// Checks that `bytes` is a plain-data pickle no deeper than [`MAX_PICKLE_DEPTH`]; the error
/// says what was found and at which byte.
pub fn check_pickle(bytes: &[u8]) -> Result<(), String> {
    let mut stack = Stack(Vec::new());
    let mut memo: HashMap<u64, u32> = HashMap::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let op = bytes[at];
        let here = at;
        at += 1;
        if let Some(arg) = leaf_arg(bytes, op, at)? {
            if at.saturating_add(arg) > bytes.len() {
                return Err(truncated(here));
            }
            at += arg;
            stack.0.push(Slot::Value(0));
            continue;
        }
        match op {
            0x80 => at += 1, // PROTO
            0x95 => at += 8, // FRAME: the framed opcodes follow inline
            b']' | b'}' | b')' | 0x8f => stack.0.push(Slot::Value(1)),
            b'(' => stack.0.push(Slot::Mark),
            b'a' => {
                let v = stack.pop(here)?;
                stack.fill(v, here)?;
            }
            b's' => {
                let v = stack.pop(here)?;
                let k = stack.pop(here)?;
                stack.fill(v.max(k), here)?;
            }
            b'e' | b'u' | 0x90 => {
                let v = stack.pop_mark(here)?;
                stack.fill(v, here)?;
            }
            b'l' | b't' | b'd' | 0x91 => {
                let v = stack.pop_mark(here)?;
                stack.0.push(Slot::Value(v + 1));
            }
            0x85..=0x87 => {
                let mut v = 0;
                for _ in 0..(op - 0x84) {
                    v = v.max(stack.pop(here)?);
                }
                stack.0.push(Slot::Value(v + 1));
            }
            b'0' => {
                stack.0.pop();
            }
            b'1' => {
                stack.pop_mark(here)?;
            }
            b'2' => {
                let top = *stack
                    .0
                    .last()
                    .ok_or_else(|| format!("DUP at byte {here} on an empty stack"))?;
                stack.0.push(top);
            }
            b'p' | b'q' | b'r' | 0x94 => {
                let id = if op == 0x94 {
                    memo.len() as u64
                } else {
                    let (id, next) = memo_index(bytes, op, at, here)?;
                    at = next;
                    id
                };
                match stack.0.last() {
                    Some(Slot::Value(d)) => memo.insert(id, *d),
                    _ => return Err(format!("memo store at byte {here} without a value")),
                };
            }
            b'g' | b'h' | b'j' => {
                let (id, next) = memo_index(bytes, op, at, here)?;
                at = next;
                let d = *memo.get(&id).ok_or_else(|| {
                    format!("memo entry {id} read at byte {here} was never stored")
                })?;
                stack.0.push(Slot::Value(d));
            }
            b'.' => return Ok(()),
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} at byte {here} is not plain data (lists, dicts, \
                     strings, numbers)"
                ))
            }
        }
        if at > bytes.len() {
            return Err(truncated(here));
        }
        if let Some(Slot::Value(d)) = stack.0.last() {
            if *d > MAX_PICKLE_DEPTH {
                return Err(format!(
                    "values nested more than {MAX_PICKLE_DEPTH} deep (at byte {here})"
                ));
            }
        }
    }
    Err("no STOP opcode: truncated".into())
}

/// Where the text argument starting at `at` ends (the position of its newline).
fn line_end(bytes: &[u8], at: usize) -> Result<usize, String> {
    bytes[at.min(bytes.len())..]
        .iter()
        .position(|&c| c == b'\n')
        .map(|p| at + p)
        .ok_or_else(|| format!("truncated at byte {at}"))
}

/// The memo index argument of a PUT/GET opcode at `at` (a text line for `p`/`g`, one byte for
/// `q`/`h`, four for `r`/`j`), and where the next opcode starts.
fn memo_index(bytes: &[u8], op: u8, at: usize, here: usize) -> Result<(u64, usize), String> {
    let truncated = || format!("truncated at byte {here}");
    match op {
        b'p' | b'g' => {
            let end = line_end(bytes, at)?;
            let id = std::str::from_utf8(&bytes[at..end])
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| format!("bad memo index at byte {here}"))?;
            Ok((id, end + 1))
        }
        b'q' | b'h' => Ok((uint(bytes, at, 1).ok_or_else(truncated)?, at + 1)),
        _ => Ok((uint(bytes, at, 4).ok_or_else(truncated)?, at + 4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_data_passes_and_depth_is_counted_through_marks_and_memo() {
        // {"a": [1, [2]]} with the inner list memoised and read back once
        let ok = [
            0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b']', b'(', b'K', 1, b']', b'q', 0, b'K',
            2, b'a', b'e', b'u', b'h', 0, b'0', b'.',
        ];
        check_pickle(&ok).unwrap();
        // lists nested one past the bound, with and without the memo in the middle
        let deep = MAX_PICKLE_DEPTH as usize + 1;
        let mut b = vec![0x80, 2];
        b.extend(vec![b']'; deep]);
        b.extend(vec![b'a'; deep - 1]);
        b.push(b'.');
        let e = check_pickle(&b).unwrap_err();
        assert!(e.contains("nested more than"), "{e}");
        let mut shallow = b[..2 + deep].to_vec();
        shallow.extend([b'a'; 10]);
        shallow.push(b'.');
        check_pickle(&shallow).unwrap();
        // a deep value stored in the memo keeps its depth when read back: 40 deep, memoised,
        // read back inside 30 more levels is 70
        let mut m = vec![0x80, 2];
        m.extend(vec![b']'; 40]);
        m.extend(vec![b'a'; 39]);
        m.extend([b'q', 7, b'0']);
        let mut m1 = m.clone();
        m1.extend(vec![b']'; 20]);
        m1.extend([b'h', 7]);
        m1.extend(vec![b'a'; 20]);
        m1.push(b'.');
        check_pickle(&m1).unwrap();
        m.extend(vec![b']'; 30]);
        m.extend([b'h', 7]);
        m.extend(vec![b'a'; 30]);
        m.push(b'.');
        let e = check_pickle(&m).unwrap_err();
        assert!(e.contains("nested more than"), "{e}");
    }

    #[test]
    fn objects_truncation_and_stray_opcodes_are_refused() {
        for (b, want) in [
            (&b"\x80\x02cos\nsystem\n."[..], "not plain data"),
            (&b"\x80\x02X\xff\xff\xff\x7f"[..], "truncated"),
            (&b"\x80\x02a."[..], "empty stack"),
            (&b"\x80\x02h\x05."[..], "never stored"),
            (&b"\x80\x02]"[..], "no STOP"),
            (&b"\x80\x02K\x01e."[..], "no MARK"),
        ] {
            let e = check_pickle(b).unwrap_err();
            assert!(e.contains(want), "{b:?}: {e}");
        }
    }
}
