//! Property tests of the HuJSON parser: any JSON value, printed with random comments and
//! trailing commas, parses back to the same value; random bytes never panic.

use proptest::prelude::*;
use serde_json::Value as J;
use tm_policy::hujson::{parse, parse_bytes};

fn json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(J::from),
        any::<String>().prop_map(J::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// A tiny deterministic generator for the printing decisions.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn one_in(&mut self, n: u64) -> bool {
        matches!(self.next() % n, 0)
    }
}

fn junk(r: &mut Rng, out: &mut String) {
    match r.next() % 6 {
        0 => out.push_str(" // a comment, with \"quotes\" and /* */ inside\n"),
        1 => out.push_str("/* block\n  comment * / ** */"),
        2 => out.push('\n'),
        3 => out.push_str("\t "),
        _ => {}
    }
}

fn print(v: &J, r: &mut Rng, out: &mut String) {
    junk(r, out);
    match v {
        J::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                print(x, r, out);
            }
            if !a.is_empty() && r.one_in(2) {
                out.push(',');
                junk(r, out);
            }
            junk(r, out);
            out.push(']');
        }
        J::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                junk(r, out);
                out.push_str(&serde_json::to_string(k).unwrap());
                junk(r, out);
                out.push(':');
                print(x, r, out);
            }
            if !m.is_empty() && r.one_in(2) {
                out.push(',');
            }
            junk(r, out);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
    junk(r, out);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printed_json_with_comments_round_trips(v in json(), seed in 1u64..) {
        let mut s = String::new();
        print(&v, &mut Rng(seed), &mut s);
        let parsed = parse(&s).map_err(|e| TestCaseError::fail(format!("{}:{}: {} in {s}", e.pos.line, e.pos.col, e.msg)))?;
        prop_assert_eq!(parsed.to_json(), v);
    }

    #[test]
    fn plain_json_round_trips(v in json()) {
        let s = serde_json::to_string_pretty(&v).unwrap();
        prop_assert_eq!(parse(&s).unwrap().to_json(), v);
    }

    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_bytes(&b) {
            prop_assert!(e.pos.line >= 1 && e.pos.col >= 1 && !e.msg.contains('\n'));
        }
    }

    #[test]
    fn json_like_noise_never_panics(s in "[\\[\\]{}\",:/*\\n a-z0-9.eE+\\-\\\\]{0,200}") {
        if let Err(e) = parse(&s) {
            prop_assert!(e.pos.line >= 1 && e.pos.col >= 1);
        }
    }

    #[test]
    fn policy_parser_never_panics(s in "[\\[\\]{}\",:a-z*]{0,120}") {
        let wrapped = format!("{{\"default\": \"deny\", \"grants\": [{s}]}}");
        let _ = tm_policy::parse_policy("p.hujson", wrapped.as_bytes());
    }
}
