//! SigV4 header and query parsing: the `tm-sigv4` parsers on raw text, and the S3 front's
//! authentication (Authorization header, presigned query, Basic, Bearer) of a request
//! built from the input. Nothing panics; nothing but the known Basic secret authenticates (a
//! SigV4 signature cannot be guessed).
//!
//! Input: `METHOD SP path[?query] LF` then `name: value` lines.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The parsers of tm-sigv4 on every line.
    for line in text.lines() {
        let _ = tm_sigv4::parse_authorization(line);
        let _ = tm_sigv4::parse_credential(line);
        if let Ok(t) = tm_sigv4::parse_amz_date(line) {
            // What parses, formats back to a date that parses to the same time.
            assert_eq!(tm_sigv4::parse_amz_date(&tm_sigv4::amz_date(t)), Ok(t));
        }
        let _ = tm_sigv4::uri_encode(line, true);
        let pairs: Vec<(&str, &str)> = line
            .split('&')
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        let _ = tm_sigv4::canonical_query(&pairs);
    }

    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|b| *b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (&b"GET"[..], first),
    };
    let target = String::from_utf8_lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*target, None),
    };
    let mut headers = Vec::new();
    let mut date = None;
    for l in lines {
        let Some(i) = l.iter().position(|b| *b == b':') else {
            continue;
        };
        let (k, v) = (&l[..i], l[i + 1..].trim_ascii());
        if k.eq_ignore_ascii_case(b"x-amz-date") {
            date = std::str::from_utf8(v)
                .ok()
                .and_then(|d| tm_sigv4::parse_amz_date(d).ok());
        }
        headers.push((k, v));
    }
    // "Now" is the claimed date when there is one, so the skew check passes and the
    // signature is what gets checked.
    let now = date.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600));
    match tm_s3::fuzzing::authenticate(method, path, query, &headers, now) {
        Ok(Some(principal)) => assert!(
            principal.starts_with("user-"),
            "unexpected principal {principal:?}"
        ),
        Ok(None) | Err(_) => {}
    }
});
