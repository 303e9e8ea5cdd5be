//! A minimal JSON validator, so hand-written JSON output is checked for well-formedness. Shared
//! by the engine's inspect tests and the runner's offline-tool tests (included by path).

pub fn json_is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    json_value(b, &mut i) && {
        json_ws(b, &mut i);
        i == b.len()
    }
}

fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b" \t\n\r".contains(&b[*i]) {
        *i += 1;
    }
}

fn json_value(b: &[u8], i: &mut usize) -> bool {
    json_ws(b, i);
    match b.get(*i) {
        Some(b'{') => json_seq(b, i, b'}', |b, i| {
            json_ws(b, i);
            json_string(b, i) && {
                json_ws(b, i);
                b.get(*i) == Some(&b':') && {
                    *i += 1;
                    json_value(b, i)
                }
            }
        }),
        Some(b'[') => json_seq(b, i, b']', json_value),
        Some(b'"') => json_string(b, i),
        Some(b't') => json_lit(b, i, b"true"),
        Some(b'f') => json_lit(b, i, b"false"),
        Some(b'n') => json_lit(b, i, b"null"),
        Some(c) if c.is_ascii_digit() || *c == b'-' => {
            *i += 1;
            while *i < b.len() && (b[*i].is_ascii_digit() || b".eE+-".contains(&b[*i])) {
                *i += 1;
            }
            true
        }
        _ => false,
    }
}

fn json_seq(b: &[u8], i: &mut usize, close: u8, item: impl Fn(&[u8], &mut usize) -> bool) -> bool {
    *i += 1;
    json_ws(b, i);
    if b.get(*i) == Some(&close) {
        *i += 1;
        return true;
    }
    loop {
        if !item(b, i) {
            return false;
        }
        json_ws(b, i);
        match b.get(*i) {
            Some(&c) if c == close => {
                *i += 1;
                return true;
            }
            Some(b',') => *i += 1,
            _ => return false,
        }
    }
}

fn json_string(b: &[u8], i: &mut usize) -> bool {
    if b.get(*i) != Some(&b'"') {
        return false;
    }
    *i += 1;
    while let Some(&c) = b.get(*i) {
        *i += 1;
        match c {
            b'"' => return true,
            b'\\' => match b.get(*i) {
                Some(b'u') => {
                    let hex = b.get(*i + 1..*i + 5);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return false;
                    }
                    *i += 5;
                }
                Some(e) if b"\"\\/bfnrt".contains(e) => *i += 1,
                _ => return false,
            },
            c if c < 0x20 => return false,
            _ => {}
        }
    }
    false
}

fn json_lit(b: &[u8], i: &mut usize, lit: &[u8]) -> bool {
    if b[*i..].starts_with(lit) {
        *i += lit.len();
        true
    } else {
        false
    }
}
