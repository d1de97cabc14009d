//! A small, deterministic JSON and YAML writer for the registration output.
//!
//! Hand-written because the output is compared byte for byte with checked-in
//! manifests: object keys are always sorted (whatever serde_json's features
//! are in the build) and the layout follows the Capact manifests (sequences
//! indented under their key, JSON Schema as a `|-` block).

use serde_json::{Map, Value as Json};

/// JSON text with two-space indentation and sorted object keys.
pub fn pretty_json(value: &Json) -> String {
    let mut out = String::new();
    write_json(value, 0, &mut out);
    out
}

fn write_json(value: &Json, indent: usize, out: &mut String) {
    match value {
        Json::Object(map) if !map.is_empty() => {
            out.push_str("{\n");
            for (i, (key, item)) in sorted(map).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                pad(indent + 2, out);
                out.push_str(&json_string(key));
                out.push_str(": ");
                write_json(item, indent + 2, out);
            }
            out.push('\n');
            pad(indent, out);
            out.push('}');
        }
        Json::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                pad(indent + 2, out);
                write_json(item, indent + 2, out);
            }
            out.push('\n');
            pad(indent, out);
            out.push(']');
        }
        // Scalars and empty containers: serde_json's compact form is exact.
        other => out.push_str(&other.to_string()),
    }
}

/// The entries of a mapping as block YAML at `indent`, keys sorted.
pub fn mapping(map: &Map<String, Json>, indent: usize) -> String {
    let mut out = String::new();
    for (key, value) in sorted(map) {
        entry(key, value, indent, &mut out);
    }
    out
}

/// One `key: value` entry (nested blocks for non-empty containers).
pub fn entry(key: &str, value: &Json, indent: usize, out: &mut String) {
    pad(indent, out);
    out.push_str(&scalar_str(key));
    out.push(':');
    match value {
        Json::Object(map) if !map.is_empty() => {
            out.push('\n');
            out.push_str(&mapping(map, indent + 2));
        }
        Json::Array(items) if !items.is_empty() => {
            out.push('\n');
            out.push_str(&sequence(items, indent + 2));
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

/// Items of a sequence as `- item` lines at `indent`.
pub fn sequence(items: &[Json], indent: usize) -> String {
    let mut out = String::new();
    for item in items {
        let block = match item {
            Json::Object(map) if !map.is_empty() => mapping(map, indent + 2),
            Json::Array(inner) if !inner.is_empty() => sequence(inner, indent + 2),
            other => {
                pad(indent, &mut out);
                out.push_str("- ");
                out.push_str(&scalar(other));
                out.push('\n');
                continue;
            }
        };
        // The first line of the nested block moves up next to the dash.
        pad(indent, &mut out);
        out.push_str("- ");
        out.push_str(block.trim_start_matches(' '));
    }
    out
}

/// A YAML scalar (or empty flow container) for a JSON value.
pub fn scalar(value: &Json) -> String {
    match value {
        Json::String(s) => scalar_str(s),
        Json::Object(_) => "{}".to_owned(),
        Json::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// A string as a plain scalar when that reads back as the same string in
/// YAML 1.1 and 1.2 parsers alike, else as a double-quoted scalar (a JSON
/// string is a valid YAML double-quoted scalar).
pub fn scalar_str(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_owned()
    } else {
        json_string(s)
    }
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let chars_ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, ' ' | '.' | '_' | '/' | ':' | '@' | '-' | '(' | ')')
    });
    if !chars_ok
        || !first.is_ascii_alphanumeric()
        || s.ends_with([' ', ':'])
        || s.contains(": ")
        || s.contains(" #")
    {
        return false;
    }
    // Words that YAML 1.1 or 1.2 read as booleans or null.
    const RESERVED: [&str; 11] = [
        "true", "false", "yes", "no", "y", "n", "on", "off", "null", "nan", "inf",
    ];
    if RESERVED.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    // Numbers, dates and sexagesimals all start with a digit; of those only
    // dotted versions such as 0.1.0 stay plain (they are no number).
    if first.is_ascii_digit() {
        let parts: Vec<&str> = s.split('.').collect();
        return parts.len() >= 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    }
    true
}

fn json_string(s: &str) -> String {
    Json::String(s.to_owned()).to_string()
}

fn sorted(map: &Map<String, Json>) -> Vec<(&String, &Json)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn pad(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// `text` as the lines of a literal block scalar, each indented by `indent`.
pub fn block_lines(text: &str, indent: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            pad(indent, &mut out);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(value: &Json) -> Json {
        let map = value.as_object().cloned().unwrap_or_default();
        let text = mapping(&map, 0);
        serde_yaml::from_str::<Json>(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    #[test]
    fn awkward_strings_read_back_unchanged() {
        let awkward = [
            "",
            " lead",
            "trail ",
            "yes",
            "No",
            "null",
            "~",
            "true",
            "0.1",
            "1e3",
            "0x1f",
            "012",
            "1:20",
            "2001-12-14",
            ".inf",
            "-",
            "- x",
            "a: b",
            "a #b",
            "#c",
            "x:",
            "@at",
            "*ref",
            "&a",
            "!tag",
            "|",
            ">",
            "%p",
            "'q'",
            "\"dq\"",
            "{a}",
            "[a]",
            "a,b",
            "tab\there",
            "line\nbreak",
            "ünïcode",
            "0.1.0",
            "1.2.3.4",
            "1..2",
            "host:50051",
            "https://capact.io",
            "cap.type.x",
            "$schema",
            "#/properties/url",
        ];
        for s in awkward {
            let value = json!({ "k": s, s: "key" });
            assert_eq!(round_trip(&value), value, "string {s:?}");
        }
    }

    #[test]
    fn plain_where_it_is_safe() {
        for s in [
            "0.1.0",
            "storage",
            "host:50051",
            "https://capact.io/docs",
            "Capact Dev Team",
        ] {
            assert_eq!(scalar_str(s), s);
        }
        for s in ["true", "1.5", "100", "a: b", "$id"] {
            assert_ne!(scalar_str(s), s);
        }
    }

    #[test]
    fn nested_values_read_back_unchanged() {
        let value = json!({
            "a": {"b": [1, 2.5, -3, true, null, "x"], "c": {}, "d": []},
            "list": [{"x": 1, "y": [{"z": "w"}]}, [1, [2, 3]], [], {}],
            "n": null,
            "big": 18446744073709551615u64,
        });
        assert_eq!(round_trip(&value), value);
    }

    #[test]
    fn sequences_are_indented_under_their_key() {
        let value = json!({"m": [{"email": "e", "name": "x"}]});
        let map = value.as_object().cloned().unwrap_or_default();
        let text = mapping(&map, 0);
        assert_eq!(text, "m:\n  - email: e\n    name: x\n");
    }

    #[test]
    fn pretty_json_sorts_keys_and_parses_back() {
        let value = json!({"b": [1, {"d": 1, "c": []}], "a": {}, "$s": "x\"y"});
        let text = pretty_json(&value);
        assert_eq!(
            text,
            "{\n  \"$s\": \"x\\\"y\",\n  \"a\": {},\n  \"b\": [\n    1,\n    {\n      \"c\": [],\n      \"d\": 1\n    }\n  ]\n}"
        );
        assert_eq!(serde_json::from_str::<Json>(&text).ok(), Some(value));
    }
}
